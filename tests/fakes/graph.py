"""One fake Meta Graph API (as luna/channels/graph.py is one adapter), following the documented shapes:
WhatsApp Cloud API sends, message templates and media; the Messenger / Instagram Send API; Marketing
API insights (with paging); the Conversions API (deduplicating by event_id, as Meta does); Lead Ads
lead fetches. Every call needs one of `tokens` (a bearer token, or ?access_token=).

    fake = FakeGraph()
    with serve(fake.app) as base:         # channel settings base_url = base (the version is the adapter's)
        fake.plan(429, 429)               # the next two WhatsApp sends are throttled (error code 130429)
        fake.plan_error(400, 131047, "Re-engagement message")   # then a permanent error

WhatsApp recipients as Meta's "Business-scoped user IDs" documentation describes: "to" is a phone number
(wa_id), "recipient" a business-scoped user id (BSUID, "US.13491208655302741918"); "to" wins when both
are sent. The answer's contacts[] echoes the input with wa_id (phone sends) or user_id (BSUID sends).
A BSUID in "to", or a phone in "recipient", is refused like a bad parameter. A body without
messaging_product is a page's Send API message (sent to `page_sent`).

Lead Ads: GET /{version}/{leadgen_id} answers {id, created_time, field_data: [{name, values}], ...} for
the ids in `leads` (LEADS by default), Graph error 100/33 for any other; `modes` (tests/fakes/failures.py)
makes the next fetches fail.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import deque

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .failures import Modes

PHONE = re.compile(r"^\+?[1-9][0-9]{6,14}$")
BSUID = re.compile(r"^[A-Z]{2}\.[A-Za-z0-9.]{1,140}$")

THROTTLE = {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
            "error_data": {"messaging_product": "whatsapp", "details": "Cloud API message throughput has been reached."}}


LEADS = {
    "4444000000001": [("full_name", ["Dr. Ayşe Kılıç"]), ("email", ["AYSE@gulusdis.com.tr"]),
                      ("phone_number", ["+905321112233"]), ("company_name", ["Gülüş Diş Polikliniği"]),
                      ("city", ["İstanbul"]), ("hangi_tedavi", ["implant"])],
}


class FakeGraph:
    def __init__(self, token: str = "test-token", *, tokens: tuple[str, ...] = (), leads: dict | None = None):
        self.tokens = {token, *tokens}
        self.sent: list[dict] = []        # WhatsApp sends
        self.page_sent: list[dict] = []   # Messenger / Instagram sends
        self.insight_rows: list[dict] = []
        self.events_posted: list[dict] = []
        self.events_unique: dict[tuple, dict] = {}
        self.leads = LEADS if leads is None else leads
        self.modes = Modes()
        self.templates: list[dict] = []
        self.created_templates: list[dict] = []
        self.media: dict[str, tuple[str, bytes]] = {}   # media id -> (mime type, bytes)
        self._plan: deque = deque()
        self.next_ids: deque = deque()   # message ids to answer with (else random wamids)
        self._lock = threading.Lock()
        self.app = self._build()

    def plan(self, *statuses: int, retry_after: str | None = None) -> None:
        """The next sends answer these HTTP statuses (429 = throttled, 5xx = server error)."""
        for status in statuses:
            body = {"error": THROTTLE | {"fbtrace_id": uuid.uuid4().hex[:12]}} if status == 429 else \
                {"error": {"message": "An unknown error occurred", "type": "OAuthException", "code": 1,
                           "fbtrace_id": uuid.uuid4().hex[:12]}}
            headers = {"Retry-After": retry_after} if retry_after else {}
            self._plan.append((status, body, headers))

    def plan_error(self, status: int, code: int, message: str, details: str | None = None, subcode: int | None = None):
        error = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": uuid.uuid4().hex[:12]}
        if details:
            error["error_data"] = {"messaging_product": "whatsapp", "details": details}
        if subcode:
            error["error_subcode"] = subcode
        self._plan.append((status, {"error": error}, {}))

    def _authorized(self, request: Request) -> bool:
        bearer = request.headers.get("authorization", "")
        given = bearer[7:] if bearer.startswith("Bearer ") else request.query_params.get("access_token")
        return given in self.tokens

    def _build(self) -> FastAPI:
        app = FastAPI()

        def unauthorized():
            return JSONResponse({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException",
                                           "code": 190, "fbtrace_id": "x"}}, status_code=401)

        @app.post("/{version}/{phone_number_id}/messages")
        async def send(version: str, phone_number_id: str, request: Request):
            if not self._authorized(request):
                return unauthorized()
            body = await request.json()
            if "messaging_product" not in body and isinstance(body.get("recipient"), dict):
                mid = "m_" + uuid.uuid4().hex   # the Send API of a page (Messenger, Instagram)
                self.page_sent.append({"page_id": phone_number_id, "body": body, "mid": mid})
                return {"recipient_id": body["recipient"]["id"], "message_id": mid}
            to, recipient = body.get("to"), body.get("recipient")
            valid_to = to is None or (isinstance(to, str) and PHONE.match(to))
            valid_recipient = recipient is None or (isinstance(recipient, str) and BSUID.match(recipient))
            if body.get("messaging_product") != "whatsapp" or not (to or recipient) or not body.get("type") \
                    or not valid_to or not valid_recipient:
                return JSONResponse({"error": {"message": "(#100) Invalid parameter", "type": "OAuthException",
                                               "code": 100, "fbtrace_id": "x"}}, status_code=400)
            with self._lock:
                planned = self._plan.popleft() if self._plan else None
            if planned:
                status, answer, headers = planned
                return JSONResponse(answer, status_code=status, headers=headers)
            with self._lock:
                wamid = self.next_ids.popleft() if self.next_ids else "wamid." + uuid.uuid4().hex
                self.sent.append({"phone_number_id": phone_number_id, "body": body, "id": wamid})
            contact = {"input": to, "wa_id": to.lstrip("+")} if to else {"input": recipient, "user_id": recipient}
            return {"messaging_product": "whatsapp", "contacts": [contact], "messages": [{"id": wamid}]}

        @app.get("/media-bin/{media_id}")
        async def media_bytes(media_id: str, request: Request):
            from fastapi.responses import Response

            if not self._authorized(request) or media_id not in self.media:
                return unauthorized()
            mime, data = self.media[media_id]
            return Response(data, media_type=mime)

        @app.get("/{version}/{object_id}")
        async def get_object(version: str, object_id: str, request: Request):
            if not self._authorized(request):
                return unauthorized()
            if object_id in self.media:
                return media_info(object_id, request)
            self.modes.calls.append({"leadgen_id": object_id})
            if (failed := await self.modes.failure()) is not None:
                return failed
            if object_id not in self.leads:
                # What the Graph API answers for an object deleted (or never visible): a lead deleted before
                # it was fetched, a media id gone.
                return JSONResponse({"error": {
                    "message": f"Unsupported get request. Object with ID '{object_id}' does not exist, cannot be "
                               "loaded due to missing permissions, or does not support this operation. Please read "
                               "the Graph API documentation at https://developers.facebook.com/docs/graph-api",
                    "type": "GraphMethodException", "code": 100, "error_subcode": 33,
                    "fbtrace_id": "AbCdEfGhIjKlMnOp"}}, status_code=400)
            return {"id": object_id, "created_time": "2026-11-24T10:00:00+0000", "form_id": "9000", "ad_id": "7000",
                    "campaign_id": "6000", "field_data": [{"name": n, "values": v} for n, v in self.leads[object_id]]}

        def media_info(media_id: str, request: Request):
            if media_id not in self.media:
                return JSONResponse({"error": {"message": "Unsupported get request.", "type": "GraphMethodException",
                                               "code": 100, "error_subcode": 33, "fbtrace_id": "x"}}, status_code=400)
            mime, data = self.media[media_id]
            return {"messaging_product": "whatsapp", "url": str(request.base_url) + f"media-bin/{media_id}",
                    "mime_type": mime, "sha256": "x", "file_size": len(data), "id": media_id}

        @app.get("/{version}/{waba_id}/message_templates")
        async def list_templates(version: str, waba_id: str, request: Request):
            if not self._authorized(request):
                return unauthorized()
            return {"data": self.templates, "paging": {"cursors": {"before": "a", "after": "b"}}}

        @app.post("/{version}/{waba_id}/message_templates")
        async def create_template(version: str, waba_id: str, request: Request):
            body = await request.json()
            self.created_templates.append(body)
            return {"id": str(uuid.uuid4().int)[:15], "status": "PENDING", "category": body.get("category")}

        @app.get("/{version}/{account}/insights")
        async def insights(version: str, account: str, request: Request, after: int = 0):
            if not self._authorized(request):
                return unauthorized()
            page = self.insight_rows[after:after + 2]
            answer = {"data": page, "paging": {"cursors": {"before": "b", "after": "a"}}}
            if after + 2 < len(self.insight_rows):
                answer["paging"]["next"] = str(request.url.replace_query_params(after=after + 2))
            return answer

        @app.post("/{version}/{pixel_id}/events")
        async def events(version: str, pixel_id: str, request: Request):
            if not self._authorized(request):
                return unauthorized()
            body = await request.json()
            for e in body["data"]:
                self.events_posted.append(e)
                self.events_unique.setdefault((pixel_id, e["event_name"], e["event_id"]), e)
            return {"events_received": len(body["data"]), "messages": [], "fbtrace_id": "AbC"}

        return app
