"""Against a MongoDB without transactions (standalone): single writes work, transaction bundles are refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from fhir_server.main import build_services, create_app
from fhir_server.store.embedded import EmbeddedMongo
from tests.conftest import make_settings

H = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def standalone() -> Iterator[TestClient]:
    with EmbeddedMongo(":memory:", extra_args=("--standalone",)) as engine:
        svc = build_services(make_settings(engine.uri))
        assert not svc.repo.supports_transactions
        with TestClient(create_app(svc.settings, svc)) as c:
            yield c
        svc.close()


def test_single_writes_work_without_transactions(standalone: TestClient) -> None:
    r = standalone.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=H)
    assert r.status_code == 201
    body = r.json()
    r = standalone.put(f"/fhir/Patient/{body['id']}", json=body, headers={**H, "If-Match": 'W/"1"'})
    assert r.status_code == 200
    r = standalone.put(f"/fhir/Patient/{body['id']}", json=body, headers={**H, "If-Match": 'W/"1"'})
    assert r.status_code == 412
    hist = standalone.get(f"/fhir/Patient/{body['id']}/_history").json()
    assert [e["response"]["etag"] for e in hist["entry"]] == ['W/"2"', 'W/"1"']


def test_transaction_bundle_refused_clearly(standalone: TestClient) -> None:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]}
    r = standalone.post("/fhir", json=bundle, headers=H)
    assert r.status_code == 501
    issue = r.json()["issue"][0]
    assert "transaction" in issue["diagnostics"] and issue["code"] == "not-supported"
    batch = {**bundle, "type": "batch"}
    assert standalone.post("/fhir", json=batch, headers=H).json()["entry"][0]["response"]["status"] == "201 Created"
