"""`luna bench claim`: queue throughput of the generic job queue, with the bare operation underneath as the
same-run baseline.

    --hold-xmin N   while the workers drain a topped-up queue, a separate connection holds a repeatable-read
                    transaction open for N seconds (its snapshot holds back vacuum's xmin horizon): throughput
                    and the jobs table's dead rows before, during and after the hold.
    --peers         the same number of no-op jobs drained through PgQueuer and procrastinate (the `bench`
                    extra: pip install -e '.[bench]') on the same server in the same run; LUNA's ratio to each.

Figures come back in one JSON object (the CLI prints it as one line). Never a timing test.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager, contextmanager

import psycopg

from . import bench, scratch_database

JOBS_TABLE = "private.jobs"  # where the generic queue keeps its rows (filled directly for speed)


def _progress():
    from rich.console import Console
    from rich.progress import Progress

    return Progress(console=Console(stderr=True), transient=True)


@bench("claim")
def claim(quick: bool = False, workers: int = 4, batch: int = 100, hold_xmin: int = 0, peers: bool = False) -> dict:
    """N workers claiming and completing jobs (no handler work): jobs per second."""
    from worker.registry import JOBS

    total = 10_000 if quick else 100_000

    @JOBS.handler("bench.noop")
    async def noop(ctx, job):
        return None

    with scratch_database("claim") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            _insert_jobs(conn, total)
            conn.execute(f"vacuum analyze {JOBS_TABLE}")
            server = dict(zip(("server_version", "synchronous_commit", "fsync"), conn.execute(
                "select current_setting('server_version'), current_setting('synchronous_commit'), "
                "current_setting('fsync')").fetchone()))
        elapsed = asyncio.run(_drain(url, total, workers, batch))
        with psycopg.connect(url) as conn:
            succeeded = conn.execute(f"select count(*) from {JOBS_TABLE} where kind = 'bench.noop' "
                                     "and status = 'succeeded'").fetchone()[0]
        baseline = asyncio.run(_bare_claim(url, total, workers, batch))
        jobs_per_s = succeeded / elapsed
        figures = {"jobs_per_s": round(jobs_per_s), "seconds": round(elapsed, 2), "succeeded": succeeded,
                   "baseline_jobs_per_s": round(total / baseline), "ratio": round(jobs_per_s / (total / baseline), 3)}
        conditions = {
            "jobs": total, "workers": workers, "batch": batch, "concurrency": batch, "process": "one asyncio process",
            "server": server,
            "claim": f"{JOBS.claim} (update … where id in (select … for update skip locked limit n))",
            "complete": f"{JOBS.complete} (one statement per batch)",
            "baseline": "the bare operation underneath, same run and database: the same workers claiming empty "
                        "rows of a plain table with update ... for update skip locked limit n and completing each "
                        "batch in one update (no leases, no logs)"}
        if hold_xmin:
            figures["hold_xmin"], conditions["hold_xmin"] = asyncio.run(
                _hold_xmin(url, hold_xmin, workers, batch, quick))
    if peers:
        figures["peers"], conditions["peers"] = _peers(total, workers, batch, jobs_per_s)
    return {"bench": "claim", "figures": figures, "conditions": conditions}


def _insert_jobs(conn, n: int, start: int = 1) -> None:
    conn.execute(f"insert into {JOBS_TABLE} (kind, payload) select 'bench.noop', jsonb_build_object('i', i) "
                 "from generate_series(%s::bigint, %s::bigint) i", (start, start + n - 1))


@asynccontextmanager
async def _running(url: str, workers: int, batch: int):
    """`workers` LUNA workers (one asyncio process, each its own pool) on the jobs queue while inside."""
    from worker.runner import Worker

    pool_workers = [Worker(url, worker_id=f"bench-{i}", batch=batch, concurrency=batch, poll_seconds=0.05,
                           queues=["jobs"]) for i in range(workers)]
    tasks = [asyncio.create_task(w.run()) for w in pool_workers]
    try:
        yield pool_workers
    finally:
        for w in pool_workers:
            w.stop()
        await asyncio.gather(*tasks)


async def _drain(url: str, total: int, workers: int, batch: int) -> float:
    """Seconds for the workers to complete `total` queued jobs (from their start)."""
    t0 = time.perf_counter()
    async with _running(url, workers, batch) as pool_workers:
        with _progress() as progress:
            task = progress.add_task("claiming", total=total)
            while (done := sum(w.processed for w in pool_workers)) < total:
                progress.update(task, completed=done)
                await asyncio.sleep(0.02)
        return time.perf_counter() - t0


async def _bare_claim(url: str, total: int, workers: int, batch: int) -> float:
    """Seconds for `workers` connections to claim and complete `total` empty rows, batch by batch."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("drop table if exists bench_bare_jobs")
        conn.execute("create table bench_bare_jobs (id bigint generated always as identity primary key, "
                     "status text not null default 'queued', locked_by text)")
        conn.execute("insert into bench_bare_jobs (status) select 'queued' from generate_series(1, %s)", (total,))
        conn.execute("create index on bench_bare_jobs (id) where status = 'queued'")
        conn.execute("vacuum analyze bench_bare_jobs")

    async def loop(i: int) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while True:
                rows = await (await conn.execute(
                    "update bench_bare_jobs set status = 'running', locked_by = %s where id in ("
                    "select id from bench_bare_jobs where status = 'queued' order by id limit %s for update skip locked) "
                    "returning id", (f"bare-{i}", batch))).fetchall()
                if not rows:
                    return
                await conn.execute("update bench_bare_jobs set status = 'done' where id = any(%s)", ([r[0] for r in rows],))

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(workers)))
    elapsed = time.perf_counter() - t0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("drop table bench_bare_jobs")
    return elapsed


# ------------------------------------------------------------------------------------ --hold-xmin
async def _hold_xmin(url: str, hold_seconds: int, workers: int, batch: int, quick: bool) -> tuple[dict, dict]:
    """Three timed phases on a queue kept topped up: before (no hold), during the hold, after it.

    Returns (figures, conditions). Dead rows are pg_stat_user_tables.n_dead_tup of the jobs table, sampled
    every second; each claim and completion updates a row, and while the snapshot is held vacuum may
    remove none of the versions they leave behind."""
    before_s = 3 if quick else 10
    after_s = min(hold_seconds, 30)
    backlog = 5_000 * workers  # queued jobs kept ahead of the workers, topped up in chunks
    schema, table = JOBS_TABLE.split(".")
    figures: dict = {}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as monitor, \
            await psycopg.AsyncConnection.connect(url, autocommit=True) as producer:
        async def dead_rows() -> int:
            await monitor.execute("select pg_stat_clear_snapshot()")
            row = await (await monitor.execute(
                "select n_dead_tup from pg_stat_user_tables where schemaname = %s and relname = %s",
                (schema, table))).fetchone()
            return int(row[0]) if row else 0

        inserted = 0
        async with _running(url, workers, batch) as pool_workers:
            processed = lambda: sum(w.processed for w in pool_workers)  # noqa: E731
            start_count = processed()

            async def phase(name: str, seconds: float) -> None:
                """Keep the queue topped up for `seconds`; record throughput and the dead rows seen."""
                nonlocal inserted
                t0, done0, peak, last_sample = time.perf_counter(), processed(), 0, 0.0
                while (now := time.perf_counter()) - t0 < seconds:
                    if inserted - (processed() - start_count) < backlog:
                        await producer.execute(
                            f"insert into {JOBS_TABLE} (kind, payload) select 'bench.noop', jsonb_build_object('i', i) "
                            "from generate_series(1, %s) i", (backlog // 2,))
                        inserted += backlog // 2
                    if now - last_sample >= 1:
                        peak, last_sample = max(peak, await dead_rows()), now
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - t0
                figures[f"{name}_jobs_per_s"] = round((processed() - done0) / elapsed)
                figures[f"{name}_dead_rows_max"] = max(peak, await dead_rows())
                figures[f"{name}_dead_rows_end"] = await dead_rows()
                figures[f"{name}_seconds"] = round(elapsed, 1)

            with _progress() as progress:
                progress.add_task(f"hold-xmin: {before_s} s before, {hold_seconds} s holding, {after_s} s after",
                                  total=None)
                await phase("before", before_s)
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as holder:
                    await holder.execute("begin isolation level repeatable read")
                    await holder.execute("select pg_current_xact_id()")  # snapshot and xid held from here
                    held_from = time.perf_counter()
                    await phase("during", hold_seconds)
                    horizon = await (await monitor.execute(
                        "select age(backend_xmin) from pg_stat_activity where pid = %s",
                        (holder.info.backend_pid,))).fetchone()
                    # Vacuum now can remove none of what the hold keeps: n_dead_tup after it counts what it left.
                    await monitor.execute(f"vacuum {JOBS_TABLE}")
                    figures["dead_rows_left_by_vacuum_during_hold"] = await dead_rows()
                    await holder.execute("commit")
                    figures["held_seconds"] = round(time.perf_counter() - held_from, 1)
                    figures["xmin_age_at_release"] = int(horizon[0]) if horizon and horizon[0] is not None else None
                await phase("after", after_s)
        # The same vacuum once nothing holds it back (autovacuum may or may not have come by then).
        await monitor.execute(f"vacuum {JOBS_TABLE}")
        figures["dead_rows_left_by_vacuum_after_hold"] = await dead_rows()
    conditions = {"hold": "a separate connection: begin isolation level repeatable read; select "
                          "pg_current_xact_id(); ... commit after the hold",
                  "phases_seconds": {"before": before_s, "during": hold_seconds, "after": after_s},
                  "queue": f"kept {backlog} jobs ahead of the {workers} workers (inserted in chunks of {backlog // 2})",
                  "dead_rows": f"pg_stat_user_tables.n_dead_tup of {JOBS_TABLE}, sampled each second; autovacuum as "
                               "the server is configured; dead_rows_left_by_vacuum_*: n_dead_tup right after a manual "
                               "vacuum just before the release and after the last phase (what it could not remove)"}
    return figures, conditions


# ---------------------------------------------------------------------------------------- --peers
def _peers(total: int, workers: int, batch: int, luna_jobs_per_s: float) -> tuple[dict, dict]:
    """Each peer in its own fresh database on the same server; a peer that cannot run says why."""
    figures, conditions = {}, {}
    for name, run in (("pgqueuer", _pgqueuer), ("procrastinate", _procrastinate)):
        try:
            with _peer_database(name) as url:
                seconds, done, settings = asyncio.run(run(url, total, workers, batch))
        except ImportError as exc:
            figures[name] = {"error": f"not installed ({exc.name}): pip install -e '.[bench]'"}
            continue
        except Exception as exc:  # a peer's failure is reported, never the end of the bench
            figures[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        jobs_per_s = done / seconds
        figures[name] = {"jobs_per_s": round(jobs_per_s), "seconds": round(seconds, 2), "succeeded": done,
                         "luna_ratio": round(luna_jobs_per_s / jobs_per_s, 2) if jobs_per_s else None}
        conditions[name] = settings
    return figures, conditions


@contextmanager
def _peer_database(name: str):
    from luna.db import database_url
    from luna.embedded import with_database

    admin = with_database(database_url(), "postgres")
    db = f"luna_bench_peer_{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"drop database if exists {db} with (force)")
        conn.execute(f"create database {db}")
    try:
        yield with_database(admin, db)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"drop database if exists {db} with (force)")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


async def _pgqueuer(url: str, total: int, workers: int, batch: int) -> tuple[float, int, dict]:
    """PgQueuer with its recommended asyncpg driver: `workers` QueueManagers, one connection each, dequeuing
    `batch` jobs at a time, in drain mode (each exits when the queue is empty and its jobs are acknowledged)."""
    from datetime import timedelta

    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    dsn = _asyncpg_dsn(url)
    setup = await asyncpg.connect(**dsn)
    try:
        queries = Queries(AsyncpgDriver(setup))
        await queries.install()
        for start in range(0, total, 10_000):  # one enqueue call (one statement) per 10,000 jobs
            n = min(10_000, total - start)
            await queries.enqueue(["bench.noop"] * n, [None] * n, [0] * n)
        await setup.execute("vacuum analyze pgqueuer")  # as for LUNA's jobs table
        connections = [await asyncpg.connect(**dsn) for _ in range(workers)]
        managers = []
        for conn in connections:
            qm = QueueManager(Queries(AsyncpgDriver(conn)))

            @qm.entrypoint("bench.noop")
            async def noop(job) -> None:
                return None

            managers.append(qm)
        t0 = time.perf_counter()
        await asyncio.gather(*(qm.run(batch_size=batch, mode=QueueExecutionMode.drain,
                                      dequeue_timeout=timedelta(seconds=1)) for qm in managers))
        seconds = time.perf_counter() - t0
        for conn in connections:
            await conn.close()
        left = await setup.fetchval("select count(*) from pgqueuer")
    finally:
        await setup.close()
    return seconds, total - left, {
        "version": _version("pgqueuer"), "driver": f"asyncpg {_version('asyncpg')}",
        "enqueue": "Queries.enqueue with lists, 10,000 jobs per call",
        "workers": f"{workers} QueueManager, one connection each, run(batch_size={batch}, mode=drain), "
                   "no concurrency cap (as LUNA: a whole batch at once)",
        "succeeded": "jobs no longer in the pgqueuer table (PgQueuer deletes finished jobs, logs them)"}


def _asyncpg_dsn(url: str) -> dict:
    """asyncpg.connect arguments for a libpq URL (the embedded server's names a socket directory)."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(url)
    return {k: v for k, v in {"host": info.get("host"), "port": int(info["port"]) if info.get("port") else None,
                              "user": info.get("user"), "password": info.get("password") or None,
                              "database": info.get("dbname")}.items() if v is not None}


async def _procrastinate(url: str, total: int, workers: int, batch: int) -> tuple[float, int, dict]:
    """procrastinate with its psycopg connector: `workers` workers on one App, each with concurrency
    `connections / workers`, one pool of as many connections as LUNA's workers have, in wait=False mode
    (each exits when it finds no job)."""
    import procrastinate

    connections = 4 * workers  # LUNA: a pool of max(4, queues + 2) = 4 connections per worker
    concurrency = connections // workers
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url, min_size=connections,
                                                                     max_size=connections))

    @app.task(name="bench.noop", queue="bench")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, total, 10_000):
            await noop.batch_defer_async(*([{}] * min(10_000, total - start)))
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("vacuum analyze procrastinate_jobs")  # as for LUNA's jobs table
        t0 = time.perf_counter()
        await asyncio.gather(*(app.run_worker_async(queues=["bench"], name=f"bench-{i}", concurrency=concurrency,
                                                    wait=False, listen_notify=False, install_signal_handlers=False)
                               for i in range(workers)))
        seconds = time.perf_counter() - t0
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            done = (await (await conn.execute(
                "select count(*) from procrastinate_jobs where status = 'succeeded'")).fetchone())[0]
    return seconds, done, {
        "version": _version("procrastinate"), "driver": f"psycopg {_version('psycopg')} (PsycopgConnector)",
        "enqueue": "Task.batch_defer_async, 10,000 jobs per call",
        "workers": f"{workers} workers on one App, concurrency={concurrency} each, one pool of {connections} "
                   "connections, wait=False (procrastinate fetches one job per query and finishes each alone)"}
