"""JWT verification: HS256 with the project's secret, or asymmetric keys from a JWKS URL."""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

import jwt
from fastapi import Request, Security
from fastapi.security import APIKeyQuery, HTTPBearer

from luna.db import jwt_secret
from luna.settings import get_settings

from .errors import ApiError

ASYMMETRIC = {"RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"}

# OpenAPI declarations only (auto_error=False: they never refuse a request; `claims` below decides).
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearerAuth", bearerFormat="JWT",
                           description="A Supabase Auth access token (`luna token --user EMAIL` mints one locally), "
                                       "or the service_role key")
access_token_query = APIKeyQuery(name="access_token", auto_error=False, scheme_name="accessTokenQuery",
                                 description="The same token as a query parameter, for EventSource (no headers)")


@lru_cache
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=600)


def verify(token: str) -> dict:
    """Decode and verify a token; raise ApiError(401) with a code saying what is wrong."""
    settings = get_settings()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise ApiError(401, "invalid_token", "the token is not a well-formed JWT",
                       hint="send 'Authorization: Bearer <access token>'")
    alg = header.get("alg")
    try:
        if alg == "HS256":
            key = jwt_secret()
        elif alg in ASYMMETRIC and settings.jwks_url:
            key = _jwks_client(settings.jwks_url).get_signing_key_from_jwt(token).key
        else:
            raise ApiError(401, "unsupported_algorithm", f"tokens signed with {alg!r} are not accepted here")
        claims = jwt.decode(token, key, algorithms=[alg], options={"verify_aud": False, "require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "token_expired", "the token has expired; sign in again")
    except jwt.InvalidSignatureError:
        raise ApiError(401, "invalid_signature", "the token's signature does not verify")
    except jwt.PyJWKClientError as exc:
        raise ApiError(401, "invalid_token", f"no signing key for this token: {exc}")
    except jwt.PyJWTError as exc:
        raise ApiError(401, "invalid_token", f"the token is not valid: {exc}")
    role = claims.get("role")
    if role == "authenticated" and claims.get("aud") not in (settings.jwt_audience, [settings.jwt_audience]):
        raise ApiError(401, "invalid_audience", f"the token's audience must be {settings.jwt_audience!r}")
    if role not in ("authenticated", "anon", "service_role"):
        raise ApiError(401, "invalid_role", f"unknown role claim {role!r}")
    return claims


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "invalid_authorization", "use 'Authorization: Bearer <token>'")
        return token.strip()
    # EventSource cannot set headers: the realtime stream also accepts ?access_token=.
    return request.query_params.get("access_token")


async def claims(request: Request, _bearer=Security(bearer_scheme)) -> dict:
    """FastAPI dependency: the verified claims of the caller (401 without a valid token)."""
    token = bearer(request)
    if not token:
        raise ApiError(401, "missing_token", "this endpoint needs a token",
                       hint="send 'Authorization: Bearer <access token>' (`luna token --user ...` mints one locally)")
    verified = verify(token)
    request.state.claims = verified
    return verified


# ------------------------------------------------------------------------------- shared secrets, signatures
def header_bytes(request: Request, name: str) -> bytes | None:
    """A header's value as the client sent it (Starlette decodes headers as latin-1: this undoes it)."""
    value = request.headers.get(name)
    return None if value is None else value.encode("latin-1")


def secret_equal(given: str | bytes | None, expected: str | bytes | None) -> bool:
    """Constant-time comparison of a shared secret (verify token, Telegram secret token) that never raises:
    any characters in `given`, compared as UTF-8 bytes with the expected value."""
    if given is None or not expected:
        return False
    given_b = given if isinstance(given, bytes) else given.encode("utf-8", "surrogatepass")
    expected_b = expected if isinstance(expected, bytes) else expected.encode("utf-8")
    return hmac.compare_digest(given_b, expected_b)


def hmac_sha256_ok(secret: str, body: bytes, header: str | bytes | None, prefix: str = "sha256=") -> bool:
    """An `sha256=<hex>` signature header (Meta's X-Hub-Signature-256) checked against HMAC-SHA256 of the
    raw body: the hex is decoded first (any other characters, or a wrong length, is a mismatch), then the
    digests are compared in constant time. Never raises."""
    if not secret or header is None:
        return False
    raw = header if isinstance(header, bytes) else header.encode("latin-1", "replace")
    if not raw.startswith(prefix.encode()):
        return False
    try:
        given = bytes.fromhex(raw[len(prefix):].strip().decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return len(given) == len(expected) and hmac.compare_digest(given, expected)


def ascii_header(request: Request, name: str) -> str | None:
    """A header that must be ASCII (a base64 or hex signature): its value, or None when it is not ASCII."""
    value = request.headers.get(name)
    return value if value is not None and value.isascii() else None
