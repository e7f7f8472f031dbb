"""Index extraction: value shapes per type, fast getters vs fhirpathpy, owner, speed, reindex."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_server.search.extract import Extractor, compile_expression
from fhir_server.search.registry import default_registry
from fhir_server.search.reindex import Change, reindex

BASE = "http://srv/fhir"
X = Extractor(base_url=BASE)

OBS: dict[str, Any] = {
    "resourceType": "Observation", "id": "o1", "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                              "code": "vital-signs", "display": "Vital Signs"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure"}],
             "text": "Tension artérielle"},
    "subject": {"reference": "Patient/p1"}, "encounter": {"reference": f"{BASE}/Encounter/e1"},
    "performer": [{"reference": "Practitioner/dr1/_history/3"}, {"reference": "#contained"}],
    "effectiveDateTime": "2023-05-01T10:00:00+02:00",
    "component": [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
         "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
         "valueQuantity": {"value": 16, "unit": "kPa", "system": "http://unitsofmeasure.org", "code": "kPa"}}],
}

PATIENT: dict[str, Any] = {
    "resourceType": "Patient", "id": "p1", "active": True, "gender": "female", "birthDate": "1980-02-29",
    "name": [{"family": "Dupré", "given": ["Hélène", "Marie"]}],
    "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "123",
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NH"}]}}],
    "telecom": [{"system": "phone", "value": "0102030405"}],
    "address": [{"line": ["1 rue de la Paix"], "city": "Paris", "postalCode": "75001"}],
    "generalPractitioner": [{"identifier": {"system": "urn:rpps", "value": "10001"}}],
}

DOCREF: dict[str, Any] = {
    "resourceType": "DocumentReference", "id": "d1", "status": "current",
    "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
    "subject": {"reference": "Patient/p1"}, "date": "2023-05-01T10:00:00Z",
    "author": [{"reference": "Practitioner/dr1"}],
    "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/b1"}}],
    "context": {"period": {"start": "2023-04-01"}, "related": [{"reference": "Encounter/e1"}]},
    "securityLabel": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                   "code": "N"}]}],
}


def _utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def test_observation_index() -> None:
    ix = X.index(OBS)
    assert ix["code"] == ["http://loinc.org|85354-9", "85354-9", "http://loinc.org|"]
    assert ix["code:text"] == ["blood pressure", "tension arterielle"]
    assert ix["status"] == ["final", "|final"]
    assert ix["subject"] == ix["patient"] == ["Patient/p1"]
    assert ix["encounter"] == ["Encounter/e1"]  # own base made relative
    assert ix["performer"] == ["Practitioner/dr1"]  # version dropped, contained skipped
    assert ix["date"] == [{"lo": _utc(2023, 5, 1, 8), "hi": _utc(2023, 5, 1, 8, 0, 0, 999000)}]
    assert ix["_sort_date"] == [_utc(2023, 5, 1, 8), _utc(2023, 5, 1, 8, 0, 0, 999000)]
    kpa = ix["component-value-quantity"][1]
    assert kpa["lo"] == 16 and kpa["c"] == "kPa" and kpa["cu"] == "mm[Hg]" and kpa["clo"] == pytest.approx(120.01, 0.01)
    comp = ix["component-code-value-quantity"]
    assert [c["c0"][0] for c in comp] == ["http://loinc.org|8480-6", "http://loinc.org|8462-4"]
    assert comp[0]["c1"][0]["lo"] == 120
    assert "value-quantity" not in ix and "value-quantity:missing" not in ix


def test_patient_index() -> None:
    ix = X.index(PATIENT)
    assert ix["family"] == ["dupre"] and ix["family:exact"] == ["Dupré"]
    assert ix["name"] == ["dupre", "helene", "marie", "helene marie dupre"]
    assert ix["identifier:of-type"] == ["http://terminology.hl7.org/CodeSystem/v2-0203|NH|123"]
    assert ix["phone"] == ["phone|0102030405", "0102030405", "phone|"]
    assert ix["active"] == ["true", "|true"]
    assert ix["deceased"] == ["false", "|false"]  # fhirpathpy fallback
    assert ix["general-practitioner:identifier"] == ["urn:rpps|10001", "10001", "urn:rpps|"]
    assert "general-practitioner" not in ix
    assert ix["birthdate"] == [{"lo": _utc(1980, 2, 29), "hi": _utc(1980, 2, 29, 23, 59, 59, 999000)}]
    for key in ix:
        assert "." not in key and not key.startswith("$")


def test_period_and_timing() -> None:
    ix = X.index(DOCREF)
    assert ix["period"] == [{"lo": _utc(2023, 4, 1), "hi": _utc(9999, 12, 31, 23, 59, 59, 999000)}]
    plan = {"resourceType": "CarePlan", "id": "c", "subject": {"reference": "Patient/p"},
            "activity": [{"detail": {"status": "scheduled", "scheduledTiming": {
                "event": ["2023-01-01", "2023-01-02T08:00:00Z"], "repeat": {"boundsPeriod": {"end": "2023-02-01"}}}}}]}
    dates = X.index(plan)["activity-date"]
    assert {"lo": _utc(2023, 1, 1), "hi": _utc(2023, 1, 1, 23, 59, 59, 999000)} in dates
    assert {"lo": _utc(1, 1, 1), "hi": _utc(2023, 2, 1, 23, 59, 59, 999000)} in dates


def test_range_quantity_and_canonical() -> None:
    cond = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
            "onsetRange": {"low": {"value": 2, "system": "http://unitsofmeasure.org", "code": "a"},
                           "high": {"value": 4, "system": "http://unitsofmeasure.org", "code": "a"}}}
    q = X.index(cond)["onset-age"][0]
    assert (q["lo"], q["hi"], q["cu"]) == (2, 4, "s")


@pytest.mark.parametrize(("expr", "resource", "expected"), [
    ("Observation.value.as(Quantity)", {"valueQuantity": {"value": 1}}, [{"value": 1}]),
    ("(Observation.value as Quantity)", {"valueQuantity": {"value": 1}}, [{"value": 1}]),
    ("(Observation.value as CodeableConcept).text", {"valueCodeableConcept": {"text": "t"}}, ["t"]),
    ("Observation.effective", {"effectivePeriod": {"start": "2020"}}, [{"start": "2020"}]),
    ("Observation.subject.where(resolve() is Patient)",
     {"subject": {"reference": "Group/1"}}, []),
    ("Observation.subject.where(resolve() is Patient)",
     {"subject": {"reference": "http://x/fhir/Patient/1"}}, [{"reference": "http://x/fhir/Patient/1"}]),
    ("Patient.telecom.where(system='email')", {"telecom": [{"system": "phone", "value": "1"},
                                                           {"system": "email", "value": "e"}]},
     [{"system": "email", "value": "e"}]),
    ("Bundle.entry[0].resource", {"entry": [{"resource": {"id": "a"}}, {"resource": {"id": "b"}}]}, [{"id": "a"}]),
    ("Patient.name.given | Patient.name.family", {"name": [{"given": ["a", "b"], "family": "c"}]}, ["a", "b", "c"]),
])
def test_fast_getters_agree_with_fhirpath(expr: str, resource: dict[str, Any], expected: list[Any]) -> None:
    getter = compile_expression(expr, default_registry().choice_elements)
    assert getter({"resourceType": expr.strip("(").split(".")[0], **resource}) == expected


@pytest.mark.parametrize(("resource", "owner"), [
    (PATIENT, "p1"), (OBS, "p1"), (DOCREF, "p1"),
    ({"resourceType": "Observation", "subject": {"reference": "Group/g"},
      "performer": [{"reference": "Patient/p9"}]}, "p9"),
    ({"resourceType": "Observation", "subject": {"reference": "Group/g"}}, None),
    ({"resourceType": "AllergyIntolerance", "patient": {"reference": f"{BASE}/Patient/p7"}}, "p7"),
    ({"resourceType": "Practitioner", "id": "dr1"}, None),
    ({"resourceType": "Organization", "id": "o"}, None),
    ({"resourceType": "Encounter", "subject": {"reference": "Patient/p5"}}, "p5"),
])
def test_owner(resource: dict[str, Any], owner: str | None) -> None:
    assert X.owner(resource) == owner
    if resource["resourceType"] != "Patient":
        assert X.owner_from_index(resource["resourceType"], X.index(resource)) == owner


@pytest.mark.parametrize("resource", [PATIENT, OBS, DOCREF], ids=lambda r: r["resourceType"])
def test_indexing_is_well_under_a_millisecond(resource: dict[str, Any]) -> None:
    X.index(resource)  # compile
    n = 300
    start = time.perf_counter()
    for _ in range(n):
        X.index(resource)
        X.owner(resource)
    per = (time.perf_counter() - start) / n
    assert per < 1e-3, f"{resource['resourceType']}: {per * 1e6:.0f} µs"


def test_every_type_compiles() -> None:
    X.warm_up()


def test_reindex_loop() -> None:
    docs = [{"_id": "o1", "res": OBS, "ix": {}, "sp": None, "del": False},
            {"_id": "p1", "res": PATIENT, "ix": X.index(PATIENT), "sp": "p1", "del": False},
            {"_id": "x", "res": None, "ix": {}, "sp": None, "del": True}]
    written: list[Change] = []
    stats = reindex(docs, X, written.extend, batch_size=1)
    assert (stats.seen, stats.changed, stats.skipped) == (3, 1, 1)
    assert written[0].id == "o1" and written[0].sp == "p1" and written[0].ix == X.index(OBS)


def test_reindex_collection(mongo_client: Any) -> None:
    from fhir_server.store.reindex import reindex_collection

    db = mongo_client[f"rx_{uuid.uuid4().hex[:8]}"]
    try:
        db["Observation"].insert_one({"_id": "o1", "res": OBS, "v": 1, "ts": _utc(2024, 1, 1), "del": False,
                                      "sp": None, "ix": {}})
        stats = reindex_collection(db, "Observation", X)
        assert stats.changed == 1
        doc = db["Observation"].find_one({"_id": "o1"})
        assert doc["sp"] == "p1" and doc["ix"]["code"][0] == "http://loinc.org|85354-9"
        assert reindex_collection(db, "Observation", X).changed == 0
    finally:
        mongo_client.drop_database(db.name)
