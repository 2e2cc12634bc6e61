"""Channel limits (issue 10, item 2): one table of each channel's documented limits
(private.channel_limits), checked by public.send_message before anything is queued: refused with 422
and a code, or, for SMS, counted in segments (GSM-7 160/153, UCS-2 70/67) that the provider
concatenates up to a maximum."""

from __future__ import annotations

import psycopg
import pytest

from .conftest import DEMO, as_user, token_for

WA_CONV = "00000000-0000-4000-8006-000000000131"  # seeded WhatsApp conversation of tenant demo


def _conversation(conn, kind: str, handle: str) -> str:
    """A conversation on a new channel of `kind` whose customer just wrote (window open)."""
    cid = conn.execute("insert into public.channel_accounts (tenant_id, kind, name, external_id) values (%s, %s, %s, %s) "
                       "returning id", (DEMO, kind, kind, f"limits-{kind}")).fetchone()["id"]
    conn.execute("select private.ingest_message(%s, %s, 'Müşteri', %s, 'text', 'Merhaba')", (cid, handle, f"in-{kind}-1"))
    conv = conn.execute("select id from public.conversations where channel_account_id = %s", (cid,)).fetchone()["id"]
    conn.execute("update public.conversations set assignee_id = null, last_inbound_at = now() where id = %s", (conv,))
    return str(conv)


def _send(conn, conv, body=None, *, template=None, media=None):
    import json

    with as_user(conn, "supervisor@demo.luna.local") as cur:
        return cur.execute("select * from public.send_message(%s, %s, %s::jsonb, null, %s::jsonb)",
                           (conv, body, json.dumps(template) if template else None,
                            json.dumps(media) if media else None)).fetchone()


def _refused(conn, conv, code, body=None, **kw):
    before = conn.execute("select count(*) as n from public.outbound_messages").fetchone()["n"]
    with pytest.raises(psycopg.Error) as err:
        _send(conn, conv, body, **kw)
    conn.rollback() if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR else None
    assert err.value.sqlstate == "PT422" and err.value.diag.message_detail == f"code={code}", err.value
    assert conn.execute("select count(*) as n from public.outbound_messages").fetchone()["n"] == before
    return err.value


def test_every_channel_kind_has_a_row(conn):
    kinds = conn.execute("""select unnest(regexp_matches(pg_get_constraintdef(c.oid), '''([a-z_]+)''', 'g')) as k
                            from pg_constraint c where c.conrelid = 'public.channel_accounts'::regclass
                              and c.conname = 'channel_accounts_kind_check'""").fetchall()
    rows = {r["kind"] for r in conn.execute("select kind from private.channel_limits").fetchall()}
    assert {k["k"] for k in kinds} == rows


@pytest.mark.parametrize("body,encoding,units,segments", [
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("€" * 80, "GSM-7", 160, 1),          # extension characters take two
    ("{" * 81, "GSM-7", 162, 2),
    ("ş" * 70, "UCS-2", 70, 1),           # Turkish ş ğ ı are outside GSM 03.38
    ("Randevunuz yarın", "UCS-2", 16, 1),
    ("ğ" * 71, "UCS-2", 71, 2),
    ("😀" * 35, "UCS-2", 70, 1),           # beyond the BMP: two UTF-16 units
    ("😀" * 36, "UCS-2", 72, 2),
    ("", "GSM-7", 0, 1),
])
def test_sms_segments(conn, body, encoding, units, segments):
    row = conn.execute("select * from private.sms_segments(%s)", (body,)).fetchone()
    assert (row["encoding"], row["units"], row["segments"]) == (encoding, units, segments)


def test_whatsapp_text_over_4096_is_refused_with_422_before_queueing(client, conn):
    conn.execute("update public.conversations set last_inbound_at = now(), assignee_id = null where id = %s", (WA_CONV,))
    token = token_for(conn, "agent@demo.luna.local")
    before = conn.execute("select count(*) as n from public.outbound_messages").fetchone()["n"]
    r = client.post(f"/v1/inbox/conversations/{WA_CONV}/messages", json={"body": "x" * 5000},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "message_too_long" and "4096" in err["message"] and "5000" in err["message"]
    assert conn.execute("select count(*) as n from public.outbound_messages").fetchone()["n"] == before
    ok = client.post(f"/v1/inbox/conversations/{WA_CONV}/messages", json={"body": "ç" * 4096},
                     headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 202, ok.text


def test_text_limits_per_channel_in_their_units(conn):
    ig = _conversation(conn, "instagram", "IGSID-lim")
    _refused(conn, ig, "message_too_long", "ş" * 501)          # 1002 bytes of UTF-8
    assert _send(conn, ig, "a" * 1000)["status"] == "queued"
    ms = _conversation(conn, "messenger", "PSID-lim")
    _refused(conn, ms, "message_too_long", "a" * 2001)
    assert _send(conn, ms, "ş" * 2000)["status"] == "queued"
    tg = _conversation(conn, "telegram", "99001")
    _refused(conn, tg, "message_too_long", "😀" * 2049)         # 4098 UTF-16 units
    assert _send(conn, tg, "😀" * 2048)["status"] == "queued"
    em = _conversation(conn, "email", "uzun@musteri.example")
    assert _send(conn, em, "a" * 100_000)["status"] == "queued"  # e-mail: no limit here


@pytest.mark.parametrize("kind", ["sms_twilio", "sms_netgsm"])
def test_sms_is_counted_in_segments_up_to_a_maximum(conn, kind):
    conv = _conversation(conn, kind, "+905551234567")
    msg = _send(conn, conv, "Randevunuz yarın saat 10:00'da. " * 18)  # ~576 UCS-2 units: 9 segments
    out = conn.execute("select request from public.outbound_messages where message_id = %s", (msg["id"],)).fetchone()
    assert out["request"]["sms"]["encoding"] == "UCS-2" and out["request"]["sms"]["segments"] == 9
    gsm = _send(conn, conv, "a" * 1530)                                # 10 GSM-7 segments
    assert conn.execute("select request from public.outbound_messages where message_id = %s",
                        (gsm["id"],)).fetchone()["request"]["sms"] == {"encoding": "GSM-7", "segments": 10, "units": 1530}
    err = _refused(conn, conv, "message_too_long", "a" * 1531)         # 11 segments
    assert "10 segments" in str(err)
    _refused(conn, conv, "message_too_long", "ş" * 671)                # 11 UCS-2 segments
    _refused(conn, conv, "attachments_not_supported", "foto", media={"kind": "image", "link": "https://x.example/a.jpg"})


def test_template_parameters_follow_whatsapp_rules(conn):
    conn.execute("update public.conversations set assignee_id = null where id = %s", (WA_CONV,))
    tpl = {"name": "randevu_hatirlatma", "language": "tr"}
    _refused(conn, WA_CONV, "template_parameter_invalid", template={**tpl, "variables": ["Ayşe\nHanım", "Salı"]})
    _refused(conn, WA_CONV, "template_parameter_invalid", template={**tpl, "variables": ["Ayşe", "Salı\t10:00"]})
    _refused(conn, WA_CONV, "template_parameter_invalid", template={**tpl, "variables": ["Ayşe     Hanım", "Salı"]})
    _refused(conn, WA_CONV, "template_parameter_invalid", template={**tpl, "variables": ["Ayşe", "x" * 1025]})
    _refused(conn, WA_CONV, "template_parameter_invalid", template={**tpl, "variables": ["  ", "Salı"]})
    assert _send(conn, WA_CONV, template={**tpl, "variables": ["Ayşe    Hanım", "Salı 10:00"]})["status"] == "queued"


def test_attachments_kind_type_and_size(conn):
    conn.execute("update public.conversations set last_inbound_at = now(), assignee_id = null where id = %s", (WA_CONV,))
    link = "https://cdn.example/x"
    _refused(conn, WA_CONV, "attachment_too_large", media={"kind": "image", "link": link, "mime_type": "image/jpeg",
                                                           "size": 6 * 1024 * 1024})
    _refused(conn, WA_CONV, "attachment_type_not_allowed", media={"kind": "image", "link": link, "mime_type": "image/gif"})
    _refused(conn, WA_CONV, "attachment_type_not_allowed", media={"kind": "archive", "link": link})
    _refused(conn, WA_CONV, "caption_too_long", "a" * 1025, media={"kind": "image", "link": link})
    ok = _send(conn, WA_CONV, "Fiyat listesi", media={"kind": "document", "link": link, "mime_type": "application/pdf",
                                                       "size": 50 * 1024 * 1024, "filename": "fiyat.pdf"})
    assert ok["status"] == "queued"
    ig = _conversation(conn, "instagram", "IGSID-media")
    _refused(conn, ig, "attachment_too_large", media={"kind": "video", "link": link, "mime_type": "video/mp4",
                                                      "size": 26 * 1024 * 1024})
    em = _conversation(conn, "email", "ek@musteri.example")
    _refused(conn, em, "attachments_not_supported", "ek", media={"kind": "document", "link": link})


def test_whatsapp_adapter_sends_only_cloud_api_media_fields():
    from luna.channels.graph import GraphAdapter

    body = GraphAdapter.wa_body({"type": "media", "to": "905551112233", "body": "Fiyat listesi",
                                  "media": {"kind": "image", "link": "https://cdn.example/x.jpg", "mime_type": "image/jpeg",
                                            "size": 1000, "filename": "x.jpg"}})
    assert body["image"] == {"link": "https://cdn.example/x.jpg", "caption": "Fiyat listesi"}
