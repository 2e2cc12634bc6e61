"""The CRM's worker side.

- every 30 s: due reminders become notifications (private.crm_fire_due_reminders, skip locked);
- LUNA Module 4.1: the leads queue's "crm_sync" module (QUALIFIED leads) calls private.sync_lead_to_crm;
  a rule failure ends the lead in CRM_ERROR with the reason (the route's failure status);
- jobs: crm.card_moved (the stage-move integration hook), crm.zoho_sync (optional outbound sync to
  Zoho CRM), crm.notify_rep (e-mail / WhatsApp notice to the assigned rep when configured, queued on
  the outbound queue).

Exactly once: sync_lead_to_crm takes a step mark in its own transaction (a retry returns the first
result), rep notices are messages of the outbound queue (one per job, by idempotency key), the Zoho sync upserts
with duplicate checks and keeps the external ids as each call answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import psycopg

from luna import secrets
from worker.adapters.zoho import ZohoAdapter, contact_record, deal_record
from worker.errors import JobError
from worker.leads import LEADS
from worker.registry import every, job

log = logging.getLogger("luna.worker.crm")

REMINDER_BATCH = 500


async def _one(ctx, sql: str, *args):
    async with ctx.pool.connection() as conn:
        row = await (await conn.execute(sql, args)).fetchone()
        return row


@every("crm_due_reminders", seconds=30)
async def fire_due_reminders(ctx) -> int:
    total = 0
    while True:
        row = await _one(ctx, "select private.crm_fire_due_reminders(%s) as n", REMINDER_BATCH)
        total += row["n"]
        if row["n"] < REMINDER_BATCH:
            return total


@LEADS.handler("crm_sync")
async def crm_sync(ctx, row: dict) -> dict:
    started = time.monotonic()
    try:
        result = (await _one(ctx, "select private.sync_lead_to_crm(%s) as r", row["id"]))["r"]
    except psycopg.Error as exc:
        state = exc.sqlstate or ""
        detail = (exc.diag.message_detail or "") if exc.diag else ""
        code = detail[5:].split(";")[0] if detail.startswith("code=") else state
        # A broken rule (no rep, no pipeline ...) needs a person: CRM_ERROR with the reason.
        # Anything else (deadlock, connection) is retried.
        retryable = not state.startswith("PT") and not state.startswith("23") and not state.startswith("22")
        raise JobError(f"crm_sync: {exc.diag.message_primary if exc.diag else exc}", retryable=retryable, code=code) from exc
    return {"status": result["status"], "action": "crm_sync", "module": "crm_sync", "from_status": "QUALIFIED",
            "duration_ms": int((time.monotonic() - started) * 1000), "detail": result}


def _zoho(ctx, config: dict) -> ZohoAdapter:
    base = config.get("base_url") or ZohoAdapter.default_base_url
    adapter = ctx.adapter(f"zoho:{base}", lambda: ZohoAdapter(base))
    adapter.breaker = ctx.breaker
    return adapter


def _digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


async def sync_customer_to_zoho(ctx, tenant_id, customer_id) -> dict:
    zoho = (await _one(ctx, "select private.crm_zoho_config(%s) as z", tenant_id))["z"]
    if not zoho["enabled"]:
        return {"zoho": "off"}
    config = await secrets.aconfig(ctx, tenant_id, "crm.zoho_sync", zoho["config"])
    token = config.get("access_token")
    if not token:
        raise JobError("crm.zoho_sync is on but has no access_token (secret crm.zoho_sync:access_token)",
                       retryable=False, code="not_configured")
    payload = (await _one(ctx, "select private.crm_sync_payload(%s) as p", customer_id))["p"]
    if payload is None:
        return {"zoho": "customer gone"}
    refs = (await _one(ctx, "select private.crm_external_refs_get('zoho', %s) as r", customer_id))["r"]
    adapter = _zoho(ctx, config)
    customer = payload["customer"]
    sent = {"contact": None, "deals": 0, "unchanged": 0}
    contact = contact_record(customer)
    known = refs.get(f"customer:{customer_id}") or {}
    contact_id = known.get("external_id")
    if known.get("hash") != _digest(contact) or not contact_id:
        check = [k for k in ("Email", "Phone") if k in contact] or ["Last_Name"]
        contact_id = await adapter.upsert(token, "Contacts", contact, check)
        await _one(ctx, "select private.crm_external_ref_set(%s, 'zoho', 'customer', %s, %s, %s)",
                   tenant_id, customer_id, contact_id, _digest(contact))
        sent["contact"] = contact_id
    else:
        sent["unchanged"] += 1
    for deal in payload["deals"]:
        record = deal_record(deal, contact_id, customer)
        known = refs.get(f"card:{deal['id']}") or {}
        if known.get("hash") == _digest(record):
            sent["unchanged"] += 1
            continue
        deal_id = await adapter.upsert(token, "Deals", record, ["Deal_Name"])
        await _one(ctx, "select private.crm_external_ref_set(%s, 'zoho', 'card', %s, %s, %s)",
                   tenant_id, deal["id"], deal_id, _digest(record))
        sent["deals"] += 1
    return {"zoho": sent}


@job("crm.zoho_sync")
async def zoho_sync(ctx, row: dict):
    return await sync_customer_to_zoho(ctx, row["tenant_id"], row["payload"]["customer_id"])


@job("crm.card_moved")
async def card_moved(ctx, row: dict):
    """The stage-move integration hook: today the Zoho sync (when on); webhooks can join here."""
    return await sync_customer_to_zoho(ctx, row["tenant_id"], row["payload"]["customer_id"])


@job("crm.notify_rep")
async def notify_rep(ctx, row: dict):
    """Queue the notice to the rep a lead was assigned to, on the tenant's e-mail or WhatsApp channel,
    through the outbound queue like any message (rate slots, channel limits, the 24-hour window,
    exactly-once sends): private.crm_queue_rep_notice (functions/channels.sql). The message's
    idempotency key is the job's, so a retried job queues nothing twice."""
    p = row["payload"]
    if p.get("channel") not in ("email", "whatsapp"):
        raise JobError(f"unknown channel {p.get('channel')!r}", retryable=False)
    # The job's own key (crm.notify_rep:<channel>:<lead>...), else one per job, else per rep and customer.
    key = row.get("idempotency_key") or (f"crm.notify_rep:job:{row['id']}" if row.get("id") is not None else
                                         f"crm.notify_rep:{p['channel']}:{p['rep']}:{p.get('customer_id')}")
    try:
        return (await _one(ctx, "select private.crm_queue_rep_notice(%s, %s, %s, %s, %s) as r",
                           row["tenant_id"], p["rep"], p.get("customer_id"), p["channel"], key))["r"]
    except psycopg.Error as exc:
        detail = (exc.diag.message_detail or "") if exc.diag else ""
        code = detail[5:].split(";")[0] if detail.startswith("code=") else exc.sqlstate
        # A rule of the channel (outside the 24-hour window, limits): retrying will not help.
        raise JobError(f"code={code}: {exc.diag.message_primary if exc.diag else exc}",
                       retryable=not (exc.sqlstate or "").startswith(("PT", "P0")), code=code) from exc
