"""Fake Clearbit-style company lookup: GET /v2/companies/find?domain= (Bearer) -> company; 404 unknown."""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from .failures import Modes


def make_app():
    app, modes = FastAPI(), Modes()

    @app.get("/v2/companies/find")
    async def find(domain: str):
        modes.calls.append({"domain": domain})
        if (failed := await modes.failure()) is not None:
            return failed
        if domain != "gulusdis.com.tr":
            return JSONResponse({"error": {"type": "unknown_record", "message": "Unknown domain"}}, status_code=404)
        return {"id": "c1", "name": "Gülüş Diş", "domain": domain, "category": {"sector": "Health Care", "industry": "Dental"},
                "metrics": {"employees": 45}, "geo": {"city": "İstanbul", "countryCode": "TR"}}

    return app, modes
