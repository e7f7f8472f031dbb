"""Configuration: one ``Settings`` object read from the environment.

Every variable has the ``FHIR_SERVER_`` prefix, except ``MONGODB_URI`` which is
also accepted bare (docker-compose and CI set it that way). Settings are built by
``get_settings()`` (cached) and injected; nothing reads them at import time.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings", "PROJECT_ROOT"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


_PLACEHOLDER_SECRETS = frozenset({"change-me-in-production", "changeme", "secret", "test-secret"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_SERVER_", extra="ignore")

    base_url: str = Field("http://localhost:8080/fhir", description="Public base URL of the FHIR endpoint")
    host: str = Field("127.0.0.1", description="Bind address")
    port: int = Field(8080, description="Bind port")
    mongodb_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("FHIR_SERVER_MONGODB_URI", "MONGODB_URI"),
        description="MongoDB URI; unset = start the embedded SecantusDB process",
    )
    mongodb_database: str = Field("fhir", description="Database name")
    data_dir: Path = Field(PROJECT_ROOT / ".data", description="Data directory of the embedded database")
    embedded_start_timeout: float = Field(60.0, description="Seconds to wait for the embedded database")
    max_body_bytes: int = Field(20 * 1024 * 1024, description="Largest accepted request body")
    default_page_size: int = Field(20, description="Search page size when _count is absent")
    max_page_size: int = Field(1000, description="Largest _count honoured")
    log_level: str = Field("INFO", description="Log level")
    log_format: Literal["text", "json"] = Field("text", description="Log format")
    mode: Literal["development", "production"] = Field("development", description="Run mode")
    secret_key: str | None = Field(
        None, description="Secret signing paging cursors (shared by all API processes); required in production")
    query_split: Literal["auto", "on", "off"] = Field(
        "auto", description="Split $or queries into index-served branches; auto = on for SecantusDB")
    binary_inline_max: int = Field(1024 * 1024, description="Binaries larger than this go to GridFS")
    documents_create_unknown_patient: bool = Field(
        False, description="$ingest-cda: create the Patient (and so the patient's space) when no Patient matches "
                           "the document's INS or local identifiers; false = answer 422")
    # --- security (SMART on FHIR authorization server, access policy, audit) ---
    auth: Literal["on", "off"] = Field(
        "on", description="off: serve the FHIR API without tokens (development only; refused in production)")
    audit: Literal["auto", "on", "off"] = Field(
        "auto", description="AuditEvent trail; auto = on whenever auth is on")
    auth_issuer: str | None = Field(None, description="OAuth issuer; default: the FHIR base URL")
    auth_url: str | None = Field(None, description="Public URL of the authorization endpoints; default: "
                                                   "<origin of base_url>/auth")
    auth_signing_key: Path | None = Field(
        None, description="PEM RSA private key signing tokens; required in production "
                          "(development: generated once and kept in <data_dir>/auth/)")
    auth_access_token_lifetime: int = Field(900, description="Access token lifetime (s)")
    auth_backend_token_lifetime: int = Field(300, description="Backend-services access token lifetime (s, <= 300)")
    auth_code_lifetime: int = Field(60, description="Authorization code lifetime (s)")
    auth_launch_lifetime: int = Field(300, description="EHR launch context lifetime (s)")
    auth_session_lifetime: int = Field(8 * 3600, description="Login session lifetime (s); bounds online_access")
    auth_offline_lifetime: int = Field(90 * 86400, description="offline_access refresh token lifetime (s)")
    auth_rate_limit: int = Field(60, description="Requests per minute per client address on /authorize, "
                                                 "/token, /introspect")
    auth_login_rate_limit: int = Field(10, description="Login attempts per minute per address and user name")
    auth_smart_style_url: str | None = Field(None, description="smart_style_url returned with tokens")
    auth_oidc_upstream: str | None = Field(
        None, description="Issuer URL of an upstream OpenID Connect identity provider (optional)")
    auth_oidc_client_id: str | None = Field(None, description="Client id at the upstream identity provider")
    auth_oidc_client_secret: str | None = Field(None, description="Client secret at the upstream provider")

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> Settings:
        if self.mode == "production" and (not self.secret_key or self.secret_key in _PLACEHOLDER_SECRETS
                                          or len(self.secret_key) < 16):
            raise ValueError("FHIR_SERVER_SECRET_KEY is required in production mode: a real secret of at least "
                             "16 characters, not a placeholder")
        if self.mode == "production" and self.auth == "off":
            raise ValueError("FHIR_SERVER_AUTH=off is refused in production mode")
        if self.mode == "production" and not self.auth_signing_key:
            raise ValueError("FHIR_SERVER_AUTH_SIGNING_KEY (a PEM key file) is required in production mode")
        if self.auth_backend_token_lifetime > 300:
            raise ValueError("FHIR_SERVER_AUTH_BACKEND_TOKEN_LIFETIME must be at most 300 seconds")
        return self

    @property
    def audit_enabled(self) -> bool:
        return self.audit == "on" or (self.audit == "auto" and self.auth == "on")

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
