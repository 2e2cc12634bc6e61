"""CRM commands: `luna crm board --tenant T`, `luna crm reminders`, `luna crm sync-lead LEAD`."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)
crm_app = typer.Typer(help="CRM: the board, reminders, lead sync.", no_args_is_help=True)


def _tenant(conn, ref: str) -> str:
    from luna.tokens import resolve_tenant

    try:
        return str(resolve_tenant(conn, ref))
    except LookupError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1)


@crm_app.command("board")
def board(tenant: str = typer.Option(..., "--tenant", help="tenant slug or id"),
          user: str = typer.Option("supervisor", help="the role (or e-mail) whose view to show, e.g. agent"),
          pipeline: Optional[str] = typer.Option(None, help="pipeline id (default: the tenant's default)"),
          as_json: bool = typer.Option(False, "--json", help="print the board RPC's JSON")):
    """Show the kanban as a user sees it (public.crm_board, under RLS): stages, counts, first cards."""
    from rich.table import Table

    from luna.db import connect
    from luna.tokens import mint

    with connect() as conn:
        tenant_id = _tenant(conn, tenant)
        slug = conn.execute("select slug from public.tenants where id = %s", (tenant_id,)).fetchone()["slug"]
        email = user if "@" in user else f"{user}@{slug}.luna.local"
        import jwt

        claims = jwt.decode(mint(conn, email, tenant_id), options={"verify_signature": False})
        pipeline = pipeline or conn.execute("select id::text from public.pipelines where tenant_id = %s and is_default",
                                            (tenant_id,)).fetchone()["id"]
        with conn.transaction():
            conn.execute("select set_config('role', 'authenticated', true), set_config('request.jwt.claims', %s, true)",
                         (json.dumps(claims),))
            result = conn.execute("select public.crm_board(%s) as b", (pipeline,)).fetchone()["b"]
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
        return
    table = Table(title=f"{result['pipeline']['name']} — {email}")
    for column in ("stage", "cards", "value", "first cards"):
        table.add_column(column)
    for stage in result["stages"]:
        first = ", ".join(("⚠ " if c["overdue"] else "") + c["customer_name"] for c in stage["cards"][:3])
        table.add_row(stage["name"], str(stage["count"]), str(stage["total_value"]), first)
    Console().print(table)


@crm_app.command("reminders")
def reminders():
    """Turn due reminders into notifications now (the worker does this every 30 s)."""
    from luna.db import connect

    with connect() as conn:
        n = conn.execute("select private.crm_fire_due_reminders(100000) as n").fetchone()["n"]
    print(json.dumps({"notified": n}))


@crm_app.command("sync-lead")
def sync_lead(lead: str = typer.Argument(..., help="lead id")):
    """Send a QUALIFIED (or CRM_ERROR) lead to the CRM now (private.sync_lead_to_crm) and print the result."""
    import psycopg

    from luna.db import connect

    with connect() as conn:
        try:
            result = conn.execute("select private.sync_lead_to_crm(%s) as r", (lead,)).fetchone()["r"]
        except psycopg.Error as exc:
            console.print(f"[red]{exc.diag.message_primary or exc}[/]")
            raise typer.Exit(1)
    print(json.dumps(result, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.add_typer(crm_app, name="crm")
