"""Apollo.io: organization enrichment (GET /api/v1/organizations/enrich?domain=, and in bulk
POST /api/v1/organizations/bulk_enrich with up to 10 domains) and people search
for scheduled pulls (POST /api/v1/mixed_people/search). Auth: X-Api-Key header."""

from __future__ import annotations

from luna.channels.http import AdapterError, HttpAdapter, require


BULK_LIMIT = 10


class ApolloAdapter(HttpAdapter):
    module = "apollo"
    default_base_url = "https://api.apollo.io"

    def __init__(self, api_key: str, base_url: str | None = None, **kw):
        super().__init__(base_url, headers={"X-Api-Key": api_key, "Cache-Control": "no-cache"}, **kw)

    async def enrich_organization(self, domain: str) -> dict | None:
        """The organization for a domain, reduced to what qualification uses; None when unknown."""
        try:
            body = await self.request("GET", "/api/v1/organizations/enrich", params={"domain": domain})
        except AdapterError as exc:
            if exc.status in (404, 422):
                return None
            raise
        org = require(body, "organization", module=self.module)["organization"]
        return self._reduce(org, body)

    async def enrich_organizations(self, domains: list[str]) -> dict[str, dict | None]:
        """Bulk enrichment (1-10 domains per call): domain -> reduced organization, None when unknown."""
        if not 1 <= len(domains) <= BULK_LIMIT:
            raise ValueError(f"apollo bulk enrich takes 1 to {BULK_LIMIT} domains")
        body = await self.request("POST", "/api/v1/organizations/bulk_enrich", json={"domains": domains})
        orgs = require(body, "organizations", module=self.module)["organizations"]
        if not isinstance(orgs, list):
            raise AdapterError("apollo organizations is not a list", code="wrong_schema", body=body)
        found = {}
        for org in orgs:
            if isinstance(org, dict) and org.get("primary_domain"):
                found[str(org["primary_domain"]).lower()] = self._reduce(org, body)
        return {d: found.get(d.lower()) for d in domains}

    def _reduce(self, org, body) -> dict | None:
        if not org:
            return None
        if not isinstance(org, dict):
            raise AdapterError("apollo organization is not an object", code="wrong_schema", body=body)
        employees = org.get("estimated_num_employees")
        return {"source": "apollo", "name": org.get("name"), "industry": org.get("industry"),
                "employees": employees if isinstance(employees, int) else None,
                "city": org.get("city"), "country": org.get("country"), "website": org.get("website_url"),
                "linkedin": org.get("linkedin_url"), "phone": (org.get("primary_phone") or {}).get("number")
                if isinstance(org.get("primary_phone"), dict) else None}

    async def search_people(self, query: dict, page: int = 1, per_page: int = 100) -> list[dict]:
        """Leads from a people search (scheduled pull): standard lead payloads."""
        body = await self.request("POST", "/api/v1/mixed_people/search",
                                  json={**query, "page": page, "per_page": per_page})
        people = require(body, "people", module=self.module)["people"]
        if not isinstance(people, list):
            raise AdapterError("apollo people is not a list", code="wrong_schema", body=body)
        leads = []
        for p in people:
            org = p.get("organization") or {}
            leads.append({"contact_name": p.get("name"), "email": p.get("email"),
                          "company_name": org.get("name"), "website": org.get("website_url"),
                          "city": p.get("city"), "country": p.get("country"), "external_id": p.get("id")})
        return leads
