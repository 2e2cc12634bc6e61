"""Twilio's inbound SMS and status callbacks: the signature and the form -> the inbox's normalised event
(private.process_normalized_event).

X-Twilio-Signature = base64(HMAC-SHA1(auth token, URL + each POST parameter's name and value, sorted by
name)); the URL is the one Twilio called (edge/webhook_urls.py builds it behind a proxy).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

# Twilio's MessageStatus -> the inbox's message status.
STATUS = {"queued": "queued", "accepted": "queued", "sending": "queued", "sent": "sent",
          "delivered": "delivered", "read": "read", "undelivered": "failed", "failed": "failed"}


def signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    data = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def signature_ok(auth_token: str, url: str, params: dict[str, str], header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(signature(auth_token, url, params), header)


def form_event(params: dict[str, str]) -> tuple[str, dict]:
    """(provider event id, normalised payload) of one callback: an inbound message when it has a Body,
    else a status update of the message named by MessageSid. ValueError when NumMedia is not 0-10 (the
    range Twilio sends)."""
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    media = params.get("NumMedia", "0") or "0"
    if not (media.isascii() and media.isdigit() and int(media) <= 10):
        raise ValueError("NumMedia must be a number from 0 to 10")
    if "Body" in params:
        return f"twilio:{sid}", {
            "from": params.get("From"), "phone": params.get("From"), "message_id": sid, "body": params["Body"],
            "type": "media" if int(media) else "text",
            "attachments": [{"url": params.get(f"MediaUrl{i}"), "mime_type": params.get(f"MediaContentType{i}")}
                            for i in range(int(media))]}
    status = params.get("MessageStatus", "")
    return f"twilio:{sid}:{status}", {"status": {
        "provider_message_id": sid, "status": STATUS.get(status, "sent"),
        "error_code": params.get("ErrorCode"), "error_message": params.get("ErrorMessage")}}
