"""The composition root: builds every service from one Settings and wires the app.

Nothing imports this module except the CLI and tests.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from fhir_server.access.guard import Guard
from fhir_server.access.policy import AccessPolicy, OpenPolicy
from fhir_server.config import PROJECT_ROOT, Settings, get_settings
from fhir_server.fhir.validate import Validator
from fhir_server.rest.capabilities import build_capability_statement
from fhir_server.rest.context import Caller
from fhir_server.rest.cursor import CursorCodec
from fhir_server.rest.indexing import Indexer, MinimalIndexer
from fhir_server.rest.operations import OperationRegistry
from fhir_server.rest.service import FhirService
from fhir_server.store.embedded import EmbeddedMongo
from fhir_server.store.repository import Repository, connect

__all__ = ["Services", "build_services", "create_app"]

log = logging.getLogger("fhir_server")


@dataclass
class Services:
    settings: Settings
    repo: Repository
    fhir: FhirService
    operations: OperationRegistry
    policy: AccessPolicy
    bundles: Any = None
    embedded: EmbeddedMongo | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    _capability: dict[str, Any] | None = None

    def authenticate(self, request: Request) -> Caller:
        """The caller of a request (auth off: anonymous with every right)."""
        return Caller()

    def capability_statement(self, mode: str | None = None) -> dict[str, Any]:
        if self._capability is None:
            self._capability = build_capability_statement(self.settings.fhir_base, self.operations,
                                                          self.fhir.searcher)
        return self._capability

    def close(self) -> None:
        self.repo.client.close()
        if self.embedded is not None:
            self.embedded.stop()


def build_services(settings: Settings) -> Services:
    embedded = None
    uri = settings.mongodb_uri
    if not uri:
        embedded = EmbeddedMongo(settings.data_dir / "db", start_timeout=settings.embedded_start_timeout)
        uri = embedded.start()
    try:
        client = connect(uri)
        indexer: Indexer = MinimalIndexer()
        repo = Repository(client, settings.mongodb_database, binary_inline_max=settings.binary_inline_max)
        if not repo.supports_transactions:
            log.warning("MongoDB at %s has no transactions (standalone?): writes and transaction bundles "
                        "will answer 501; run a replica set", uri)
        repo.ensure_base_indexes()
        policy: AccessPolicy = OpenPolicy()
        guard = Guard(repo, policy)
        from fhir_server.rest.search import MinimalSearcher

        searcher = MinimalSearcher(guard, settings.default_page_size, settings.max_page_size)
        cursors = CursorCodec(_secret(settings))
        validator = Validator(PROJECT_ROOT / "terminologies")
        fhir = FhirService(repo, guard, validator, indexer, searcher, cursors,
                           default_count=settings.default_page_size, max_count=settings.max_page_size,
                           binary_inline_max=settings.binary_inline_max)
        operations = OperationRegistry()
        return Services(settings, repo, fhir, operations, policy, embedded=embedded)
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise


def _secret(settings: Settings) -> bytes:
    key = getattr(settings, "secret_key", None)
    return key.encode() if key else secrets.token_bytes(32)


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """A fresh app. With ``services`` given, the caller owns their lifetime (tests)."""
    settings = settings or (services.settings if services else get_settings())
    from fhir_server.api.errors import install_error_handlers
    from fhir_server.api.limits import BodyLimitMiddleware
    from fhir_server.api.routes import router

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = None
        if getattr(app.state, "services", None) is None:
            owned = build_services(settings)
            app.state.services = owned
        try:
            yield
        finally:
            if owned is not None:
                owned.close()
                app.state.services = None

    app = FastAPI(title="FHIR R4 server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = services
    install_error_handlers(app)
    from urllib.parse import urlparse

    prefix = urlparse(settings.fhir_base).path.rstrip("/")
    app.include_router(router, prefix=prefix)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app
