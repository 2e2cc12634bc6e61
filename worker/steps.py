"""Step marks from a handler: a side effect outside the database (an e-mail, a provider call) done once
per entity and step, whatever crashes (private.step_marks, functions/worker.sql).

A worker can die after the side effect and before its batch settles; the row is then handed out again.

    result, replayed = await once(ctx, f"crm.notify_rep:{job['id']}", tenant, lambda: send(...))

runs `send` unless the step's mark exists, and records the mark (with what `send` returned) in its own
transaction the moment `send` returns. The window left is a crash during the call itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger("luna.worker.steps")

MARK_RETRIES = (0.2, 0.5, 1.0, 2.0)


async def done(ctx, key: str) -> dict | None:
    """What the step produced when it was done, else None."""
    async with ctx.pool.connection() as conn:
        row = await (await conn.execute("select private.step_result(%s) as r", (key,))).fetchone()
    return row["r"]


async def mark(ctx, key: str, tenant, result: Any) -> Any:
    """Record the step as done (the first record wins); retried: a lost mark means a second side effect."""
    for delay in (*MARK_RETRIES, None):
        try:
            async with ctx.pool.connection() as conn:
                row = await (await conn.execute("select private.step_done(%s, %s, %s) as r",
                                                (key, tenant, Jsonb({"value": result})))).fetchone()
            return row["r"].get("value")
        except psycopg.Error as exc:
            if delay is None:
                log.error("step %s was done but recording it failed: %s", key, exc)
                raise
            await asyncio.sleep(delay)


async def once(ctx, key: str, tenant, fn: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
    """(result, replayed): fn's result, or the stored one when the step was done before."""
    stored = await done(ctx, key)
    if stored is not None:
        return stored.get("value"), True
    result = await fn()
    return await mark(ctx, key, tenant, result), False


__all__ = ["done", "mark", "once"]
