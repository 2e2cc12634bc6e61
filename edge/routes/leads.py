"""Lead ingestion endpoints.

    POST /v1/leads                    a landing-page form (X-Form-Key) or a signed-in user (JWT)
    POST /v1/leads/import             a CSV upload, streamed (JWT with leads write, or a service key + ?tenant=)

Meta Lead Ads webhooks (GET/POST /v1/leads/webhooks/meta and /v1/webhooks/meta/{app_id}) are the one
Meta webhook module, edge/routes/meta.py: leadgen changes are stored raw, then fetched from the Graph
API by the worker (leads.meta_fetch). Every source ends in private.ingest_lead / private.ingest_staged
(the dedupe rule lives in SQL).
"""

from __future__ import annotations

import asyncio
import json
import tempfile

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse
from psycopg.types.json import Jsonb

from .. import auth
from .. import openapi as oa
from ..db import as_service, pool_of, request_headers, transaction
from ..errors import ApiError

router = APIRouter(tags=["leads"])
BODY_LIMITS = {"/v1/leads/import": "upload"}


async def _caller_tenant(request: Request, write: bool = True) -> tuple[str, dict]:
    """The tenant of a JWT caller allowed to write leads (service_role names it with ?tenant=)."""
    claims = await auth.claims(request)
    role = claims.get("role")
    if role == "service_role":
        tenant = request.query_params.get("tenant")
        if not tenant:
            raise ApiError(400, "tenant_required", "a service key must name the tenant: ?tenant=<id or slug>")
        async with as_service(request) as conn:
            row = await (await conn.execute("select private.resolve_tenant(%s) as id", (tenant,))).fetchone()
        if not row or not row["id"]:
            raise ApiError(404, "tenant_not_found", f"no tenant {tenant!r}")
        return str(row["id"]), claims
    if role != "authenticated":
        raise ApiError(401, "unauthorized", "sign in, or send the form key (X-Form-Key)")
    async with transaction(pool_of(request), role, claims, request_headers(request), request.method,
                           request.url.path) as conn:
        row = await (await conn.execute(
            "select private.tenant_id() as tenant, private.can('leads', %s) as ok",
            ("write" if write else "read",))).fetchone()
    if not row["tenant"]:
        raise ApiError(403, "no_tenant", "the token names no active tenant membership")
    if not row["ok"]:
        raise ApiError(403, "forbidden", "your role may not add leads")
    return str(row["tenant"]), claims


LEAD_BODY = {"type": "object", "additionalProperties": True, "properties": {
    "company_name": {"type": "string"}, "contact_name": {"type": "string"}, "email": {"type": "string"},
    "phone": {"type": "string"}, "website": {"type": "string"}, "city": {"type": "string"},
    "country": {"type": "string"}, "external_id": {"type": "string"}, "source": {"type": "string", "maxLength": 40},
    "utm_source": {"type": "string"}, "utm_medium": {"type": "string"}, "utm_campaign": {"type": "string"},
    "utm_term": {"type": "string"}, "utm_content": {"type": "string"}},
    "description": "a company name, or a valid e-mail, phone or website; other keys are kept in raw"}


@router.post("/v1/leads", status_code=201, dependencies=[Security(oa.form_key_scheme), Security(auth.bearer_scheme)],
             openapi_extra=oa.op(body=oa.raw_body("application/json", LEAD_BODY)))
async def create_lead(request: Request):
    """One lead from a landing-page form or an app. Returns {lead_id, action: inserted|merged, warnings}."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    form_key = request.headers.get("x-form-key")
    source = "form"
    if form_key:
        async with as_service(request) as conn:
            row = await (await conn.execute(
                "select tenant_id, kind from public.lead_sources where form_key = %s and enabled",
                (form_key,))).fetchone()
        if not row:
            raise ApiError(401, "invalid_form_key", "the form key is unknown or disabled")
        tenant = str(row["tenant_id"])
    else:
        tenant, _ = await _caller_tenant(request)
        source = str(body.get("source") or "manual")[:40]
    async with as_service(request) as conn:
        # The body goes to the database as sent: private.ingest_lead cleans the standard fields, keeps
        # the lead for one bad field (with a warning) and keeps the whole body in raw.
        row = await (await conn.execute("select * from private.ingest_lead(%s, %s, %s)",
                                        (tenant, source, Jsonb(body)))).fetchone()
    return JSONResponse({"lead_id": str(row["lead_id"]), "action": row["action"], "warnings": row["warnings"]},
                        status_code=201 if row["action"] == "inserted" else 200)


@router.post("/v1/leads/import", dependencies=[Security(auth.bearer_scheme)], openapi_extra=oa.op(
    body=oa.raw_body("text/csv", oa.CSV, also={"application/octet-stream": {"type": "string", "format": "binary"}}),
    params=[oa.query("tenant", "tenant id or slug (a service_role key must name it)"),
            oa.query("source", "the source recorded on the leads (default csv)", schema={"type": "string", "maxLength": 40})]))
async def import_leads(request: Request):
    """A CSV file as the raw body (text/csv), streamed to disk, parsed and normalised off the event
    loop, COPYed into staging and merged in one set-based upsert. Returns rows, inserted, merged,
    rejected and errors [{line, reason}]."""
    tenant, _ = await _caller_tenant(request)
    source = (request.query_params.get("source") or "csv")[:40]
    with tempfile.TemporaryFile() as spool:
        size = 0
        async for chunk in request.stream():
            spool.write(chunk)
            size += len(chunk)
        if size == 0:
            raise ApiError(400, "empty_upload", "send the CSV file as the request body")
        spool.seek(0)
        # The bulk path is CPU work (decode, parse, normalise on a process pool) and one COPY: it runs
        # in a thread on its own connection (as service_role), off the event loop.
        from luna.lead_import import CsvError

        try:
            result = await asyncio.to_thread(_import_sync, request.app.state.database_url, tenant, spool, source)
        except CsvError as exc:
            raise ApiError(422, exc.code, str(exc)) from None
    return result.as_dict()


def _import_sync(url: str, tenant: str, spool, source: str):
    import psycopg
    from psycopg.rows import dict_row

    from luna.lead_import import import_csv

    def chunks():
        while chunk := spool.read(1 << 20):
            yield chunk

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("set role service_role")
        return import_csv(conn, tenant, chunks(), source=source)
