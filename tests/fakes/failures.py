"""Failure modes shared by the lead pipeline's fake providers: a queue of modes applied to the next
requests (then `default`), and the calls seen."""

from __future__ import annotations

import asyncio

from fastapi.responses import JSONResponse, Response


class Modes:
    def __init__(self, default: str = "ok"):
        self.default = default
        self.queue: list[str] = []
        self.calls: list[dict] = []
        self.delay = 3.0

    def next(self) -> str:
        return self.queue.pop(0) if self.queue else self.default

    async def failure(self) -> Response | None:
        """None for "ok"; otherwise the failing response (or a delay, for "timeout")."""
        mode = self.next()
        if mode == "ok":
            return None
        if mode == "timeout":
            await asyncio.sleep(self.delay)
            return None
        if mode == "429":
            return JSONResponse({"error": "rate limited"}, status_code=429, headers={"Retry-After": "1"})
        if mode == "500":
            return JSONResponse({"error": "internal"}, status_code=500)
        if mode == "malformed":
            return Response('{"truncated": ', media_type="application/json")
        if mode == "wrong_schema":
            return JSONResponse({"unexpected": "shape"})
        if mode == "404":
            return JSONResponse({"error": "not found"}, status_code=404)
        raise ValueError(mode)
