"""E-mail against real servers: Debian's dovecot (IMAP, started here with a generated config in a
temporary directory on a free loopback port, a passwd-file user) and aiosmtpd (SMTP).

A thread of three e-mails becomes one conversation; sync is UID-incremental (a second sync fetches
nothing, a new mail only the new one); attachments keep MIME type and size; replies go out through
the outbound queue over SMTP with In-Reply-To / References."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from .conftest import DEMO, as_user, in_worker
from .fakes import free_port
from .test_inbox import drain

MAILBOX = "info@demo-klinik.example"
EMAIL_CHANNEL = "00000000-0000-4000-8006-000000000102"
PASSWORD = "imap-test-password"


def _dovecot_binary() -> str:
    path = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
    if not path:
        pytest.fail("dovecot is not installed: the IMAP tests need a real IMAP server. Install Debian's "
                    "dovecot-imapd (`apt-get install -y dovecot-imapd`; .ci/run does this).", pytrace=False)
    return path


@pytest.fixture(scope="module")
def dovecot():
    """A private dovecot instance: generated config, passwd-file user, free loopback port."""
    binary = _dovecot_binary()
    root = Path(tempfile.mkdtemp(prefix="luna-dovecot-"))
    port = free_port()
    if os.geteuid() == 0:
        mail_user = pwd.getpwnam("dovecot")
        uid, gid = mail_user.pw_uid, mail_user.pw_gid
        internal, login = "dovecot", "dovenull"
    else:
        me = pwd.getpwuid(os.geteuid())
        uid, gid, internal, login = me.pw_uid, me.pw_gid, me.pw_name, me.pw_name
    home = root / "home" / "info"
    home.mkdir(parents=True)
    for d in (root / "run", root / "state"):
        d.mkdir()
    if os.geteuid() == 0:
        for p in (root / "home", home):
            os.chown(p, uid, gid)
        os.chmod(root, 0o755)
    (root / "passwd").write_text(f"{MAILBOX}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{home}\n")
    (root / "dovecot.conf").write_text(f"""
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = luna-test-{port}
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {min(uid, 100)}
first_valid_gid = {min(gid, 100)}
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
}}
""")
    proc = subprocess.Popen([binary, "-F", "-c", str(root / "dovecot.conf")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(100).startswith(b"* OK"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
            out = proc.stdout.read().decode() if proc.poll() is not None else ""
            proc.kill()
            pytest.fail(f"dovecot did not start on 127.0.0.1:{port}:\n{out}\n{log}", pytrace=False)
        time.sleep(0.1)
    try:
        yield {"host": "127.0.0.1", "port": port, "user": MAILBOX, "password": PASSWORD}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _mail(subject, sender, message_id, body, *, in_reply_to=None, references=None, attachment=None, to=MAILBOX):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = message_id
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0300"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    msg.set_content(body)
    if attachment:
        name, mime, data = attachment
        maintype, subtype = mime.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def _append(server, folder, raw):
    from imapclient import IMAPClient

    with IMAPClient(server["host"], port=server["port"], ssl=False) as c:
        c.login(server["user"], server["password"])
        c.append(folder, raw)


def _configure(conn, imap, smtp=None):
    from luna import secrets

    settings = {"imap_host": imap["host"], "imap_port": imap["port"], "imap_ssl": False, "folders": ["INBOX", "Sent"]}
    if smtp:
        settings |= {"smtp_host": smtp["host"], "smtp_port": smtp["port"], "sender_name": "Demo Klinik", "smtp_auth": False}
    conn.execute("update public.channel_accounts set settings = %s::jsonb where id = %s",
                 (__import__("json").dumps(settings), EMAIL_CHANNEL))
    secrets.set_channel_credentials(conn, EMAIL_CHANNEL, {"username": imap["user"], "password": imap["password"]})


def _sync(db_url):
    from worker.inbox.sync import sync_mailbox

    result = asyncio.run(in_worker(db_url, lambda ctx: sync_mailbox(ctx, EMAIL_CHANNEL)))
    drain(db_url)
    return result


def test_imap_thread_of_three_is_one_conversation(conn, db_url, dovecot):
    _configure(conn, dovecot)
    pdf = b"%PDF-1.4 fake teklif " * 50
    _append(dovecot, "INBOX", _mail("Teklif talebi", "Ali Veli <ali@musteri.example>", "<m1@musteri.example>",
                                    "Merhaba, implant için teklif alabilir miyim?", attachment=("teklif.pdf", "application/pdf", pdf)))
    _append(dovecot, "Sent", _mail("Re: Teklif talebi", f"Demo Klinik <{MAILBOX}>", "<m2@demo-klinik.example>",
                                   "Teklifimiz ektedir.", in_reply_to="<m1@musteri.example>",
                                   references="<m1@musteri.example>", to="ali@musteri.example"))
    _append(dovecot, "INBOX", _mail("Re: Teklif talebi", "Ali Veli <ali@musteri.example>", "<m3@musteri.example>",
                                    "Teşekkürler, randevu alalım.", in_reply_to="<m2@demo-klinik.example>",
                                    references="<m1@musteri.example> <m2@demo-klinik.example>"))
    # Another thread from the same sender: a second conversation.
    _append(dovecot, "INBOX", _mail("Fatura", "Ali Veli <ali@musteri.example>", "<m4@musteri.example>", "Fatura lazım"))
    first = _sync(db_url)
    assert first["stored"] == 4
    convs = conn.execute("select v.id, v.thread_key, v.subject, (select count(*) from public.messages m where m.conversation_id = v.id) as n "
                         "from public.conversations v where v.channel_account_id = %s order by v.thread_key", (EMAIL_CHANNEL,)).fetchall()
    assert [(c["thread_key"], c["n"]) for c in convs] == [("<m1@musteri.example>", 3), ("<m4@musteri.example>", 1)]
    msgs = conn.execute("select * from public.messages where conversation_id = %s order by created_at, provider_message_id",
                        (convs[0]["id"],)).fetchall()
    directions = {m["provider_message_id"]: m["direction"] for m in msgs}
    assert directions == {"<m1@musteri.example>": "inbound", "<m2@demo-klinik.example>": "outbound",
                          "<m3@musteri.example>": "inbound"}
    m1 = next(m for m in msgs if m["provider_message_id"] == "<m1@musteri.example>")
    assert m1["attachments"] == [{"filename": "teklif.pdf", "mime_type": "application/pdf", "size": len(pdf)}]
    contact = conn.execute("select * from public.contacts where channel = 'email' and handle = 'ali@musteri.example'").fetchone()
    assert contact["email"] == "ali@musteri.example" and contact["display_name"] == "Ali Veli"

    # Incremental: nothing new, nothing fetched; a new mail: only it.
    state = conn.execute("select sync_state from public.channel_accounts where id = %s", (EMAIL_CHANNEL,)).fetchone()["sync_state"]
    assert state["INBOX"]["uid"] == 3 and state["INBOX"]["uidvalidity"] > 0
    assert _sync(db_url)["stored"] == 0
    _append(dovecot, "INBOX", _mail("Re: Teklif talebi", "ali@musteri.example", "<m5@musteri.example>", "Salı uygun mu?",
                                    references="<m1@musteri.example> <m2@demo-klinik.example> <m3@musteri.example>"))
    assert _sync(db_url)["stored"] == 1
    assert conn.execute("select count(*) as n from public.messages where conversation_id = %s",
                        (convs[0]["id"],)).fetchone()["n"] == 4


def test_smtp_reply_through_outbound_queue(conn, db_url, dovecot, smtp_server):
    _configure(conn, dovecot, smtp_server)
    _append(dovecot, "INBOX", _mail("Randevu", "Ayşe <ayse@musteri.example>", "<r1@musteri.example>", "Randevu almak istiyorum"))
    _sync(db_url)
    conv = conn.execute("select id from public.conversations where thread_key = '<r1@musteri.example>'").fetchone()["id"]
    conn.execute("update public.conversations set assignee_id = null where id = %s", (conv,))
    with as_user(conn, "agent@demo.luna.local") as cur:
        msg = cur.execute("select * from public.send_message(%s, 'Salı 10:00 uygun.')", (conv,)).fetchone()
    drain(db_url, "inbox_outbound")
    out = conn.execute("select * from public.outbound_messages where message_id = %s", (msg["id"],)).fetchone()
    assert out["status"] == "sent", out["last_error"]
    [envelope] = smtp_server["handler"].messages
    assert envelope.rcpt_tos == ["ayse@musteri.example"] and envelope.mail_from == MAILBOX
    import email

    sent = email.message_from_bytes(envelope.content)
    assert sent["In-Reply-To"] == "<r1@musteri.example>" and sent["Subject"] == "Re: Randevu"
    stored = conn.execute("select provider_message_id, status from public.messages where id = %s", (msg["id"],)).fetchone()
    assert stored["provider_message_id"] == sent["Message-ID"] and stored["status"] == "sent"
    assert str(conn.execute("select tenant_id from public.conversations where id = %s", (conv,)).fetchone()["tenant_id"]) == DEMO


def test_uidvalidity_change_resyncs_the_folder(conn, db_url, dovecot):
    from imapclient import IMAPClient

    _configure(conn, dovecot)
    conn.execute("""update public.channel_accounts set settings = jsonb_set(settings, '{folders}', '["Archive"]')
                    where id = %s""", (EMAIL_CHANNEL,))
    with IMAPClient(dovecot["host"], port=dovecot["port"], ssl=False) as c:
        c.login(dovecot["user"], dovecot["password"])
        if not c.folder_exists("Archive"):
            c.create_folder("Archive")
    _append(dovecot, "Archive", _mail("Eski", "eski@musteri.example", "<a1@musteri.example>", "arşiv"))
    assert _sync(db_url)["stored"] == 1
    before = conn.execute("select sync_state from public.channel_accounts where id = %s", (EMAIL_CHANNEL,)).fetchone()["sync_state"]["Archive"]
    # The server recreates the folder: new UIDVALIDITY, UIDs start again at 1.
    with IMAPClient(dovecot["host"], port=dovecot["port"], ssl=False) as c:
        c.login(dovecot["user"], dovecot["password"])
        c.delete_folder("Archive")
        c.create_folder("Archive")
    _append(dovecot, "Archive", _mail("Eski", "eski@musteri.example", "<a1@musteri.example>", "arşiv"))
    _append(dovecot, "Archive", _mail("Yeni", "yeni@musteri.example", "<a2@musteri.example>", "yeni"))
    result = _sync(db_url)
    after = conn.execute("select sync_state from public.channel_accounts where id = %s", (EMAIL_CHANNEL,)).fetchone()["sync_state"]["Archive"]
    assert after["uidvalidity"] != before["uidvalidity"] and after["uid"] == 2
    # Both fetched again; the one already stored (same Message-ID) is not stored twice.
    assert result["stored"] == 1
    assert conn.execute("select count(*) as n from public.messages where provider_message_id in ('<a1@musteri.example>', '<a2@musteri.example>')"
                        ).fetchone()["n"] == 2
