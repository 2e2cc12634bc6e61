"""Tenant secrets: provider keys, tokens, passwords and webhook URLs (issue 10, item 3).

    GET    /v1/secrets          the names of the tenant's secrets and when each was set (never the values)
    PUT    /v1/secrets/{name}   {"value": "..."}: set or replace one (204); owners and admins only
    DELETE /v1/secrets/{name}   remove one (204, or 404)

A name is '<scope>:<key>': the scope is the feature key (leads.enrich.apollo, leads.validate.hunter,
leads.enrich.clearbit, leads.alerts.slack, crm.zoho_sync ...), 'crm_settings' or 'lead_source.<source id>';
the key is the JSON key path the adapter reads ('api_key', 'webhook_url', 'access_token', 'smtp.password',
'whatsapp.token'). Edge encrypts the value (luna.secrets) before it reaches SQL; public.set_tenant_secret
checks the caller's role and stores the ciphertext in private.tenant_secrets, which no API role can read.
"""

from __future__ import annotations

import psycopg
from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response
from pydantic import BaseModel, Field

from luna import secrets

from ..db import as_user
from ..errors import ApiError

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])

NAME = Path(..., min_length=3, max_length=200, pattern=r"^[a-z0-9_][a-z0-9_.\-]*:[a-z0-9_.:\-]+$",
            description="'<scope>:<key>', e.g. leads.enrich.apollo:api_key, crm_settings:smtp.password")


class SecretValue(BaseModel):
    value: str = Field(min_length=1, max_length=8000, description="the secret; never returned by any endpoint")


@router.get("")
async def list_secrets(conn: psycopg.AsyncConnection = Depends(as_user)):
    """The names of the tenant's secrets (owners and admins)."""
    rows = await (await conn.execute("select name, updated_at from public.tenant_secret_names()")).fetchall()
    return {"secrets": [{"name": r["name"], "updated_at": r["updated_at"].isoformat()} for r in rows]}


@router.put("/{name}", status_code=204, responses={403: {"description": "not an owner or admin"},
                                                   422: {"description": "invalid name or value"}})
async def put_secret(req: SecretValue, name: str = NAME, conn: psycopg.AsyncConnection = Depends(as_user)):
    if ":" not in name:
        raise ApiError(422, "invalid_secret_name", "a secret name is <scope>:<key>, e.g. leads.enrich.apollo:api_key")
    secrets.remember(req.value)
    stored = secrets.encrypt(None, req.value)
    await conn.execute("select public.set_tenant_secret(%s, %s)", (name, stored))
    return Response(status_code=204)


@router.delete("/{name}", status_code=204, responses={403: {"description": "not an owner or admin"},
                                                      404: {"description": "no such secret"}})
async def delete_secret(name: str = NAME, conn: psycopg.AsyncConnection = Depends(as_user)):
    row = await (await conn.execute("select public.delete_tenant_secret(%s) as ok", (name,))).fetchone()
    if not row["ok"]:
        raise ApiError(404, "not_found", f"no secret {name}")
    return Response(status_code=204)
