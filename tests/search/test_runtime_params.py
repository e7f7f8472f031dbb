"""Runtime SearchParameter: POSTed, indexed in the background, usable once complete."""

from __future__ import annotations

from typing import Any

H = {"Content-Type": "application/fhir+json"}
EXT = "http://example.org/fhir/StructureDefinition/blood-group"


def sp(code: str = "blood-group", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "SearchParameter", "url": f"http://example.org/fhir/SearchParameter/{code}",
            "name": code, "status": "active", "description": "Blood group (ABO) of a patient", "code": code,
            "base": ["Patient"], "type": "token",
            "expression": f"Patient.extension.where(url='{EXT}').value", **extra}


def patient(group: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "extension": [{"url": EXT, "valueCode": group}]}


def test_runtime_parameter_lifecycle(client: Any, services: Any) -> None:
    before = [client.post("/fhir/Patient", json=patient(g), headers=H).json()["id"] for g in ("A", "B", "O", "A")]
    assert client.get("/fhir/Patient", params={"blood-group": "A"}).status_code == 400
    r = client.post("/fhir/SearchParameter", json=sp(), headers=H)
    assert r.status_code == 201, r.text
    runtime = services.extras["runtime_search_params"]
    runtime.wait()
    after = client.post("/fhir/Patient", json=patient("A"), headers=H).json()["id"]
    b = client.get("/fhir/Patient", params={"blood-group": "A"}).json()
    assert {e["resource"]["id"] for e in b["entry"]} == {before[0], before[3], after}
    cs = client.get("/fhir/metadata").json()
    pat = next(x for x in cs["rest"][0]["resource"] if x["type"] == "Patient")
    assert "blood-group" in {p["name"] for p in pat["searchParam"]}
    # deleting the SearchParameter removes it again
    assert client.delete(f"/fhir/SearchParameter/{r.json()['id']}").status_code == 204
    assert client.get("/fhir/Patient", params={"blood-group": "A"}).status_code == 400


def test_pending_parameter_is_not_usable_until_indexed(client: Any, services: Any) -> None:
    runtime = services.extras["runtime_search_params"]
    gate = __import__("threading").Event()
    original = runtime._reindex

    def slow(type_: str, ex: Any, since: Any) -> None:
        gate.wait(10)
        original(type_, ex, since)

    runtime._reindex = slow
    try:
        r = client.post("/fhir/SearchParameter", json=sp("blood-group-2"), headers=H)
        assert r.status_code == 201
        assert client.get("/fhir/Patient", params={"blood-group-2": "A"}).status_code == 400
        cs = client.get("/fhir/metadata").json()
        pat = next(x for x in cs["rest"][0]["resource"] if x["type"] == "Patient")
        assert "blood-group-2" not in {p["name"] for p in pat["searchParam"]}
    finally:
        gate.set()
        runtime.wait()
        runtime._reindex = original
    assert client.get("/fhir/Patient", params={"blood-group-2": "A"}).status_code == 200


def test_invalid_search_parameters_are_refused(client: Any) -> None:
    for bad, status, where in [(sp(base=["NotAType"]), 400, "SearchParameter.base[0]"),  # required binding
                               (sp(type="composite"), 422, "SearchParameter.type"),
                               (sp(code="gender"), 422, "SearchParameter.code"),
                               (sp(expression="Patient.extension.where(("), 422, "SearchParameter.expression")]:
        r = client.post("/fhir/SearchParameter", json=bad, headers=H)
        assert r.status_code == status, (bad, r.text)
        assert r.json()["issue"][0]["expression"] == [where]
