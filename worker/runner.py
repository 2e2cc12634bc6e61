"""The claim loop: one per queue per worker. Claims a batch with a lease (skip locked), runs the
handlers concurrently, completes the successes in one call, wakes on NOTIFY and polls as a fallback.
On shutdown it stops claiming, lets in-flight work finish for a grace period and hands back the rest.

What holds when a worker dies or the database goes away (tests/test_queue_chaos.py):

- A worker killed at any moment (SIGKILL, OOM, power) loses nothing: the rows it held keep their lease
  until it expires, then the rescuer (`Queue.rescue`, run by every worker's scheduler) hands them back and
  another worker runs them. A handler may therefore run again after its effect was done; effects outside
  the row are kept single by step marks (`worker/steps.py`: in the effect's own transaction where it is a
  database write, right after the call otherwise), so the second run changes nothing.
- A lost connection (Postgres restart, failover, network) does not stop the worker: the pool checks each
  connection it hands out and reconnects; claim loops, the listener and the scheduler's ticks retry.
  Settling a batch (complete, fail, snooze, release) is retried until the batch's lease would expire: each
  of those calls only changes rows this worker still holds, so repeating one is harmless. What cannot be
  settled in time is left to the lease and the rescuer, as for a killed worker. A claim whose answer was
  lost may have leased rows this worker never saw: before its next claim it hands back all it holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
import traceback
import uuid
import weakref
from datetime import datetime, timezone

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from luna.settings import get_settings

from .breaker import Breaker
from .errors import BreakerOpen, JobError
from .registry import JOBS, QUEUES, SCHEDULES, Context, Queue, discover, due_slot

log = logging.getLogger("luna.worker")


async def open_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> AsyncConnectionPool:
    async def configure(conn: psycopg.AsyncConnection) -> None:
        # The worker acts as Supabase's service_role: RLS is bypassed, so every statement it runs
        # (all SQL functions) scopes itself by tenant.
        await conn.execute("set role service_role")

    returned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def reset(conn: psycopg.AsyncConnection) -> None:
        returned[conn] = time.monotonic()

    async def check(conn: psycopg.AsyncConnection) -> None:
        # A connection broken while it sat in the pool (server restart) is replaced, not handed out. One
        # back within the last second is not probed: the claim loops take a connection several times a
        # batch, and a probe each time costs them a round trip (a break that recent surfaces as an
        # OperationalError, which the loops retry).
        if time.monotonic() - returned.get(conn, 0.0) > 1.0:
            await AsyncConnectionPool.check_connection(conn)

    pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False, configure=configure,
                               check=check, reset=reset, kwargs={"autocommit": True, "row_factory": dict_row})
    await pool.open(wait=True)
    return pool


class Worker:
    def __init__(self, url: str, *, concurrency: int | None = None, batch: int | None = None,
                 lease_seconds: int | None = None, poll_seconds: float | None = None,
                 queues: list[str] | None = None, worker_id: str | None = None, pool: AsyncConnectionPool | None = None,
                 grace_seconds: float = 10.0):
        settings = get_settings()
        self.url = url
        self.settings = settings
        self.concurrency = concurrency or settings.worker_concurrency
        self.batch = batch or settings.worker_batch
        self.lease_seconds = lease_seconds or settings.worker_lease_seconds
        self.poll_seconds = poll_seconds or settings.worker_poll_seconds
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.grace_seconds = grace_seconds
        discover()
        self.queues: list[Queue] = [QUEUES[n] for n in (queues or list(QUEUES))]
        self._pool = pool
        self._own_pool = pool is None
        self._wake: dict[str, asyncio.Event] = {q.name: asyncio.Event() for q in self.queues}
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self.processed = 0
        self.failed = 0

    @property
    def pool(self) -> AsyncConnectionPool:
        assert self._pool is not None, "worker not started"
        return self._pool

    async def start(self) -> None:
        if self._pool is None:
            self._pool = await open_pool(self.url, max_size=max(4, len(self.queues) + 2))
        self.context = Context(self._pool, self.settings, Breaker(self._pool), self.worker_id)

    def stop(self) -> None:
        self._stop.set()
        for event in self._wake.values():
            event.set()

    async def run(self) -> None:
        """Run until stop() is called."""
        await self.start()
        tasks = [asyncio.create_task(self._claim_loop(q), name=f"claim:{q.name}") for q in self.queues]
        tasks.append(asyncio.create_task(self._listen(), name="listen"))
        try:
            await self._stop.wait()
        finally:
            tasks[-1].cancel()
            # In-flight batches get a grace period; what is still running then is cancelled and its
            # leases handed back (process() settles them).
            _, pending = await asyncio.wait(tasks[:-1], timeout=self.grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.release_all()
            await self.close()

    async def release_all(self) -> int:
        """Hand back every row this worker still holds on each of its queues (leases it will not finish).
        Returns how many rows went back; a failure is logged, the leases then expire as usual."""
        total = 0
        if self._pool is None:
            return 0
        for q in self.queues:
            try:
                async with self.pool.connection(timeout=5) as conn:
                    row = await (await conn.execute(f"select {q.release}(%s, null) as n", (self.worker_id,))).fetchone()
                    total += row["n"] or 0
            except Exception as exc:
                log.error("handing back %s rows failed: %s", q.name, exc)
        return total

    async def close(self) -> None:
        for adapter in getattr(self, "context", Context(None, None, None, "")).adapters.values():
            closer = getattr(adapter, "aclose", None)
            if closer:
                await closer()
        if self._own_pool and self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _listen(self) -> None:
        """Wake the claim loops on NOTIFY; reconnect quietly if the connection drops."""
        channels = {"luna_jobs"} | {getattr(q, "channel", None) or "luna_jobs" for q in self.queues}
        while not self._stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    for channel in channels:
                        await conn.execute(f"listen {channel}")
                    for event in self._wake.values():  # what was notified while we were away
                        event.set()
                    async for _ in conn.notifies():
                        for event in self._wake.values():
                            event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # polling still works meanwhile
                log.warning("listen connection lost: %s", exc)
                await asyncio.sleep(1)

    async def _claim_loop(self, q: Queue) -> None:
        wake = self._wake[q.name]
        unsure = False  # the database went away during a claim or a settlement: we may hold rows we do not know
        while not self._stop.is_set():
            try:
                if unsure:
                    # This loop has no batch in flight, so whatever this worker holds on the queue is
                    # unknown to it: hand it back now rather than wait for the leases to expire.
                    await self._release(q, None)
                    unsure = False
                rows = await self.claim(q, self.batch)
            except psycopg.OperationalError as exc:
                log.warning("claim from %s: database unreachable (%s); retrying", q.name, exc)
                unsure, rows = True, []
                await asyncio.sleep(1)
                continue
            except Exception as exc:
                log.error("claim from %s failed: %s", q.name, exc)
                rows = []
                await asyncio.sleep(1)
            if rows and self._stop.is_set():
                # The signal came while the claim ran: none of these has started, hand them all back.
                await asyncio.shield(self._release(q, [row["id"] for row in rows]))
                break
            if rows:
                try:
                    await self.process(q, rows)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Completing the batch failed (say, a rule refused one row's move, or the database
                    # stayed away for a whole lease). The loop must live on: the batch's leases expire
                    # and the rescuer hands the rows back.
                    log.error("settling a %s batch failed: %s", q.name, exc)
                    unsure = isinstance(exc, psycopg.OperationalError)
                    await asyncio.sleep(1)
                    continue
                if len(rows) >= self.batch:
                    continue  # more may be waiting: claim again at once
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout=self.poll_seconds)
            except asyncio.TimeoutError:
                pass

    async def claim(self, q: Queue, n: int) -> list[dict]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(f"select * from {q.claim}(%s, %s, %s)", (self.worker_id, n, self.lease_seconds))
            return await cur.fetchall()

    async def process(self, q: Queue, rows: list[dict]) -> None:
        """Run a claimed batch; complete successes together; on shutdown hand unfinished work back."""
        tasks = [asyncio.create_task(self._run_one(q, row)) for row in rows]
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.shield(self._settle(q, rows, tasks))
            raise
        await self._settle(q, rows, tasks)

    async def _settle(self, q: Queue, rows: list[dict], tasks: list[asyncio.Task]) -> None:
        done_ids, results, released = [], [], []
        for row, task in zip(rows, tasks):
            if task.cancelled() or (task.exception() is None and task.result() is _NOT_STARTED):
                released.append(row["id"])
            elif task.exception() is not None:
                # Its failure could not be recorded (the database stayed away): the lease expires and
                # the rescuer hands the row back. The others are settled as usual.
                log.error("%s %s left to its lease: %s", q.name, row["id"], task.exception())
            elif isinstance(task.result(), _Done):
                done_ids.append(row["id"])
                result = task.result().result
                results.append(json.dumps(result, default=str) if result is not None else None)
        if done_ids:
            await self._retrying(f"completing a {q.name} batch", self._sql,
                                 f"select {q.complete}(%s, %s::{q.id_type}[], %s::jsonb[])",
                                 (self.worker_id, done_ids, results))
            self.processed += len(done_ids)
        if released:
            await self._release(q, released)

    async def _release(self, q: Queue, ids: list | None) -> None:
        """Hand rows back (ids None: all this worker holds on q); retried briefly, else the leases expire."""
        await self._retrying(f"handing back {q.name} rows", self._sql, f"select {q.release}(%s, %s::{q.id_type}[])",
                             (self.worker_id, ids), budget=min(5.0, self.lease_seconds))

    async def _sql(self, statement: str, params: tuple) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(statement, params)

    async def _retrying(self, what: str, fn, *args, budget: float | None = None):
        """fn(*args), again on a lost connection (OperationalError: the pool reconnects meanwhile) until
        `budget` seconds (default: the lease) have passed; then the last error is raised. Only for calls
        that are safe to repeat: the settling functions change only rows this worker still holds."""
        deadline = time.monotonic() + (self.lease_seconds if budget is None else budget)
        delay = 0.2
        while True:
            try:
                return await fn(*args)
            except psycopg.OperationalError as exc:
                if time.monotonic() + delay >= deadline:
                    raise
                log.warning("%s: database unreachable (%s); retrying", what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run_one(self, q: Queue, row: dict):
        key = row.get(q.dispatch_column)
        handler = q.handlers.get(key)
        async with self._slots:
            if self._stop.is_set():
                # Shutting down: a row that has not started yet goes back to the queue, not to a handler.
                return _NOT_STARTED
            try:
                if handler is None:
                    raise JobError(f"no handler registered for {q.name} {q.dispatch_column}={key!r}", retryable=False)
                result = await asyncio.wait_for(handler(self.context, row), timeout=self.lease_seconds)
                return _Done(result)
            except asyncio.CancelledError:
                raise
            except BreakerOpen as exc:
                await self._call(q.snooze, row["id"], max(int(exc.wait_seconds), 1))
            except JobError as exc:
                self.failed += 1
                await self._call(q.fail, row["id"], str(exc), exc.retryable)
            except asyncio.TimeoutError:
                self.failed += 1
                await self._call(q.fail, row["id"], f"handler exceeded the {self.lease_seconds}s lease", True)
            except Exception as exc:
                self.failed += 1
                log.exception("handler %s for %s %s crashed", key, q.name, row.get("id"))
                await self._call(q.fail, row["id"], f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}", True)
            return None

    async def _call(self, fn: str, *args) -> None:
        placeholders = ", ".join(["%s"] * (len(args) + 1))
        await self._retrying(fn, self._sql, f"select {fn}({placeholders})", (self.worker_id, *args))

    async def rescue(self) -> int:
        total = 0
        async with self.pool.connection() as conn:
            for q in self.queues:
                row = await (await conn.execute(f"select {q.rescue}() as n")).fetchone()
                total += row["n"] or 0
        return total


_NOT_STARTED = object()


class _Done:
    __slots__ = ("result",)

    def __init__(self, result):
        self.result = result


async def _enqueue_tick(worker: "Worker", name: str, trigger: dict) -> None:
    """This worker's scheduler fired for `name`: enqueue the tick (a no-op if another worker did)."""
    due = due_slot(trigger, datetime.now(timezone.utc))
    try:
        async with worker.pool.connection() as conn:
            await conn.execute("select private.enqueue_job(%s, %s, null, %s, %s)",
                               (f"schedule:{name}", Jsonb({"due": due.isoformat()}), due,
                                f"schedule:{name}:{due.isoformat()}"))
    except Exception as exc:  # the next tick tries again; the database may be restarting
        log.warning("enqueueing the %s tick failed: %s", name, exc)


async def _prune_ticks(worker: "Worker") -> None:
    async with worker.pool.connection() as conn:
        await conn.execute("delete from private.jobs where kind like 'schedule:%%' and status in ('succeeded', 'cancelled') "
                           "and updated_at < now() - interval '1 day'")


async def _housekeeping(what: str, fn, *args) -> None:
    """A scheduler duty (rescue, pruning): a lost connection is one line in the log; the next run retries."""
    try:
        await fn(*args)
    except psycopg.OperationalError as exc:
        log.warning("%s: database unreachable (%s); next run retries", what, exc)


async def run_worker(url: str, *, with_scheduler: bool = True, stop: asyncio.Event | None = None, **kwargs) -> None:
    """`luna worker`: the claim loops plus APScheduler's cron jobs, until stop is set (or Ctrl-C)."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.cron import CronTrigger

    worker = Worker(url, **kwargs)
    await worker.start()
    scheduler = AsyncIOScheduler(timezone="UTC")
    if with_scheduler:
        from apscheduler.triggers.interval import IntervalTrigger

        scheduler.add_job(_housekeeping, "interval", seconds=5, args=["rescue", worker.rescue], id="rescue",
                          max_instances=1, coalesce=True)
        scheduler.add_job(_housekeeping, "interval", seconds=3600, args=["pruning ticks", _prune_ticks, worker],
                          id="prune-ticks", max_instances=1, coalesce=True)
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)  # intervals aligned, so all workers name the same slot
        for name, trigger, _fn in SCHEDULES:
            trigger = dict(trigger)
            if "cron" in trigger:
                fire = CronTrigger.from_crontab(trigger["cron"], timezone="UTC")
            else:
                fire = IntervalTrigger(start_date=epoch, timezone="UTC",
                                       **{k: v for k, v in trigger.items() if k in ("seconds", "minutes", "hours")})
            scheduler.add_job(_enqueue_tick, fire, args=[worker, name, trigger], id=name, max_instances=1,
                              coalesce=True)
        scheduler.start()
    runner = asyncio.create_task(worker.run())
    if stop is None:
        # `luna worker` on its own: SIGTERM (systemd, container stop), SIGINT (Ctrl-C) and SIGHUP all
        # stop claiming at once; in-flight handlers get the grace period, the rest is handed back.
        # (Under `luna up`, uvicorn owns the signals and sets `stop`.)
        loop = asyncio.get_running_loop()

        def _on_signal(signame: str) -> None:
            log.info("%s: stopping the worker", signame)
            if scheduler.running:
                scheduler.pause()
            worker.stop()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                loop.add_signal_handler(sig, _on_signal, sig.name)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / not POSIX
                pass
    try:
        if stop is None:
            await runner
        else:
            await stop.wait()
            worker.stop()
            await runner
    finally:
        if scheduler.running:
            scheduler.shutdown(wait=False)
        worker.stop()
        await asyncio.gather(runner, return_exceptions=True)


__all__ = ["Worker", "run_worker", "open_pool", "JOBS"]
