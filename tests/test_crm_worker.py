"""The CRM's worker side: LUNA Module 4.1 (qualified leads into the CRM), due reminders, the Zoho
outbound sync against a fake, and rep notices."""


import psycopg
import pytest
from psycopg.types.json import Jsonb

from worker.errors import JobError
from worker.registry import Context
from worker.runner import open_pool

from .conftest import DEMO, as_user, run_workers
from .fakes import serve
from .fakes.zoho import create_app as zoho_app

AGENT = "00000000-0000-4000-8001-000000000014"
AGENT2 = "00000000-0000-4000-8001-000000000016"
AHMET = "00000000-0000-4000-8005-000000000101"
CARD_AHMET = "00000000-0000-4000-8005-000000000501"


def add_lead(conn, key, category="HOT", phone=None, email=None, name="Test Kişi", city=None, status="QUALIFIED"):
    return conn.execute("""
        insert into public.leads (tenant_id, unique_lead_id, contact_name, company_name, phone, email, city, source,
                                  utm_campaign, processing_status, lead_category, luna_ai_score, luna_ai_decision)
        values (%s, %s, %s, 'Acme Ltd', %s, %s, %s, 'meta_form', 'kasim', %s, %s, 85, 'OK') returning id""",
                        (DEMO, key, name, phone, email, city, status, category)).fetchone()["id"]


async def run_until(db_url, until, queues, timeout=30):
    await run_workers(db_url, until, queues=queues, timeout=timeout, poll_seconds=0.1)


async def fetch(db_url, sql, *args):
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        return await (await c.execute(sql, args)).fetchone()


async def test_qualified_leads_reach_the_crm(db_url, conn):
    hot_known = add_lead(conn, "p:+905321112233", phone="0532 111 22 33", name="Ahmet Y.")
    hot_new = add_lead(conn, "e:yeni@acme.com", email="yeni@acme.com", phone="+905469990011", name="Yeni Müşteri")
    warm = add_lead(conn, "e:warm@acme.com", category="WARM", email="warm@acme.com")
    assert conn.execute("select next_orchestrator_module as m from leads where id = %s", (hot_new,)).fetchone()["m"] == "crm_sync"
    mine = [str(hot_known), str(hot_new), str(warm)]

    async def settled():
        row = await fetch(db_url, "select count(*) from leads where id::text = any(%s) and processing_status in ('CRM_SYNCED', 'NURTURING', 'CRM_ERROR')", mine)
        return row[0] == 3

    await run_until(db_url, settled, ["leads"])
    rows = {str(r["id"]): r for r in conn.execute("select id, processing_status, assigned_to, last_error from leads where id::text = any(%s)", (mine,))}
    assert rows[str(hot_known)]["processing_status"] == "CRM_SYNCED", rows[str(hot_known)]["last_error"]
    assert rows[str(hot_new)]["processing_status"] == "CRM_SYNCED"
    assert rows[str(warm)]["processing_status"] == "NURTURING"
    # the known phone matched Ahmet; his rep (responsible) got it; his open card was reused
    assert str(rows[str(hot_known)]["assigned_to"]) == AGENT
    assert conn.execute("select count(*) as n from cards where customer_id = %s", (AHMET,)).fetchone()["n"] == 1
    assert conn.execute("select lead_id from customers where id = %s", (AHMET,)).fetchone()["lead_id"] is not None
    # the new one: a customer with attribution, a card in Potansiyel, a round-robin rep, notified in-app
    c = conn.execute("select * from customers where email = 'yeni@acme.com'").fetchone()
    assert c["phone"] == "+905469990011" and c["source"] == "meta_form" and c["campaign"] == "kasim" and c["quality_score"] == 85
    rep = rows[str(hot_new)]["assigned_to"]
    assert str(rep) in (AGENT, AGENT2) and [str(x) for x in c["responsibles"]] == [str(rep)]
    card = conn.execute("""select s.name from cards cd join pipeline_stages s on s.id = cd.stage_id where cd.customer_id = %s""", (c["id"],)).fetchone()
    assert card["name"] == "Potansiyel"
    assert conn.execute("select 1 from notifications where user_id = %s and kind = 'lead_assigned' and customer_id = %s", (rep, c["id"])).fetchone()
    assert conn.execute("select 1 from timeline_events where customer_id = %s and event_type = 'lead_synced'", (c["id"],)).fetchone()
    log = conn.execute("select module, to_status from processing_logs where lead_id = %s order by created_at desc limit 1", (hot_new,)).fetchone()
    assert log == {"module": "crm_sync", "to_status": "CRM_SYNCED"}


async def test_sync_failure_is_crm_error_with_the_reason(db_url, conn):
    conn.execute("update tenant_members set attributes = '{\"sales_rep\": \"false\"}' where tenant_id = %s and role = 'agent'", (DEMO,))
    lead = add_lead(conn, "e:nobody@acme.com", email="nobody@acme.com")

    async def settled():
        row = await fetch(db_url, "select processing_status from leads where id = %s", lead)
        return row[0] == "CRM_ERROR"

    await run_until(db_url, settled, ["leads"])
    row = conn.execute("select last_error from leads where id = %s", (lead,)).fetchone()
    assert "no active sales rep" in row["last_error"]
    # a person fixes the cause and retries from SQL: not leased, so the function applies the status
    conn.execute("update tenant_members set attributes = '{}' where tenant_id = %s", (DEMO,))
    conn.execute("set role service_role")
    result = conn.execute("select private.sync_lead_to_crm(%s) as r", (lead,)).fetchone()["r"]
    conn.execute("reset role")
    assert result["status"] == "CRM_SYNCED"
    assert conn.execute("select processing_status from leads where id = %s", (lead,)).fetchone()["processing_status"] == "CRM_SYNCED"


async def test_due_reminders_and_rep_notices(db_url, conn):
    from worker.crm import fire_due_reminders, notify_rep

    conn.execute("update reminders set due_at = now() - interval '1 minute' where tenant_id = %s", (DEMO,))
    pool = await open_pool(db_url)
    try:
        ctx = Context(pool, None, None, "t")
        assert await fire_due_reminders(ctx) == 1
        assert await fire_due_reminders(ctx) == 0
        # A rep without a phone: the WhatsApp notice is skipped, not failed.
        conn.execute("update profiles set phone = null where id = %s", (AGENT,))
        notice = {"tenant_id": DEMO, "payload": {"channel": "whatsapp", "rep": AGENT, "customer_id": AHMET}}
        assert await notify_rep(ctx, notice) == {"skipped": "the rep has no whatsapp address"}
        # With one, outside the rep's 24-hour window and no template configured: refused, as for anyone.
        conn.execute("update profiles set phone = '+905551234567' where id = %s", (AGENT,))
        with pytest.raises(JobError, match="outside_24h_window") as refused:
            await notify_rep(ctx, notice)
        assert not refused.value.retryable
        # ... unless an approved template is configured: then the notice is that template.
        conn.execute("update crm_settings set settings = settings || %s where tenant_id = %s",
                     (Jsonb({"whatsapp": {"template": {"name": "randevu_hatirlatma", "language": "tr"}}}), DEMO))
        queued = await notify_rep(ctx, {**notice, "id": 434343})
        request = conn.execute("select request from outbound_messages where message_id = %s",
                               (queued["message_id"],)).fetchone()["request"]
        assert request["type"] == "template" and request["to"] == "905551234567"
        assert request["template"]["name"] == "randevu_hatirlatma" and len(request["template"]["variables"]) == 2
        # The e-mail notice is a queued message of the tenant's e-mail channel, in the rep's staff
        # conversation; the same job again queues nothing more.
        mail = {"tenant_id": DEMO, "id": 424242, "payload": {"channel": "email", "rep": AGENT, "customer_id": AHMET}}
        first = await notify_rep(ctx, mail)
        assert first["status"] == "queued" and await notify_rep(ctx, mail) == first
    finally:
        await pool.close()
    assert conn.execute("select count(*) as n from notifications where kind = 'reminder_due'").fetchone()["n"] == 1
    out = conn.execute("""select o.recipient, o.kind, o.request, v.labels from outbound_messages o
                          join messages m on m.id = o.message_id join conversations v on v.id = m.conversation_id
                          where o.idempotency_key = 'crm.notify_rep:job:424242'""").fetchall()
    assert len(out) == 1 and out[0]["recipient"] == "agent@demo.luna.local" and out[0]["kind"] == "email"
    assert out[0]["labels"] == ["staff"] and "Ahmet" in out[0]["request"]["body"]
    assert conn.execute("select count(*) as n from leads where raw::text like '%%agent@demo.luna.local%%'").fetchone()["n"] == 0


async def test_stage_moves_sync_to_zoho_idempotently(db_url, conn):
    app = zoho_app()
    with serve(app) as base:
        conn.execute("update crm_settings set zoho_sync = true where tenant_id = %s", (DEMO,))
        conn.execute("""insert into tenant_features (tenant_id, feature, enabled, config) values (%s, 'crm.zoho_sync', true, %s)""",
                     (DEMO, Jsonb({"base_url": base + "/crm/v2", "access_token": "zoho-token"})))
        gorusme = conn.execute("select id from pipeline_stages where tenant_id = %s and name = 'Görüşülüyor'", (DEMO,)).fetchone()["id"]
        randevu = conn.execute("select id from pipeline_stages where tenant_id = %s and name = 'Randevu'", (DEMO,)).fetchone()["id"]
        with as_user(conn, "agent@demo.luna.local") as cur:
            cur.execute("select public.move_card(%s, %s)", (CARD_AHMET, gorusme))

        async def done():
            row = await fetch(db_url, "select count(*) filter (where status = 'succeeded'), count(*) from private.jobs where kind = 'crm.card_moved'")
            return row[0] == row[1]

        await run_until(db_url, done, ["jobs"])
        contacts, deals = app.state.records["Contacts"], app.state.records["Deals"]
        assert len(contacts) == 1 and list(contacts.values())[0]["Phone"] == "+905321112233"
        assert len(deals) == 1 and list(deals.values())[0]["Stage"] == "Görüşülüyor"
        calls = len(app.state.calls)
        with as_user(conn, "agent@demo.luna.local") as cur:
            cur.execute("select public.move_card(%s, %s)", (CARD_AHMET, randevu))
        await run_until(db_url, done, ["jobs"])
        # the contact is unchanged (not re-sent); the deal is updated in place
        assert len(app.state.calls) == calls + 1 and app.state.calls[-1][0] == "Deals"
        assert len(app.state.records["Deals"]) == 1 and list(app.state.records["Deals"].values())[0]["Stage"] == "Randevu"
        assert conn.execute("select count(*) as n from private.crm_external_refs").fetchone()["n"] == 2


async def test_rep_gets_an_email_when_configured(db_url, conn, smtp_server):
    handler, port = smtp_server["handler"], smtp_server["port"]
    conn.execute("update crm_settings set notify_email = true where tenant_id = %s", (DEMO,))
    # The notice goes out through the tenant's e-mail channel (the outbound queue), to this server.
    conn.execute("update channel_accounts set settings = settings || %s where tenant_id = %s and kind = 'email'",
                 (Jsonb({"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_auth": False}), DEMO))
    lead = add_lead(conn, "p:+905321112233", phone="+905321112233", name="Ahmet Y.", status="QUALIFIED")
    conn.execute("update leads set next_orchestrator_module = null where id = %s", (lead,))  # not via the queue
    conn.execute("set role service_role")
    assert conn.execute("select private.sync_lead_to_crm(%s) as r", (lead,)).fetchone()["r"]["rep"] == AGENT
    conn.execute("reset role")

    async def sent():
        row = await fetch(db_url, "select count(*) filter (where status = 'succeeded'), count(*) from private.jobs where kind = 'crm.notify_rep'")
        return row[1] == 1 and row[0] == 1 and len(handler.messages) == 1

    await run_until(db_url, sent, ["jobs", "inbox_outbound"])
    assert len(handler.messages) == 1
    mail = handler.messages[0]
    assert mail.rcpt_tos == ["agent@demo.luna.local"] and "Ahmet" in mail.content.decode()
