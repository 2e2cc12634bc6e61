"""A fake WhatsApp Cloud API (Graph API) following the documented shapes.

    fake = FakeWhatsApp()
    with serve(fake.app) as base:         # channel settings base_url = base + "/v21.0"
        fake.plan(429, 429)               # the next two sends are throttled (error code 130429)
        fake.plan_error(400, 131047, "Re-engagement message")   # then a permanent error

Recipients as Meta's "Business-scoped user IDs" documentation describes: "to" is a phone number
(wa_id), "recipient" a business-scoped user id (BSUID, "US.13491208655302741918"); "to" wins when both
are sent. The answer's contacts[] echoes the input with wa_id (phone sends) or user_id (BSUID sends).
A BSUID in "to", or a phone in "recipient", is refused like a bad parameter.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import deque

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

PHONE = re.compile(r"^\+?[1-9][0-9]{6,14}$")
BSUID = re.compile(r"^[A-Z]{2}\.[A-Za-z0-9.]{1,140}$")

THROTTLE = {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
            "error_data": {"messaging_product": "whatsapp", "details": "Cloud API message throughput has been reached."}}


class FakeWhatsApp:
    def __init__(self, token: str = "test-token"):
        self.token = token
        self.sent: list[dict] = []
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

    def _build(self) -> FastAPI:
        app = FastAPI()

        def unauthorized():
            return JSONResponse({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException",
                                           "code": 190, "fbtrace_id": "x"}}, status_code=401)

        @app.post("/{version}/{phone_number_id}/messages")
        async def send(version: str, phone_number_id: str, request: Request):
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return unauthorized()
            body = await request.json()
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

            if request.headers.get("authorization") != f"Bearer {self.token}" or media_id not in self.media:
                return unauthorized()
            mime, data = self.media[media_id]
            return Response(data, media_type=mime)

        @app.get("/{version}/{media_id}")
        async def media_info(version: str, media_id: str, request: Request):
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return unauthorized()
            if media_id not in self.media:
                return JSONResponse({"error": {"message": "Unsupported get request.", "type": "GraphMethodException",
                                               "code": 100, "error_subcode": 33, "fbtrace_id": "x"}}, status_code=400)
            mime, data = self.media[media_id]
            return {"messaging_product": "whatsapp", "url": str(request.base_url) + f"media-bin/{media_id}",
                    "mime_type": mime, "sha256": "x", "file_size": len(data), "id": media_id}

        @app.get("/{version}/{waba_id}/message_templates")
        async def list_templates(version: str, waba_id: str, request: Request):
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return unauthorized()
            return {"data": self.templates, "paging": {"cursors": {"before": "a", "after": "b"}}}

        @app.post("/{version}/{waba_id}/message_templates")
        async def create_template(version: str, waba_id: str, request: Request):
            body = await request.json()
            self.created_templates.append(body)
            return {"id": str(uuid.uuid4().int)[:15], "status": "PENDING", "category": body.get("category")}

        return app
