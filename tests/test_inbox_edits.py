"""Edits, deletions and group chats (issue 10, item 9).

Payload shapes follow the providers' references: Telegram Bot API Update (edited_message with
edit_date; group / supergroup chats whose messages carry `from`), WhatsApp Cloud API messages of type
`edit` (edit.original_message_id, edit.message) and `revoke` (revoke.original_message_id), Messenger
`message_edits` (message_edit {mid, text, num_edit}) and Instagram unsends (message.is_deleted)."""

from __future__ import annotations

import time

from .conftest import DEMO, DEMO2, as_user
from .fakes import serve
from .fakes.sms import FakeSms
from .test_inbox import drain, meta_app, now_ts, post, text_message, wa_event  # noqa: F401  (fixture)
from .test_inbox_sms import _channel

HDR = {"X-Telegram-Bot-Api-Secret-Token": "tg-secret"}


def _tg(client, cid, update):
    r = client.post(f"/v1/webhooks/telegram/{cid}", json=update, headers=HDR)
    assert r.status_code == 200, r.text
    return r.json()


def _msg(conn, provider_id):
    return conn.execute("select * from public.messages where provider_message_id = %s", (provider_id,)).fetchone()


def test_telegram_edit_updates_the_message_and_keeps_its_history(client, conn, db_url):
    cid = _channel(conn, DEMO2, "telegram", "777001", {"bot_token": "1:A", "webhook_secret": "tg-secret"}, "http://127.0.0.1:9")
    sent = int(time.time()) - 60
    person = {"id": 4243, "is_bot": False, "first_name": "Ece"}
    chat = {"id": 4243, "type": "private", "first_name": "Ece"}
    _tg(client, cid, {"update_id": 1, "message": {"message_id": 7, "date": sent, "chat": chat, "from": person,
                                                  "text": "Randevum salı 10:00"}})
    drain(db_url)
    _tg(client, cid, {"update_id": 2, "edited_message": {"message_id": 7, "date": sent, "edit_date": sent + 30,
                                                         "chat": chat, "from": person, "text": "Randevum salı 14:00"}})
    assert _tg(client, cid, {"update_id": 2, "edited_message": {"message_id": 7, "date": sent, "edit_date": sent + 30,
                                                                "chat": chat, "from": person, "text": "Randevum salı 14:00"}}
               )["duplicate"] is True
    drain(db_url)
    m = _msg(conn, "tg:4243:7")
    assert m["body"] == "Randevum salı 14:00" and m["edited_at"] is not None
    assert [e["body"] for e in m["edits"]] == ["Randevum salı 10:00"]
    # A second edit, then a late copy of the first one: the newest version stays.
    _tg(client, cid, {"update_id": 3, "edited_message": {"message_id": 7, "date": sent, "edit_date": sent + 50,
                                                         "chat": chat, "from": person, "text": "Randevum çarşamba 14:00"}})
    _tg(client, cid, {"update_id": 4, "edited_message": {"message_id": 7, "date": sent, "edit_date": sent + 30,
                                                         "chat": chat, "from": person, "text": "Randevum salı 14:00"}})
    drain(db_url)
    m = _msg(conn, "tg:4243:7")
    assert m["body"] == "Randevum çarşamba 14:00"
    assert [e["body"] for e in m["edits"]] == ["Randevum salı 10:00", "Randevum salı 14:00"]
    assert conn.execute("select count(*) as n from public.messages where conversation_id = %s",
                        (m["conversation_id"],)).fetchone()["n"] == 1
    events = [r["event"] for r in conn.execute("select event from public.conversation_events where conversation_id = %s",
                                               (m["conversation_id"],)).fetchall()]
    assert events.count("message_edited") == 2
    # Agents read the history through the API (RLS).
    with as_user(conn, "supervisor@demo-2.luna.local") as cur:
        seen = cur.execute("select body, edits from public.messages where id = %s", (m["id"],)).fetchone()
    assert seen["body"] == "Randevum çarşamba 14:00" and len(seen["edits"]) == 2
    # An edit of a message we never saw is stored as that message.
    _tg(client, cid, {"update_id": 5, "edited_message": {"message_id": 9, "date": sent, "edit_date": sent + 5,
                                                         "chat": chat, "from": person, "text": "Adresim değişti"}})
    drain(db_url)
    assert _msg(conn, "tg:4243:9")["body"] == "Adresim değişti"


def test_telegram_group_is_one_conversation_with_a_contact_per_participant(client, conn, db_url):
    fake = FakeSms()
    with serve(fake.app) as base:
        cid = _channel(conn, DEMO2, "telegram", "777002", {"bot_token": "2:B", "webhook_secret": "tg-secret"}, base)
        group = {"id": -100500, "type": "supergroup", "title": "Düğün organizasyonu"}
        ayse = {"id": 5001, "is_bot": False, "first_name": "Ayşe", "last_name": "Kaya", "username": "ayse"}
        mehmet = {"id": 5002, "is_bot": False, "first_name": "Mehmet"}
        now = int(time.time())
        _tg(client, cid, {"update_id": 11, "message": {"message_id": 1, "date": now, "chat": group, "from": ayse,
                                                       "text": "Merhaba, 200 kişilik salon arıyoruz"}})
        _tg(client, cid, {"update_id": 12, "message": {"message_id": 2, "date": now + 1, "chat": group, "from": mehmet,
                                                       "text": "Haziran için"}})
        _tg(client, cid, {"update_id": 13, "message": {"message_id": 3, "date": now + 2, "chat": group, "from": ayse,
                                                       "text": "Cumartesi olursa iyi"}})
        drain(db_url)
        convs = conn.execute("select * from public.conversations where channel_account_id = %s", (cid,)).fetchall()
        assert len(convs) == 1 and convs[0]["group_chat_id"] == "-100500" and convs[0]["subject"] == "Düğün organizasyonu"
        contacts = {r["handle"]: r["display_name"] for r in conn.execute(
            "select handle, display_name from public.contacts where channel = 'telegram' and tenant_id = %s "
            "and handle in ('5001', '5002', '-100500')", (DEMO2,)).fetchall()}
        assert contacts == {"5001": "Ayşe Kaya", "5002": "Mehmet"}
        senders = conn.execute("select m.provider_message_id, c.handle from public.messages m "
                               "join public.contacts c on c.id = m.sender_contact_id where m.conversation_id = %s "
                               "order by m.provider_message_id", (convs[0]["id"],)).fetchall()
        assert [(s["provider_message_id"], s["handle"]) for s in senders] == [
            ("tg:-100500:1", "5001"), ("tg:-100500:2", "5002"), ("tg:-100500:3", "5001")]
        # A reply goes to the group, not to one participant.
        with as_user(conn, "supervisor@demo-2.luna.local") as cur:
            cur.execute("select * from public.send_message(%s, 'Cumartesi müsaitiz.')", (convs[0]["id"],))
        drain(db_url, "inbox_outbound")
        assert fake.telegram[0]["body"]["chat_id"] == "-100500"


def test_whatsapp_edit_and_revoke(client, conn, db_url, meta_app):  # noqa: F811
    sender = "905559990011"
    post(client, wa_event([text_message("wamid.EDIT1", sender, "Saat 3'te gelirim")],
                          contacts=[{"profile": {"name": "Deniz"}, "wa_id": sender}]))
    drain(db_url)
    edit = {"from": sender, "id": "wamid.EDIT1-e", "timestamp": now_ts(5), "type": "edit",
            "edit": {"original_message_id": "wamid.EDIT1",
                     "message": {"type": "text", "text": {"body": "Saat 4'te gelirim"}}}}
    post(client, wa_event([edit], contacts=[{"profile": {"name": "Deniz"}, "wa_id": sender}]))
    drain(db_url)
    m = _msg(conn, "wamid.EDIT1")
    assert m["body"] == "Saat 4'te gelirim" and [e["body"] for e in m["edits"]] == ["Saat 3'te gelirim"]
    assert _msg(conn, "wamid.EDIT1-e") is None
    revoke = {"from": sender, "id": "wamid.EDIT1-r", "timestamp": now_ts(9), "type": "revoke",
              "revoke": {"original_message_id": "wamid.EDIT1"}}
    post(client, wa_event([revoke], contacts=[{"profile": {"name": "Deniz"}, "wa_id": sender}]))
    drain(db_url)
    m = _msg(conn, "wamid.EDIT1")
    assert m["deleted_at"] is not None and m["body"] is None
    assert [e["body"] for e in m["edits"]] == ["Saat 3'te gelirim", "Saat 4'te gelirim"] and m["edits"][-1]["deleted"]
    assert conn.execute("select count(*) as n from public.messages where conversation_id = %s",
                        (m["conversation_id"],)).fetchone()["n"] == 1
    # An edit after the deletion changes nothing.
    post(client, wa_event([{**edit, "id": "wamid.EDIT1-e2", "timestamp": now_ts(20)}],
                          contacts=[{"profile": {"name": "Deniz"}, "wa_id": sender}]))
    drain(db_url)
    assert _msg(conn, "wamid.EDIT1")["body"] is None


def test_messenger_edit_and_instagram_unsend(client, conn, db_url, meta_app):  # noqa: F811
    conn.execute("insert into public.channel_accounts (tenant_id, kind, name, external_id) "
                 "values (%s, 'messenger', 'Sayfa', 'page-edits-1')", (DEMO,))
    now_ms = int(time.time() * 1000)
    post(client, {"object": "page", "entry": [{"id": "page-edits-1", "time": now_ms, "messaging": [
        {"sender": {"id": "PSID-1"}, "recipient": {"id": "page-edits-1"}, "timestamp": now_ms,
         "message": {"mid": "m_edit_1", "text": "Fiyat 100 mü?"}}]}]})
    drain(db_url)
    post(client, {"object": "page", "entry": [{"id": "page-edits-1", "time": now_ms + 10, "messaging": [
        {"sender": {"id": "PSID-1"}, "recipient": {"id": "page-edits-1"}, "timestamp": now_ms + 5000,
         "message_edit": {"mid": "m_edit_1", "text": "Fiyat 150 mi?", "num_edit": 1}}]}]})
    drain(db_url)
    m = _msg(conn, "m_edit_1")
    assert m["body"] == "Fiyat 150 mi?" and [e["body"] for e in m["edits"]] == ["Fiyat 100 mü?"]

    post(client, {"object": "instagram", "entry": [{"id": "demo-ig-2", "time": now_ms, "messaging": [
        {"sender": {"id": "IGSID-del"}, "recipient": {"id": "demo-ig-2"}, "timestamp": now_ms,
         "message": {"mid": "ig-del-1", "text": "Yanlış kişiye yazdım"}}]}]})
    drain(db_url)
    post(client, {"object": "instagram", "entry": [{"id": "demo-ig-2", "time": now_ms + 10, "messaging": [
        {"sender": {"id": "IGSID-del"}, "recipient": {"id": "demo-ig-2"}, "timestamp": now_ms + 3000,
         "message": {"mid": "ig-del-1", "is_deleted": True}}]}]})
    drain(db_url)
    m = _msg(conn, "ig-del-1")
    assert m["deleted_at"] is not None and m["body"] is None and m["edits"][0]["body"] == "Yanlış kişiye yazdım"
    assert str(m["tenant_id"]) == DEMO2
