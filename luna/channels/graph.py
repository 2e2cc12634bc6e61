"""Meta's Graph API, one adapter for every caller: WhatsApp Cloud API (send, message templates, media),
Messenger / Instagram Send API, Marketing API insights, the Conversions API and Lead Ads lead fetches.

The Graph version is GRAPH_VERSION, here only; a base URL (settings.base_url of a channel,
graph_base_url of a lead source, a fake server in tests) is the host without it.

WhatsApp recipients: a user whose phone number we do not know is addressed by business-scoped user id
(BSUID) in "recipient" instead of "to" (Meta's "Business-scoped user IDs" documentation: "to" wins when
both are sent, and Meta advises the phone when known; a send by BSUID answers contacts[].user_id, not
wa_id; error 131062 = this message kind cannot go to a BSUID, e.g. one-tap authentication templates).
Errors answer {"error": {"message", "type", "code", "error_subcode", "error_data": {"details"}, "fbtrace_id"}}
and become AdapterError("code=<code>: <message>", code="<code>") with `body` kept for callers that
need the subcode (leads.meta_fetch).
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from .http import AdapterError, HttpAdapter, require

GRAPH_VERSION = "v21.0"

# Throttling and transient codes: retried with backoff. Everything else is the request's fault.
RETRYABLE_CODES = {
    1,        # API unknown (temporary)
    2,        # API service (temporary downtime)
    4,        # application request limit reached
    17,       # user request limit reached
    80007,    # WhatsApp Business Account rate limit
    130429,   # Cloud API throughput reached
    131000,   # something went wrong (transient)
    131016,   # service unavailable
    131056,   # pair rate limit (too many messages to the same recipient)
    133004,   # server temporarily unavailable
}
# Outside the customer-service window: only a template may be sent (never retried).
REENGAGEMENT_CODE = 131047
# This message cannot be sent to a business-scoped user id (never retried).
BSUID_UNSUPPORTED_CODE = 131062

# A BSUID: ISO 3166 alpha-2 country code, a period, alphanumerics ("US.13491208655302741918"; parent
# BSUIDs "US.ENT.11815799212886844830"). A wa_id / phone is digits (optionally +): never matches.
_BSUID = re.compile(r"^[A-Z]{2}\.[A-Za-z0-9.]{1,140}$")

INSIGHT_FIELDS = ("campaign_id,campaign_name,adset_id,adset_name,ad_id,ad_name,impressions,clicks,spend,actions,"
                  "date_start,date_stop")
LEAD_FIELDS = "id,created_time,field_data,form_id,ad_id,campaign_id"
# Meta's standard Lead Ads question keys -> lead columns.
LEAD_FIELD_MAP = {"full_name": "contact_name", "first_name": "first_name", "last_name": "last_name", "email": "email",
                  "phone_number": "phone", "company_name": "company_name", "city": "city", "country": "country",
                  "website": "website", "work_email": "email", "work_phone_number": "phone", "job_title": "job_title"}


def is_bsuid(value: Any) -> bool:
    """True for a WhatsApp business-scoped user id (same rule as private.wa_is_bsuid in SQL)."""
    return isinstance(value, str) and bool(_BSUID.match(value))


class GraphAdapter(HttpAdapter):
    """The Graph API (every Graph caller's error handling: classify)."""

    module = "meta"
    default_base_url = "https://graph.facebook.com"
    default_retries = 0  # the outbound queue retries, visibly

    def classify(self, response: httpx.Response, body: Any) -> AdapterError | None:
        if response.is_success:
            return None
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return super().classify(response, body)
        code = error.get("code")
        details = (error.get("error_data") or {}).get("details") if isinstance(error.get("error_data"), dict) else None
        message = error.get("message") or error.get("error_user_msg") or "error"
        if details and details not in message:
            message = f"{message} ({details})"
        return self.coded_error(response, code, message, body, RETRYABLE_CODES)

    async def call(self, method: str, path: str, token: str, **kwargs) -> Any:
        """One Graph call: `path` is relative to the version ("/{object-id}/messages"); a full URL (a
        paging.next link) is followed as given."""
        url = path if path.startswith("http") else f"/{GRAPH_VERSION}/{path.lstrip('/')}"
        return await self.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kwargs)

    async def pages(self, path: str, token: str, params: dict | None = None) -> list[dict]:
        """Every row of a paged edge ({data, paging.next}), following paging.next."""
        rows: list[dict] = []
        url, query = path, params
        while url:
            page = require(await self.call("GET", url, token, params=query), "data", module=self.module)
            rows.extend(page["data"])
            url, query = (page.get("paging") or {}).get("next"), None
        return rows

    # ------------------------------------------------------------------------------------ WhatsApp
    @staticmethod
    def wa_address(request: dict) -> dict[str, str]:
        """{"to": phone} when the phone (wa_id) is known, else {"recipient": BSUID}. The request's "to" is
        the contact's handle: its wa_id, or its BSUID for a user who never shared the phone."""
        to, recipient = request.get("to"), request.get("recipient")
        if is_bsuid(to):
            to, recipient = None, recipient or to
        if to:
            return {"to": str(to)}
        if recipient:
            return {"recipient": str(recipient)}
        raise AdapterError("code=no_recipient: the message has neither a phone number nor a business-scoped user id",
                           retryable=False, code="no_recipient")

    @staticmethod
    def wa_body(request: dict) -> dict:
        """The Cloud API body for a provider-neutral request (public.send_message)."""
        body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual",
                                **GraphAdapter.wa_address(request)}
        kind = request.get("type", "text")
        if kind == "template":
            tpl = request["template"]
            params = [{"type": "text", "text": str(v)} for v in tpl.get("variables") or []]
            body["type"] = "template"
            body["template"] = {"name": tpl["name"], "language": {"code": tpl.get("language", "tr")}}
            if params:
                body["template"]["components"] = [{"type": "body", "parameters": params}]
        elif kind == "media" and request.get("media"):
            media = dict(request["media"])
            media_kind = media.pop("kind", "image")
            # what send_message checked against the channel limits, not part of the Cloud API's media object
            media.pop("mime_type", None)
            media.pop("size", None)
            if media_kind != "document":
                media.pop("filename", None)
            if request.get("body") and media_kind in ("image", "video", "document"):
                media.setdefault("caption", request["body"])
            body["type"] = media_kind
            body[media_kind] = media
        elif kind == "interactive" and request.get("interactive"):
            body["type"] = "interactive"
            body["interactive"] = request["interactive"]
        else:
            body["type"] = "text"
            body["text"] = {"preview_url": False, "body": request.get("body") or ""}
        return body

    async def wa_send(self, phone_number_id: str, token: str, request: dict) -> str:
        """POST /{phone-number-id}/messages: answers {"messaging_product", "contacts", "messages": [{"id"}]}."""
        answer = await self.call("POST", f"/{phone_number_id}/messages", token, json=self.wa_body(request))
        require(answer, "messages", module=self.module)
        try:
            return answer["messages"][0]["id"]
        except (KeyError, IndexError, TypeError) as exc:
            raise AdapterError("whatsapp answer has no message id", code="wrong_schema", body=answer) from exc

    async def list_templates(self, waba_id: str, token: str) -> list[dict]:
        """GET /{waba-id}/message_templates, every page."""
        return await self.pages(f"/{waba_id}/message_templates", token, {"limit": 100})

    async def create_template(self, waba_id: str, token: str, name: str, language: str, category: str,
                              components: list) -> dict:
        """POST /{waba-id}/message_templates: answers {id, status, category}."""
        return require(await self.call("POST", f"/{waba_id}/message_templates", token,
                                       json={"name": name, "language": language, "category": category,
                                             "components": components}), "id", module=self.module)

    async def media_info(self, media_id: str, token: str) -> dict:
        """GET /{media-id}: {"url", "mime_type", "sha256", "file_size", "id"} (the url lives 5 minutes and
        needs the same bearer token)."""
        return require(await self.call("GET", f"/{media_id}", token), "url", module=self.module)

    # ------------------------------------------------------------------------------ Messenger, Instagram
    async def page_send(self, page_id: str, token: str, request: dict) -> str:
        """POST /{page-id}/messages (Messenger and Instagram): answers {recipient_id, message_id}."""
        message: dict = {"text": request.get("body") or ""}
        if request.get("media"):
            media = request["media"]
            message = {"attachment": {"type": media.get("kind", "image"), "payload": {"url": media.get("link")}}}
        answer = await self.call("POST", f"/{page_id}/messages", token,
                                 json={"recipient": {"id": request["to"]}, "messaging_type": "RESPONSE",
                                       "message": message})
        return require(answer, "message_id", module=self.module)["message_id"]

    # ------------------------------------------------------------------------------ Marketing, Conversions
    async def insights(self, ad_account: str, token: str, since: str, until: str, level: str = "ad") -> list[dict]:
        """GET /act_<id>/insights, one row per object per day, every page."""
        return await self.pages(f"/{ad_account}/insights", token, {
            "level": level, "time_increment": 1, "fields": INSIGHT_FIELDS, "limit": 500,
            "time_range": f'{{"since":"{since}","until":"{until}"}}'})

    async def send_events(self, pixel_id: str, token: str, events: list[dict]) -> int:
        """POST /{pixel-id}/events (Conversions API). Each event carries event_id, so Meta drops a
        retried duplicate of an event it already counted."""
        for e in events:
            if not e.get("event_id"):
                raise AdapterError("a conversion event needs an event_id", retryable=False, code="missing_event_id")
        answer = await self.call("POST", f"/{pixel_id}/events", token, json={"data": events})
        return int(require(answer, "events_received", module=self.module)["events_received"])

    # ------------------------------------------------------------------------------------------ Lead Ads
    async def lead(self, leadgen_id: str, token: str) -> dict:
        """GET /{leadgen-id}: {id, created_time, field_data: [{name, values}], form_id, ad_id, campaign_id}."""
        body = require(await self.call("GET", f"/{leadgen_id}", token, params={"fields": LEAD_FIELDS}),
                       "id", "field_data", module=self.module)
        if not isinstance(body["field_data"], list):
            raise AdapterError("field_data is not a list", code="wrong_schema", body=body)
        return body

    @staticmethod
    def lead_payload(lead: dict) -> dict:
        """A Graph lead -> the standard ingestion payload (unknown questions kept under `answers`)."""
        payload: dict = {"answers": {}}
        for item in lead.get("field_data") or []:
            name = item.get("name")
            values = item.get("values") or []
            value = ", ".join(str(v) for v in values if v is not None)
            column = LEAD_FIELD_MAP.get(name)
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
