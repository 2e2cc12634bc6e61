"""Machine-generated mail and threading (issue 10, item 10).

Raw RFC 5322 messages (bounces per RFC 3464, RFC 3834 Auto-Submitted, the usual out-of-office markers)
are classified by the IMAP adapter; against the real dovecot IMAP server and an SMTP server (fixtures
of tests/test_inbox_email.py) a bounce and an out-of-office reply never create a lead or re-open a
conversation, a bounce marks the address and later sends skip it, and a reply carrying only
In-Reply-To (pointing at our own sent reply) stays in its conversation."""

from __future__ import annotations

import email
from email.message import EmailMessage

import pytest

from .conftest import as_user
from .test_inbox import drain
from .test_inbox_email import MAILBOX, EMAIL_CHANNEL, _append, _configure, _mail, _sync, dovecot  # noqa: F401

from luna.channels import email as mail


def _raw(subject="Merhaba", sender="ali@musteri.example", headers=None, body="Merhaba"):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = sender, MAILBOX, subject, "<x1@musteri.example>"
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return msg.as_bytes()


def _dsn(original_id: str, recipient: str, *, action="failed", status="5.1.1", sender="MAILER-DAEMON@mx.musteri.example",
         message_id="<dsn1@mx.musteri.example>", full_original=False) -> bytes:
    """A delivery-status notification as RFC 3464 lays it out (multipart/report; report-type=delivery-status)."""
    boundary = "BOUNDARY-1"
    original = (f"From: Demo Klinik <{MAILBOX}>\r\nTo: {recipient}\r\nSubject: Re: Randevu\r\n"
                f"Message-ID: {original_id}\r\n")
    third = ("Content-Type: message/rfc822\r\n\r\n" + original + "\r\nSalı 10:00 uygun.\r\n") if full_original \
        else ("Content-Type: text/rfc822-headers\r\n\r\n" + original)
    return (
        f"From: Mail Delivery System <{sender}>\r\nTo: {MAILBOX}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n"
        f"Message-ID: {message_id}\r\nDate: Mon, 23 Nov 2026 11:00:00 +0300\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.musteri.example\r\nArrival-Date: Mon, 23 Nov 2026 10:59:58 +0300\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nOriginal-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\nStatus: {status}\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <user>: Recipient address rejected: User unknown\r\n\r\n"
        f"--{boundary}\r\n{third}\r\n--{boundary}--\r\n").encode()


# ------------------------------------------------------------------------------------------ classification
@pytest.mark.parametrize("headers,subject", [
    ({"Auto-Submitted": "auto-replied"}, "Re: Randevu"),
    ({"Auto-Submitted": "auto-generated"}, "Bildirim"),
    ({"Auto-Submitted": "auto-notified; owner-email=\"x@y.example\""}, "Bildirim"),
    ({"X-Autoreply": "yes"}, "Re: Randevu"),
    ({"X-Autorespond": "Re: Randevu"}, "Re: Randevu"),
    ({"Precedence": "auto_reply"}, "Re: Randevu"),
    ({"Precedence": "bulk"}, "Bülten"),
    ({"Precedence": "junk"}, "Kampanya"),
    ({"X-Auto-Response-Suppress": "All"}, "Re: Randevu"),
    ({}, "Out of Office: Re: Randevu"),
    ({}, "Otomatik yanıt: Randevu"),
    ({}, "Automatic reply: Randevu"),
    ({}, "Autoreply: Randevu"),
    ({"Return-Path": "<>"}, "Re: Randevu"),
])
def test_out_of_office_markers_are_machine_mail(headers, subject):
    auto = mail.parse(_raw(subject, headers=headers), MAILBOX)["auto"]
    assert auto is not None and auto["kind"] == "auto_reply", (headers, subject, auto)


@pytest.mark.parametrize("headers,subject", [
    ({}, "Re: Randevu"),
    ({"Auto-Submitted": "no"}, "Re: Randevu"),
    ({"Precedence": "list"}, "Re: Randevu"),
    ({}, "Ofisimizin adresi nedir?"),
])
def test_a_persons_mail_is_not_machine_mail(headers, subject):
    assert mail.parse(_raw(subject, headers=headers), MAILBOX)["auto"] is None


@pytest.mark.parametrize("full_original", [False, True])
def test_delivery_status_report_is_a_bounce_with_recipient_and_original(full_original):
    p = mail.parse(_dsn("<orig1@demo-klinik.example>", "Ayse@Musteri.example", full_original=full_original), MAILBOX)
    assert p["auto"]["kind"] == "bounce"
    assert p["auto"]["bounced"] == [{"address": "ayse@musteri.example", "status": "5.1.1",
                                     "diagnostic": "smtp; 550 5.1.1 <user>: Recipient address rejected: User unknown"}]
    assert p["auto"]["original_message_id"] == "<orig1@demo-klinik.example>"
    assert "<orig1@demo-klinik.example>" in p["references"]


def test_delayed_report_is_not_a_bounce():
    p = mail.parse(_dsn("<orig1@demo-klinik.example>", "ayse@musteri.example", action="delayed", status="4.4.7",
                             sender="postmaster@mx.musteri.example"), MAILBOX)
    assert p["auto"]["kind"] == "dsn" and "bounced" not in p["auto"]


def test_mailer_daemon_without_a_report_is_a_bounce():
    raw = _raw("failure notice", sender="MAILER-DAEMON@mx.musteri.example",
               headers={"X-Failed-Recipients": "ayse@musteri.example"},
               body="Hi. This is the qmail-send program. I'm afraid I wasn't able to deliver your message.")
    auto = mail.parse(raw, MAILBOX)["auto"]
    assert auto["kind"] == "bounce" and auto["bounced"][0]["address"] == "ayse@musteri.example"


# ------------------------------------------------------------------------------------------ real servers
def _counts(conn):
    return conn.execute("select (select count(*) from public.conversations where channel_account_id = %s) as convs, "
                        "(select count(*) from public.leads) as leads, "
                        "(select count(*) from public.contacts where channel = 'email') as contacts",
                        (EMAIL_CHANNEL,)).fetchone()


def test_reply_to_our_reply_bounce_and_out_of_office(conn, db_url, dovecot, smtp_server):  # noqa: F811
    _configure(conn, dovecot, smtp_server)
    _append(dovecot, "INBOX", _mail("Randevu", "Ayşe <ayse@musteri.example>", "<t1@musteri.example>", "Randevu almak istiyorum"))
    _sync(db_url)
    conv = conn.execute("select id from public.conversations where thread_key = '<t1@musteri.example>'").fetchone()["id"]
    conn.execute("update public.conversations set assignee_id = null where id = %s", (conv,))
    with as_user(conn, "agent@demo.luna.local") as cur:
        msg = cur.execute("select * from public.send_message(%s, 'Salı 10:00 uygun.')", (conv,)).fetchone()
    drain(db_url, "inbox_outbound")
    [envelope] = smtp_server["handler"].messages
    ours = email.message_from_bytes(envelope.content)["Message-ID"]

    # The customer's reply names only our reply (In-Reply-To, no References): the same conversation.
    _append(dovecot, "INBOX", _mail("Re: Randevu", "Ayşe <ayse@musteri.example>", "<t2@musteri.example>",
                                    "Tamam, görüşürüz.", in_reply_to=ours))
    _sync(db_url)
    assert conn.execute("select conversation_id from public.messages where provider_message_id = '<t2@musteri.example>'"
                        ).fetchone()["conversation_id"] == conv
    # ... and one whose References name an old id first and ours last: the same conversation too.
    _append(dovecot, "INBOX", _mail("Re: Randevu", "Ayşe <ayse@musteri.example>", "<t3@musteri.example>",
                                    "Bir şey daha", references=f"<unknown@elsewhere.example> {ours}"))
    _sync(db_url)
    assert conn.execute("select conversation_id from public.messages where provider_message_id = '<t3@musteri.example>'"
                        ).fetchone()["conversation_id"] == conv

    conn.execute("update public.conversations set status = 'resolved' where id = %s", (conv,))
    before = _counts(conn)
    # An out-of-office answer in the thread: kept there, the conversation stays resolved.
    ooo = _mail("Otomatik yanıt: Re: Randevu", "Ayşe <ayse@musteri.example>", "<ooo1@musteri.example>",
                "Ofis dışındayım.", in_reply_to=ours)
    ooo = ooo.replace(b"Subject:", b"Auto-Submitted: auto-replied\r\nSubject:", 1)
    _append(dovecot, "INBOX", ooo)
    # An out-of-office answer from someone we never wrote to, and a bulk mail: nothing at all.
    _append(dovecot, "INBOX", _raw("Out of Office", sender="Yabancı <stranger@baska.example>").replace(
        b"<x1@musteri.example>", b"<ooo2@baska.example>"))
    _append(dovecot, "INBOX", _raw("Kampanya", sender="news@bulten.example", headers={"Precedence": "bulk"}).replace(
        b"<x1@musteri.example>", b"<bulk1@bulten.example>"))
    # The bounce of our reply (a report from MAILER-DAEMON naming our Message-ID only in its attachment).
    _append(dovecot, "INBOX", _dsn(ours, "ayse@musteri.example"))
    _sync(db_url)
    after = _counts(conn)
    assert after == before, (before, after)
    assert conn.execute("select status from public.conversations where id = %s", (conv,)).fetchone()["status"] == "resolved"
    kept = conn.execute("select provider_message_id, conversation_id, payload -> 'auto' ->> 'kind' as kind "
                        "from public.messages where provider_message_id in ('<ooo1@musteri.example>', '<dsn1@mx.musteri.example>', "
                        "'<ooo2@baska.example>', '<bulk1@bulten.example>') order by 1").fetchall()
    assert [(k["provider_message_id"], k["conversation_id"], k["kind"]) for k in kept] == [
        ("<dsn1@mx.musteri.example>", conv, "bounce"), ("<ooo1@musteri.example>", conv, "auto_reply")]
    assert not conn.execute("select 1 from public.contacts where handle like 'mailer-daemon%%' or handle like 'stranger%%'"
                            ).fetchone()
    events = [r["event"] for r in conn.execute("select event from public.conversation_events where conversation_id = %s",
                                               (conv,)).fetchall()]
    assert "bounce" in events and "auto_reply" in events
    contact = conn.execute("select * from public.contacts where channel = 'email' and handle = 'ayse@musteri.example'").fetchone()
    assert contact["bounced_at"] is not None and "5.1.1" in contact["bounce_reason"]
    sent = conn.execute("select status, error_code from public.messages where id = %s", (msg["id"],)).fetchone()
    assert (sent["status"], sent["error_code"]) == ("failed", "bounced")
    # Every event was processed (none failed).
    assert not conn.execute("select 1 from private.inbound_events where provider = 'email' and status <> 'processed'").fetchone()

    # Later sends to the bouncing address are skipped, visibly; nothing reaches SMTP.
    with as_user(conn, "agent@demo.luna.local") as cur:
        skipped = cur.execute("select * from public.send_message(%s, 'Hatırlatma: yarın 10:00')", (conv,)).fetchone()
    assert (skipped["status"], skipped["error_code"]) == ("failed", "recipient_bouncing")
    out = conn.execute("select status, error_code from public.outbound_messages where message_id = %s", (skipped["id"],)).fetchone()
    assert (out["status"], out["error_code"]) == ("failed", "recipient_bouncing")
    drain(db_url, "inbox_outbound")
    assert len(smtp_server["handler"].messages) == 1


def test_bounce_after_queueing_stops_the_send(conn, db_url, dovecot, smtp_server):  # noqa: F811
    """The address bounced between queueing and sending: the worker skips it too."""
    _configure(conn, dovecot, smtp_server)
    _append(dovecot, "INBOX", _mail("Fiyat", "Can <can@musteri.example>", "<c1@musteri.example>", "Fiyat nedir?"))
    _sync(db_url)
    conv = conn.execute("select id from public.conversations where thread_key = '<c1@musteri.example>'").fetchone()["id"]
    conn.execute("update public.conversations set assignee_id = null where id = %s", (conv,))
    with as_user(conn, "agent@demo.luna.local") as cur:
        msg = cur.execute("select * from public.send_message(%s, '1000 TL')", (conv,)).fetchone()
    _append(dovecot, "INBOX", _dsn("<earlier@demo-klinik.example>", "can@musteri.example", message_id="<dsn2@mx.example>"))
    _sync(db_url)
    drain(db_url, "inbox_outbound")
    out = conn.execute("select status, error_code from public.outbound_messages where message_id = %s", (msg["id"],)).fetchone()
    assert (out["status"], out["error_code"]) == ("failed", "recipient_bouncing")
    assert smtp_server["handler"].messages == []
    # A reply the person writes again clears the mark.
    _append(dovecot, "INBOX", _mail("Re: Fiyat", "Can <can@musteri.example>", "<c2@musteri.example>", "Adresim çalışıyor",
                                    in_reply_to="<c1@musteri.example>"))
    _sync(db_url)
    assert conn.execute("select bounced_at from public.contacts where handle = 'can@musteri.example'").fetchone()["bounced_at"] is None
