"""Inbound events -> contacts, conversations and messages: the mapping is SQL's
(private.process_inbound_event); this handler only runs it and classifies its failures."""

from __future__ import annotations

import psycopg

from ..errors import Permanent
from . import INBOUND


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
