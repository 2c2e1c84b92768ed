"""Configuration: every setting is an environment variable prefixed ``YIJIAN_``."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration of the hub.

    With no ``database_url`` the hub runs an embedded PostgreSQL under ``data_dir``, through
    the same code paths as an external server.
    """

    model_config = SettingsConfigDict(env_prefix="YIJIAN_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset means embedded PostgreSQL"
    )
    data_dir: Path = Field(default=Path("var"), description="embedded database, keys, files")
    keys_dir: Path | None = Field(default=None, description="signing keys; default DATA_DIR/keys")
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (redis://..., amqp://...); unset: a folder under DATA_DIR",
    )
    adapters_dir: Path | None = Field(
        default=None, description="feed configuration files (*.yaml), one per hospital feed"
    )

    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    mllp_max_message_bytes: int = Field(
        default=16 * 1024 * 1024, description="longer HL7 messages are refused (AR)"
    )
    mllp_idle_timeout_seconds: float = Field(
        default=600.0, description="an MLLP connection silent this long is closed"
    )

    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str | None = Field(
        default=None, description="external base URL, e.g. https://hub.example.org (no /fhir)"
    )

    db_pool_size: int = Field(default=20, description="connections kept per process")
    db_pool_overflow: int = Field(default=0, description="extra connections, closed after use")
    db_statement_timeout_ms: int = Field(
        default=30_000, description="PostgreSQL cancels a statement running longer (0: never)"
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, description="413 above this")
    token_lifetime_seconds: int = 3600
    token_issuer: str = "yijian-hub"
    default_timezone: str = Field(default="Asia/Shanghai", description="for dates without zone")

    identifier_keys: SecretStr | None = Field(
        default=None,
        description="AES-256 keys for identifier values, 'kid:base64,...' (first current); "
        "unset: KEYS_DIR/identifiers.json, created once",
    )
    identifier_hash_key: SecretStr | None = Field(
        default=None, description="base64 key of the identifier search hash (with the above)"
    )

    search_default_count: int = 50
    search_max_count: int = 1000
    log_level: str = "INFO"

    @cached_property
    def resolved_keys_dir(self) -> Path:
        return self.keys_dir or (self.data_dir / "keys")


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (used by tests and the CLI)."""
    return Settings(**overrides)  # type: ignore[arg-type]
