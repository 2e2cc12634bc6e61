"""A failed job must be visible (issue 10, item 12): every queue's terminal failure ends in a status,
a processing_logs row and a row of its dead_letter_* view with the provider's reason; a Meta lead ad
deleted before it was fetched marks its webhook record failed with the Graph API's answer."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from .conftest import DEMO, as_user, run_workers
from .fakes import serve
from .fakes.graph import FakeGraph
from .test_inbox import drain

PAGE = "100000000000001"  # the demo tenant's Meta lead source (seed)


async def _run_jobs(db_url, until, timeout=30):
    await run_workers(db_url, until, queues=["jobs"], timeout=timeout)


async def test_meta_lead_deleted_before_fetch_is_a_visible_failure(conn, db_url):
    leadgen = "4444000000999"  # not (any more) in the Graph API
    webhook = conn.execute("""insert into private.lead_webhooks (provider, external_id, tenant_id, payload, status)
                              values ('meta_leadgen', %s, %s, %s, 'received') returning id""",
                           (leadgen, DEMO, Jsonb({"leadgen_id": leadgen, "page_id": PAGE, "form_id": "9000"}))).fetchone()["id"]
    job = conn.execute("select private.enqueue_job('leads.meta_fetch', %s, %s, now(), %s) as id",
                       (Jsonb({"webhook_id": webhook, "leadgen_id": leadgen, "page_id": PAGE, "form_id": "9000"}), DEMO,
                        f"meta-leadgen:{leadgen}")).fetchone()["id"]
    app = FakeGraph(token="page-token").app
    with serve(app) as base:
        conn.execute("update lead_sources set config = config || %s where kind = 'meta' and tenant_id = %s",
                     (Jsonb({"access_token": "page-token", "graph_base_url": base}), DEMO))
        await _run_jobs(db_url, lambda: conn.execute("select status from private.jobs where id = %s",
                                                     (job,)).fetchone()["status"] == "failed")
    hook = conn.execute("select status, error from private.lead_webhooks where id = %s", (webhook,)).fetchone()
    assert hook["status"] == "failed" and hook["error"].startswith("code=graph_100_33:") and "does not exist" in hook["error"]
    assert "graph_100_33" in conn.execute("select last_error from private.jobs where id = %s", (job,)).fetchone()["last_error"]
    logs = conn.execute("select module, error, detail from processing_logs where tenant_id = %s and action = 'dead_letter' "
                        "order by id", (DEMO,)).fetchall()
    assert {lg["module"] for lg in logs} == {"jobs", "lead_webhooks"}
    assert all("graph_100_33" in lg["error"] for lg in logs)
    owner_note = conn.execute("""select n.* from notifications n join tenant_members m on m.user_id = n.user_id
                                 and m.tenant_id = n.tenant_id where n.tenant_id = %s and n.kind = 'dead_letter'
                                 and m.role = 'owner'""", (DEMO,)).fetchall()
    assert len(owner_note) == 1 and owner_note[0]["data"]["provider_code"] == "graph_100_33"
    with as_user(conn, "owner@demo.luna.local") as cur:
        jobs = cur.execute("select * from public.dead_letter_jobs").fetchall()
        hooks = cur.execute("select * from public.dead_letter_lead_webhooks").fetchall()
        every = cur.execute("select queue, id from public.dead_letters_all").fetchall()
    assert [(j["id"], j["kind"], j["provider_code"]) for j in jobs] == [(str(job), "leads.meta_fetch", "graph_100_33")]
    assert [(h["id"], h["provider_code"]) for h in hooks] == [(str(webhook), "graph_100_33")]
    assert {("jobs", str(job)), ("lead_webhooks", str(webhook))} <= {(e["queue"], e["id"]) for e in every}
    # Another tenant's people see none of it.
    with as_user(conn, "owner@demo-2.luna.local") as cur:
        assert cur.execute("select count(*) as n from public.dead_letters_all where tenant_id = %s",
                           (DEMO,)).fetchone()["n"] == 0


def test_outbound_inbound_and_lead_failures_are_dead_letters(conn, db_url):
    # Outbound: the demo WhatsApp channel has no credentials: a permanent failure with its code.
    conv = "00000000-0000-4000-8006-000000000131"
    conn.execute("update public.conversations set last_inbound_at = now(), assignee_id = null where id = %s", (conv,))
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        msg = cur.execute("select * from public.send_message(%s, 'Merhaba')", (conv,)).fetchone()
    drain(db_url, "inbox_outbound")
    out = conn.execute("select id, status from public.outbound_messages where message_id = %s", (msg["id"],)).fetchone()
    assert out["status"] == "failed"
    # Inbound: an event the worker cannot read (a date that is no date) fails permanently.
    conn.execute("select * from private.receive_event('webchat', 'webchat:bad-date', %s, '{}', null, null, %s)",
                 (Jsonb({"from": "visitor-dead-1", "message_id": "webchat:bad:1", "body": "Merhaba", "date": "yarın"}),
                  "00000000-0000-4000-8006-000000000103"))
    drain(db_url)
    bad = conn.execute("select id, status, last_error from private.inbound_events where provider_event_id = 'webchat:bad-date'"
                       ).fetchone()
    assert bad["status"] == "failed", bad
    # Leads: one left in its route's failure status with the provider's error.
    lead = conn.execute("""insert into public.leads (tenant_id, unique_lead_id, contact_name, company_name, source,
                                                     processing_status) values (%s, 'e:dl@acme.example', 'DL', 'Acme', 'form',
                                                     'QUALIFIED') returning id""", (DEMO,)).fetchone()["id"]
    conn.execute("update public.leads set processing_status = 'CRM_ERROR', last_error = 'code=zoho_500: Zoho answered 500', "
                 "next_orchestrator_module = null where id = %s", (lead,))
    with as_user(conn, "admin@demo.luna.local") as cur:
        outs = {r["id"]: r for r in cur.execute("select * from public.dead_letter_outbound_messages").fetchall()}
        ins = {r["id"]: r for r in cur.execute("select * from public.dead_letter_inbound_events").fetchall()}
        leads = {r["id"]: r for r in cur.execute("select * from public.dead_letter_leads").fetchall()}
    assert outs[str(out["id"])]["provider_code"] == "no_credentials"
    assert str(bad["id"]) in ins and ins[str(bad["id"])]["reason"]
    assert leads[str(lead)]["provider_code"] == "zoho_500" and leads[str(lead)]["status"] == "CRM_ERROR"
    logged = {(r["module"], r["detail"]["id"]) for r in conn.execute(
        "select module, detail from processing_logs where tenant_id = %s and action = 'dead_letter'", (DEMO,)).fetchall()}
    assert ("outbound_messages", str(out["id"])) in logged and ("inbound_events", str(bad["id"])) in logged
    # An agent limited to assigned records sees no queue's failures.
    conn.execute("update public.tenant_policies set agents_see_assigned_only = true where tenant_id = %s", (DEMO,))
    with as_user(conn, "agent@demo.luna.local") as cur:
        assert cur.execute("select count(*) as n from public.dead_letters_all").fetchone()["n"] == 0
