"""Liveness and readiness: database reachable, migrations current."""

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from luna import migrate

router = APIRouter(tags=["health"])
_cache: dict = {"at": 0.0, "status": None}


@router.get("/health")
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
            checks["migration_error"] = st["error"]
    except Exception as exc:
        checks["error"] = str(exc)
    ok = checks["database"] and checks["migrations"] == "current"
    return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)
