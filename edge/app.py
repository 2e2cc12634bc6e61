"""The FastAPI application. Routers are discovered from edge/routes/*.py (each exposes `router`)."""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import re
import uuid
from contextlib import asynccontextmanager
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI

from luna import __version__
from luna.settings import get_settings

from . import errors, redact
from .db import open_pool
from .realtime import Relay

log = logging.getLogger("luna.edge")
CORRELATION_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Characters no path, query or header value may hold: NUL (Postgres text cannot store it) and the other
# C0 controls and DEL. Query values may hold tab, LF and CR (form text); header values tab only (RFC 9110).
PATH_BAD = re.compile(r"[\x00-\x1f\x7f]")
QUERY_BAD = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
HEADER_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _routers():
    from . import routes

    for info in sorted(pkgutil.iter_modules(routes.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"edge.routes.{info.name}")
        if hasattr(module, "router"):
            yield module


def create_app(database_url: str | None = None) -> FastAPI:
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from luna.db import database_url as default_url

        url = database_url or default_url()
        app.state.database_url = url
        app.state.pool = open_pool(url)
        await app.state.pool.open(wait=True)
        app.state.relay = Relay(url, app.state.pool)
        await app.state.relay.start()
        try:
            yield
        finally:
            await app.state.relay.stop()
            await app.state.pool.close()

    app = FastAPI(title="LUNA edge", version=__version__, lifespan=lifespan,
                  description="Webhooks, uploads and realtime for LUNA. Business rules live in Postgres; "
                              "clients may equally use Supabase (PostgREST / supabase-js) directly.")
    errors.install(app)
    redact.install()
    # Paths that accept large bodies (streamed uploads) declare it in their module: BODY_LIMITS.
    body_limits: dict[str, int] = {}
    for module in _routers():
        app.include_router(module.router)
        for path, kind in getattr(module, "BODY_LIMITS", {}).items():
            body_limits[path] = settings.max_upload_bytes if kind == "upload" else int(kind)

    app.add_middleware(RequestGuard, body_limits=body_limits, default_limit=settings.max_body_bytes)
    _declare_control_characters(app)
    return app


# What RequestGuard refuses, said in the document: no string parameter may hold a control character.
PARAM_PATTERNS = {"path": r"^[^\u0000-\u001f\u007f]*$", "query": r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]*$",
                  "header": r"^[^\u0000-\u0008\u000a-\u001f\u007f]*$"}


def _declare_control_characters(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = generate()
            for item in doc.get("paths", {}).values():
                for op in item.values():
                    for param in op.get("parameters", []) if isinstance(op, dict) else []:
                        schema = param.get("schema") or {}
                        for alt in schema.get("anyOf", [schema]):
                            if alt.get("type") == "string" and "pattern" not in alt and "format" not in alt \
                                    and "enum" not in alt and param.get("in") in PARAM_PATTERNS:
                                alt["pattern"] = PARAM_PATTERNS[param["in"]]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


class _BodyTooLarge(Exception):
    pass


class RequestGuard:
    """Pure ASGI middleware: a correlation id on every request and response, control characters (NUL …)
    in the path, query string or a header refused with 400 invalid_input, and the body size limit
    (by Content-Length up front, or counted while a chunked body streams in)."""

    def __init__(self, app, body_limits: dict[str, int], default_limit: int):
        self.app, self.body_limits, self.default_limit = app, body_limits, default_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw_headers = scope.get("headers", [])
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        incoming = headers.get("x-correlation-id", "")
        cid = incoming if CORRELATION_RE.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["correlation_id"] = cid
        limit = self.body_limits.get(scope["path"], self.default_limit)
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-correlation-id", cid.encode())]
            await send(message)

        where = self._control_character(scope, raw_headers)
        if where:
            return await self._refuse(send_with_id, cid, 400, "invalid_input",
                                      f"the request's {where} contains a control character (such as NUL)",
                                      "remove NUL and other control characters; percent-encode only printable text")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await self._too_large(scope, send_with_id, cid, limit)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            if not started:
                await self._too_large(scope, send_with_id, cid, limit)

    @staticmethod
    def _control_character(scope, raw_headers) -> str | None:
        """Where a control character is (path, query, header <name>), or None: refused for every route
        before any handler, so no value holding one reaches the database or a log line."""
        if PATH_BAD.search(scope.get("path", "")):
            return "path"
        query = scope.get("query_string", b"")
        if query and QUERY_BAD.search(unquote_to_bytes(query) if b"%" in query else query):
            return "query string"
        for name, value in raw_headers:
            if HEADER_BAD.search(value):
                return f"header {name.decode('latin-1')[:64]}"
        return None

    @staticmethod
    async def _too_large(scope, send, cid, limit):
        await RequestGuard._refuse(send, cid, 413, "payload_too_large", f"the body exceeds {limit} bytes",
                                   "send a smaller body, or use the streamed upload endpoint")

    @staticmethod
    async def _refuse(send, cid, status: int, code: str, message: str, hint: str):
        body = json.dumps({"error": {"code": code, "message": message, "hint": hint,
                                     "correlation_id": cid}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def app_factory() -> FastAPI:
    """uvicorn entry point: `uvicorn edge.app:app_factory --factory`."""
    logging.basicConfig(level=get_settings().log_level, format="%(message)s")
    return create_app()  # installs the credential filter on the loggers uvicorn has configured by now
