"""Automation (issue 12): workflows, their versions and runs.

    GET  /v1/automation/schema                  the published workflow JSON Schema (no sign-in needed)
    POST /v1/automation/validate                body: a definition; 200 {"valid": true} or 422
    GET  /v1/automation/workflows               the tenant's workflows with their run counts
    POST /v1/automation/workflows               {"name", "description"?, "definition", "activate"?} -> 201
    POST /v1/automation/workflows/{id}/versions {"definition", "activate"?} -> 201 (runs keep their version)
    PATCH /v1/automation/workflows/{id}         {"status": "draft|active|paused|archived"}
    GET  /v1/automation/runs/{id}               a run and its history (step, when, result)
    POST /v1/automation/runs/{id}/{action}      pause | resume | cancel

An invalid definition answers 422 {"error": {"code": "invalid_workflow", "message": ..., "details":
{"path": "$.steps[1].type", "schema_path": ...}}}: the JSON Schema first (luna.automation), then the
database's own check (private.automation_check_definition: step references). Everything runs as the
signed-in user (RLS: reading needs automation read, saving automation manage).
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

import psycopg
from fastapi import APIRouter, Body, Depends
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from luna import automation

from ..db import as_user
from ..errors import ApiError

router = APIRouter(prefix="/v1/automation", tags=["automation"])


class WorkflowIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=4000)
    definition: Any = Field(description="the workflow definition (see GET /v1/automation/schema)")
    activate: bool = False


class VersionIn(BaseModel):
    definition: Any
    activate: bool | None = None


class StatusIn(BaseModel):
    status: Literal["draft", "active", "paused", "archived"]


def _checked(definition: Any) -> Any:
    try:
        automation.validate(definition)
    except automation.WorkflowInvalid as exc:
        raise ApiError(422, exc.code, exc.message, details={"path": exc.path, "schema_path": exc.schema_path})
    return definition


def _sql_invalid(exc: psycopg.Error) -> None:
    """The database's check refused it: answer with the same shape (its detail carries the path)."""
    detail = (exc.diag.message_detail or "") if exc.diag else ""
    if detail.startswith("code=invalid_workflow"):
        path = detail.split("path=", 1)[1].strip() if "path=" in detail else "$"
        raise ApiError(422, "invalid_workflow", exc.diag.message_primary or "invalid workflow", details={"path": path})


@router.get("/schema")
async def workflow_schema() -> dict:
    """The JSON Schema every workflow definition is validated against (draft 2020-12)."""
    return automation.schema()


@router.post("/validate", responses={422: {"description": "invalid definition: code invalid_workflow, details.path"}})
async def validate(definition: Any = Body(...)) -> dict:
    _checked(definition)
    return {"valid": True}


@router.get("/workflows")
async def list_workflows(conn: psycopg.AsyncConnection = Depends(as_user)) -> dict:
    rows = await (await conn.execute(
        "select workflow_id as id, name, workflow_status as status, current_version, runs, active, completed, "
        "exited_replied, exited_opted_out, failed, cancelled from public.workflow_run_stats order by name")).fetchall()
    return {"workflows": [{**r, "id": str(r["id"])} for r in rows]}


async def _save_version(conn, workflow_id, definition, activate: bool | None) -> dict:
    try:
        async with conn.transaction():
            row = await (await conn.execute("select public.save_workflow_version(%s, %s, %s) as saved",
                                            (workflow_id, Jsonb(definition), activate))).fetchone()
    except psycopg.Error as exc:
        _sql_invalid(exc)
        raise
    if row["saved"] is None:
        raise ApiError(404, "not_found", "no such workflow")
    return {**row["saved"], "id": str(workflow_id)}


@router.post("/workflows", status_code=201, responses={422: {"description": "invalid definition"},
                                                        403: {"description": "no automation manage permission"}})
async def create_workflow(req: WorkflowIn, conn: psycopg.AsyncConnection = Depends(as_user)) -> dict:
    _checked(req.definition)
    row = await (await conn.execute("select public.save_workflow(%s, %s) as id", (req.name, req.description))).fetchone()
    return await _save_version(conn, row["id"], req.definition, True if req.activate else None)


@router.post("/workflows/{workflow_id}/versions", status_code=201, responses={422: {"description": "invalid definition"}})
async def add_version(workflow_id: UUID, req: VersionIn, conn: psycopg.AsyncConnection = Depends(as_user)) -> dict:
    _checked(req.definition)
    return await _save_version(conn, workflow_id, req.definition, req.activate)


@router.patch("/workflows/{workflow_id}")
async def set_status(workflow_id: UUID, req: StatusIn, conn: psycopg.AsyncConnection = Depends(as_user)) -> dict:
    row = (await (await conn.execute("select public.set_workflow_status(%s, %s) as w",
                                     (workflow_id, req.status))).fetchone())["w"]
    if row is None:
        raise ApiError(404, "not_found", "no such workflow (or you may not change it)")
    return {"id": str(row["id"]), "status": row["status"], "current_version": row["current_version"]}


@router.get("/runs/{run_id}")
async def get_run(run_id: UUID, conn: psycopg.AsyncConnection = Depends(as_user)) -> dict:
    run = await (await conn.execute("select * from public.workflow_runs where id = %s", (run_id,))).fetchone()
    if run is None:
        raise ApiError(404, "not_found", "no such run")
    history = await (await conn.execute(
        "select seq, step_key, type, status, due_at, started_at, finished_at, result, error_code, error "
        "from public.workflow_steps where run_id = %s order by seq", (run_id,))).fetchall()
    return {"run": run, "history": history}


@router.post("/runs/{run_id}/{action}", responses={409: {"description": "the run is not in a state for this"}})
async def operate_run(run_id: UUID, action: Literal["pause", "resume", "cancel"],
                      conn: psycopg.AsyncConnection = Depends(as_user)) -> dict:
    row = await (await conn.execute("select * from public.set_workflow_run_status(%s, %s)", (run_id, action))).fetchone()
    return {"id": str(row["id"]), "status": row["status"], "end_reason": row["end_reason"]}
