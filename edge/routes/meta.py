"""Meta's webhooks, written once: one app lookup, one handshake, one signature check, one dispatch.

    GET  /v1/webhooks/meta/{app_id}    subscription handshake (hub.mode, hub.verify_token, hub.challenge)
    POST /v1/webhooks/meta/{app_id}    deliveries (X-Hub-Signature-256 over the raw body)
    GET  /v1/leads/webhooks/meta       the same for the default app (aliases kept for Lead Ads setups
    POST /v1/leads/webhooks/meta       made before apps were registered)

The app: a registered Meta app (private.meta_apps, `luna.secrets.register_meta_app`) names its secret
and verify token; the default app's are LUNA_META_APP_SECRET and LUNA_META_VERIFY_TOKEN. Both are read
by meta_app() only.

A delivery is verified first (nothing unsigned is trusted or stored), then stored and answered at once;
the payload is parsed in SQL: `leadgen` changes (Lead Ads) go to private.receive_leadgen (stored per
leadgen id, the Graph fetch queued), everything else (WhatsApp, Instagram, Messenger messaging and
statuses) is stored raw in private.inbound_events by private.receive_event and processed by the worker.
Errors: 401 bad_signature (no such app, or the signature does not match), 403 verification_failed,
400 malformed_body (kept for inspection), 503 not_configured (the default app has no secret).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from psycopg.types.json import Jsonb

from luna import secrets

from .. import openapi as oa
from ..auth import header_bytes, hmac_sha256_ok, secret_equal
from ..db import as_service, service_call
from ..errors import ApiError

router = APIRouter(tags=["meta"])

PROVIDER_OF_OBJECT = {"whatsapp_business_account": "whatsapp", "instagram": "instagram", "page": "messenger"}
# Headers kept with a raw event (never cookies or authorization).
KEPT_HEADERS = ("content-type", "user-agent", "x-hub-signature-256", "x-forwarded-for", "x-correlation-id")
_APP_CACHE: dict[str, tuple[float, str, str]] = {}
APP_CACHE_SECONDS = 60.0


async def meta_app(request: Request, app_id: str | None) -> tuple[str, str] | None:
    """(app secret, verify token) of a registered app (cached briefly), or of the default app when
    app_id is None (either may then be empty: not configured); None for an unknown app."""
    if app_id is None:
        return os.environ.get("LUNA_META_APP_SECRET") or "", os.environ.get("LUNA_META_VERIFY_TOKEN") or ""
    key = f"{request.app.state.database_url}|{app_id}"
    cached = _APP_CACHE.get(key)
    if cached and cached[0] > time.monotonic():
        return cached[1], cached[2]
    async with as_service(request) as conn:
        row = await (await conn.execute("select app_secret, verify_token from private.meta_apps where app_id = %s",
                                        (app_id,))).fetchone()
        if row is None:
            return None
        app_secret = await secrets.adecrypt(row["app_secret"], conn)
        verify_token = await secrets.adecrypt(row["verify_token"], conn)
    _APP_CACHE[key] = (time.monotonic() + APP_CACHE_SECONDS, app_secret, verify_token)
    return app_secret, verify_token


async def handshake(request: Request, app_id: str | None) -> PlainTextResponse:
    """Echo hub.challenge when hub.mode is subscribe and hub.verify_token is the app's."""
    params = request.query_params
    app = None if params.get("hub.mode") != "subscribe" else await meta_app(request, app_id)
    if app is None or not secret_equal(params.get("hub.verify_token", ""), app[1]):
        raise ApiError(403, "verification_failed", "hub.mode or hub.verify_token does not match this app")
    return PlainTextResponse(params.get("hub.challenge", ""))


async def delivery(request: Request, app_id: str | None) -> Response:
    """Verify, store, answer: {"received": true, "event_id", "duplicate"} for a messaging delivery, plus
    "leadgen": {"received", "stored", "queued"} when it carried Lead Ads changes."""
    body = await request.body()
    app = await meta_app(request, app_id)
    if app is not None and not app[0]:
        raise ApiError(503, "not_configured", "LUNA_META_APP_SECRET is not set; Meta webhooks are refused")
    if app is None or not hmac_sha256_ok(app[0], body, header_bytes(request, "x-hub-signature-256")):
        raise ApiError(401, "bad_signature", "X-Hub-Signature-256 does not match the body",
                       hint="sign the raw body with HMAC-SHA256 and the app secret")
    event_id = "sha256:" + hashlib.sha256(body).hexdigest()
    headers = {h: request.headers[h] for h in KEPT_HEADERS if h in request.headers}
    try:
        payload: Any = json.loads(body)
        if not isinstance(payload, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        async with as_service(request) as conn:
            await conn.execute("select * from private.receive_event('meta', %s, null, %s, %s, %s, null, true)",
                               (event_id, Jsonb(headers), body, app_id))
        raise ApiError(400, "malformed_body", "the body is not a JSON object; it was kept for inspection")
    entries = payload.get("entry") if isinstance(payload.get("entry"), list) else []
    changes = [c for e in entries if isinstance(e, dict) and isinstance(e.get("changes"), list)
               for c in e["changes"] if isinstance(c, dict)]
    leadgen = [c for c in changes if c.get("field") == "leadgen"]
    answer: dict = {"received": True}
    if leadgen:
        async with as_service(request) as conn:
            answer["leadgen"] = (await (await conn.execute("select private.receive_leadgen(%s) as r",
                                                           (Jsonb(payload),))).fetchone())["r"]
        if len(leadgen) == len(changes) and not any(isinstance(e, dict) and e.get("messaging") for e in entries):
            return Response(json.dumps(answer).encode(), media_type="application/json")
    provider = PROVIDER_OF_OBJECT.get(payload.get("object"), "meta")
    row = await service_call(request, "select event_id, inserted from private.receive_event(%s, %s, %s, %s, null, %s)",
                              (provider, event_id, Jsonb(payload), Jsonb(headers), app_id))
    if not leadgen:  # the webhook's hot path: the answer written by hand
        return Response(b'{"received":true,"event_id":%d,"duplicate":%s}' % (
            row["event_id"], b"false" if row["inserted"] else b"true"), media_type="application/json")
    answer.update(event_id=row["event_id"], duplicate=not row["inserted"])
    return Response(json.dumps(answer).encode(), media_type="application/json")


HANDSHAKE = oa.op(params=oa.HUB_QUERY, security=oa.NO_SECURITY)
DELIVERY = oa.op(body=oa.raw_body("application/json", oa.JSON_OBJECT, description="the webhook as Meta sends it "
                                  "(the signature covers these exact bytes)"),
                 params=[oa.HUB_SIGNATURE], security=oa.NO_SECURITY)


@router.get("/v1/webhooks/meta/{app_id}", response_class=PlainTextResponse, openapi_extra=HANDSHAKE)
async def meta_verify(app_id: str, request: Request):
    """Meta's subscription handshake for a registered app."""
    return await handshake(request, app_id)


@router.post("/v1/webhooks/meta/{app_id}", openapi_extra=DELIVERY)
async def meta_event(app_id: str, request: Request):
    """A webhook delivery from Meta (WhatsApp, Instagram, Messenger, Lead Ads) for a registered app."""
    return await delivery(request, app_id)


@router.get("/v1/leads/webhooks/meta", response_class=PlainTextResponse, openapi_extra=HANDSHAKE)
async def default_meta_verify(request: Request):
    """The handshake for the default app (LUNA_META_VERIFY_TOKEN)."""
    return await handshake(request, None)


@router.post("/v1/leads/webhooks/meta", openapi_extra=DELIVERY)
async def default_meta_event(request: Request):
    """A delivery for the default app (LUNA_META_APP_SECRET)."""
    return await delivery(request, None)
