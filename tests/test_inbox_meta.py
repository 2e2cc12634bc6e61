"""Instagram / Messenger sending, Meta Marketing API insights sync and the Conversions API (event_id
deduplication) against a fake Graph API."""

from __future__ import annotations

import asyncio
import json
import time

from .conftest import DEMO2, as_user, in_worker
from .fakes import serve
from .fakes.graph import FakeGraph
from .test_inbox import drain, meta_app, post  # noqa: F401  (fixture)

IG_CHANNEL = "00000000-0000-4000-8006-000000000202"


def _point(conn, channel, base, extra=None):
    from luna import secrets

    conn.execute("update public.channel_accounts set settings = settings || %s::jsonb where id = %s",
                 (json.dumps({"base_url": base, **(extra or {})}), channel))
    secrets.set_channel_credentials(conn, channel, {"access_token": "meta-token"})


def test_instagram_reply_and_read_receipt(client, conn, db_url, meta_app):
    now_ms = int(time.time() * 1000)
    post(client, {"object": "instagram", "entry": [{"id": "demo-ig-2", "time": now_ms, "messaging": [
        {"sender": {"id": "IGSID-77"}, "recipient": {"id": "demo-ig-2"}, "timestamp": now_ms,
         "message": {"mid": "ig-mid-1", "text": "Beden tablosu var mı?"}}]}]})
    drain(db_url)
    conv = conn.execute("select v.id from public.conversations v join public.contacts c on c.id = v.contact_id "
                        "where c.handle = 'IGSID-77'").fetchone()["id"]
    fake = FakeGraph(token="meta-token")
    with serve(fake.app) as base:
        _point(conn, IG_CHANNEL, base)
        with as_user(conn, "supervisor@demo-2.luna.local") as cur:
            msg = cur.execute("select * from public.send_message(%s, 'Evet, ürün sayfasında.')", (conv,)).fetchone()
        drain(db_url, "inbox_outbound")
    [sent] = fake.page_sent
    assert sent["page_id"] == "demo-ig-2" and sent["body"]["recipient"] == {"id": "IGSID-77"}
    assert sent["body"]["message"]["text"] == "Evet, ürün sayfasında."
    row = conn.execute("select * from public.messages where id = %s", (msg["id"],)).fetchone()
    assert row["status"] == "sent" and row["provider_message_id"] == sent["mid"]
    post(client, {"object": "instagram", "entry": [{"id": "demo-ig-2", "time": now_ms, "messaging": [
        {"sender": {"id": "IGSID-77"}, "recipient": {"id": "demo-ig-2"}, "timestamp": now_ms + 5000,
         "read": {"mid": sent["mid"]}}]}]})
    drain(db_url)
    assert conn.execute("select status from public.messages where id = %s", (msg["id"],)).fetchone()["status"] == "read"


def test_insights_sync_and_conversions_api_dedup(conn, db_url):
    fake = FakeGraph(token="meta-token")
    fake.insight_rows = [
        {"campaign_id": "c1", "adset_id": "s1", "ad_id": "a1", "ad_name": "Kış indirimi A", "impressions": "1000",
         "clicks": "50", "spend": "120.50", "actions": [{"action_type": "lead", "value": "3"}],
         "date_start": "2026-11-20", "date_stop": "2026-11-20"},
        {"campaign_id": "c1", "adset_id": "s1", "ad_id": "a1", "ad_name": "Kış indirimi A", "impressions": "900",
         "clicks": "40", "spend": "99.50", "date_start": "2026-11-21", "date_stop": "2026-11-21"},
        {"campaign_id": "c1", "adset_id": "s1", "ad_id": "a2", "ad_name": "Kış indirimi B", "impressions": "10",
         "clicks": "1", "spend": "5", "date_start": "2026-11-21", "date_stop": "2026-11-21"}]
    wa2 = "00000000-0000-4000-8006-000000000201"
    with serve(fake.app) as base:
        _point(conn, wa2, base, {"pixel_id": "990000000002", "waba_id": "waba-2"})
        conn.execute("update public.ad_accounts set channel_account_id = %s where id = '00000000-0000-4000-8006-000000000261'", (wa2,))

        from worker.inbox.sync import sync_insights

        def sync():
            return in_worker(db_url, lambda ctx: sync_insights(ctx, "00000000-0000-4000-8006-000000000261",
                                                               "2026-11-20", "2026-11-21"))

        assert asyncio.run(sync()) == 3
        assert asyncio.run(sync()) == 3  # a re-sync updates, never duplicates
        rows = conn.execute("select external_id, day, spend from public.ad_insights_daily where tenant_id = %s and external_id in ('a1', 'a2') "
                            "order by 1, 2", (DEMO2,)).fetchall()
        assert [(r["external_id"], str(r["day"]), float(r["spend"])) for r in rows] == [
            ("a1", "2026-11-20", 120.5), ("a1", "2026-11-21", 99.5), ("a2", "2026-11-21", 5.0)]

        contact = "00000000-0000-4000-8006-000000000221"
        with as_user(conn, "owner@demo-2.luna.local") as cur:
            ev = cur.execute("select * from public.track_conversion(%s, 'Purchase', '{\"value\": 450, \"currency\": \"TRY\"}')",
                             (contact,)).fetchone()
            again = cur.execute("select * from public.track_conversion(%s, 'Purchase')", (contact,)).fetchone()
        assert again["id"] == ev["id"] and ev["event_id"] == f"Purchase:{contact}"
        assert conn.execute("select count(*) as n from private.jobs where kind = 'inbox.conversion_event'").fetchone()["n"] == 1
        drain(db_url, "jobs")
        # A retried delivery (say our worker died after Meta answered): Meta counts it once by event_id.
        conn.execute("update public.conversion_events set status = 'queued' where id = %s", (ev["id"],))
        conn.execute("select private.enqueue_job('inbox.conversion_event', %s::jsonb, %s)",
                     (json.dumps({"conversion_event_id": str(ev["id"])}), DEMO2))
        drain(db_url, "jobs")
    assert len(fake.events_posted) == 2 and len(fake.events_unique) == 1
    posted = fake.events_posted[0]
    assert posted["event_id"] == f"Purchase:{contact}" and posted["action_source"] == "business_messaging"
    assert len(posted["user_data"]["ph"][0]) == 64 and posted["custom_data"]["value"] == 450
    assert conn.execute("select status from public.conversion_events where id = %s", (ev["id"],)).fetchone()["status"] == "sent"


def test_messenger_message_postback_and_delivery(client, conn, db_url, meta_app):
    from .conftest import DEMO

    conn.execute("insert into public.channel_accounts (tenant_id, kind, name, external_id) values (%s, 'messenger', 'Sayfa', 'PAGE-1')",
                 (DEMO,))
    now_ms = int(time.time() * 1000)
    body = {"object": "page", "entry": [{"id": "PAGE-1", "time": now_ms, "messaging": [
        {"sender": {"id": "PSID-9"}, "recipient": {"id": "PAGE-1"}, "timestamp": now_ms,
         "message": {"mid": "m_msg_1", "text": "Merhaba", "quick_reply": {"payload": "FIYAT"}}},
        {"sender": {"id": "PSID-9"}, "recipient": {"id": "PAGE-1"}, "timestamp": now_ms + 1,
         "postback": {"mid": "m_pb_1", "title": "Randevu al", "payload": "RANDEVU"}},
        {"sender": {"id": "PSID-9"}, "recipient": {"id": "PAGE-1"}, "timestamp": now_ms + 2,
         "message": {"mid": "m_msg_2", "attachments": [{"type": "image", "payload": {"url": "https://cdn.example/x.jpg"}}]},
         "referral": {"ref": "kis", "ad_id": "6045246247433", "source": "ADS", "type": "OPEN_THREAD"}}]}]}
    assert post(client, body).status_code == 200
    drain(db_url)
    rows = {r["provider_message_id"]: r for r in conn.execute(
        "select m.* from public.messages m join public.conversations v on v.id = m.conversation_id "
        "join public.contacts c on c.id = v.contact_id where c.handle = 'PSID-9'").fetchall()}
    assert rows["m_msg_1"]["type"] == "interactive" and rows["m_pb_1"]["body"] == "Randevu al"
    assert rows["m_msg_2"]["type"] == "media" and rows["m_msg_2"]["attachments"][0]["url"] == "https://cdn.example/x.jpg"
    assert conn.execute("select count(distinct conversation_id) as n from public.messages where provider_message_id like 'm\\_%%'"
                        ).fetchone()["n"] == 1
