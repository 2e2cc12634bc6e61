"""Settings read once from the environment (pydantic-settings)."""

from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("luna", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # No DATABASE_URL -> the embedded PostgreSQL in LUNA_DATA_DIR is started on demand.
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    data_dir: Path = Field(default_factory=_default_data_dir, alias="LUNA_DATA_DIR")

    # Auth: an HS256 secret (Supabase's legacy JWT secret) and/or a JWKS URL for asymmetric keys.
    jwt_secret: str | None = Field(default=None, alias="LUNA_JWT_SECRET")
    jwks_url: str | None = Field(default=None, alias="LUNA_JWKS_URL")
    jwt_audience: str = Field(default="authenticated", alias="LUNA_JWT_AUDIENCE")

    api_host: str = Field(default="127.0.0.1", alias="LUNA_API_HOST")
    api_port: int = Field(default=8000, alias="LUNA_API_PORT")
    max_body_bytes: int = Field(default=10 * 1024 * 1024, alias="LUNA_MAX_BODY_BYTES")
    # The CSV import streams large files; it gets its own, larger limit.
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, alias="LUNA_MAX_UPLOAD_BYTES")

    worker_concurrency: int = Field(default=8, alias="LUNA_WORKER_CONCURRENCY")
    worker_batch: int = Field(default=50, alias="LUNA_WORKER_BATCH")
    worker_lease_seconds: int = Field(default=60, alias="LUNA_WORKER_LEASE_SECONDS")
    worker_poll_seconds: float = Field(default=2.0, alias="LUNA_WORKER_POLL_SECONDS")

    # AI: no key -> the deterministic offline provider.
    openai_api_key: str | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    openai_model: str = Field(default="gpt-4o-mini", alias="LUNA_AI_MODEL")
    embedding_model: str = Field(default="text-embedding-3-small", alias="LUNA_EMBEDDING_MODEL")

    # Application key for secrets at rest when Supabase Vault is absent (Fernet, urlsafe base64).
    secret_key: str | None = Field(default=None, alias="LUNA_SECRET_KEY")

    log_level: str = Field(default="INFO", alias="LUNA_LOG_LEVEL")


@lru_cache
def get_settings() -> Settings:
    return Settings()
