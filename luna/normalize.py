"""Lead data normalisation: small pure functions every area can import.

    normalize_phone("0532 123 45 67")            -> "+905321234567"
    normalize_email(" Ali@Örnek.COM.tr ")        -> "ali@örnek.com.tr"
    domain_from(website="https://www.shop.acme.com.tr/x") -> "acme.com.tr"
    domain_from(email="ali@gmail.com")           -> None   (free mail is never a company domain)

phonenumbers, email-validator (no DNS) and tldextract (bundled public suffix list, offline) do the
work; results are cached per distinct value so bulk imports never repeat it. `normalize_record` turns
one raw row (any common header spelling) into the standard lead columns plus the reasons it is bad.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from functools import lru_cache
from typing import Iterable

import phonenumbers
import tldextract
from email_validator import EmailNotValidError, validate_email

# Free / consumer mail providers: their domains never identify a company. Mirrored in SQL
# (private.free_mail_domains) so the database's dedupe rule agrees.
FREE_MAIL_DOMAINS = frozenset("""
gmail.com googlemail.com hotmail.com hotmail.com.tr outlook.com outlook.com.tr live.com live.com.tr msn.com
yahoo.com yahoo.com.tr ymail.com icloud.com me.com mac.com aol.com gmx.com gmx.de gmx.net web.de mail.com
yandex.com yandex.com.tr yandex.ru mail.ru protonmail.com proton.me tutanota.com zoho.com windowslive.com
mynet.com superonline.com ttmail.com turk.net hotmail.co.uk yahoo.co.uk qq.com 163.com
""".split())

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
# Turkish numbers written the usual ways (0532 123 45 67, +90 (212) 444 55 66, 905321234567): ten
# national digits. Their validity depends only on the operator / area code, so phonenumbers decides it
# once per six-digit prefix and the rest of a bulk import reuses the answer.
_TR_FAST = re.compile(r"^(?:\+90|0090|90|0)?([2-5]\d{9})$")
_TR_SEPARATORS = re.compile(r"[\s().\-/]")
_TR_PREFIX_VALID: dict[str, bool] = {}


@lru_cache(maxsize=200_000)
def normalize_phone(raw, region: str = "TR") -> str | None:
    """A phone number in E.164 ("+905321234567"), read in `region` when it has no country code;
    None when it is not a valid number."""
    text = clean_text(raw)
    if not text:
        return None
    if (region or "TR") == "TR":
        match = _TR_FAST.match(_TR_SEPARATORS.sub("", text))
        if match:
            national = match.group(1)
            valid = _TR_PREFIX_VALID.get(national[:6])
            if valid is None:
                valid = _TR_PREFIX_VALID[national[:6]] = _parse_phone("+90" + national, "TR") is not None
            return "+90" + national if valid else None
    return _parse_phone(text, region or "TR")


def _parse_phone(text: str, region: str) -> str | None:
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_SIMPLE_EMAIL = re.compile(r"^[a-z0-9_%+'-]+(?:\.[a-z0-9_%+'-]+)*@([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,63})$")


@lru_cache(maxsize=50_000)
def _valid_mail_domain(domain: str) -> bool:
    try:
        validate_email("x@" + domain, check_deliverability=False)
        return True
    except EmailNotValidError:
        return False


@lru_cache(maxsize=200_000)
def normalize_email(raw) -> str | None:
    """A syntactically valid address, case-folded locale-independently (fold_identifier), international
    domains kept; no DNS.
    None when invalid."""
    text = clean_text(raw)
    if not text:
        return None
    text = fold_identifier(text.strip())
    text = text.removeprefix("mailto:").strip()
    if text.isascii():
        # Fast path for plain ASCII addresses: the local part checked by pattern, the domain by
        # email-validator once per distinct domain.
        lowered = text.lower()
        match = _SIMPLE_EMAIL.match(lowered)
        if match and len(lowered) <= 254 and len(lowered.split("@", 1)[0]) <= 64:
            domain = match.group(1)
            if len(domain) <= 253 and all(len(label) <= 63 for label in domain.split(".")):
                return lowered
            return None
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        return None
    return fold_identifier(result.normalized)


@lru_cache(maxsize=200_000)
def _registered_domain(host: str) -> str | None:
    ext = _extract(host)
    if not ext.domain or not ext.suffix:
        return None
    return f"{ext.domain}.{ext.suffix}"


def clean_domain(value) -> str | None:
    """The registrable domain of a URL or host name: scheme, credentials, port, path, www stripped,
    public-suffix aware ("https://www.shop.acme.com.tr/x" -> "acme.com.tr")."""
    text = clean_text(value)
    if not text:
        return None
    text = fold_identifier(text)
    text = re.sub(r"^[a-z][a-z0-9+.-]*://", "", text)
    text = text.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    text = text.rsplit("@", 1)[-1].split(":", 1)[0].strip(".")
    if not text or " " in text or "." not in text:
        return None
    try:
        text = text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError:
        return None
    return _registered_domain(text)


def is_free_mail(domain: str | None) -> bool:
    return bool(domain) and domain in FREE_MAIL_DOMAINS


@lru_cache(maxsize=200_000)
def domain_from(website=None, email=None) -> str | None:
    """The company's domain: from the website, else from the e-mail unless it is a free-mail address."""
    domain = clean_domain(website)
    if domain and not is_free_mail(domain):
        return domain
    address = normalize_email(email) if email else None
    if address:
        domain = clean_domain(address.rsplit("@", 1)[1])
        if domain and not is_free_mail(domain):
            return domain
    return None


def unique_lead_id(domain: str | None, email: str | None, phone: str | None,
                   company_name: str | None = None, external_id: str | None = None) -> str | None:
    """The deterministic per-tenant identity key; the same rule as private.lead_key in SQL."""
    if domain:
        return "d:" + domain
    if email:
        return "e:" + email
    if phone:
        return "p:" + phone
    if external_id:
        return "x:" + external_id
    if company_name and (key := name_key(company_name)):
        return "c:" + key
    return None


# ------------------------------------------------------------------------------------------ records
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


def normalize_record(row: dict, region: str = "TR") -> tuple[dict, list[str]]:
    """Map one raw row (any common header spelling) to the standard lead columns. Returns
    (lead, problems); a row with problems is rejected by bulk imports (each problem a short reason)."""
    keys = [k for k in row if k is not None]
    return normalize_values(pick_values(header_columns(keys), [row[k] for k in keys]), region)


def normalize_values(values: dict, region: str = "TR") -> tuple[dict, list[str]]:
    """Normalise values already keyed by standard column names."""
    lead: dict = {}
    for column, value in values.items():
        text = clean_text(value)
        if text:
            lead[column] = text
    problems: list[str] = []
    raw_email, raw_phone = lead.get("email"), lead.get("phone")
    if raw_email:
        email = normalize_email(raw_email)
        if email is None:
            problems.append(f"invalid e-mail {raw_email!r}")
        lead["email"] = email
    if raw_phone:
        phone = normalize_phone(raw_phone, region)
        if phone is None:
            problems.append(f"invalid phone {raw_phone!r}")
        lead["phone"] = phone
    if not lead.get("company_name"):
        problems.append("no company name")
    if not (lead.get("email") or lead.get("phone") or lead.get("website")) and not problems:
        problems.append("no e-mail, phone or website")
    if lead.get("city"):
        lead["city"] = _city(lead["city"])
    lead["domain_cleaned"] = domain_from(lead.get("website"), lead.get("email"))
    lead["unique_lead_id"] = lead.get("unique_lead_id") or unique_lead_id(
        lead["domain_cleaned"], lead.get("email"), lead.get("phone"), lead.get("company_name"), lead.get("external_id"))
    return lead, problems


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


__all__ = ["normalize_phone", "normalize_email", "domain_from", "clean_domain", "is_free_mail", "unique_lead_id",
           "normalize_record", "normalize_values", "header_columns", "pick_values", "raw_keys", "fold_identifier", "name_key", "tr_lower", "tr_upper", "tr_title", "clean_text", "sniff_encoding", "iter_text",
           "FREE_MAIL_DOMAINS", "STANDARD_COLUMNS"]
