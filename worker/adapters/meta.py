"""Meta Graph API beyond WhatsApp: Messenger / Instagram Send API, Marketing API insights and the
Conversions API. Error handling is shared with WhatsApp (GraphAdapter)."""

from __future__ import annotations

from .base import AdapterError, require
from .whatsapp import GraphAdapter

INSIGHT_FIELDS = ("campaign_id,campaign_name,adset_id,adset_name,ad_id,ad_name,impressions,clicks,spend,actions,"
                  "date_start,date_stop")


class MetaAdapter(GraphAdapter):
    module = "meta"

    def __init__(self, base_url: str | None = None, **kwargs):
        kwargs.setdefault("retries", 0)
        super().__init__(base_url, **kwargs)

    async def send_message(self, page_id: str, token: str, request: dict) -> str:
        """POST /{page-id}/messages (Messenger and Instagram): answers {recipient_id, message_id}."""
        message: dict = {"text": request.get("body") or ""}
        if request.get("media"):
            media = request["media"]
            message = {"attachment": {"type": media.get("kind", "image"), "payload": {"url": media.get("link")}}}
        answer = await self.request("POST", f"/{page_id}/messages",
                                    json={"recipient": {"id": request["to"]}, "messaging_type": "RESPONSE",
                                          "message": message},
                                    headers={"Authorization": f"Bearer {token}"})
        return require(answer, "message_id", module=self.module)["message_id"]

    async def insights(self, ad_account: str, token: str, since: str, until: str, level: str = "ad") -> list[dict]:
        """GET /act_<id>/insights, one row per object per day, following paging.next."""
        rows: list[dict] = []
        params = {"level": level, "time_increment": 1, "fields": INSIGHT_FIELDS, "limit": 500,
                  "time_range": f'{{"since":"{since}","until":"{until}"}}'}
        url, query = f"/{ad_account}/insights", params
        while url:
            page = require(await self.request("GET", url, params=query, headers={"Authorization": f"Bearer {token}"}),
                           "data", module=self.module)
            rows.extend(page["data"])
            url, query = (page.get("paging") or {}).get("next"), None
        return rows

    async def send_events(self, pixel_id: str, token: str, events: list[dict]) -> int:
        """POST /{pixel-id}/events (Conversions API). Each event carries event_id, so Meta drops a
        retried duplicate of an event it already counted."""
        for e in events:
            if not e.get("event_id"):
                raise AdapterError("a conversion event needs an event_id", retryable=False, code="missing_event_id")
        answer = await self.request("POST", f"/{pixel_id}/events", json={"data": events},
                                    headers={"Authorization": f"Bearer {token}"})
        return int(require(answer, "events_received", module=self.module)["events_received"])
