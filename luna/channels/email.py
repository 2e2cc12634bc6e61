"""E-mail: a raw RFC 5322 message -> the inbox's normalised event (private.process_normalized_event):
threading (Message-ID, In-Reply-To, References), direction, text body, attachments, and machine mail
(delivery status notifications, auto-replies) under `auto`. The worker's IMAP sync
(worker/adapters/imap_mail.py) fetches the bytes; parsing them is the core's, like every provider's.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
import re
from html import unescape

MAX_BODY_CHARS = 100_000


def _addresses(value) -> list[tuple[str, str]]:
    return [(name, addr.lower()) for name, addr in email.utils.getaddresses([str(value)] if value else []) if addr]


def _ids(value) -> list[str]:
    return re.findall(r"<[^<>\s]+>", str(value or ""))


def _text_of(msg: email.message.EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        text = part.get_content()
    except (LookupError, UnicodeDecodeError):
        text = part.get_payload(decode=True).decode("utf-8", "replace")
    if part.get_content_type() == "text/html":
        text = unescape(re.sub(r"<[^>]+>", " ", text))
    return text.strip()[:MAX_BODY_CHARS]


# ------------------------------------------------------------------------------------------ machine mail
# Mail no person wrote (issue 10): delivery-status reports (RFC 3464), bounces from MAILER-DAEMON,
# RFC 3834 Auto-Submitted (anything but "no") and the usual out-of-office markers. Such mail never
# creates a lead or re-opens a conversation (private.ingest_machine_mail).
BOUNCE_SENDERS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"}
AUTO_PRECEDENCE = {"auto_reply", "bulk", "junk"}
AUTO_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[- ]?(reply|response|antwort)|autoreply|"
    r"otomatik (yan[ıi]t|cevap)|ofis d[ıi][şs][ıi]nday[ıi]m|abwesenheitsnotiz|automatische antwort|"
    r"r[ée]ponse automatique|absence du bureau|respuesta autom[áa]tica|fuera de la oficina|risposta automatica|"
    r"i am out of|i'?m out of|i am away|vacation (reply|response)|away from (the )?office)", re.I)
BOUNCE_SUBJECT = re.compile(
    r"^\s*(undeliver(ed|able)( mail)?|mail delivery (failed|failure|subsystem)|delivery status notification \(failure\)|"
    r"returned mail|failure notice|delivery failure|iletilemedi|teslim edilemedi)", re.I)


def _report_blocks(part) -> list[dict[str, str]]:
    """The field blocks of a message/delivery-status part (per-message first, then per recipient)."""
    payload = part.get_payload()
    texts = []
    if isinstance(payload, list):
        for block in payload:
            texts.append("".join(f"{k}: {v}\n" for k, v in block.items()))
    else:
        raw = part.get_payload(decode=True) or str(payload).encode()
        texts = re.split(r"\r?\n\s*\r?\n", raw.decode("utf-8", "replace"))
    blocks = []
    for text in texts:
        fields: dict[str, str] = {}
        for line in re.sub(r"\r?\n[ \t]+", " ", text).splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip():
                fields[name.strip().lower()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def _address_of(field: str | None) -> str | None:
    """'rfc822; user@example.com' -> user@example.com"""
    if not field:
        return None
    value = field.partition(";")[2] if ";" in field else field
    value = value.strip().strip("<>").strip().lower()
    return value if "@" in value else None


def machine_mail(msg: email.message.EmailMessage, sender: str) -> dict | None:
    """What kind of machine mail this is ({"kind": "bounce" | "dsn" | "auto_reply", ...}), or None for a person's."""
    reasons = []
    bounced: list[dict] = []
    original = None
    is_report = msg.get_content_type() == "multipart/report" and \
        str(msg.get_param("report-type", "")).lower() == "delivery-status"
    failed_action = False
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            is_report = True
            for block in _report_blocks(part):
                addr = _address_of(block.get("final-recipient") or block.get("original-recipient"))
                action = block.get("action", "").lower()
                if addr and action:
                    failed_action = failed_action or action == "failed"
                    if action == "failed":
                        bounced.append({"address": addr, "status": block.get("status"),
                                        "diagnostic": block.get("diagnostic-code")})
        elif ctype in ("message/rfc822", "message/global", "text/rfc822-headers") and original is None:
            inner = part.get_payload()
            if isinstance(inner, list):
                inner = inner[0] if inner else None
            if not isinstance(inner, email.message.Message):
                text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
                inner = email.message_from_string(text, policy=email.policy.default)
            original = (_ids(inner.get("Message-ID")) or [None])[0]
    failed = [a.lower() for _, a in email.utils.getaddresses([str(v) for v in msg.get_all("X-Failed-Recipients") or []]) if a]
    for addr in failed:
        if addr not in {b["address"] for b in bounced}:
            bounced.append({"address": addr, "status": None, "diagnostic": "X-Failed-Recipients"})
    local = sender.partition("@")[0].lower()
    subject = str(msg.get("Subject") or "")
    if is_report:
        reasons.append("delivery-status report (RFC 3464)")
    if local in BOUNCE_SENDERS:
        reasons.append(f"sender {local}")
    if failed:
        reasons.append("X-Failed-Recipients")
    if is_report:
        bounce = failed_action or bool(failed)
    else:
        bounce = bool(bounced) or local in BOUNCE_SENDERS
    if str(msg.get("Return-Path") or "").strip() == "<>":
        reasons.append("null Return-Path")
    auto_submitted = str(msg.get("Auto-Submitted") or "").split(";")[0].strip().lower()
    if auto_submitted and auto_submitted != "no":
        reasons.append(f"Auto-Submitted: {auto_submitted}")
    for header in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress", "X-Autogenerated", "X-AutoReply-From"):
        if msg.get(header) is not None:
            reasons.append(header)
    precedence = str(msg.get("Precedence") or "").strip().lower()
    if precedence in AUTO_PRECEDENCE:
        reasons.append(f"Precedence: {precedence}")
    if AUTO_SUBJECT.search(subject):
        reasons.append("subject")
    if BOUNCE_SUBJECT.search(subject) and "subject" not in reasons:
        reasons.append("bounce subject")
    if not reasons:
        return None
    kind = "bounce" if bounce else "dsn" if is_report else "auto_reply"
    out = {"kind": kind, "reasons": reasons}
    if bounced:
        out["bounced"] = bounced
    if original:
        out["original_message_id"] = original
    return out


def parse(raw: bytes, mailbox_address: str, folder: str = "INBOX") -> dict:
    """A raw RFC 5322 message as the inbox's normalised payload (threading, attachments, direction)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    sender = (_addresses(msg.get("From")) or [("", "")])[0]
    recipients = _addresses(msg.get("To")) + _addresses(msg.get("Cc"))
    message_id = (_ids(msg.get("Message-ID")) or [f"<sha256.{hashlib.sha256(raw).hexdigest()}@luna>"])[0]
    references = _ids(msg.get("References"))
    in_reply_to = (_ids(msg.get("In-Reply-To")) or [None])[0]
    # The thread's root: the first reference, else the message replied to, else the message itself.
    thread_key = references[0] if references else (in_reply_to or message_id)
    outbound = sender[1] == mailbox_address.lower() or folder.lower() in ("sent", "sent items", "sent messages", "gönderilmiş")
    other = (recipients[0] if recipients else ("", "")) if outbound else sender
    attachments = []
    for part in msg.iter_attachments():
        data = part.get_payload(decode=True) or b""
        attachments.append({"filename": part.get_filename(), "mime_type": part.get_content_type(), "size": len(data)})
    date = None
    if msg.get("Date"):
        try:
            date = email.utils.parsedate_to_datetime(str(msg.get("Date"))).isoformat()
        except (TypeError, ValueError):
            date = None
    auto = machine_mail(msg, sender[1])
    if auto and auto.get("original_message_id") and auto["original_message_id"] not in references:
        references = references + [auto["original_message_id"]]
    return {"from": other[1], "name": other[0] or None, "email": other[1], "message_id": message_id,
            "thread_key": thread_key, "in_reply_to": in_reply_to, "references": references,
            "subject": str(msg.get("Subject") or "") or None, "body": _text_of(msg), "type": "email",
            "attachments": attachments, "date": date, "folder": folder,
            "direction": "outbound" if outbound else "inbound", "auto": auto}
