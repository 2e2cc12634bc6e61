"""Lead commands: `luna ingest csv FILE --tenant T` and `luna leads [--tenant T]`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)
ingest_app = typer.Typer(help="Bring leads in (CSV files).", no_args_is_help=True)


def _csv_help() -> str:
    from luna.normalize import accepted_columns

    return ("Import a CSV (UTF-8, BOM or Windows-1254; , ; or tab separated). Ends with one JSON line: rows, "
            "inserted, merged, duplicates, rescored, rejected, errors [{line, reason}] and warnings [{line, reason}]."
            "\n\nA row needs a company name, or a valid e-mail, phone or website; a bad value beside it is left out "
            "and reported as a warning. A file whose header names none of these columns, or that is not text, "
            "is refused whole.\n\nAccepted columns (header spellings, any case, Turkish letters folded): "
            + accepted_columns() + ". Other columns are kept in the lead's raw payload.")


@ingest_app.command("csv", help=_csv_help())
def ingest_csv(file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="the CSV file"),
               tenant: str = typer.Option(..., "--tenant", help="tenant slug or id"),
               source: str = typer.Option("csv", help="the source recorded on the leads")):
    """`luna ingest csv` (its help text is _csv_help's, which lists the accepted columns)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from luna.db import connect
    from luna.tokens import resolve_tenant
    from luna.lead_import import CsvError, import_csv

    size = os.path.getsize(file)
    with connect() as conn:
        try:
            tenant_id = str(resolve_tenant(conn, tenant))
        except LookupError as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(1)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                      TextColumn("{task.fields[rows]} rows"), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task(f"importing {file.name}", total=size, rows=0)
            read = 0

            def chunks():
                nonlocal read
                with open(file, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        read += len(chunk)
                        yield chunk

            try:
                result = import_csv(conn, tenant_id, chunks(), source=source,
                                    progress=lambda rows: progress.update(task, completed=read, rows=rows))
            except CsvError as exc:
                progress.stop()
                console.print(f"[red]{file.name} was not imported ({exc.code}):[/] {exc}")
                raise typer.Exit(1)
            progress.update(task, completed=size)
    print(json.dumps(result.as_dict(), ensure_ascii=False))


def leads(tenant: Optional[str] = typer.Option(None, "--tenant", help="tenant slug or id (default: all)"),
          status: Optional[str] = typer.Option(None, help="only this processing_status"),
          limit: int = typer.Option(50, help="rows to show"),
          as_json: bool = typer.Option(False, "--json", help="print JSON lines instead of a table")):
    """List leads with their status, category, AI score and decision."""
    from rich.table import Table

    from luna.db import connect
    from luna.tokens import resolve_tenant

    with connect() as conn:
        tenant_id = str(resolve_tenant(conn, tenant)) if tenant else None
        rows = conn.execute("""
            select t.slug as tenant, l.company_name, l.contact_name, l.email, l.phone, l.source,
                   l.processing_status as status, l.lead_category as category, l.luna_ai_score as score,
                   l.luna_ai_decision as decision, l.sector_category as sector, l.luna_ai_reason as reason
            from public.leads l join public.tenants t on t.id = l.tenant_id
            where (%(t)s::uuid is null or l.tenant_id = %(t)s::uuid)
              and (%(s)s::text is null or l.processing_status = %(s)s::text)
            order by l.created_at desc limit %(n)s""", {"t": tenant_id, "s": status, "n": limit}).fetchall()
        summary = conn.execute("""
            select processing_status as status, count(*) as n from public.leads
            where (%(t)s::uuid is null or tenant_id = %(t)s::uuid) group by 1 order by 1""", {"t": tenant_id}).fetchall()
    if as_json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False, default=str))
        return
    table = Table(title="leads")
    for col in ("tenant", "company_name", "contact_name", "source", "status", "category", "score", "decision", "sector"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*[str(r[c]) if r[c] is not None else "" for c in
                        ("tenant", "company_name", "contact_name", "source", "status", "category", "score", "decision", "sector")])
    out = Console(width=None if Console().is_terminal else 160)
    out.print(table)
    out.print("  ".join(f"{s['status']}: {s['n']}" for s in summary))


def register(app: typer.Typer) -> None:
    app.add_typer(ingest_app, name="ingest")
    app.command("leads")(leads)
