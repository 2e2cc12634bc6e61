"""Side effects happen once per entity and step, whatever crashes (issue 9, item 10).

A real `luna worker` process is killed (SIGKILL) in each queue after its handlers' side effects
happened and before its batch settled; the leases are then expired, the rescuer runs and a worker
runs the queue again. Each lead gets one lead_synced event and one lead_assigned notification, each
message reaches the (fake) provider once, each rep notice once, each inbound message is stored once.
A forced settlement failure sends a message to 'reconcile', never to a second send.
Real Postgres, real subprocesses, fake providers on loopback; no mocks.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
from fastapi import FastAPI, Request

from worker.registry import Context
from worker.runner import Worker, open_pool

from .conftest import DEMO, as_user, run_workers, wait_for
from .fakes import serve
from .fakes.graph import FakeGraph
from .test_inbox import meta_app, post, text_message, wa_event  # noqa: F401  (meta_app is a fixture)

ROOT = Path(__file__).resolve().parent.parent
WA_CHANNEL = "00000000-0000-4000-8006-000000000101"
CONVERSATION = "00000000-0000-4000-8006-000000000131"
AGENT = "00000000-0000-4000-8001-000000000014"
AHMET = "00000000-0000-4000-8005-000000000101"

# `luna worker` for one queue, with one handler wrapped: the real handler runs (its side effects
# happen and commit), a probe row says so, then the handler hangs until the process is killed, so
# the batch never settles.
WORKER = """
import asyncio, sys
from worker.registry import QUEUES, discover
discover()
queue, key = sys.argv[1], sys.argv[2]
q = QUEUES[queue]
real = q.handlers[key]

async def side_effect_then_hang(ctx, row):
    result = await real(ctx, row)
    async with ctx.pool.connection() as conn:
        await conn.execute("insert into public.kill_probe (row_id) values (%s)", (str(row["id"]),))
    await asyncio.sleep(3600)
    return result

q.handlers[key] = side_effect_then_hang
from luna.cli import app
app(["worker", "--queues", queue, "--concurrency", "64"], prog_name="luna")
"""


@pytest.fixture
def probe(conn):
    conn.execute("create table public.kill_probe (row_id text not null, at timestamptz not null default clock_timestamp())")
    conn.execute("grant all on public.kill_probe to service_role")
    return lambda: conn.execute("select count(*) as n from public.kill_probe").fetchone()["n"]


def kill_mid_batch(db_url, queue: str, key: str, ready, *, batch: int = 50) -> None:
    """Start a real worker process on `queue`, wait until `ready()`, then SIGKILL it."""
    env = dict(os.environ, DATABASE_URL=db_url, LUNA_WORKER_BATCH=str(batch), LUNA_WORKER_POLL_SECONDS="0.2",
               LUNA_WORKER_LEASE_SECONDS="300")
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-c", WORKER, queue, key], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: ready() or proc.poll() is not None, timeout=90, what=f"the {queue} worker's side effects")
            if proc.poll() is not None:
                out.seek(0)
                raise AssertionError(f"the worker exited early:\n{out.read()[-4000:]}")
            proc.send_signal(signal.SIGKILL)  # kill -9: nothing of the worker runs any more
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL


def expire_and_rescue(conn, table: str, rescue: str) -> int:
    """The dead worker's leases run out; the rescuer takes them back."""
    conn.execute(f"update {table} set locked_until = now() - interval '1 second' where locked_by is not null")
    return conn.execute(f"select {rescue}() as n").fetchone()["n"]


class CountingWorker(Worker):
    """The shipped worker; counts its claim rounds (so a test can let it look at the queue a few times)."""

    claims = 0

    async def claim(self, q, n):
        rows = await super().claim(q, n)
        self.claims += 1
        return rows


def run_worker(db_url, queues: list[str], until, timeout: float = 60.0, what: str = "the queue to settle") -> None:
    """A healthy worker (in this process, handlers as shipped) runs the queues until `until(worker)`."""

    asyncio.run(run_workers(db_url, lambda workers: until(workers[0]), with_workers=True, queues=queues,
                            timeout=timeout, what=what, worker_class=CountingWorker, poll_seconds=0.1, concurrency=32))


async def _reconcile(db_url) -> int:
    from worker.inbox.send import reconcile_outbound

    pool = await open_pool(db_url)
    try:
        return await reconcile_outbound(Context(pool, None, None, "reconciler"))
    finally:
        await pool.close()


# ------------------------------------------------------------------------------------------ leads: crm_sync
def test_killed_crm_sync_repeats_no_timeline_event_or_notification(db_url, conn, probe):
    n, batch = 30, 20
    # Only these leads are claimable (the demo leads wait).
    conn.execute("update public.leads set next_orchestrator_module = null")
    leads = [str(conn.execute("""
        insert into public.leads (tenant_id, unique_lead_id, contact_name, company_name, phone, email, source,
                                  processing_status, lead_category, luna_ai_score, luna_ai_decision)
        values (%s, %s, %s, %s, %s, %s, 'meta_form', 'QUALIFIED', 'HOT', 90, 'OK') returning id""",
        (DEMO, f"e:kill{i}@acme.example", f"Kişi {i}", f"Firma {i}", f"+90532{i:07d}", f"kill{i}@acme.example")).fetchone()["id"])
        for i in range(n)]

    # The first batch's syncs all commit; then the worker dies before completing the batch.
    kill_mid_batch(db_url, "leads", "crm_sync", lambda: probe() >= batch, batch=batch)
    synced_before = probe()
    assert synced_before == batch
    assert conn.execute("select count(*) as n from public.timeline_events where event_type = 'lead_synced' "
                        "and data ->> 'lead_id' = any(%s)", (leads,)).fetchone()["n"] == batch
    assert expire_and_rescue(conn, "public.leads", "private.leads_rescue") == batch

    def settled():
        return conn.execute("select count(*) as n from public.leads where id::text = any(%s) and processing_status = 'CRM_SYNCED'",
                            (leads,)).fetchone()["n"] == n

    run_worker(db_url, ["leads"], lambda w: settled(), what="every lead to reach CRM_SYNCED")

    events = collections.Counter(r["lead"] for r in conn.execute(
        "select data ->> 'lead_id' as lead from public.timeline_events where event_type = 'lead_synced' "
        "and data ->> 'lead_id' = any(%s)", (leads,)))
    notices = collections.Counter(r["lead"] for r in conn.execute(
        "select data ->> 'lead_id' as lead from public.notifications where kind = 'lead_assigned' "
        "and data ->> 'lead_id' = any(%s)", (leads,)))
    assert {lead: events[lead] for lead in leads} == {lead: 1 for lead in leads}
    assert {lead: notices[lead] for lead in leads} == {lead: 1 for lead in leads}
    # One customer and one card each; the retried leads replayed the first sync's result.
    assert conn.execute("select count(*) as n from public.customers where email like 'kill%%@acme.example'").fetchone()["n"] == n
    assert conn.execute("""select count(*) as n from public.cards cd join public.customers c on c.id = cd.customer_id
                           where c.email like 'kill%%@acme.example'""").fetchone()["n"] == n
    replayed = conn.execute("""select count(distinct lead_id) as n from public.processing_logs
                               where lead_id::text = any(%s) and module = 'crm_sync' and to_status = 'CRM_SYNCED'
                                 and detail ->> 'replayed' = 'true'""", (leads,)).fetchone()["n"]
    assert replayed == synced_before
    # The rep each lead went to is the one the first sync chose and notified.
    mismatched = conn.execute("""
        select count(*) as n from public.leads l join public.notifications x
          on x.kind = 'lead_assigned' and x.data ->> 'lead_id' = l.id::text
        where l.id::text = any(%s) and x.user_id is distinct from l.assigned_to""", (leads,)).fetchone()["n"]
    assert mismatched == 0


# ------------------------------------------------------------------------------------------ outbound sends
class Hold:
    """ASGI wrapper for a fake provider: a request whose body contains b"HOLD" waits until release()
    (the provider is slow to answer); then it is processed as usual."""

    def __init__(self, app):
        self.app = app
        self.held = 0
        self._release = threading.Event()

    def release(self):
        self._release.set()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if b"HOLD" in body and not self._release.is_set():
            self.held += 1
            while not self._release.is_set():
                await asyncio.sleep(0.05)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _channel_to(conn, base: str) -> None:
    from luna import secrets

    conn.execute("update public.channel_accounts set settings = (settings - 'rate_per_s') || %s::jsonb where id = %s",
                 (json.dumps({"base_url": base}), WA_CHANNEL))
    secrets.set_channel_credentials(conn, WA_CHANNEL, {"access_token": "test-token"})
    conn.execute("update public.conversations set last_inbound_at = now() - interval '1 hour' where id = %s", (CONVERSATION,))


def _queue(conn, bodies: list[str]) -> dict[str, str]:
    """body -> outbound_messages id, queued by an agent through send_message."""
    out = {}
    with as_user(conn, "agent@demo.luna.local") as cur:
        for body in bodies:
            msg = cur.execute("select * from public.send_message(%s, %s)", (CONVERSATION, body)).fetchone()
            out[body] = str(conn.execute("select id from public.outbound_messages where message_id = %s",
                                         (msg["id"],)).fetchone()["id"])
    return out


def _sent_bodies(fake: FakeGraph) -> collections.Counter:
    return collections.Counter(s["body"].get("text", {}).get("body") for s in fake.sent)


def _outbound(conn, ids) -> dict[str, dict]:
    return {str(r["id"]): r for r in conn.execute(
        "select o.*, m.status as message_status, m.provider_message_id as message_provider_id "
        "from public.outbound_messages o join public.messages m on m.id = o.message_id where o.id::text = any(%s)",
        (list(ids),))}


def test_killed_sender_never_sends_a_message_twice(db_url, conn, probe):
    fake = FakeGraph()
    hold = Hold(fake.app)
    with serve(hold) as base:
        _channel_to(conn, base)
        bodies = [f"Randevu hatırlatma #{i}" for i in range(12)]
        ids = _queue(conn, bodies + ["HOLD: yanıtı geç gelen mesaj"])
        held_id = ids["HOLD: yanıtı geç gelen mesaj"]

        # 12 sends answered (then the handlers hang before the batch settles), 1 still waiting for
        # the provider's answer: kill -9.
        kill_mid_batch(db_url, "inbox_outbound", "whatsapp", lambda: probe() >= len(bodies) and hold.held >= 1)
        # The provider takes the held message after all (its answer reached no one).
        hold.release()
        wait_for(lambda: _sent_bodies(fake)["HOLD: yanıtı geç gelen mesaj"] == 1, what="the held message to land")
        assert _sent_bodies(fake) == collections.Counter(ids.keys())

        expire_and_rescue(conn, "public.outbound_messages", "private.outbound_rescue")
        run_worker(db_url, ["inbox_outbound"], lambda w: w.claims >= 3 and all(
            r["status"] not in ("queued", "sending") for r in _outbound(conn, ids.values()).values()),
            what="the outbound queue to settle")
        # Each message reached the provider exactly once.
        assert _sent_bodies(fake) == collections.Counter(ids.keys()), _sent_bodies(fake)
        # The reconciler settles the accepted ones from their recorded ids (sending nothing).
        assert asyncio.run(_reconcile(db_url)) == len(bodies)
        assert _sent_bodies(fake) == collections.Counter(ids.keys())
        rows = _outbound(conn, ids.values())
        by_body = {s["body"]["text"]["body"]: s["id"] for s in fake.sent}
        for body in bodies:
            row = rows[ids[body]]
            assert row["status"] == "sent" and row["message_status"] == "sent", row
            assert row["provider_message_id"] == by_body[body] == row["message_provider_id"]
            assert row["accepted_at"] is not None
        # The one whose answer never came: its outcome is unknown, so it waits for a person, visibly.
        held = rows[held_id]
        assert held["status"] == "reconcile" and held["provider_message_id"] is None, held
        assert "outcome unknown" in held["last_error"]
        assert held["message_status"] == "queued"

        # A person decides to send it again: that is the only way it goes out a second time.
        with as_user(conn, "viewer@demo.luna.local") as cur:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                cur.execute("select * from public.retry_outbound(%s)", (held_id,))
        with as_user(conn, "agent@demo.luna.local") as cur:
            assert cur.execute("select status from public.retry_outbound(%s)", (held_id,)).fetchone()["status"] == "queued"
        run_worker(db_url, ["inbox_outbound"], lambda w: _outbound(conn, [held_id])[held_id]["status"] == "sent",
                   what="the resent message")
        assert _sent_bodies(fake)["HOLD: yanıtı geç gelen mesaj"] == 2


def test_failed_settlement_goes_to_reconcile_and_is_never_resent(db_url, conn):
    fake = FakeGraph()
    with serve(fake.app) as base:
        _channel_to(conn, base)
        ids = _queue(conn, ["Sipariş onayı", "Kargo bilgisi", "Fatura"])
        faulty = ids["Kargo bilgisi"]
        # The settlement of one message fails (a trigger raises whenever it is marked sent).
        conn.execute("create table public.settle_fault (outbound_id uuid primary key)")
        conn.execute("insert into public.settle_fault values (%s)", (faulty,))
        conn.execute("""
            create function public.settle_fault() returns trigger language plpgsql as $$
            begin
              if new.status = 'sent' and exists (select 1 from public.settle_fault f where f.outbound_id = new.id) then
                raise exception 'forced settlement failure';
              end if;
              return new;
            end $$""")
        conn.execute("create trigger settle_fault before update on public.outbound_messages "
                     "for each row execute function public.settle_fault()")

        # (The worker settles its batch before it stops.)
        run_worker(db_url, ["inbox_outbound"], lambda w: len(fake.sent) >= 3, what="the three sends")
        rows = _outbound(conn, ids.values())
        assert rows[faulty]["status"] == "reconcile", rows[faulty]
        assert "forced settlement failure" in rows[faulty]["last_error"]
        assert rows[faulty]["provider_message_id"] is not None and rows[faulty]["message_status"] == "queued"
        assert all(rows[i]["status"] == "sent" for i in ids.values() if i != faulty)

        # However long it waits: its lease runs out, the rescuer runs, a worker runs: not sent again.
        expire_and_rescue(conn, "public.outbound_messages", "private.outbound_rescue")
        run_worker(db_url, ["inbox_outbound"], lambda w: w.claims >= 3)
        assert _outbound(conn, [faulty])[faulty]["status"] == "reconcile"
        assert _sent_bodies(fake) == collections.Counter(ids.keys())
        # Nor by a person: the provider has it.
        with as_user(conn, "agent@demo.luna.local") as cur:
            with pytest.raises(psycopg.Error) as refused:
                cur.execute("select * from public.retry_outbound(%s)", (faulty,))
        assert refused.value.sqlstate == "PT409" and "already_accepted" in (refused.value.diag.message_detail or "")

        # The reconciler settles it from the recorded id once settling works again.
        assert asyncio.run(_reconcile(db_url)) == 0  # still failing: stays in reconcile, tried later
        assert _outbound(conn, [faulty])[faulty]["status"] == "reconcile"
        conn.execute("delete from public.settle_fault")
        conn.execute("update public.outbound_messages set run_at = now() where id = %s", (faulty,))
        assert asyncio.run(_reconcile(db_url)) == 1
        row = _outbound(conn, [faulty])[faulty]
        assert row["status"] == "sent" and row["message_status"] == "sent"
        assert row["message_provider_id"] == row["provider_message_id"] == \
            next(s["id"] for s in fake.sent if s["body"]["text"]["body"] == "Kargo bilgisi")
        assert _sent_bodies(fake) == collections.Counter(ids.keys())


def test_provider_refusal_is_retried_but_an_unanswered_call_is_not(db_url, conn):
    """The mark of a call in flight is cleared by a definite refusal (429: retried as before) and kept
    when the call ends without an answer the worker could read (a 200 without a message id)."""
    fake = FakeGraph()
    with serve(fake.app) as base:
        _channel_to(conn, base)
        fake.plan(429)
        ids = _queue(conn, ["Tekrar denenecek"])
        run_worker(db_url, ["inbox_outbound"], lambda w: _outbound(conn, ids.values())[ids["Tekrar denenecek"]]["status"] == "sent",
                   what="the throttled message to be sent")
        row = _outbound(conn, ids.values())[ids["Tekrar denenecek"]]
        assert row["attempts"] == 2 and len(fake.sent) == 1

    # A provider that answers 200 without the documented message id: it may have taken the message.
    odd = FastAPI()
    received = []

    @odd.post("/{version}/{phone_number_id}/messages")
    async def send(version: str, phone_number_id: str, request: Request):
        received.append(await request.json())
        return {"messaging_product": "whatsapp", "contacts": [{"input": "x", "wa_id": "x"}]}

    with serve(odd) as base:
        _channel_to(conn, base)
        ids = _queue(conn, ["Belirsiz"])
        run_worker(db_url, ["inbox_outbound"], lambda w: len(received) >= 1 and w.claims >= 3,
                   what="the unclear send")
        expire_and_rescue(conn, "public.outbound_messages", "private.outbound_rescue")
        run_worker(db_url, ["inbox_outbound"], lambda w: w.claims >= 3)
        assert len(received) == 1
        row = _outbound(conn, ids.values())[ids["Belirsiz"]]
        assert row["status"] == "reconcile" and "wrong_schema" in row["last_error"]


# ------------------------------------------------------------------------------------------ jobs: rep notices
def test_killed_job_worker_sends_each_rep_notice_once(db_url, conn, probe):
    """Rep notices are outbound messages (issue 11, item 3): a job worker killed after queueing them
    queues nothing twice on the retry (the job's idempotency key), and each is sent once."""
    from luna import secrets

    fake = FakeGraph(token="rep-token")
    with serve(fake.app) as base:
        conn.execute("update private.jobs set status = 'cancelled' where status in ('queued', 'running')")
        conn.execute("update public.profiles set phone = '+905551234567' where id = %s", (AGENT,))
        conn.execute("update public.channel_accounts set settings = settings || %s::jsonb where id = %s",
                     (json.dumps({"base_url": base, "rate_per_s": 50}), WA_CHANNEL))
        secrets.set_channel_credentials(conn, WA_CHANNEL, {"access_token": "rep-token"})
        # The rep wrote to the business number within 24 hours: free-form notices may go to them.
        contact = conn.execute("insert into public.contacts (tenant_id, channel, handle) values (%s, 'whatsapp', "
                               "'905551234567') returning id", (DEMO,)).fetchone()["id"]
        conn.execute("insert into public.conversations (tenant_id, channel_account_id, contact_id, labels, last_inbound_at) "
                     "values (%s, %s, %s, '{staff}', now())", (DEMO, WA_CHANNEL, contact))
        n = 8
        keys = [f"crm.notify_rep:whatsapp:kill-{i}" for i in range(n)]
        jobs = [conn.execute("select private.enqueue_job('crm.notify_rep', %s::jsonb, %s, now(), %s) as id",
                             (json.dumps({"channel": "whatsapp", "rep": AGENT, "customer_id": AHMET}), DEMO,
                              key)).fetchone()["id"] for key in keys]

        kill_mid_batch(db_url, "jobs", "crm.notify_rep", lambda: probe() >= n)
        assert expire_and_rescue(conn, "private.jobs", "private.jobs_rescue") == n
        run_worker(db_url, ["jobs", "inbox_outbound"], lambda w: len(fake.sent) >= n and conn.execute(
            "select count(*) as n from private.jobs where id = any(%s) and status = 'succeeded'", (jobs,)).fetchone()["n"] == n,
            what="the notices to be queued and sent")
        assert conn.execute("select count(*) as n from public.outbound_messages where idempotency_key = any(%s)",
                            (keys,)).fetchone()["n"] == n
        assert len(fake.sent) == n, f"{len(fake.sent)} notices for {n} jobs"
        assert all(s["body"]["to"] == "905551234567" and s["phone_number_id"] == "demo-phone-number-1" for s in fake.sent)


# ------------------------------------------------------------------------------------------ inbound
def test_killed_inbound_worker_stores_each_message_once(client, db_url, conn, probe, meta_app):  # noqa: F811
    senders = [f"90555{i:07d}" for i in range(8)]
    for i, sender in enumerate(senders):
        r = post(client, wa_event([text_message(f"wamid.KILL{i}", sender=sender, body=f"Merhaba {i}")],
                                  contacts=[{"profile": {"name": f"Müşteri {i}"}, "wa_id": sender}]))
        assert r.status_code == 200

    events = [str(r["id"]) for r in conn.execute(
        "select id from private.inbound_events where payload::text like '%%wamid.KILL%%'")]
    assert len(events) == len(senders)

    def processed_by_the_doomed_worker():
        return conn.execute("select count(*) as n from public.kill_probe where row_id = any(%s)",
                            (events,)).fetchone()["n"] >= len(events)

    kill_mid_batch(db_url, "inbox_inbound", "inbound", processed_by_the_doomed_worker)
    assert expire_and_rescue(conn, "private.inbound_events", "private.inbound_rescue") >= len(events)
    run_worker(db_url, ["inbox_inbound"], lambda w: conn.execute(
        "select count(*) as n from private.inbound_events where id::text = any(%s) and status = 'processed'",
        (events,)).fetchone()["n"] == len(events), what="the events to be processed")

    wamids = [f"wamid.KILL{i}" for i in range(len(senders))]
    stored = collections.Counter(r["provider_message_id"] for r in conn.execute(
        "select provider_message_id from public.messages where provider_message_id = any(%s)", (wamids,)))
    assert stored == collections.Counter(wamids)
    conversations = conn.execute("""
        select count(*) as n, count(distinct c.contact_id) as contacts from public.conversations c
        join public.messages m on m.conversation_id = c.id where m.provider_message_id = any(%s)""", (wamids,)).fetchone()
    assert conversations["n"] == conversations["contacts"] == len(senders)
    created = conn.execute("""
        select count(*) as n from public.conversation_events e
        where e.event = 'created' and e.conversation_id in (
          select m.conversation_id from public.messages m where m.provider_message_id = any(%s))""", (wamids,)).fetchone()["n"]
    assert created == len(senders)
