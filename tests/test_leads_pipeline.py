"""The orchestrator end to end: demo leads RAW -> QUALIFIED with HOT/WARM/COLD, no double
processing with two workers, a killed worker's leases taken back (TIMEOUT_DETECTED -> retried), the
review RPCs (verdict stored next to the AI's, logged, audited)."""

import time

import psycopg
import pytest

from .conftest import DEMO, DEMO2, as_user, run_workers


async def run_until(db_url, until, n_workers=1, timeout=30, **kw):
    """conftest.run_workers on the leads queue unless told otherwise."""
    kw.setdefault("queues", ["leads"])
    return await run_workers(db_url, until, n_workers=n_workers, timeout=timeout, **kw)


async def scalar(db_url, sql, *params):
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        return (await (await c.execute(sql, params)).fetchone())[0]


QUALIFIED_OR_LATER = {"QUALIFIED", "CRM_SYNCED", "NURTURING", "COMPLETED"}


def settled(db_url):
    return lambda: scalar(db_url, "select count(*) = 0 from leads where next_orchestrator_module is not null")


async def test_demo_leads_go_raw_to_qualified(db_url, conn):
    before = conn.execute("select processing_status as s, count(*) as n from leads group by 1").fetchall()
    assert [(r["s"], r["n"]) for r in before] == [("RAW", 7)]
    await run_until(db_url, settled(db_url))
    leads = conn.execute("select * from leads order by company_name").fetchall()
    # QUALIFIED is where this pipeline ends; the CRM area routes QUALIFIED leads on (crm_sync) when present.
    assert all(l["qualified_at"] is not None for l in leads)
    assert {l["processing_status"] for l in leads} <= QUALIFIED_OR_LATER
    assert {l["lead_category"] for l in leads} == {"HOT", "WARM", "COLD"}
    for l in leads:
        assert l["luna_ai_decision"] == "OK" and 0 <= l["luna_ai_score"] <= 100
        assert l["ai_provider"] == "offline" and l["ai_model"] and l["ai_prompt_version"] == "lead-qualify-v1"
        assert len(l["luna_ai_reason"].split()) <= 50 and "corporate" in l["luna_ai_reason"] or "contact_name" in l["luna_ai_reason"]
        assert l["company_size_category"] in ("Küçük", "Orta", "Büyük", "Kurumsal") and l["sector_category"]
    gulus = next(l for l in leads if l["company_name"].startswith("Gülüş"))
    assert gulus["sector_category"] == "Sağlık" and gulus["lead_category"] == "HOT"
    assert "paid_campaign +10" in gulus["luna_ai_reason"]
    kaya = next(l for l in leads if l["company_name"] == "Kaya Otel")
    assert kaya["lead_category"] == "COLD" and kaya["domain_cleaned"] is None  # gmail is not a company domain
    steps = conn.execute("""select module, from_status, to_status from processing_logs where lead_id = %s
                            order by id""", (gulus["id"],)).fetchall()
    assert [
        ("ingest", None, "RAW"), ("normalize", "RAW", "NORMALIZED"), ("enrich", "NORMALIZED", "ENRICHED"),
        ("qualify", "ENRICHED", "QUALIFIED")][:4] == [(s["module"], s["from_status"], s["to_status"]) for s in steps][:4]
    metrics = conn.execute("select module, sum(processed) as n from system_metrics where module in ('normalize', 'enrich', 'qualify') group by 1 order by 1").fetchall()
    assert [(m["module"], m["n"]) for m in metrics] == [("enrich", 7), ("normalize", 7), ("qualify", 7)]
    # both tenants were processed, and the views read them
    by_tenant = conn.execute("select tenant_id, count(*) as n from lead_funnel_daily group by 1").fetchall()
    assert {str(r["tenant_id"]) for r in by_tenant} == {DEMO, DEMO2}
    assert conn.execute("select avg_processing_ms from lead_processing_time where tenant_id = %s", (DEMO,)).fetchone()["avg_processing_ms"] is not None


def add_leads(conn, n, tenant=DEMO):
    conn.execute("""select private.ingest_lead(%s, 'form', jsonb_build_object(
                      'company_name', 'Firma ' || i, 'email', 'info@firma' || i || '.com.tr', 'phone', '0532' || lpad(i::text, 7, '0')))
                    from generate_series(1, %s) i""", (tenant, n))


async def test_two_workers_never_process_the_same_lead(db_url, conn):
    add_leads(conn, 300)
    workers = await run_until(db_url, settled(db_url), n_workers=2, batch=25, concurrency=25)
    dup = conn.execute("""select lead_id, module, count(*) from processing_logs where module in ('normalize', 'enrich', 'qualify')
                          group by 1, 2 having count(*) > 1""").fetchall()
    assert dup == []
    assert conn.execute("select count(*) as n from leads where qualified_at is not null").fetchone()["n"] == 307
    assert all(w.processed > 0 for w in workers), "both workers took part"


async def test_killed_worker_leads_are_taken_back(db_url, conn):
    add_leads(conn, 20)
    conn.execute("set role service_role")
    claimed = conn.execute("select * from private.leads_claim('dead-worker', 10, 1)").fetchall()
    conn.execute("reset role")
    assert len(claimed) == 10
    time.sleep(1.2)
    assert conn.execute("select private.leads_rescue() as n").fetchone()["n"] == 10
    timed_out = conn.execute("select * from leads where processing_status = 'TIMEOUT_DETECTED'").fetchall()
    assert len(timed_out) == 10 and {l["resume_status"] for l in timed_out} == {"RAW"}
    assert {l["next_orchestrator_module"] for l in timed_out} == {"recover"}
    conn.execute("update leads set next_attempt_at = now() where processing_status = 'TIMEOUT_DETECTED'")  # skip the backoff
    await run_until(db_url, settled(db_url))
    ids = [c["id"] for c in claimed]
    statuses = conn.execute("select processing_status as s from leads where id = any(%s)", (ids,)).fetchall()
    assert {s["s"] for s in statuses} <= QUALIFIED_OR_LATER
    log = conn.execute("select module, action, to_status from processing_logs where lead_id = %s order by id", (ids[0],)).fetchall()
    assert ("orchestrator", "timeout", "TIMEOUT_DETECTED") in [(l["module"], l["action"], l["to_status"]) for l in log]
    assert ("recover", "recover", "RAW") in [(l["module"], l["action"], l["to_status"]) for l in log]
    # the dead worker can no longer complete what it held
    conn.execute("set role service_role")
    assert conn.execute("select private.leads_complete('dead-worker', %s, null) as n", (ids,)).fetchone()["n"] == 0
    conn.execute("reset role")


async def test_review_rpcs_store_the_human_verdict(db_url, conn):
    conn.execute("""select private.ingest_lead(%s, 'csv', '{"company_name": "Sadece İsim Ltd."}')""", (DEMO,))
    conn.execute("""select private.ingest_lead(%s, 'form', '{"company_name": "Test Firma", "email": "test@testfirma.com"}')""", (DEMO,))
    await run_until(db_url, settled(db_url))
    human = conn.execute("select * from leads where company_name = 'Sadece İsim Ltd.'").fetchone()
    assert human["processing_status"] == "HUMAN_REVIEW_NEEDED" and human["luna_ai_decision"] == "HUMAN"
    assert "no_contact_channel" in human["luna_ai_reason"]
    spam = conn.execute("select * from leads where company_name = 'Test Firma'").fetchone()
    assert spam["processing_status"] == "REJECTED" and "spam_pattern" in spam["luna_ai_reason"]

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_user(conn, "viewer@demo.luna.local") as cur:
            cur.execute("select public.approve_lead(%s, 'ok')", (human["id"],))
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        row = cur.execute("select * from public.approve_lead(%s, 'Aradım, gerçek müşteri')", (human["id"],)).fetchone()
    assert row["processing_status"] == "QUALIFIED" and row["human_decision"] == "OK" and row["luna_ai_decision"] == "HUMAN"
    await run_until(db_url, settled(db_url))  # the CRM route (if any) takes the approved lead on
    assert row["reviewed_by"] is not None and row["lead_category"] == human["lead_category"] == "COLD"
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        row = cur.execute("select * from public.reject_lead(%s, 'spam')", (spam["id"],)).fetchone()
    assert row["processing_status"] == "REJECTED" and row["human_decision"] == "REJECT" and row["luna_ai_decision"] == "REJECT"
    with as_user(conn, "agent@demo.luna.local") as cur:
        row = cur.execute("select * from public.requeue_lead(%s, 'yeniden dene')", (spam["id"],)).fetchone()
    assert row["processing_status"] == "RAW" and row["next_orchestrator_module"] == "normalize"
    # a user of another tenant cannot touch it
    with pytest.raises(psycopg.Error) as err:
        with as_user(conn, "owner@demo-2.luna.local") as cur:
            cur.execute("select public.approve_lead(%s)", (human["id"],))
    assert err.value.sqlstate == "PT404"
    logs = conn.execute("select module, action from processing_logs where module = 'review' order by id").fetchall()
    assert [(l["module"], l["action"]) for l in logs] == [("review", "approve"), ("review", "reject"), ("review", "requeue")]
    audit = conn.execute("select action, actor_role from audit.events where resource_type = 'public.leads' order by seq").fetchall()
    assert [a["action"] for a in audit] == ["lead.approve", "lead.reject", "lead.requeue"]
    assert audit[0]["actor_role"] == "supervisor"
    acc = conn.execute("select * from lead_ai_accuracy where tenant_id = %s", (DEMO,)).fetchone()
    assert acc["reviewed"] == 2 and acc["agreed"] == 1


def test_worker_claims_by_priority(conn):
    conn.execute("delete from leads")
    for source, name in (("csv", "Liste"), ("inbox", "DM"), ("form", "Form")):
        conn.execute("select private.ingest_lead(%s, %s, %s)", (DEMO, source, psycopg.types.json.Jsonb(
            {"company_name": name, "email": f"a@{name.lower()}.com"})))
    conn.execute("set role service_role")
    order = [conn.execute("select lead ->> 'company_name' as c from private.leads_claim('w', 1, 60)").fetchone()["c"]
             for _ in range(3)]
    conn.execute("reset role")
    assert order == ["DM", "Form", "Liste"]


def test_refused_move_goes_to_review_without_failing_the_batch(conn):
    add_leads(conn, 2)
    conn.execute("set role service_role")
    claimed = conn.execute("select id from private.leads_claim('w', 100, 60)").fetchall()
    ids = [c["id"] for c in claimed]
    good = {"status": "NORMALIZED", "action": "normalize"}
    bad = {"status": "COMPLETED", "action": "normalize"}  # RAW -> COMPLETED is not a transition
    n = conn.execute("select private.leads_complete('w', %s, %s::jsonb[]) as n",
                     (ids, [psycopg.types.json.Jsonb(bad)] + [psycopg.types.json.Jsonb(good)] * (len(ids) - 1))).fetchone()["n"]
    conn.execute("reset role")
    assert n == len(ids)
    first = conn.execute("select * from leads where id = %s", (ids[0],)).fetchone()
    assert first["processing_status"] == "HUMAN_REVIEW_NEEDED" and "RAW -> COMPLETED" in first["last_error"]
    assert {r["processing_status"] for r in conn.execute("select processing_status from leads where id = any(%s)", (ids[1:],))} == {"NORMALIZED"}
    log = conn.execute("select result, detail from processing_logs where lead_id = %s order by id desc limit 1", (ids[0],)).fetchone()
    assert log["result"] == "error" and "refused move" in log["detail"]["error"]
