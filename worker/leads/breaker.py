"""A per-worker cache in front of the shared circuit breaker (worker/breaker.py) for high-volume lead
calls. While the module's breaker was seen CLOSED in the last `ttl` seconds, calls skip the two
database round trips (allow + record) and successes are counted locally and added to
public.module_health once per `ttl`. Any failure, and any state other than CLOSED, goes through the
shared breaker at once, so the threshold, the half-open probe and recovery are unchanged; another
worker's OPEN is noticed within `ttl`."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import asynccontextmanager

from worker.errors import BreakerOpen, JobError


class CachedBreaker:
    def __init__(self, breaker, ttl: float = 1.0):
        self.breaker = breaker
        self.ttl = ttl
        self.closed_until: dict[str, float] = {}
        self.successes: Counter = Counter()
        self.flushed_at: dict[str, float] = {}

    @property
    def pool(self):
        return self.breaker.pool

    async def _flush(self, module: str) -> None:
        n = self.successes.pop(module, 0)
        self.flushed_at[module] = time.monotonic()
        if n:
            async with self.pool.connection() as conn:
                await conn.execute("select private.breaker_add_successes(%s, %s)", (module, n))

    @asynccontextmanager
    async def guard(self, module: str):
        now = time.monotonic()
        fast = self.closed_until.get(module, 0.0) > now
        if not fast and not await self.breaker.allow(module):
            raise BreakerOpen(module)
        try:
            yield
        except BreakerOpen:
            raise
        except JobError as exc:
            if exc.retryable:
                self.closed_until.pop(module, None)
            await self.breaker.record(module, not exc.retryable, str(exc))
            raise
        except Exception as exc:
            self.closed_until.pop(module, None)
            await self.breaker.record(module, False, f"{type(exc).__name__}: {exc}")
            raise
        else:
            if fast:
                self.successes[module] += 1
                if now - self.flushed_at.get(module, 0.0) > self.ttl:
                    await self._flush(module)
            else:
                state = await self.breaker.record(module, True)
                if state == "CLOSED":
                    self.closed_until[module] = time.monotonic() + self.ttl


def cached(ctx) -> CachedBreaker:
    """The worker's one CachedBreaker (kept in ctx.adapters so it lives as long as the worker)."""
    return ctx.adapter("leads:cached-breaker", lambda: CachedBreaker(ctx.breaker))
