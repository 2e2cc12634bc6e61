"""Database access for edge, "as PostgREST would": each request runs in one transaction with
`set local role` and the request settings (JWT claims, headers), so RLS decides, not Python."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import AsyncIterator

import psycopg
from fastapi import Depends, Request
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .auth import claims as verified_claims

# Headers passed to the database (audit reads ip, user agent and correlation id from these).
FORWARDED_HEADERS = ("user-agent", "x-forwarded-for", "x-real-ip", "x-correlation-id", "origin")


def open_pool(url: str, *, min_size: int = 2, max_size: int = 20) -> AsyncConnectionPool:
    return AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                               kwargs={"autocommit": True, "row_factory": dict_row})


def request_headers(request: Request) -> dict:
    headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
    headers["x-correlation-id"] = request.state.correlation_id
    if "x-forwarded-for" not in headers and request.client:
        headers["x-forwarded-for"] = request.client.host
    return headers


@asynccontextmanager
async def transaction(pool: AsyncConnectionPool, role: str, claims: dict | None,
                      headers: dict | None = None, method: str = "POST", path: str = "/") -> AsyncIterator[psycopg.AsyncConnection]:
    """One transaction as `role` with PostgREST's request settings."""
    async with pool.connection() as conn:
        async with conn.transaction():
            await conn.execute(
                "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true), "
                "set_config('request.headers', %s, true), set_config('request.method', %s, true), "
                "set_config('request.path', %s, true)",
                (role, json.dumps(claims or {"role": role}), json.dumps(headers or {}), method, path))
            yield conn


def pool_of(request: Request) -> AsyncConnectionPool:
    return request.app.state.pool


async def as_user(request: Request, claims: dict = Depends(verified_claims)) -> AsyncIterator[psycopg.AsyncConnection]:
    """Dependency: a connection in the caller's transaction (role from the token, RLS applies)."""
    async with transaction(pool_of(request), claims.get("role", "anon"), claims, request_headers(request),
                           request.method, request.url.path) as conn:
        yield conn


@asynccontextmanager
async def as_service(request: Request, claims: dict | None = None):
    """For webhooks and public endpoints whose caller was verified another way (signature, form
    key): service_role, which bypasses RLS, so the SQL called must scope itself by tenant."""
    async with transaction(pool_of(request), "service_role", claims or {"role": "service_role"},
                           request_headers(request), request.method, request.url.path) as conn:
        yield conn


async def service_call(request, sql: str, params) -> dict:
    """One statement as service_role in its own transaction, sent in a single round trip (pipeline):
    a webhook's hot path. Same settings as as_service."""
    pool = request.app.state.pool
    async with pool.connection() as conn:
        async with conn.pipeline() as pipeline:
            await conn.execute("begin")
            await conn.execute("select set_config('role', 'service_role', true), set_config('request.jwt.claims', %s, true)",
                               ('{"role":"service_role"}',))
            cur = await conn.execute(sql, params)
            await conn.execute("commit")
            await pipeline.sync()
            return await cur.fetchone()
