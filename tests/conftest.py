"""Shared fixtures: one real MongoDB wire server per test session.

``MONGODB_URI`` set: that server. Otherwise SecantusDB is started as its own
process (never imported: it is GPL-2.0) with an in-memory store.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from fhir_server.config import Settings
from fhir_server.main import Services, build_services, create_app
from fhir_server.store.embedded import EmbeddedMongo

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri
        return
    with EmbeddedMongo(":memory:", start_timeout=60) as db:
        yield db.uri


@pytest.fixture(scope="session")
def mongo_client(mongo_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    yield client
    client.close()


def make_settings(mongo_uri: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mongodb_uri": mongo_uri,
        "mongodb_database": f"t_{uuid.uuid4().hex[:12]}",
        "base_url": "http://testserver/fhir",
        "secret_key": "test-secret",
        "auth": "off",  # tests of the security layer turn it on explicitly
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def services(mongo_uri: str) -> Iterator[Services]:
    """Services on a fresh database for each test module."""
    svc = build_services(make_settings(mongo_uri))
    yield svc
    svc.repo.drop_everything()
    svc.close()


@pytest.fixture(scope="module")
def client(services: Services) -> Iterator[Any]:
    from starlette.testclient import TestClient

    app = create_app(services.settings, services)
    with TestClient(app, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared reference data not present at {SHARED}")
    return SHARED
