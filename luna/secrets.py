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
