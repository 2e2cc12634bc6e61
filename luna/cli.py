"""The `luna` command line."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import pkgutil
import sys
from typing import Optional

import typer
from rich.console import Console

from . import migrate as migrator
from .settings import get_settings

app = typer.Typer(help="LUNA: AI sales, marketing and support automation on Supabase / Postgres.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Migrations, seed data and the connection in use.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit chain.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
console = Console(stderr=True)
_options = {"debug": False}


@app.callback()
def _global_options(debug: bool = typer.Option(False, "--debug", envvar="LUNA_DEBUG",
                                               help="on an error, show the Python traceback too")):
    """LUNA: AI sales, marketing and support automation on Supabase / Postgres."""
    _options["debug"] = debug


def _url() -> str:
    from .db import database_url

    try:
        return database_url()
    except Exception as exc:  # the embedded server failed to start, or DATABASE_URL is unreachable
        console.print(f"[red]cannot reach the database:[/] {exc}")
        console.print("Set DATABASE_URL to a reachable Postgres, or unset it to use the embedded default.")
        raise typer.Exit(2)


def _migrate(url: str) -> migrator.Plan:
    from rich.progress import Progress

    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("migrating", total=None)
            return migrator.migrate(url, progress=lambda kind, path: progress.update(task, description=f"{kind} {path.name}"))
    except migrator.MigrationError as exc:
        console.print(f"[red]migration failed:[/] {exc}")
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------- db
@db_app.command("migrate")
def db_migrate():
    """Apply pending migrations, then changed repeatable SQL (functions/, sql/; all of it after a migration). A second run is a no-op."""
    applied = _migrate(_url())
    if applied.empty:
        console.print("already current: nothing to apply")
    else:
        for path in applied.shim + applied.migrations + applied.repeatables:
            console.print(f"applied {path.relative_to(migrator.ROOT)}")


@db_app.command("status")
def db_status():
    """Show applied and pending migrations as JSON."""
    print(json.dumps(migrator.status(_url()), indent=2))


@db_app.command("seed")
def db_seed():
    """Load the demo tenants, users and data (idempotent)."""
    url = _url()
    _migrate(url)
    for path in migrator.seed(url):
        console.print(f"seeded {path.relative_to(migrator.ROOT)}")


@db_app.command("reset")
def db_reset(yes: bool = typer.Option(False, "--yes", help="confirm: every row is deleted"),
             seed: bool = typer.Option(True, help="load the demo data afterwards")):
    """Drop the application database and rebuild it from the migrations."""
    from .db import is_embedded

    if not yes:
        console.print("this deletes all data; run again with --yes")
        raise typer.Exit(1)
    url = _url()
    if is_embedded():
        from .embedded import APP_DB, with_database
        import psycopg

        with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
            conn.execute(f"drop database if exists {APP_DB} with (force)")
            conn.execute(f"create database {APP_DB}")
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            # Users go too: their profiles and memberships are rebuilt by the seed.
            conn.execute("drop schema if exists public, private, audit cascade; create schema public; "
                         "delete from auth.users; "
                         "grant usage on schema public to anon, authenticated, service_role; "
                         "delete from supabase_migrations.schema_migrations; "
                         "drop table if exists supabase_migrations.luna_checksums, supabase_migrations.luna_repeatables")
    _migrate(url)
    if seed:
        migrator.seed(url)
    console.print("reset done")


@db_app.command("url")
def db_url():
    """Print the connection URL in use (DATABASE_URL, or the embedded server's)."""
    print(_url())


# ------------------------------------------------------------------------------------------ token
@app.command()
def token(user: Optional[str] = typer.Option(None, "--user", help="e-mail or id of the user"),
          tenant: Optional[str] = typer.Option(None, "--tenant", help="tenant slug or id (default: the user's own)"),
          ttl: int = typer.Option(3600 * 24, help="lifetime in seconds"),
          service: bool = typer.Option(False, "--service", help="mint a service_role key instead (no --user)")):
    """Mint a dev JWT signed with the local secret (what Supabase Auth would issue)."""
    from . import tokens
    from .db import connect

    if service:
        if user or tenant:
            raise ValueError("--service mints a service_role key for no user: leave out --user and --tenant")
        print(tokens.service_token())
        return
    if not user:
        raise ValueError("say whose token: --user EMAIL (e.g. agent@demo.luna.local), or --service for a "
                         "service_role key")
    _url()
    with connect() as conn:
        print(tokens.mint(conn, user, tenant, ttl=ttl))


# ------------------------------------------------------------------------------------------ audit
@audit_app.command("verify")
def audit_verify(tenant: Optional[str] = typer.Option(None, "--tenant", help="tenant slug or id (default: all)")):
    """Check the audit hash chain; lists every altered, inserted or missing event. Exit 1 if any."""
    from .db import connect
    from .tokens import resolve_tenant

    _url()
    with connect() as conn:
        tenant_id = resolve_tenant(conn, tenant) if tenant else None
        problems = conn.execute("select * from audit.verify(%s)", (tenant_id,)).fetchall()
        count = conn.execute("select count(*) as n from audit.events where %s::uuid is null or tenant_id = %s",
                             (tenant_id, tenant_id)).fetchone()["n"]
    result = {"events": count, "ok": not problems,
              "problems": [{k: str(v) if v is not None else None for k, v in p.items()} for p in problems]}
    print(json.dumps(result, indent=2))
    raise typer.Exit(0 if not problems else 1)


# --------------------------------------------------------------------------------- api / worker / up
@app.command()
def api(host: Optional[str] = None, port: Optional[int] = None):
    """Run edge (the FastAPI app) with uvicorn."""
    import uvicorn

    from .up import warn_missing_secrets

    settings = get_settings()
    _url()
    warn_missing_secrets()
    uvicorn.run("edge.app:app_factory", factory=True, host=host or settings.api_host,
                port=port or settings.api_port, log_level="info")


@app.command()
def worker(concurrency: Optional[int] = typer.Option(None, help="handlers running at once"),
           queues: Optional[str] = typer.Option(None, help="comma-separated queue names (default: all)")):
    """Run the worker: claim loops for every queue plus the scheduled jobs."""
    from worker.runner import run_worker

    url = _url()
    try:
        asyncio.run(run_worker(url, concurrency=concurrency, queues=queues.split(",") if queues else None))
    except KeyboardInterrupt:
        pass


@app.command()
def up(host: Optional[str] = None, port: Optional[int] = None,
       no_worker: bool = typer.Option(False, "--no-worker", help="run edge only")):
    """Run the whole system: database (embedded unless DATABASE_URL), migrations, demo seed, edge and worker."""
    from .up import run_up

    run_up(host=host, port=port, with_worker=not no_worker)


# ------------------------------------------------------------------------------------------ bench
@app.command()
def bench(name: str = typer.Argument(..., help="benchmark name (see `luna bench list`)"),
          quick: bool = typer.Option(False, "--quick", help="a small run that finishes in seconds"),
          rows: Optional[int] = typer.Option(None, "--rows", help="data size, for benches that take one (ingest)"),
          hold_xmin: Optional[int] = typer.Option(None, "--hold-xmin", metavar="SECONDS", min=1,
                                                  help="claim: hold a snapshot open that long while jobs drain"),
          peers: bool = typer.Option(False, "--peers", help="claim: also drain the jobs through PgQueuer and "
                                                            "procrastinate (pip install -e '.[bench]')")):
    """Run a benchmark; prints one JSON object as its last line."""
    from .bench import BENCHES, discover

    discover()
    if name == "list":
        for key, fn in sorted(BENCHES.items()):
            print(f"{key:12} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return
    if name not in BENCHES:
        console.print(f"[red]no benchmark {name!r}[/]; available: {', '.join(sorted(BENCHES))}")
        raise typer.Exit(2)
    import inspect

    kwargs = {"quick": quick}
    for option, key, value in (("--rows", "rows", rows), ("--hold-xmin", "hold_xmin", hold_xmin),
                               ("--peers", "peers", peers or None)):
        if value is not None:
            if key not in inspect.signature(BENCHES[name]).parameters:
                console.print(f"[red]{name} takes no {option}[/]")
                raise typer.Exit(2)
            kwargs[key] = value
    result = BENCHES[name](**kwargs)
    print(json.dumps(result))


def _register_area_commands() -> None:
    """Areas add their commands in luna/commands/<area>.py with a `register(app)` function."""
    from . import commands

    for info in pkgutil.iter_modules(commands.__path__):
        module = importlib.import_module(f"luna.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(app)


_register_area_commands()


def error_message(exc: BaseException) -> tuple[str, int]:
    """The sentence (and exit status) a CLI user sees for an error; the traceback is for --debug."""
    import psycopg

    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"cannot reach the database: {first}. Set DATABASE_URL to a reachable Postgres, or unset it "
                "to use the embedded default.", 2)
    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        text = diag.message_primary or str(exc).strip().splitlines()[0]
        if diag.message_detail:
            text += f" ({diag.message_detail})"
        if diag.message_hint:
            text += f"; {diag.message_hint}"
        return text, 1
    if (isinstance(exc, (LookupError, PermissionError, ValueError, FileNotFoundError))
            and not isinstance(exc, (KeyError, IndexError))):  # those two are bugs, not user errors
        text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
        return text, 1
    return f"unexpected {type(exc).__name__}: {exc} (run with `luna --debug ...` for the traceback)", 1


def main(argv: list[str] | None = None) -> None:
    """Every command's errors take one path: a sentence on stderr and a non-zero exit; the traceback only
    with `luna --debug` (or LUNA_DEBUG=1)."""
    try:
        app(args=argv, prog_name="luna")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - this is the CLI's one error path
        message, status = error_message(exc)
        if _options["debug"] or os.environ.get("LUNA_DEBUG", "").lower() in ("1", "true", "yes"):
            import traceback

            traceback.print_exc()
        red = sys.stderr.isatty()
        print(f"{chr(27) + '[31m' if red else ''}error:{chr(27) + '[0m' if red else ''} {message}", file=sys.stderr)
        sys.exit(status)


if __name__ == "__main__":
    main()
