"""Liveness and readiness: database reachable, migrations current."""

import asyncio
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from luna import migrate

router = APIRouter(tags=["health"])
log = logging.getLogger("luna.edge")
_cache: dict = {"at": 0.0, "status": None}


@router.get("/health", responses={503: {"description": "the database is unreachable or migrations are pending"}})
async def health(request: Request):
    checks = {"database": False, "migrations": "unknown"}
    try:
        async with request.app.state.pool.connection(timeout=3) as conn:
            await conn.execute("select 1")
        checks["database"] = True
        if time.monotonic() - _cache["at"] > 10:
            _cache["status"] = await asyncio.to_thread(migrate.status, request.app.state.database_url)
            _cache["at"] = time.monotonic()
        st = _cache["status"]
        checks["migrations"] = "current" if st["current"] else ("error" if st["error"] else "pending")
        if st["error"]:
            log.error("health: migration error: %s", st["error"])
            checks["migration_error"] = "see the server log"
    except Exception as exc:
        # The database's own message (host names, users) goes to the log, not to an unauthenticated caller.
        log.error("health check failed: %s", exc)
        checks["error"] = type(exc).__name__
    ok = checks["database"] and checks["migrations"] == "current"
    return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)
