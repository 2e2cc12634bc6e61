"""Lead data normalisation: small pure functions every area can import.

    normalize_phone("0532 123 45 67")            -> "+905321234567"
    normalize_email(" Ali@Örnek.COM.tr ")        -> "ali@örnek.com.tr"
    clean_domain("https://www.shop.acme.com.tr/x") -> "acme.com.tr"

The database defines these rules (migrations/20261203000000_one_normaliser.sql); the functions here
are its fast twins for bulk imports, proven equal by tests/test_identifiers.py. phonenumbers and
tldextract (bundled public suffix list, offline) do the work; results are cached per distinct value. `normalize_record` turns
one raw row (any common header spelling) into the standard lead columns plus the reasons it is bad.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from functools import lru_cache
from typing import Iterable

import tldextract

STANDARD_COLUMNS = (
    "company_name", "contact_name", "email", "phone", "website", "city", "country",
    "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term",
)

# Header spellings seen in exports (English and Turkish), folded with fold_header().
HEADER_ALIASES = {
    "company": "company_name", "company_name": "company_name", "companyname": "company_name",
    "firma": "company_name", "firma_adi": "company_name", "sirket": "company_name", "sirket_adi": "company_name",
    "organization": "company_name", "organisation": "company_name", "business": "company_name",
    "name": "contact_name", "contact": "contact_name", "contact_name": "contact_name", "full_name": "contact_name",
    "ad_soyad": "contact_name", "adi_soyadi": "contact_name", "isim": "contact_name", "yetkili": "contact_name",
    "email": "email", "e_mail": "email", "mail": "email", "e_posta": "email", "eposta": "email",
    "email_address": "email",
    "phone": "phone", "phone_number": "phone", "telefon": "phone", "tel": "phone", "gsm": "phone",
    "mobile": "phone", "cep": "phone", "cep_telefonu": "phone",
    "website": "website", "web": "website", "url": "website", "web_sitesi": "website", "site": "website",
    "city": "city", "sehir": "city", "il": "city",
    "country": "country", "ulke": "country",
    "source": "source", "kaynak": "source",
    "utm_source": "utm_source", "utm_medium": "utm_medium", "utm_campaign": "utm_campaign",
    "utm_content": "utm_content", "utm_term": "utm_term",
    "unique_lead_id": "unique_lead_id", "external_id": "external_id",
}

# Per-process caches of distinct values: bulk files repeat domains, area codes and free-mail hosts, so a
# modest size keeps the hit rate while memory stays flat however large the file (issue 9, item 8).
_CACHE = 16_384

_TR_UPPER = str.maketrans({"i": "İ", "ı": "I"})
_TR_LOWER = str.maketrans({"İ": "i", "I": "ı"})
_FOLD = str.maketrans({"ı": "i", "İ": "i", "ş": "s", "Ş": "s", "ğ": "g", "Ğ": "g", "ü": "u", "Ü": "u",
                       "ö": "o", "Ö": "o", "ç": "c", "Ç": "c"})

_extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


# ------------------------------------------------------------------------------------ Turkish text
def tr_lower(text: str) -> str:
    """Lower-case with Turkish rules: İ -> i, I -> ı."""
    return text.translate(_TR_LOWER).lower()


def tr_upper(text: str) -> str:
    """Upper-case with Turkish rules: i -> İ, ı -> I."""
    return text.translate(_TR_UPPER).upper()


def tr_title(text: str) -> str:
    """Title case word by word with Turkish rules ("İSTANBUL" -> "İstanbul", "ılgaz" -> "Ilgaz")."""
    return " ".join(tr_upper(w[:1]) + tr_lower(w[1:]) for w in text.split())


def fold_identifier(text: str) -> str:
    """Case-fold an identifier (e-mail address, domain, URL, user name, code) locale-independently:
    Unicode default lower-casing, so "I" -> "i" whatever the language; Turkish letter rules never apply
    (they would turn GMAIL.COM into the dotless "gmaıl.com"). "İ" (U+0130) -> "i" rather than the
    default "i" + U+0307, since an upper-case address typed on a Turkish keyboard means the plain i.
    The SQL twin is private.fold_identifier (migrations/20261202010000_identifiers.sql)."""
    text = text.replace("\u0130", "i").lower()
    return text if text.isascii() else unicodedata.normalize("NFC", text)


# One form for quote, double-quote, dash and space variants; invisible characters dropped. The same
# table is in private.name_key (migrations/20261202010000_identifiers.sql).
_NAME_SINGLE = "\u2019\u2018\u201a\u201b`\u00b4\u02bc\u02b9\u2032"
_NAME_DOUBLE = "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"
_NAME_DASH = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63"
_NAME_SPACE = "\u00a0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200b)) + "\u202f\u205f\u3000\t\n\r\x0b\x0c"
_NAME_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_NAME_TABLE = str.maketrans({**{c: "'" for c in _NAME_SINGLE}, **{c: '"' for c in _NAME_DOUBLE},
                             **{c: "-" for c in _NAME_DASH}, **{c: " " for c in _NAME_SPACE},
                             **{c: None for c in _NAME_INVISIBLE}})
_SPACES = re.compile(" {2,}")


def name_key(value) -> str | None:
    """The matching form of a company or person name (issue 9, item 3): NFKC, one form for quote,
    dash and space variants, invisible characters dropped, spaces collapsed, Turkish lower-case.
    "Ayşe’nin\u00a0Butiği" -> "ayşe'nin butiği". Same answer as private.name_key in SQL."""
    if value is None:
        return None
    text = unicodedata.normalize("NFKC", str(value)).translate(_NAME_TABLE)
    return tr_lower(_SPACES.sub(" ", text).strip(" ")) or None


def clean_text(value) -> str | None:
    """Trim, NFC-normalise and collapse whitespace; empty -> None."""
    if value is None:
        return None
    text = str(value)
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    text = " ".join(text.split())
    return text or None


def fold_header(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", tr_lower(name.strip().lstrip("\ufeff")).translate(_FOLD)).strip("_")


# ------------------------------------------------------------------------------------------ values
# The Python twins of the database's identifier rules (migrations/20261203000000_one_normaliser.sql,
# the one definition). They exist so a bulk import can precompute values for COPY on all cores;
# tests/test_identifiers.py proves over tests/cases/identifiers.json that both give the same answers.

# Turkish numbers written the usual ways (0532 123 45 67, +90 (212) 444 55 66, 905321234567): ten
# national digits. Their validity depends only on the operator / area code, so phonenumbers decides it
# once per six-digit prefix and the rest of a bulk import reuses the answer.
_TR_FAST = re.compile(r"^(?:\+90|0090|90|0)?([2-5]\d{9})$")
_PHONE_CHARS = re.compile(r"^\+?[0-9 ().\-/]+$")   # private.clean_phone: what a number may be written with
_PHONE_SEPARATORS = re.compile(r"[^0-9]")
_TEL = re.compile(r"^tel:", re.I)
_TR_PREFIX_VALID: dict[str, bool] = {}


def _identifier_text(raw) -> str:
    """NFKC (full-width digits and @, compatibility spaces), whitespace collapsed, trimmed."""
    text = str(raw)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


@lru_cache(maxsize=_CACHE)
def normalize_phone(raw, region: str = "TR") -> str | None:
    """A phone number in E.164 ("+905321234567"), read in `region` when it has no "+" or "00";
    None when it is not a valid number. The algorithm is private.clean_phone's, step for step, over
    the same numbering plans (libphonenumber's metadata, luna.refdata): only digits, spaces,
    ( ) . - / and a leading + or "tel:" are allowed."""
    if raw is None:
        return None
    text = _TEL.sub("", _identifier_text(raw)).strip()
    if not text or not _PHONE_CHARS.match(text):
        return None
    region = (region or "TR").strip().upper() or "TR"
    digits = _PHONE_SEPARATORS.sub("", text)
    if text.startswith("+"):
        return _from_digits(digits)
    if digits.startswith("00"):
        return _from_digits(digits[2:])
    if region == "TR":
        match = _TR_FAST.match(digits)
        if match:  # the common case, decided once per operator / area prefix
            national = match.group(1)
            valid = _TR_PREFIX_VALID.get(national[:6])
            if valid is None:
                valid = _TR_PREFIX_VALID[national[:6]] = _from_digits("90" + national) is not None
            return "+90" + national if valid else None
    plan = _phone_plans()[0].get(region)
    if plan is None:
        return None
    code, prefix, pattern = plan
    if prefix is not None and (m := prefix.match(digits)) and pattern.match(digits[m.end():]):
        return f"+{code}{digits[m.end():]}"
    if pattern.match(digits):
        return f"+{code}{digits}"
    if digits.startswith(str(code)):
        return _from_digits(digits)
    return None


_INTERNATIONAL_DIGITS = re.compile(r"^[1-9][0-9]{3,16}$")


def _from_digits(d: str) -> str | None:
    """private.phone_from_digits: country code, then a number valid in one of its plans."""
    if not _INTERNATIONAL_DIGITS.match(d):
        return None
    by_code = _phone_plans()[1]
    for i in (1, 2, 3):
        plans = by_code.get(int(d[:i]))
        if plans is None:
            continue
        rest = d[i:]
        for prefix, pattern in plans:
            if prefix is not None and (m := prefix.match(rest)) and pattern.match(rest[m.end():]):
                return f"+{d[:i]}{rest[m.end():]}"
            if pattern.match(rest):
                return f"+{d[:i]}{rest}"
        return None
    return None


@lru_cache(maxsize=1)
def _phone_plans():
    """({region: (code, prefix re, pattern re)}, {code: [(prefix re, pattern re)], main plan first})."""
    from .refdata import phone_plans

    by_region, by_code = {}, {}
    for region, code, prefix, pattern, main in sorted(phone_plans(), key=lambda p: (not p[4], p[0])):
        compiled = (re.compile("^(?:" + prefix + ")") if prefix else None, re.compile(pattern))
        by_region[region] = (code, *compiled)
        by_code.setdefault(code, []).append(compiled)
    return by_region, by_code


# private.clean_email's pattern, character for character (atext or non-ASCII in dot-atoms, host
# labels, a top-level label of two or more letters or an A-label).
_ATEXT = "a-z0-9!#$%&'*+/=?^_`{|}~\u0080-\uffff-"
_LABEL_CH = "a-z0-9\u0080-\uffff"
_EMAIL = re.compile(f"^[{_ATEXT}]+(\\.[{_ATEXT}]+)*@([{_LABEL_CH}]([{_LABEL_CH}-]*[{_LABEL_CH}])?\\.)+"
                    f"([a-z\u0080-\uffff]{{2,63}}|xn--[a-z0-9-]{{1,59}})$")
_MAILTO = re.compile(r"^mailto:", re.I)


@lru_cache(maxsize=_CACHE)
def normalize_email(raw) -> str | None:
    """A syntactically valid address (see private.clean_email), case-folded locale-independently
    (fold_identifier), international domains kept in Unicode; no DNS. None when invalid."""
    if raw is None:
        return None
    text = str(raw).strip()
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).strip()
    text = fold_identifier(_MAILTO.sub("", text).strip())
    if len(text) > 254 or not _EMAIL.match(text) or len(text.split("@", 1)[0]) > 64:
        return None
    return text


_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")
_HOST = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)+$")


def clean_host(value) -> str | None:
    """The host of a URL, e-mail domain or host name as A-labels (private.clean_host)."""
    if value is None:
        return None
    text = str(value).strip()
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).strip()
    text = _SCHEME.sub("", fold_identifier(text), count=1)
    for stop in ("/", "?", "#", "\\"):
        text = text.split(stop, 1)[0]
    text = text.rsplit("@", 1)[-1].split(":", 1)[0].strip(" ").strip(".")
    if not text or any(c.isspace() for c in text):
        return None
    if not text.isascii():
        text = ".".join(label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
                        for label in text.split("."))
    return text if _HOST.match(text) else None


@lru_cache(maxsize=_CACHE)
def _registered_domain(host: str) -> str | None:
    ext = _extract(host)
    if not ext.domain or not ext.suffix:
        return None
    return f"{ext.domain}.{ext.suffix}"


@lru_cache(maxsize=_CACHE)
def clean_domain(value) -> str | None:
    """The registrable domain of a URL or host name (private.website_domain): scheme, credentials,
    port, path stripped, IDNA, one label below the public suffix ("https://www.shop.acme.com.tr/x" ->
    "acme.com.tr"). Whether it names a company (free mail does not) is the database's rule
    (private.company_domain)."""
    host = clean_host(value)
    return _registered_domain(host) if host else None


# ------------------------------------------------------------------------------------------ records
def accepted_columns() -> str:
    """The standard columns and the header spellings that name each one (for errors, --help, docs)."""
    names: dict[str, list[str]] = {}
    for alias, column in HEADER_ALIASES.items():
        names.setdefault(column, []).append(alias)
    return "; ".join(f"{column} ({', '.join(sorted(a for a in aliases if a != column))})" if len(aliases) > 1
                     else column for column, aliases in names.items())


def header_columns(header: list[str]) -> list[str | None]:
    """The standard column each header names (None for columns we keep only in the raw payload).
    Two headers naming one column (`phone,phone`, `Telefon,GSM`) both map to it; their values are
    coalesced by `pick_values` (first non-empty wins), never dropped."""
    return [HEADER_ALIASES.get(fold_header(name or "")) for name in header]


def pick_values(columns: list[str | None], values: list[str]) -> dict:
    """{standard column: value} for one row: where several columns name one standard column, the
    first non-empty value (issue 9, item 7: a number in the second `phone` column is used)."""
    picked: dict = {}
    for column, value in zip(columns, values):
        if column and (column not in picked or not (picked[column] or "").strip()):
            picked[column] = value
    return picked


def raw_keys(header: list[str]) -> list[str]:
    """Unique keys for the raw payload: a repeated header name gets " (2)", " (3)" ..., so raw keeps
    every column's value."""
    seen: dict[str, int] = {}
    keys = []
    for i, name in enumerate(header):
        name = name or f"col{i}"
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return keys


def normalize_record(row: dict, region: str = "TR") -> tuple[dict | None, list[str]]:
    """Map one raw row (any common header spelling) to the standard lead columns. Returns
    (lead or None, issues) as normalize_values does."""
    keys = [k for k in row if k is not None]
    return normalize_values(pick_values(header_columns(keys), [row[k] for k in keys]), region)


def normalize_values(values: dict, region: str = "TR") -> tuple[dict | None, list[str]]:
    """Normalise values already keyed by standard column names. Returns (lead, warnings), or
    (None, reasons) when the row is rejected.

    The acceptance rule is private.ingest_staged's (issue 9, item 6): a lead needs a company name, or
    a valid e-mail, phone or website. An invalid e-mail, phone or website beside it is left out of
    the columns (the row's raw payload keeps it) and reported as a warning. The staged
    `domain_cleaned` is the website's registrable domain; the company domain (free mail excluded,
    the e-mail's domain as fallback) and the identity key are the database's."""
    lead: dict = {}
    for column, value in values.items():
        text = clean_text(value)
        if text:
            lead[column] = text
    issues: list[str] = []
    raw_email, raw_phone, raw_website = lead.get("email"), lead.get("phone"), lead.get("website")
    if raw_email:
        lead["email"] = normalize_email(raw_email)
        if lead["email"] is None:
            issues.append(f"invalid e-mail {raw_email!r}")
    if raw_phone:
        lead["phone"] = normalize_phone(raw_phone, region)
        if lead["phone"] is None:
            issues.append(f"invalid phone {raw_phone!r}")
    lead["domain_cleaned"] = clean_domain(raw_website) if raw_website else None
    if raw_website and lead["domain_cleaned"] is None:
        issues.append(f"invalid website {raw_website!r}")
        lead["website"] = None
    if not (lead.get("company_name") or lead.get("email") or lead.get("phone") or lead["domain_cleaned"]
            or lead.get("unique_lead_id") or lead.get("external_id")):
        return None, issues or ["no company name, e-mail, phone or website"]
    if lead.get("city"):
        lead["city"] = _city(lead["city"])
    return lead, issues


@lru_cache(maxsize=10_000)
def _city(text: str) -> str:
    return tr_title(text)


# -------------------------------------------------------------------------------------------- CSV
def sniff_encoding(head: bytes) -> str:
    """utf-8-sig for UTF-8 (with or without BOM), utf-16 with its BOM, else Windows-1254 (Turkish
    Excel's default export)."""
    if head.startswith(codecs.BOM_UTF16_LE) or head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16"
    try:
        head.decode("utf-8")
        return "utf-8-sig"
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still UTF-8.
        if exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
            return "utf-8-sig"
        return "cp1254"


def iter_text(chunks: Iterable[bytes], encoding: str | None = None) -> Iterable[str]:
    """Decode a byte stream incrementally. Without `encoding` it is sniffed at the first chunk that is
    not pure ASCII (ASCII reads the same in UTF-8 and Windows-1254, so nothing before needs redoing)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace") if encoding else None
    for chunk in chunks:
        if not chunk:
            continue
        if decoder is None:
            if chunk.isascii():
                yield chunk.decode("ascii")
                continue
            decoder = codecs.getincrementaldecoder(sniff_encoding(chunk[:65536]))(errors="replace")
        text = decoder.decode(chunk)
        if text:
            yield text
    if decoder is not None:
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail


__all__ = ["normalize_phone", "normalize_email", "clean_domain", "clean_host", "normalize_record", "normalize_values",
           "header_columns", "pick_values", "raw_keys", "fold_identifier", "name_key", "tr_lower", "tr_upper", "tr_title",
           "clean_text", "sniff_encoding", "iter_text", "accepted_columns", "STANDARD_COLUMNS"]
