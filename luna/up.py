"""`luna up`: database, migrations, demo seed, then edge and worker in one process until Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import os

from rich.console import Console

from . import migrate, secrets
from .db import connect, database_url, is_embedded
from .settings import get_settings

console = Console()
DEMO_USERS = ["owner", "admin", "supervisor", "agent", "viewer"]
# Server-side secrets the edge needs for some endpoints: without one, that endpoint refuses its callers.
OPTIONAL_SECRETS = {
    "LUNA_META_APP_SECRET": "Meta Lead Ads webhooks (POST /v1/leads/webhooks/meta) answer 503 not_configured",
    "LUNA_META_VERIFY_TOKEN": "Meta's Lead Ads subscription handshake (GET /v1/leads/webhooks/meta) is refused (403)",
    "LUNA_AUDIT_ANCHOR_KEY": "the worker's audit.anchor job and `luna audit anchor` cannot sign anchors",
}


def missing_secrets() -> list[tuple[str, str]]:
    """(variable, what does not work without it) for each unset optional server-side secret."""
    return [(name, effect) for name, effect in OPTIONAL_SECRETS.items() if not os.environ.get(name)]


def warn_missing_secrets() -> None:
    """One warning line per unset optional secret, printed by `luna up` and `luna api` at start-up."""
    for name, effect in missing_secrets():
        console.print(f"[yellow]warning:[/] {name} is not set: {effect}", soft_wrap=True)


def run_up(host: str | None = None, port: int | None = None, with_worker: bool = True) -> None:
    settings = get_settings()
    host = host or settings.api_host
    port = port or settings.api_port
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

    with console.status("starting the database" if is_embedded() else "connecting to DATABASE_URL"):
        url = database_url()
    with console.status("migrating"):
        try:
            migrate.migrate(url)
        except migrate.MigrationError as exc:
            console.print(f"[red]migration failed:[/] {exc}")
            raise SystemExit(1)
        secrets.migrate_database(url)  # plain-text keys left in settings JSON -> the encrypted store (idempotent)
    if is_embedded():
        with console.status("seeding the demo tenants"):
            migrate.seed(url)
    _banner(url, host, port)
    warn_missing_secrets()
    asyncio.run(_serve(url, host, port, with_worker))


def _banner(url: str, host: str, port: int) -> None:
    from . import tokens

    console.print(f"[bold]LUNA is up[/]  api: http://{host}:{port}  docs: http://{host}:{port}/docs  "
                  f"health: http://{host}:{port}/health")
    console.print(f"database: {url}" + ("  (embedded; data in " + str(get_settings().data_dir) + ")" if is_embedded() else ""))
    console.print("[bold]demo users[/] (dev JWTs valid 24 h; `luna token --user EMAIL` mints more):")
    with connect() as conn:
        for slug in ("demo", "demo-2"):
            for role in DEMO_USERS:
                email = f"{role}@{slug}.luna.local"
                try:
                    jwt = tokens.mint(conn, email, slug, ttl=86400)
                except (LookupError, PermissionError):
                    continue
                console.print(f"  {slug:7} {role:10} {email}")
                console.print(f"    {jwt}", soft_wrap=True)
    console.print(f"service_role key: {tokens.service_token()}")
    console.print("Ctrl-C stops everything.")


async def _serve(url: str, host: str, port: int, with_worker: bool) -> None:
    import uvicorn

    from edge.app import create_app
    from worker.runner import run_worker

    server = uvicorn.Server(uvicorn.Config(create_app(url), host=host, port=port, log_level="info"))
    stop = asyncio.Event()
    worker_task = asyncio.create_task(run_worker(url, stop=stop)) if with_worker else None
    try:
        await server.serve()  # returns on Ctrl-C / SIGTERM (uvicorn handles the signals)
    finally:
        stop.set()
        if worker_task:
            await asyncio.gather(worker_task, return_exceptions=True)
        console.print("stopped")
