"""Inbox <-> CRM and lead pipeline: contacts match customers by phone / e-mail, a new contact with no
customer becomes a lead (source = channel, Click-to-WhatsApp attribution copied), unread counts,
the customer's messages by channel, the inbox views."""

from __future__ import annotations

import psycopg
import pytest

from .conftest import DEMO, as_user
from .test_inbox import drain, post, text_message, wa_event, meta_app  # noqa: F401  (fixture)


def _needs(conn, *names):
    for name in names:
        if conn.execute("select to_regclass(%s) is null as missing", (name,)).fetchone()["missing"]:
            pytest.fail(f"{name} is missing: the CRM / lead areas must be migrated", pytrace=False)


def test_contact_matches_existing_customer_and_unread(client, conn, db_url, meta_app):
    _needs(conn, "public.customers")
    cust = conn.execute("""insert into public.customers (tenant_id, full_name, phone) values (%s, 'Hülya Kara', '+905557654321')
                           returning id""", (DEMO,)).fetchone()["id"]
    post(client, wa_event([text_message("wamid.C1", sender="905557654321", body="Merhaba")],
                          contacts=[{"profile": {"name": "Hülya"}, "wa_id": "905557654321"}]))
    post(client, wa_event([text_message("wamid.C2", sender="905557654321", body="Orada mısınız?")]))
    drain(db_url)
    contact = conn.execute("select * from public.contacts where handle = '905557654321'").fetchone()
    assert contact["customer_id"] == cust and contact["lead_id"] is None
    assert conn.execute("select unread_messages from public.customers where id = %s", (cust,)).fetchone()["unread_messages"] == 2
    history = conn.execute("select private.inbox_customer_messages(%s, 10) as h", (cust,)).fetchone()["h"]
    assert sorted(m["body"] for m in history["whatsapp"]) == ["Merhaba", "Orada mısınız?"]
    conv = conn.execute("select id, assignee_id from public.conversations where contact_id = %s", (contact["id"],)).fetchone()
    user = conn.execute("select email from auth.users where id = %s", (conv["assignee_id"],)).fetchone()["email"]
    with as_user(conn, user) as cur:
        row = cur.execute("select unread from public.inbox_conversation_list where id = %s", (conv["id"],)).fetchone()
        assert row["unread"] == 2
        cur.execute("select public.mark_conversation_read(%s)", (conv["id"],))
        assert cur.execute("select unread from public.inbox_conversation_list where id = %s", (conv["id"],)).fetchone()["unread"] == 0
    assert conn.execute("select unread_messages from public.customers where id = %s", (cust,)).fetchone()["unread_messages"] == 0


def test_new_contact_becomes_a_lead_with_ctwa_attribution(client, conn, db_url, meta_app):
    _needs(conn, "public.leads")
    msg = text_message("wamid.L1", sender="905551119988", body="Reklamınızı gördüm")
    msg["referral"] = {"source_url": "https://fb.me/xyz", "source_id": "120200000000001", "source_type": "ad",
                       "headline": "İmplant kampanyası", "ctwa_clid": "ARAkLkA8rmlFeiCk"}
    post(client, wa_event([msg], contacts=[{"profile": {"name": "Okan Tekin"}, "wa_id": "905551119988"}]))
    drain(db_url)
    contact = conn.execute("select * from public.contacts where handle = '905551119988'").fetchone()
    assert contact["lead_id"] is not None
    lead = conn.execute("select * from public.leads where id = %s", (contact["lead_id"],)).fetchone()
    assert lead["source"] == "whatsapp" and lead["phone"] == "+905551119988"
    assert lead["utm_content"] == "120200000000001" and lead["utm_medium"] == "click_to_whatsapp"
    # The ad's spend against its contacts and leads.
    conn.execute("""insert into public.ad_insights_daily (tenant_id, ad_account_id, level, external_id, day, spend)
                    values (%s, '00000000-0000-4000-8006-000000000161', 'ad', '120200000000001', current_date, 150)""", (DEMO,))
    with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
        row = cur.execute("select * from public.ad_cost_per_lead where ad_id = '120200000000001'").fetchone()
    assert row["spend"] == 1000 and row["leads"] == 1 and row["cost_per_lead"] == 1000


def test_customer_messages_respect_the_callers_tenant(conn):
    _needs(conn, "public.customers")
    cust = conn.execute("insert into public.customers (tenant_id, full_name, phone) values (%s, 'Deniz Aksoy Test', '+905321119999') "
                        "returning id", (DEMO,)).fetchone()["id"]
    conn.execute("update public.contacts set customer_id = %s where id = '00000000-0000-4000-8006-000000000121'", (cust,))
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        mine = cur.execute("select private.inbox_customer_messages(%s, 10) as h", (cust,)).fetchone()["h"]
    assert len(mine["whatsapp"]) == 2   # the note is internal: not part of the history
    with as_user(conn, "owner@demo-2.luna.local", rollback=True) as cur:
        assert cur.execute("select private.inbox_customer_messages(%s, 10) as h", (cust,)).fetchone()["h"] == {}


def test_manual_link_and_timeline_forgery_refused(conn):
    import psycopg

    _needs(conn, "public.customers")
    cust = conn.execute("insert into public.customers (tenant_id, full_name, phone) values (%s, 'Elle Bağlanan', '+905320000777') "
                        "returning id", (DEMO,)).fetchone()["id"]
    contact = "00000000-0000-4000-8006-000000000121"
    with as_user(conn, "agent@demo.luna.local") as cur:
        assert cur.execute("select customer_id from public.link_contact_customer(%s, %s)", (contact, cust)).fetchone()["customer_id"] == cust
    with pytest.raises(psycopg.errors.NoDataFound):
        with as_user(conn, "owner@demo-2.luna.local", rollback=True) as cur:
            cur.execute("select public.link_contact_customer('00000000-0000-4000-8006-000000000221', %s)", (cust,))
    # Another tenant's timeline is refused outright (42501 tenant_mismatch), not skipped silently.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_user(conn, "owner@demo-2.luna.local", rollback=True) as cur:
            cur.execute("select private.inbox_timeline(%s, '00000000-0000-4000-8006-000000000131', 'forged', '{}')", (DEMO,))
    assert conn.execute("select count(*) as n from public.conversation_events where event = 'forged'").fetchone()["n"] == 0
