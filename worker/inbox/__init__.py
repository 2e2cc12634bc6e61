"""Inbox work, by topic: inbound.py (inbound events -> contacts, conversations, messages: the mapping is
SQL's), send.py (the outbound queue's send step, once, and one small class per channel; rate-limit
slots handed out by SQL at claim time), sync.py (IMAP, WhatsApp templates, Meta ad insights) and
meta.py (Conversions API events, template submissions). The two queues are declared here."""

from __future__ import annotations

from ..registry import Queue, queue

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

from . import inbound, meta, send, sync  # noqa: E402,F401  (register the handlers on the queues above)
