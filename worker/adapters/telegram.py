"""Telegram Bot API.

Send: POST /bot<token>/sendMessage {"chat_id", "text"} answers {"ok": true, "result": {"message_id", ...}};
errors {"ok": false, "error_code", "description", "parameters": {"retry_after"}}. Webhook updates carry
the secret given to setWebhook in the X-Telegram-Bot-Api-Secret-Token header.
"""

from __future__ import annotations

from typing import Any

import httpx

from .base import AdapterError, HttpAdapter


class TelegramAdapter(HttpAdapter):
    module = "telegram"
    default_base_url = "https://api.telegram.org"

    def __init__(self, base_url: str | None = None, **kwargs):
        kwargs.setdefault("retries", 0)
        super().__init__(base_url, **kwargs)

    def classify(self, response: httpx.Response, body: Any) -> AdapterError | None:
        if isinstance(body, dict) and body.get("ok") is False:
            code = body.get("error_code") or response.status_code
            retry_after = (body.get("parameters") or {}).get("retry_after")
            return AdapterError(f"code=telegram_{code}: {body.get('description')}", status=response.status_code,
                                retryable=code == 429 or int(code) >= 500, code=f"telegram_{code}",
                                retry_after=float(retry_after) if retry_after is not None else None, body=body)
        return super().classify(response, body)

    async def send(self, token: str, chat_id: str, text: str) -> str:
        answer = await self.request("POST", f"/bot{token}/sendMessage", json={"chat_id": chat_id, "text": text})
        try:
            return f"tg:{chat_id}:{answer['result']['message_id']}"
        except (KeyError, TypeError) as exc:
            raise AdapterError("telegram answer has no message id", code="wrong_schema", body=answer) from exc


# ------------------------------------------------------------------------------------------ webhook updates
# Update kinds that carry a message (Bot API "Update"): new messages and edits, in chats with the bot
# and in business chats; edits carry the message's new version with edit_date.
_MESSAGE_KINDS = ("message", "edited_message", "business_message", "edited_business_message")
_GROUP_TYPES = ("group", "supergroup")
_MEDIA_KEYS = ("photo", "video", "audio", "voice", "document", "sticker", "animation", "video_note")


def _iso(ts) -> str | None:
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).isoformat() if ts is not None else None
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def update_payload(update: dict) -> dict | None:
    """A Bot API Update as the inbox's normalised payload (private.process_normalized_event), or None
    for updates the inbox does not keep.

    - The contact is the person who wrote (`from.id`), never the chat: in a private chat the two are
      equal; in a group or supergroup every participant is a contact of their own and the chat is one
      conversation (`group`: chat id and title), replies go to the chat.
    - `edited_message` / `edited_business_message` are the message's new version: `edit.at` (edit_date)
      makes the worker update the stored message and keep the earlier version in its history.
    - `deleted_business_messages` lists message ids deleted in a business chat.
    """
    if not isinstance(update, dict):
        return None
    deleted = update.get("deleted_business_messages")
    if isinstance(deleted, dict):
        chat_id = str((deleted.get("chat") or {}).get("id"))
        return {"deleted": {"message_ids": [f"tg:{chat_id}:{m}" for m in deleted.get("message_ids") or []]}}
    kind = next((k for k in _MESSAGE_KINDS if isinstance(update.get(k), dict)), None)
    if kind is None:
        return None
    msg = update[kind]
    chat = msg.get("chat") or {}
    sender = msg.get("from") or msg.get("sender_chat") or {}
    chat_id = str(chat.get("id"))
    sender_id = str(sender.get("id") if sender.get("id") is not None else chat_id)
    name = " ".join(filter(None, [sender.get("first_name"), sender.get("last_name")])) or sender.get("title") or None
    media = next((k for k in _MEDIA_KEYS if k in msg), None)
    payload = {"from": sender_id, "name": name, "message_id": f"tg:{chat_id}:{msg.get('message_id')}",
               "body": msg.get("text") if "text" in msg else msg.get("caption"),
               "type": "text" if "text" in msg or media is None else "media",
               "date": _iso(msg.get("date")),
               "extra": {k: v for k, v in {"username": sender.get("username"), "chat_type": chat.get("type"),
                                           "media": media}.items() if v is not None}}
    if chat.get("type") in _GROUP_TYPES:
        payload["group"] = {"chat_id": chat_id, "title": chat.get("title")}
    if kind.startswith("edited_"):
        payload["edit"] = {"at": _iso(msg.get("edit_date")) or _iso(msg.get("date"))}
    return payload
