"""A fake Zoho CRM v2: /{module}/upsert keyed by the duplicate check fields, like the real one."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse


def create_app(token: str = "zoho-token") -> FastAPI:
    app = FastAPI()
    app.state.records = {}    # module -> {id: record}
    app.state.calls = []

    @app.post("/crm/v2/{module}/upsert")
    async def upsert(module: str, request: Request, authorization: str = Header("")):
        body = await request.json()
        app.state.calls.append((module, body))
        if authorization != f"Zoho-oauthtoken {token}":
            return JSONResponse({"code": "INVALID_TOKEN", "message": "invalid oauth token", "status": "error"}, status_code=401)
        store = app.state.records.setdefault(module, {})
        out = []
        for record in body["data"]:
            keys = body.get("duplicate_check_fields") or []
            match = next((rid for rid, r in store.items()
                          if any(k in record and r.get(k) == record[k] for k in keys)), None)
            rid = match or str(uuid.uuid4().int)[:18]
            store[rid] = {**store.get(rid, {}), **record}
            out.append({"code": "SUCCESS", "status": "success", "action": "update" if match else "insert",
                        "details": {"id": rid}, "message": "record updated" if match else "record added"})
        return {"data": out}

    return app
