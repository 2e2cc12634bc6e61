"""WhatsApp contacts without a phone number (issue 9): business-scoped user ids (BSUID) and usernames.

Payload shapes follow Meta's "Business-scoped user IDs" documentation (developers.facebook.com/
documentation/business-messaging/whatsapp/business-scoped-user-ids): `contacts[].user_id` is the
BSUID (always sent), `contacts[].wa_id` and `messages[].from` (the phone) may be withheld for users
with a username (`contacts[].profile.username`), `messages[].from_user_id` carries the BSUID,
statuses carry `recipient_user_id` (and `recipient_id` only when the phone may be shared), and the
send API takes `recipient` (a BSUID) instead of `to`.
"""

from __future__ import annotations

import pytest

from .conftest import DEMO, as_service, as_user
from .fakes import serve
from .fakes.graph import FakeGraph
from .test_inbox import WA_CHANNEL, _wa_channel_to, drain, meta_app, now_ts, post, wa_event  # noqa: F401  (fixture)

BSUID = "TR.1300000000000000000001"
PHONE = "905551230001"


def wa_contact(user_id=None, wa_id=None, name=None, username=None) -> dict:
    c: dict = {"profile": {}}
    if name:
        c["profile"]["name"] = name
    if username:
        c["profile"]["username"] = username
    if user_id:
        c["user_id"] = user_id
    if wa_id:
        c["wa_id"] = wa_id
    return c


def wa_text(wamid, *, user_id=None, phone=None, body="Merhaba", referral=None) -> dict:
    m = {"id": wamid, "timestamp": now_ts(), "type": "text", "text": {"body": body}}
    if phone:
        m["from"] = phone
    if user_id:
        m["from_user_id"] = user_id
    if referral:
        m["referral"] = referral
    return m


def contacts_of(conn, *, user_id=None, handle=None):
    return conn.execute("select * from public.contacts where tenant_id = %s and channel = 'whatsapp' "
                        "and (scoped_id = %s or handle = %s or handle = %s) order by created_at",
                        (DEMO, user_id, handle, user_id)).fetchall()


def conversations_of(conn, contact_id):
    return conn.execute("select * from public.conversations where contact_id = %s", (contact_id,)).fetchall()


def events(conn):
    return {r["status"]: r["n"] for r in conn.execute(
        "select status, count(*) as n from private.inbound_events group by 1").fetchall()}


# ------------------------------------------------------------------------------------------ inbound
def test_username_without_phone_then_the_phone_is_added(client, conn, db_url, meta_app):
    post(client, wa_event([wa_text("wamid.BS1", user_id=BSUID, body="Fiyat alabilir miyim?")],
                          contacts=[wa_contact(BSUID, name="Selin", username="selin.k")]))
    drain(db_url)
    assert events(conn) == {"processed": 1}
    [contact] = contacts_of(conn, user_id=BSUID)
    assert contact["scoped_id"] == BSUID and contact["handle"] == BSUID
    assert contact["phone"] is None and contact["username"] == "selin.k" and contact["display_name"] == "Selin"
    [conv] = conversations_of(conn, contact["id"])
    assert conv["last_inbound_at"] is not None and conv["assignee_id"] is not None   # routed like any other

    # Later the same user writes with the phone shared (BSUID + wa_id): the same contact, the same
    # conversation, the phone kept as an attribute.
    post(client, wa_event([wa_text("wamid.BS2", user_id=BSUID, phone=PHONE, body="Numaram bu")],
                          contacts=[wa_contact(BSUID, PHONE, name="Selin K.", username="selin.k")]))
    # ... and once more with the phone withheld again: it stays known.
    post(client, wa_event([wa_text("wamid.BS3", user_id=BSUID)], contacts=[wa_contact(BSUID, username="selin.k")]))
    drain(db_url)
    assert events(conn) == {"processed": 3}
    [after] = contacts_of(conn, user_id=BSUID, handle=PHONE)
    assert after["id"] == contact["id"]
    assert after["phone"] == "+" + PHONE and after["handle"] == PHONE and after["scoped_id"] == BSUID
    assert after["display_name"] == "Selin K."
    [conv2] = conversations_of(conn, contact["id"])
    assert conv2["id"] == conv["id"]
    wamids = sorted(r["provider_message_id"] for r in conn.execute(
        "select provider_message_id from public.messages where conversation_id = %s", (conv["id"],)))
    assert wamids == ["wamid.BS1", "wamid.BS2", "wamid.BS3"]


def test_contact_first_seen_by_wa_id_then_with_bsuid_is_the_same(client, conn, db_url, meta_app):
    phone = "905551230002"
    bsuid = "TR.1300000000000000000002"
    # A contact from before business-scoped ids (phone only) ...
    post(client, wa_event([wa_text("wamid.WA1", phone=phone)], contacts=[wa_contact(wa_id=phone, name="Eski Müşteri")]))
    drain(db_url)
    [old] = contacts_of(conn, handle=phone)
    assert old["scoped_id"] is None
    # ... then the same number with its BSUID, then the BSUID alone (the user adopted a username).
    post(client, wa_event([wa_text("wamid.WA2", user_id=bsuid, phone=phone)], contacts=[wa_contact(bsuid, phone)]))
    drain(db_url)
    post(client, wa_event([wa_text("wamid.WA3", user_id=bsuid)], contacts=[wa_contact(bsuid, username="eski")]))
    drain(db_url)
    [same] = contacts_of(conn, user_id=bsuid, handle=phone)
    assert same["id"] == old["id"] and same["scoped_id"] == bsuid and same["username"] == "eski"
    assert same["handle"] == phone and same["phone"] == "+" + phone
    assert len(conversations_of(conn, old["id"])) == 1


def test_status_teaches_the_bsuid_of_a_phone_contact(client, conn, db_url, meta_app):
    """A status of a message we sent to a phone carries the recipient's BSUID: a later message that
    comes with the BSUID only (phone withheld) still reaches that contact."""
    bsuid = "TR.1300000000000000000003"
    seeded = "00000000-0000-4000-8006-000000000121"   # demo contact, phone 905321112233, wamid.DEMO2 sent to it
    post(client, wa_event(statuses=[{"id": "wamid.DEMO2", "status": "read", "timestamp": now_ts(),
                                     "recipient_id": "905321112233", "recipient_user_id": bsuid}]))
    drain(db_url)
    assert conn.execute("select scoped_id from public.contacts where id = %s", (seeded,)).fetchone()["scoped_id"] == bsuid
    post(client, wa_event([wa_text("wamid.ST1", user_id=bsuid, body="Ben Deniz")], contacts=[wa_contact(bsuid, username="deniz")]))
    drain(db_url)
    conv = conn.execute("select v.contact_id from public.messages m join public.conversations v on v.id = m.conversation_id "
                        "where m.provider_message_id = 'wamid.ST1'").fetchone()
    assert str(conv["contact_id"]) == seeded
    assert len(contacts_of(conn, user_id=bsuid)) == 1


def test_same_person_known_twice_is_merged_when_phone_and_bsuid_meet(client, conn, db_url, meta_app):
    phone, bsuid = "905551230004", "TR.1300000000000000000004"
    post(client, wa_event([wa_text("wamid.MG1", phone=phone)], contacts=[wa_contact(wa_id=phone, name="Tel ile")]))
    drain(db_url)
    post(client, wa_event([wa_text("wamid.MG2", user_id=bsuid)], contacts=[wa_contact(bsuid, username="kullanici")]))
    drain(db_url)
    assert len(contacts_of(conn, user_id=bsuid, handle=phone)) == 2   # nothing told us they are one person yet
    post(client, wa_event([wa_text("wamid.MG3", user_id=bsuid, phone=phone)], contacts=[wa_contact(bsuid, phone)]))
    drain(db_url)
    assert events(conn) == {"processed": 3}
    [one] = contacts_of(conn, user_id=bsuid, handle=phone)
    assert one["scoped_id"] == bsuid and one["handle"] == phone and one["username"] == "kullanici"
    assert one["display_name"] == "Tel ile"
    msgs = conn.execute("select count(*) as n from public.messages m join public.conversations v on v.id = m.conversation_id "
                        "where v.contact_id = %s", (one["id"],)).fetchone()["n"]
    assert msgs == 3


def test_a_phone_number_that_moved_to_another_user(client, conn, db_url, meta_app):
    """Meta gives a new BSUID to whoever has a number now: the old contact keeps its own BSUID and
    gives up the number; the new user is a new contact."""
    phone, first, second = "905551230005", "TR.1300000000000000000005", "TR.1300000000000000000006"
    post(client, wa_event([wa_text("wamid.MV1", user_id=first, phone=phone)], contacts=[wa_contact(first, phone, "İlk")]))
    drain(db_url)
    post(client, wa_event([wa_text("wamid.MV2", user_id=second, phone=phone)], contacts=[wa_contact(second, phone, "Yeni")]))
    drain(db_url)
    rows = {r["scoped_id"]: r for r in contacts_of(conn, user_id=first, handle=phone)}
    rows.update({r["scoped_id"]: r for r in contacts_of(conn, user_id=second)})
    assert set(rows) == {first, second}
    assert rows[first]["handle"] == first and rows[first]["phone"] is None
    assert rows[second]["handle"] == phone and rows[second]["phone"] == "+" + phone


def test_concurrent_events_of_one_new_user_make_one_contact(client, conn, db_url, meta_app):
    bsuid = "TR.1300000000000000000007"
    for i in range(6):
        with_phone = i % 2 == 1
        post(client, wa_event([wa_text(f"wamid.CC{i}", user_id=bsuid, phone=PHONE if with_phone else None)],
                              contacts=[wa_contact(bsuid, PHONE if with_phone else None, username="ayni")]))
    drain(db_url)   # one claim takes all six; they are processed concurrently
    assert events(conn) == {"processed": 6}
    [contact] = contacts_of(conn, user_id=bsuid, handle=PHONE)
    assert contact["phone"] == "+" + PHONE
    assert len(conversations_of(conn, contact["id"])) == 1


def test_message_with_no_sender_identity_fails_visibly(client, conn, db_url, meta_app):
    post(client, wa_event([{"id": "wamid.NOID", "timestamp": now_ts(), "type": "text", "text": {"body": "?"}}]))
    drain(db_url)
    ev = conn.execute("select status, last_error, payload from private.inbound_events").fetchone()
    assert ev["status"] == "failed" and "identity" in ev["last_error"] and ev["payload"] is not None


# ------------------------------------------------------------------------------------------ CRM, leads
def test_phoneless_contacts_never_match_by_missing_phone(client, conn, db_url, meta_app):
    """Two users without a phone (same display name) are two contacts and two leads; a customer with
    no phone is not theirs. When the phone arrives later, the customer with that phone is linked."""
    for table in ("public.customers", "public.leads"):
        if conn.execute("select to_regclass(%s) is null as missing", (table,)).fetchone()["missing"]:
            pytest.fail(f"{table} is missing: the CRM / lead areas must be migrated", pytrace=False)
    conn.execute("insert into public.customers (tenant_id, full_name) values (%s, 'Ayşe')", (DEMO,))
    a, b = "TR.1300000000000000000008", "TR.1300000000000000000009"
    ad = {"source_url": "https://fb.me/ad", "source_id": "120200000000009", "source_type": "ad",
          "headline": "Beyazlatma", "ctwa_clid": "ARAkBSUIDclid"}
    post(client, wa_event([wa_text("wamid.PL1", user_id=a, referral=ad)], contacts=[wa_contact(a, name="Ayşe")]))
    post(client, wa_event([wa_text("wamid.PL2", user_id=b)], contacts=[wa_contact(b, name="Ayşe")]))
    drain(db_url)
    assert events(conn) == {"processed": 2}
    [ca] = contacts_of(conn, user_id=a)
    [cb] = contacts_of(conn, user_id=b)
    assert ca["id"] != cb["id"] and ca["customer_id"] is None and cb["customer_id"] is None
    assert ca["lead_id"] and cb["lead_id"] and ca["lead_id"] != cb["lead_id"]
    assert ca["attribution"]["ctwa_clid"] == "ARAkBSUIDclid"
    lead = conn.execute("select * from public.leads where id = %s", (ca["lead_id"],)).fetchone()
    assert lead["phone"] is None and lead["utm_medium"] == "click_to_whatsapp" and lead["utm_content"] == "120200000000009"

    # The phone arrives: the customer who has it is linked; the other contact stays apart.
    phone = "905551230010"
    cust = conn.execute("insert into public.customers (tenant_id, full_name, phone) values (%s, 'Ayşe Demir', %s) returning id",
                        (DEMO, "+" + phone)).fetchone()["id"]
    post(client, wa_event([wa_text("wamid.PL3", user_id=a, phone=phone)], contacts=[wa_contact(a, phone, "Ayşe")]))
    drain(db_url)
    [ca2] = contacts_of(conn, user_id=a)
    [cb2] = contacts_of(conn, user_id=b)
    assert ca2["customer_id"] == cust and cb2["customer_id"] is None
    assert conn.execute("select unread_messages from public.customers where id = %s", (cust,)).fetchone()["unread_messages"] >= 1


def test_phone_added_later_reaches_the_contacts_lead(client, conn, db_url, meta_app):
    if conn.execute("select to_regclass('public.leads') is null as missing").fetchone()["missing"]:
        pytest.fail("public.leads is missing: the lead area must be migrated", pytrace=False)
    bsuid, phone = "TR.1300000000000000000011", "905551230011"
    post(client, wa_event([wa_text("wamid.LD1", user_id=bsuid)], contacts=[wa_contact(bsuid, username="lead.user")]))
    drain(db_url)
    [c] = contacts_of(conn, user_id=bsuid)
    assert c["lead_id"] is not None
    post(client, wa_event([wa_text("wamid.LD2", user_id=bsuid, phone=phone)], contacts=[wa_contact(bsuid, phone)]))
    drain(db_url)
    [c2] = contacts_of(conn, user_id=bsuid)
    assert c2["lead_id"] == c["lead_id"]
    leads = conn.execute("select id, phone from public.leads where tenant_id = %s and (id = %s or phone = %s)",
                         (DEMO, c["lead_id"], "+" + phone)).fetchall()
    assert [(r["id"], r["phone"]) for r in leads] == [(c["lead_id"], "+" + phone)]


# ------------------------------------------------------------------------------------------ sending
def test_send_to_a_phoneless_contact_uses_recipient_and_bsuid_statuses_settle(client, conn, db_url, meta_app):
    bsuid = "TR.1300000000000000000012"
    post(client, wa_event([wa_text("wamid.SN1", user_id=bsuid)], contacts=[wa_contact(bsuid, username="alici")]))
    drain(db_url)
    [contact] = contacts_of(conn, user_id=bsuid)
    [conv] = conversations_of(conn, contact["id"])
    fake = FakeGraph()
    fake.next_ids.append("wamid.OUTBS1")
    with serve(fake.app) as base:
        _wa_channel_to(conn, base)
        with as_service(conn) as cur:
            msg = cur.execute("select * from public.send_message(%s, 'Merhaba, nasıl yardımcı olabiliriz?')",
                              (conv["id"],)).fetchone()
        drain(db_url, "inbox_outbound")
    [sent] = fake.sent
    assert sent["body"]["recipient"] == bsuid and "to" not in sent["body"]
    assert sent["body"]["text"]["body"] == "Merhaba, nasıl yardımcı olabiliriz?"
    row = conn.execute("select status, provider_message_id from public.messages where id = %s", (msg["id"],)).fetchone()
    assert row == {"status": "sent", "provider_message_id": "wamid.OUTBS1"}
    # Statuses of a send to a BSUID carry recipient_user_id and no recipient_id.
    post(client, wa_event(statuses=[{"id": "wamid.OUTBS1", "status": "delivered", "timestamp": now_ts(),
                                     "recipient_user_id": bsuid}]))
    post(client, wa_event(statuses=[{"id": "wamid.OUTBS1", "status": "read", "timestamp": now_ts(1),
                                     "recipient_user_id": bsuid}]))
    drain(db_url)
    row = conn.execute("select status, delivered_at, read_at from public.messages where id = %s", (msg["id"],)).fetchone()
    assert row["status"] == "read" and row["delivered_at"] and row["read_at"]
    assert len(contacts_of(conn, user_id=bsuid)) == 1


def test_send_prefers_the_phone_once_known(client, conn, db_url, meta_app):
    bsuid, phone = "TR.1300000000000000000013", "905551230013"
    post(client, wa_event([wa_text("wamid.SP1", user_id=bsuid, phone=phone)], contacts=[wa_contact(bsuid, phone)]))
    drain(db_url)
    [contact] = contacts_of(conn, user_id=bsuid)
    [conv] = conversations_of(conn, contact["id"])
    fake = FakeGraph()
    with serve(fake.app) as base:
        _wa_channel_to(conn, base)
        with as_user(conn, "supervisor@demo.luna.local") as cur:
            cur.execute("select public.send_message(%s, 'Telefonla')", (conv["id"],))
        drain(db_url, "inbox_outbound")
    [sent] = fake.sent
    assert sent["body"]["to"] == phone and "recipient" not in sent["body"]


def test_adapter_builds_to_or_recipient():
    from luna.channels.http import AdapterError
    from luna.channels.graph import GraphAdapter, is_bsuid

    assert is_bsuid("US.13491208655302741918") and is_bsuid("US.ENT.11815799212886844830")
    assert not is_bsuid("905551112233") and not is_bsuid("+905551112233") and not is_bsuid(None)
    assert GraphAdapter.wa_body({"to": "905551112233", "body": "x"})["to"] == "905551112233"
    by_id = GraphAdapter.wa_body({"to": "US.13491208655302741918", "body": "x"})
    assert by_id["recipient"] == "US.13491208655302741918" and "to" not in by_id
    both = GraphAdapter.wa_body({"to": "905551112233", "recipient": "US.13491208655302741918", "body": "x"})
    assert both["to"] == "905551112233" and "recipient" not in both   # the phone when known (Meta's advice)
    only = GraphAdapter.wa_body({"recipient": "US.13491208655302741918", "type": "template",
                                  "template": {"name": "t", "language": "tr", "variables": []}})
    assert only["recipient"] == "US.13491208655302741918" and only["type"] == "template"
    with pytest.raises(AdapterError) as err:
        GraphAdapter.wa_body({"body": "nobody"})
    assert err.value.retryable is False
