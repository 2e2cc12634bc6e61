"""The outbound queue's send step, written once, and each channel as a small class on it.

A claimed public.outbound_messages row (its `kind` is the channel kind) runs SendStep.__call__:

1. the channel's settings and decrypted credentials (channel(), cached briefly per worker); a missing
   credential fails the message at once: `code=no_credentials` (Permanent, nothing is sent);
2. the channel's own precondition (check(): e-mail skips an address that bounced);
3. the rate-limit slot the claim gave the row (send_after) is waited for;
4. the provider call (call(): returns the provider's message id), at most once per message (send_once:
   marked as started, the provider's id recorded the moment it answers);
5. errors mapped once: an AdapterError becomes a JobError with its `code=` (retryable as the provider
   said); a refusal clears the send mark so a retry may send; anything unclear goes to 'reconcile'.

A new channel: subclass SendStep with `kinds`, `needs` (credential keys), `adapter` (an HttpAdapter
subclass, one per base URL per worker) and call(); decorate it with @channel_step.
"""

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

from luna import secrets
from luna.channels.graph import GraphAdapter
from luna.channels.http import AdapterError

from ..adapters.netgsm import NetgsmAdapter
from ..adapters.telegram import TelegramAdapter
from ..adapters.twilio import TwilioAdapter
from ..errors import BreakerOpen, JobError, Permanent
from ..registry import every
from . import OUTBOUND

log = logging.getLogger("luna.worker.inbox")

CHANNEL_CACHE_SECONDS = 30.0


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


def adapter(ctx, cls, ch: dict):
    """One adapter per class and base URL per worker (settings.base_url of the channel), breaker set."""
    base = (ch["settings"] or {}).get("base_url")

    def make():
        made = cls(base)
        made.breaker = ctx.breaker
        return made
    return ctx.adapter(f"{cls.__name__}:{base}", make)


def job_error(exc: AdapterError) -> JobError:
    """A provider's error as the queue's outcome: `code=<provider code>: <message>`, retryable as it said."""
    text = str(exc)
    if not text.startswith("code="):
        text = f"code={exc.code or 'error'}: {text}"
    return JobError(text, retryable=exc.retryable, code=exc.code)


async def wait_for_slot(row: dict) -> None:
    """Sleep until the rate-limit slot the claim gave this message."""
    slot = row.get("send_after")
    if slot is not None:
        delay = (slot - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


# ------------------------------------------------------------------------------------------ exactly once
# Each step of a send commits on its own (functions/inbox/outbound.sql): the call is marked as started, the
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
            raise job_error(exc) from exc
        raise
    await _record_accepted(ctx, row, provider_message_id)
    return {"provider_message_id": provider_message_id}


@every("inbox.outbound_reconcile", seconds=60)
async def reconcile_outbound(ctx) -> int:
    """Settle messages in 'reconcile' that the provider accepted (from their recorded id; never resent)."""
    return (await _sql(ctx, "select private.reconcile_outbound() as n"))["n"]


# ------------------------------------------------------------------------------------------ the base
class SendStep:
    """One channel's send step; instances are the outbound queue's handlers for `kinds`."""

    kinds: tuple[str, ...] = ()
    label = "the"           # for messages: "the Twilio channel needs ..."
    needs: tuple[str, ...] = ()   # credential keys that must be set
    adapter = None          # HttpAdapter subclass, or None (no HTTP provider)

    async def check(self, ctx, row: dict, ch: dict) -> None:
        """A precondition of this channel (raise Permanent to fail the message without sending)."""

    async def call(self, row: dict, ch: dict, provider) -> str:
        """Send the row's provider-neutral request; return the provider's message id."""
        raise NotImplementedError

    async def __call__(self, ctx, row: dict):
        ch = await channel(ctx, row["channel_account_id"])
        if any(not ch["credentials"].get(k) for k in self.needs):
            raise Permanent(f"code=no_credentials: {self.label} channel needs {' and '.join(self.needs)}",
                            code="no_credentials")
        await self.check(ctx, row, ch)
        provider = adapter(ctx, self.adapter, ch) if self.adapter else None
        return await send_once(ctx, row, lambda: self.call(row, ch, provider))


def channel_step(cls: type[SendStep]) -> type[SendStep]:
    """Register a SendStep subclass as the outbound handler of each of its kinds."""
    step = cls()
    for kind in cls.kinds:
        OUTBOUND.handler(kind)(step)
    return cls


# ------------------------------------------------------------------------------------------ channels
@channel_step
class WhatsApp(SendStep):
    kinds, label, needs, adapter = ("whatsapp",), "the WhatsApp", ("access_token",), GraphAdapter

    async def call(self, row, ch, provider):
        return await provider.wa_send(ch["external_id"], ch["credentials"]["access_token"], row["request"])


@channel_step
class PageMessaging(SendStep):
    """Messenger and Instagram (the Send API of the page)."""

    kinds, label, needs, adapter = ("instagram", "messenger"), "the page's", ("access_token",), GraphAdapter

    async def call(self, row, ch, provider):
        return await provider.page_send(ch["external_id"], ch["credentials"]["access_token"], row["request"])


@channel_step
class Email(SendStep):
    kinds, label = ("email",), "the e-mail"

    async def check(self, ctx, row, ch):
        # An address that bounced after this message was queued is not sent to either (issue 10).
        bounce = await _sql(ctx, "select ct.bounced_at, ct.bounce_reason from public.messages m "
                                 "join public.conversations v on v.tenant_id = m.tenant_id and v.id = m.conversation_id "
                                 "join public.contacts ct on ct.tenant_id = v.tenant_id and ct.id = v.contact_id "
                                 "where m.id = %s", row["message_id"])
        if bounce and bounce["bounced_at"] is not None:
            raise Permanent(f"code=recipient_bouncing: not sent: mail to {row['recipient']} bounced "
                            f"({bounce['bounce_reason'] or 'no reason given'})", code="recipient_bouncing")

    async def call(self, row, ch, provider):
        from ..adapters import smtp_mail

        s, creds = ch["settings"] or {}, ch["credentials"]
        auth = s.get("smtp_auth", True)
        return await asyncio.to_thread(
            smtp_mail.send, s.get("smtp_host", "127.0.0.1"), int(s.get("smtp_port", 587)), ch["external_id"],
            row["request"], username=(creds.get("smtp_username") or creds.get("username")) if auth else None,
            password=(creds.get("smtp_password") or creds.get("password")) if auth else None,
            sender_name=s.get("sender_name"), use_ssl=bool(s.get("smtp_ssl")), starttls=bool(s.get("smtp_starttls")))


@channel_step
class Twilio(SendStep):
    kinds, label, needs, adapter = ("sms_twilio",), "the Twilio", ("account_sid", "auth_token"), TwilioAdapter

    async def call(self, row, ch, provider):
        creds = ch["credentials"]
        # Status callbacks come back to this channel's webhook at the public URL (edge/webhook_urls.py).
        public = (os.environ.get("LUNA_PUBLIC_URL") or "").strip().rstrip("/")
        callback = (ch["settings"] or {}).get("status_callback") or (
            f"{public}/v1/webhooks/twilio/{row['channel_account_id']}" if public else None)
        return await provider.send(creds["account_sid"], creds["auth_token"], ch["external_id"], row["recipient"],
                                   row["request"].get("body") or "", callback)


@channel_step
class Netgsm(SendStep):
    kinds, label, needs, adapter = ("sms_netgsm",), "the Netgsm", ("username", "password"), NetgsmAdapter

    async def call(self, row, ch, provider):
        creds = ch["credentials"]
        job_id = await provider.send(creds["username"], creds["password"], ch["external_id"], row["recipient"],
                                     row["request"].get("body") or "")
        return f"netgsm:{job_id}"


@channel_step
class Telegram(SendStep):
    kinds, label, needs, adapter = ("telegram",), "the Telegram", ("bot_token",), TelegramAdapter

    async def call(self, row, ch, provider):
        return await provider.send(ch["credentials"]["bot_token"], row["recipient"], row["request"].get("body") or "")


@OUTBOUND.handler("webchat")
async def send_webchat(ctx, row: dict):
    # Web chat has no provider: the message reaches the widget through realtime (message_created).
    return {"provider_message_id": f"webchat:{uuid.uuid4()}"}
