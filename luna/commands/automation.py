"""Automation: `luna automation list [--tenant T] [--json]` (workflows with their runs),
`luna automation show RUN [--json]` (a run and its history: step, when, result),
`luna automation validate FILE.json [--offline]` (the published JSON Schema, then the database's own check
of step references unless --offline). Errors go up to luna.cli.main (a sentence, a non-zero exit)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
automation_app = typer.Typer(help="Workflow automation: workflows, runs, definitions.", no_args_is_help=True)


def _dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


@automation_app.command("list")
def list_workflows(tenant: Optional[str] = typer.Option(None, "--tenant", help="tenant slug or id (default: all)"),
                   as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """The workflows with their status, current version and run counts."""
    from luna.db import connect
    from luna.tokens import resolve_tenant

    with connect() as conn:
        tid = str(resolve_tenant(conn, tenant)) if tenant else None
        rows = conn.execute(
            "select t.slug as tenant, s.workflow_id as id, s.name, s.workflow_status as status, s.current_version as version, "
            "w.trigger_type as trigger, s.runs, s.active, s.completed, s.exited_replied, s.exited_opted_out, s.failed, s.cancelled "
            "from public.workflow_run_stats s join public.workflows w on w.id = s.workflow_id "
            "join public.tenants t on t.id = s.tenant_id where %s::uuid is null or s.tenant_id = %s::uuid "
            "order by t.slug, s.name", (tid, tid)).fetchall()
    if as_json:
        print(_dump({"workflows": rows}))
        return
    table = Table("tenant", "workflow", "id", "status", "v", "trigger", "runs", "active", "done", "replied", "opted out",
                  "failed", "cancelled")
    for r in rows:
        table.add_row(r["tenant"], r["name"], str(r["id"]), r["status"], str(r["version"] or "-"), r["trigger"] or "-",
                      *(str(r[k]) for k in ("runs", "active", "completed", "exited_replied", "exited_opted_out", "failed",
                                            "cancelled")))
    console.print(table)


@automation_app.command("show")
def show_run(run: str = typer.Argument(..., help="the run's id"), as_json: bool = typer.Option(False, "--json")):
    """A run and its history (which step, when, with what result or error)."""
    import uuid

    from luna.db import connect

    try:
        uuid.UUID(run)
    except ValueError:
        raise ValueError(f"not a run id: {run!r}")
    with connect() as conn:
        r = conn.execute("select r.*, w.name as workflow from public.workflow_runs r join public.workflows w on w.id = r.workflow_id "
                         "where r.id = %s", (run,)).fetchone()
        if r is None:
            raise LookupError(f"no run {run}")
        history = conn.execute("select seq, step_key, type, status, due_at, started_at, finished_at, result, error_code, error "
                               "from public.workflow_steps where run_id = %s order by seq", (run,)).fetchall()
    if as_json:
        print(_dump({"run": r, "history": history}))
        return
    console.print(f"[bold]{r['workflow']}[/bold] v{r['version']}  run {r['id']}  [bold]{r['status']}[/bold]"
                  + (f" ({r['end_reason']})" if r["end_reason"] else ""))
    console.print(f"started {r['started_at']:%Y-%m-%d %H:%M:%S %Z}"
                  + (f", finished {r['finished_at']:%Y-%m-%d %H:%M:%S %Z}" if r["finished_at"] else ""))
    table = Table("#", "step", "type", "status", "due", "finished", "result / error")
    for s in history:
        outcome = f"{s['error_code']}: {s['error']}" if s["error_code"] else json.dumps(s["result"], ensure_ascii=False, default=str) \
            if s["result"] is not None else (s["error"] or "")
        table.add_row(str(s["seq"]), s["step_key"], s["type"], s["status"], f"{s['due_at']:%Y-%m-%d %H:%M:%S}",
                      f"{s['finished_at']:%Y-%m-%d %H:%M:%S}" if s["finished_at"] else "-", outcome[:120])
    console.print(table)


@automation_app.command("validate")
def validate(file: Path = typer.Argument(..., help="a workflow definition (JSON)"),
             offline: bool = typer.Option(False, "--offline", help="the JSON Schema only, no database check")):
    """Check a definition: exit 0 and 'valid', or exit 1 with the JSON path of the first error."""
    from luna import automation

    try:
        definition = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    try:
        automation.validate(definition)
    except automation.WorkflowInvalid as exc:
        raise ValueError(f"{file}: invalid_workflow at {exc.path}: {exc.message}")
    if not offline:
        import psycopg
        from psycopg.types.json import Jsonb

        from luna.db import connect

        with connect() as conn:
            try:
                conn.execute("select private.automation_check_definition(%s)", (Jsonb(definition),))
            except psycopg.Error as exc:
                detail = exc.diag.message_detail or ""
                path = detail.split("path=", 1)[1] if "path=" in detail else "$"
                raise ValueError(f"{file}: invalid_workflow at {path}: {exc.diag.message_primary}")
    print(f"{file}: valid")


def register(app: typer.Typer) -> None:
    app.add_typer(automation_app, name="automation")
