"""The audit trail: every access writes a BALP AuditEvent; a patient sees their own trail only."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from fhir_server.main import Services
from tests.auth.helpers import FJ, bearer, mint


def events(svc: Services, **query: Any) -> list[dict[str, Any]]:
    return [d["res"] for d in svc.repo.find_raw("AuditEvent", query, sort=[("ts", 1)])]


@pytest.fixture
def lenient_client(secure_services: Services) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from fhir_server.main import create_app

    with TestClient(create_app(secure_services.settings, secure_services), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def fresh(secure_services: Services) -> Iterator[Services]:
    secure_services.repo.db["AuditEvent"].delete_many({})
    yield secure_services


def test_read_writes_balp_event(secure_client: Any, fresh: Services) -> None:
    token = mint(fresh, kind="patient", scope="patient/*.rs openid fhirUser", patient="a", fhir_user="Patient/a",
                 sub="alice", client_id="app-1")
    jti = fresh.extras["tokens"].decode(token)["jti"]
    assert secure_client.get("/fhir/Observation/obs-a-1", headers=bearer(token)).status_code == 200
    [ev] = events(fresh)
    assert ev["type"]["code"] == "rest" and ev["subtype"][0]["code"] == "read" and ev["action"] == "R"
    assert ev["outcome"] == "0"
    whats = [e["what"]["reference"] for e in ev["entity"]]
    assert whats[0] == "Patient/a" and "Observation/obs-a-1/_history/1" in whats
    user = next(a for a in ev["agent"] if a["requestor"])
    assert user["who"]["reference"] == "Patient/a" and user["altId"] == "alice"
    assert user["policy"] == [f"urn:uuid:{jti}"]
    client = next(a for a in ev["agent"] if a["who"].get("identifier"))
    assert client["who"]["identifier"]["value"] == "app-1"
    stored = next(iter(fresh.repo.find_raw("AuditEvent", {})))
    assert stored["sp"] == "a" and "Patient/a" in stored["ix"]["patient"]


def test_search_records_the_query_and_each_patient(secure_client: Any, fresh: Services) -> None:
    h = bearer(mint(fresh, kind="system", scope="system/Observation.rs", client_id="warehouse", sub="warehouse"))
    assert secure_client.get("/fhir/Observation?_count=50", headers=h).status_code == 200
    evs = events(fresh)
    patients = {e["entity"][0]["what"]["reference"] for e in evs if e["entity"][0]["role"]["code"] == "1"}
    assert {"Patient/a", "Patient/b"} <= patients
    for ev in evs:
        q = [e for e in ev["entity"] if e["role"]["code"] == "24"]
        assert q and base64.b64decode(q[0]["query"]).decode() == "_count=50"
        assert ev["action"] == "E"


def test_denials_and_401_are_audited(secure_client: Any, fresh: Services) -> None:
    h = bearer(mint(fresh, kind="patient", scope="patient/Observation.rs", patient="a", fhir_user="Patient/a"))
    assert secure_client.get("/fhir/Condition/cond-a", headers=h).status_code == 403
    assert secure_client.get("/fhir/Patient/a").status_code == 401
    evs = events(fresh)
    assert any(e["outcome"] == "4" and e["subtype"][0]["code"] == "read" and "Condition" in e.get("outcomeDesc", "")
               for e in evs)
    assert any(e["outcome"] == "4" and e["subtype"][0]["code"] == "authn" for e in evs)


def test_writes_are_audited_in_their_transaction(secure_client: Any, fresh: Services) -> None:
    h = bearer(mint(fresh, kind="patient", scope="patient/*.cruds", patient="a", fhir_user="Patient/a"))
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/a"}}
    r = secure_client.post("/fhir/Observation", json=obs, headers={**h, "Content-Type": FJ})
    assert r.status_code == 201
    evs = [e for e in events(fresh) if e["subtype"][0]["code"] == "create"]
    assert len(evs) == 1 and evs[0]["action"] == "C"
    assert f"Observation/{r.json()['id']}/_history/1" in [e["what"]["reference"] for e in evs[0]["entity"]]


def test_failed_audit_fails_the_request(lenient_client: Any, fresh: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    auditor = fresh.extras["auditor"]

    def broken(events: Any) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr(auditor, "_write", broken)
    h = bearer(mint(fresh, kind="patient", scope="patient/*.rs", patient="a", fhir_user="Patient/a"))
    r = lenient_client.get("/fhir/Observation/obs-a-1", headers=h)
    assert r.status_code == 500
    assert "obs-a-1" not in r.text


def test_failed_write_audit_rolls_the_write_back(lenient_client: Any, fresh: Services,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    auditor = fresh.extras["auditor"]

    def broken(*a: Any, **k: Any) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr(fresh.fhir.guard, "on_write", broken)
    monkeypatch.setattr(auditor, "_write", lambda events: None)
    h = bearer(mint(fresh, kind="patient", scope="patient/*.cruds", patient="a", fhir_user="Patient/a"))
    obs = {"resourceType": "Observation", "id": "never-stored", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/a"}}
    r = lenient_client.put("/fhir/Observation/never-stored", json=obs, headers={**h, "Content-Type": FJ})
    assert r.status_code == 500
    assert fresh.repo.current("Observation", "never-stored") is None


def test_patient_sees_only_own_trail(secure_client: Any, fresh: Services) -> None:
    a = bearer(mint(fresh, kind="patient", scope="patient/*.rs", patient="a", fhir_user="Patient/a"))
    b = bearer(mint(fresh, kind="patient", scope="patient/*.rs", patient="b", fhir_user="Patient/b"))
    dr = bearer(mint(fresh, kind="practitioner", scope="user/*.rs", fhir_user="Practitioner/dr", sub="drhouse"))
    secure_client.get("/fhir/Observation/obs-a-1", headers=dr)
    secure_client.get("/fhir/Observation/obs-b-1", headers=b)
    r = secure_client.get("/fhir/AuditEvent?patient=a&_count=100", headers=a)
    assert r.status_code == 200, r.text
    entries = [e["resource"] for e in r.json().get("entry", [])]
    assert entries
    for ev in entries:
        assert ev["entity"][0]["what"]["reference"] == "Patient/a"
    assert any(any(ag.get("who", {}).get("reference") == "Practitioner/dr" for ag in ev["agent"]) for ev in entries)
    r = secure_client.get("/fhir/AuditEvent?patient=b", headers=a)
    assert r.status_code in (200, 403)
    if r.status_code == 200:
        assert all(e["resource"]["entity"][0]["what"]["reference"] == "Patient/a" for e in r.json().get("entry", []))
    r = secure_client.get("/fhir/AuditEvent?_count=100", headers=a)  # without a patient: narrowed to a's own
    assert r.status_code == 200
    assert all(e["resource"]["entity"][0]["what"]["reference"] == "Patient/a" for e in r.json().get("entry", []))


def test_token_events_are_audited(secure_services: Services) -> None:
    auditor = secure_services.extras["auditor"]
    from fhir_server.rest.context import Caller

    auditor.security("login", success=False, caller=Caller(kind="user", subject="mallory"), address="10.0.0.1",
                     description="failed sign-in")
    ev = events(secure_services, **{"res.subtype.code": "login"})[-1]
    assert ev["type"]["code"] == "110114" and ev["outcome"] == "4"
