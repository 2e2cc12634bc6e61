"""Inbox work: inbound events -> contacts/conversations/messages (SQL does the mapping), the outbound
send queue (rate-limit slots handed out by SQL at claim time), IMAP sync, template sync, Meta insights
and Conversions API events."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import smtplib
import socket
import time
import uuid

import httpx
import psycopg
from psycopg.types.json import Jsonb

from luna import secrets

from ..adapters.base import AdapterError
from ..adapters.meta import MetaAdapter
from ..adapters.whatsapp import WhatsAppAdapter
from .. import steps
from ..errors import BreakerOpen, JobError, Permanent
from ..registry import every, installed, job, queue

log = logging.getLogger("luna.worker.inbox")

# private.inbound_* and private.outbound_* (install_queue in functions/inbox.sql)
INBOUND = queue(installed("inbox_inbound", "inbound", dispatch_column="kind", id_type="bigint"))
OUTBOUND = queue(installed("inbox_outbound", "outbound", dispatch_column="kind", id_type="uuid"))
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
        except psycopg.DataError as exc:
            # The event itself is wrong (SQLSTATE class 22: unknown object, a bad date or number): retrying
            # will not help; it fails at once and shows in dead_letter_inbound_events.
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


# ------------------------------------------------------------------------------------------ exactly once
# Each step of a send commits on its own (functions/inbox.sql): the call is marked as started, the
# provider's id is recorded the moment it answers, and only then is the batch settled. A message whose
# worker dies, or whose settlement fails, after its call started goes to 'reconcile': settled from the
# recorded id, never sent a second time. None of the providers here (WhatsApp Cloud API, Messenger /
# Instagram Send API, Twilio, Netgsm, Telegram, SMTP) takes an idempotency key on a send, so the
# database is the only guard against a duplicate.

ACCEPT_RETRIES = (0.2, 0.5, 1.0, 2.0, 4.0)

# Adapter errors that leave it open whether the provider took the message (no answer, or an answer we
# could not read); anything else the provider said is a refusal: nothing was sent.
_UNCLEAR_CODES = {"timeout", "network", "malformed_json", "wrong_schema"}
# ... except these, raised before a byte of the request went out.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def refused(exc: BaseException) -> bool:
    """True when the provider certainly did not take the message (so it may be retried)."""
    if isinstance(exc, BreakerOpen):
        return True
    if isinstance(exc, AdapterError):
        if exc.code in _UNCLEAR_CODES:
            return isinstance(exc.__cause__, _NEVER_SENT)
        return True
    if isinstance(exc, JobError):  # SMTP (worker/adapters/smtp_mail.py): the server's refusal, or no connection
        return isinstance(exc.__cause__, (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused,
                                          ConnectionRefusedError, socket.gaierror))
    return False


async def _sql(ctx, sql: str, *args):
    async with ctx.pool.connection() as conn:
        return await (await conn.execute(sql, args)).fetchone()


async def _record_accepted(ctx, row: dict, provider_message_id: str) -> None:
    """The provider's id, committed at once; retried, since losing it would leave the message unsettled."""
    for delay in (*ACCEPT_RETRIES, None):
        try:
            recorded = (await _sql(ctx, "select private.outbound_accepted(%s, %s, %s) as ok",
                                   ctx.worker_id, row["id"], provider_message_id))["ok"]
            if not recorded:
                log.warning("outbound %s: the provider's id %s was not recorded (the row has an id already or "
                            "is no longer being sent)", row["id"], provider_message_id)
            return
        except psycopg.Error as exc:
            if delay is None:
                log.error("outbound %s was accepted by the provider as %s but recording it failed: %s; it stays "
                          "unsettled and goes to reconcile, never sent again", row["id"], provider_message_id, exc)
                raise JobError(f"code=accept_not_recorded: accepted as {provider_message_id}, not recorded: {exc}",
                               retryable=True) from exc
            await asyncio.sleep(delay)


async def send_once(ctx, row: dict, call) -> dict:
    """Run one provider call for a claimed outbound row, at most once per message. `call()` sends and
    returns the provider's message id."""
    if row.get("provider_message_id"):  # the provider has it: settle, never send again
        return {"provider_message_id": row["provider_message_id"], "replayed": True}
    await wait_for_slot(row)
    begun = (await _sql(ctx, "select private.outbound_send_begin(%s, %s) as b", ctx.worker_id, row["id"]))["b"]
    if not begun["go"]:
        if begun.get("provider_message_id"):
            return {"provider_message_id": begun["provider_message_id"], "replayed": True}
        raise JobError(f"code=lease_lost: the message is {begun.get('status')} "
                       f"(held by {begun.get('locked_by')}); not sent by this worker", retryable=True)
    try:
        provider_message_id = await call()
    except Exception as exc:
        if refused(exc):
            try:
                await _sql(ctx, "select private.outbound_send_refused(%s, %s)", ctx.worker_id, row["id"])
            except psycopg.Error as db_exc:  # the mark stays: the row goes to reconcile, not to a resend
                log.warning("outbound %s: clearing the send mark failed: %s", row["id"], db_exc)
        if isinstance(exc, AdapterError):
            raise _job_error(exc) from exc
        raise
    await _record_accepted(ctx, row, provider_message_id)
    return {"provider_message_id": provider_message_id}


@every("inbox.outbound_reconcile", seconds=60)
async def reconcile_outbound(ctx) -> int:
    """Settle messages in 'reconcile' that the provider accepted (from their recorded id; never resent)."""
    return (await _sql(ctx, "select private.reconcile_outbound() as n"))["n"]


@OUTBOUND.handler("whatsapp")
async def send_whatsapp(ctx, row: dict):
    ch = await channel(ctx, row["channel_account_id"])
    token = ch["credentials"].get("access_token")
    if not token:
        raise Permanent("code=no_credentials: the WhatsApp channel has no access token")
    adapter = _adapter(ctx, WhatsAppAdapter, ch)
    return await send_once(ctx, row, lambda: adapter.send(ch["external_id"], token, row["request"]))


@OUTBOUND.handler("instagram")
@OUTBOUND.handler("messenger")
async def send_meta(ctx, row: dict):
    ch = await channel(ctx, row["channel_account_id"])
    token = ch["credentials"].get("access_token")
    if not token:
        raise Permanent("code=no_credentials: the channel has no page access token")
    adapter = _adapter(ctx, MetaAdapter, ch)
    return await send_once(ctx, row, lambda: adapter.send_message(ch["external_id"], token, row["request"]))


@OUTBOUND.handler("email")
async def send_email(ctx, row: dict):
    from ..adapters import smtp_mail

    # An address that bounced after this message was queued is not sent to either (issue 10).
    bounce = await _sql(ctx, "select ct.bounced_at, ct.bounce_reason from public.messages m "
                             "join public.conversations v on v.tenant_id = m.tenant_id and v.id = m.conversation_id "
                             "join public.contacts ct on ct.tenant_id = v.tenant_id and ct.id = v.contact_id "
                             "where m.id = %s", row["message_id"])
    if bounce and bounce["bounced_at"] is not None:
        raise Permanent(f"code=recipient_bouncing: not sent: mail to {row['recipient']} bounced "
                        f"({bounce['bounce_reason'] or 'no reason given'})", code="recipient_bouncing")
    ch = await channel(ctx, row["channel_account_id"])
    s, creds = ch["settings"] or {}, ch["credentials"]
    return await send_once(ctx, row, lambda: asyncio.to_thread(
        smtp_mail.send, s.get("smtp_host", "127.0.0.1"), int(s.get("smtp_port", 587)), ch["external_id"], row["request"],
        username=(creds.get("smtp_username") or creds.get("username")) if s.get("smtp_auth", True) else None,
        password=(creds.get("smtp_password") or creds.get("password")) if s.get("smtp_auth", True) else None,
        sender_name=s.get("sender_name"),
        use_ssl=bool(s.get("smtp_ssl")), starttls=bool(s.get("smtp_starttls"))))


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
    adapter = _adapter(ctx, TwilioAdapter, ch)
    # Status callbacks come back to this channel's webhook at the public URL (edge/webhook_urls.py).
    public = (os.environ.get("LUNA_PUBLIC_URL") or "").strip().rstrip("/")
    callback = (ch["settings"] or {}).get("status_callback") or (
        f"{public}/v1/webhooks/twilio/{row['channel_account_id']}" if public else None)
    return await send_once(ctx, row, lambda: adapter.send(
        creds["account_sid"], creds["auth_token"], ch["external_id"], row["recipient"], row["request"].get("body") or "",
        callback))


@OUTBOUND.handler("sms_netgsm")
async def send_netgsm(ctx, row: dict):
    from ..adapters.netgsm import NetgsmAdapter

    ch = await channel(ctx, row["channel_account_id"])
    creds = ch["credentials"]
    if not creds.get("username") or not creds.get("password"):
        raise Permanent("code=no_credentials: the Netgsm channel needs username and password")
    adapter = _adapter(ctx, NetgsmAdapter, ch)

    async def call() -> str:
        job_id = await adapter.send(creds["username"], creds["password"], ch["external_id"],
                                    row["recipient"], row["request"].get("body") or "")
        return f"netgsm:{job_id}"

    return await send_once(ctx, row, call)


@OUTBOUND.handler("telegram")
async def send_telegram(ctx, row: dict):
    from ..adapters.telegram import TelegramAdapter

    ch = await channel(ctx, row["channel_account_id"])
    token = ch["credentials"].get("bot_token")
    if not token:
        raise Permanent("code=no_credentials: the Telegram channel needs bot_token")
    adapter = _adapter(ctx, TelegramAdapter, ch)
    return await send_once(ctx, row, lambda: adapter.send(token, row["recipient"], row["request"].get("body") or ""))


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
    adapter = _adapter(ctx, WhatsAppAdapter, ch)
    try:
        # Once per submission job: a worker that died after Meta answered does not submit it again
        # (Meta would refuse the second one as a duplicate, and the template would look rejected).
        answer, _ = await steps.once(ctx, f"inbox.template_submit:job:{job_row['id']}", tpl["tenant_id"],
                                     lambda: adapter.create_template(waba, token, tpl["name"], tpl["language"],
                                                                     tpl["category"], tpl["components"]))
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
