"""Fake Apollo.io: GET /api/v1/organizations/enrich?domain= (X-Api-Key) -> {"organization": {...}};
POST /api/v1/organizations/bulk_enrich {"domains": [...]} -> {"organizations": [...], counts};
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

    @app.post("/api/v1/organizations/bulk_enrich")
    async def bulk_enrich(request: Request):
        domains = (await request.json()).get("domains") or []
        modes.calls.append({"path": "bulk_enrich", "domains": domains, "key": request.headers.get("x-api-key")})
        if request.headers.get("x-api-key") != "apollo-key":
            return JSONResponse({"error": "Invalid access credentials."}, status_code=401)
        if not 1 <= len(domains) <= 10:
            return JSONResponse({"error": "domains must hold 1 to 10 entries"}, status_code=422)
        if (failed := await modes.failure()) is not None:
            return failed
        found = [{"id": f"org-{i}", "primary_domain": d, **orgs[d]} for i, d in enumerate(domains) if d in orgs]
        return {"status": "success", "error_code": None, "total_requested_domains": len(domains),
                "unique_domains": len(set(domains)), "unique_enriched_records": len(found),
                "missing_records": len(domains) - len(found), "organizations": found}

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
