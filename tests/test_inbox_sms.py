"""SMS (Twilio, Netgsm) and Telegram: signed inbound webhooks, replies through the outbound queue,
status callbacks, provider errors."""

from __future__ import annotations

import json
import time

from .conftest import DEMO, DEMO2, as_user
from .fakes import serve
from .fakes.sms import FakeSms
from .test_inbox import drain


def _channel(conn, tenant, kind, external_id, creds, base):
    from luna import secrets

    cid = conn.execute("insert into public.channel_accounts (tenant_id, kind, name, external_id, settings) "
                       "values (%s, %s, %s, %s, %s::jsonb) returning id",
                       (tenant, kind, kind, external_id, json.dumps({"base_url": base}))).fetchone()["id"]
    secrets.set_channel_credentials(conn, str(cid), creds)
    return str(cid)


def test_twilio_inbound_reply_and_status(client, conn, db_url):
    from luna.channels.twilio import signature

    fake = FakeSms()
    with serve(fake.app) as base:
        cid = _channel(conn, DEMO, "sms_twilio", "+12025550100", {"account_sid": "AC123", "auth_token": "tw-token"}, base)
        url = f"http://testserver/v1/webhooks/twilio/{cid}"
        form = {"MessageSid": "SM0001", "From": "+905551230000", "To": "+12025550100", "Body": "Randevu iptal", "NumMedia": "0"}
        bad = client.post(f"/v1/webhooks/twilio/{cid}", data=form, headers={"X-Twilio-Signature": "nope"})
        assert bad.status_code == 401
        ok = client.post(f"/v1/webhooks/twilio/{cid}", data=form, headers={"X-Twilio-Signature": signature("tw-token", url, form)})
        assert ok.status_code == 200
        drain(db_url)
        conv = conn.execute("select v.id from public.conversations v join public.contacts c on c.id = v.contact_id "
                            "where c.handle = '+905551230000'").fetchone()["id"]
        with as_user(conn, "supervisor@demo.luna.local") as cur:
            msg = cur.execute("select * from public.send_message(%s, 'İptal edildi.')", (conv,)).fetchone()
        drain(db_url, "inbox_outbound")
        [sent] = fake.twilio
        assert sent["form"] == {"To": "+905551230000", "Body": "İptal edildi.", "From": "+12025550100"}
        status = {"MessageSid": sent["sid"], "MessageStatus": "delivered", "To": "+905551230000"}
        r = client.post(f"/v1/webhooks/twilio/{cid}", data=status, headers={"X-Twilio-Signature": signature("tw-token", url, status)})
        assert r.status_code == 200
        drain(db_url)
        assert conn.execute("select status from public.messages where id = %s", (msg["id"],)).fetchone()["status"] == "delivered"


def test_netgsm_send_and_permanent_error(conn, db_url):
    fake = FakeSms()
    with serve(fake.app) as base:
        cid = _channel(conn, DEMO2, "sms_netgsm", "MAGAZA", {"username": "8502000000", "password": "pw"}, base)
        ct = conn.execute("insert into public.contacts (tenant_id, channel, handle, phone) values (%s, 'sms_netgsm', '+905321110000', '+905321110000') returning id",
                          (DEMO2,)).fetchone()["id"]
        conv = conn.execute("insert into public.conversations (tenant_id, channel_account_id, contact_id) values (%s, %s, %s) returning id",
                            (DEMO2, cid, ct)).fetchone()["id"]
        with as_user(conn, "supervisor@demo-2.luna.local") as cur:
            ok = cur.execute("select * from public.send_message(%s, 'Siparişiniz kargoda.')", (conv,)).fetchone()
        drain(db_url, "inbox_outbound")
        assert fake.netgsm[0]["body"]["messages"] == [{"msg": "Siparişiniz kargoda.", "no": "905321110000"}]
        assert fake.netgsm[0]["body"]["msgheader"] == "MAGAZA"
        assert conn.execute("select status from public.messages where id = %s", (ok["id"],)).fetchone()["status"] == "sent"
        fake.plan.append((200, {"code": "40", "description": "Mesaj başlığınız (gönderici adınız) sistemde tanımlı değil"}))
        with as_user(conn, "supervisor@demo-2.luna.local") as cur:
            bad = cur.execute("select * from public.send_message(%s, 'İkinci mesaj')", (conv,)).fetchone()
        drain(db_url, "inbox_outbound")
        row = conn.execute("select status, error_code, error_message from public.messages where id = %s", (bad["id"],)).fetchone()
        assert row["status"] == "failed" and row["error_code"] == "netgsm_40" and "başlığınız" in row["error_message"]


def test_telegram_inbound_and_throttled_reply(client, conn, db_url):
    fake = FakeSms()
    with serve(fake.app) as base:
        cid = _channel(conn, DEMO2, "telegram", "777000", {"bot_token": "123:ABC", "webhook_secret": "tg-secret"}, base)
        update = {"update_id": 9001, "message": {"message_id": 5, "date": int(time.time()), "text": "Kargo nerede?",
                                                 "from": {"id": 4242, "is_bot": False, "first_name": "Ece", "username": "ece"},
                                                 "chat": {"id": 4242, "type": "private"}}}
        assert client.post(f"/v1/webhooks/telegram/{cid}", json=update).status_code == 401
        hdr = {"X-Telegram-Bot-Api-Secret-Token": "tg-secret"}
        assert client.post(f"/v1/webhooks/telegram/{cid}", json=update, headers=hdr).status_code == 200
        assert client.post(f"/v1/webhooks/telegram/{cid}", json=update, headers=hdr).json()["duplicate"] is True
        drain(db_url)
        conv = conn.execute("select v.id from public.conversations v join public.contacts c on c.id = v.contact_id "
                            "where c.handle = '4242'").fetchone()["id"]
        fake.plan.append((429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                                "parameters": {"retry_after": 1}}))
        with as_user(conn, "supervisor@demo-2.luna.local") as cur:
            msg = cur.execute("select * from public.send_message(%s, 'Yarın teslim.')", (conv,)).fetchone()
        drain(db_url, "inbox_outbound", until=lambda: conn.execute(
            "select status from public.outbound_messages where message_id = %s", (msg["id"],)).fetchone()["status"] == "sent")
        assert fake.telegram[0]["body"] == {"chat_id": "4242", "text": "Yarın teslim."}
        out = conn.execute("select attempts, status from public.outbound_messages where message_id = %s", (msg["id"],)).fetchone()
        assert out["status"] == "sent" and out["attempts"] == 2
