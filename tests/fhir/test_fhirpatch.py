"""FHIRPath Patch (https://hl7.org/fhir/R4/fhirpatch.html): unit cases and over HTTP."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.fhirpatch import apply_fhirpatch

H = {"Content-Type": "application/fhir+json"}


def op(kind: str, path: str, **parts: Any) -> dict[str, Any]:
    out = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for name, value in parts.items():
        key = {str: "valueString", int: "valueInteger", bool: "valueBoolean"}.get(type(value))
        out.append({"name": name, key or value.pop("_type"): value})
    return {"name": "operation", "part": out}


def patch(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(ops)}


PATIENT = {"resourceType": "Patient", "active": True, "gender": "female",
           "name": [{"use": "official", "family": "Dupont", "given": ["Anne"]},
                    {"use": "maiden", "family": "Durand"}],
           "identifier": [{"system": "urn:a", "value": "1"}, {"system": "urn:b", "value": "2"}]}


@pytest.mark.parametrize(("ops", "check"), [
    ((op("replace", "Patient.gender", value="male"),), lambda r: r["gender"] == "male"),
    ((op("replace", "Patient.name.where(use='maiden').family", value="Martin"),),
     lambda r: r["name"][1]["family"] == "Martin"),
    ((op("delete", "Patient.identifier.where(system='urn:b')"),), lambda r: r["identifier"] == [
        {"system": "urn:a", "value": "1"}]),
    ((op("delete", "Patient.birthDate"),), lambda r: "birthDate" not in r),  # deleting nothing is fine
    ((op("add", "Patient", name="birthDate", value="1980-01-02"),), lambda r: r["birthDate"] == "1980-01-02"),
    ((op("add", "Patient.name[0]", name="given", value="Marie"),), lambda r: r["name"][0]["given"] == ["Anne", "Marie"]),
    ((op("add", "Patient", name="telecom", value={"_type": "valueContactPoint", "system": "phone", "value": "1"}),),
     lambda r: r["telecom"] == [{"system": "phone", "value": "1"}]),
    ((op("insert", "Patient.identifier", index=0, value={"_type": "valueIdentifier", "value": "0"}),),
     lambda r: r["identifier"][0] == {"value": "0"}),
    ((op("move", "Patient.name", source=1, destination=0),), lambda r: r["name"][0]["use"] == "maiden"),
    ((op("replace", "Patient.name.first().family", value="X"),), lambda r: r["name"][0]["family"] == "X"),
])
def test_operations(ops: tuple[dict[str, Any], ...], check: Any) -> None:
    out = apply_fhirpatch(PATIENT, patch(*ops))
    assert check(out)
    assert PATIENT["gender"] == "female"  # the input is not modified


@pytest.mark.parametrize(("ops", "status"), [
    ((op("replace", "Patient.name.family", value="X"),), 422),  # two matches
    ((op("replace", "Observation.status", value="final"),), 422),  # wrong root
    ((op("replace", "Patient.name.descendants()", value="x"),), 422),  # unsupported function
    ((op("add", "Patient", name="gender", value="male"),), 422),  # already set
    ((op("insert", "Patient.gender", index=0, value="x"),), 422),  # not repeating
    (({"name": "operation", "part": [{"name": "type", "valueCode": "explode"}]},), 400),
    ((), 400),
])
def test_errors(ops: tuple[dict[str, Any], ...], status: int) -> None:
    with pytest.raises(FhirError) as err:
        apply_fhirpatch(PATIENT, patch(*ops))
    assert err.value.status == status


def test_fhirpath_patch_over_http_and_in_bundles(client: Any) -> None:
    pid = client.post("/fhir/Patient", json=PATIENT, headers=H).json()["id"]
    r = client.patch(f"/fhir/Patient/{pid}", json=patch(op("replace", "Patient.gender", value="other")), headers=H)
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "other" and r.json()["meta"]["versionId"] == "2"
    bad = patch(op("replace", "Patient.gender", value="dragon"))
    r = client.patch(f"/fhir/Patient/{pid}", json=bad, headers=H)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Patient.gender"]
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patch(op("replace", "Patient.active", value=False)),
         "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": base64.b64encode(orjson.dumps([{"op": "add", "path": "/birthDate",
                                                              "value": "1990-01-01"}])).decode()},
         "request": {"method": "PATCH", "url": f"Patient/{pid}"}}]}
    r = client.post("/fhir", json=tx, headers=H)
    assert r.status_code == 400  # the same resource twice in one transaction
    tx["entry"].pop()
    r = client.post("/fhir", json=tx, headers=H)
    assert r.status_code == 200, r.text
    assert client.get(f"/fhir/Patient/{pid}").json()["active"] is False
