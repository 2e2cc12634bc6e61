"""The audit chain's worker side: every hour, `audit.anchor` appends each tenant's chain head, signed with
LUNA_AUDIT_ANCHOR_KEY, to the anchor file (luna/commands/audit.py; `luna audit verify` checks them).
Without the key the schedule logs once and does nothing (anchoring is opt-in per deployment)."""

from __future__ import annotations

import asyncio
import logging
import os

from worker.registry import every

log = logging.getLogger("luna.worker.audit")
_warned = False


def _anchor_now() -> int:
    from luna.commands.audit import anchor
    from luna.db import connect

    with connect() as conn:
        return len(anchor(conn))


@every("audit.anchor", seconds=int(os.environ.get("LUNA_AUDIT_ANCHOR_SECONDS", "3600")))
async def anchor_audit_chains(ctx) -> int:
    global _warned
    from luna.commands.audit import KEY_ENV

    if len(os.environ.get(KEY_ENV, "")) < 16:
        if not _warned:
            log.warning("audit anchors are off: set %s to sign them", KEY_ENV)
            _warned = True
        return 0
    return await asyncio.to_thread(_anchor_now)
