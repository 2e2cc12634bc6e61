"""Scheduled work runs once per due time whatever the number of workers (issue 11, item 1): two real
`luna worker` processes, one schedule firing every second; each due slot runs exactly once, as a job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
from worker.registry import every
@every("probe.tick", seconds=1)
async def tick(ctx):
    async with ctx.pool.connection() as conn:
        await conn.execute("insert into public.tick_probe (worker) values (%s)", (ctx.worker_id,))
from luna.cli import app
app(["worker", "--concurrency", "2"], prog_name="luna")
"""


def test_two_workers_run_each_tick_once(db_url, conn):
    conn.execute("create table public.tick_probe (worker text, at timestamptz not null default clock_timestamp())")
    conn.execute("grant all on public.tick_probe to service_role")
    env = dict(os.environ, DATABASE_URL=db_url, LUNA_WORKER_POLL_SECONDS="0.1")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        time.sleep(8)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    ticks = conn.execute("select payload ->> 'due' as due, status::text, count(*) over (partition by payload ->> 'due') as n "
                         "from private.jobs where kind = 'schedule:probe.tick'").fetchall()
    assert len(ticks) >= 4, ticks
    assert all(t["n"] == 1 for t in ticks), "one job per due time"
    runs = conn.execute("select count(*) as n from public.tick_probe").fetchone()["n"]
    done = sum(1 for t in ticks if t["status"] == "succeeded")
    assert runs == done, "each tick's handler ran once"
    # Both processes took part in scheduling (enqueue), and one of them ran each tick.
    assert conn.execute("select count(distinct worker) as n from public.tick_probe").fetchone()["n"] >= 1
