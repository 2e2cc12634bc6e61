"""Queues and handlers.

A Queue is a table the worker claims from, described by the names of its six SQL functions. They
are written by one generator, private.install_queue (functions/worker.sql), so every queue has the
same verbs, signatures and semantics:

    claim(worker text, n int, lease_seconds int)      -> rows with at least id and the dispatch column
    complete(worker text, ids bigint[]|uuid[], results jsonb[])
    fail(worker text, id, error text, retryable boolean)
    release(worker text, ids)                        -- hand back without counting the attempt
    snooze(worker text, id, seconds int)             -- wait (breaker open) without failing
    rescue()                                          -- take back expired leases

installed(name, sql_name) names them as install_queue does (private.<sql_name>_<verb>).
tests/test_queue_conformance.py runs the protocol against every registered queue.

Areas register their queues and handlers at import time (worker/<area>/__init__.py).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

Handler = Callable[["Context", dict], Awaitable[Any]]


@dataclass
class Queue:
    name: str
    claim: str
    complete: str
    fail: str
    release: str
    snooze: str
    rescue: str
    # Which handler runs a claimed row: the value of this column names it.
    dispatch_column: str = "kind"
    id_type: str = "bigint"
    handlers: dict[str, Handler] = field(default_factory=dict)

    def handler(self, key: str):
        def register(fn: Handler) -> Handler:
            self.handlers[key] = fn
            return fn

        return register


QUEUES: dict[str, Queue] = {}
# Cron jobs for APScheduler: (name, trigger kwargs, coroutine function(context)).
SCHEDULES: list[tuple[str, dict, Callable[["Context"], Awaitable[Any]]]] = []


VERBS = ("claim", "complete", "fail", "release", "snooze", "rescue")


def queue(q: Queue) -> Queue:
    QUEUES.setdefault(q.name, q)
    return QUEUES[q.name]


def installed(name: str, sql_name: str, **kwargs) -> Queue:
    """A Queue whose functions `select private.install_queue('<sql_name>', ...)` wrote."""
    return Queue(name=name, **{verb: f"private.{sql_name}_{verb}" for verb in VERBS}, **kwargs)


JOBS = queue(installed("jobs", "jobs"))


def job(kind: str):
    """Register a handler for a generic job kind (private.jobs)."""
    return JOBS.handler(kind)


def every(name: str, **trigger):
    """Register a scheduled function: @every("digest", seconds=60) or @every("digest", cron="0 8 * * *").

    It runs once per due time across all workers: each worker's scheduler enqueues a job of kind
    "schedule:<name>" keyed by the due time (private.jobs.idempotency_key), and whichever worker
    claims it runs `fn(ctx)`; a failure is retried like any job. Keep state between runs in the
    database (private.cursors), never in the process."""

    def register(fn):
        SCHEDULES.append((name, trigger, fn))

        @JOBS.handler(f"schedule:{name}")
        async def tick(ctx, job):
            return await fn(ctx)

        return fn

    return register


def due_slot(trigger: dict, now) -> "datetime":
    """The due time a scheduler firing at `now` stands for: the start of the current interval
    (intervals are aligned to the Unix epoch, so every worker's scheduler names the same slot) or,
    for cron schedules, the current minute."""
    from datetime import datetime, timezone

    if "cron" in trigger:
        return now.replace(second=0, microsecond=0)
    seconds = int(trigger.get("seconds", 0) + 60 * trigger.get("minutes", 0) + 3600 * trigger.get("hours", 0))
    start = int(now.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(start, timezone.utc)


def discover() -> None:
    """Import every worker sub-package so its queues, handlers and schedules register."""
    import worker

    for info in pkgutil.iter_modules(worker.__path__):
        if info.ispkg and info.name not in {"adapters"}:
            importlib.import_module(f"worker.{info.name}")


class Context:
    """What a handler gets: the pool, settings, breaker, and the worker's shared HTTP adapters."""

    def __init__(self, pool, settings, breaker, worker_id: str):
        self.pool = pool
        self.settings = settings
        self.breaker = breaker
        self.worker_id = worker_id
        self.adapters: dict[str, Any] = {}

    def adapter(self, name: str, factory: Callable[[], Any]) -> Any:
        if name not in self.adapters:
            self.adapters[name] = factory()
        return self.adapters[name]
