"""JWT verification: HS256 with the project's secret, or asymmetric keys from a JWKS URL."""

from __future__ import annotations

from functools import lru_cache

import jwt
from fastapi import Request

from luna.db import jwt_secret
from luna.settings import get_settings

from .errors import ApiError

ASYMMETRIC = {"RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"}


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


async def claims(request: Request) -> dict:
    """FastAPI dependency: the verified claims of the caller (401 without a valid token)."""
    token = bearer(request)
    if not token:
        raise ApiError(401, "missing_token", "this endpoint needs a token",
                       hint="send 'Authorization: Bearer <access token>' (`luna token --user ...` mints one locally)")
    verified = verify(token)
    request.state.claims = verified
    return verified
