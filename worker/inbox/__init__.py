"""Inbox work, by topic: inbound.py (inbound events -> contacts, conversations, messages: the mapping is
SQL's), send.py (the outbound queue's send step, once, and one small class per channel; rate-limit
slots handed out by SQL at claim time), sync.py (IMAP, WhatsApp templates, Meta ad insights) and
meta.py (Conversions API events, template submissions). The two queues are declared here."""

from __future__ import annotations

from ..registry import installed, queue

# private.inbound_* and private.outbound_* (install_queue in functions/inbox/events.sql and outbound.sql)
INBOUND = queue(installed("inbox_inbound", "inbound", dispatch_column="kind", id_type="bigint"))
OUTBOUND = queue(installed("inbox_outbound", "outbound", dispatch_column="kind", id_type="uuid"))
# Both wake on NOTIFY luna_inbox (inserts into inbound_events / outbound_messages).
INBOUND.channel = "luna_inbox"
OUTBOUND.channel = "luna_inbox"

from . import inbound, meta, send, sync  # noqa: E402,F401  (register the handlers on the queues above)
