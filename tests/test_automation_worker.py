"""The automation engine under a real `luna worker` process killed with SIGKILL mid-run, and outgoing
webhooks signed with HMAC-SHA256 against a fake receiver. Real Postgres, real processes, no mocks."""

from __future__ import annotations

import threading

from fastapi import FastAPI, Request
from psycopg.types.json import Jsonb

from luna import automation, secrets

from .conftest import DEMO
from .fakes import serve
from .test_automation import drain, person, run_of, sent, steps_of, workflow
from .test_exactly_once import expire_and_rescue, kill_mid_batch, probe  # noqa: F401  (probe is a fixture)


def test_a_killed_worker_resumes_without_repeating_a_sent_step(db_url, conn, probe):
    wid = workflow(conn, {"trigger": {"event": "lead.created"}, "steps": [
        {"id": "merhaba", "type": "send_message", "channel": "whatsapp", "template": "takip_24s"},
        {"id": "etiket", "type": "add_tag", "tag": "karsilandi"}]})
    people = [person(conn, f"Kişi {i}", f"90555222{i:04d}") for i in range(8)]
    # Start the runs (the 'automation.event' jobs); their first steps are now due.
    conn.execute("select private.automation_start_runs((j.payload ->> 'event_id')::bigint) from private.jobs j "
                 "where j.kind = 'automation.event' and j.status = 'queued'")
    conn.execute("update private.jobs set status = 'succeeded' where kind = 'automation.event'")
    # A real worker process runs the send steps (each commits its message), then is killed before
    # its batch settles: the jobs stay 'running' under the dead worker's lease.
    kill_mid_batch(db_url, "jobs", "automation.step", lambda: probe() >= len(people))
    assert all(len(sent(conn, p)) == 1 for p in people)
    assert expire_and_rescue(conn, "private.jobs", "private.jobs_rescue") >= len(people)
    # A rescued lease counts as a failed attempt, due after its backoff: let the backoff pass.
    conn.execute("update private.jobs set run_at = now() where kind = 'automation.step' and status = 'queued'")
    drain(conn, db_url)
    for p in people:
        run = run_of(conn, wid, p)
        assert run["status"] == "completed", steps_of(conn, run["id"])
        assert len(sent(conn, p)) == 1, "a sent step was repeated"
        assert [(s["step_key"], s["status"], s["attempts"]) for s in steps_of(conn, run["id"])] == [
            ("merhaba", "done", 1), ("etiket", "done", 1)]
    # The re-run jobs found their steps done.
    replayed = conn.execute("select count(*) as n from private.jobs where kind = 'automation.step' "
                            "and result ->> 'replayed' = 'true'").fetchone()["n"]
    assert replayed == len(people)


class Receiver:
    def __init__(self, status: int = 200):
        self.calls: list[tuple[dict, bytes]] = []
        self.status = status
        self.lock = threading.Lock()
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request):
            body = await request.body()
            with self.lock:
                self.calls.append((dict(request.headers), body))
            from fastapi.responses import JSONResponse

            return JSONResponse({"ok": self.status < 400}, status_code=self.status)

        self.app = app


def test_webhook_step_is_signed_and_sent_once(db_url, conn):
    receiver = Receiver()
    secrets.set_tenant_secret(conn, DEMO, "automation.webhook:crm", "webhook-secret-1")
    with serve(receiver.app) as base:
        wid = workflow(conn, {"trigger": {"event": "lead.created"}, "steps": [
            {"id": "bildir", "type": "webhook", "url": base + "/hook", "secret": "crm"},
            {"id": "etiket", "type": "add_tag", "tag": "bildirildi"}]})
        who = person(conn, "Webhook Kişi", "905553330001")
        drain(conn, db_url)
        run = run_of(conn, wid, who)
        assert run["status"] == "completed", steps_of(conn, run["id"])
        assert len(receiver.calls) == 1
        headers, body = receiver.calls[0]
        assert automation.verify("webhook-secret-1", headers["x-luna-timestamp"], body, headers["x-luna-signature"])
        step = steps_of(conn, run["id"])[0]
        assert headers["idempotency-key"] == f"automation:{step['id']}"
        payload = __import__("json").loads(body)
        assert payload["run_id"] == str(run["id"]) and payload["record"]["isim"] == "Webhook"
        # Running the step's job again (a replay) calls nobody.
        conn.execute("select private.enqueue_job('automation.step', %s, %s, now(), 'replay')",
                     (Jsonb({"step_id": str(step["id"])}), DEMO))
        drain(conn, db_url)
        assert len(receiver.calls) == 1


def test_a_refused_webhook_fails_the_step_visibly(db_url, conn):
    receiver = Receiver(status=410)
    with serve(receiver.app) as base:
        wid = workflow(conn, {"trigger": {"event": "lead.created"},
                              "steps": [{"id": "bildir", "type": "webhook", "url": base + "/hook"}]})
        who = person(conn, "Kapalı Uç", "905553330002")
        drain(conn, db_url)
        run = run_of(conn, wid, who)
        step = steps_of(conn, run["id"])[0]
        assert run["status"] == "failed" and step["status"] == "failed" and step["error_code"] == "http_410"
        assert "no signature" not in step["error"]
        assert "x-luna-signature" not in receiver.calls[0][0]  # no secret named: sent unsigned
