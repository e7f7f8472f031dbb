"""The access-policy gate over HTTP, with tokens minted directly by the server's token service."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from fhir_server.main import Services
from tests.auth.helpers import FJ, bearer, mint, put

OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e}


@pytest.fixture(scope="module")
def patient_a(secure_services: Services) -> dict[str, str]:
    return bearer(mint(secure_services, kind="patient", scope="patient/*.cruds openid fhirUser", patient="a",
                       fhir_user="Patient/a", sub="alice"))


# ------------------------------------------------------------------ authentication
def test_no_token_is_401_with_www_authenticate(secure_client: Any) -> None:
    r = secure_client.get("/fhir/Patient/a")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("how", ["expired", "revoked", "foreign-aud", "garbage", "basic"])
def test_bad_tokens_are_401(secure_client: Any, secure_services: Services, how: str) -> None:
    if how == "garbage":
        headers = bearer("not.a.jwt")
    elif how == "basic":
        headers = {"Authorization": "Basic dXNlcjpwYXNz"}
    else:
        token = mint(secure_services, kind="patient", scope="patient/*.rs", patient="a", fhir_user="Patient/a",
                     lifetime=-60 if how == "expired" else 300,
                     audience="http://elsewhere.example/fhir" if how == "foreign-aud" else None)
        if how == "revoked":
            jti = secure_services.extras["tokens"].decode(token)["jti"]
            secure_services.extras["auth_store"].revoke_token(jti)
        headers = bearer(token)
    r = secure_client.get("/fhir/Patient/a", headers=headers)
    assert r.status_code == 401, r.text
    assert "invalid" in r.headers["www-authenticate"]


def test_token_signed_by_another_key_is_401(secure_client: Any) -> None:
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    other = RSAKey.generate_key(2048)
    forged = jwt.encode({"alg": "RS256"}, {"iss": "http://testserver/fhir", "aud": "http://testserver/fhir",
                                           "exp": 4102444800, "jti": "x", "scope": "patient/*.rs",
                                           "kind": "patient", "patient": "b"}, other)
    assert secure_client.get("/fhir/Patient/b", headers=bearer(forged)).status_code == 401


# ------------------------------------------------------------------ patient space
def test_patient_sees_own_and_not_others(secure_client: Any, patient_a: dict[str, str]) -> None:
    assert secure_client.get("/fhir/Patient/a", headers=patient_a).status_code == 200
    r = secure_client.get("/fhir/Patient/b", headers=patient_a)
    missing = secure_client.get("/fhir/Patient/nobody", headers=patient_a)
    assert r.status_code == missing.status_code == 404
    assert r.json()["issue"][0]["code"] == missing.json()["issue"][0]["code"]
    assert secure_client.get("/fhir/Observation/obs-b-1", headers=patient_a).status_code == 404
    assert secure_client.get("/fhir/Observation/obs-b-1/_history/1", headers=patient_a).status_code == 404
    assert secure_client.get("/fhir/Observation/obs-b-1/_history", headers=patient_a).status_code == 404


def test_searches_are_narrowed_to_own_space(secure_client: Any, patient_a: dict[str, str]) -> None:
    r = secure_client.get("/fhir/Observation", headers=patient_a)
    assert ids(r.json()) == {"obs-a-1", "obs-a-2"}
    r = secure_client.get("/fhir/Observation?_id=obs-b-1,obs-a-1", headers=patient_a)
    assert ids(r.json()) == {"obs-a-1"}
    r = secure_client.get("/fhir/Patient/b/Observation", headers=patient_a)
    assert r.status_code in (200, 403, 404)
    if r.status_code == 200:
        assert not any(i.startswith("obs-b") for i in ids(r.json()))


def test_history_is_narrowed(secure_client: Any, patient_a: dict[str, str]) -> None:
    for url in ("/fhir/Observation/_history", "/fhir/_history?_count=200"):
        r = secure_client.get(url, headers=patient_a)
        assert r.status_code == 200, r.text
        for e in r.json().get("entry", []):
            res = e.get("resource") or {}
            assert not res.get("id", "").endswith("-b") and res.get("id") != "b", e["fullUrl"]
            assert (res.get("subject") or {}).get("reference") != "Patient/b"


def test_type_outside_scopes_is_403_whether_or_not_data_exists(secure_client: Any,
                                                               secure_services: Services) -> None:
    h = bearer(mint(secure_services, kind="patient", scope="patient/Observation.rs", patient="a",
                    fhir_user="Patient/a"))
    assert secure_client.get("/fhir/Condition/cond-a", headers=h).status_code == 403
    assert secure_client.get("/fhir/Condition/nothing-here", headers=h).status_code == 403
    assert secure_client.get("/fhir/Condition", headers=h).status_code == 403
    assert secure_client.get("/fhir/Observation/obs-a-1", headers=h).status_code == 200


def test_v1_scopes(secure_client: Any, secure_services: Services) -> None:
    h = bearer(mint(secure_services, kind="patient", scope="patient/Observation.read", patient="a",
                    fhir_user="Patient/a"))
    assert secure_client.get("/fhir/Observation/obs-a-1", headers=h).status_code == 200
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/a"}}
    assert secure_client.post("/fhir/Observation", json=obs, headers={**h, "Content-Type": FJ}).status_code == 403


def test_category_limited_scope(secure_client: Any, secure_services: Services) -> None:
    h = bearer(mint(secure_services, kind="patient", scope=f"patient/Observation.rs?category={OBS_CAT}|laboratory",
                    patient="a", fhir_user="Patient/a"))
    assert ids(secure_client.get("/fhir/Observation", headers=h).json()) == {"obs-a-1"}
    assert secure_client.get("/fhir/Observation/obs-a-2", headers=h).status_code == 404


def test_patient_scope_without_patient_context_is_refused(secure_client: Any, secure_services: Services) -> None:
    h = bearer(mint(secure_services, kind="patient", scope="patient/*.rs", patient=None, fhir_user="Patient/a"))
    r = secure_client.get("/fhir/Observation", headers=h)
    assert r.status_code == 403
    h = bearer(mint(secure_services, kind="practitioner", scope="user/*.rs", fhir_user=None))
    assert secure_client.get("/fhir/Observation", headers=h).status_code == 403


# -------------------------------------------------------------------------- writes
def test_writes_stay_in_own_space(secure_client: Any, patient_a: dict[str, str]) -> None:
    h = {**patient_a, "Content-Type": FJ}
    mine = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "subject": {"reference": "Patient/a"}}
    r = secure_client.post("/fhir/Observation", json=mine, headers=h)
    assert r.status_code == 201, r.text
    new_id = r.json()["id"]
    other = {**mine, "subject": {"reference": "Patient/b"}}
    assert secure_client.post("/fhir/Observation", json=other, headers=h).status_code == 403
    moved = {**other, "id": new_id}
    assert secure_client.put(f"/fhir/Observation/{new_id}", json=moved, headers=h).status_code == 403
    assert secure_client.put("/fhir/Observation/obs-b-1", json={**other, "id": "obs-b-1"},
                             headers=h).status_code == 404
    assert secure_client.delete("/fhir/Observation/obs-b-1", headers=patient_a).status_code == 404
    shared = {"resourceType": "Practitioner", "name": [{"family": "Fake"}]}
    assert secure_client.post("/fhir/Practitioner", json=shared, headers=h).status_code == 403
    new_patient = {"resourceType": "Patient", "name": [{"family": "Someone"}]}
    assert secure_client.post("/fhir/Patient", json=new_patient, headers=h).status_code == 403


def test_client_set_labels_and_versions_are_ignored(secure_client: Any, patient_a: dict[str, str]) -> None:
    h = {**patient_a, "Content-Type": FJ}
    res = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/a"},
           "meta": {"versionId": "42", "lastUpdated": "1999-01-01T00:00:00Z",
                    "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}],
                    "tag": [{"system": "urn:x", "code": "forged"}]}}
    r = secure_client.post("/fhir/Observation", json=res, headers=h)
    assert r.status_code == 201
    meta = secure_client.get(f"/fhir/Observation/{r.json()['id']}", headers=patient_a).json()["meta"]
    assert meta["versionId"] == "1" and not meta["lastUpdated"].startswith("1999")
    assert "security" not in meta and "tag" not in meta


def test_labels_of_a_system_with_label_permission_are_kept(secure_services: Services) -> None:
    stored = secure_services.repo.current("Patient", "a")
    assert stored is not None
    labelled = put(secure_services, {"resourceType": "Observation", "id": "obs-labelled", "status": "final",
                                     "code": {"text": "x"}, "subject": {"reference": "Patient/a"},
                                     "meta": {"security": [{"system": "urn:s", "code": "R"}]}})
    assert labelled["meta"]["security"][0]["code"] == "R"


# -------------------------------------------------------------------------- Binary
def test_binary_only_through_its_document_reference(secure_client: Any, secure_services: Services,
                                                    patient_a: dict[str, str]) -> None:
    assert secure_client.get("/fhir/Binary/bin-a", headers=patient_a).content == b"secret of a"
    assert secure_client.get("/fhir/Binary/bin-b", headers=patient_a).status_code == 404
    put(secure_services, {"resourceType": "Binary", "id": "bin-orphan", "contentType": "text/plain",
                          "data": base64.b64encode(b"orphan").decode(),
                          "securityContext": {"reference": "Patient/a"}})
    assert secure_client.get("/fhir/Binary/bin-orphan", headers=patient_a).status_code == 404
    no_docs = bearer(mint(secure_services, kind="patient", scope="patient/Binary.rs", patient="a",
                          fhir_user="Patient/a"))
    assert secure_client.get("/fhir/Binary/bin-a", headers=no_docs).status_code == 404


# ---------------------------------------------------------------- professionals
def test_practitioner_with_consent_relationship(secure_client: Any, secure_services: Services) -> None:
    h = bearer(mint(secure_services, kind="practitioner", scope="user/*.rs openid fhirUser",
                    fhir_user="Practitioner/dr", sub="drhouse"))
    found = ids(secure_client.get("/fhir/Observation?_count=100", headers=h).json())
    assert {"obs-a-1", "obs-a-2"} <= found and not any(i.startswith("obs-b") for i in found)
    assert secure_client.get("/fhir/Observation/obs-b-1", headers=h).status_code == 404
    assert secure_client.get("/fhir/Practitioner/dr", headers=h).status_code == 200
    other = bearer(mint(secure_services, kind="practitioner", scope="user/*.rs", fhir_user="Practitioner/dr2"))
    assert ids(secure_client.get("/fhir/Observation", headers=other).json()) == set()
    launched = bearer(mint(secure_services, kind="practitioner", scope="patient/*.rs", patient="b",
                           fhir_user="Practitioner/dr"))
    assert secure_client.get("/fhir/Patient/b", headers=launched).status_code == 404
    in_context = bearer(mint(secure_services, kind="practitioner", scope="patient/*.rs", patient="a",
                             fhir_user="Practitioner/dr"))
    assert secure_client.get("/fhir/Patient/a", headers=in_context).status_code == 200


def test_refused_categories(secure_client: Any, secure_services: Services) -> None:
    for kind in ("insurer", "mutual", "occupational"):
        h = bearer(mint(secure_services, kind=kind, scope="user/*.rs system/*.rs", fhir_user="Practitioner/dr"))
        assert secure_client.get("/fhir/Practitioner/dr", headers=h).status_code == 403
        assert secure_client.get("/fhir/Observation", headers=h).status_code == 403


# ------------------------------------------------------------------------ systems
def test_system_write_policy_create_only(secure_client: Any, secure_services: Services) -> None:
    h = bearer(mint(secure_services, kind="system", client_id="hospital", sub="hospital",
                    scope="system/DocumentReference.c system/Binary.c system/Bundle.c"))
    doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": "Patient/b"},
           "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/bin-b"}}]}
    r = secure_client.post("/fhir/DocumentReference", json=doc, headers={**h, "Content-Type": FJ})
    assert r.status_code == 201, r.text
    assert secure_client.get(f"/fhir/DocumentReference/{r.json()['id']}", headers=h).status_code == 403
    assert secure_client.get("/fhir/Observation", headers=h).status_code == 403
    assert secure_client.get("/fhir/Binary/bin-b", headers=h).status_code == 403


def test_bundle_entries_are_authorised_one_by_one(secure_client: Any, patient_a: dict[str, str]) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/obs-a-1"}},
        {"request": {"method": "GET", "url": "Observation/obs-b-1"}},
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "Patient/b"}}},
    ]}
    r = secure_client.post("/fhir/", json=bundle, headers={**patient_a, "Content-Type": FJ})
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0].startswith("200")
    assert statuses[1].startswith("404")
    assert statuses[2].startswith("403")
    assert not any((e.get("resource") or {}).get("id") == "obs-b-1" for e in r.json()["entry"])


# ---------------------------------------------------------------------- AuditEvent
def test_audit_events_are_immutable(secure_client: Any, secure_services: Services,
                                    patient_a: dict[str, str]) -> None:
    secure_client.get("/fhir/Patient/a", headers=patient_a)
    ev = next(iter(secure_services.repo.find_raw("AuditEvent", {"sp": "a"}, limit=1)))
    admin = bearer(mint(secure_services, kind="system", scope="system/*.cruds", client_id="root", sub="root"))
    body = {**ev["res"], "outcome": "0"}
    for h in (admin, patient_a):
        hh = {**h, "Content-Type": FJ}
        assert secure_client.put(f"/fhir/AuditEvent/{ev['_id']}", json=body, headers=hh).status_code in (403, 405)
        assert secure_client.delete(f"/fhir/AuditEvent/{ev['_id']}", headers=h).status_code in (403, 405)
        patch = [{"op": "replace", "path": "/outcome", "value": "8"}]
        r = secure_client.patch(f"/fhir/AuditEvent/{ev['_id']}", json=patch,
                                headers={**h, "Content-Type": "application/json-patch+json"})
        assert r.status_code in (403, 405)
        assert secure_client.post("/fhir/AuditEvent", json={k: v for k, v in body.items() if k != "id"},
                                  headers=hh).status_code in (403, 405)


def test_history_pages_are_full_and_never_end_on_invisible_rows(secure_client: Any,
                                                                 patient_a: dict[str, str]) -> None:
    url: str | None = "/fhir/_history?_count=2"
    pages = 0
    while url and pages < 50:
        body = secure_client.get(url, headers=patient_a).json()
        entries = body.get("entry", [])
        assert entries, f"empty page at {url}"
        for e in entries:
            res = e.get("resource") or {}
            assert (res.get("subject") or {}).get("reference") != "Patient/b"
        nxt = next((lk["url"] for lk in body["link"] if lk["relation"] == "next"), None)
        url = nxt.replace("http://testserver", "") if nxt else None
        pages += 1
    assert pages >= 2
