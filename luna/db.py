"""Where the database is, and connections to it.

DATABASE_URL wins; otherwise the embedded server in LUNA_DATA_DIR is started on demand.
"""

from __future__ import annotations

import json
import secrets
from functools import lru_cache
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from .settings import get_settings


@lru_cache
def database_url() -> str:
    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    from . import embedded

    return embedded.start(settings.data_dir)


def is_embedded() -> bool:
    return not get_settings().database_url


def connect(url: str | None = None, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("row_factory", dict_row)
    return psycopg.connect(url or database_url(), **kwargs)


def local_secrets() -> dict:
    """Secrets of the local stack (dev JWT secret, app encryption key), made once per data folder.

    On Supabase these come from the environment (LUNA_JWT_SECRET = the project's JWT secret).
    """
    settings = get_settings()
    path = Path(settings.data_dir) / "secrets.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if not data.get("jwt_secret") or not data.get("secret_key"):
        from cryptography.fernet import Fernet

        data.setdefault("jwt_secret", secrets.token_urlsafe(48))
        data.setdefault("secret_key", Fernet.generate_key().decode())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        path.chmod(0o600)
    return data


def jwt_secret() -> str:
    return get_settings().jwt_secret or local_secrets()["jwt_secret"]


def secret_key() -> str:
    return get_settings().secret_key or local_secrets()["secret_key"]
