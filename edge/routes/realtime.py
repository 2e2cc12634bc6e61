"""GET /v1/realtime/stream?topics=a,b — server-sent events of broadcasts on the given topics.

A development stand-in for Supabase Realtime's private channels: each topic is authorised once at
join time by private.can_join_topic, the same rule as the RLS policy on realtime.messages.
"""

import asyncio
import json

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from ..auth import claims as verified_claims
from ..db import request_headers, transaction
from ..errors import ApiError

router = APIRouter(prefix="/v1/realtime", tags=["realtime"])


@router.get("/stream")
async def stream(request: Request, topics: str = Query(..., description="comma-separated topics"),
                 claims: dict = Depends(verified_claims)):
    wanted = [t.strip() for t in topics.split(",") if t.strip()]
    if not wanted or len(wanted) > 50:
        raise ApiError(400, "invalid_topics", "give between 1 and 50 comma-separated topics")
    async with transaction(request.app.state.pool, claims.get("role", "anon"), claims, request_headers(request),
                           "GET", request.url.path) as conn:
        denied = []
        for topic in wanted:
            row = await (await conn.execute("select private.can_join_topic(%s) as ok", (topic,))).fetchone()
            if not row["ok"]:
                denied.append(topic)
    if denied:
        raise ApiError(403, "topic_forbidden", "you may not join these topics", details=denied)
    relay = request.app.state.relay
    await asyncio.wait_for(relay.ready.wait(), timeout=5)
    entry = relay.subscribe(frozenset(wanted))

    async def events():
        try:
            yield f"event: joined\ndata: {json.dumps({'topics': wanted})}\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(entry[1].get(), timeout=15)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: {message.get('event') or 'message'}\ndata: {json.dumps(message, default=str)}\n\n"
        finally:
            relay.unsubscribe(entry)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
