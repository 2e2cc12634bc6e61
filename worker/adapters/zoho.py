"""Zoho CRM (v2 REST API) for the CRM's optional outbound sync: customers become Contacts, cards
become Deals. Upserts are idempotent on Zoho's side (duplicate check fields) and on ours (the
external id is remembered in private.crm_external_refs; an unchanged record is not sent again)."""

from __future__ import annotations

from typing import Any

import httpx

from luna.channels.http import AdapterError, HttpAdapter, require


class ZohoAdapter(HttpAdapter):
    module = "zoho"
    default_base_url = "https://www.zohoapis.com/crm/v2"

    def classify(self, response: httpx.Response, body: Any) -> AdapterError | None:
        # Zoho answers 401 INVALID_TOKEN for an expired token: not retryable without a new one.
        if response.status_code == 401:
            return AdapterError(f"zoho refused the token: {body}", status=401, retryable=False, code="invalid_token", body=body)
        return super().classify(response, body)

    async def upsert(self, token: str, module: str, record: dict, duplicate_check_fields: list[str]) -> str:
        """POST /{module}/upsert with one record; returns Zoho's record id."""
        answer = require(await self.request("POST", f"/{module}/upsert",
                                            json={"data": [record], "duplicate_check_fields": duplicate_check_fields},
                                            headers={"Authorization": f"Zoho-oauthtoken {token}"}),
                         "data", module=self.module)
        try:
            row = answer["data"][0]
        except (IndexError, TypeError) as exc:
            raise AdapterError("zoho answer has no data row", code="wrong_schema", body=answer) from exc
        if row.get("status") != "success":
            raise AdapterError(f"zoho refused the record: {row.get('code')} {row.get('message')}",
                               retryable=False, code=str(row.get("code") or "zoho_error"), body=answer)
        try:
            return str(row["details"]["id"])
        except (KeyError, TypeError) as exc:
            raise AdapterError("zoho answer has no record id", code="wrong_schema", body=answer) from exc


def contact_record(customer: dict) -> dict:
    name = (customer.get("full_name") or "").strip()
    first, _, last = name.rpartition(" ")
    record = {"Last_Name": last or name or "-", "First_Name": first or None, "Email": customer.get("email"),
              "Phone": customer.get("phone"), "Lead_Source": customer.get("source"),
              "Description": f"LUNA customer {customer['id']}", "Tag": [{"name": t} for t in customer.get("tags") or []]}
    return {k: v for k, v in record.items() if v not in (None, [], "")}


DEAL_STAGES = {"won": "Closed Won", "lost": "Closed Lost"}


def deal_record(deal: dict, contact_id: str, customer: dict) -> dict:
    record = {"Deal_Name": f"{customer.get('full_name')} · {deal['id'][:8]}",
              "Stage": DEAL_STAGES.get(deal.get("stage_kind"), deal.get("stage")),
              "Amount": deal.get("value"), "Contact_Name": {"id": contact_id},
              "Description": f"LUNA card {deal['id']}"}
    return {k: v for k, v in record.items() if v is not None}


__all__ = ["ZohoAdapter", "contact_record", "deal_record"]
