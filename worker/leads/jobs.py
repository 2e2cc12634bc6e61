"""Lead jobs and schedules: the Meta Lead Ads fetch (a leadgen webhook's field data from the Graph
API), scheduled pulls (Apollo people search, Apify datasets, Google Places text search) and critical
alerts (to realtime always, as in-app notifications for owners/admins/supervisors, and to Slack when
the tenant enabled leads.alerts.slack)."""

from __future__ import annotations

import logging
import os

from psycopg.types.json import Jsonb

from luna import secrets
from luna.channels.graph import GraphAdapter
from worker.adapters.apify import ApifyAdapter
from worker.adapters.apollo import ApolloAdapter
from worker.adapters.google_places import GooglePlacesAdapter
from worker.adapters.slack import SlackAdapter
from worker.errors import JobError, Permanent
from worker.registry import every, job

log = logging.getLogger("luna.worker.leads")


async def ingest(conn, tenant: str, source: str, payload: dict) -> dict:
    """Ingest one lead through the one SQL function (it cleans, dedupes and warns)."""
    row = await (await conn.execute("select * from private.ingest_lead(%s, %s, %s)",
                                    (tenant, source, Jsonb(payload)))).fetchone()
    return {"lead_id": str(row["lead_id"]), "action": row["action"], "warnings": row["warnings"]}


async def _meta_source(conn, tenant: str, page_id: str) -> dict:
    row = await (await conn.execute(
        "select id, config from public.lead_sources where tenant_id = %s and kind = 'meta' and config ->> 'page_id' = %s",
        (tenant, page_id))).fetchone()
    if row is None:
        return {}
    return secrets.merge(row["config"], await secrets.atenant_secrets(conn, tenant, f"lead_source.{row['id']}"))


@job("leads.meta_fetch")
async def meta_fetch(ctx, row: dict):
    try:
        return await _meta_fetch(ctx, row)
    except JobError as exc:
        raise await _meta_fetch_failed(ctx, row, exc) from exc


async def _meta_fetch_failed(ctx, row: dict, exc: JobError) -> JobError:
    """A failed fetch is visible (issue 10, item 12): the Graph API's reason ("code=graph_100_33: ... does
    not exist" for a lead deleted before it was fetched) goes into the job's error and the webhook record;
    the last attempt marks the record 'failed' (a processing_logs row and the dead_letter_* views follow)."""
    graph = (exc.body or {}).get("error") if isinstance(getattr(exc, "body", None), dict) else None
    if isinstance(graph, dict) and graph.get("code") is not None:
        code = f"graph_{graph['code']}" + (f"_{graph['error_subcode']}" if graph.get("error_subcode") else "")
        reason = f"code={code}: {graph.get('message') or graph.get('type') or 'Graph API error'}"
    else:
        text = str(exc)
        reason = text if text.startswith("code=") else f"code={exc.code or 'error'}: {text}"
    terminal = not exc.retryable or int(row.get("attempts") or 0) >= int(row.get("max_attempts") or 1)
    webhook_id = (row.get("payload") or {}).get("webhook_id")
    if webhook_id is not None:
        try:
            async with ctx.pool.connection() as conn:
                await conn.execute("select private.lead_webhook_settle(%s, null, %s, %s)", (webhook_id, reason, terminal))
        except Exception as db_exc:  # the job's own failure still records the reason
            log.warning("meta_fetch: marking webhook %s failed did not work: %s", webhook_id, db_exc)
    return JobError(reason, retryable=exc.retryable, code=exc.code, retry_after=exc.retry_after)


async def _meta_fetch(ctx, row: dict):
    p = row["payload"]
    tenant = str(row["tenant_id"])
    async with ctx.pool.connection() as conn:
        conf = await _meta_source(conn, tenant, p.get("page_id", ""))
    token = conf.get("access_token") or os.environ.get("META_PAGE_ACCESS_TOKEN")
    if not token:
        raise Permanent("no page access token (secret lead_source.<id>:access_token or META_PAGE_ACCESS_TOKEN)",
                        code="not_configured")
    base = conf.get("graph_base_url") or os.environ.get("META_GRAPH_BASE_URL")

    def make():
        a = GraphAdapter(base, timeout=10, retries=1)
        a.breaker = ctx.breaker
        return a

    graph = ctx.adapter(f"meta_graph:{base}", make)
    lead = await graph.lead(p["leadgen_id"], token)
    payload = GraphAdapter.lead_payload(lead)
    payload["form_id"] = p.get("form_id")
    async with ctx.pool.connection() as conn:
        async with conn.transaction():
            result = await ingest(conn, tenant, "meta", payload)
            await conn.execute("select private.lead_webhook_settle(%s, %s)", (p["webhook_id"], result["lead_id"]))
    return result


# ------------------------------------------------------------------------------------------- pulls
PULLERS = {
    "apollo": (ApolloAdapter, "APOLLO_API_KEY"),
    "apify": (ApifyAdapter, "APIFY_TOKEN"),
    "google_places": (GooglePlacesAdapter, "GOOGLE_PLACES_API_KEY"),
}


async def pull_source(ctx, source: dict) -> dict:
    """Fetch one source's new leads and ingest them. Returns counts."""
    cls, env_key = PULLERS[source["kind"]]
    conf = await secrets.aconfig(ctx, source["tenant_id"], f"lead_source.{source['id']}", source["config"])
    key = conf.get("api_key") or os.environ.get(env_key, "")
    a = cls(key, base_url=conf.get("base_url"), timeout=float(conf.get("timeout", 15)), retries=1)
    a.breaker = ctx.breaker
    try:
        if source["kind"] == "apollo":
            leads = await a.search_people(conf.get("query") or {})
        elif source["kind"] == "apify":
            leads = await a.dataset_items(conf["dataset_id"])
        else:
            leads = await a.search_text(conf["text_query"])
    finally:
        await a.aclose()
    counts = {"fetched": len(leads), "inserted": 0, "merged": 0, "skipped": 0}
    async with ctx.pool.connection() as conn:
        for payload in leads:
            try:
                async with conn.transaction():
                    result = await ingest(conn, str(source["tenant_id"]), source["kind"], payload)
                counts[result["action"]] = counts.get(result["action"], 0) + 1
            except Exception as exc:  # an unidentifiable record: counted, the rest continue
                counts["skipped"] += 1
                log.info("pull %s skipped a record: %s", source["kind"], exc)
    return counts


@every("leads.pull", seconds=60)
async def pull_due_sources(ctx) -> None:
    async with ctx.pool.connection() as conn:
        sources = await (await conn.execute("""
            select * from public.lead_sources
            where enabled and kind in ('apollo', 'apify', 'google_places') and pull_every_seconds is not null
              and (last_pulled_at is null or last_pulled_at < now() - make_interval(secs => pull_every_seconds))""")).fetchall()
    for source in sources:
        try:
            counts = await pull_source(ctx, source)
            error = None
        except Exception as exc:  # BreakerOpen, adapter errors: recorded, tried again next time
            counts, error = None, f"{type(exc).__name__}: {exc}"
        async with ctx.pool.connection() as conn:
            await conn.execute("select private.lead_source_pulled(%s, %s, %s)", (source["id"], Jsonb(counts or {}), error))


# ------------------------------------------------------------------------------------------ alerts
@every("leads.alerts", seconds=30)
async def send_alerts(ctx) -> int:
    """New errors that sent a lead to review (and open breakers) become in-app notifications for the
    tenant's owners, admins and supervisors and, when configured, Slack messages.

    private.lead_alerts_take (functions/channels.sql) notifies and moves the cursor
    (private.cursors['leads.alerts']) in one transaction, so a crash never repeats or skips them; Slack
    is posted after that commit (at most once). The first run starts at the newest log row."""
    async with ctx.pool.connection() as conn:
        rows = (await (await conn.execute("select private.lead_alerts_take(200) as r")).fetchone())["r"]
        opened = await (await conn.execute(
            "select module_name, last_error from public.module_health where health_status = 'OPEN' "
            "and opened_at > now() - interval '30 seconds'")).fetchall() if rows else []
    hooks: dict = {}  # the webhook URL is a tenant secret (leads.alerts.slack:webhook_url)
    for r in rows:
        r["webhook"] = None
        if r["slack"]:
            if r["tenant_id"] not in hooks:
                hooks[r["tenant_id"]] = (await secrets.aconfig(ctx, r["tenant_id"], "leads.alerts.slack", {})).get("webhook_url")
            r["webhook"] = hooks[r["tenant_id"]]
    sent = 0
    for r in rows:
        if r["webhook"]:
            text = (f":rotating_light: LUNA lead {r['lead_id']} -> {r['to_status']} in {r['module']}: {r['error']}")
            sent += await _slack(ctx, r["webhook"], text)
    if opened and rows:
        for hook in {r["webhook"] for r in rows if r["webhook"]}:
            text = "; ".join(f"circuit breaker OPEN for {o['module_name']}: {o['last_error']}" for o in opened)
            sent += await _slack(ctx, hook, f":warning: {text}")
    return sent


async def _slack(ctx, url: str, text: str) -> int:
    slack = ctx.adapter(f"slack:{url}", lambda: SlackAdapter(url, timeout=5, retries=1))
    try:
        await slack.post(text)
        return 1
    except JobError as exc:
        log.warning("slack alert failed: %s", exc)
        return 0


__all__ = ["ingest", "meta_fetch", "pull_source", "pull_due_sources", "send_alerts"]
