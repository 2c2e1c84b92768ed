"""Configuration: every setting is an environment variable prefixed ``YIJIAN_``."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class OidcProvider(BaseModel):
    """A hospital's OpenID Connect identity provider for web single sign-on."""

    name: str = Field(description="short name, used in /login/oidc/{name}")
    label: str = Field(description="the login button's text, e.g. 市一医院统一身份认证")
    server_metadata_url: str = Field(description=".../.well-known/openid-configuration")
    client_id: str
    client_secret: SecretStr | None = None
    organization: str = Field(description="Organization id of the users it signs in")
    default_role: Literal["doctor", "consultant", "admin"] = "doctor"
    scope: str = "openid profile email"


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
    dicomweb_max_body_bytes: int = Field(
        default=4 * 1024 * 1024 * 1024,
        description="413 above this for a DICOMweb STOW-RS request (POST /dicomweb/studies"
        "...), whose body is streamed to storage rather than held in memory",
    )
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

    # The imaging cloud (package imaging/).
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    dicom_ae_title: str = Field(default="YIJIAN", description="the C-STORE receiver's AE title")
    dicom_max_pdu: int = Field(default=1 << 20, description="largest P-DATA PDU received")
    dicom_resend: Literal["replace", "keep"] = Field(
        default="replace",
        description="an SOP Instance UID received again with other bytes: a new version "
        "(replace), or the first kept and the resend refused (keep); same bytes are always "
        "accepted as a repeat",
    )
    object_store: Literal["file", "s3"] = Field(
        default="file", description="where DICOM files live: a local directory, or S3"
    )
    object_store_dir: Path | None = Field(
        default=None, description="the file store's directory; default DATA_DIR/objects"
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint")
    s3_bucket: str = "yijian-dicom"
    s3_prefix: str = Field(default="", description="key prefix inside the bucket")
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None

    # The web workstation (hub/web/).
    web_session_idle_minutes: int = Field(
        default=30, description="a web session unused this long ends"
    )
    web_session_absolute_hours: int = Field(
        default=12, description="a web session ends this long after login, used or not"
    )
    access_care_hours: float = Field(
        default=8, description="a doctor's access to a patient opened in their care lasts this long"
    )
    access_ordering_hours: float = Field(
        default=2, description="access from an order (CDS Hooks, a card link) lasts this long"
    )
    access_launch_hours: float = Field(
        default=8, description="access from an EHR launch (SMART) lasts this long"
    )
    access_break_glass_minutes: float = Field(
        default=60, description="emergency (break-glass) access lasts this long"
    )
    web_cookie_secure: bool = Field(
        default=True,
        description="mark the session cookie Secure; turn off ONLY for a plain-http deployment "
        "that no browser reaches except on loopback or a trusted network (browsers treat "
        "http://127.0.0.1 as secure anyway)",
    )
    oidc_providers: list[OidcProvider] = Field(
        default_factory=list,
        description="OpenID Connect providers for web single sign-on, a JSON list of objects "
        "(name, label, server_metadata_url, client_id, client_secret, organization, "
        "default_role, scope)",
    )

    @cached_property
    def resolved_keys_dir(self) -> Path:
        return self.keys_dir or (self.data_dir / "keys")

    @cached_property
    def resolved_object_store_dir(self) -> Path:
        return self.object_store_dir or (self.data_dir / "objects")


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (used by tests and the CLI)."""
    return Settings(**overrides)  # type: ignore[arg-type]
