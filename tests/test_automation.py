"""The automation engine end to end on the embedded stack (issue 12): events from triggers, runs started
once per (workflow, event), steps executed by the real worker through the generic job queue, a
controllable clock (private.automation_advance_clock moves a run's due step and its job), replies and
opt-outs ending sequences, templates failing one recipient visibly. Real Postgres, no mocks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from worker.runner import Worker

from .conftest import DEMO, DEMO2, as_user

WA_CHANNEL = "00000000-0000-4000-8006-000000000101"
OWNER = "00000000-0000-4000-8001-000000000011"

FOLLOW_UP = {
    "trigger": {"event": "lead.created"},
    "exit_on_reply": True,
    "steps": [{"id": "bekle", "type": "delay", "hours": 24},
              {"id": "takip", "type": "send_message", "channel": "whatsapp", "template": "takip_24s"}],
}


def workflow(conn, definition: dict, *, tenant: str = DEMO, name: str | None = None, status: str = "active") -> str:
    """A workflow with one version (the owner as its author), switched on."""
    wid = conn.execute("insert into public.workflows (tenant_id, name, created_by) values (%s, %s, %s) returning id",
                       (tenant, name or f"wf-{uuid.uuid4().hex[:8]}", OWNER)).fetchone()["id"]
    conn.execute("insert into public.workflow_versions (tenant_id, workflow_id, version, definition) values (%s, %s, 0, %s)",
                 (tenant, wid, Jsonb(definition)))
    conn.execute("update public.workflows set status = %s where id = %s", (status, wid))
    return str(wid)


def person(conn, name: str, phone: str, *, tenant: str = DEMO, channel: str = WA_CHANNEL, custom: dict | None = None,
           window_open: bool = True) -> dict:
    """A new lead who wrote on WhatsApp: contact, conversation, customer and lead, linked as the inbox links
    them, in one transaction (so the lead.created event's run finds its contact)."""
    with conn.transaction():
        customer = conn.execute("insert into public.customers (tenant_id, full_name, phone, custom_fields) values (%s, %s, %s, %s) "
                                "returning id", (tenant, name, "+" + phone, Jsonb(custom or {}))).fetchone()["id"]
        contact = conn.execute("insert into public.contacts (tenant_id, channel, handle, display_name, phone, customer_id) "
                               "values (%s, 'whatsapp', %s, %s, %s, %s) returning id",
                               (tenant, phone, name, "+" + phone, customer)).fetchone()["id"]
        conv = conn.execute("insert into public.conversations (tenant_id, channel_account_id, contact_id, last_inbound_at) "
                            "values (%s, %s, %s, case when %s then now() end) returning id",
                            (tenant, channel, contact, window_open)).fetchone()["id"]
        lead = conn.execute("insert into public.leads (tenant_id, unique_lead_id, contact_name, phone, source) "
                            "values (%s, %s, %s, %s, 'whatsapp') returning id",
                            (tenant, "p:+" + phone, name, "+" + phone)).fetchone()["id"]
        conn.execute("update public.contacts set lead_id = %s where id = %s", (lead, contact))
        conn.execute("update public.customers set lead_id = %s where id = %s", (lead, customer))
    return {"customer": str(customer), "contact": str(contact), "conversation": str(conv), "lead": str(lead)}


def inbound(conn, who: dict, body: str, *, tenant: str = DEMO) -> str:
    """The contact writes (as the inbox stores an inbound message)."""
    return str(conn.execute("insert into public.messages (tenant_id, conversation_id, direction, type, body, provider_message_id) "
                            "values (%s, %s, 'inbound', 'text', %s, %s) returning id",
                            (tenant, who["conversation"], body, "wamid." + uuid.uuid4().hex)).fetchone()["id"])


def pending(conn) -> int:
    """Automation jobs the worker could run now, or is running."""
    return conn.execute("select count(*) as n from private.jobs where kind like 'automation.%%' and "
                        "(status = 'running' or (status = 'queued' and run_at <= now()))").fetchone()["n"]


def drain(conn, db_url: str, timeout: float = 60.0) -> None:
    """The shipped worker (in this process) runs the job queue until no automation job is due."""

    async def main():
        w = Worker(db_url, queues=["jobs"], worker_id="test-automation", poll_seconds=0.05, concurrency=16)
        task = asyncio.create_task(w.run())
        deadline = time.monotonic() + timeout
        try:
            quiet = 0
            while quiet < 3:
                if task.done():
                    task.result()
                assert time.monotonic() < deadline, "the automation jobs did not settle"
                await asyncio.sleep(0.1)
                quiet = quiet + 1 if pending(conn) == 0 else 0
        finally:
            w.stop()
            await task

    asyncio.run(main())


def runs(conn, wid: str) -> list[dict]:
    return conn.execute("select * from public.workflow_runs where workflow_id = %s order by started_at, id", (wid,)).fetchall()


def steps_of(conn, run_id) -> list[dict]:
    return conn.execute("select * from public.workflow_steps where run_id = %s order by seq", (run_id,)).fetchall()


def sent(conn, who: dict) -> list[dict]:
    return conn.execute("select m.body, m.status, o.status as outbound_status, o.error_code, o.idempotency_key "
                        "from public.messages m join public.outbound_messages o on o.message_id = m.id "
                        "where m.conversation_id = %s and m.direction = 'outbound' order by m.created_at",
                        (who["conversation"],)).fetchall()


def run_of(conn, wid: str, who: dict) -> dict:
    return conn.execute("select * from public.workflow_runs where workflow_id = %s and contact_id = %s",
                        (wid, who["contact"])).fetchone()


# ------------------------------------------------------------------------------------------------
# A lead created -> T+24h follow-up, only while there is no reply
# ------------------------------------------------------------------------------------------------
def test_follow_up_after_24h_only_without_reply(conn, db_url):
    wid = workflow(conn, FOLLOW_UP)
    ali = person(conn, "Ali Veli", "905551110001")
    ayse = person(conn, "Ayşe Kaya", "905551110002")
    # The events are rows, each with its job, before any worker ran.
    events = conn.execute("select count(*) as n from public.automation_events e join private.jobs j "
                          "on j.idempotency_key = 'automation.event:' || e.id where e.type = 'lead.created' "
                          "and e.lead_id in (%s, %s)", (ali["lead"], ayse["lead"])).fetchone()["n"]
    assert events == 2
    drain(conn, db_url)
    for who in (ali, ayse):
        run = run_of(conn, wid, who)
        assert run["status"] == "running" and run["version"] == 1
        history = steps_of(conn, run["id"])
        assert [(s["step_key"], s["status"]) for s in history] == [("bekle", "done"), ("takip", "due")]
        # due in 24 hours (the delay), not before
        assert 23.9 * 3600 < (history[1]["due_at"] - history[0]["finished_at"]).total_seconds() < 24.1 * 3600
        assert sent(conn, who) == []
    inbound(conn, ayse, "Merhaba, yarın arayabilir misiniz?")
    assert run_of(conn, wid, ayse)["status"] == "exited"
    assert run_of(conn, wid, ayse)["end_reason"] == "replied"
    # 24 hours pass (the clock override moves each run's due step and its job).
    for who in (ali, ayse):
        conn.execute("select private.automation_advance_clock(%s, interval '24 hours')", (run_of(conn, wid, who)["id"],))
    drain(conn, db_url)
    out = sent(conn, ali)
    assert len(out) == 1 and out[0]["outbound_status"] == "queued"
    assert out[0]["body"].startswith("Ali Bey/Hanım, dünkü talebiniz için kliniğimiz olarak")
    assert run_of(conn, wid, ali)["status"] == "completed"
    assert sent(conn, ayse) == []
    assert [s["status"] for s in steps_of(conn, run_of(conn, wid, ayse)["id"])] == ["done", "cancelled"]


def test_wait_for_reply_branches_and_a_reply_cancels_the_rest(conn, db_url):
    definition = {"trigger": {"event": "lead.created"}, "steps": [
        {"id": "merhaba", "type": "send_message", "template": "takip_24s"},
        {"id": "bekle", "type": "wait_for_reply", "timeout": {"hours": 24}, "on_reply": "etiket", "on_timeout": "hatirlat"},
        {"id": "hatirlat", "type": "send_message", "template": "takip_24s", "next": "end"},
        {"id": "etiket", "type": "add_tag", "tag": "yanitladi"}]}
    wid = workflow(conn, definition)
    quiet, talker = person(conn, "Can Sessiz", "905551110011"), person(conn, "Deniz Konuşkan", "905551110012")
    drain(conn, db_url)
    for who in (quiet, talker):
        assert run_of(conn, wid, who)["status"] == "waiting"
        assert len(sent(conn, who)) == 1
    inbound(conn, talker, "Evet, ilgileniyorum")
    drain(conn, db_url)
    run = run_of(conn, wid, talker)
    assert run["status"] == "completed"
    assert [(s["step_key"], s["status"]) for s in steps_of(conn, run["id"])] == [
        ("merhaba", "done"), ("bekle", "done"), ("etiket", "done")]
    assert "yanitladi" in conn.execute("select tags from public.customers where id = %s", (talker["customer"],)).fetchone()["tags"]
    assert len(sent(conn, talker)) == 1  # the reminder is never sent
    conn.execute("select private.automation_advance_clock(%s, interval '24 hours')", (run_of(conn, wid, quiet)["id"],))
    drain(conn, db_url)
    assert run_of(conn, wid, quiet)["status"] == "completed"
    assert [(s["step_key"], s["result"]) for s in steps_of(conn, run_of(conn, wid, quiet)["id"])][1] == ("bekle", {"replied": False})
    assert len(sent(conn, quiet)) == 2


# ------------------------------------------------------------------------------------------------
# Opt-out
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,opted", [("DUR", True), ("dur!", True), ("İptal", True), ("IPTAL", True),
                                        ("abonelikten cik", True), ("ABONELİKTEN ÇIK", True), ("stop.", True),
                                        ("durum nedir?", False), ("iptal etmek istemiyorum", False)])
def test_opt_out_keywords_fold_turkish_text(conn, text, opted):
    row = conn.execute("""
        select exists (select 1 from unnest(s.opt_out_keywords) k
                       where private.automation_keyword_fold(k) = private.automation_keyword_fold(%s)) as hit
        from public.automation_settings s where s.tenant_id = %s""", (text, DEMO)).fetchone()
    assert row["hit"] is opted


def test_dur_unsubscribes_confirms_once_and_later_automated_sends_skip(conn, db_url):
    wid = workflow(conn, FOLLOW_UP)
    mert = person(conn, "Mert Demir", "905551110021")
    drain(conn, db_url)
    assert run_of(conn, wid, mert)["status"] == "running"
    inbound(conn, mert, "DUR")
    opt = conn.execute("select * from public.opt_outs where contact_id = %s", (mert["contact"],)).fetchone()
    assert opt["keyword"] == "DUR" and opt["source"] == "keyword"
    run = run_of(conn, wid, mert)
    assert (run["status"], run["end_reason"]) == ("exited", "opted_out")  # at once, before any worker ran
    drain(conn, db_url)
    inbound(conn, mert, "dur")  # said twice: confirmed once
    drain(conn, db_url)
    confirmations = sent(conn, mert)
    assert len(confirmations) == 1 and confirmations[0]["body"].startswith("Aboneliğiniz iptal edildi")
    assert conn.execute("select confirmed_at from public.opt_outs where id = %s", (opt["id"],)).fetchone()["confirmed_at"]
    # A later automated send (another workflow, a new event) skips the contact, visibly.
    later = workflow(conn, {"trigger": {"event": "test.ping"},
                            "steps": [{"id": "kampanya", "type": "send_message", "template": "takip_24s"}]})
    conn.execute("select private.emit_event(%s, 'test.ping', 'contact', %s, '{}', null, %s)",
                 (DEMO, mert["contact"], Jsonb({"contact_id": mert["contact"]})))
    drain(conn, db_url)
    run = run_of(conn, later, mert)
    assert (run["status"], run["end_reason"]) == ("exited", "opted_out")
    step = steps_of(conn, run["id"])[0]
    assert step["status"] == "skipped" and step["result"]["skipped"] == "opted_out"
    out = sent(conn, mert)
    assert len(out) == 2 and (out[1]["outbound_status"], out[1]["error_code"], out[1]["status"]) == ("cancelled", "opted_out", "failed")
    # A person's own (transactional) message is not an automated send: it still goes.
    conn.execute("select public.send_message(%s, 'Talebiniz kaydedildi.')", (mert["conversation"],))
    assert sent(conn, mert)[-1]["outbound_status"] == "queued"


def test_marketing_template_to_an_opted_out_contact_is_cancelled(conn):
    """The guard also holds for commercial sends outside the engine (a MARKETING template)."""
    who = person(conn, "Selin Pazar", "905551110031")
    conn.execute("insert into public.message_templates (tenant_id, channel_account_id, name, language, category, status, components, variables) "
                 "values (%s, %s, 'kampanya', 'tr', 'MARKETING', 'APPROVED', '[]', 0)", (DEMO, WA_CHANNEL))
    conn.execute("insert into public.opt_outs (tenant_id, contact_id, channel, handle, source) values (%s, %s, 'whatsapp', 'x', 'manual')",
                 (DEMO, who["contact"]))
    conn.execute("select public.send_message(%s, null, '{\"name\": \"kampanya\", \"language\": \"tr\"}')", (who["conversation"],))
    assert sent(conn, who)[0]["error_code"] == "opted_out"


# ------------------------------------------------------------------------------------------------
# Once per (workflow, event)
# ------------------------------------------------------------------------------------------------
def test_the_same_event_delivered_twice_starts_one_run(conn, db_url):
    wid = workflow(conn, {"trigger": {"event": "order.status_changed"},
                          "steps": [{"id": "etiket", "type": "add_tag", "tag": "kargoda"}]})
    who = person(conn, "Oya Sipariş", "905551110041")
    args = (DEMO, who["customer"], Jsonb({"status": "shipped"}), Jsonb({"customer_id": who["customer"]}))
    sql = "select private.emit_event(%s, 'order.status_changed', 'order', %s, %s, 'order-77:shipped', %s) as id"
    first = conn.execute(sql, args).fetchone()["id"]
    again = conn.execute(sql, args).fetchone()["id"]
    assert first == again
    # The event's job delivered twice (a replay), and the start function called again by hand.
    conn.execute("select private.enqueue_job('automation.event', jsonb_build_object('event_id', %s::bigint), %s, now(), "
                 "'automation.event:' || %s)", (first, DEMO, first))
    drain(conn, db_url)
    assert conn.execute("select private.automation_start_runs(%s) as n", (first,)).fetchone()["n"] == 0
    drain(conn, db_url)
    assert len(runs(conn, wid)) == 1 and runs(conn, wid)[0]["status"] == "completed"
    assert conn.execute("select count(*) as n from private.jobs where kind = 'automation.event' and payload ->> 'event_id' = %s",
                        (str(first),)).fetchone()["n"] == 1


def test_a_run_keeps_the_version_it_started_with(conn, db_url):
    wid = workflow(conn, FOLLOW_UP)
    who = person(conn, "Eski Sürüm", "905551110051")
    drain(conn, db_url)
    changed = json.loads(json.dumps(FOLLOW_UP))
    changed["steps"][1] = {"id": "takip", "type": "add_tag", "tag": "v2"}
    conn.execute("insert into public.workflow_versions (tenant_id, workflow_id, version, definition) values (%s, %s, 0, %s)",
                 (DEMO, wid, Jsonb(changed)))
    assert conn.execute("select current_version from public.workflows where id = %s", (wid,)).fetchone()["current_version"] == 2
    run = run_of(conn, wid, who)
    conn.execute("select private.automation_advance_clock(%s, interval '24 hours')", (run["id"],))
    drain(conn, db_url)
    assert run_of(conn, wid, who)["version"] == 1
    assert len(sent(conn, who)) == 1  # version 1's step: the message, not v2's tag
    newer = person(conn, "Yeni Sürüm", "905551110052")
    drain(conn, db_url)
    assert run_of(conn, wid, newer)["version"] == 2


# ------------------------------------------------------------------------------------------------
# Templates
# ------------------------------------------------------------------------------------------------
def test_render_variables_defaults_and_missing(conn):
    ok = conn.execute("select private.automation_render('{{isim|Merhaba}}, {{ firma }} / {{customer.region|?}}', %s) as t",
                      (Jsonb({"firma": "Demo Klinik", "customer": {"region": "İzmir"}}),)).fetchone()["t"]
    assert ok == "Merhaba, Demo Klinik / İzmir"
    with pytest.raises(psycopg.Error) as missing:
        conn.execute("select private.automation_render('Merhaba {{isim}}', '{}')")
    assert missing.value.diag.message_detail == "code=template_variable_missing" and missing.value.diag.message_hint == "isim"


def test_a_missing_variable_fails_that_recipient_visibly_and_the_rest_go(conn, db_url):
    conn.execute("insert into public.automation_templates (tenant_id, name, language, body) values (%s, 'randevu', 'tr', "
                 "'Merhaba {{isim}}, randevunuz {{randevu_tarihi}} tarihinde.')", (DEMO,))
    conn.execute("insert into public.automation_templates (tenant_id, name, language, body) values (%s, 'randevu', 'en', "
                 "'Hello {{isim}}, your appointment is on {{randevu_tarihi}}.')", (DEMO,))
    wid = workflow(conn, {"trigger": {"event": "lead.created"},
                          "steps": [{"id": "hatirlat", "type": "send_message", "template": "randevu"}]})
    has = person(conn, "Zehra Tarih", "905551110061", custom={"randevu_tarihi": "5 Aralık"})
    lacks = person(conn, "Yusuf Eksik", "905551110062")
    english = person(conn, "John Smith", "905551110063", custom={"randevu_tarihi": "5 December", "language": "en"})
    drain(conn, db_url)
    assert sent(conn, has)[0]["body"] == "Merhaba Zehra, randevunuz 5 Aralık tarihinde."
    assert sent(conn, english)[0]["body"] == "Hello John, your appointment is on 5 December."
    run = run_of(conn, wid, lacks)
    assert run["status"] == "failed" and run["end_reason"].startswith("template_variable_missing")
    step = steps_of(conn, run["id"])[0]
    assert step["status"] == "failed" and step["error_code"] == "template_variable_missing" and "randevu_tarihi" in step["error"]
    assert sent(conn, lacks) == []


def test_whatsapp_outside_the_window_uses_the_mapped_approved_template(conn, db_url):
    conn.execute("insert into public.automation_templates (tenant_id, name, language, body, whatsapp_template, whatsapp_variables) "
                 "values (%s, 'hatirlatma', 'tr', 'Merhaba {{isim}}, {{randevu_tarihi}} randevunuz var.', 'randevu_hatirlatma', "
                 "'{isim,randevu_tarihi}')", (DEMO,))
    workflow(conn, {"trigger": {"event": "lead.created"},
                    "steps": [{"id": "h", "type": "send_message", "template": "hatirlatma"}]})
    who = person(conn, "Pelin Pencere", "905551110071", custom={"randevu_tarihi": "6 Aralık"}, window_open=False)
    drain(conn, db_url)
    req = conn.execute("select o.request from public.outbound_messages o join public.messages m on m.id = o.message_id "
                       "where m.conversation_id = %s", (who["conversation"],)).fetchone()["request"]
    assert req["type"] == "template" and req["template"]["name"] == "randevu_hatirlatma"
    assert req["template"]["variables"] == ["Pelin", "6 Aralık"]


# ------------------------------------------------------------------------------------------------
# Conditions and CRM actions
# ------------------------------------------------------------------------------------------------
def test_condition_tags_fields_tasks_and_stage_moves(conn, db_url):
    stages = {r["name"]: r["id"] for r in conn.execute(
        "select s.name, s.id, s.pipeline_id from public.pipeline_stages s join public.pipelines p on p.id = s.pipeline_id "
        "where p.tenant_id = %s and p.is_default", (DEMO,))}
    pipeline = conn.execute("select id from public.pipelines where tenant_id = %s and is_default", (DEMO,)).fetchone()["id"]
    wid = workflow(conn, {"trigger": {"event": "tag.added", "if": {"field": "event.tag", "value": "sicak"}}, "steps": [
        {"id": "vip-mi", "type": "condition", "if": {"all": [{"has_tag": "sicak"}, {"channel": "whatsapp"},
                                                            {"field": "region", "op": "in", "value": ["İzmir", "Ankara"]}]},
         "then": "tasi", "else": "end"},
        {"id": "tasi", "type": "move_stage", "stage": "Görüşülüyor"},
        {"id": "not", "type": "update_field", "field": "custom_fields.kaynak", "value": "otomasyon {{isim}}"},
        {"id": "gorev", "type": "create_task", "title": "{{ad_soyad}} ile görüş", "due_in": {"hours": 2}}]})
    izmir = person(conn, "İpek Sıcak", "905551110081")
    other = person(conn, "Oğuz Başka", "905551110082")
    conn.execute("update public.customers set region = 'İzmir' where id = %s", (izmir["customer"],))
    conn.execute("update public.customers set region = 'Van' where id = %s", (other["customer"],))
    for who in (izmir, other):
        conn.execute("insert into public.cards (tenant_id, pipeline_id, stage_id, customer_id) values (%s, %s, %s, %s)",
                     (DEMO, pipeline, stages["Potansiyel"], who["customer"]))
    conn.execute("update public.customers set tags = tags || '{soguk}' where id = %s", (izmir["customer"],))  # not the trigger's tag
    for who in (izmir, other):
        conn.execute("update public.customers set tags = tags || '{sicak}' where id = %s", (who["customer"],))
    drain(conn, db_url)
    assert len(runs(conn, wid)) == 2
    done = run_of(conn, wid, izmir) or runs(conn, wid)[0]
    by_customer = {str(r["customer_id"]): r for r in runs(conn, wid)}
    done, skipped = by_customer[izmir["customer"]], by_customer[other["customer"]]
    assert done["status"] == "completed", steps_of(conn, done["id"])
    assert [s["status"] for s in steps_of(conn, done["id"])] == ["done"] * 4
    card = conn.execute("select stage_id from public.cards where customer_id = %s", (izmir["customer"],)).fetchone()
    assert card["stage_id"] == stages["Görüşülüyor"]
    cust = conn.execute("select custom_fields from public.customers where id = %s", (izmir["customer"],)).fetchone()
    assert cust["custom_fields"]["kaynak"] == "otomasyon İpek"
    task = conn.execute("select title, owner_id from public.reminders where customer_id = %s", (izmir["customer"],)).fetchone()
    assert task["title"] == "İpek Sıcak ile görüş" and str(task["owner_id"]) == OWNER
    assert skipped["status"] == "completed" and [s["result"] for s in steps_of(conn, skipped["id"])] == [{"matched": False}]
    moved = conn.execute("select count(*) as n from public.automation_events where type = 'card.stage_changed' and customer_id = %s",
                         (izmir["customer"],)).fetchone()["n"]
    assert moved == 1


def test_delay_until_a_time_of_day_in_the_tenant_time_zone(conn):
    wid = workflow(conn, {"trigger": {"event": "test.tz"}, "steps": [{"id": "sabah", "type": "delay", "until": "09:30"},
                                                                    {"id": "t", "type": "add_tag", "tag": "x"}]})
    who = person(conn, "Saat Dilimi", "905551110091")
    ev = conn.execute("select private.emit_event(%s, 'test.tz', 'customer', %s, '{}', null, %s) as id",
                      (DEMO, who["customer"], Jsonb({"customer_id": who["customer"]}))).fetchone()["id"]
    conn.execute("select private.automation_start_runs(%s)", (ev,))
    run = runs(conn, wid)[0]
    first = steps_of(conn, run["id"])[0]
    conn.execute("select private.automation_run_step(%s)", (first["id"],))
    due = steps_of(conn, run["id"])[1]["due_at"]
    local = conn.execute("select (%s::timestamptz at time zone 'Europe/Istanbul') as t, "
                         "%s::timestamptz - now() as wait", (due, due)).fetchone()
    assert (local["t"].hour, local["t"].minute) == (9, 30)
    assert 0 < local["wait"].total_seconds() <= 24 * 3600


def test_pause_resume_and_cancel(conn, db_url):
    wid = workflow(conn, FOLLOW_UP)
    who = person(conn, "Durak Bekle", "905551110101")
    drain(conn, db_url)
    run = run_of(conn, wid, who)
    with as_user(conn, "viewer@demo.luna.local", rollback=True) as cur, pytest.raises(psycopg.errors.InsufficientPrivilege):
        cur.execute("select public.set_workflow_run_status(%s, 'pause')", (run["id"],))
    with as_user(conn, "agent@demo-2.luna.local", rollback=True) as cur, pytest.raises(psycopg.errors.NoDataFound):
        cur.execute("select public.set_workflow_run_status(%s, 'pause')", (run["id"],))
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        assert cur.execute("select (public.set_workflow_run_status(%s, 'pause')).status", (run["id"],)).fetchone()["status"] == "paused"
    conn.execute("select private.automation_advance_clock(%s, interval '24 hours')", (run["id"],))
    drain(conn, db_url)
    assert sent(conn, who) == [] and run_of(conn, wid, who)["status"] == "paused"
    conn.execute("select public.set_workflow_run_status(%s, 'resume')", (run["id"],))
    drain(conn, db_url)
    assert len(sent(conn, who)) == 1 and run_of(conn, wid, who)["status"] == "completed"
    other = person(conn, "İptal Edilen", "905551110102")
    drain(conn, db_url)
    conn.execute("select public.set_workflow_run_status(%s, 'cancel')", (run_of(conn, wid, other)["id"],))
    conn.execute("select private.automation_advance_clock(%s, interval '24 hours')", (run_of(conn, wid, other)["id"],))
    drain(conn, db_url)
    assert run_of(conn, wid, other)["status"] == "cancelled" and sent(conn, other) == []


def test_history_is_readable_under_rls(conn, db_url):
    wid = workflow(conn, FOLLOW_UP)
    person(conn, "Geçmiş Görünür", "905551110111")
    drain(conn, db_url)
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        rows = cur.execute("select r.status, s.step_key, s.status as step_status from public.workflow_runs r "
                           "join public.workflow_steps s on s.run_id = r.id where r.workflow_id = %s order by s.seq", (wid,)).fetchall()
        assert [r["step_key"] for r in rows] == ["bekle", "takip"]
        assert cur.execute("select count(*) as n from public.workflow_run_history where workflow_id = %s", (wid,)).fetchone()["n"] == 2
    with as_user(conn, "owner@demo-2.luna.local", rollback=True) as cur:
        assert cur.execute("select count(*) as n from public.workflow_runs where workflow_id = %s", (wid,)).fetchone()["n"] == 0
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur, pytest.raises(psycopg.errors.InsufficientPrivilege):
        cur.execute("insert into public.workflows (tenant_id, name) values (%s, 'agent cannot')", (DEMO,))
