"""The worker: claim pattern, no double processing, lease recovery, backoff and final failure,
graceful shutdown, the circuit breaker."""

import asyncio
import time

import psycopg
import pytest

from worker.errors import BreakerOpen, JobError
from worker.registry import JOBS
from worker.runner import Worker, open_pool

from . import conftest


@pytest.fixture
def probe_table(conn):
    conn.execute("create table public.worker_probe (job_id bigint, worker text, at timestamptz default clock_timestamp())")
    conn.execute("alter table public.worker_probe enable row level security")
    return "public.worker_probe"


def enqueue(conn, kind, n, **kw):
    conn.execute("select private.enqueue_job(%s, jsonb_build_object('i', i)) from generate_series(1, %s) i", (kind, n))


async def run_workers(db_url, n_workers, until, timeout=30, **kw):
    return await conftest.run_workers(db_url, until, n_workers=n_workers, timeout=timeout, poll_seconds=0.1, **kw)


async def count(db_url, sql, *params):
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        return (await (await c.execute(sql, params)).fetchone())[0]


async def test_two_workers_never_process_the_same_job(db_url, conn, probe_table):
    @JOBS.handler("probe.record")
    async def record(ctx, job):
        async with ctx.pool.connection() as c:
            await c.execute("insert into public.worker_probe (job_id, worker) values (%s, %s)", (job["id"], ctx.worker_id))
        await asyncio.sleep(0)

    enqueue(conn, "probe.record", 600)
    done = lambda: count(db_url, "select count(*) = 600 from private.jobs where status = 'succeeded'")
    workers = await run_workers(db_url, 2, done, batch=20, concurrency=20)
    rows = conn.execute("select job_id, count(*) as n from public.worker_probe group by job_id having count(*) > 1").fetchall()
    assert rows == []
    assert conn.execute("select count(distinct job_id) as n from public.worker_probe").fetchone()["n"] == 600
    assert all(w.processed > 0 for w in workers), "both workers took part"


async def test_killed_workers_job_is_taken_back_after_its_lease(db_url, conn):
    ran = []

    @JOBS.handler("probe.lease")
    async def handler(ctx, job):
        ran.append(ctx.worker_id)

    enqueue(conn, "probe.lease", 1)
    # A worker claims with a 1 s lease and dies before finishing (nothing completes the job).
    conn.execute("select * from private.jobs_claim('dead-worker', 10, 1)")
    assert conn.execute("select status from private.jobs").fetchone()["status"] == "running"
    pool = await open_pool(db_url)
    w = Worker(db_url, worker_id="rescuer", pool=pool)
    await w.start()
    assert await w.rescue() == 0  # lease still valid
    await asyncio.sleep(1.2)
    assert await w.rescue() == 1
    job = conn.execute("select status, attempts, last_error from private.jobs").fetchone()
    assert job["status"] == "queued" and "lease expired" in job["last_error"] and job["attempts"] == 1
    # The dead worker's late completion is ignored; a live worker finishes it.
    assert conn.execute("select private.jobs_complete('dead-worker', array[1]::bigint[])").fetchone()["jobs_complete"] == 0
    await pool.close()
    await run_workers(db_url, 1, lambda: count(db_url, "select count(*) = 1 from private.jobs where status = 'succeeded'"))
    assert ran == ["w0"]


async def test_failures_retry_with_backoff_then_fail_visibly(db_url, conn):
    @JOBS.handler("probe.flaky")
    async def flaky(ctx, job):
        raise JobError("provider said 503")

    @JOBS.handler("probe.bad")
    async def bad(ctx, job):
        raise JobError("invalid phone number", retryable=False)

    conn.execute("select private.enqueue_job('probe.flaky', '{}', null, now(), null, 100::smallint, 2)")
    conn.execute("select private.enqueue_job('probe.bad')")
    await run_workers(db_url, 1, lambda: count(
        db_url, "select count(*) = 2 from private.jobs where status = 'failed'"), timeout=20)
    rows = {r["kind"]: r for r in conn.execute("select kind, attempts, last_error, status from private.jobs")}
    assert rows["probe.flaky"]["attempts"] == 2 and rows["probe.flaky"]["last_error"] == "provider said 503"
    assert rows["probe.bad"]["attempts"] == 1 and rows["probe.bad"]["last_error"] == "invalid phone number"


async def test_backoff_schedules_the_retry_later(conn):
    conn.execute("select private.enqueue_job('probe.x')")
    conn.execute("select * from private.jobs_claim('w', 1, 30)")
    conn.execute("select private.jobs_fail('w', 1, 'boom', true)")
    conn.execute("select * from private.jobs_claim('w', 1, 30)")
    conn.execute("update private.jobs set run_at = now()")
    conn.execute("select * from private.jobs_claim('w', 1, 30)")
    conn.execute("select private.jobs_fail('w', 1, 'boom', true)")
    delay = conn.execute("select extract(epoch from run_at - now()) as s from private.jobs").fetchone()["s"]
    assert 1.5 < float(delay) <= 2.1  # second failure: 2 s
    assert conn.execute("select count(*) as n from private.jobs_claim('w', 1, 30)").fetchone()["n"] == 0


async def test_enqueue_is_idempotent(conn):
    a = conn.execute("select private.enqueue_job('probe.x', '{}', null, now(), 'key-1') as id").fetchone()["id"]
    b = conn.execute("select private.enqueue_job('probe.x', '{}', null, now(), 'key-1') as id").fetchone()["id"]
    assert a == b and conn.execute("select count(*) as n from private.jobs").fetchone()["n"] == 1


async def test_graceful_shutdown_hands_leases_back(db_url, conn):
    started = asyncio.Event()

    @JOBS.handler("probe.slow")
    async def slow(ctx, job):
        started.set()
        await asyncio.sleep(60)

    enqueue(conn, "probe.slow", 3)
    w = Worker(db_url, worker_id="leaving", poll_seconds=0.1, grace_seconds=0.5)
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(started.wait(), 10)
    w.stop()
    await asyncio.wait_for(task, 10)
    rows = conn.execute("select status, attempts, locked_by from private.jobs").fetchall()
    assert [r["status"] for r in rows] == ["queued"] * 3
    assert all(r["attempts"] == 0 and r["locked_by"] is None for r in rows)


async def test_listen_notify_wakes_an_idle_worker(db_url, conn):
    seen = asyncio.Event()

    @JOBS.handler("probe.wake")
    async def wake(ctx, job):
        seen.set()

    w = Worker(db_url, worker_id="sleepy", poll_seconds=30)  # polling alone would take 30 s
    task = asyncio.create_task(w.run())
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    conn.execute("select private.enqueue_job('probe.wake')")
    await asyncio.wait_for(seen.wait(), 10)
    assert time.monotonic() - t0 < 5
    w.stop()
    await task


async def test_breaker_opens_after_threshold_and_recovers(db_url, conn):
    from worker.breaker import Breaker

    conn.execute("select private.breaker_configure('fakeapi', 3, 1)")
    pool = await open_pool(db_url)
    breaker = Breaker(pool)

    async def call(ok):
        async with breaker.guard("fakeapi"):
            if not ok:
                raise JobError("500 from fakeapi")

    for _ in range(3):
        with pytest.raises(JobError):
            await call(False)
    state = lambda: conn.execute("select health_status, error_count from public.module_health where module_name = 'fakeapi'").fetchone()
    assert state()["health_status"] == "OPEN"
    with pytest.raises(BreakerOpen):
        await call(True)  # refused without calling
    await asyncio.sleep(1.1)
    # Half-open: one probe goes through; a second caller meanwhile is refused.
    assert await breaker.allow("fakeapi") is True
    assert state()["health_status"] == "HALF_OPEN"
    assert await breaker.allow("fakeapi") is False
    await breaker.record("fakeapi", False, "still down")
    assert state()["health_status"] == "OPEN"
    await asyncio.sleep(1.1)
    await call(True)
    assert state() == {"health_status": "CLOSED", "error_count": 0}
    await pool.close()


async def test_open_breaker_makes_work_wait_not_fail(db_url, conn):
    calls = []

    @JOBS.handler("probe.guarded")
    async def guarded(ctx, job):
        calls.append(1)
        async with ctx.breaker.guard("downstream"):
            pass

    conn.execute("select private.breaker_configure('downstream', 1, 60)")
    conn.execute("select private.breaker_record('downstream', false, 'down')")
    conn.execute("select private.enqueue_job('probe.guarded')")
    w = Worker(db_url, worker_id="patient", poll_seconds=0.1)
    task = asyncio.create_task(w.run())
    while not calls:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    w.stop()
    await task
    job = conn.execute("select status, attempts, run_at > now() as later from private.jobs").fetchone()
    assert job == {"status": "queued", "attempts": 0, "later": True}


async def test_a_failed_completion_does_not_stop_the_claim_loop(db_url, conn):
    """If settling a batch raises, the loop lives on and later jobs still run."""

    ran = []

    @JOBS.handler("probe.after")
    async def after(ctx, job):
        ran.append(job["id"])

    w = Worker(db_url, worker_id="sturdy", poll_seconds=0.1, queues=["jobs"])
    original = w._settle
    calls = {"n": 0}

    async def flaky_settle(q, rows, tasks):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated completion failure")
        return await original(q, rows, tasks)

    w._settle = flaky_settle
    task = asyncio.create_task(w.run())
    conn.execute("select private.enqueue_job('probe.after')")
    while calls["n"] < 1:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    conn.execute("select private.enqueue_job('probe.after')")
    deadline = time.monotonic() + 10
    while conn.execute("select count(*) as n from private.jobs where status = 'succeeded'").fetchone()["n"] < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    w.stop()
    await task
    assert len(ran) == 2
