"""Edge: JWT verification (HS256 and JWKS), one JSON error format, body limits, health, OpenAPI."""

import json

import jwt
import pytest

from .conftest import token_for


def error_of(response):
    body = response.json()
    assert "error" in body and body["error"]["code"] and body["error"]["message"], body
    assert body["error"]["correlation_id"]
    return body["error"]


def test_health_reports_database_and_migrations(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": True, "migrations": "current"}


def test_openapi_is_served(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200 and "/health" in r.json()["paths"]


def test_unknown_route_is_a_json_404(client):
    r = client.get("/v1/nope")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


@pytest.mark.parametrize("header, code", [
    ("Bearer not-a-jwt", "invalid_token"),
    ("Bearer a.b.c", "invalid_token"),
    ("Basic dXNlcjpwYXNz", "invalid_authorization"),
])
def test_malformed_tokens_are_refused_clearly(client, header, code):
    r = client.get("/v1/realtime/stream?topics=x", headers={"Authorization": header})
    assert r.status_code == 401 and error_of(r)["code"] == code


def test_missing_token(client):
    r = client.get("/v1/realtime/stream?topics=x")
    assert r.status_code == 401 and error_of(r)["code"] == "missing_token"


def test_wrong_signature_and_expired(client, conn):
    claims = jwt.decode(token_for(conn, "agent@demo.luna.local"), options={"verify_signature": False})
    forged = jwt.encode(claims, "some-other-secret-that-is-long-enough!!", algorithm="HS256")
    r = client.get("/v1/realtime/stream?topics=x", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_signature"
    expired = token_for(conn, "agent@demo.luna.local", ttl=-10)
    r = client.get("/v1/realtime/stream?topics=x", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and error_of(r)["code"] == "token_expired"
    none_alg = jwt.encode(claims, None, algorithm="none")
    r = client.get("/v1/realtime/stream?topics=x", headers={"Authorization": f"Bearer {none_alg}"})
    assert r.status_code == 401 and error_of(r)["code"] == "unsupported_algorithm"


def test_oversized_body_is_refused(client):
    big = b"x" * (10 * 1024 * 1024 + 1)
    r = client.post("/v1/nope", content=big, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"

    def chunks():  # no content-length: counted while streaming
        for _ in range(11):
            yield b"y" * (1024 * 1024)

    from fastapi import Request

    @client.app.post("/__echo")
    async def _echo(request: Request):
        return {"bytes": len(await request.body())}

    r = client.post("/__echo", content=chunks(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"
    r = client.post("/__echo", content=b"small")
    assert r.status_code == 200 and r.json() == {"bytes": 5}


def test_correlation_id_is_echoed_or_made(client):
    r = client.get("/health", headers={"x-correlation-id": "abc-123"})
    assert r.headers["x-correlation-id"] == "abc-123"
    r = client.get("/health", headers={"x-correlation-id": "bad id with spaces"})
    assert r.headers["x-correlation-id"] != "bad id with spaces" and len(r.headers["x-correlation-id"]) == 32


def test_jwks_asymmetric_tokens(db_url, conn, monkeypatch):
    """RS256 tokens are verified against a JWKS URL (Supabase's asymmetric signing keys)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from edge import auth
    from edge.app import create_app
    from luna.settings import get_settings

    from .fakes import serve

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    jwks_app = FastAPI()
    jwks_app.get("/auth/v1/.well-known/jwks.json")(lambda: {"keys": [jwk]})
    claims = jwt.decode(token_for(conn, "agent@demo.luna.local"), options={"verify_signature": False})
    with serve(jwks_app) as base:
        monkeypatch.setattr(get_settings(), "jwks_url", f"{base}/auth/v1/.well-known/jwks.json")
        auth._jwks_client.cache_clear()
        good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        bad = jwt.encode(claims, other, algorithm="RS256", headers={"kid": "k1"})
        assert auth.verify(good)["sub"] == claims["sub"]
        with TestClient(create_app(db_url)) as c:
            r = c.get("/v1/realtime/stream?topics=x", headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401 and error_of(r)["code"] == "invalid_signature"
        auth._jwks_client.cache_clear()


def test_database_errors_keep_sqlstate(client, conn):
    """A rule violation raised PostgREST's way maps to its HTTP status and code."""
    import psycopg

    from edge import errors

    exc = None
    try:
        conn.execute("do $$ begin raise exception 'Kapora needs a deposit' using errcode = 'PT422', detail = 'code=deposit_required'; end $$")
    except psycopg.Error as e:
        exc = e
    assert errors.from_db_error(exc) == (422, "rule_violation")
    app = client.app

    @app.get("/__raise")
    async def _raise():
        raise exc

    r = client.get("/__raise")
    assert r.status_code == 422
    e = error_of(r)
    assert e["code"] == "deposit_required" and e["sqlstate"] == "PT422" and e["message"] == "Kapora needs a deposit"
