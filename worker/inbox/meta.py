"""Meta jobs beyond messages: Conversions API events and WhatsApp template submissions."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from luna.channels.graph import GraphAdapter
from luna.channels.http import AdapterError

from .. import steps
from ..errors import Permanent
from ..registry import job
from .send import adapter, channel, job_error


async def _sql(ctx, sql: str, *args):
    async with ctx.pool.connection() as conn:
        return await (await conn.execute(sql, args)).fetchone()


@job("inbox.conversion_event")
async def send_conversion_event(ctx, job_row: dict):
    """Send one public.conversion_events row to the Conversions API (event_id deduplicates retries)."""
    event_id = job_row["payload"]["conversion_event_id"]
    ev = await _sql(ctx, "select * from public.conversion_events where id = %s", event_id)
    if ev is None or ev["status"] == "sent":
        return {"skipped": True}
    channel_id = ev["channel_account_id"] or job_row["payload"].get("channel_account_id")
    if channel_id is None:
        raise Permanent("code=no_channel: the conversion has no channel whose token could send it")
    ch = await channel(ctx, channel_id)
    token = ch["credentials"].get("capi_token") or ch["credentials"].get("access_token")
    body = {"event_name": ev["event_name"], "event_time": int(ev["event_time"].timestamp()), "event_id": ev["event_id"],
            "action_source": ev["action_source"], "user_data": ev["user_data"], "custom_data": ev["custom_data"]}
    try:
        received = await adapter(ctx, GraphAdapter, ch).send_events(ev["pixel_id"], token, [body])
    except AdapterError as exc:
        await _sql(ctx, "select private.conversion_event_attempted(%s, %s)", event_id, str(exc))
        raise job_error(exc) from exc
    await _sql(ctx, "select private.conversion_event_attempted(%s)", event_id)
    return {"events_received": received}


@job("inbox.template_submit")
async def submit_template(ctx, job_row: dict):
    """POST the template to /{waba-id}/message_templates; keep Meta's id and status."""
    tpl = await _sql(ctx, "select * from public.message_templates where id = %s", job_row["payload"]["template_id"])
    if tpl is None:
        return {"skipped": True}
    ch = await channel(ctx, tpl["channel_account_id"])
    waba, token = (ch["settings"] or {}).get("waba_id"), ch["credentials"].get("access_token")
    if not waba or not token:
        raise Permanent("code=no_credentials: the WhatsApp channel needs settings.waba_id and an access token")
    graph = adapter(ctx, GraphAdapter, ch)
    try:
        # Once per submission job: a worker that died after Meta answered does not submit it again
        # (Meta would refuse the second one as a duplicate, and the template would look rejected).
        answer, _ = await steps.once(ctx, f"inbox.template_submit:job:{job_row['id']}", tpl["tenant_id"],
                                     lambda: graph.create_template(waba, token, tpl["name"], tpl["language"],
                                                                   tpl["category"], tpl["components"]))
    except AdapterError as exc:
        if not exc.retryable:
            await _sql(ctx, "select private.template_submitted(%s, null, %s)", tpl["id"], str(exc))
        raise job_error(exc) from exc
    await _sql(ctx, "select private.template_submitted(%s, %s)", tpl["id"], Jsonb(answer))
    return answer
