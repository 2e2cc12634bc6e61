"""Apify: items of a dataset (GET /v2/datasets/{id}/items?format=json, Bearer token)."""

from __future__ import annotations

from luna.channels.http import AdapterError, HttpAdapter

KEYS = {"company_name": ("companyName", "company_name", "title", "name"), "email": ("email", "emails"),
        "phone": ("phone", "phoneNumber", "phones"), "website": ("website", "url", "domain"),
        "city": ("city",), "country": ("country", "countryCode")}


class ApifyAdapter(HttpAdapter):
    module = "apify"
    default_base_url = "https://api.apify.com"

    def __init__(self, token: str, base_url: str | None = None, **kw):
        super().__init__(base_url, headers={"Authorization": f"Bearer {token}"}, **kw)

    async def dataset_items(self, dataset_id: str, offset: int = 0, limit: int = 1000) -> list[dict]:
        body = await self.request("GET", f"/v2/datasets/{dataset_id}/items",
                                  params={"format": "json", "clean": "true", "offset": offset, "limit": limit})
        if not isinstance(body, list):
            raise AdapterError("apify dataset items is not a list", code="wrong_schema", body=body)
        return [self.to_payload(item) for item in body if isinstance(item, dict)]

    @staticmethod
    def to_payload(item: dict) -> dict:
        payload = {}
        for column, keys in KEYS.items():
            for key in keys:
                value = item.get(key)
                if isinstance(value, list):
                    value = value[0] if value else None
                if value:
                    payload[column] = str(value)
                    break
        return payload
