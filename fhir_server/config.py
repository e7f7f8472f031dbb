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
    binary_inline_max: int = Field(1024 * 1024, description="Binaries larger than this go to GridFS")

    @model_validator(mode="after")
    def _production_needs_secrets(self) -> Settings:
        if self.mode == "production" and not self.secret_key:
            raise ValueError("FHIR_SERVER_SECRET_KEY is required in production mode")
        return self

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
