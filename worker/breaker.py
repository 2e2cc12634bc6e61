"""Circuit breaker per external module; its state lives in public.module_health so every worker
shares it (functions/worker.sql holds the rules)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from psycopg_pool import AsyncConnectionPool

from .errors import BreakerOpen, JobError


class Breaker:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def allow(self, module: str) -> bool:
        async with self.pool.connection() as conn:
            row = await (await conn.execute("select private.breaker_allow(%s) as ok", (module,))).fetchone()
            return bool(row["ok"])

    async def record(self, module: str, ok: bool, error: str | None = None) -> str:
        async with self.pool.connection() as conn:
            row = await (await conn.execute("select private.breaker_record(%s, %s, %s) as state", (module, ok, error))).fetchone()
            return row["state"]

    @asynccontextmanager
    async def guard(self, module: str):
        """Run one external call under the breaker: refused while open, outcome recorded.

        Only failures of the service count (timeouts, 5xx, 429, malformed answers); a JobError marked
        not retryable (say, a 404 for one record) is the caller's problem, not the service's.
        """
        if not await self.allow(module):
            raise BreakerOpen(module)
        try:
            yield
        except JobError as exc:
            await self.record(module, not exc.retryable, str(exc))
            raise
        except BreakerOpen:
            raise
        except Exception as exc:
            await self.record(module, False, f"{type(exc).__name__}: {exc}")
            raise
        else:
            await self.record(module, True)
