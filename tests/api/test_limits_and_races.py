"""Oversized bodies and concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from starlette.testclient import TestClient

from fhir_server.main import build_services, create_app
from tests.conftest import make_settings

H = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def small_client(mongo_uri: str) -> Iterator[TestClient]:
    svc = build_services(make_settings(mongo_uri, max_body_bytes=2048))
    with TestClient(create_app(svc.settings, svc)) as c:
        yield c
    svc.repo.drop_everything()
    svc.close()


def test_oversized_body_gets_413_before_parsing(small_client: TestClient) -> None:
    big = b'{"resourceType": "Patient", "name": [{"family": "' + b"x" * 4096 + b'"}]}'
    r = small_client.post("/fhir/Patient", content=big, headers=H)
    assert r.status_code == 413
    assert r.json()["issue"][0]["code"] == "too-costly"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is counted
        yield big[:1000]
        yield big[1000:]

    r = small_client.post("/fhir/Patient", content=chunks(), headers=H)
    assert r.status_code == 413
    assert small_client.get("/fhir/Patient/_history").json().get("entry") is None
    ok = small_client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=H)
    assert ok.status_code == 201


def test_concurrent_updates_are_serialised_never_lost(client: Any) -> None:
    """N writers update one resource at once without If-Match: N new versions, none lost."""
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=H).json()["id"]
    n = 16
    barrier = threading.Barrier(n)

    def write(i: int) -> tuple[int, str]:
        barrier.wait()
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": f"writer-{i}"}]}
        r = client.put(f"/fhir/Patient/{pid}", json=body, headers=H)
        return r.status_code, r.json()["meta"]["versionId"]

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(write, range(n)))
    assert all(status == 200 for status, _ in results), results
    versions = sorted(int(v) for _, v in results)
    assert versions == list(range(2, n + 2))  # every writer got its own version
    hist = client.get(f"/fhir/Patient/{pid}/_history", params={"_count": 100}).json()
    assert len(hist["entry"]) == n + 1
    writers = {e["resource"]["name"][0]["family"] for e in hist["entry"] if "name" in e["resource"]}
    assert writers == {f"writer-{i}" for i in range(n)}


def test_concurrent_if_match_exactly_one_wins(client: Any) -> None:
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=H).json()["id"]
    n = 12
    barrier = threading.Barrier(n)

    def write(i: int) -> int:
        barrier.wait()
        body = {"resourceType": "Patient", "id": pid, "gender": "male" if i % 2 else "female"}
        return client.put(f"/fhir/Patient/{pid}", json=body, headers={**H, "If-Match": 'W/"1"'}).status_code

    with ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(write, range(n)))
    assert statuses.count(200) == 1, statuses
    assert statuses.count(412) == n - 1, statuses
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"


def test_concurrent_conditional_creates_make_one_resource(client: Any) -> None:
    """32 identical conditional creates at once: exactly one 201, 31 answers pointing at it."""
    n = 32
    barrier = threading.Barrier(n)
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:race", "value": "42"}]}

    def write(_: int) -> tuple[int, str]:
        barrier.wait()
        r = client.post("/fhir/Patient", json=body, headers={**H, "If-None-Exist": "identifier=urn:race|42"})
        return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(write, range(n)))
    assert sorted(s for s, _ in results) == [200] * (n - 1) + [201], results
    assert len({i for _, i in results}) == 1
