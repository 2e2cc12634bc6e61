"""SMTP sending (smtplib, run in a thread by the worker), with RFC 5322 threading headers."""

from __future__ import annotations

import smtplib
import ssl as ssl_lib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from ..errors import JobError

# 4xx replies are transient (greylisting, mailbox busy); 5xx are permanent.


def render_template(request: dict) -> dict:
    """An e-mail template ({"components": [{"type": "SUBJECT", "text"}, {"type": "BODY", "text"}]}) with its
    {{1}}, {{2}} … variables filled in."""
    tpl = request.get("template") or {}
    values = [str(v) for v in tpl.get("variables") or []]

    def fill(text: str) -> str:
        for i, value in enumerate(values, start=1):
            text = text.replace("{{%d}}" % i, value)
        return text

    parts = {str(c.get("type", "")).upper(): c.get("text", "") for c in tpl.get("components") or []}
    out = dict(request)
    out["body"] = fill(parts.get("BODY", request.get("body") or ""))
    if parts.get("SUBJECT") and not request.get("in_reply_to"):
        out["subject"] = fill(parts["SUBJECT"])
    return out


def build(sender: str, sender_name: str | None, request: dict) -> EmailMessage:
    if request.get("type") == "template":
        request = render_template(request)
    msg = EmailMessage()
    msg["From"] = f"{sender_name} <{sender}>" if sender_name else sender
    msg["To"] = request["to"]
    msg["Subject"] = request.get("subject") or "(no subject)"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "luna.local")
    if request.get("in_reply_to"):
        msg["In-Reply-To"] = request["in_reply_to"]
    if request.get("references"):
        msg["References"] = " ".join(request["references"])
    msg.set_content(request.get("body") or "")
    return msg


def send(host: str, port: int, sender: str, request: dict, *, username: str | None = None,
         password: str | None = None, sender_name: str | None = None, use_ssl: bool = False,
         starttls: bool = False, timeout: float = 30.0) -> str:
    """Send one e-mail; returns its Message-ID."""
    msg = build(sender, sender_name, request)
    try:
        smtp_cls = smtplib.SMTP_SSL if use_ssl else smtplib.SMTP
        with smtp_cls(host, port, timeout=timeout) as smtp:
            if starttls:
                smtp.starttls(context=ssl_lib.create_default_context())
            if username and password:
                smtp.login(username, password)
            smtp.send_message(msg)
    except smtplib.SMTPResponseException as exc:
        raise JobError(f"code=smtp_{exc.smtp_code}: {exc.smtp_error!r}", retryable=400 <= exc.smtp_code < 500) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise JobError(f"code=smtp_recipient_refused: {exc.recipients}", retryable=False) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise JobError(f"code=smtp_unreachable: {exc!r}", retryable=True) from exc
    return msg["Message-ID"]
