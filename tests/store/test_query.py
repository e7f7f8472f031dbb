"""Query planning against a real MongoDB wire server: resources are indexed with the Extractor,
stored in the storage shape, and each search must match exactly the expected ids."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from fhir_server.fhir.errors import BadRequest, NotImplementedFeature
from fhir_server.search.extract import Extractor
from fhir_server.search.parser import ChainClause, HasClause, parse_search
from fhir_server.search.registry import default_registry
from fhir_server.store.query import QueryPlanner, build_sort, compartment_filter

BASE = "http://testserver/fhir"
NOW = datetime(2024, 6, 1, tzinfo=UTC)
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _patient(id_: str, family: str, given: list[str], gender: str, birth: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id_, "name": [{"family": family, "given": given}],
            "gender": gender, "birthDate": birth, **extra}


PATIENTS = [
    _patient("p1", "Dupré", ["Hélène"], "female", "1980-02-29",
             identifier=[{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1800229123456",
                          "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                               "code": "NH"}], "text": "Numéro INS"}}],
             telecom=[{"system": "email", "value": "helene@example.org"}],
             address=[{"line": ["1 rue de la Paix"], "city": "Paris", "postalCode": "75001"}],
             managingOrganization={"reference": "Organization/o1"},
             meta={"tag": [{"system": "urn:test", "code": "vip"}],
                   "profile": ["http://hl7.org/fhir/StructureDefinition/Patient"]}),
    _patient("p2", "HELENE", ["Marc"], "male", "1975",
             identifier=[{"system": "urn:other", "value": "42"}], active=True,
             generalPractitioner=[{"reference": f"{BASE}/Practitioner/dr1"}]),
    _patient("p3", "Martin", ["Jean", "Pierre"], "male", "2001-07-14T10:00:00+02:00",
             deceasedDateTime="2022-01-01", managingOrganization={"reference": "Organization/o2"}),
    {"resourceType": "Patient", "id": "p4", "active": False,
     "generalPractitioner": [{"identifier": {"system": "urn:rpps", "value": "10001"}}]},
]


def _obs(id_: str, code: str, when: Any, value: dict[str, Any] | None, subject: str = "Patient/p1",
         **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Observation", "id": id_, "status": "final",
                           "code": {"coding": [{"system": LOINC, "code": code}]},
                           "subject": {"reference": subject}}
    if isinstance(when, dict):
        res["effectivePeriod"] = when
    elif when is not None:
        res["effectiveDateTime"] = when
    if value is not None:
        res["valueQuantity"] = value
    res.update(extra)
    return res


def _q(value: float, code: str, unit: str | None = None, system: str = UCUM) -> dict[str, Any]:
    return {"value": value, "system": system, "code": code, "unit": unit or code}


OBSERVATIONS = [
    _obs("o1", "29463-7", "2023-05-01T10:00:00+02:00", _q(72, "kg")),
    _obs("o2", "29463-7", "2023-06", _q(72500, "g")),
    _obs("o3", "8302-2", "2023", _q(175, "cm"), subject="Patient/p2", status="preliminary"),
    _obs("o4", "2339-0", {"start": "2022-12-15", "end": "2023-01-15"}, _q(100, "mg/dL"),
         category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "laboratory", "display": "Laboratory"}], "text": "Lab results"}]),
    _obs("o5", "85354-9", "2024-01-01T00:30:00+01:00", None, subject="Patient/p2", status="amended",
         component=[{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": _q(140, "mm[Hg]")},
                    {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": _q(90, "mm[Hg]")}]),
    _obs("o6", "85354-9", "2024-02-10", None, subject="Patient/p3",
         component=[{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": _q(90, "mm[Hg]")},
                    {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": _q(140, "mm[Hg]")}]),
    _obs("o7", "29463-7", None, _q(99.6, "[lb_av]", "lb"), subject="Group/g1"),
    _obs("o8", "2339-0", "2023-03-03", {"value": 5.5, "unit": "mmol/L"}, subject="Patient/p3", status="cancelled"),
]

DOCS = [
    {"resourceType": "DocumentReference", "id": "d1", "status": "current",
     "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4"},
     "type": {"coding": [{"system": LOINC, "code": "11488-4", "display": "Consult note"}]},
     "subject": {"reference": "Patient/p1"}, "date": "2023-05-01T10:00:00Z",
     "content": [{"attachment": {"contentType": "application/pdf", "url": "http://example.org/docs/a/b.pdf"}}],
     "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/d0"}}]},
    {"resourceType": "DocumentReference", "id": "d2", "status": "superseded",
     "subject": {"reference": "Patient/p2"},
     "content": [{"attachment": {"contentType": "text/plain", "url": "http://example.org/docs/c.txt"}}]},
]


@pytest.fixture(scope="module")
def db(mongo_client: MongoClient[dict[str, Any]]) -> Iterator[Any]:
    name = f"tq_{uuid.uuid4().hex[:10]}"
    database = mongo_client[name]
    extractor = Extractor(base_url=BASE)
    for res in [*PATIENTS, *OBSERVATIONS, *DOCS]:
        database[res["resourceType"]].insert_one({
            "_id": res["id"], "res": res, "v": 1, "ts": datetime(2024, 1, 1, tzinfo=UTC), "del": False,
            "sp": extractor.owner(res), "ix": extractor.index(res)})
    database["Patient"].insert_one({"_id": "gone", "res": None, "v": 2, "ts": datetime(2024, 1, 1, tzinfo=UTC),
                                    "del": True, "sp": "gone", "ix": {"family": ["dupre"]}})
    database["Patient"].update_one({"_id": "p2"}, {"$set": {"ts": datetime(2024, 3, 1, 12, tzinfo=UTC)}})
    yield database
    mongo_client.drop_database(name)


PLANNER = QueryPlanner(now=lambda: NOW)


def _ids(coll: Collection[dict[str, Any]], type_: str, query: list[tuple[str, str]], **kw: Any) -> list[str]:
    req = parse_search(type_, query, base_url=BASE)
    flt = PLANNER.filter(req, **kw)
    return sorted(d["_id"] for d in coll.find(flt, {"_id": 1}))


CASES: list[tuple[str, str, list[tuple[str, str]], list[str]]] = [
    # ---- string: starts-with, accents and case folded, :exact, :contains, several parts
    ("string default", "Patient", [("family", "dupre")], ["p1"]),
    ("string accents", "Patient", [("family", "DUPRÉ")], ["p1"]),
    ("string prefix", "Patient", [("family", "dup")], ["p1"]),
    ("string name any part", "Patient", [("name", "helene")], ["p1", "p2"]),
    ("string name whole", "Patient", [("name", "jean pierre mar")], ["p3"]),
    ("string OR", "Patient", [("family", "martin,dupre")], ["p1", "p3"]),
    ("string AND", "Patient", [("name", "helene"), ("name", "marc")], ["p2"]),
    ("string exact", "Patient", [("family:exact", "Dupré")], ["p1"]),
    ("string exact case", "Patient", [("family:exact", "dupré")], []),
    ("string contains", "Patient", [("family:contains", "PR")], ["p1"]),
    ("string contains regex chars", "Patient", [("family:contains", "d.p")], []),
    ("string address", "Patient", [("address", "paris")], ["p1"]),
    ("string missing true", "Patient", [("family:missing", "true")], ["p4"]),
    ("string missing false", "Patient", [("family:missing", "false")], ["p1", "p2", "p3"]),
    # ---- token: system|code, |code, code, system|, :not, :text, :of-type, :in, :not-in, booleans
    ("token code", "Observation", [("code", "29463-7")], ["o1", "o2", "o7"]),
    ("token system|code", "Observation", [("code", f"{LOINC}|8302-2")], ["o3"]),
    ("token other system", "Observation", [("code", "urn:x|8302-2")], []),
    ("token system|", "Observation", [("code", f"{LOINC}|")], ["o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8"]),
    ("token |code (no system)", "Observation", [("status", "|final")], ["o1", "o2", "o4", "o6", "o7"]),
    ("token |code with system", "Observation", [("code", "|29463-7")], []),
    ("token OR", "Observation", [("status", "amended,preliminary")], ["o3", "o5"]),
    ("token not", "Observation", [("status:not", "final")], ["o3", "o5", "o8"]),
    ("token not OR", "Observation", [("status:not", "final,amended")], ["o3", "o8"]),
    ("token not includes missing", "Patient", [("gender:not", "male")], ["p1", "p4"]),
    ("token text display", "Observation", [("category:text", "labor")], ["o4"]),
    ("token text word", "Observation", [("category:text", "RESULTS")], ["o4"]),
    ("token text no mid-word", "Observation", [("category:text", "esults")], []),
    ("token identifier", "Patient", [("identifier", "urn:oid:1.2.250.1.213.1.4.8|1800229123456")], ["p1"]),
    ("token identifier value", "Patient", [("identifier", "42")], ["p2"]),
    ("token of-type", "Patient",
     [("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|NH|1800229123456")], ["p1"]),
    ("token of-type wrong", "Patient",
     [("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|1800229123456")], []),
    ("token in", "Observation", [("status:in", "http://hl7.org/fhir/ValueSet/observation-status")],
     ["o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8"]),
    ("token in gender", "Patient", [("gender:in", "http://hl7.org/fhir/ValueSet/administrative-gender")], ["p1", "p2", "p3"]),
    ("token not-in", "Patient", [("gender:not-in", "http://hl7.org/fhir/ValueSet/administrative-gender")], ["p4"]),
    ("token boolean", "Patient", [("active", "true")], ["p2"]),
    ("token boolean false", "Patient", [("active", "false")], ["p4"]),
    ("token email", "Patient", [("email", "helene@example.org")], ["p1"]),
    ("token _tag", "Patient", [("_tag", "urn:test|vip")], ["p1"]),
    ("token _id", "Patient", [("_id", "p1,p3")], ["p1", "p3"]),
    ("token _id not", "Patient", [("_id:not", "p1")], ["p2", "p3", "p4"]),
    ("token deceased (fhirpath)", "Patient", [("deceased", "true")], ["p3"]),
    # ---- reference
    ("reference Type/id", "Observation", [("subject", "Patient/p2")], ["o3", "o5"]),
    ("reference id only", "Observation", [("subject", "p2")], ["o3", "o5"]),
    ("reference absolute own base", "Observation", [("subject", f"{BASE}/Patient/p2")], ["o3", "o5"]),
    ("reference :type", "Observation", [("subject:Group", "g1")], ["o7"]),
    ("reference patient (resolve() is Patient)", "Observation", [("patient", "p3")], ["o6", "o8"]),
    ("reference patient excludes groups", "Observation", [("patient", "Group/g1")], []),
    ("reference absolute stored", "Patient", [("general-practitioner", "Practitioner/dr1")], ["p2"]),
    ("reference identifier", "Patient", [("general-practitioner:identifier", "urn:rpps|10001")], ["p4"]),
    ("reference missing", "Patient", [("organization:missing", "true")], ["p2", "p4"]),
    ("reference OR", "Patient", [("organization", "Organization/o1,o2")], ["p1", "p3"]),
    ("reference relatesTo", "DocumentReference", [("relatesto", "DocumentReference/d0")], ["d1"]),
    # ---- date: precision, time zones, Period overlap, all prefixes
    ("date eq day", "Observation", [("date", "2023-05-01")], ["o1"]),
    ("date eq tz shift", "Observation", [("date", "2023-12-31")], ["o5"]),  # 00:30+01:00 is 23:30Z
    ("date eq year", "Observation", [("date", "2023")], ["o1", "o2", "o3", "o5", "o8"]),
    ("date eq month", "Observation", [("date", "2023-06")], ["o2"]),
    ("date eq minute", "Observation", [("date", "2023-05-01T08:00Z")], ["o1"]),
    ("date eq minute other tz", "Observation", [("date", "2023-05-01T10:00+02:00")], ["o1"]),
    ("date ne", "Observation", [("date", "ne2023")], ["o4", "o6"]),
    ("date gt", "Observation", [("date", "gt2023-06-30")], ["o3", "o5", "o6"]),
    ("date lt", "Observation", [("date", "lt2023-01-01")], ["o4"]),
    ("date ge", "Observation", [("date", "ge2024")], ["o6"]),
    ("date ge boundary", "Observation", [("date", "ge2023-12-31")], ["o5", "o6"]),  # o3 (2023) ends at the boundary
    ("date le", "Observation", [("date", "le2022-12-31")], ["o4"]),
    ("date sa", "Observation", [("date", "sa2023-06-30")], ["o5", "o6"]),
    ("date eb", "Observation", [("date", "eb2023-02-01")], ["o4"]),
    ("date period overlap", "Observation", [("date", "2023-01-10")], []),
    ("date period ge", "Observation", [("date", "ge2023-01-10"), ("date", "le2023-01-10")], ["o3", "o4"]),
    ("date range AND", "Observation", [("date", "ge2023-05-01"), ("date", "lt2023-07")], ["o1", "o2", "o3"]),
    ("date ap", "Observation", [("date", "ap2024-02-01")], ["o6"]),
    ("date birthdate year", "Patient", [("birthdate", "1975")], ["p2"]),
    ("date birthdate in year", "Patient", [("birthdate", "1975-06-01")], []),
    ("date birthdate datetime", "Patient", [("birthdate", "2001-07-14")], ["p3"]),
    ("date missing", "Observation", [("date:missing", "true")], ["o7"]),
    ("_lastUpdated gt", "Patient", [("_lastUpdated", "gt2024-02")], ["p2"]),
    ("_lastUpdated eq day", "Patient", [("_lastUpdated", "2024-01-01")], ["p1", "p3", "p4"]),
    ("_lastUpdated le", "Patient", [("_lastUpdated", "le2024-01-01T00:00:00Z")], ["p1", "p3", "p4"]),
    # ---- quantity: precision of eq, canonical units, unit matching
    ("quantity eq canonical", "Observation", [("value-quantity", f"72|{UCUM}|kg")], ["o1"]),
    ("quantity eq converts g", "Observation", [("value-quantity", f"72.5|{UCUM}|kg")], ["o2"]),
    ("quantity from grams", "Observation", [("value-quantity", f"72000|{UCUM}|g")], ["o1"]),
    ("quantity precision", "Observation", [("value-quantity", "72.5||kg")], ["o2"]),
    ("quantity precision 72", "Observation", [("value-quantity", "72||kg")], ["o1"]),
    ("quantity precision exponent", "Observation", [("value-quantity", "7e1||kg")], ["o1", "o2"]),
    ("quantity gt", "Observation", [("value-quantity", f"gt70|{UCUM}|kg")], ["o1", "o2"]),
    ("quantity lb", "Observation", [("value-quantity", f"ge45|{UCUM}|kg"), ("value-quantity", "lt46||kg")], ["o7"]),
    ("quantity mm to cm", "Observation", [("value-quantity", f"1750|{UCUM}|mm")], ["o3"]),
    ("quantity mg/dL to g/L", "Observation", [("value-quantity", f"1|{UCUM}|g/L")], ["o4"]),
    ("quantity unit text", "Observation", [("value-quantity", "5.5||mmol/L")], ["o8"]),
    ("quantity no unit", "Observation", [("value-quantity", "72")], ["o1"]),
    ("quantity no unit le", "Observation", [("value-quantity", "le100")], ["o1", "o4", "o7", "o8"]),
    ("quantity ne", "Observation", [("value-quantity", "ne72")], ["o2", "o3", "o4", "o7", "o8"]),
    ("quantity ap", "Observation", [("value-quantity", f"ap160|{UCUM}|cm")], ["o3"]),
    ("quantity other system", "Observation", [("value-quantity", "72|urn:x|kg")], []),
    # ---- composite: within the same component
    ("composite match", "Observation", [("component-code-value-quantity", f"{LOINC}|8480-6$gt120")], ["o5"]),
    ("composite other", "Observation", [("component-code-value-quantity", f"{LOINC}|8462-4$gt120")], ["o6"]),
    ("composite units", "Observation", [("component-code-value-quantity", "8480-6$lt100||mm[Hg]")], ["o6"]),
    ("composite OR", "Observation", [("component-code-value-quantity", "8480-6$gt130,8462-4$gt130")], ["o5", "o6"]),
    ("composite code-value", "Observation", [("code-value-quantity", f"{LOINC}|29463-7$ge72|{UCUM}|kg")],
     ["o1", "o2"]),
    # ---- uri
    ("uri exact", "DocumentReference", [("location", "http://example.org/docs/c.txt")], ["d2"]),
    ("uri below", "DocumentReference", [("location:below", "http://example.org/docs")], ["d1", "d2"]),
    ("uri below segment", "DocumentReference", [("location:below", "http://example.org/docs/a")], ["d1"]),
    ("uri below not partial", "DocumentReference", [("location:below", "http://example.org/do")], []),
    ("uri above", "DocumentReference", [("location:above", "http://example.org/docs/c.txt/x")], ["d2"]),
    ("uri _profile", "Patient", [("_profile", "http://hl7.org/fhir/StructureDefinition/Patient")], ["p1"]),
    # ---- combined and deleted
    ("and across params", "Observation", [("code", "29463-7"), ("subject", "Patient/p1"), ("date", "2023")],
     ["o1", "o2"]),
    ("deleted excluded", "Patient", [("_id", "gone")], []),
    ("empty value ignored", "Patient", [("family", "")], ["p1", "p2", "p3", "p4"]),
]


@pytest.mark.parametrize(("label", "type_", "query", "expected"), CASES, ids=[c[0] for c in CASES])
def test_search(db: Any, label: str, type_: str, query: list[tuple[str, str]], expected: list[str]) -> None:
    assert _ids(db[type_], type_, query) == expected


def test_in_matches_with_system(db: Any, tmp_path: Any) -> None:
    # observation status codes are stored without system: add one with a coded category to test :in
    from fhir_server.search.valuesets import ValueSets

    vs = ValueSets({"urn:vs": frozenset({"http://terminology.hl7.org/CodeSystem/observation-category|laboratory"})})
    req = parse_search("Observation", [("category:in", "urn:vs")])
    flt = QueryPlanner(value_sets=vs).filter(req)
    assert sorted(d["_id"] for d in db["Observation"].find(flt)) == ["o4"]
    flt = QueryPlanner(value_sets=vs).filter(parse_search("Observation", [("category:not-in", "urn:vs")]))
    assert "o4" not in [d["_id"] for d in db["Observation"].find(flt)]


def test_unknown_value_set(db: Any) -> None:
    with pytest.raises(BadRequest):
        PLANNER.filter(parse_search("Observation", [("code:in", "http://example.org/vs/none")]))


@pytest.mark.parametrize(("sort", "expected"), [
    ("date", ["o7", "o4", "o3", "o8", "o1", "o2", "o5", "o6"]),
    ("-date", ["o6", "o3", "o5", "o2", "o1", "o8", "o4", "o7"]),
    ("status,-date", ["o5", "o8", "o6", "o2", "o1", "o4", "o7", "o3"]),
    ("value-quantity", ["o5", "o6", "o4", "o8", "o7", "o1", "o2", "o3"]),
])
def test_sort(db: Any, sort: str, expected: list[str]) -> None:
    req = parse_search("Observation", [("_sort", sort)])
    got = [d["_id"] for d in db["Observation"].find(PLANNER.filter(req)).sort(build_sort(req))]
    assert got == expected


def test_sort_names_with_accents(db: Any) -> None:
    req = parse_search("Patient", [("_sort", "family,_id")])
    got = [d["_id"] for d in db["Patient"].find(PLANNER.filter(req)).sort(build_sort(req))]
    assert got == ["p4", "p1", "p2", "p3"]  # missing first; dupre < helene < martin


def test_keyset_on_sort_key(db: Any) -> None:
    """Sort keys are scalars: a keyset cursor can continue after the last value."""
    req = parse_search("Observation", [("_sort", "date")])
    first = list(db["Observation"].find(PLANNER.filter(req)).sort(build_sort(req)).limit(3))
    last = first[-1]["ix"]["_sort_date"][0]
    after = {"$and": [PLANNER.filter(req), {"ix._sort_date.0": {"$gt": last}}]}
    got = [d["_id"] for d in db["Observation"].find(after).sort(build_sort(req))]
    assert got == ["o8", "o1", "o2", "o5", "o6"]


def test_chain_and_has_resolved_by_the_executor(db: Any) -> None:
    req = parse_search("Observation", [("subject:Patient.family", "martin"), ("code", "2339-0")])

    def resolve(clause: ChainClause | HasClause) -> list[str]:
        assert isinstance(clause, ChainClause)
        inner = clause.inner[0]
        return [f"{inner.resource_type}/{d['_id']}" for d in db[inner.resource_type].find(PLANNER.filter(inner))]

    assert sorted(d["_id"] for d in db["Observation"].find(PLANNER.filter(req, resolve=resolve))) == ["o8"]

    has = parse_search("Patient", [("_has:Observation:patient:code", "85354-9")])

    def resolve_has(clause: ChainClause | HasClause) -> list[str]:
        assert isinstance(clause, HasClause)
        ids = set()
        for d in db[clause.resource_type].find(PLANNER.filter(clause.inner), {"ix": 1}):
            ids |= {r.split("/", 1)[1] for r in d["ix"].get(clause.param.code, []) if r.startswith("Patient/")}
        return sorted(ids)

    assert sorted(d["_id"] for d in db["Patient"].find(PLANNER.filter(has, resolve=resolve_has))) == ["p2", "p3"]
    with pytest.raises(NotImplementedFeature):
        PLANNER.filter(has)


def test_compartment_and_owner(db: Any) -> None:
    flt = {"$and": [{"del": False}, compartment_filter(default_registry(), "Observation", "p1")]}
    assert sorted(d["_id"] for d in db["Observation"].find(flt)) == ["o1", "o2", "o4"]
    assert sorted(d["_id"] for d in db["Observation"].find({"sp": "p1"})) == ["o1", "o2", "o4"]
    assert db["Observation"].find_one({"_id": "o7"})["sp"] is None
    assert db["Patient"].find_one({"_id": "p3"})["sp"] == "p3"
