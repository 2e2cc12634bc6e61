"""Webhooks behind a proxy (issue 10, item 11): the URL a signature covers is built in one helper
(edge/webhook_urls.py) the same way for every provider that signs URLs: the configured public URL
(LUNA_PUBLIC_URL, or a channel's settings.webhook_url) plus the route's path and the raw query string
the provider sent. Tested with requests whose Host and scheme differ from the public URL, as a reverse
proxy that does not pass X-Forwarded-Proto delivers them."""

from __future__ import annotations

import json

import pytest

from .conftest import DEMO
from .test_inbox_sms import _channel

PUBLIC = "https://hooks.luna.example"
INTERNAL = "http://10.0.0.5:8000"
FORM = {"MessageSid": "SM9001", "From": "+905551230001", "To": "+12025550101", "Body": "Randevu var mı?", "NumMedia": "0"}


@pytest.fixture
def twilio(conn):
    return _channel(conn, DEMO, "sms_twilio", "+12025550101", {"account_sid": "AC9", "auth_token": "tw-proxy"},
                    "http://127.0.0.1:9")


def _post(client, url, signed_url, form=FORM):
    from luna.channels.twilio import signature

    return client.post(url, data=form, headers={"X-Twilio-Signature": signature("tw-proxy", signed_url, form)})


def test_public_url_with_query_string_behind_a_proxy(client, conn, twilio, monkeypatch):
    monkeypatch.setenv("LUNA_PUBLIC_URL", PUBLIC + "/")
    path = f"/v1/webhooks/twilio/{twilio}"
    query = "tenant=demo&tag=%C3%A7ift&empty="
    # Twilio called the public URL (with a query string); the proxy delivers it to the internal address.
    ok = _post(client, f"{INTERNAL}{path}?{query}", f"{PUBLIC}{path}?{query}")
    assert ok.status_code == 200, ok.text
    # The signature must cover the query string, and only the public URL counts.
    assert _post(client, f"{INTERNAL}{path}?{query}", f"{PUBLIC}{path}").status_code == 401
    assert _post(client, f"{INTERNAL}{path}?{query}", f"{INTERNAL}{path}?{query}").status_code == 401
    # No query string at all, and the default port written out: both accepted as Twilio signs them.
    assert _post(client, f"{INTERNAL}{path}", f"{PUBLIC}{path}", {**FORM, "MessageSid": "SM9002"}).status_code == 200
    assert _post(client, f"{INTERNAL}{path}?{query}", f"https://hooks.luna.example:443{path}?{query}",
                 {**FORM, "MessageSid": "SM9003"}).status_code == 200


def test_channel_webhook_url_keeps_the_query_string(client, conn, twilio, monkeypatch):
    monkeypatch.delenv("LUNA_PUBLIC_URL", raising=False)
    public = f"https://sms.klinik.example/hooks/twilio/{twilio}"
    conn.execute("update public.channel_accounts set settings = settings || %s::jsonb where id = %s",
                 (json.dumps({"webhook_url": public}), twilio))
    query = "src=console"
    r = _post(client, f"{INTERNAL}/v1/webhooks/twilio/{twilio}?{query}", f"{public}?{query}")
    assert r.status_code == 200, r.text
    assert _post(client, f"{INTERNAL}/v1/webhooks/twilio/{twilio}?{query}", public).status_code == 401


def test_path_prefix_stripped_by_the_proxy(monkeypatch):
    from starlette.requests import Request

    from edge.webhook_urls import signed_url

    monkeypatch.setenv("LUNA_PUBLIC_URL", "https://example.com/luna")
    scope = {"type": "http", "method": "POST", "scheme": "http", "server": ("10.0.0.5", 8000), "root_path": "/luna",
             "path": "/luna/v1/webhooks/twilio/x", "query_string": b"a=1&b=%20", "headers": [(b"host", b"10.0.0.5:8000")]}
    assert signed_url(Request(scope)) == "https://example.com/luna/v1/webhooks/twilio/x?a=1&b=%20"
    monkeypatch.delenv("LUNA_PUBLIC_URL")
    # Without a public URL: the request's own (as uvicorn --proxy-headers would have corrected it).
    assert signed_url(Request({**scope, "root_path": "", "path": "/v1/webhooks/twilio/x"})) == \
        "http://10.0.0.5:8000/v1/webhooks/twilio/x?a=1&b=%20"


def test_without_configuration_the_request_url_counts(client, conn, twilio, monkeypatch):
    monkeypatch.delenv("LUNA_PUBLIC_URL", raising=False)
    url = f"http://testserver/v1/webhooks/twilio/{twilio}?x=1"
    assert _post(client, url, url).status_code == 200
