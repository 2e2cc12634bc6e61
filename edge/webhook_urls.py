"""The URL a webhook provider signed, built one way for every provider that signs URLs (Twilio's
X-Twilio-Signature covers the full URL, query string included, plus the POST parameters).

Behind a reverse proxy the request edge sees (http://10.0.0.5:8000/v1/...) is not the URL the provider
called (https://hooks.example.com/v1/...). Set `LUNA_PUBLIC_URL` to the public base URL of edge as
providers see it (scheme, host, optional port and path prefix: `https://hooks.example.com` or
`https://example.com/luna`); a channel may instead name its full webhook URL (`settings.webhook_url`).
Either way the query string is the one the provider sent, byte for byte. Without either, the request's
own URL is used (run uvicorn with --proxy-headers so X-Forwarded-Proto / Host are honoured).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from fastapi import Request

PUBLIC_URL_ENV = "LUNA_PUBLIC_URL"


def public_base_url() -> str | None:
    value = (os.environ.get(PUBLIC_URL_ENV) or "").strip()
    return value.rstrip("/") or None


def _raw_query(request: Request) -> str:
    return (request.scope.get("query_string") or b"").decode("latin-1")


def _route_path(request: Request) -> str:
    """The request's path inside the app (a root_path the proxy strips is part of the public base)."""
    path = request.scope.get("path") or "/"
    root = request.scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def signed_url(request: Request, configured: str | None = None) -> str:
    """The URL as the provider called it: `configured` (a channel's own full webhook URL, its query
    ignored) or LUNA_PUBLIC_URL + the route's path, else the request's URL; then the request's raw
    query string."""
    query = _raw_query(request)
    if configured:
        parts = urlsplit(configured.strip())
        base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    elif public_base_url():
        base = public_base_url() + _route_path(request)
    else:
        url = request.url
        base = urlunsplit((url.scheme, url.netloc, url.path, "", ""))
    return f"{base}?{query}" if query else base


def url_variants(url: str) -> list[str]:
    """The URL, and the same URL with the scheme's default port added or removed: providers (Twilio's own
    validators do this) may sign either form."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    out = [url]
    if default is None or not parts.hostname:
        return out
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        out.append(urlunsplit((parts.scheme, f"{prefix}{host}:{default}", parts.path, parts.query, parts.fragment)))
    elif parts.port == default:
        out.append(urlunsplit((parts.scheme, f"{prefix}{host}", parts.path, parts.query, parts.fragment)))
    return out


def public_webhook_url(path: str) -> str | None:
    """The public URL of one of edge's webhook paths (for callbacks we hand to a provider), or None."""
    base = public_base_url()
    return f"{base}{path}" if base else None
