"""Meta Graph API: a Lead Ads lead's field data (GET /{version}/{leadgen_id}?access_token=)."""

from __future__ import annotations

from .base import AdapterError, HttpAdapter, require

# Meta's standard question keys -> lead columns.
FIELD_MAP = {"full_name": "contact_name", "first_name": "first_name", "last_name": "last_name", "email": "email",
             "phone_number": "phone", "company_name": "company_name", "city": "city", "country": "country",
             "website": "website", "work_email": "email", "work_phone_number": "phone", "job_title": "job_title"}


class MetaGraphAdapter(HttpAdapter):
    module = "meta_graph"
    default_base_url = "https://graph.facebook.com"

    def __init__(self, access_token: str, base_url: str | None = None, version: str = "v21.0", **kw):
        super().__init__(base_url, **kw)
        self.access_token = access_token
        self.version = version

    async def lead(self, leadgen_id: str) -> dict:
        body = await self.request("GET", f"/{self.version}/{leadgen_id}",
                                  params={"access_token": self.access_token,
                                          "fields": "id,created_time,field_data,form_id,ad_id,campaign_id"})
        require(body, "id", "field_data", module=self.module)
        if not isinstance(body["field_data"], list):
            raise AdapterError("field_data is not a list", code="wrong_schema", body=body)
        return body

    @staticmethod
    def to_payload(lead: dict) -> dict:
        """A Graph lead -> the standard ingestion payload (unknown questions kept under `answers`)."""
        payload: dict = {"answers": {}}
        for item in lead.get("field_data") or []:
            name = item.get("name")
            values = item.get("values") or []
            value = ", ".join(str(v) for v in values if v is not None)
            column = FIELD_MAP.get(name)
            if column:
                payload[column] = value
            elif name:
                payload["answers"][name] = value
        if "contact_name" not in payload and (payload.get("first_name") or payload.get("last_name")):
            payload["contact_name"] = " ".join(p for p in (payload.get("first_name"), payload.get("last_name")) if p)
        payload["external_id"] = lead.get("id")
        if lead.get("created_time"):
            payload["created_time"] = lead["created_time"]
        payload["utm_source"] = "facebook"
        payload["utm_medium"] = "paid_social"
        if lead.get("campaign_id"):
            payload["utm_campaign"] = str(lead["campaign_id"])
        return payload
