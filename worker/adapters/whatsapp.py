"""WhatsApp Cloud API (Graph API): send messages, manage message templates.

Send: POST /{version}/{phone-number-id}/messages with {"messaging_product": "whatsapp", "to": ..., "type": ...}
answers {"messaging_product": "whatsapp", "contacts": [...], "messages": [{"id": "wamid..."}]}.
A user whose phone number we do not know is addressed by business-scoped user id (BSUID) in
"recipient" instead of "to" (Meta's "Business-scoped user IDs" documentation: "to" wins when both are
sent, and Meta advises the phone when known; a send by BSUID answers contacts[].user_id, not wa_id;
error 131062 = this message kind cannot go to a BSUID, e.g. one-tap authentication templates).
Errors answer {"error": {"message", "type", "code", "error_subcode", "error_data": {"details"}, "fbtrace_id"}}.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from .base import AdapterError, HttpAdapter, _retry_after, require

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


def is_bsuid(value: Any) -> bool:
    """True for a WhatsApp business-scoped user id (same rule as private.wa_is_bsuid in SQL)."""
    return isinstance(value, str) and bool(_BSUID.match(value))


class GraphAdapter(HttpAdapter):
    """Shared Meta Graph API error handling (WhatsApp, Messenger, Instagram, Marketing, Conversions)."""

    module = "meta"
    default_base_url = "https://graph.facebook.com/v21.0"

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
        retryable = response.status_code in (429, 500, 502, 503, 504) or code in RETRYABLE_CODES
        return AdapterError(f"code={code}: {message}", status=response.status_code, retryable=retryable,
                            code=str(code), retry_after=_retry_after(response), body=body)


class WhatsAppAdapter(GraphAdapter):
    module = "whatsapp"

    def __init__(self, base_url: str | None = None, **kwargs):
        kwargs.setdefault("retries", 0)  # the outbound queue retries, with its backoff, visibly
        super().__init__(base_url, **kwargs)

    @staticmethod
    def address(request: dict) -> dict[str, str]:
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
    def build(request: dict) -> dict:
        """The Cloud API body for a provider-neutral request (functions/inbox.sql send_message)."""
        body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual",
                                **WhatsAppAdapter.address(request)}
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

    async def send(self, phone_number_id: str, token: str, request: dict) -> str:
        answer = await self.request("POST", f"/{phone_number_id}/messages", json=self.build(request),
                                    headers={"Authorization": f"Bearer {token}"})
        require(answer, "messages", module=self.module)
        try:
            return answer["messages"][0]["id"]
        except (KeyError, IndexError, TypeError) as exc:
            raise AdapterError("whatsapp answer has no message id", code="wrong_schema", body=answer) from exc

    async def list_templates(self, waba_id: str, token: str) -> list[dict]:
        """GET /{waba-id}/message_templates, following paging.next."""
        out: list[dict] = []
        url = f"/{waba_id}/message_templates?limit=100"
        while url:
            page = require(await self.request("GET", url, headers={"Authorization": f"Bearer {token}"}), "data",
                           module=self.module)
            out.extend(page["data"])
            url = (page.get("paging") or {}).get("next")
        return out

    async def create_template(self, waba_id: str, token: str, name: str, language: str, category: str,
                              components: list) -> dict:
        """POST /{waba-id}/message_templates: answers {id, status, category}."""
        return require(await self.request("POST", f"/{waba_id}/message_templates",
                                          json={"name": name, "language": language, "category": category,
                                                "components": components},
                                          headers={"Authorization": f"Bearer {token}"}), "id", module=self.module)

    async def media_info(self, media_id: str, token: str) -> dict:
        """GET /{media-id}: {"url", "mime_type", "sha256", "file_size", "id"} (the url lives 5 minutes and
        needs the same bearer token)."""
        return require(await self.request("GET", f"/{media_id}", headers={"Authorization": f"Bearer {token}"}),
                       "url", module=self.module)
