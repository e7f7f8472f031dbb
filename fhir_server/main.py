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
from fhir_server.rest.operations import OperationRegistry
from fhir_server.rest.service import FhirService
from fhir_server.search.executor import SearchExecutor
from fhir_server.search.extract import Extractor
from fhir_server.search.registry import default_registry
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
    routers: list[Any] = field(default_factory=list)  # extra FastAPI routers mounted at the root (auth pages…)
    authenticator: Any = None  # callable(Request) -> Caller; None: auth off
    security: dict[str, Any] | None = None  # CapabilityStatement.rest.security
    _capability: dict[str, Any] | None = None

    def authenticate(self, request: Request) -> Caller:
        """The caller of a request (auth off: anonymous with every right)."""
        if self.authenticator is None:
            return Caller()
        return self.authenticator(request)

    def set_policy(self, policy: AccessPolicy) -> None:
        """Swap the access policy behind the one Guard every interaction uses."""
        self.policy = policy
        self.fhir.guard.policy = policy

    def capability_statement(self, mode: str | None = None) -> dict[str, Any]:
        if self._capability is None:
            self._capability = build_capability_statement(self.settings.fhir_base, self.operations,
                                                          self.fhir.searcher, security=self.security)
        return self._capability

    def invalidate_capability(self) -> None:
        """Regenerate the CapabilityStatement on next request (parameters or security changed)."""
        self._capability = None

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
        registry = default_registry()
        indexer = Extractor(registry, base_url=settings.fhir_base)
        indexer.warm_up()
        repo = Repository(client, settings.mongodb_database, binary_inline_max=settings.binary_inline_max,
                          query_split=settings.query_split)
        if not repo.supports_transactions:
            log.warning("MongoDB at %s has no transactions (standalone?): writes and transaction bundles "
                        "will answer 501; run a replica set", uri)
        repo.ensure_base_indexes()
        policy: AccessPolicy = OpenPolicy()
        guard = Guard(repo, policy)
        cursors = CursorCodec(_secret(settings))
        searcher = SearchExecutor(guard, cursors, registry=registry, default_count=settings.default_page_size,
                                  max_count=settings.max_page_size, known_types=_TypeCache(repo))
        validator = Validator(PROJECT_ROOT / "terminologies")
        fhir = FhirService(repo, guard, validator, indexer, searcher, cursors,
                           default_count=settings.default_page_size, max_count=settings.max_page_size,
                           binary_inline_max=settings.binary_inline_max)
        operations = OperationRegistry()
        services = Services(settings, repo, fhir, operations, policy, embedded=embedded)
        for installer in EXTENSIONS:
            _install(installer, services)
        _ensure_indexes_in_background(repo)
        return services
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise


# Each feature package wires itself in with ``install(services)``: it may add write
# checks and listeners, swap the policy, register operations and add routers. Listed here,
# in order; a module that does not exist yet is skipped.
EXTENSIONS = (
    "fhir_server.search.wiring",
    "fhir_server.rest.bundles",
    "fhir_server.documents.wiring",
    "fhir_server.space.wiring",
    "fhir_server.audit.wiring",
    "fhir_server.auth.wiring",
)


def _install(module_name: str, services: Services) -> None:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return
        raise
    module.install(services)


class _TypeCache:
    """The resource types holding data (system-level search), refreshed every few seconds."""

    def __init__(self, repo: Repository, ttl: float = 5.0) -> None:
        self.repo = repo
        self.ttl = ttl
        self._at = -ttl
        self._types: list[str] = []

    def __call__(self) -> list[str]:
        import time

        if time.monotonic() - self._at > self.ttl:
            self._types = self.repo.nonempty_types()
            self._at = time.monotonic()
        return list(self._types)


def _ensure_indexes_in_background(repo: Repository) -> None:
    """Create every type's collection and indexes (idempotent) without delaying start-up.

    Writes also ensure their type's indexes first, so nothing depends on this finishing.
    """
    import threading

    from fhir_server.fhir.models import resource_types

    def run() -> None:
        try:
            for type_ in sorted(resource_types()):
                repo.ensure_type(type_)
        except Exception:  # noqa: BLE001 - the client may be closed during shutdown
            log.debug("background index creation stopped", exc_info=True)

    threading.Thread(target=run, name="ensure-indexes", daemon=True).start()


def _secret(settings: Settings) -> bytes:
    key = getattr(settings, "secret_key", None)
    return key.encode() if key else secrets.token_bytes(32)


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """A fresh app. With ``services`` given, the caller owns their lifetime (tests);
    otherwise they are built now (starting the embedded database if needed) and
    closed when the app shuts down."""
    settings = settings or (services.settings if services else get_settings())
    from fhir_server.api.errors import install_error_handlers
    from fhir_server.api.limits import BodyLimitMiddleware
    from fhir_server.api.routes import router

    owned = services is None
    if services is None:
        services = build_services(settings)
    svc = services

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owned:
                svc.close()

    app = FastAPI(title="FHIR R4 server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = services
    install_error_handlers(app)
    from urllib.parse import urlparse

    prefix = urlparse(settings.fhir_base).path.rstrip("/")
    # extension routers first: their fixed paths ({base}/.well-known/…) must win over {type}/{id}
    for extra in services.routers:
        app.include_router(extra)
    app.include_router(router, prefix=prefix)
    if prefix:  # POST [base] without the trailing slash
        from fhir_server.api.routes import system_bundle, system_search

        app.add_api_route(prefix, system_bundle, methods=["POST"], include_in_schema=False)
        app.add_api_route(prefix, system_search, methods=["GET"], include_in_schema=False)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app
