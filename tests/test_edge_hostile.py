"""Edge under hostile, unauthenticated input: control characters (NUL) in paths, queries and headers,
non-ASCII signature headers, ids that are not UUIDs, database errors never echoed raw, credentials
never in a log line, and missing server-side secrets reported at start-up."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
import uuid

import httpx
import pytest

from .conftest import DEMO, token_for
from .test_inbox import APP_ID, meta_app, sign  # noqa: F401  (fixture)

RAW_DB_TEXT = re.compile(r"invalid input syntax|unsupported Unicode|cannot contain NUL|cannot be converted|"
                         r"violates|Key \(|relation \"|column \"|(?-i:DETAIL:)", re.I)
CONTROL = ["%00", "%01", "%1b", "%7f"]


def error_of(r) -> dict:
    body = r.json()
    assert "error" in body and body["error"]["code"] and body["error"]["message"], body
    assert not RAW_DB_TEXT.search(r.text), r.text
    return body["error"]


def operations(client):
    """(method, path template, path parameter names) of every operation in the OpenAPI document."""
    doc = client.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
                yield method.upper(), path, names


def fill(path: str, names, value_for) -> str:
    for name in names:
        path = path.replace("{" + name + "}", value_for(name))
    return path


# ------------------------------------------------------------------------------------ control characters
@pytest.mark.parametrize("char", CONTROL)
def test_control_characters_in_any_path_are_400(client, conn, char):
    token = token_for(conn, "admin@demo.luna.local")
    seen = 0
    for method, path, names in operations(client):
        if not names:
            continue
        url = fill(path, names, lambda n: f"a{char}b")
        r = client.request(method, url, headers={"Authorization": f"Bearer {token}"}, content=b"{}")
        assert r.status_code == 400, (method, url, r.status_code, r.text)
        assert error_of(r)["code"] == "invalid_input"
        seen += 1
    assert seen >= 6


@pytest.mark.parametrize("char", CONTROL)
def test_control_characters_in_any_query_are_400(client, conn, char):
    token = token_for(conn, "admin@demo.luna.local")
    for method, path, names in operations(client):
        url = fill(path, names, lambda n: str(uuid.uuid4()))
        for query in (f"?x=a{char}b", f"?a{char}=1", "?topics=tenant:x" + char, f"?session_id=abcdefghij{char}"):
            r = client.request(method, url + query, headers={"Authorization": f"Bearer {token}"}, content=b"{}")
            assert r.status_code == 400, (method, url + query, r.status_code, r.text)
            assert error_of(r)["code"] == "invalid_input"


@pytest.mark.parametrize("value", [b"a\x00b", b"x\x01", b"\x1b[31m", b"a\x7fb"])
def test_control_characters_in_any_header_are_400(client, value):
    for method, path, names in operations(client):
        url = fill(path, names, lambda n: str(uuid.uuid4()))
        for header in ("X-Form-Key", "X-Hub-Signature-256", "X-Telegram-Bot-Api-Secret-Token", "X-Anything"):
            r = client.request(method, url, headers={header: value}, content=b"{}")
            assert r.status_code == 400, (method, url, header, r.status_code, r.text)
            assert error_of(r)["code"] == "invalid_input"


def test_the_examples_of_the_issue(client, conn, meta_app):  # noqa: F811
    token = token_for(conn, "agent@demo.luna.local")
    for method, url in [("GET", "/v1/webhooks/meta/a%00b?hub.mode=subscribe"), ("POST", "/v1/webhooks/meta/a%00b"),
                        ("POST", "/v1/webhooks/telegram/a%00b"),
                        ("GET", "/v1/webchat/demo-widget-1/messages?session_id=abcdefgh%00"),
                        ("GET", f"/v1/realtime/stream?topics=tenant:{DEMO}:board%00&access_token={token}")]:
        r = client.request(method, url, content=b"{}")
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_input", (url, r.text)


def test_nul_inside_a_json_body_is_400_not_500(client):
    msg = {"session_id": "visitor-123456", "client_message_id": "1", "text": "a\u0000b"}
    r = client.post("/v1/webchat/demo-widget-1/messages", json=msg)
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_input"
    r = client.post("/v1/leads", json={"full_name": "x\u0000"}, headers={"X-Form-Key": "nope"})
    assert r.status_code in (400, 401) and error_of(r)


# ------------------------------------------------------------------------------------------ signatures
HOSTILE_SIGNATURES = ["sha256=ğü€".encode(), b"sha256=" + "ğ".encode() * 32, b"sha256=" + b"zz" * 32,
                      b"sha256=" + b"0" * 63, b"sha256=" + b"\xff" * 64, b"sha1=" + b"0" * 40, b"", "€".encode()]


@pytest.mark.parametrize("header", HOSTILE_SIGNATURES)
def test_meta_signature_headers_are_compared_safely(client, meta_app, header):  # noqa: F811
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    r = client.post(f"/v1/webhooks/meta/{APP_ID}", content=body, headers={"X-Hub-Signature-256": header})
    assert r.status_code == 401 and error_of(r)["code"] == "bad_signature"
    # A valid one still passes, in upper case hex too.
    good = sign(body)
    assert client.post(f"/v1/webhooks/meta/{APP_ID}", content=body,
                       headers={"X-Hub-Signature-256": good}).status_code == 200
    assert client.post(f"/v1/webhooks/meta/{APP_ID}", content=body,
                       headers={"X-Hub-Signature-256": "sha256=" + good[7:].upper()}).status_code == 200


@pytest.mark.parametrize("header", HOSTILE_SIGNATURES)
def test_lead_ads_signature_and_verify_token_are_compared_safely(client, monkeypatch, header):
    monkeypatch.setenv("LUNA_META_APP_SECRET", "meta-secret")
    monkeypatch.setenv("LUNA_META_VERIFY_TOKEN", "verify-me")
    body = b'{"object":"page","entry":[]}'
    r = client.post("/v1/leads/webhooks/meta", content=body, headers={"X-Hub-Signature-256": header})
    assert r.status_code == 401 and error_of(r)["code"] == "bad_signature"
    good = "sha256=" + hmac.new(b"meta-secret", body, hashlib.sha256).hexdigest()
    assert client.post("/v1/leads/webhooks/meta", content=body, headers={"X-Hub-Signature-256": good}).status_code == 200
    for token in ("ğü€", "verify-mé", "\u202everify-me"):
        r = client.get("/v1/leads/webhooks/meta", params={"hub.mode": "subscribe", "hub.verify_token": token,
                                                          "hub.challenge": "1"})
        assert r.status_code == 403 and error_of(r)["code"] == "verification_failed"
    r = client.get(f"/v1/webhooks/meta/{APP_ID}", params={"hub.mode": "subscribe", "hub.verify_token": "ğü€",
                                                          "hub.challenge": "1"})
    assert r.status_code == 403


def _channel(conn, kind, external_id, creds):
    from luna import secrets

    cid = conn.execute("insert into public.channel_accounts (tenant_id, kind, name, external_id, settings) "
                       "values (%s, %s, %s, %s, '{}') returning id", (DEMO, kind, kind, external_id)).fetchone()["id"]
    secrets.set_channel_credentials(conn, str(cid), creds)
    return str(cid)


@pytest.mark.parametrize("header", HOSTILE_SIGNATURES + [b"tg-secret\xc4\x9f", "tg-secretğ".encode()])
def test_twilio_and_telegram_secrets_are_compared_safely(client, conn, header):
    tw = _channel(conn, "sms_twilio", "+12025550100", {"account_sid": "AC1", "auth_token": "tw-token"})
    r = client.post(f"/v1/webhooks/twilio/{tw}", data={"From": "+905551112233", "Body": "x", "MessageSid": "SM1"},
                    headers={"X-Twilio-Signature": header})
    assert r.status_code == 401 and error_of(r)["code"] == "bad_signature"
    tg = _channel(conn, "telegram", "777000", {"bot_token": "1:A", "webhook_secret": "tg-secret"})
    r = client.post(f"/v1/webhooks/telegram/{tg}", content=b'{"update_id": 1}',
                    headers={"X-Telegram-Bot-Api-Secret-Token": header})
    assert r.status_code == 401 and error_of(r)["code"] == "bad_signature"
    ok = client.post(f"/v1/webhooks/telegram/{tg}", content=b'{"update_id": 1}',
                     headers={"X-Telegram-Bot-Api-Secret-Token": "tg-secret"})
    assert ok.status_code == 200


# ----------------------------------------------------------------------------------------------- UUIDs
def test_uuid_ids_are_typed_in_openapi_and_refused_at_the_edge(client, conn):
    doc = client.get("/openapi.json").json()
    uuid_params = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for p in op.get("parameters", []):
                if p["in"] == "path" and p["name"].endswith("_id") and p["name"] != "app_id":
                    uuid_params[(method, path, p["name"])] = p["schema"].get("format")
    assert len(uuid_params) >= 5 and set(uuid_params.values()) == {"uuid"}, uuid_params
    token = token_for(conn, "admin@demo.luna.local")
    for method, path, _ in uuid_params:
        url = re.sub(r"\{[a-z_]+_id\}", "not-a-uuid", path).replace("{index}", "0")
        r = client.request(method.upper(), url, headers={"Authorization": f"Bearer {token}"},
                           json={"body": "x", "credentials": {"a": "b"}})
        assert r.status_code in (400, 422), (url, r.status_code, r.text)
        assert error_of(r)["code"] in ("invalid_request", "invalid_input")


# --------------------------------------------------------------------------------------- database errors
def test_database_errors_are_never_echoed_raw(client, conn):
    import psycopg

    app = client.app
    failures = {}
    for name, sql in {"uuid": "select 'nope'::uuid", "nul": None, "unique": "insert into public.tenants select * from public.tenants limit 1", "div": "select 1/0",
                      "undefined": "select * from no_such_table"}.items():
        try:
            if sql is None:
                conn.execute("select %s::text", ("a\x00b",))
            else:
                conn.execute(sql)
        except psycopg.Error as exc:
            failures[name] = exc

    for name, exc in failures.items():
        app.add_api_route(f"/__raise/{name}", _raiser(exc))
    assert set(failures) == {"uuid", "nul", "unique", "div", "undefined"}
    expect = {"uuid": (400, "invalid_input"), "nul": (400, "invalid_input"), "div": (400, "invalid_input"),
              "unique": (409, "conflict"), "undefined": (500, "database_error")}
    for name, (status, code) in expect.items():
        r = client.get(f"/__raise/{name}")
        assert (r.status_code, error_of(r)["code"]) == (status, code), (name, r.text)
        assert str(failures[name]).splitlines()[0] not in r.text
    # Our own rule violations keep their message, code and detail.
    try:
        conn.execute("do $$ begin raise exception 'Kapora needs a deposit' using errcode = 'PT422', "
                     "detail = 'code=deposit_required'; end $$")
    except psycopg.Error as exc:
        app.add_api_route("/__raise/rule", _raiser(exc))
    r = client.get("/__raise/rule")
    assert r.status_code == 422 and r.json()["error"]["message"] == "Kapora needs a deposit"


def _raiser(exc):
    async def route():
        raise exc
    return route


# ------------------------------------------------------------------------------------------------- logs
class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name} {text}")


def test_credentials_never_reach_a_log_line(db_url, conn):
    """A realtime request with ?access_token= (the EventSource way) and other credential-bearing query
    strings: the uvicorn access log, its error log and LUNA's loggers never carry the secret."""
    import uvicorn

    from edge.app import create_app

    from .fakes import free_port

    capture = _Capture()
    names = ["", "uvicorn", "uvicorn.access", "uvicorn.error", "luna", "luna.edge", "luna.realtime"]
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(capture)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(db_url), host="127.0.0.1", port=port, log_level="info",
                                           access_log=True, timeout_graceful_shutdown=1))
    for lg in loggers:  # uvicorn's dictConfig replaced the handlers of its loggers
        if capture not in lg.handlers:
            lg.addHandler(capture)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        secret = "SECRET" + uuid.uuid4().hex
        valid = token_for(conn, "agent@demo.luna.local")
        with httpx.Client(timeout=10) as c:
            c.get(f"{base}/v1/realtime/stream", params={"topics": f"tenant:{DEMO}:board", "access_token": secret})
            with c.stream("GET", f"{base}/v1/realtime/stream",
                          params={"topics": f"tenant:{DEMO}:board", "access_token": valid}) as r:
                assert r.status_code == 200
                next(r.iter_lines())
            for q in ("token", "apikey", "key", "signature", "password", "hub.verify_token"):
                c.get(f"{base}/v1/leads/webhooks/meta", params={"hub.mode": "subscribe", q: secret})
            c.get(f"{base}/v1/webchat/demo-widget-1/messages?session_id=abcdefghij&api_key={secret}")
            c.get(f"{base}/v1/realtime/stream", params={"topics": "x"}, headers={"Authorization": f"Bearer {secret}"})
        # The filter itself, for lines LUNA might write (headers, URLs, dict reprs).
        log = logging.getLogger("luna.edge")
        log.warning("request to %s failed", f"/v1/realtime/stream?topics=a&access_token={secret}")
        log.warning("headers %s", {"authorization": f"Bearer {secret}", "apikey": secret, "cookie": f"sb={secret}"})
        log.warning("Authorization: Bearer %s", secret)
        log.warning("url https://h.example/p?x=1&password=%s&y=2", secret)
        logging.getLogger("luna.worker.something").warning("retrying %s", f"?key={secret}")
        time.sleep(0.3)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        for lg in loggers:
            lg.removeHandler(capture)
    access = [line for line in capture.lines if line.startswith("uvicorn.access")]
    assert any("/v1/realtime/stream" in line for line in access), capture.lines
    assert any("access_token=" in line for line in access)  # the parameter stays, its value goes
    leaked = [line for line in capture.lines if secret in line or valid in line]
    assert leaked == [], leaked
    assert sum("REDACTED" in line for line in capture.lines) >= 10


# --------------------------------------------------------------------------------------- start-up secrets
def test_missing_server_secrets_are_reported_at_start_up(monkeypatch, db_url):
    from typer.testing import CliRunner

    import uvicorn

    from luna import cli, up

    monkeypatch.delenv("LUNA_META_APP_SECRET", raising=False)
    monkeypatch.setenv("LUNA_META_VERIFY_TOKEN", "v")
    missing = up.missing_secrets()
    names = [name for name, _ in missing]
    assert "LUNA_META_APP_SECRET" in names and "LUNA_META_VERIFY_TOKEN" not in names
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    result = CliRunner().invoke(cli.app, ["api"])
    assert result.exit_code == 0, result.output
    assert "LUNA_META_APP_SECRET" in result.output and "warning" in result.output.lower()
    monkeypatch.setenv("LUNA_META_APP_SECRET", "s")
    assert "LUNA_META_APP_SECRET" not in [n for n, _ in up.missing_secrets()]
    calls = []
    monkeypatch.setattr(up, "console", type("C", (), {"print": lambda self, *a, **k: calls.append(" ".join(map(str, a)))})())
    monkeypatch.delenv("LUNA_META_APP_SECRET")
    up.warn_missing_secrets()
    assert any("LUNA_META_APP_SECRET" in c for c in calls)


def test_signed_webhooks_with_malformed_bodies_answer_400_not_500(client, conn):
    """A caller holding the secret can still send nonsense: a JSON array to Telegram, a non-numeric
    NumMedia to Twilio. Both are the client's fault: 400 with a code, never 500."""
    from urllib.parse import urlencode

    from luna import secrets
    from luna.channels.twilio import signature

    demo = "00000000-0000-4000-8000-000000000001"
    tg = conn.execute("insert into channel_accounts (tenant_id, kind, name, external_id) "
                      "values (%s, 'telegram', 'TG bad', 'tg-bad') returning id", (demo,)).fetchone()["id"]
    secrets.set_channel_credentials(conn, str(tg), {"bot_token": "1:x", "webhook_secret": "s3cret"})
    for body in (b"[]", b'"text"', b"42", b"null"):
        r = client.post(f"/v1/webhooks/telegram/{tg}", content=body,
                        headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret", "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body", (body, r.text)

    sms = conn.execute("insert into channel_accounts (tenant_id, kind, name, external_id) "
                       "values (%s, 'sms_twilio', 'SMS bad', '+15005550006') returning id", (demo,)).fetchone()["id"]
    secrets.set_channel_credentials(conn, str(sms), {"account_sid": "AC1", "auth_token": "tok"})
    url = f"http://testserver/v1/webhooks/twilio/{sms}"
    for media in ("abc", "-1", "99", "１"):
        params = {"MessageSid": "SM1", "From": "+905321112233", "To": "+15005550006", "Body": "hi", "NumMedia": media}
        r = client.post(f"/v1/webhooks/twilio/{sms}", content=urlencode(params),
                        headers={"Content-Type": "application/x-www-form-urlencoded",
                                 "X-Twilio-Signature": signature("tok", url, params)})
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body", (media, r.text)
