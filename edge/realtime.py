"""Local realtime relay: LISTEN on the shim's 'realtime' channel and fan out to SSE subscribers.

Supabase's Realtime server does this in production; the relay exists for development and tests,
and applies the same rule (private.can_join_topic, the function RLS on realtime.messages uses). The
relay only routes by topic; the stream (edge/routes/realtime.py) re-checks the rule for every event
it delivers, so access revoked after joining ends delivery at once.
"""

from __future__ import annotations

import asyncio
import json
import logging

import psycopg

log = logging.getLogger("luna.realtime")


class Subscription:
    """One stream's topics (a stream may drop some when access to them is revoked) and its queue."""

    __slots__ = ("topics", "queue")

    def __init__(self, topics):
        self.topics: set[str] = set(topics)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=1000)


class Relay:
    def __init__(self, url: str, pool):
        self.url = url
        self.pool = pool
        self.subscribers: set[Subscription] = set()
        self._task: asyncio.Task | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def subscribe(self, topics) -> Subscription:
        entry = Subscription(topics)
        self.subscribers.add(entry)
        return entry

    def unsubscribe(self, entry) -> None:
        self.subscribers.discard(entry)

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute("listen realtime")
                    self.ready.set()
                    async for note in conn.notifies():
                        await self._dispatch(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ready.clear()
                log.warning("realtime listener lost its connection: %s", exc)
                await asyncio.sleep(1)

    async def _dispatch(self, raw: str) -> None:
        message = json.loads(raw)
        targets = [sub.queue for sub in list(self.subscribers) if message["topic"] in sub.topics]
        if not targets:
            return
        if message.get("large"):
            async with self.pool.connection() as conn:
                row = await (await conn.execute("select payload from realtime.messages where id = %s",
                                                (message["id"],))).fetchone()
                message["payload"] = row["payload"] if row else None
                message.pop("large", None)
        for q in targets:
            if q.full():  # a stalled subscriber loses its oldest message, never blocks the others
                q.get_nowait()
            q.put_nowait(message)
