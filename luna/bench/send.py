"""`luna bench send`: queued WhatsApp messages sent to a fake Cloud API under a configured rate limit.

Messages are queued through public.send_message (as the service role) in a scratch database; two
workers in one process claim from the outbound queue, where SQL hands every message a send slot of
the number's shared rate bucket; the fake provider records the arrival time of every request.
Figures: the achieved rate against the limit, messages lost (queued, never received) and received
twice (by idempotency key).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import psycopg
from fastapi import FastAPI, Request

from . import bench, percentile, scratch_database

PHONE_ID = "bench-send-number"


class _FakeCloudApi:
    """A minimal WhatsApp Cloud API send endpoint (POST /{version}/{phone-number-id}/messages)."""

    def __init__(self):
        self.arrivals: list[float] = []
        self.bodies: list[str] = []
        self.lock = threading.Lock()
        app = FastAPI()

        @app.post("/{version}/{phone_number_id}/messages")
        async def send(version: str, phone_number_id: str, request: Request):
            body = await request.json()
            with self.lock:
                self.arrivals.append(time.monotonic())
                self.bodies.append(body["text"]["body"])
            return {"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                    "messages": [{"id": "wamid." + uuid.uuid4().hex}]}

        self.app = app


def _serve(app):
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


@bench("send")
def send(quick: bool = False, rate: float = 80.0, workers: int = 2) -> dict:
    """10,000 queued WhatsApp messages to a fake provider under an 80 msg/s limit: rate error, lost, duplicated."""
    from luna import secrets
    from worker.runner import Worker

    total = 1_000 if quick else 10_000
    fake = _FakeCloudApi()
    server, thread, base = _serve(fake.app)
    try:
        with scratch_database("send") as url:
            with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
                channel = conn.execute("""
                    insert into public.channel_accounts (tenant_id, kind, name, external_id, settings)
                    values ('00000000-0000-4000-8000-000000000001', 'whatsapp', 'Bench', %s,
                            jsonb_build_object('base_url', %s::text, 'rate_per_s', %s::numeric)) returning id""",
                                       (PHONE_ID, base, rate)).fetchone()["id"]
                secrets.set_channel_credentials(conn, str(channel), {"access_token": "bench-token"})
                conv = conn.execute("""
                    with ct as (insert into public.contacts (tenant_id, channel, handle, display_name)
                                values ('00000000-0000-4000-8000-000000000001', 'whatsapp', '905550000001', 'Bench')
                                returning id)
                    insert into public.conversations (tenant_id, channel_account_id, contact_id, last_inbound_at)
                    select '00000000-0000-4000-8000-000000000001', %s, ct.id, now() from ct returning id""",
                                    (channel,)).fetchone()["id"]
                t0 = time.perf_counter()
                with conn.transaction():
                    conn.execute("set local role service_role")
                    conn.execute("select public.send_message(%s, 'bench ' || i, idempotency_key => 'bench-' || i) "
                                 "from generate_series(1, %s) i", (conv, total))
                queue_seconds = time.perf_counter() - t0

            async def run() -> float:
                ws = [Worker(url, queues=["inbox_outbound"], worker_id=f"bench-send-{i}", batch=50, concurrency=50,
                             poll_seconds=0.2) for i in range(workers)]
                tasks = [asyncio.create_task(w.run()) for w in ws]
                start = time.perf_counter()
                deadline = start + total / rate * 3 + 60
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
                    while time.perf_counter() < deadline:
                        with fake.lock:
                            if len(fake.arrivals) >= total:
                                break
                        row = await (await aconn.execute(
                            "select count(*) from public.outbound_messages where status in ('queued', 'sending')")).fetchone()
                        if row[0] == 0:
                            break
                        await asyncio.sleep(0.5)
                # A short settle so completions land in the database.
                await asyncio.sleep(1.0)
                for w in ws:
                    w.stop()
                await asyncio.gather(*tasks)
                return time.perf_counter() - start

            elapsed = asyncio.run(run())
            with psycopg.connect(url) as conn:
                sent_rows, failed_rows = conn.execute(
                    "select count(*) filter (where status = 'sent'), count(*) filter (where status = 'failed') "
                    "from public.outbound_messages where idempotency_key like 'bench-%%'").fetchone()
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    arrivals = sorted(fake.arrivals)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    achieved = (len(arrivals) - 1) / span if span else float("nan")
    # The rate in any one second (sliding 1 s windows): the limit must hold locally, not just on average.
    per_second = []
    j = 0
    for i, t in enumerate(arrivals):
        while arrivals[j] < t - 1.0:
            j += 1
        per_second.append(i - j + 1)
    received = set(fake.bodies)
    return {"bench": "send", "figures": {
        "achieved_per_s": round(achieved, 2), "rate_error_pct": round(abs(achieved - rate) / rate * 100, 2),
        "max_in_any_1s": max(per_second) if per_second else 0,
        "p99_in_1s_window": round(percentile(per_second[int(rate):], 99), 1) if len(per_second) > rate else None,
        "lost": total - len(received), "duplicated": len(fake.bodies) - len(received),
        "sent_rows": sent_rows, "failed_rows": failed_rows, "seconds": round(elapsed, 1)},
        "conditions": {"messages": total, "limit_per_s": rate, "workers": workers, "batch": 50,
                       "queued_by": f"public.send_message x{total} ({queue_seconds:.1f}s)",
                       "limit": "SQL send slots per number (private.send_slots), shared by every worker",
                       "provider": "fake WhatsApp Cloud API on loopback (uvicorn thread)"}}
