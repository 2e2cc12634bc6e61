"""A Clearbit-style company lookup (GET /v2/companies/find?domain=, Bearer key). 404 = unknown
company (no data, not an error); 202 = queued, ask again later."""

from __future__ import annotations

from luna.channels.http import AdapterError, HttpAdapter


class ClearbitAdapter(HttpAdapter):
    module = "clearbit"
    default_base_url = "https://company.clearbit.com"

    def __init__(self, api_key: str, base_url: str | None = None, **kw):
        super().__init__(base_url, headers={"Authorization": f"Bearer {api_key}"}, **kw)

    def classify(self, response, body):
        if response.status_code == 202:
            return AdapterError("clearbit lookup queued", status=202, code="pending", retry_after=5.0)
        return super().classify(response, body)

    async def company(self, domain: str) -> dict | None:
        try:
            body = await self.request("GET", "/v2/companies/find", params={"domain": domain})
        except AdapterError as exc:
            if exc.status in (404, 422):
                return None
            raise
        if not isinstance(body, dict) or "name" not in body:
            raise AdapterError("clearbit company lacks name", code="wrong_schema", body=body)
        cat = body.get("category") or {}
        metrics = body.get("metrics") or {}
        geo = body.get("geo") or {}
        employees = metrics.get("employees")
        return {"source": "clearbit", "name": body.get("name"), "industry": cat.get("industry") or cat.get("sector"),
                "employees": employees if isinstance(employees, int) else None,
                "city": geo.get("city"), "country": geo.get("countryCode")}
