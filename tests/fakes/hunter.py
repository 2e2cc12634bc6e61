"""Fake Hunter: GET /v2/email-verifier?email=&api_key= -> {"data": {"status", "result", "score", ...}, "meta": {...}}."""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from .failures import Modes


def make_app(undeliverable: set[str] | None = None):
    app, modes = FastAPI(), Modes()
    bad = undeliverable or set()

    @app.get("/v2/email-verifier")
    async def verify(email: str, api_key: str = ""):
        modes.calls.append({"email": email})
        if api_key != "hunter-key":
            return JSONResponse({"errors": [{"id": "authentication_failed", "code": 401}]}, status_code=401)
        if (failed := await modes.failure()) is not None:
            return failed
        ok = email not in bad
        return {"data": {"status": "valid" if ok else "invalid", "result": "deliverable" if ok else "undeliverable",
                         "score": 94 if ok else 12, "email": email, "regexp": True, "gibberish": False,
                         "disposable": False, "webmail": False, "mx_records": ok, "smtp_server": ok,
                         "smtp_check": ok, "accept_all": False, "block": False, "sources": []},
                "meta": {"params": {"email": email}}}

    return app, modes
