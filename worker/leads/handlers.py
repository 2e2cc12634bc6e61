"""Module handlers of the lead pipeline. Each takes a claimed lead (row["lead"], with the tenant's
config in row["config"]) and returns the step's result; the runner completes the whole batch in one
call (private.leads_complete), which applies the status move, the column values, the log rows and the
metrics set-based. A handler never writes to the database itself.

    normalize  RAW -> NORMALIZED             (Python normaliser: E.164, e-mail, public-suffix domain)
    enrich     NORMALIZED -> ENRICHING -> ENRICHED   (Apollo, Clearbit-style, web search: each optional)
    qualify    ENRICHED -> QUALIFYING -> QUALIFIED | HUMAN_REVIEW_NEEDED | REJECTED
               (Hunter, MX, website checks: optional; the AI provider; HOT/WARM/COLD by tenant thresholds)
    recover    TIMEOUT_DETECTED -> the status the lead was in when its worker died

Errors raise: a retryable AdapterError retries with backoff and ends in HUMAN_REVIEW_NEEDED past the
route's attempts; BreakerOpen makes the lead wait. Nothing is dropped.
"""

from __future__ import annotations

import asyncio
import os

from luna import ai, secrets
from luna.normalize import tr_title
from worker.adapters.apollo import BULK_LIMIT, ApolloAdapter
from luna.channels.http import KeyBatcher
from worker.adapters.clearbit import ClearbitAdapter
from worker.adapters.hunter import HunterAdapter
from worker.adapters.web_search import WebSearchAdapter

from . import LEADS
from .breaker import cached

ENRICHERS = {
    "leads.enrich.apollo": ("apollo", ApolloAdapter, "APOLLO_API_KEY"),
    "leads.enrich.clearbit": ("clearbit", ClearbitAdapter, "CLEARBIT_API_KEY"),
    "leads.enrich.web_search": ("web_search", WebSearchAdapter, "WEB_SEARCH_API_KEY"),
}


def feature(config: dict, key: str) -> tuple[bool, dict]:
    f = (config.get("features") or {}).get(key) or {}
    return bool(f.get("enabled")), f.get("config") or {}


def adapter(ctx, cls, name: str, conf: dict, env_key: str):
    """One shared adapter per provider, base URL and key (tenant config, else the environment)."""
    key = conf.get("api_key") or os.environ.get(env_key, "")
    base = conf.get("base_url")
    timeout = float(conf.get("timeout", 10))
    retries = int(conf.get("retries", 1))

    def make():
        a = cls(key, base_url=base, timeout=timeout, retries=retries, max_backoff=float(conf.get("max_backoff", 8)))
        a.breaker = cached(ctx)
        return a

    return ctx.adapter(f"{name}:{base}:{key}", make)


def apollo_batcher(ctx, a: ApolloAdapter) -> KeyBatcher:
    """Leads of one claimed batch share Apollo's bulk enrichment (10 domains per request)."""
    return ctx.adapter(f"apollo-batcher:{id(a)}", lambda: KeyBatcher(a.enrich_organizations, BULK_LIMIT))


# ------------------------------------------------------------------------------------------ normalize
@LEADS.handler("normalize")
async def normalize(ctx, row: dict) -> dict:
    """Apply the database's identifier rules (private.lead_identifiers, computed by the claim: a lead
    written straight into the table has not been through them) and record what they found."""
    lead = row["lead"]
    found = lead.get("identifiers") or {}
    values: dict = {}
    for column in ("email", "phone", "domain_cleaned"):
        if found.get(column) and found[column] != lead.get(column):
            values[column] = found[column]
    if lead.get("city"):
        city = tr_title(lead["city"])
        if city != lead["city"]:
            values["city"] = city
    values["validation"] = {"phone_valid": bool(found.get("phone")) if lead.get("phone") else None,
                            "email_syntax_valid": bool(found.get("email")) if lead.get("email") else None,
                            "free_mail": found.get("free_mail") if found.get("email") else None}
    return {"status": "NORMALIZED", "action": "normalize", "set": values,
            "detail": {"changed": sorted(k for k in values if k != "validation")}}


# --------------------------------------------------------------------------------------------- enrich
@LEADS.handler("enrich")
async def enrich(ctx, row: dict) -> dict:
    lead, config = row["lead"], row["config"] or {}
    enabled, _ = feature(config, "leads.enrichment")
    if not enabled:
        return {"status": "ENRICHED", "action": "enrich", "detail": {"skipped": "leads.enrichment is off"}}
    domain = lead.get("domain_cleaned")
    found: dict = {}
    used: list[str] = []
    calls = []
    for key, (name, cls, env_key) in ENRICHERS.items():
        on, conf = feature(config, key)
        if not on:
            continue
        conf = await secrets.aconfig(ctx, row.get("tenant_id") or lead.get("tenant_id"), key, conf)
        a = adapter(ctx, cls, name, conf, env_key)
        if name == "web_search":
            query = " ".join(filter(None, [lead.get("company_name"), lead.get("city")]))
            if query:
                calls.append((name, a.search(query)))
        elif domain:
            calls.append((name, apollo_batcher(ctx, a).get(domain) if name == "apollo" else a.company(domain)))
    if calls:
        results = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
        for (name, _), res in zip(calls, results):
            if isinstance(res, BaseException):
                raise res  # retry / wait / review: decided by the runner and fail_lead
            used.append(name)
            if name == "web_search":
                found["web"] = res
            elif res:
                for k, v in res.items():
                    if v is not None and k not in found:
                        found[k] = v
    values: dict = {"enrichment": found} if found else {}
    if found.get("city") and not lead.get("city"):
        values["city"] = found["city"]
    return {"status": "ENRICHED", "action": "enrich", "set": values,
            "detail": {"sources": used, "fields": sorted(found)}}


# -------------------------------------------------------------------------------------------- qualify
_provider: ai.Provider | None = None


def provider() -> ai.Provider:
    global _provider
    if _provider is None:
        _provider = ai.get_provider()
    return _provider


@LEADS.handler("qualify")
async def qualify(ctx, row: dict) -> dict:
    lead, config = row["lead"], row["config"] or {}
    validation = dict(lead.get("validation") or {})
    checks = []
    on, conf = feature(config, "leads.validate.hunter")
    if on and lead.get("email"):
        conf = await secrets.aconfig(ctx, row.get("tenant_id") or lead.get("tenant_id"), "leads.validate.hunter", conf)
        hunter = adapter(ctx, HunterAdapter, "hunter", conf, "HUNTER_API_KEY")
        checks.append(("hunter", hunter.verify(lead["email"])))
    on, conf = feature(config, "leads.validate.mx")
    if on and lead.get("email"):
        checks.append(("mx", _has_mx(lead["email"].rsplit("@", 1)[-1], float(conf.get("timeout", 2)))))
    on, conf = feature(config, "leads.validate.website")
    if on and lead.get("website"):
        checks.append(("website_reachable", _reachable(lead["website"], float(conf.get("timeout", 3)))))
    if checks:
        results = await asyncio.gather(*(c for _, c in checks), return_exceptions=True)
        for (name, _), res in zip(checks, results):
            if isinstance(res, BaseException):
                raise res
            validation[name] = res
    lead = {**lead, "validation": validation}
    settings = config.get("settings") or {}
    context = {"hot": config.get("hot", 70), "warm": config.get("warm", 40),
               "target_sectors": settings.get("target_sectors") or []}
    p = provider()
    if isinstance(p, ai.OfflineProvider):
        q = p.qualify_sync(lead, context)
    else:
        async with cached(ctx).guard("openai"):
            q = await p.qualify(lead, context)
    cat = ai.category(q.score, int(context["hot"]), int(context["warm"]))
    status = {"OK": "QUALIFIED", "HUMAN": "HUMAN_REVIEW_NEEDED", "REJECT": "REJECTED"}[q.decision]
    values = {"validation": validation, "luna_ai_score": q.score, "luna_ai_decision": q.decision,
              "luna_ai_reason": q.reason, "sector_category": q.sector, "company_size_category": q.size,
              "lead_category": cat, **ai.provenance(q)}
    return {"status": status, "action": "qualify", "set": values,
            "detail": {"provider": q.provider, "model": q.model, "prompt_version": q.prompt_version,
                       "score": q.score, "decision": q.decision, "category": cat, "rules": q.rules}}


async def _has_mx(domain: str, timeout: float) -> bool:
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    try:
        answer = await dns.asyncresolver.resolve(domain, "MX", lifetime=timeout)
        return len(answer) > 0
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return False
    except dns.exception.DNSException as exc:  # timeouts, no nameservers: not the lead's fault
        from worker.errors import JobError

        raise JobError(f"MX lookup for {domain} failed: {exc}", code="dns") from exc


async def _reachable(website: str, timeout: float) -> bool:
    import httpx

    url = website if website.startswith(("http://", "https://")) else f"https://{website}"
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            response = await client.head(url)
            return response.status_code < 500
    except httpx.HTTPError:
        return False


# -------------------------------------------------------------------------------------------- recover
@LEADS.handler("recover")
async def recover(ctx, row: dict) -> dict:
    lead = row["lead"]
    target = lead.get("resume_status") or "RAW"
    return {"status": target, "action": "recover", "detail": {"resumed": target, "after": lead.get("last_error")}}
