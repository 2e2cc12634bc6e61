"""One AI provider interface for LUNA.

    provider = get_provider()                 # openai when OPENAI_API_KEY is set, else offline
    q = await provider.qualify(lead, context)  # -> Qualification (score, decision, reason, sector, size)
    vectors = await embed(["metin", ...])       # 384-dim (hashed offline; text-embedding-3-small online)

The offline provider is deterministic and transparent: a fixed rule table, and the reason names the
rules that fired. The openai provider works with any OpenAI-compatible base URL (OPENAI_BASE_URL) and
asks for JSON-schema structured output. Every decision carries provider, model and prompt version,
which the callers store next to it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from luna.normalize import tr_lower
from luna.settings import get_settings

PROMPT_VERSION = "lead-qualify-v1"
OFFLINE_MODEL = "luna-rules-v1"
EMBED_DIM = 384
DECISIONS = ("OK", "HUMAN", "REJECT")
SIZES = ("Küçük", "Orta", "Büyük", "Kurumsal")

# Sector keywords (folded, lower case) -> sector_category.
SECTORS: list[tuple[str, tuple[str, ...]]] = [
    ("Sağlık", ("dis", "diş", "klinik", "poliklinik", "estetik", "hastane", "medikal", "saglik", "sağlık", "dental",
                "clinic", "hospital", "eczane")),
    ("Turizm", ("otel", "hotel", "turizm", "pansiyon", "resort", "tatil", "seyahat", "travel")),
    ("Teknoloji", ("yazilim", "yazılım", "bilisim", "bilişim", "software", "teknoloji", "tech", "dijital")),
    ("E-Ticaret", ("e-ticaret", "eticaret", "magaza", "mağaza", "butik", "shop", "store", "market")),
    ("Mobilya", ("mobilya", "furniture", "dekorasyon")),
    ("İnşaat", ("insaat", "inşaat", "yapi", "yapı", "construction", "emlak", "gayrimenkul")),
    ("Gıda", ("gida", "gıda", "restoran", "restaurant", "cafe", "kafe", "food", "pastane")),
    ("Tekstil", ("tekstil", "textile", "giyim", "konfeksiyon", "moda")),
    ("Lojistik", ("lojistik", "logistics", "kargo", "nakliyat", "tasimacilik", "taşımacılık")),
]
SPAM_WORDS = ("test", "asdf", "qwerty", "deneme", "xxx", "fake", "sahte")
PAID_MEDIUMS = ("cpc", "ppc", "paid", "paid_social", "paidsocial", "display", "ads")


@dataclass
class Qualification:
    score: int
    decision: str
    reason: str
    sector: str | None
    size: str | None
    provider: str
    model: str
    prompt_version: str = PROMPT_VERSION
    rules: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class Provider(Protocol):
    name: str
    model: str

    async def qualify(self, lead: dict, context: dict | None = None) -> Qualification: ...


def _words(text: str | None, limit: int = 50) -> str:
    words = (text or "").split()
    return " ".join(words[:limit])


def sector_of(*texts: str | None) -> str | None:
    hay = " ".join(tr_lower(t) for t in texts if t)
    if not hay:
        return None
    for sector, keys in SECTORS:
        if any(re.search(rf"(^|[^a-zçğıöşü]){re.escape(k)}", hay) for k in keys):
            return sector
    return None


def size_of(employees: int | None, company_name: str | None = None) -> str:
    if employees is not None:
        if employees >= 1000:
            return "Kurumsal"
        if employees >= 250:
            return "Büyük"
        if employees >= 50:
            return "Orta"
        return "Küçük"
    name = tr_lower(company_name or "")
    if "holding" in name or "group" in name or "grup" in name:
        return "Kurumsal"
    if "a.ş" in name or "a.s." in name or " aş" in name:
        return "Orta"
    return "Küçük"


def category(score: int, hot: int = 70, warm: int = 40) -> str:
    return "HOT" if score >= hot else "WARM" if score >= warm else "COLD"


# ------------------------------------------------------------------------------------------ offline
class OfflineProvider:
    """Deterministic rules. Each rule that fires adds its points and its name to the reason."""

    name = "offline"
    model = OFFLINE_MODEL

    async def qualify(self, lead: dict, context: dict | None = None) -> Qualification:
        return self.qualify_sync(lead, context)

    def qualify_sync(self, lead: dict, context: dict | None = None) -> Qualification:
        context = context or {}
        enrichment = lead.get("enrichment") or {}
        validation = lead.get("validation") or {}
        fired: list[tuple[str, int]] = []

        def rule(name: str, points: int, when: bool) -> None:
            if when:
                fired.append((name, points))

        email = lead.get("email") or ""
        email_domain = email.rsplit("@", 1)[-1] if "@" in email else ""
        medium = tr_lower(lead.get("utm_medium") or "")
        hunter = (validation.get("hunter") or {}).get("result")
        mx = validation.get("mx")
        employees = enrichment.get("employees")
        target = [tr_lower(s) for s in (context.get("target_sectors") or [])]

        rule("corporate_domain", 15, bool(lead.get("domain_cleaned")))
        # Free mail is the database's list (private.free_mail_domains): the normalize step records it;
        # without that record, an address on the company's own domain is corporate.
        free_mail = validation.get("free_mail")
        rule("corporate_email", 10, bool(email_domain) and (
            free_mail is False if free_mail is not None else email_domain.endswith(lead.get("domain_cleaned") or "\0")))
        rule("valid_phone", 10, bool(lead.get("phone")) and validation.get("phone_valid", True))
        rule("contact_name", 5, bool(lead.get("contact_name")))
        rule("website", 5, bool(lead.get("website")))
        rule("warm_source", 10, lead.get("source") in ("form", "meta", "inbox"))
        rule("paid_campaign", 10, medium in PAID_MEDIUMS)
        rule("email_verified", 10, hunter == "deliverable")
        rule("email_undeliverable", -25, hunter == "undeliverable")
        rule("no_mx_record", -15, mx is False)
        rule("website_unreachable", -5, validation.get("website_reachable") is False)
        size = size_of(employees if isinstance(employees, int) else None, lead.get("company_name"))
        rule("large_company", 10, size in ("Büyük", "Kurumsal") and employees is not None)
        rule("mid_company", 5, size == "Orta" and employees is not None)
        sector = sector_of(lead.get("company_name"), enrichment.get("industry"), lead.get("website"))
        rule("target_sector", 10, bool(sector) and tr_lower(sector) in target)
        name_text = tr_lower(f"{lead.get('company_name') or ''} {lead.get('contact_name') or ''} {email}")
        spam = any(re.search(rf"(^|[^a-z]){w}([^a-z]|$)", name_text) for w in SPAM_WORDS)
        rule("spam_pattern", -40, spam)

        score = max(0, min(100, 30 + sum(p for _, p in fired)))
        no_channel = not lead.get("email") and not lead.get("phone")
        if spam or (hunter == "undeliverable" and not lead.get("phone")):
            decision = "REJECT"
        elif no_channel or (hunter == "undeliverable" and score >= context.get("hot", 70)):
            decision = "HUMAN"
            if no_channel:
                fired.append(("no_contact_channel", 0))
        else:
            decision = "OK"
        names = ", ".join(f"{n} {p:+d}" if p else n for n, p in fired) or "no rule fired"
        reason = _words(f"Score {score} (base 30): {names}. Decision {decision}.")
        return Qualification(score=score, decision=decision, reason=reason, sector=sector or "Diğer", size=size,
                             provider=self.name, model=self.model, rules=[n for n, _ in fired])


# ------------------------------------------------------------------------------------------- openai
QUALIFY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["score", "decision", "reason", "sector_category", "company_size_category"],
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "decision": {"type": "string", "enum": list(DECISIONS)},
        "reason": {"type": "string", "description": "at most 50 words"},
        "sector_category": {"type": "string"},
        "company_size_category": {"type": "string", "enum": list(SIZES)},
    },
}
SYSTEM_PROMPT = (
    "You qualify inbound B2B/B2C sales leads for a Turkish business. Score 0-100 how likely the lead is a real, "
    "reachable buyer worth a sales call. decision: OK (pass to sales), HUMAN (unclear; a person should look), "
    "REJECT (spam, fake or unreachable). reason: at most 50 words naming the signals you used. "
    "company_size_category: Küçük (<50 staff), Orta (50-249), Büyük (250-999), Kurumsal (1000+). "
    "sector_category: a short Turkish sector name.")


class OpenAIProvider:
    name = "openai"

    def __init__(self, api_key: str, base_url: str | None = None, model: str = "gpt-4o-mini", client=None,
                 timeout: float = 20.0):
        from openai import AsyncOpenAI

        self.model = model
        self.client = client or AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=1)

    async def qualify(self, lead: dict, context: dict | None = None) -> Qualification:
        from luna.errors import JobError

        facts = {k: lead.get(k) for k in ("company_name", "contact_name", "email", "phone", "website", "domain_cleaned",
                                          "city", "country", "source", "utm_source", "utm_medium", "utm_campaign")}
        facts["enrichment"] = lead.get("enrichment") or {}
        facts["validation"] = lead.get("validation") or {}
        try:
            response = await self.client.chat.completions.create(
                model=self.model, temperature=0,
                messages=[{"role": "system", "content": SYSTEM_PROMPT},
                          {"role": "user", "content": json.dumps({"lead": facts, "tenant": context or {}},
                                                                 ensure_ascii=False, default=str)}],
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "lead_qualification", "strict": True, "schema": QUALIFY_SCHEMA}})
            data = json.loads(response.choices[0].message.content or "")
        except json.JSONDecodeError as exc:
            raise JobError(f"openai answered malformed JSON: {exc}", code="malformed_json") from exc
        except Exception as exc:  # openai.APIError and transport errors: retry later
            status = getattr(exc, "status_code", None)
            raise JobError(f"openai failed: {type(exc).__name__}: {exc}", retryable=status not in (400, 401, 403, 404),
                           code=f"http_{status}" if status else "openai_error") from exc
        try:
            score = int(data["score"])
            decision = data["decision"]
            if decision not in DECISIONS or not 0 <= score <= 100:
                raise ValueError(f"decision {decision!r} / score {score}")
            size = data.get("company_size_category")
            return Qualification(score=score, decision=decision, reason=_words(data.get("reason")),
                                 sector=data.get("sector_category") or None, size=size if size in SIZES else None,
                                 provider=self.name, model=self.model)
        except (KeyError, TypeError, ValueError) as exc:
            raise JobError(f"openai answered the wrong schema: {exc}", code="wrong_schema") from exc


def get_provider(settings=None) -> Provider:
    """openai when OPENAI_API_KEY is set, else the offline rules."""
    settings = settings or get_settings()
    if settings.openai_api_key:
        return OpenAIProvider(settings.openai_api_key, settings.openai_base_url, settings.openai_model)
    return OfflineProvider()


# ----------------------------------------------------------------------------------------- embeddings
def hashed_embedding(text: str, dim: int = EMBED_DIM) -> list[float]:
    """A deterministic bag-of-features embedding: words and character trigrams hashed into `dim`
    signed buckets, L2-normalised. Similar texts share features, so cosine similarity is meaningful."""
    text = tr_lower(text or "")
    words = re.findall(r"\w+", text)
    features = words + [w[i:i + 3] for w in words for i in range(max(len(w) - 2, 1))]
    vec = [0.0] * dim
    for feat in features:
        digest = hashlib.blake2b(feat.encode(), digest_size=8).digest()
        h = int.from_bytes(digest, "little")
        vec[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


async def embed(texts: list[str], settings=None, client=None) -> tuple[list[list[float]], dict]:
    """Embeddings of `texts` (384 dims) and their provenance {provider, model}."""
    settings = settings or get_settings()
    if settings.openai_api_key or client is not None:
        from openai import AsyncOpenAI

        client = client or AsyncOpenAI(api_key=settings.openai_api_key, base_url=settings.openai_base_url)
        response = await client.embeddings.create(model=settings.embedding_model, input=texts, dimensions=EMBED_DIM)
        return [d.embedding for d in response.data], {"provider": "openai", "model": settings.embedding_model}
    return [hashed_embedding(t) for t in texts], {"provider": "offline", "model": f"hashed-{EMBED_DIM}"}


def provenance(q: Qualification) -> dict[str, Any]:
    return {"ai_provider": q.provider, "ai_model": q.model, "ai_prompt_version": q.prompt_version}


__all__ = ["Qualification", "Provider", "OfflineProvider", "OpenAIProvider", "get_provider", "embed",
           "hashed_embedding", "category", "sector_of", "size_of", "PROMPT_VERSION", "EMBED_DIM"]
