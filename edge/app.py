"""The FastAPI application. Routers are discovered from edge/routes/*.py (each exposes `router`)."""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import re
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from luna import __version__
from luna.settings import get_settings

from . import errors
from .db import open_pool
from .realtime import Relay

log = logging.getLogger("luna.edge")
CORRELATION_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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
    # Paths that accept large bodies (streamed uploads) declare it in their module: BODY_LIMITS.
    body_limits: dict[str, int] = {}
    for module in _routers():
        app.include_router(module.router)
        for path, kind in getattr(module, "BODY_LIMITS", {}).items():
            body_limits[path] = settings.max_upload_bytes if kind == "upload" else int(kind)

    @app.middleware("http")
    async def correlation_and_limits(request, call_next):
        incoming = request.headers.get("x-correlation-id", "")
        request.state.correlation_id = incoming if CORRELATION_RE.match(incoming) else uuid.uuid4().hex
        limit = body_limits.get(request.url.path, settings.max_body_bytes)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return _too_large(request, limit)
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            # Chunked bodies: count while reading.
            receive = request.receive
            seen = 0

            async def limited_receive():
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge()
                return message

            request._receive = limited_receive
        try:
            response = await call_next(request)
        except _BodyTooLarge:
            return _too_large(request, limit)
        response.headers["x-correlation-id"] = request.state.correlation_id
        return response

    return app


class _BodyTooLarge(Exception):
    pass


def _too_large(request, limit: int) -> JSONResponse:
    return JSONResponse(errors.error_body(request, "payload_too_large", f"the body exceeds {limit} bytes",
                                          hint="send a smaller body, or use the streamed upload endpoint"),
                        status_code=413, headers={"x-correlation-id": request.state.correlation_id})


def app_factory() -> FastAPI:
    """uvicorn entry point: `uvicorn edge.app:app_factory --factory`."""
    logging.basicConfig(level=get_settings().log_level, format="%(message)s")
    return create_app()
