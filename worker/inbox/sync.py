"""Scheduled syncs of the inbox's channels: IMAP mailboxes into inbound events, WhatsApp message
templates, and Meta ad insights."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from psycopg.types.json import Jsonb

from luna.channels.graph import GraphAdapter

from ..registry import every
from .send import adapter, channel

log = logging.getLogger("luna.worker.inbox")


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
    templates = await adapter(ctx, GraphAdapter, ch).list_templates(waba, token)
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
    rows = await adapter(ctx, GraphAdapter, ch).insights(acc["external_id"], token, since, until, level="ad")
    async with ctx.pool.connection() as conn:
        return (await (await conn.execute("select private.ad_insights_synced(%s, 'ad', %s) as n",
                                          (ad_account_id, Jsonb(rows)))).fetchone())["n"]


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
