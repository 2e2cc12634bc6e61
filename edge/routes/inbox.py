"""Inbox endpoints: SMS (Twilio) and Telegram webhooks, web chat, channel credentials, the media proxy
and a thin wrapper around the send RPC. Meta's webhooks (WhatsApp, Instagram, Messenger) are
edge/routes/meta.py.

Webhooks do as little as possible: verify the caller, store the event in private.inbound_events (unique
provider event id, so a redelivery is a no-op) and answer at once; the payload is read by the core
(luna/channels/<provider>.py) and the worker (worker/inbox) turns events into contacts, conversations
and messages.
"""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from luna import secrets
from luna.channels import telegram, twilio
from luna.channels.graph import GraphAdapter
from luna.channels.http import AdapterError

from .. import openapi as oa
from ..auth import ascii_header, header_bytes, secret_equal
from ..db import as_service, as_user, service_call
from ..errors import ApiError
from ..webhook_urls import signed_url, url_variants

router = APIRouter(tags=["inbox"])

class WebChatMessage(BaseModel):
    session_id: str = Field(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9_.:-]{8,128}$",
                            description="the visitor's id, kept by the widget (a random UUID)")
    client_message_id: str = Field(min_length=1, max_length=128, description="unique per message (retries are no-ops)")
    text: str = Field(max_length=4000, description="refused (422 empty_message) when only white space or "
                                                   "invisible characters")
    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40)
    utm: dict[str, str] | None = Field(default=None, description="utm_source, utm_medium, utm_campaign … of the page")


def _refuse_nul(*values) -> None:
    """Postgres text cannot hold NUL: say so (400) instead of failing in the driver."""
    for v in values:
        if isinstance(v, str) and "\x00" in v:
            raise ApiError(400, "invalid_input", "the request contains a NUL character (U+0000)")
        if isinstance(v, dict):
            _refuse_nul(*v.keys(), *v.values())


@router.post("/v1/webchat/{widget_key}/messages", status_code=202,
             responses={404: {"description": "unknown_widget"},
                        422: {"description": "empty_message, invalid_session, invalid_request"},
                        429: {"description": "rate_limited (a per-session, per-address or per-widget limit, or the "
                                             "new-session cap); the Retry-After header says when to try again"}})
async def webchat_message(widget_key: str, message: WebChatMessage, request: Request):
    """A visitor's message from the web-chat widget (public; the widget key names the inbox).
    Limits and validation live in private.webchat_receive (docs/inbox.md, "Web chat limits")."""
    _refuse_nul(widget_key, message.session_id, message.client_message_id, message.text, message.name,
                message.email, message.phone, message.utm or {})
    utm = {k: v for k, v in (message.utm or {}).items() if k.startswith("utm_")} or None
    async with as_service(request) as conn:
        row = await (await conn.execute(
            "select private.webchat_receive(%s, %s, %s, %s, %s, %s, %s, %s, %s) as r",
            (widget_key, message.session_id, message.client_message_id, message.text, message.name, message.email,
             message.phone, Jsonb(utm) if utm else None, request.client.host if request.client else None))).fetchone()
    result = row["r"]
    if result.get("refused"):
        wait = max(1, int(result.get("retry_after_s") or 1))
        raise ApiError(429, "rate_limited", f"too many messages ({result['refused']}); try again in {wait} s",
                       details={"limit": result["refused"], "retry_after_s": wait},
                       headers={"Retry-After": str(wait)})
    return {"received": True, "duplicate": not result["inserted"]}


@router.get("/v1/webchat/{widget_key}/messages")
async def webchat_history(widget_key: str, request: Request,
                          session_id: str = Query(min_length=8, max_length=128, description="the visitor's id"),
                          since: datetime | None = Query(None, description="only messages after this time")):
    """The visitor's conversation (their messages and our replies, never internal notes), for the widget
    to poll. The session id is the visitor's secret: the widget makes it random (a UUID) and keeps it."""
    _refuse_nul(widget_key, session_id, since)
    if len(session_id) < 8:
        raise ApiError(422, "invalid_session", "session_id must be the widget's random visitor id")
    async with as_service(request) as conn:
        rows = await (await conn.execute("""
            select m.id, m.direction, m.type, m.body, m.status, m.created_at
            from public.channel_accounts a
            join public.contacts ct on ct.tenant_id = a.tenant_id and ct.channel = 'webchat' and ct.handle = %s
            join public.conversations v on v.tenant_id = a.tenant_id and v.contact_id = ct.id and v.channel_account_id = a.id
            join public.messages m on m.tenant_id = v.tenant_id and m.conversation_id = v.id
            where a.kind = 'webchat' and a.external_id = %s and a.active and m.direction in ('inbound', 'outbound')
              and (%s::timestamptz is null or m.created_at > %s::timestamptz)
            order by m.created_at, m.id limit 200""", (session_id, widget_key, since, since))).fetchall()
    return {"messages": [{**r, "id": str(r["id"]), "created_at": r["created_at"].isoformat()} for r in rows]}


class SendRequest(BaseModel):
    body: str | None = None
    template: dict | None = Field(default=None, description='{"name": ..., "language": ..., "variables": [...]}')
    media: dict | None = None
    idempotency_key: str | None = Field(default=None, max_length=200)


@router.post("/v1/inbox/conversations/{conversation_id}/messages", status_code=202)
async def send(conversation_id: UUID, req: SendRequest, conn: psycopg.AsyncConnection = Depends(as_user)):
    """Queue a message (public.send_message): 422 outside_24h_window when WhatsApp needs a template."""
    row = await (await conn.execute(
        "select id, status, type from public.send_message(%s, %s, %s, %s, %s)",
        (conversation_id, req.body, Jsonb(req.template) if req.template else None, req.idempotency_key,
         Jsonb(req.media) if req.media else None))).fetchone()
    return JSONResponse({"message_id": str(row["id"]), "status": row["status"], "type": row["type"]}, status_code=202)


# ------------------------------------------------------------------------------------------ SMS, Telegram
async def _channel_secret(request: Request, channel_id: str, kind: str) -> tuple[dict, dict]:
    """(channel row, decrypted credentials) of an active channel of this kind, or 404."""
    async with as_service(request) as conn:
        row = await (await conn.execute("select * from private.channel_for_worker(%s::uuid)", (channel_id,))).fetchone()
        if row is None or row["kind"] != kind:
            raise ApiError(404, "unknown_channel", f"no {kind} channel {channel_id}")
        creds = json.loads(await secrets.adecrypt(row["secret"], conn)) if row["secret"] else {}
    return row, creds


TWILIO_FORM = {"type": "object", "additionalProperties": {"type": "string"}, "properties": {
    "MessageSid": {"type": "string"}, "From": {"type": "string"}, "To": {"type": "string"}, "Body": {"type": "string"},
    "NumMedia": {"type": "string", "pattern": "^[0-9]{1,2}$"}, "MessageStatus": {"type": "string"},
    "ErrorCode": {"type": "string"}, "ErrorMessage": {"type": "string"}}}


@router.post("/v1/webhooks/twilio/{channel_id}", openapi_extra=oa.op(
    body=oa.raw_body("application/x-www-form-urlencoded", TWILIO_FORM, description="Twilio's callback parameters"),
    params=[oa.header("X-Twilio-Signature", "base64 HMAC-SHA1 of the URL and the sorted parameters", required=True)],
    security=oa.NO_SECURITY))
async def twilio_event(channel_id: UUID, request: Request):
    """Twilio inbound SMS and status callbacks (form-encoded, X-Twilio-Signature checked first)."""
    ch, creds = await _channel_secret(request, channel_id, "sms_twilio")
    params = {k: str(v) for k, v in (await request.form()).items()}
    # The URL Twilio signed (public URL behind a proxy, query string included): edge/webhook_urls.py.
    header = ascii_header(request, "x-twilio-signature")
    url = signed_url(request, (ch["settings"] or {}).get("webhook_url"))
    if not any(twilio.signature_ok(creds.get("auth_token", ""), u, params, header) for u in url_variants(url)):
        raise ApiError(401, "bad_signature", "X-Twilio-Signature does not match",
                       hint="behind a proxy set LUNA_PUBLIC_URL (or the channel's settings.webhook_url) to the URL "
                            "Twilio calls; the signature covers it with its query string")
    try:
        event_id, payload = twilio.form_event(params)
    except ValueError as exc:
        raise ApiError(400, "malformed_body", str(exc))
    row = await service_call(request, "select event_id, inserted from private.receive_event('sms', %s, %s, '{}', null, null, %s)",
                              (event_id, Jsonb(payload), channel_id))
    return Response(b"<Response/>" if row else b"", media_type="application/xml")


@router.post("/v1/webhooks/telegram/{channel_id}", openapi_extra=oa.op(
    body=oa.raw_body("application/json", oa.JSON_OBJECT, description="a Telegram Update"),
    params=[oa.header("X-Telegram-Bot-Api-Secret-Token", "the secret_token given to setWebhook", required=True)],
    security=oa.NO_SECURITY))
async def telegram_event(channel_id: UUID, request: Request):
    """Telegram bot updates (setWebhook with secret_token; the header is checked first)."""
    _, creds = await _channel_secret(request, channel_id, "telegram")
    if not secret_equal(header_bytes(request, "x-telegram-bot-api-secret-token"), creds.get("webhook_secret")):
        raise ApiError(401, "bad_signature", "X-Telegram-Bot-Api-Secret-Token does not match")
    try:
        update = json.loads(await request.body())
    except ValueError:
        raise ApiError(400, "malformed_body", "the body is not JSON")
    if not isinstance(update, dict):
        raise ApiError(400, "malformed_body", "a Telegram Update is a JSON object")
    # The sender (not the chat) is the contact; a group is one conversation; an edit updates the message.
    payload = telegram.update_payload(update)
    if payload is None:
        return {"received": True, "ignored": True}
    row = await service_call(request, "select event_id, inserted from private.receive_event('telegram', %s, %s, '{}', null, null, %s)",
                              (f"tg:{channel_id}:{update.get('update_id')}", Jsonb(payload), channel_id))
    return {"received": True, "duplicate": not row["inserted"]}


class CredentialsRequest(BaseModel):
    credentials: dict[str, str] = Field(description="access_token, app_secret, password, auth_token, bot_token …")


@router.put("/v1/inbox/channels/{channel_id}/credentials", status_code=204)
async def set_credentials(channel_id: UUID, req: CredentialsRequest, request: Request,
                          conn: psycopg.AsyncConnection = Depends(as_user)):
    """Store a channel's credentials encrypted (owners and admins). They are never returned by any API."""
    row = await (await conn.execute(
        "select id, (select private.can('settings', 'manage')) as allowed from public.channel_accounts where id = %s",
        (channel_id,))).fetchone()
    if row is None:
        raise ApiError(404, "not_found", "no such channel")
    if not row["allowed"]:
        raise ApiError(403, "forbidden", "only owners and admins manage channel credentials")
    async with as_service(request) as service:
        stored = await secrets.aencrypt(service, json.dumps(req.credentials), f"channel:{channel_id}")
        await service.execute("select private.set_channel_secret(%s, %s)", (channel_id, stored))
    return Response(status_code=204)


@router.get("/v1/inbox/messages/{message_id}/media/{index}")
async def message_media(message_id: UUID, request: Request, index: int = PathParam(ge=0),
                        conn: psycopg.AsyncConnection = Depends(as_user)):
    """Stream an inbound WhatsApp attachment to an agent who may see the message (RLS decides), fetched
    from the Cloud API with the channel's token (the token never leaves the server)."""
    import httpx
    from fastapi.responses import StreamingResponse

    row = await (await conn.execute(
        "select m.attachments, v.channel_account_id from public.messages m join public.conversations v "
        "on v.tenant_id = m.tenant_id and v.id = m.conversation_id where m.id = %s", (message_id,))).fetchone()
    if row is None or index < 0 or index >= len(row["attachments"] or []):
        raise ApiError(404, "not_found", "no such message attachment")
    media_id = row["attachments"][index].get("provider_media_id")
    if not media_id:
        raise ApiError(404, "not_found", "this attachment has no provider media id")
    ch, creds = await _channel_secret(request, str(row["channel_account_id"]), "whatsapp")
    token = creds.get("access_token")
    if not token:
        raise ApiError(409, "no_credentials", "the channel has no access token")
    adapter = GraphAdapter((ch["settings"] or {}).get("base_url"))
    try:
        info = await adapter.media_info(media_id, token)
    except AdapterError as exc:
        raise ApiError(502, "provider_error", str(exc))
    finally:
        await adapter.aclose()
    client = httpx.AsyncClient(timeout=30)
    upstream = await client.send(client.build_request("GET", info["url"], headers={"Authorization": f"Bearer {token}"}),
                                 stream=True)
    if upstream.status_code != 200:
        await upstream.aclose()
        await client.aclose()
        raise ApiError(502, "provider_error", f"media download answered HTTP {upstream.status_code}")

    async def body():
        try:
            async for chunk in upstream.aiter_bytes():
                yield chunk
        finally:
            await upstream.aclose()
            await client.aclose()

    return StreamingResponse(body(), media_type=info.get("mime_type") or "application/octet-stream",
                             headers={"Cache-Control": "private, max-age=300"})
