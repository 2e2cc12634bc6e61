"""Inbox work: inbound events -> contacts/conversations/messages (SQL does the mapping), the outbound
send queue (rate-limit slots handed out by SQL at claim time), IMAP sync, template sync, Meta insights
and Conversions API events."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import uuid

import psycopg
from psycopg.types.json import Jsonb

from luna import secrets

from ..adapters.base import AdapterError
from ..adapters.meta import MetaAdapter
from ..adapters.whatsapp import WhatsAppAdapter
from ..errors import JobError, Permanent
from ..registry import Queue, every, job, queue

log = logging.getLogger("luna.worker.inbox")

INBOUND = queue(Queue(
    name="inbox_inbound", claim="private.claim_inbound_events", complete="private.complete_inbound_events",
    fail="private.fail_inbound_event", release="private.release_inbound_events",
    defer="private.defer_inbound_event", rescue="private.rescue_inbound_events",
    dispatch_column="kind", id_type="bigint"))
OUTBOUND = queue(Queue(
    name="inbox_outbound", claim="private.claim_outbound", complete="private.complete_outbound",
    fail="private.fail_outbound", release="private.release_outbound", defer="private.defer_outbound",
    rescue="private.rescue_outbound", dispatch_column="kind", id_type="uuid"))
# Both wake on NOTIFY luna_inbox (inserts into inbound_events / outbound_messages).
INBOUND.channel = "luna_inbox"
OUTBOUND.channel = "luna_inbox"

CHANNEL_CACHE_SECONDS = 30.0


# ------------------------------------------------------------------------------------------ inbound
@INBOUND.handler("inbound")
async def process_inbound(ctx, row: dict):
    async with ctx.pool.connection() as conn:
        try:
            cur = await conn.execute("select private.process_inbound_event(%s) as result", (row["id"],))
        except (psycopg.errors.InvalidParameterValue, psycopg.errors.DataException) as exc:
            # The event itself is wrong (unknown object, bad field): retrying will not help.
            raise Permanent(f"{type(exc).__name__}: {exc}") from exc
        return (await cur.fetchone())["result"]


# ------------------------------------------------------------------------------------------ outbound
async def channel(ctx, channel_id) -> dict:
    """The channel's settings and decrypted credentials (cached briefly per worker)."""
    cache = ctx.adapter("inbox.channels", dict)
    hit = cache.get(str(channel_id))
    if hit and hit[0] > time.monotonic():
        return hit[1]
    async with ctx.pool.connection() as conn:
        row = await (await conn.execute("select * from private.channel_for_worker(%s)", (channel_id,))).fetchone()
        if row is None:
            raise Permanent(f"channel account {channel_id} not found")
        creds = json.loads(await secrets.adecrypt(row["secret"], conn)) if row["secret"] else {}
    data = {**row, "credentials": creds}
    data.pop("secret", None)
    cache[str(channel_id)] = (time.monotonic() + CHANNEL_CACHE_SECONDS, data)
    return data


async def wait_for_slot(row: dict) -> None:
    """Sleep until the rate-limit slot the claim gave this message."""
    slot = row.get("send_after")
    if slot is not None:
        delay = (slot - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


def _adapter(ctx, cls, ch: dict):
    base = (ch["settings"] or {}).get("base_url")
    def make():
        adapter = cls(base)
        adapter.breaker = ctx.breaker
        return adapter
    return ctx.adapter(f"{cls.__name__}:{base}", make)


def _job_error(exc: AdapterError) -> JobError:
    text = str(exc)
    if not text.startswith("code="):
        text = f"code={exc.code or 'error'}: {text}"
    return JobError(text, retryable=exc.retryable, code=exc.code)


@OUTBOUND.handler("whatsapp")
async def send_whatsapp(ctx, row: dict):
    ch = await channel(ctx, row["channel_account_id"])
    token = ch["credentials"].get("access_token")
    if not token:
        raise Permanent("code=no_credentials: the WhatsApp channel has no access token")
    await wait_for_slot(row)
    try:
        wamid = await _adapter(ctx, WhatsAppAdapter, ch).send(ch["external_id"], token, row["request"])
    except AdapterError as exc:
        raise _job_error(exc) from exc
    return {"provider_message_id": wamid}


@OUTBOUND.handler("instagram")
@OUTBOUND.handler("messenger")
async def send_meta(ctx, row: dict):
    ch = await channel(ctx, row["channel_account_id"])
    token = ch["credentials"].get("access_token")
    if not token:
        raise Permanent("code=no_credentials: the channel has no page access token")
    await wait_for_slot(row)
    try:
        mid = await _adapter(ctx, MetaAdapter, ch).send_message(ch["external_id"], token, row["request"])
    except AdapterError as exc:
        raise _job_error(exc) from exc
    return {"provider_message_id": mid}


@OUTBOUND.handler("email")
async def send_email(ctx, row: dict):
    from ..adapters import smtp_mail

    ch = await channel(ctx, row["channel_account_id"])
    s, creds = ch["settings"] or {}, ch["credentials"]
    await wait_for_slot(row)
    message_id = await asyncio.to_thread(
        smtp_mail.send, s.get("smtp_host", "127.0.0.1"), int(s.get("smtp_port", 587)), ch["external_id"], row["request"],
        username=(creds.get("smtp_username") or creds.get("username")) if s.get("smtp_auth", True) else None,
        password=(creds.get("smtp_password") or creds.get("password")) if s.get("smtp_auth", True) else None,
        sender_name=s.get("sender_name"),
        use_ssl=bool(s.get("smtp_ssl")), starttls=bool(s.get("smtp_starttls")))
    return {"provider_message_id": message_id}


@OUTBOUND.handler("webchat")
async def send_webchat(ctx, row: dict):
    # Web chat has no provider: the message reaches the widget through realtime (message_created).
    return {"provider_message_id": f"webchat:{uuid.uuid4()}"}


# ------------------------------------------------------------------------------------------ e-mail
async def sync_mailbox(ctx, channel_id) -> dict:
    """Fetch new mail of one mailbox into inbound events (then processed like any other event)."""
    from ..adapters import imap_mail

    ch = await channel(ctx, channel_id)
    s, creds = ch["settings"] or {}, ch["credentials"]
    folders = s.get("folders") or ["INBOX"]
    results = await asyncio.to_thread(
        imap_mail.sync, s.get("imap_host", "127.0.0.1"), int(s.get("imap_port", 993)),
        creds.get("imap_username") or creds.get("username") or ch["external_id"],
        creds.get("imap_password") or creds.get("password") or "", folders, ch["sync_state"] or {},
        mailbox_address=ch["external_id"], ssl=bool(s.get("imap_ssl", True)), starttls=bool(s.get("imap_starttls")))
    stored = 0
    async with ctx.pool.connection() as conn:
        for result in results:
            async with conn.transaction():
                for mail in result.messages:
                    row = await (await conn.execute(
                        "select inserted from private.receive_event('email', %s, %s, '{}', null, null, %s)",
                        (f"{channel_id}:{mail.payload['message_id']}", Jsonb(mail.payload), channel_id))).fetchone()
                    stored += int(row["inserted"])
                await conn.execute("select private.save_sync_state(%s, %s, %s)",
                                   (channel_id, result.folder, Jsonb({"uidvalidity": result.uidvalidity,
                                                                      "uid": result.last_uid})))
    # The cached sync_state is now stale.
    ctx.adapter("inbox.channels", dict).pop(str(channel_id), None)
    return {"stored": stored, "folders": {r.folder: r.last_uid for r in results}}


@every("inbox.imap_sync", seconds=60)
async def imap_sync_all(ctx) -> None:
    async with ctx.pool.connection() as conn:
        rows = await (await conn.execute(
            "select id from public.channel_accounts where kind = 'email' and active "
            "and settings ? 'imap_host' and exists (select 1 from private.channel_credentials c where c.channel_account_id = id)"
        )).fetchall()
    for row in rows:
        try:
            await sync_mailbox(ctx, row["id"])
        except Exception as exc:  # one broken mailbox must not stop the others
            log.warning("imap sync of %s failed: %s", row["id"], exc)


# ------------------------------------------------------------------------------------------ templates
async def sync_templates(ctx, channel_id) -> int:
    ch = await channel(ctx, channel_id)
    waba = (ch["settings"] or {}).get("waba_id")
    token = ch["credentials"].get("access_token")
    if not waba or not token:
        return 0
    templates = await _adapter(ctx, WhatsAppAdapter, ch).list_templates(waba, token)
    async with ctx.pool.connection() as conn:
        row = await (await conn.execute("select private.upsert_templates(%s, %s) as n",
                                        (channel_id, Jsonb(templates)))).fetchone()
    return row["n"]


@every("inbox.template_sync", seconds=3600)
async def template_sync_all(ctx) -> None:
    async with ctx.pool.connection() as conn:
        rows = await (await conn.execute("select id from public.channel_accounts where kind = 'whatsapp' and active "
                                         "and settings ? 'waba_id'")).fetchall()
    for row in rows:
        try:
            await sync_templates(ctx, row["id"])
        except Exception as exc:
            log.warning("template sync of %s failed: %s", row["id"], exc)


# ------------------------------------------------------------------------------------------ Meta ads
async def sync_insights(ctx, ad_account_id, since: str, until: str) -> int:
    async with ctx.pool.connection() as conn:
        acc = await (await conn.execute("select * from public.ad_accounts where id = %s", (ad_account_id,))).fetchone()
    if acc is None or acc["channel_account_id"] is None:
        return 0
    ch = await channel(ctx, acc["channel_account_id"])
    token = ch["credentials"].get("marketing_token") or ch["credentials"].get("access_token")
    rows = await _adapter(ctx, MetaAdapter, ch).insights(acc["external_id"], token, since, until, level="ad")
    async with ctx.pool.connection() as conn:
        n = (await (await conn.execute("select private.upsert_ad_insights(%s, 'ad', %s) as n",
                                       (ad_account_id, Jsonb(rows)))).fetchone())["n"]
        await conn.execute("update public.ad_accounts set last_synced_at = now() where id = %s", (ad_account_id,))
    return n


@every("inbox.insights_sync", cron="30 3 * * *")
async def insights_sync_all(ctx) -> None:
    today = dt.date.today()
    async with ctx.pool.connection() as conn:
        rows = await (await conn.execute("select id from public.ad_accounts where channel_account_id is not null")).fetchall()
    for row in rows:
        try:
            await sync_insights(ctx, row["id"], str(today - dt.timedelta(days=7)), str(today))
        except Exception as exc:
            log.warning("insights sync of %s failed: %s", row["id"], exc)


@job("inbox.conversion_event")
async def send_conversion_event(ctx, job_row: dict):
    """Send one public.conversion_events row to the Conversions API (event_id deduplicates retries)."""
    event_id = job_row["payload"]["conversion_event_id"]
    async with ctx.pool.connection() as conn:
        ev = await (await conn.execute("select * from public.conversion_events where id = %s", (event_id,))).fetchone()
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
        received = await _adapter(ctx, MetaAdapter, ch).send_events(ev["pixel_id"], token, [body])
    except AdapterError as exc:
        async with ctx.pool.connection() as conn:
            await conn.execute("update public.conversion_events set attempts = attempts + 1, last_error = %s where id = %s",
                               (str(exc)[:2000], event_id))
        raise _job_error(exc) from exc
    async with ctx.pool.connection() as conn:
        await conn.execute("update public.conversion_events set status = 'sent', sent_at = now(), attempts = attempts + 1 "
                           "where id = %s", (event_id,))
    return {"events_received": received}


# ------------------------------------------------------------------------------------------ SMS, Telegram
@OUTBOUND.handler("sms_twilio")
async def send_twilio(ctx, row: dict):
    from ..adapters.twilio import TwilioAdapter

    ch = await channel(ctx, row["channel_account_id"])
    creds = ch["credentials"]
    if not creds.get("account_sid") or not creds.get("auth_token"):
        raise Permanent("code=no_credentials: the Twilio channel needs account_sid and auth_token")
    await wait_for_slot(row)
    try:
        sid = await _adapter(ctx, TwilioAdapter, ch).send(
            creds["account_sid"], creds["auth_token"], ch["external_id"], row["recipient"], row["request"].get("body") or "",
            (ch["settings"] or {}).get("status_callback"))
    except AdapterError as exc:
        raise _job_error(exc) from exc
    return {"provider_message_id": sid}


@OUTBOUND.handler("sms_netgsm")
async def send_netgsm(ctx, row: dict):
    from ..adapters.netgsm import NetgsmAdapter

    ch = await channel(ctx, row["channel_account_id"])
    creds = ch["credentials"]
    if not creds.get("username") or not creds.get("password"):
        raise Permanent("code=no_credentials: the Netgsm channel needs username and password")
    await wait_for_slot(row)
    try:
        job_id = await _adapter(ctx, NetgsmAdapter, ch).send(creds["username"], creds["password"], ch["external_id"],
                                                             row["recipient"], row["request"].get("body") or "")
    except AdapterError as exc:
        raise _job_error(exc) from exc
    return {"provider_message_id": f"netgsm:{job_id}"}


@OUTBOUND.handler("telegram")
async def send_telegram(ctx, row: dict):
    from ..adapters.telegram import TelegramAdapter

    ch = await channel(ctx, row["channel_account_id"])
    token = ch["credentials"].get("bot_token")
    if not token:
        raise Permanent("code=no_credentials: the Telegram channel needs bot_token")
    await wait_for_slot(row)
    try:
        mid = await _adapter(ctx, TelegramAdapter, ch).send(token, row["recipient"], row["request"].get("body") or "")
    except AdapterError as exc:
        raise _job_error(exc) from exc
    return {"provider_message_id": mid}


@job("inbox.template_submit")
async def submit_template(ctx, job_row: dict):
    """POST the template to /{waba-id}/message_templates; keep Meta's id and status."""
    async with ctx.pool.connection() as conn:
        tpl = await (await conn.execute("select * from public.message_templates where id = %s",
                                        (job_row["payload"]["template_id"],))).fetchone()
    if tpl is None:
        return {"skipped": True}
    ch = await channel(ctx, tpl["channel_account_id"])
    waba, token = (ch["settings"] or {}).get("waba_id"), ch["credentials"].get("access_token")
    if not waba or not token:
        raise Permanent("code=no_credentials: the WhatsApp channel needs settings.waba_id and an access token")
    try:
        answer = await _adapter(ctx, WhatsAppAdapter, ch).create_template(
            waba, token, tpl["name"], tpl["language"], tpl["category"], tpl["components"])
    except AdapterError as exc:
        if not exc.retryable:
            async with ctx.pool.connection() as conn:
                await conn.execute("update public.message_templates set status = 'REJECTED', rejected_reason = %s where id = %s",
                                   (str(exc)[:500], tpl["id"]))
        raise _job_error(exc) from exc
    async with ctx.pool.connection() as conn:
        await conn.execute("update public.message_templates set provider_template_id = %s, status = %s, synced_at = now() "
                           "where id = %s", (answer["id"], answer.get("status", "PENDING"), tpl["id"]))
    return answer
