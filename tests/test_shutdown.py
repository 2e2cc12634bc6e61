"""Shutdown of real `luna` processes: the worker on SIGTERM/SIGINT, and the embedded server `luna up`
started (issue 9 items 11 and 12). Real subprocesses and a real Postgres; no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
import pytest

from .conftest import wait_for
from .fakes import free_port

ROOT = Path(__file__).resolve().parent.parent

# `luna worker` itself, with one extra job kind registered: a slow handler that records when it started.
WORKER = """
import asyncio, sys
from worker.registry import JOBS
@JOBS.handler("probe.shutdown")
async def slow(ctx, job):
    async with ctx.pool.connection() as conn:
        await conn.execute("insert into public.shutdown_probe (job_id) values (%s)", (job["id"],))
    await asyncio.sleep(float(job["payload"].get("sleep", 2)))
from luna.cli import app
app(["worker", "--queues", "jobs", "--concurrency", "2"], prog_name="luna")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_signal_stops_claiming_and_hands_rows_back(db_url, conn, sig):
    conn.execute("create table public.shutdown_probe (job_id bigint, at timestamptz not null default clock_timestamp())")
    conn.execute("grant all on public.shutdown_probe to service_role")
    conn.execute("select private.enqueue_job('probe.shutdown', jsonb_build_object('sleep', 1.5)) from generate_series(1, 60)")
    env = dict(os.environ, DATABASE_URL=db_url, LUNA_WORKER_BATCH="20", LUNA_WORKER_POLL_SECONDS="0.2")
    proc = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: conn.execute("select count(*) n from public.shutdown_probe").fetchone()["n"] >= 2,
                  what="the worker to start handlers")
        signalled_at = conn.execute("select clock_timestamp() t").fetchone()["t"]
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    assert rc == 0, out
    locked = conn.execute("select count(*) n from private.jobs where locked_by is not null or status = 'running'").fetchone()["n"]
    assert locked == 0
    late = conn.execute("select count(*) n from public.shutdown_probe where at > %s", (signalled_at,)).fetchone()["n"]
    assert late == 0, "handlers started after the signal"
    # Nothing lost: every job is either done or back in the queue.
    statuses = {r["status"] for r in conn.execute("select distinct status::text from private.jobs").fetchall()}
    assert statuses <= {"queued", "done", "succeeded", "completed"}, statuses


def _postmaster_pid(data_dir: Path) -> int | None:
    pidfile = data_dir / "pg" / "postmaster.pid"
    if not pidfile.exists():
        return None
    return int(pidfile.read_text().splitlines()[0])


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _start_up(data_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(LUNA_DATA_DIR=str(data_dir))
    return subprocess.Popen([sys.executable, "-m", "luna.cli", "up", "--no-worker", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _kill_server(data_dir: Path) -> None:
    pid = _postmaster_pid(data_dir)
    if pid and _running(pid):
        os.kill(pid, signal.SIGQUIT)


@pytest.fixture
def data_dir():
    with tempfile.TemporaryDirectory(prefix="luna-up-") as d:
        yield Path(d)
        _kill_server(Path(d))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_up_stops_its_embedded_server_on_signal(data_dir, sig):
    port = free_port()
    proc = _start_up(data_dir, port)
    try:
        wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=240, what="luna up to answer")
        assert proc.poll() is None, "luna up exited early"
        pid = _postmaster_pid(data_dir)
        assert pid and _running(pid)
    finally:
        rc = _stop(proc, sig)
    assert rc in (0, 128 + sig, -sig) or rc == 0
    wait_for(lambda: not _running(pid), timeout=30, what="the postmaster to stop")


def test_server_left_by_a_killed_luna_is_reused_then_stopped(data_dir):
    port = free_port()
    proc = _start_up(data_dir, port)
    wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=240, what="luna up to answer")
    proc.kill()  # SIGKILL: nothing of luna runs; the server is orphaned
    proc.wait()
    orphan = _postmaster_pid(data_dir)
    assert orphan and _running(orphan)

    port = free_port()
    proc = _start_up(data_dir, port)
    try:
        wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=240, what="the second luna up")
        assert proc.poll() is None
    finally:
        _stop(proc)
    # The second luna was the last live user: it stops the server, whichever process started it.
    wait_for(lambda: not _running(orphan), timeout=30, what="the orphaned postmaster to stop")
    assert _postmaster_pid(data_dir) is None or not _running(_postmaster_pid(data_dir))


def test_stale_postmaster_pid_of_a_dead_server_does_not_block_the_next_start(data_dir):
    port = free_port()
    proc = _start_up(data_dir, port)
    wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=240, what="luna up to answer")
    proc.kill()
    proc.wait()
    pid = _postmaster_pid(data_dir)
    os.kill(pid, signal.SIGKILL)  # the server dies hard too: postmaster.pid stays behind
    wait_for(lambda: not _running(pid), what="the server to die")
    assert (data_dir / "pg" / "postmaster.pid").exists()

    port = free_port()
    proc = _start_up(data_dir, port)
    try:
        wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=240, what="the restart")
        assert proc.poll() is None
        new = _postmaster_pid(data_dir)
        assert new and new != pid and _running(new)
    finally:
        _stop(proc)
    wait_for(lambda: not _running(new), timeout=30, what="the restarted postmaster to stop")
