"""Fake Apollo.io: GET /api/v1/organizations/enrich?domain= (X-Api-Key) -> {"organization": {...}};
POST /api/v1/mixed_people/search -> {"people": [...], "pagination": {...}}."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .failures import Modes

ORGS = {
    "gulusdis.com.tr": {"name": "Gülüş Diş", "industry": "hospital & health care", "estimated_num_employees": 320,
                        "city": "Istanbul", "country": "Turkey", "website_url": "http://www.gulusdis.com.tr"},
}


def make_app(orgs: dict | None = None):
    app, modes = FastAPI(), Modes()
    orgs = ORGS if orgs is None else orgs

    @app.get("/api/v1/organizations/enrich")
    async def enrich(request: Request, domain: str):
        modes.calls.append({"path": "enrich", "domain": domain, "key": request.headers.get("x-api-key")})
        if request.headers.get("x-api-key") != "apollo-key":
            return JSONResponse({"error": "Invalid access credentials."}, status_code=401)
        if (failed := await modes.failure()) is not None:
            return failed
        org = orgs.get(domain)
        if org is None:
            return {"organization": {}}
        return {"organization": {"id": "5e66b6381e05b4008c8331b8", "primary_domain": domain, **org}}

    @app.post("/api/v1/mixed_people/search")
    async def people(request: Request):
        body = await request.json()
        modes.calls.append({"path": "people", "body": body})
        if (failed := await modes.failure()) is not None:
            return failed
        return {"people": [
            {"id": "p1", "name": "Ayşe Kılıç", "email": "ayse@gulusdis.com.tr", "city": "Istanbul", "country": "Turkey",
             "organization": {"name": "Gülüş Diş", "website_url": "http://www.gulusdis.com.tr"}},
            {"id": "p2", "name": "Kerem Ak", "email": "kerem@akyapi.com.tr", "city": "Ankara", "country": "Turkey",
             "organization": {"name": "Ak Yapı", "website_url": "https://akyapi.com.tr"}}],
            "pagination": {"page": body.get("page", 1), "per_page": body.get("per_page", 100), "total_entries": 2}}

    return app, modes
