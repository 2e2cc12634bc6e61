"""Fake Twilio Messages API, Netgsm REST v2 and Telegram Bot API (documented request/answer shapes)."""

from __future__ import annotations

import uuid
from collections import deque

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class FakeSms:
    def __init__(self):
        self.twilio: list[dict] = []
        self.netgsm: list[dict] = []
        self.telegram: list[dict] = []
        self.plan: deque = deque()   # (status, body) answered by the next call of any provider
        self.app = self._build()

    def _planned(self):
        if self.plan:
            status, body = self.plan.popleft()
            return JSONResponse(body, status_code=status)
        return None

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/2010-04-01/Accounts/{sid}/Messages.json")
        async def twilio_send(sid: str, request: Request):
            form = dict(await request.form())
            if (planned := self._planned()) is not None:
                return planned
            msg_sid = "SM" + uuid.uuid4().hex
            self.twilio.append({"account": sid, "form": form, "auth": request.headers.get("authorization"), "sid": msg_sid})
            return JSONResponse({"sid": msg_sid, "status": "queued", "to": form.get("To"), "from": form.get("From"),
                                 "body": form.get("Body"), "error_code": None, "error_message": None}, status_code=201)

        @app.post("/sms/rest/v2/send")
        async def netgsm_send(request: Request):
            body = await request.json()
            if (planned := self._planned()) is not None:
                return planned
            job = str(uuid.uuid4().int)[:10]
            self.netgsm.append({"body": body, "jobid": job})
            return {"code": "00", "jobid": job, "description": "queued"}

        @app.post("/bot{token}/sendMessage")
        async def telegram_send(token: str, request: Request):
            body = await request.json()
            if (planned := self._planned()) is not None:
                return planned
            mid = len(self.telegram) + 100
            self.telegram.append({"token": token, "body": body, "message_id": mid})
            return {"ok": True, "result": {"message_id": mid, "chat": {"id": int(body["chat_id"])}, "text": body["text"]}}

        return app
