"""Inbox: Meta webhooks (signature, replay, malformed bodies), processing into contacts /
conversations / messages, statuses never moving backwards, the send RPC and the outbound queue
against a fake WhatsApp Cloud API (24-hour window, 429 retried, permanent errors)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import pytest

from .conftest import DEMO, as_service, as_user, in_worker
from .fakes import serve
from .fakes.graph import FakeGraph

APP_ID, APP_SECRET, VERIFY = "1234567890", "app-secret-for-tests", "verify-me"
PHONE_ID = "demo-phone-number-1"
WA_CHANNEL = "00000000-0000-4000-8006-000000000101"


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def wa_event(messages=None, statuses=None, contacts=None, phone_id=PHONE_ID) -> dict:
    """The Cloud API's webhook envelope (object whatsapp_business_account, field messages)."""
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "902125550101", "phone_number_id": phone_id}}
    if contacts is not None:
        value["contacts"] = contacts
    if messages is not None:
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}]}


def now_ts(offset: int = 0) -> str:
    return str(int(time.time()) + offset)


def text_message(wamid: str, sender: str = "905551112233", body: str = "Merhaba", ts: str | None = None) -> dict:
    return {"from": sender, "id": wamid, "timestamp": ts or now_ts(), "type": "text", "text": {"body": body}}


@pytest.fixture
def meta_app(conn):
    from luna import secrets

    secrets.register_meta_app(conn, APP_ID, APP_SECRET, VERIFY)
    return APP_ID


def post(client, payload, *, secret=APP_SECRET, raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(payload).encode()
    return client.post(f"/v1/webhooks/meta/{APP_ID}", content=body,
                       headers={"X-Hub-Signature-256": sign(body, secret), "Content-Type": "application/json"})


def drain(db_url, queue: str = "inbox_inbound", *, until=None, timeout: float = 20.0) -> None:
    """Run the worker's claim/process for one queue until it is empty (or `until()` holds)."""
    from worker.runner import Worker

    async def run():
        w = Worker(db_url, queues=[queue], worker_id="test-worker", batch=50, concurrency=50)
        await w.start()
        q = w.queues[0]
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                rows = await w.claim(q, 50)
                if rows:
                    await w.process(q, rows)
                    continue
                if until is None or until():
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"queue {queue} not drained in {timeout}s")
        finally:
            await w.close()

    asyncio.run(run())


# ------------------------------------------------------------------------------------------ webhooks
def test_verification_handshake(client, meta_app):
    ok = client.get(f"/v1/webhooks/meta/{APP_ID}", params={"hub.mode": "subscribe", "hub.verify_token": VERIFY,
                                                           "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    bad = client.get(f"/v1/webhooks/meta/{APP_ID}", params={"hub.mode": "subscribe", "hub.verify_token": "nope",
                                                            "hub.challenge": "1"})
    assert bad.status_code == 403


def test_bad_signature_is_401_and_stored_nowhere(client, conn, meta_app):
    payload = wa_event([text_message("wamid.BAD1")])
    r = post(client, payload, secret="wrong-secret")
    assert r.status_code == 401 and r.json()["error"]["code"] == "bad_signature"
    unsigned = client.post(f"/v1/webhooks/meta/{APP_ID}", json=payload)
    assert unsigned.status_code == 401
    assert conn.execute("select count(*) as n from private.inbound_events").fetchone()["n"] == 0
    assert conn.execute("select count(*) as n from public.messages where provider_message_id = 'wamid.BAD1'").fetchone()["n"] == 0


def test_one_meta_webhook_at_both_urls(client, conn, meta_app, monkeypatch):
    """The registered app's URL and the default app's (/v1/leads/webhooks/meta) are one implementation:
    either takes Lead Ads changes and messaging events, with the same errors."""
    leadgen = {"object": "page", "entry": [{"id": "100000000000001", "time": 1764000000, "changes": [
        {"field": "leadgen", "value": {"leadgen_id": "4444000000777", "page_id": "100000000000001", "form_id": "9000"}}]}]}
    r = post(client, leadgen)
    assert r.status_code == 200 and r.json() == {"received": True, "leadgen": {"received": 1, "stored": 1, "queued": 1}}
    assert conn.execute("select count(*) as n from private.jobs where kind = 'leads.meta_fetch' "
                        "and payload ->> 'leadgen_id' = '4444000000777'").fetchone()["n"] == 1
    assert conn.execute("select count(*) as n from private.inbound_events").fetchone()["n"] == 0
    monkeypatch.delenv("LUNA_META_APP_SECRET", raising=False)
    body = json.dumps(wa_event([text_message("wamid.ALIAS1")])).encode()
    r = client.post("/v1/leads/webhooks/meta", content=body, headers={"X-Hub-Signature-256": sign(body, "default")})
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_configured"
    monkeypatch.setenv("LUNA_META_APP_SECRET", "default")
    r = client.post("/v1/leads/webhooks/meta", content=body, headers={"X-Hub-Signature-256": sign(body, "default")})
    assert r.status_code == 200 and r.json()["duplicate"] is False
    assert conn.execute("select provider from private.inbound_events").fetchone()["provider"] == "whatsapp"
    raw = b'{"entry": [ {broken'
    r = client.post("/v1/leads/webhooks/meta", content=raw, headers={"X-Hub-Signature-256": sign(raw, "default")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body"
    r = client.post("/v1/webhooks/meta/no-such-app", content=body, headers={"X-Hub-Signature-256": sign(body)})
    assert r.status_code == 401 and r.json()["error"]["code"] == "bad_signature"


def test_malformed_body_is_400_and_kept(client, conn, meta_app):
    raw = b'{"object": "whatsapp_business_account", "entry": [ {broken'
    r = post(client, None, raw=raw)
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body"
    row = conn.execute("select status, raw, payload from private.inbound_events").fetchone()
    assert row["status"] == "malformed" and bytes(row["raw"]) == raw and row["payload"] is None


def test_text_media_interactive_referral_land_once(client, conn, db_url, meta_app):
    contacts = [{"profile": {"name": "Kerem Aslan"}, "wa_id": "905551112233"}]
    messages = [
        text_message("wamid.T1", body="Merhaba, fiyat alabilir miyim?"),
        {"from": "905551112233", "id": "wamid.M1", "timestamp": now_ts(), "type": "image",
         "image": {"caption": "Röntgen", "mime_type": "image/jpeg", "sha256": "abc", "id": "1479537139650973"}},
        {"from": "905551112233", "id": "wamid.I1", "timestamp": now_ts(), "type": "interactive",
         "context": {"from": "902125550101", "id": "wamid.OUT0"},
         "interactive": {"type": "button_reply", "button_reply": {"id": "evet", "title": "Evet"}}},
        {"from": "905551112233", "id": "wamid.I2", "timestamp": now_ts(), "type": "interactive",
         "interactive": {"type": "list_reply", "list_reply": {"id": "s1", "title": "Salı 10:00", "description": "x"}}},
    ]
    referral_msg = {"from": "905559998877", "id": "wamid.R1", "timestamp": now_ts(), "type": "text",
                    "text": {"body": "Reklamdan geldim"},
                    "referral": {"source_url": "https://fb.me/abc", "source_id": "120200000000001", "source_type": "ad",
                                 "headline": "İmplant kampanyası", "body": "…", "media_type": "image",
                                 "image_url": "https://x/y.jpg", "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ"}}
    first = post(client, wa_event(messages, contacts=contacts))
    assert first.status_code == 200 and first.json()["duplicate"] is False
    assert post(client, wa_event([referral_msg], contacts=[{"profile": {"name": "Ad Tıklayan"}, "wa_id": "905559998877"}])).status_code == 200
    # A replay of the same delivery: a no-op.
    again = post(client, wa_event(messages, contacts=contacts))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert conn.execute("select count(*) as n from private.inbound_events").fetchone()["n"] == 2
    drain(db_url)
    # The same messages re-delivered in a different envelope (Meta retries): still once.
    post(client, wa_event(messages[:2], contacts=contacts))
    drain(db_url)

    rows = {r["provider_message_id"]: r for r in conn.execute(
        "select m.*, c.handle, c.display_name from public.messages m join public.conversations v on v.id = m.conversation_id "
        "join public.contacts c on c.id = v.contact_id where m.provider_message_id like 'wamid.%%' and m.tenant_id = %s",
        (DEMO,)).fetchall() if r["provider_message_id"] in {"wamid.T1", "wamid.M1", "wamid.I1", "wamid.I2", "wamid.R1"}}
    assert set(rows) == {"wamid.T1", "wamid.M1", "wamid.I1", "wamid.I2", "wamid.R1"}
    assert rows["wamid.T1"]["type"] == "text" and rows["wamid.T1"]["display_name"] == "Kerem Aslan"
    assert rows["wamid.M1"]["type"] == "media" and rows["wamid.M1"]["attachments"][0]["mime_type"] == "image/jpeg"
    assert rows["wamid.I1"]["type"] == "interactive" and rows["wamid.I1"]["body"] == "Evet"
    assert rows["wamid.I1"]["in_reply_to"] == "wamid.OUT0"
    assert rows["wamid.I2"]["body"] == "Salı 10:00"
    counts = conn.execute("select count(*) as n, count(distinct provider_message_id) as d from public.messages "
                          "where provider_message_id in ('wamid.T1','wamid.M1','wamid.I1','wamid.I2','wamid.R1')").fetchone()
    assert counts["n"] == counts["d"] == 5
    # One conversation per contact; the referral's attribution on contact and conversation.
    conv = conn.execute("select v.* from public.conversations v join public.contacts c on c.id = v.contact_id "
                        "where c.handle = '905551112233'").fetchall()
    assert len(conv) == 1 and conv[0]["last_inbound_at"] is not None
    ref = conn.execute("select c.attribution as ca, v.attribution as va from public.contacts c "
                       "join public.conversations v on v.contact_id = c.id where c.handle = '905559998877'").fetchone()
    assert ref["ca"]["ctwa_clid"] == "ARAkLkA8rmlFeiCktEJQ" and ref["ca"]["source_id"] == "120200000000001"
    assert ref["va"]["headline"] == "İmplant kampanyası"
    events = conn.execute("select status, count(*) as n from private.inbound_events group by 1").fetchall()
    assert {e["status"]: e["n"] for e in events} == {"processed": 3}


def test_statuses_never_move_backwards_and_errors_recorded(client, conn, db_url, meta_app):
    conn.execute("""insert into public.messages (tenant_id, conversation_id, direction, type, body, provider_message_id, status)
                    values (%s, '00000000-0000-4000-8006-000000000131', 'outbound', 'text', 'x', 'wamid.S1', 'sent'),
                           (%s, '00000000-0000-4000-8006-000000000131', 'outbound', 'text', 'y', 'wamid.S2', 'sent')""",
                 (DEMO, DEMO))

    def status(wamid, st, ts, errors=None):
        s = {"id": wamid, "status": st, "timestamp": ts, "recipient_id": "905321112233",
             "conversation": {"id": "c1", "origin": {"type": "service"}},
             "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"}}
        if errors:
            s["errors"] = errors
        return s

    # read arrives before delivered (out of order); a redelivered 'sent' comes last.
    post(client, wa_event(statuses=[status("wamid.S1", "read", now_ts(2))]))
    post(client, wa_event(statuses=[status("wamid.S1", "delivered", now_ts(1))]))
    post(client, wa_event(statuses=[status("wamid.S1", "sent", now_ts(0))]))
    post(client, wa_event(statuses=[status("wamid.S2", "failed", now_ts(), [{
        "code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
        "error_data": {"details": "Receiver is incapable of receiving this message"}}])]))
    drain(db_url)
    s1 = conn.execute("select * from public.messages where provider_message_id = 'wamid.S1'").fetchone()
    assert s1["status"] == "read" and s1["read_at"] is not None and s1["delivered_at"] is not None
    s2 = conn.execute("select * from public.messages where provider_message_id = 'wamid.S2'").fetchone()
    assert s2["status"] == "failed" and s2["error_code"] == "131026"
    assert "incapable" in s2["error_message"]


def test_instagram_and_messenger_messages(client, conn, db_url, meta_app):
    ig = {"object": "instagram", "entry": [{"id": "demo-ig-2", "time": int(time.time() * 1000), "messaging": [
        {"sender": {"id": "IGSID-1"}, "recipient": {"id": "demo-ig-2"}, "timestamp": int(time.time() * 1000),
         "message": {"mid": "aWdfZAG1faXRlbToxOklH", "text": "Bu ürün stokta var mı?"}},
        {"sender": {"id": "demo-ig-2"}, "recipient": {"id": "IGSID-1"}, "timestamp": int(time.time() * 1000),
         "message": {"mid": "echo-1", "text": "bizden", "is_echo": True}}]}]}
    assert post(client, ig).status_code == 200
    drain(db_url)
    row = conn.execute("select m.body, m.tenant_id, c.channel from public.messages m join public.conversations v on v.id = m.conversation_id "
                       "join public.contacts c on c.id = v.contact_id where m.provider_message_id = 'aWdfZAG1faXRlbToxOklH'").fetchone()
    assert row["body"] == "Bu ürün stokta var mı?" and row["channel"] == "instagram"
    assert conn.execute("select count(*) as n from public.messages where provider_message_id = 'echo-1'").fetchone()["n"] == 0


# ------------------------------------------------------------------------------------------ routing, RLS
def test_new_conversation_is_routed_and_agents_see_only_theirs(client, conn, db_url, meta_app):
    for i in range(4):
        post(client, wa_event([text_message(f"wamid.RR{i}", sender=f"90555000000{i}")]))
    drain(db_url)
    assignees = [r["assignee_id"] for r in conn.execute(
        "select v.assignee_id from public.conversations v join public.contacts c on c.id = v.contact_id "
        "where c.handle like '90555000000%%' order by v.created_at").fetchall()]
    assert None not in assignees and len(set(assignees)) == 2, "round robin over the two online agents"
    events = conn.execute("select count(*) as n from public.conversation_events where event = 'assigned'").fetchone()["n"]
    assert events >= 4
    conn.execute("update public.tenant_policies set agents_see_assigned_only = true where tenant_id = %s", (DEMO,))
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        mine = cur.execute("select count(*) as n from public.conversations where assignee_id <> (select auth.uid())").fetchone()
        assert mine["n"] == 0
    with as_user(conn, "supervisor@demo.luna.local", rollback=True) as cur:
        assert cur.execute("select count(*) as n from public.conversations").fetchone()["n"] >= 5
    # A supervisor transfers one: a timeline entry records it.
    conv = conn.execute("select v.id from public.conversations v join public.contacts c on c.id = v.contact_id "
                        "where c.handle = '905550000000'").fetchone()["id"]
    sup = conn.execute("select id from auth.users where email = 'supervisor@demo.luna.local'").fetchone()["id"]
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("select public.assign_conversation(%s, %s, 'destek', 'VIP')", (conv, sup))
    ev = conn.execute("select * from public.conversation_events where conversation_id = %s and event = 'transferred'",
                      (conv,)).fetchone()
    assert ev["data"]["to"] == str(sup) and ev["data"]["team"] == "destek"


def test_internal_note_is_never_queued(conn):
    with as_user(conn, "agent@demo.luna.local") as cur:
        note = cur.execute("select * from public.add_note('00000000-0000-4000-8006-000000000131', 'iç not')").fetchone()
    assert note["type"] == "note" and note["direction"] == "internal"
    assert conn.execute("select count(*) as n from public.outbound_messages where message_id = %s",
                        (note["id"],)).fetchone()["n"] == 0


# ------------------------------------------------------------------------------------------ sending
def _conversation_with_window(conn, hours_ago: float) -> str:
    conv = "00000000-0000-4000-8006-000000000131"
    conn.execute("update public.conversations set last_inbound_at = now() - make_interval(secs => %s) where id = %s",
                 (hours_ago * 3600, conv))
    return conv


def test_send_outside_24h_window_needs_template(client, conn):
    conv = _conversation_with_window(conn, 30)
    from .conftest import token_for

    token = token_for(conn, "agent@demo.luna.local")
    r = client.post(f"/v1/inbox/conversations/{conv}/messages", json={"body": "Merhaba"},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "outside_24h_window" and "24-hour" in err["message"]
    ok = client.post(f"/v1/inbox/conversations/{conv}/messages",
                     json={"template": {"name": "randevu_hatirlatma", "language": "tr", "variables": ["Deniz", "12 Aralık"]}},
                     headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 202 and ok.json()["type"] == "template"


def _wa_channel_to(conn, base: str) -> None:
    from luna import secrets

    conn.execute("update public.channel_accounts set settings = settings || %s::jsonb where id = %s",
                 (json.dumps({"base_url": base, "rate_per_s": 50}), WA_CHANNEL))
    secrets.set_channel_credentials(conn, WA_CHANNEL, {"access_token": "test-token"})


def test_send_retries_429_then_sends_and_permanent_error_fails(conn, db_url):
    conv = _conversation_with_window(conn, 1)
    fake = FakeGraph()
    with serve(fake.app) as base:
        _wa_channel_to(conn, base)
        fake.plan(429)
        with as_user(conn, "agent@demo.luna.local") as cur:
            m1 = cur.execute("select * from public.send_message(%s, 'Randevunuz onaylandı', idempotency_key => 'k1')",
                             (conv,)).fetchone()
            again = cur.execute("select * from public.send_message(%s, 'Randevunuz onaylandı', idempotency_key => 'k1')",
                                (conv,)).fetchone()
        assert again["id"] == m1["id"]
        drain(db_url, "inbox_outbound", until=lambda: conn.execute(
            "select status from public.outbound_messages where message_id = %s", (m1["id"],)).fetchone()["status"] == "sent")
        out = conn.execute("select * from public.outbound_messages where message_id = %s", (m1["id"],)).fetchone()
        assert out["status"] == "sent" and out["attempts"] == 2 and "130429" in (out["last_error"] or "130429")
        msg = conn.execute("select * from public.messages where id = %s", (m1["id"],)).fetchone()
        assert msg["status"] == "sent" and msg["provider_message_id"] == fake.sent[0]["id"]
        assert fake.sent[0]["body"]["text"]["body"] == "Randevunuz onaylandı" and len(fake.sent) == 1

        fake.plan_error(400, 131047, "Re-engagement message",
                        "Message failed to send because more than 24 hours have passed since the customer last replied")
        with as_user(conn, "agent@demo.luna.local") as cur:
            m2 = cur.execute("select * from public.send_message(%s, 'Geç kalan mesaj')", (conv,)).fetchone()
        drain(db_url, "inbox_outbound")
        msg2 = conn.execute("select * from public.messages where id = %s", (m2["id"],)).fetchone()
        assert msg2["status"] == "failed" and msg2["error_code"] == "131047"
        assert "24 hours" in msg2["error_message"]
        out2 = conn.execute("select * from public.outbound_messages where message_id = %s", (m2["id"],)).fetchone()
        assert out2["status"] == "failed" and out2["attempts"] == 1


def test_template_sync_keeps_status(conn, db_url):
    fake = FakeGraph()
    fake.templates = [
        {"name": "kampanya_duyuru", "language": "tr", "status": "APPROVED", "category": "MARKETING", "id": "5551",
         "components": [{"type": "BODY", "text": "Merhaba {{1}}, {{2}} indirimi başladı!"}]},
        {"name": "randevu_hatirlatma", "language": "tr", "status": "PAUSED", "category": "UTILITY", "id": "5552",
         "components": [{"type": "BODY", "text": "Merhaba {{1}}, {{2}} tarihli randevunuzu hatırlatırız."}]}]
    with serve(fake.app) as base:
        _wa_channel_to(conn, base)
        conn.execute("update public.channel_accounts set settings = settings || '{\"waba_id\": \"w1\"}' where id = %s", (WA_CHANNEL,))

        from worker.inbox.sync import sync_templates

        assert asyncio.run(in_worker(db_url, lambda ctx: sync_templates(ctx, WA_CHANNEL))) == 2
    rows = {r["name"]: r for r in conn.execute("select * from public.message_templates where channel_account_id = %s",
                                               (WA_CHANNEL,)).fetchall()}
    assert rows["kampanya_duyuru"]["variables"] == 2 and rows["kampanya_duyuru"]["status"] == "APPROVED"
    assert rows["randevu_hatirlatma"]["status"] == "PAUSED"


def test_credentials_encrypted_and_never_exposed(conn):
    from luna import secrets

    secrets.set_channel_credentials(conn, WA_CHANNEL, {"access_token": "EAAG-super-secret"})
    stored = conn.execute("select secret from private.channel_credentials where channel_account_id = %s",
                          (WA_CHANNEL,)).fetchone()["secret"]
    assert "EAAG" not in stored and json.loads(secrets.decrypt(stored))["access_token"] == "EAAG-super-secret"
    import psycopg

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
            cur.execute("select * from private.channel_credentials")
    with as_user(conn, "owner@demo.luna.local", rollback=True) as cur:
        row = cur.execute("select to_jsonb(c) as r from public.channel_accounts c where id = %s", (WA_CHANNEL,)).fetchone()
        assert "EAAG" not in json.dumps(row["r"])


def test_webchat_endpoint(client, conn, db_url):
    msg = {"session_id": "visitor-123456", "client_message_id": "1", "text": "Fiyat listesi?", "name": "Ziyaretçi",
           "email": "ziyaretci@example.com", "utm": {"utm_source": "google", "utm_campaign": "kis"}}
    assert client.post("/v1/webchat/demo-widget-1/messages", json=msg).status_code == 202
    assert client.post("/v1/webchat/demo-widget-1/messages", json=msg).json()["duplicate"] is True
    assert client.post("/v1/webchat/nope/messages", json=msg).status_code == 404
    drain(db_url)
    row = conn.execute("select c.attribution, c.email from public.contacts c where c.handle = 'visitor-123456'").fetchone()
    assert row["attribution"]["utm_campaign"] == "kis" and row["email"] == "ziyaretci@example.com"
    # An agent replies; the widget polls the visitor's conversation (notes never shown).
    conv = conn.execute("select v.id from public.conversations v join public.contacts c on c.id = v.contact_id "
                        "where c.handle = 'visitor-123456'").fetchone()["id"]
    with as_user(conn, "supervisor@demo.luna.local") as cur:
        cur.execute("select public.send_message(%s, 'Fiyat listemiz ektedir.')", (conv,))
        cur.execute("select public.add_note(%s, 'sıcak müşteri')", (conv,))
    drain(db_url, "inbox_outbound")
    history = client.get("/v1/webchat/demo-widget-1/messages", params={"session_id": "visitor-123456"}).json()["messages"]
    assert [(m["direction"], m["body"], m["status"]) for m in history] == [
        ("inbound", "Fiyat listesi?", "received"), ("outbound", "Fiyat listemiz ektedir.", "sent")]
    assert client.get("/v1/webchat/demo-widget-1/messages", params={"session_id": "someone-else"}).json()["messages"] == []


# ------------------------------------------------------------------------------------------ realtime
def test_realtime_topics_and_guard(client, conn, db_url, meta_app):
    post(client, wa_event([text_message("wamid.RT1", sender="905550001111")]))
    drain(db_url)
    conv = conn.execute("select v.id, v.assignee_id, v.channel_account_id from public.conversations v "
                        "join public.contacts c on c.id = v.contact_id where c.handle = '905550001111'").fetchone()
    topic = f"tenant:{DEMO}:inbox:{conv['id']}"
    events = {r["event"] for r in conn.execute("select event from realtime.messages where topic = %s", (topic,)).fetchall()}
    assert "message_created" in events
    inbox_topic = f"tenant:{DEMO}:inbox:{conv['channel_account_id']}"
    assert conn.execute("select count(*) as n from realtime.messages where topic = %s", (inbox_topic,)).fetchone()["n"] >= 1
    assignee = conn.execute("select email from auth.users where id = %s", (conv["assignee_id"],)).fetchone()["email"]
    other = "agent2@demo.luna.local" if assignee == "agent@demo.luna.local" else "agent@demo.luna.local"
    assert conn.execute("select count(*) as n from realtime.messages where topic = %s and event = 'conversation_assigned'",
                        (f"user:{conv['assignee_id']}",)).fetchone()["n"] >= 1
    conn.execute("update public.tenant_policies set agents_see_assigned_only = true where tenant_id = %s", (DEMO,))

    def may_join(user, t):
        with as_user(conn, user, rollback=True) as cur:
            return cur.execute("select private.can_join_topic(%s) as ok", (t,)).fetchone()["ok"]

    assert may_join(assignee, topic) is True
    assert may_join(other, topic) is False
    assert may_join(other, inbox_topic) is False          # the whole inbox: only those who see all
    assert may_join("supervisor@demo.luna.local", inbox_topic) is True
    assert may_join("supervisor@demo-2.luna.local", topic) is False


def test_status_that_overtakes_the_send_answer_is_applied(client, conn, db_url, meta_app):
    conv = _conversation_with_window(conn, 1)
    fake = FakeGraph()
    fake.next_ids.append("wamid.EARLY1")
    # The 'delivered' webhook arrives before our send call has returned the id.
    post(client, wa_event(statuses=[{"id": "wamid.EARLY1", "status": "delivered", "timestamp": now_ts(),
                                     "recipient_id": "905321112233"}]))
    drain(db_url)
    with serve(fake.app) as base:
        _wa_channel_to(conn, base)
        with as_user(conn, "agent@demo.luna.local") as cur:
            m = cur.execute("select * from public.send_message(%s, 'Hızlı cevap')", (conv,)).fetchone()
        drain(db_url, "inbox_outbound")
    row = conn.execute("select status, provider_message_id, delivered_at from public.messages where id = %s", (m["id"],)).fetchone()
    assert row["provider_message_id"] == "wamid.EARLY1" and row["status"] == "delivered" and row["delivered_at"]
    assert conn.execute("select count(*) as n from private.early_statuses").fetchone()["n"] == 0


def test_send_is_scoped_to_the_callers_tenant_and_assignment(conn):
    import psycopg

    conv = _conversation_with_window(conn, 1)   # demo's conversation, assigned to agent@demo
    with pytest.raises(psycopg.errors.NoDataFound):
        with as_user(conn, "owner@demo-2.luna.local", rollback=True) as cur:
            cur.execute("select public.send_message(%s, 'başka kiracı')", (conv,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_user(conn, "viewer@demo.luna.local", rollback=True) as cur:
            cur.execute("select public.send_message(%s, 'izleyici')", (conv,))
    conn.execute("update public.tenant_policies set agents_see_assigned_only = true where tenant_id = %s", (DEMO,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_user(conn, "agent2@demo.luna.local", rollback=True) as cur:
            cur.execute("select public.send_message(%s, 'başkasının')", (conv,))
    with as_user(conn, "agent@demo.luna.local", rollback=True) as cur:
        assert cur.execute("select status from public.send_message(%s, 'benim')", (conv,)).fetchone()["status"] == "queued"


def test_unknown_object_fails_permanently(client, conn, db_url, meta_app):
    assert post(client, {"object": "permissions", "entry": [{"id": "1", "changes": []}]}).status_code == 200
    drain(db_url)
    ev = conn.execute("select status, attempts, last_error from private.inbound_events").fetchone()
    assert ev["status"] == "failed" and ev["attempts"] == 1 and "unsupported webhook object" in ev["last_error"]


def test_claim_spaces_sends_by_number_and_tenant_kind_limits(conn):
    conv = _conversation_with_window(conn, 1)
    conn.execute("update public.channel_accounts set settings = settings || '{\"rate_per_s\": 10}' where id = %s", (WA_CHANNEL,))
    conn.execute("""update public.tenants set settings = settings || '{"inbox": {"rate_per_s": {"whatsapp": 4}}}' where id = %s""", (DEMO,))
    with as_service(conn) as cur:
        for i in range(3):
            cur.execute("select public.send_message(%s, %s)", (conv, f"m{i}"))
    with as_service(conn) as cur:
        rows = cur.execute("select send_after from private.outbound_claim('w', 10, 60)").fetchall()
    gaps = [(b["send_after"] - a["send_after"]).total_seconds() for a, b in zip(rows, rows[1:])]
    assert len(rows) == 3 and all(abs(g - 0.25) < 0.02 for g in gaps), gaps   # the stricter (tenant) limit wins


def test_agent_downloads_inbound_media_through_edge(client, conn, db_url, meta_app):
    from .conftest import token_for

    fake = FakeGraph()
    jpeg = b"\xff\xd8\xff\xe0" + b"x" * 1000
    fake.media["1479537139650973"] = ("image/jpeg", jpeg)
    with serve(fake.app) as base:
        _wa_channel_to(conn, base)
        post(client, wa_event([{"from": "905551112299", "id": "wamid.IMG1", "timestamp": now_ts(), "type": "image",
                                "image": {"mime_type": "image/jpeg", "sha256": "abc", "id": "1479537139650973"}}]))
        drain(db_url)
        mid = conn.execute("select id from public.messages where provider_message_id = 'wamid.IMG1'").fetchone()["id"]
        token = token_for(conn, "supervisor@demo.luna.local")
        r = client.get(f"/v1/inbox/messages/{mid}/media/0", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.content == jpeg and r.headers["content-type"] == "image/jpeg"
        other = token_for(conn, "owner@demo-2.luna.local")
        assert client.get(f"/v1/inbox/messages/{mid}/media/0", headers={"Authorization": f"Bearer {other}"}).status_code == 404
