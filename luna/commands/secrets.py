"""Tenant secrets: `luna secrets set --tenant T NAME` (value from stdin or --value), `luna secrets list
--tenant T` (names only), `luna secrets delete --tenant T NAME`, `luna secrets migrate` (move plain-text
keys out of the JSON settings columns into the encrypted store; idempotent; run by `luna up`).

Errors go up to luna.cli.main, the one error path (a sentence, a non-zero exit)."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)
secrets_app = typer.Typer(help="Tenant secrets (API keys, tokens, passwords, webhook URLs), stored encrypted.",
                          no_args_is_help=True)


def _tenant(conn, tenant: str) -> str:
    from luna.tokens import resolve_tenant

    return str(resolve_tenant(conn, tenant))


@secrets_app.command("set")
def set_secret(name: str = typer.Argument(..., help="<scope>:<key>, e.g. leads.enrich.apollo:api_key"),
               tenant: str = typer.Option(..., "--tenant", help="tenant slug or id"),
               value: Optional[str] = typer.Option(None, "--value", help="the value (default: read from stdin, "
                                                   "which keeps it out of the shell history)")):
    from luna import secrets
    from luna.db import connect

    if value is None:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise ValueError("an empty secret: give --value or pipe the value on stdin")
    with connect() as conn:
        secrets.set_tenant_secret(conn, _tenant(conn, tenant), name, value)
    console.print(f"set {name}")


@secrets_app.command("list")
def list_secrets(tenant: str = typer.Option(..., "--tenant", help="tenant slug or id")):
    from luna.db import connect

    with connect() as conn:
        rows = conn.execute("select name, updated_at from private.tenant_secrets where tenant_id = %s order by name",
                            (_tenant(conn, tenant),)).fetchall()
    for r in rows:
        print(f"{r['name']}\t{r['updated_at'].isoformat()}")


@secrets_app.command("delete")
def delete_secret(name: str = typer.Argument(...), tenant: str = typer.Option(..., "--tenant")):
    from luna import secrets
    from luna.db import connect

    with connect() as conn:
        if not secrets.delete_tenant_secret(conn, _tenant(conn, tenant), name):
            raise LookupError(f"no secret {name}")
    console.print(f"deleted {name}")


@secrets_app.command("migrate")
def migrate_secrets():
    from luna import secrets
    from luna.db import connect

    with connect() as conn:
        counts = secrets.migrate(conn)
    console.print(f"secrets: {counts['rows_moved']} rows moved, {counts['sealed']} values encrypted")


def register(app: typer.Typer) -> None:
    app.add_typer(secrets_app, name="secrets")
