"""IMAP mailbox sync with imapclient: UID-based incremental fetch per folder, UIDVALIDITY-aware.

Blocking (imapclient is synchronous): the worker runs it in a thread. Each fetched message becomes a
normalised inbound event (see private.process_normalized_event) keyed by its Message-ID, so fetching
a message twice (a UIDVALIDITY reset, a copy in another folder) stores it once.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
import re
from dataclasses import dataclass, field
from html import unescape

from imapclient import IMAPClient

MAX_BODY_CHARS = 100_000


@dataclass
class FetchedMail:
    folder: str
    uid: int
    payload: dict


@dataclass
class FolderResult:
    folder: str
    uidvalidity: int
    last_uid: int
    messages: list[FetchedMail] = field(default_factory=list)
    reset: bool = False


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
    return {"from": other[1], "name": other[0] or None, "email": other[1], "message_id": message_id,
            "thread_key": thread_key, "in_reply_to": in_reply_to, "references": references,
            "subject": str(msg.get("Subject") or "") or None, "body": _text_of(msg), "type": "email",
            "attachments": attachments, "date": date, "folder": folder,
            "direction": "outbound" if outbound else "inbound"}


def sync(host: str, port: int, username: str, password: str, folders: list[str], state: dict, *,
         mailbox_address: str, ssl: bool = True, starttls: bool = False, timeout: float = 30.0,
         batch: int = 200) -> list[FolderResult]:
    """Fetch what is new in each folder since `state` ({folder: {"uidvalidity", "uid"}})."""
    results = []
    with IMAPClient(host, port=port, ssl=ssl, timeout=timeout) as client:
        if starttls:
            client.starttls()
        client.login(username, password)
        for folder in folders:
            info = client.select_folder(folder, readonly=True)
            uidvalidity = int(info[b"UIDVALIDITY"])
            previous = state.get(folder) or {}
            reset = previous.get("uidvalidity") not in (None, uidvalidity)
            last = 0 if reset else int(previous.get("uid", 0))
            # "last+1:*" always includes the highest UID, even when it is not new: filter.
            uids = sorted(u for u in client.search(["UID", f"{last + 1}:*"]) if u > last)
            result = FolderResult(folder, uidvalidity, last, reset=reset)
            for start in range(0, len(uids), batch):
                chunk = uids[start:start + batch]
                for uid, data in sorted(client.fetch(chunk, ["BODY.PEEK[]"]).items()):
                    raw = data.get(b"BODY[]")
                    if raw is None:
                        continue
                    result.messages.append(FetchedMail(folder, uid, parse(raw, mailbox_address, folder)))
                    result.last_uid = max(result.last_uid, uid)
            results.append(result)
    return results
