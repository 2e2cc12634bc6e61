"""Telegram Bot API webhook updates -> the inbox's normalised event (private.process_normalized_event).

Updates carry the secret given to setWebhook in the X-Telegram-Bot-Api-Secret-Token header (edge checks
it before this runs)."""

from __future__ import annotations

import datetime as dt

# Update kinds that carry a message (Bot API "Update"): new messages and edits, in chats with the bot
# and in business chats; edits carry the message's new version with edit_date.
_MESSAGE_KINDS = ("message", "edited_message", "business_message", "edited_business_message")
_GROUP_TYPES = ("group", "supergroup")
_MEDIA_KEYS = ("photo", "video", "audio", "voice", "document", "sticker", "animation", "video_note")


def _iso(ts) -> str | None:
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
