"""Credentials at rest: Supabase Vault when the `vault` schema exists, else Fernet with the application
key (settings.secret_key / luna.db.secret_key()).

Stored values are text: ``vault:<secret uuid>`` or ``fernet:<token>``. They live only in private tables
(private.channel_credentials, private.meta_apps) that no API role can read, and no view or RPC returns them.

    from luna import secrets
    stored = secrets.encrypt(conn, json.dumps({"access_token": "..."}))
    secrets.set_channel_credentials(conn, channel_id, {"access_token": "..."})
"""

from __future__ import annotations

import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken


@lru_cache
def _fernet() -> Fernet:
    from luna.db import secret_key

    return Fernet(secret_key().encode())


def has_vault(conn) -> bool:
    row = conn.execute("select to_regclass('vault.decrypted_secrets') is not null as ok").fetchone()
    return bool(row["ok"] if isinstance(row, dict) else row[0])


def encrypt(conn, plaintext: str, name: str | None = None) -> str:
    """Encrypt a secret: into Supabase Vault when present (returns a reference), else with Fernet."""
    if conn is not None and has_vault(conn):
        row = conn.execute("select vault.create_secret(%s, %s) as id", (plaintext, name)).fetchone()
        return f"vault:{row['id'] if isinstance(row, dict) else row[0]}"
    return "fernet:" + _fernet().encrypt(plaintext.encode()).decode()


async def aencrypt(aconn, plaintext: str, name: str | None = None) -> str:
    """encrypt() on an async connection (edge): a Vault reference when Vault is present, else Fernet."""
    row = await (await aconn.execute("select to_regclass('vault.decrypted_secrets') is not null as ok")).fetchone()
    if row["ok"] if isinstance(row, dict) else row[0]:
        row = await (await aconn.execute("select vault.create_secret(%s, %s) as id", (plaintext, name))).fetchone()
        return f"vault:{row['id'] if isinstance(row, dict) else row[0]}"
    return "fernet:" + _fernet().encrypt(plaintext.encode()).decode()


def decrypt(stored: str, conn=None) -> str:
    """The plaintext of a stored value (vault references need a connection)."""
    scheme, _, value = stored.partition(":")
    if scheme == "fernet":
        try:
            return _fernet().decrypt(value.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted with this LUNA_SECRET_KEY") from exc
    if scheme == "vault":
        if conn is None:
            raise ValueError("a vault secret needs a database connection to decrypt")
        row = conn.execute("select decrypted_secret from vault.decrypted_secrets where id = %s", (value,)).fetchone()
        if row is None:
            raise ValueError(f"vault secret {value} not found")
        return row["decrypted_secret"] if isinstance(row, dict) else row[0]
    raise ValueError(f"unknown secret scheme {scheme!r}")


async def adecrypt(stored: str, aconn=None) -> str:
    scheme, _, value = stored.partition(":")
    if scheme != "vault":
        return decrypt(stored)
    cur = await aconn.execute("select decrypted_secret from vault.decrypted_secrets where id = %s", (value,))
    row = await cur.fetchone()
    if row is None:
        raise ValueError(f"vault secret {value} not found")
    return row["decrypted_secret"] if isinstance(row, dict) else row[0]


def set_channel_credentials(conn, channel_id: str, credentials: dict) -> None:
    """Store a channel's credentials (access token, app secret, IMAP/SMTP password …) encrypted."""
    stored = encrypt(conn, json.dumps(credentials), name=f"channel:{channel_id}")
    conn.execute("select private.set_channel_secret(%s, %s)", (channel_id, stored))


def register_meta_app(conn, app_id: str, app_secret: str, verify_token: str) -> None:
    """A Meta app whose webhooks edge accepts at /v1/webhooks/meta/{app_id}."""
    conn.execute("""insert into private.meta_apps (app_id, app_secret, verify_token) values (%s, %s, %s)
                    on conflict (app_id) do update set app_secret = excluded.app_secret, verify_token = excluded.verify_token""",
                 (app_id, encrypt(conn, app_secret, f"meta_app:{app_id}:secret"),
                  encrypt(conn, verify_token, f"meta_app:{app_id}:verify")))


# --------------------------------------------------------------------------------------- tenant secrets
# Provider keys, tokens, passwords and webhook URLs of a tenant (issue 10, item 3) live in
# private.tenant_secrets (migrations/20261203500000_tenant_secrets.sql), never in the JSON settings
# members read. A name is '<scope>:<path>': the scope is a feature key (tenant_features.config),
# 'crm_settings' (crm_settings.settings) or 'lead_source.<id>' (lead_sources.config); the path is the JSON
# key path joined by '.': 'leads.enrich.apollo:api_key', 'crm_settings:smtp.password'.
#
#   secrets.set_tenant_secret(conn, tenant, "leads.enrich.apollo:api_key", "...")   # write (API / CLI)
#   secrets.tenant_secret(conn, tenant, "leads.enrich.apollo:api_key")               # read (sync)
#   await secrets.aconfig(ctx, tenant, "leads.enrich.apollo", conf)                  # conf + its secrets
#   secrets.migrate(conn)   # seal 'pending:' values and move any plain-text key left in the JSON columns

import re as _re
import time as _time

NAME_RE = _re.compile(r"^[a-z0-9_][a-z0-9_.:\-]{0,199}$")
# The same rule as private.is_secret_key (SQL): a JSON key whose value is a credential.
_SECRET_KEY = _re.compile(r"(key|token|secret|password|passwd|pwd|webhook_url|webhook|hook_url|credential|credentials|dsn|auth)$")
CACHE_SECONDS = 5.0


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search((key or "").lower()))


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name or "")) and ":" in name


def _val(row, key):
    return row[key] if isinstance(row, dict) else row[0]


def set_tenant_secret(conn, tenant: str, name: str, value: str) -> None:
    """Store (or replace) one tenant secret, encrypted."""
    if not valid_name(name):
        raise ValueError(f"invalid secret name {name!r} (expected '<scope>:<key>', e.g. leads.enrich.apollo:api_key)")
    stored = encrypt(conn, value, name=f"tenant:{tenant}:{name}")
    conn.execute("""insert into private.tenant_secrets (tenant_id, name, ciphertext) values (%s, %s, %s)
                    on conflict (tenant_id, name) do update set ciphertext = excluded.ciphertext, updated_at = now()""",
                 (tenant, name, stored))
    remember(value)


def delete_tenant_secret(conn, tenant: str, name: str) -> bool:
    cur = conn.execute("delete from private.tenant_secrets where tenant_id = %s and name = %s", (tenant, name))
    return cur.rowcount > 0


def _open(conn, tenant, name: str, stored: str) -> str:
    """Plaintext of a stored value; a 'pending:' value (written by SQL without Vault) is sealed in place."""
    if stored.startswith("pending:"):
        plain = stored[len("pending:"):]
        conn.execute("update private.tenant_secrets set ciphertext = %s, updated_at = now() "
                     "where tenant_id = %s and name = %s and ciphertext = %s",
                     (encrypt(conn, plain, name=f"tenant:{tenant}:{name}"), tenant, name, stored))
        return plain
    return decrypt(stored, conn)


def tenant_secret(conn, tenant, name: str) -> str | None:
    """The one reader: a tenant secret's plaintext, or None when it is not set."""
    row = conn.execute("select ciphertext from private.tenant_secrets where tenant_id = %s and name = %s",
                       (str(tenant), name)).fetchone()
    if row is None:
        return None
    return remember(_open(conn, str(tenant), name, _val(row, "ciphertext")))


async def atenant_secrets(aconn, tenant, scope: str) -> dict[str, str]:
    """Every secret of one scope as {path: plaintext} (async connection)."""
    cur = await aconn.execute("select name, ciphertext from private.tenant_secrets where tenant_id = %s "
                              "and name like %s", (str(tenant), scope.replace("%", r"\%").replace("_", r"\_") + ":%"))
    out: dict[str, str] = {}
    for row in await cur.fetchall():
        name, stored = row["name"], row["ciphertext"]
        if stored.startswith("pending:"):
            plain = stored[len("pending:"):]
            await aconn.execute("update private.tenant_secrets set ciphertext = %s, updated_at = now() "
                                "where tenant_id = %s and name = %s and ciphertext = %s",
                                (encrypt(None, plain), str(tenant), name, stored))
        else:
            plain = await adecrypt(stored, aconn)
        out[name.split(":", 1)[1]] = remember(plain)
    return out


async def atenant_secret(aconn, tenant, name: str) -> str | None:
    scope, _, path = name.partition(":")
    return (await atenant_secrets(aconn, tenant, scope)).get(path)


def merge(conf: dict | None, found: dict[str, str]) -> dict:
    """conf (the non-secret JSON settings) with each secret put back at its key path."""
    out = json.loads(json.dumps(conf or {}))
    for path, value in found.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[leaf] = value
    return out


async def aconfig(ctx, tenant, scope: str, conf: dict | None) -> dict:
    """A worker adapter's configuration: the scope's JSON settings plus its secrets (cached on the
    worker context for a few seconds, so a batch of leads reads them once)."""
    cache = ctx.__dict__.setdefault("_tenant_secrets", {})
    key = (str(tenant), scope)
    hit = cache.get(key)
    if hit is None or _time.monotonic() - hit[0] > CACHE_SECONDS:
        async with ctx.pool.connection() as aconn:
            hit = (_time.monotonic(), await atenant_secrets(aconn, tenant, scope))
        cache[key] = hit
    return merge(conf, hit[1]) if hit[1] else dict(conf or {})


def migrate(conn) -> dict:
    """Idempotent: move plain-text secret keys still in tenant_features.config, crm_settings.settings and
    lead_sources.config into the store (the SQL trigger does the move; values are blanked in the JSON),
    then encrypt every 'pending:' value. Returns counts."""
    moved = 0
    for table, column in (("tenant_features", "config"), ("lead_sources", "config"), ("crm_settings", "settings")):
        cur = conn.execute(f"update public.{table} set {column} = {column} "
                           f"where exists (select 1 from private.secret_paths({column}))")
        moved += cur.rowcount
    sealed = 0
    for row in conn.execute("select tenant_id, name, ciphertext from private.tenant_secrets "
                            "where ciphertext like 'pending:%'").fetchall():
        tenant, name, stored = (row["tenant_id"], row["name"], row["ciphertext"]) if isinstance(row, dict) else row
        _open(conn, str(tenant), name, stored)
        sealed += 1
    return {"rows_moved": moved, "sealed": sealed}


def migrate_database(url: str | None = None) -> dict:
    """migrate() on its own connection (`luna up`, `luna secrets migrate`)."""
    from luna.db import connect

    with connect(url) as conn:
        return migrate(conn)


# ------------------------------------------------------------------------------------ log redaction
# Every secret value this process has read or written is replaced by [REDACTED] in every log record
# (message, arguments, exception text), whatever logger or handler emits it: a pattern-based filter
# (edge/redact.py) cannot recognise a Slack webhook URL or a bare API key inside an error message.
_KNOWN: set[str] = set()
_MIN_LEN = 6


def remember(value):
    if isinstance(value, str) and len(value) >= _MIN_LEN:
        if value not in _KNOWN:
            _KNOWN.add(value)
            _install_log_redaction()
    return value


def scrub(text: str) -> str:
    """text with every known secret value replaced by [REDACTED]."""
    if not _KNOWN or not isinstance(text, str):
        return text
    for value in sorted(_KNOWN, key=len, reverse=True):
        if value in text:
            text = text.replace(value, "[REDACTED]")
    return text


_installed = False


def _install_log_redaction() -> None:
    global _installed
    if _installed:
        return
    import logging

    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
            cleaned = scrub(message)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
            if record.exc_info and record.exc_info[1] is not None:
                exc_text = logging.Formatter().formatException(record.exc_info)
                if scrub(exc_text) != exc_text:
                    record.exc_text = scrub(exc_text)
                    record.exc_info = None
        except Exception:  # never lose a log line
            pass
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
