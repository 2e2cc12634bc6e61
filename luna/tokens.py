"""Dev JWTs shaped like Supabase Auth's access tokens, signed with the local secret.

Tenant claims come from the same custom access token hook Supabase Auth calls, so local tokens and
production tokens carry the same tenant_id / tenant_role for the same user.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager

import jwt
import psycopg

from .db import jwt_secret


def resolve_user(conn: psycopg.Connection, ref: str) -> dict:
    row = conn.execute(
        "select id, email, raw_app_meta_data, raw_user_meta_data from auth.users "
        "where id::text = lower(%s) or lower(email) = lower(%s)", (ref, ref)).fetchone()
    if row is None:
        raise LookupError(f"no user {ref!r} (give an e-mail or an id; `luna up` prints the demo users)")
    return row if isinstance(row, dict) else dict(zip(("id", "email", "raw_app_meta_data", "raw_user_meta_data"), row))


def resolve_tenant(conn: psycopg.Connection, ref: str) -> uuid.UUID:
    row = conn.execute("select private.resolve_tenant(%s) as id", (ref,)).fetchone()
    tenant = row["id"] if isinstance(row, dict) else row[0]
    if tenant is None:
        raise LookupError(f"no tenant {ref!r} (give a slug such as 'demo' or an id)")
    return tenant


def claims(conn: psycopg.Connection, user: str, tenant: str | None = None, *, ttl: int = 3600,
           aal: str = "aal1", extra: dict | None = None) -> dict:
    """The claims Supabase Auth would put in a user's access token (e-mail or id), optionally choosing the
    active tenant: the same custom access token hook adds tenant_id / tenant_role."""
    u = resolve_user(conn, user)
    app_meta = dict(u["raw_app_meta_data"] or {})
    if tenant:
        app_meta["tenant_id"] = str(resolve_tenant(conn, tenant))
    now = int(time.time())
    base = {
        "iss": "luna-local", "sub": str(u["id"]), "aud": "authenticated", "role": "authenticated",
        "iat": now, "exp": now + ttl, "email": u["email"], "phone": "", "aal": aal,
        "amr": [{"method": "password", "timestamp": now}], "session_id": str(uuid.uuid4()),
        "is_anonymous": False, "app_metadata": app_meta, "user_metadata": u["raw_user_meta_data"] or {},
    }
    row = conn.execute("select public.custom_access_token_hook(%s::jsonb) as out",
                       (psycopg.types.json.Jsonb({"user_id": str(u["id"]), "claims": base,
                                                  "authentication_method": "password"}),)).fetchone()
    out = row["out"] if isinstance(row, dict) else row[0]
    result = out["claims"]
    if tenant and str(result.get("tenant_id")) != app_meta["tenant_id"]:
        raise PermissionError(f"{u['email']} is not an active member of tenant {tenant!r}")
    result.update(extra or {})
    return result


def mint(conn: psycopg.Connection, user: str, tenant: str | None = None, *, ttl: int = 3600,
         secret: str | None = None, aal: str = "aal1", extra: dict | None = None) -> str:
    """Mint an access token for a user (e-mail or id), optionally choosing the active tenant."""
    return jwt.encode(claims(conn, user, tenant, ttl=ttl, aal=aal, extra=extra), secret or jwt_secret(),
                      algorithm="HS256")


# Acting as a user in SQL, the way PostgREST runs a request: role `authenticated` and the token's claims in
# `request.jwt.claims` (auth.uid(), auth.jwt(), private.tenant_id() and every RLS policy read them).

@contextmanager
def as_user(conn: psycopg.Connection, user: str | None = None, tenant: str | None = None, *,
            user_claims: dict | None = None, role: str = "authenticated"):
    """One transaction as the user (`set local role` + claims); yields a cursor. Give `user` (e-mail or id,
    with `tenant` to pick the active tenant) or ready `user_claims`."""
    c = user_claims if user_claims is not None else claims(conn, user, tenant)
    with conn.transaction():
        cur = conn.cursor()
        cur.execute("select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                    (c.get("role", role), json.dumps(c)))
        yield cur


def pg_options(user_claims: dict, role: str = "authenticated") -> str:
    """The same settings as libpq startup options (PGOPTIONS), for a whole session such as psql's: the
    session starts as `role` with the claims set. Spaces and backslashes are escaped as libpq wants."""
    value = json.dumps(user_claims, separators=(",", ":"))  # ASCII only: non-ASCII is \u-escaped
    value = value.replace("\\", "\\\\").replace(" ", "\\ ")
    return f"-c role={role} -c request.jwt.claims={value}"


def service_token(*, secret: str | None = None, ttl: int = 10 * 365 * 86400) -> str:
    """A service_role key like Supabase's (for the worker or server-side callers of edge)."""
    now = int(time.time())
    return jwt.encode({"iss": "luna-local", "role": "service_role", "iat": now, "exp": now + ttl},
                      secret or jwt_secret(), algorithm="HS256")
