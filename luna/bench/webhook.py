"""`luna bench webhook`: a sustained stream of signed WhatsApp Cloud API webhooks to edge on loopback.

edge runs under uvicorn in a subprocess against a scratch database; load comes from keep-alive HTTP/1.1
connections (plain asyncio streams, so the client costs little CPU). Every webhook carries a unique
message id; a share of deliveries is replayed (Meta redelivers) to prove a replay stores nothing.
Figures: requests per second, latency percentiles, and — counted in the database — events lost and
events stored twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time

import psycopg

from . import bench, percentile, scratch_database

APP_ID, APP_SECRET = "bench-app", "bench-app-secret"
PHONE_ID = "bench-phone-number"


def _payload(i: int) -> bytes:
    wamid = f"wamid.BENCH{i:09d}"
    return json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "bench-waba", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "902120000000", "phone_number_id": PHONE_ID},
            "contacts": [{"profile": {"name": f"Müşteri {i % 5000}"}, "wa_id": f"90555{i % 5000:07d}"}],
            "messages": [{"from": f"90555{i % 5000:07d}", "id": wamid, "timestamp": str(int(time.time())),
                          "type": "text", "text": {"body": f"Merhaba, sipariş {i} hakkında bilgi alabilir miyim?"}}]}}]}]},
        separators=(",", ":")).encode()


def _request(port: int, body: bytes) -> bytes:
    sig = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    head = (f"POST /v1/webhooks/meta/{APP_ID} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nX-Hub-Signature-256: {sig}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _load(port: int, requests: list[bytes], connections: int, rate: float | None):
    """Send all requests over `connections` keep-alive connections; optional pacing (requests/s)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    start = time.perf_counter()
    sent = 0

    async def conn_loop():
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if rate:
                    due = start + sent / rate
                    sent += 1
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                t0 = time.perf_counter()
                writer.write(req)
                status = await _read_response(reader)
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(conn_loop() for _ in range(connections)))
    return time.perf_counter() - start, latencies, statuses


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edge exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("edge did not start")


@bench("webhook")
def webhook(quick: bool = False, connections: int = 16, workers: int = 2, replay_pct: float = 2.0) -> dict:
    """Signed WhatsApp webhooks to edge on loopback: requests/s, p95, lost and duplicated events."""
    from luna import secrets

    total = 5_000 if quick else 30_000
    replays = int(total * replay_pct / 100)
    rng = random.Random(11)
    with scratch_database("webhook") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.row_factory = psycopg.rows.dict_row
            secrets.register_meta_app(conn, APP_ID, APP_SECRET, "bench-verify")
            conn.execute("""insert into public.channel_accounts (tenant_id, kind, name, external_id)
                            values ('00000000-0000-4000-8000-000000000001', 'whatsapp', 'Bench', %s)""", (PHONE_ID,))
        from .foundation import _progress  # noqa: F401  (same console conventions)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, DATABASE_URL=url, LUNA_LOG_LEVEL="WARNING")
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "edge.app:app_factory", "--factory",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                                 "--no-access-log", "--log-level", "warning"], env=env)
        try:
            _wait_port(port, proc)
            bodies = [_payload(i) for i in range(total)]
            reqs = [_request(port, b) for b in bodies]
            # Replays: a random earlier delivery sent again, spread through the stream.
            for _ in range(replays):
                reqs.insert(rng.randrange(len(reqs)), reqs[rng.randrange(total)])
            # Warm up (connections, caches) with requests that are not counted.
            warm = [_request(port, json.dumps({"object": "whatsapp_business_account", "entry": [], "w": i}).encode())
                    for i in range(300)]
            asyncio.run(_load(port, warm, connections, None))
            elapsed, latencies, statuses = asyncio.run(_load(port, reqs, connections, None))
            # Baseline, same server and run: a request no route handles (the app's middleware and router
            # answer 404; no signature check, no database).
            bare = [f"POST /v1/bench-baseline HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies[: max(2000, total // 5)]]
            bare_elapsed, _, _ = asyncio.run(_load(port, bare, connections, None))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        with psycopg.connect(url) as conn:
            stored, distinct = conn.execute(
                "select count(*), count(distinct payload #>> '{entry,0,changes,0,value,messages,0,id}') "
                "from private.inbound_events where payload #>> '{entry,0,changes,0,value,messages,0,id}' like 'wamid.BENCH%%'"
            ).fetchone()
    ok = statuses.get(200, 0)
    return {"bench": "webhook", "figures": {
        "requests_per_s": round(len(reqs) / elapsed),
        "baseline_requests_per_s": round(len(bare) / bare_elapsed),
        "ratio": round((len(reqs) / elapsed) / (len(bare) / bare_elapsed), 3), "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2), "p99_ms": round(percentile(latencies, 99), 2),
        "lost": total - distinct, "duplicated": stored - distinct, "non_200": len(reqs) - ok},
        "conditions": {"requests": len(reqs), "unique_events": total, "replayed": replays, "connections": connections,
                       "edge": f"uvicorn --workers {workers} (subprocess, loopback)", "cpus": os.cpu_count(),
                       "client": "asyncio keep-alive HTTP/1.1, one process",
                       "counted": "private.inbound_events (unique provider event id) after the run"}}
