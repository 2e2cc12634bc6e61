"""GET /v1/realtime/stream?topics=a,b — server-sent events of broadcasts on the given topics.

A development stand-in for Supabase Realtime's private channels. Each topic is authorised at join
time by private.can_join_topic, the same rule as the RLS policy on realtime.messages, and again for
every event before it is delivered (and for every topic at each keep-alive): a role change, a
deactivated membership, a removed assignment or a tenant policy switched on ends delivery at once.

Events a client may receive besides the broadcasts themselves:
  joined   {"topics": [...]}                                   first, once
  revoked  {"topics": [...], "reason": "topic_forbidden"}      access to these topics is gone; the
                                                               stream goes on with the others
  closed   {"reason": "membership_revoked" | "topic_forbidden" | "token_expired", "topics": [...]}
           last: no topic is left (membership_revoked: the caller is no longer an active member of the
           token's tenant, which ends every topic, user:<id> too), or the token has expired.
"""

import asyncio
import json
import time

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.responses import StreamingResponse

from ..auth import access_token_query
from ..auth import claims as verified_claims
from ..db import request_headers
from ..errors import ApiError

router = APIRouter(prefix="/v1/realtime", tags=["realtime"])

# Seconds between keep-alives; every topic is re-checked at each one, events are checked as they come.
KEEPALIVE_SECONDS = 15.0
# Events checked together when several are waiting (one query for their distinct topics).
CHECK_BATCH = 100


SETTINGS_SQL = ("select set_config('role', %s, true), set_config('request.jwt.claims', %s, true), "
                "set_config('request.headers', %s, true), set_config('request.method', %s, true), "
                "set_config('request.path', %s, true)")
CHECK_SQL = ("select t.topic, private.can_join_topic(t.topic) as ok, private.tenant_id() is not null as member "
             "from unnest(%s::text[]) with ordinality t(topic, n) order by t.n")


def _sse(event: str, data) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


@router.get("/stream", dependencies=[Security(access_token_query)], response_class=StreamingResponse,
            responses={200: {"description": "server-sent events: `joined`, then one event per broadcast",
                             "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def stream(request: Request, topics: str = Query(..., min_length=1, max_length=8192,
                                                       description="comma-separated topics (1 to 50), e.g. "
                                                                   "tenant:<tenant id>:board:<pipeline id>"),
                 claims: dict = Depends(verified_claims)):
    wanted = list(dict.fromkeys(t.strip() for t in topics.split(",") if t.strip()))
    if not wanted or len(wanted) > 50:
        raise ApiError(400, "invalid_topics", "give between 1 and 50 comma-separated topics")
    pool = request.app.state.pool
    role = claims.get("role", "anon")
    path = request.url.path
    settings_claims, settings_headers = json.dumps(claims), json.dumps(request_headers(request))

    async def refused(names) -> tuple[list[str], bool | None]:
        """The topics the caller may not join now, and whether they are still an active member."""
        if not names:
            return [], None
        # One round trip (pipeline): the same settings as edge.db.transaction, then the rule per topic.
        async with pool.connection() as conn:
            async with conn.pipeline() as pipeline:
                await conn.execute("begin read only")
                await conn.execute(SETTINGS_SQL, (role, settings_claims, settings_headers, "GET", path))
                cur = await conn.execute(CHECK_SQL, (list(names),))
                await conn.execute("commit")
                await pipeline.sync()
                rows = await cur.fetchall()
        return [r["topic"] for r in rows if not r["ok"]], bool(rows[0]["member"])

    denied, was_member = await refused(wanted)
    if denied:
        raise ApiError(403, "topic_forbidden", "you may not join these topics", details=denied)
    relay = request.app.state.relay
    await asyncio.wait_for(relay.ready.wait(), timeout=5)
    entry = relay.subscribe(wanted)
    expires = claims.get("exp")

    async def revoke(lost: list[str], member: bool | None):
        """Drop what the caller lost; yields the events that say so (closed when nothing is left)."""
        if was_member and member is False:
            # No longer a member of the token's tenant (deactivated, removed): the whole stream ends,
            # user:<id> topics too (their notifications are that tenant's).
            gone, reason = sorted(entry.topics), "membership_revoked"
            entry.topics.clear()
        else:
            gone, reason = lost, "topic_forbidden"
            entry.topics.difference_update(lost)
        if entry.topics:
            yield _sse("revoked", {"topics": gone, "reason": reason})
        else:
            yield _sse("closed", {"reason": reason, "topics": gone})

    async def events():
        try:
            yield _sse("joined", {"topics": wanted})
            while entry.topics:
                wait = KEEPALIVE_SECONDS
                if expires is not None:
                    left = float(expires) - time.time()
                    if left <= 0:
                        yield _sse("closed", {"reason": "token_expired", "topics": sorted(entry.topics)})
                        return
                    wait = min(wait, left)
                try:
                    batch = [await asyncio.wait_for(entry.queue.get(), timeout=wait)]
                except asyncio.TimeoutError:
                    if expires is not None and float(expires) <= time.time():
                        continue  # closed at the top of the loop
                    lost, member = await refused(sorted(entry.topics))
                    if lost or (was_member and member is False):
                        async for out in revoke(lost, member):
                            yield out
                    else:
                        yield ": keep-alive\n\n"
                    continue
                while len(batch) < CHECK_BATCH and not entry.queue.empty():
                    batch.append(entry.queue.get_nowait())
                if expires is not None and float(expires) <= time.time():
                    yield _sse("closed", {"reason": "token_expired", "topics": sorted(entry.topics)})
                    return
                # The rule again, now: access may have changed since the join (or the last event).
                lost, member = await refused(sorted({m["topic"] for m in batch if m["topic"] in entry.topics}))
                if lost or (was_member and member is False):
                    async for out in revoke(lost, member):
                        yield out
                for message in batch:
                    if message["topic"] in entry.topics:
                        yield _sse(message.get("event") or "message", message)
        finally:
            relay.unsubscribe(entry)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
