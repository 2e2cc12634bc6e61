"""One queue protocol (issue 11, item 2): every queue the worker registers obeys the same lease rules.

Parametrized over `worker.registry.QUEUES` after `discover()`, so a new queue is tested as soon as it is
registered: it needs only a row factory in ROWS below (the test fails until it has one). Each queue's
functions must be the ones private.install_queue wrote (private.queues names them); the state values
the checks expect are the queue's own (docs/HACKING.md, "Queues"). Real Postgres, two connections where
a second claimer must skip a lease.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Callable

import psycopg
import pytest
from psycopg.rows import dict_row

from worker.registry import QUEUES, discover

from .conftest import DEMO, as_user

discover()

CONVERSATION = "00000000-0000-4000-8006-000000000131"  # demo WhatsApp conversation (seed)


@dataclass
class Rows:
    """How to make a due row of one queue, and what its states are called."""

    make: Callable[[psycopg.Connection], str]
    available: str          # waiting to be claimed
    running: str            # claimed
    succeeded: str          # after complete(result)
    failed: str             # failed past its attempts or not retryable
    rescued: str            # after the rescuer took an expired lease back
    max_attempts: int
    result: dict | None = None


def _job(conn) -> str:
    return str(conn.execute("select private.enqueue_job('conformance.probe', '{}', %s, now(), null, 100::smallint, 3) as id",
                            (DEMO,)).fetchone()["id"])


def _lead(conn) -> str:
    key = uuid.uuid4().hex[:12]
    return str(conn.execute(
        "insert into public.leads (tenant_id, unique_lead_id, company_name, email) values (%s, %s, %s, %s) returning id",
        (DEMO, f"x:conformance-{key}", f"Uyum {key} Ltd", f"info@uyum-{key}.example")).fetchone()["id"])


def _inbound(conn) -> str:
    return str(conn.execute("select event_id from private.receive_event('webchat', %s, '{}'::jsonb)",
                            (f"conformance-{uuid.uuid4()}",)).fetchone()["event_id"])


def _outbound(conn) -> str:
    with as_user(conn, "agent@demo.luna.local") as cur:
        msg = cur.execute("select * from public.send_message(%s, %s)",
                          (CONVERSATION, f"Uyum testi {uuid.uuid4().hex[:8]}")).fetchone()
    return str(conn.execute("select id from public.outbound_messages where message_id = %s", (msg["id"],)).fetchone()["id"])


ROWS: dict[str, Rows] = {
    "jobs": Rows(_job, "queued", "running", "succeeded", "failed", "queued", 3),
    # A lead's state is its processing status: RAW is claimed for the normalize step (no working
    # status), completes by moving on, fails to review, and an expired lease is TIMEOUT_DETECTED.
    "leads": Rows(_lead, "RAW", "RAW", "NORMALIZED", "HUMAN_REVIEW_NEEDED", "TIMEOUT_DETECTED", 5,
                  result={"status": "NORMALIZED", "action": "normalize"}),
    "inbox_inbound": Rows(_inbound, "received", "processing", "processed", "failed", "received", 5),
    "inbox_outbound": Rows(_outbound, "queued", "sending", "sent", "failed", "queued", 6,
                           result={"provider_message_id": "wamid.conformance"}),
}


class Q:
    """One queue under test: its registry entry, what install_queue recorded, its row factory."""

    def __init__(self, conn, name: str):
        self.conn = conn
        self.queue = QUEUES[name]
        self.sql_name = self.queue.claim.removeprefix("private.").removesuffix("_claim")
        spec = conn.execute("select tbl, spec from private.queues where name = %s", (self.sql_name,)).fetchone()
        assert spec, f"queue {name}: {self.queue.claim} was not written by private.install_queue"
        self.tbl, self.spec = spec["tbl"], spec["spec"]
        self.state, self.due, self.priority = self.spec["state"], self.spec["due"], self.spec["priority"]
        assert name in ROWS, f"queue {name} has no row factory in tests/test_queue_conformance.py ROWS"
        self.rows = ROWS[name]
        # Only this test's rows are due: everything the seed left waiting is parked a year ahead.
        conn.execute(f"update {self.tbl} set {self.due} = now() + interval '1 year' where locked_until is null")

    def make(self, priority: int | None = None) -> str:
        row_id = self.rows.make(self.conn)
        if priority is not None:
            self.set(row_id, f"{self.priority} = %s", priority)
        return row_id

    def set(self, row_id, assignment: str, *args):
        self.conn.execute(f"update {self.tbl} set {assignment} where id = %s", (*args, row_id))

    def row(self, row_id) -> dict:
        return self.conn.execute(
            f"select {self.state}::text as state, locked_by, locked_until, attempts, last_error, "
            f"extract(epoch from {self.due} - now()) as due_in from {self.tbl} where id = %s", (row_id,)).fetchone()

    def call(self, verb: str, *args, conn=None):
        fn = getattr(self.queue, verb)
        marks = ", ".join(["%s"] * len(args))
        return (conn or self.conn).execute(f"select * from {fn}({marks})", args)

    def claim(self, worker: str = "w1", n: int = 10, lease: int = 60, conn=None) -> list[str]:
        return [str(r["id"]) for r in self.call("claim", worker, n, lease, conn=conn).fetchall()]

    def scalar(self, verb: str, *args):
        row = self.call(verb, *args).fetchone()
        return next(iter(row.values()))

    def array(self, *ids) -> str:
        return "{" + ",".join(str(i) for i in ids) + "}"


@pytest.fixture(params=sorted(QUEUES))
def q(request, conn):
    return Q(conn, request.param)


def test_every_queue_is_installed_with_the_six_verbs(conn):
    names = {r["name"] for r in conn.execute("select name from private.queues")}
    for queue in QUEUES.values():
        sql_name = queue.claim.removeprefix("private.").removesuffix("_claim")
        assert sql_name in names, queue.name
        for verb in ("claim", "complete", "fail", "release", "snooze", "rescue"):
            assert getattr(queue, verb) == f"private.{sql_name}_{verb}", (queue.name, verb)
        assert queue.name in ROWS, f"add a row factory for {queue.name} to ROWS"


def test_claim_takes_a_lease_and_a_second_claimer_skips_it(q, db_url):
    row_id = q.make()
    assert q.row(row_id)["state"] == q.rows.available
    with psycopg.connect(db_url, row_factory=dict_row) as a, psycopg.connect(db_url, autocommit=True,
                                                                               row_factory=dict_row) as b:
        # a's claim is not committed yet: b must skip the locked row, not wait for it
        b.execute("set lock_timeout = '2s'")
        assert q.claim("w1", conn=a) == [row_id]
        assert row_id not in q.claim("w2", conn=b)
        a.commit()
    got = q.row(row_id)
    assert got["state"] == q.rows.running and got["locked_by"] == "w1" and got["attempts"] == 1
    assert got["locked_until"] is not None
    assert q.claim("w2") == []  # leased: nobody else gets it


def test_only_the_lease_holder_completes(q):
    row_id = q.make()
    q.claim("w1")
    result = json.dumps(q.rows.result) if q.rows.result else None
    assert q.scalar("complete", "w2", q.array(row_id), [result]) == 0
    assert q.row(row_id)["locked_by"] == "w1"
    assert q.scalar("complete", "w1", q.array(row_id), [result]) == 1
    got = q.row(row_id)
    assert got["state"] == q.rows.succeeded and got["locked_by"] is None and got["locked_until"] is None
    assert got["last_error"] is None
    assert q.scalar("complete", "w1", q.array(row_id), [result]) == 0  # done once


def test_fail_retries_with_exponential_backoff(q):
    row_id = q.make()
    q.claim("w1")
    assert q.scalar("fail", "w2", row_id, "not yours", True) is None  # only the holder
    assert q.scalar("fail", "w1", row_id, "provider said 503", True) == q.rows.available
    got = q.row(row_id)
    assert got["locked_by"] is None and got["attempts"] == 1 and got["last_error"] == "provider said 503"
    assert 0.5 < float(got["due_in"]) <= 1.1  # first retry after 1 s
    assert q.claim("w1") == []  # not due yet
    q.set(row_id, f"{q.due} = now()")
    assert q.claim("w1") == [row_id]
    q.scalar("fail", "w1", row_id, "provider said 503", True)
    got = q.row(row_id)
    assert got["attempts"] == 2 and 1.5 < float(got["due_in"]) <= 2.1  # then 2 s


def test_fail_not_retryable_or_past_max_attempts_ends_in_the_visible_failed_state(q):
    final = q.make()
    q.claim("w1")
    assert q.scalar("fail", "w1", final, "invalid phone number", False) == q.rows.failed
    last = q.make()
    q.set(last, "attempts = %s", q.rows.max_attempts - 1)
    assert q.claim("w1") == [last]
    assert q.scalar("fail", "w1", last, "provider said 503", True) == q.rows.failed
    for row_id, error in ((final, "invalid phone number"), (last, "provider said 503")):
        got = q.row(row_id)
        assert got["state"] == q.rows.failed and got["locked_by"] is None and got["last_error"] == error
        q.set(row_id, f"{q.due} = now()")
    assert q.claim("w1") == []  # failed rows are never claimed again


def test_release_hands_back_without_counting_the_attempt(q):
    row_id = q.make()
    q.claim("w1")
    assert q.scalar("release", "w2", q.array(row_id)) == 0
    assert q.scalar("release", "w1", q.array(row_id)) == 1
    got = q.row(row_id)
    assert got["state"] == q.rows.available and got["attempts"] == 0 and got["locked_by"] is None
    assert q.claim("w2") == [row_id]  # at once, by anyone
    assert q.scalar("release", "w2", None) == 1  # null: everything the worker holds


def test_snooze_waits_without_failing(q):
    row_id = q.make()
    q.claim("w1")
    assert q.scalar("snooze", "w2", row_id, 60) is None
    assert q.scalar("snooze", "w1", row_id, 60) == q.rows.available
    got = q.row(row_id)
    assert got["attempts"] == 0 and got["locked_by"] is None and got["last_error"] is None
    assert 55 < float(got["due_in"]) <= 60.5
    assert q.claim("w1") == []


def test_rescue_takes_back_an_expired_lease(q):
    row_id = q.make()
    q.claim("dead-worker", lease=60)
    assert q.scalar("rescue") == 0  # the lease is still valid
    q.set(row_id, "locked_until = now() - interval '1 second'")
    assert q.scalar("rescue") == 1
    got = q.row(row_id)
    assert got["state"] == q.rows.rescued and got["locked_by"] is None and got["attempts"] == 1
    assert "lease expired" in got["last_error"] and "dead-worker" in got["last_error"]
    assert 0.5 < float(got["due_in"]) <= 1.1  # an expired lease is a failed attempt: backoff
    result = json.dumps(q.rows.result) if q.rows.result else None
    assert q.scalar("complete", "dead-worker", q.array(row_id), [result]) == 0  # its late answer is ignored
    # past its attempts, the rescuer ends it in the failed state
    last = q.make()
    q.set(last, "attempts = %s", q.rows.max_attempts - 1)
    assert q.claim("dead-worker") == [last]
    q.set(last, "locked_until = now() - interval '1 second'")
    assert q.scalar("rescue") == 1
    assert q.row(last)["state"] == q.rows.failed


def test_higher_priority_first_then_earlier_due(q):
    low = q.make(priority=10)
    high = q.make(priority=90)
    assert q.claim("w1", n=1) == [high]
    assert q.claim("w1", n=1) == [low]
    later, earlier = q.make(priority=50), q.make(priority=50)
    q.set(later, f"{q.due} = now() - interval '1 minute'")
    q.set(earlier, f"{q.due} = now() - interval '2 minutes'")
    assert q.claim("w1", n=1) == [earlier]
    assert q.claim("w1", n=1) == [later]
