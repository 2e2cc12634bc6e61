"""A fake Meta Graph API: Messenger / Instagram Send API, Marketing API insights (with paging) and the
Conversions API (deduplicating by event_id, as Meta does)."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request


class FakeMeta:
    def __init__(self, token: str = "meta-token"):
        self.token = token
        self.sent: list[dict] = []
        self.insight_rows: list[dict] = []
        self.events_posted: list[dict] = []
        self.events_unique: dict[tuple, dict] = {}
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        def denied():
            from fastapi.responses import JSONResponse

            return JSONResponse({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException",
                                           "code": 190, "fbtrace_id": "x"}}, status_code=401)

        @app.post("/{version}/{object_id}/messages")
        async def send(version: str, object_id: str, request: Request):
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return denied()
            body = await request.json()
            mid = "m_" + uuid.uuid4().hex
            self.sent.append({"page_id": object_id, "body": body, "mid": mid})
            return {"recipient_id": body["recipient"]["id"], "message_id": mid}

        @app.get("/{version}/{account}/insights")
        async def insights(version: str, account: str, request: Request, after: int = 0):
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return denied()
            page = self.insight_rows[after:after + 2]
            answer = {"data": page, "paging": {"cursors": {"before": "b", "after": "a"}}}
            if after + 2 < len(self.insight_rows):
                answer["paging"]["next"] = str(request.url.replace_query_params(after=after + 2))
            return answer

        @app.post("/{version}/{pixel_id}/events")
        async def events(version: str, pixel_id: str, request: Request):
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return denied()
            body = await request.json()
            for e in body["data"]:
                self.events_posted.append(e)
                self.events_unique.setdefault((pixel_id, e["event_name"], e["event_id"]), e)
            return {"events_received": len(body["data"]), "messages": [], "fbtrace_id": "AbC"}

        return app
