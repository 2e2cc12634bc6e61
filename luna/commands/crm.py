"""CRM commands: `luna crm board --tenant T`, `luna crm reminders [--tenant T]`, `luna crm sync-lead LEAD`.

Errors go up to luna.cli.main, the one error path (a sentence, a non-zero exit)."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)
crm_app = typer.Typer(help="CRM: the board, reminders, lead sync.", no_args_is_help=True)


@crm_app.command("board")
def board(tenant: Optional[str] = typer.Option(None, "--tenant", help="tenant slug or id (default: the user's own)"),
          user: str = typer.Option("supervisor", help="the role (or e-mail) whose view to show, e.g. agent"),
          pipeline: Optional[str] = typer.Option(None, help="pipeline id (default: the tenant's default)"),
          as_json: bool = typer.Option(False, "--json", help="print the board RPC's JSON")):
    """Show the kanban as a user sees it (public.crm_board, under RLS): stages, counts, first cards."""
    from rich.table import Table

    from luna.db import connect
    from luna.tokens import as_user, claims, resolve_tenant

    with connect() as conn:
        if tenant:
            tenant_id = str(resolve_tenant(conn, tenant))
            slug = conn.execute("select slug from public.tenants where id = %s", (tenant_id,)).fetchone()["slug"]
            email = user if "@" in user else f"{user}@{slug}.luna.local"
        elif "@" in user:
            email = user
        else:
            raise LookupError(f"no user {user!r}: give an e-mail (--user agent@demo.luna.local), or a role with "
                              f"its tenant (--tenant demo --user {user})")
        user_claims = claims(conn, email, tenant)
        tenant_id = user_claims.get("tenant_id")
        if not tenant_id:
            raise LookupError(f"{email} is an active member of no tenant")
        if pipeline is None:
            row = conn.execute("select id::text from public.pipelines where tenant_id = %s and is_default",
                               (tenant_id,)).fetchone()
            if row is None:
                raise LookupError("the tenant has no default pipeline (give --pipeline ID)")
            pipeline = row["id"]
        with as_user(conn, user_claims=user_claims) as cur:
            result = cur.execute("select public.crm_board(%s) as b", (pipeline,)).fetchone()["b"]
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
def reminders(tenant: Optional[str] = typer.Option(None, "--tenant", help="tenant slug or id (default: all)")):
    """Turn due reminders into notifications now (the worker does this every 30 s)."""
    from luna.db import connect
    from luna.tokens import resolve_tenant

    with connect() as conn:
        if tenant is None:
            n = conn.execute("select private.crm_fire_due_reminders(100000) as n").fetchone()["n"]
            print(json.dumps({"notified": n}))
            return
        tenant_id = str(resolve_tenant(conn, tenant))
        # The worker's function takes the due reminders `for update skip locked`: a second transaction that
        # holds the other tenants' open reminders makes it fire this tenant's only (one rule, no copy of it).
        with connect(autocommit=False) as hold:
            hold.execute("select 1 from public.reminders where tenant_id <> %s and done_at is null "
                         "and notified_at is null for update", (tenant_id,))
            n = conn.execute("select private.crm_fire_due_reminders(100000) as n").fetchone()["n"]
            hold.rollback()
    print(json.dumps({"notified": n, "tenant": tenant_id}))


@crm_app.command("sync-lead")
def sync_lead(lead: str = typer.Argument(..., help="lead id")):
    """Send a QUALIFIED (or CRM_ERROR) lead to the CRM now (private.sync_lead_to_crm) and print the result."""
    from luna.db import connect

    with connect() as conn:
        result = conn.execute("select private.sync_lead_to_crm(%s) as r", (lead,)).fetchone()["r"]
    print(json.dumps(result, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.add_typer(crm_app, name="crm")
