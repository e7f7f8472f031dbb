"""Searches with paging and includes, driven by FHIR clients written by others (fhirpy, fhirclient)
against a real uvicorn server process (auth off), one server for the module.

The server uses the session's MongoDB wire server (``mongo_uri``) with a database of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.common import ServerProcess

H = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
LOINC = "http://loinc.org"
WEIGHT = f"{LOINC}|29463-7"
N_OBS = 23  # with _count=5: five pages, the last one partial


@pytest.fixture(scope="module")
def server(mongo_uri: str, mongo_client: Any) -> Iterator[ServerProcess]:
    with ServerProcess(mongo_uri=mongo_uri, database=f"clients_{uuid.uuid4().hex[:10]}") as srv:
        yield srv
    mongo_client.drop_database(srv.database)


def _obs(subject: str, i: int, code: str = "29463-7") -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": subject},
            "effectiveDateTime": f"2024-{1 + i // 28:02d}-{1 + i % 28:02d}T08:00:00+01:00",
            "valueQuantity": {"value": 60 + i, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}


@pytest.fixture(scope="module")
def data(server: ServerProcess) -> dict[str, Any]:
    """Hélène (N_OBS weights, one height), HELENE written in capitals (2 weights), Noël (1 weight)."""
    entries: list[dict[str, Any]] = []

    def add(full: str, res: dict[str, Any]) -> None:
        entries.append({"fullUrl": full, "resource": res, "request": {"method": "POST", "url": res["resourceType"]}})

    add("urn:uuid:p1", {"resourceType": "Patient", "name": [{"family": "Lefèvre", "given": ["Hélène"]}]})
    add("urn:uuid:p2", {"resourceType": "Patient", "name": [{"family": "LEFEVRE", "given": ["HELENE"]}]})
    add("urn:uuid:p3", {"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Noël"]}]})
    for i in range(N_OBS):
        add(f"urn:uuid:o1-{i}", _obs("urn:uuid:p1", i))
    add("urn:uuid:o1-h", _obs("urn:uuid:p1", 40, "8302-2"))
    for i in range(2):
        add(f"urn:uuid:o2-{i}", _obs("urn:uuid:p2", 50 + i))
    add("urn:uuid:o3-0", _obs("urn:uuid:p3", 60))
    r = httpx.post(server.base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                   headers=H, timeout=60)
    assert r.status_code == 200, r.text
    ids = {e["fullUrl"]: loc.split("/")[1] for e, loc in
           zip(entries, (x["response"]["location"] for x in r.json()["entry"]), strict=True)}
    return {"p1": ids["urn:uuid:p1"], "p2": ids["urn:uuid:p2"], "p3": ids["urn:uuid:p3"],
            "o1": [ids[f"urn:uuid:o1-{i}"] for i in range(N_OBS)], "o1h": ids["urn:uuid:o1-h"],
            "o2": [ids[f"urn:uuid:o2-{i}"] for i in range(2)], "o3": ids["urn:uuid:o3-0"]}


def _fhirpy(server: ServerProcess) -> Any:
    from fhirpy import SyncFHIRClient

    return SyncFHIRClient(server.base, extra_headers={"Accept": "application/fhir+json"})


def _fhirclient(server: ServerProcess) -> Any:
    from fhirclient import client as fclient

    return fclient.FHIRClient(settings={"app_id": "clients", "api_base": server.base + "/"}).server


# ------------------------------------------------------------------------------------------ fhirpy
def test_fhirpy_fetch_all_follows_next_links_in_sort_order(server: ServerProcess, data: dict[str, Any]) -> None:
    fc = _fhirpy(server)
    search = fc.resources("Observation").search(subject=f"Patient/{data['p1']}", code=WEIGHT).sort("-date").limit(5)
    first = search.fetch_raw()
    assert len(first["entry"]) == 5 and any(link["relation"] == "next" for link in first["link"])
    found = [r.id for r in search.fetch_all()]
    assert found == list(reversed(data["o1"]))  # newest first, every one exactly once


def test_fhirpy_iterates_lazily_and_ascending(server: ServerProcess, data: dict[str, Any]) -> None:
    fc = _fhirpy(server)
    search = fc.resources("Observation").search(subject=f"Patient/{data['p1']}", code=WEIGHT).sort("date").limit(4)
    seen = []
    for obs in search:
        seen.append(obs.id)
        if len(seen) == 10:  # three pages fetched, not all six
            break
    assert seen == data["o1"][:10]


def test_fhirpy_accents_and_capitals(server: ServerProcess, data: dict[str, Any]) -> None:
    fc = _fhirpy(server)
    for q in ("hélène", "HELENE", "Helene", "hél"):
        found = {p.id for p in fc.resources("Patient").search(name=q).fetch_all()}
        assert found == {data["p1"], data["p2"]}, q
    assert {p.id for p in fc.resources("Patient").search(family="lefevre", given="HÉLÈNE").fetch_all()} == {
        data["p1"], data["p2"]}


def test_fhirpy_include_on_every_page(server: ServerProcess, data: dict[str, Any]) -> None:
    fc = _fhirpy(server)
    search = (fc.resources("Observation").search(code=WEIGHT).include("Observation", "subject").limit(6))
    matches: list[str] = []
    bundle: dict[str, Any] | None = search.fetch_raw()
    pages = 0
    while bundle is not None:
        pages += 1
        page_matches = [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        subjects = {e["resource"]["subject"]["reference"].split("/")[1] for e in bundle["entry"]
                    if e["search"]["mode"] == "match"}
        included = {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include"}
        assert included == subjects, "each page includes the patients of its own matches"
        assert all(e["resource"]["resourceType"] == "Patient" for e in bundle["entry"]
                   if e["search"]["mode"] == "include")
        matches += page_matches
        nxt = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        bundle = httpx.get(nxt, headers=H).json() if nxt else None
    assert pages == 5
    assert sorted(matches) == sorted([*data["o1"], *data["o2"], data["o3"]])
    # fetch_all walks the same pages and keeps the searched type only
    assert sorted(r.id for r in search.fetch_all()) == sorted(matches)


def test_fhirpy_revinclude_chain_and_has(server: ServerProcess, data: dict[str, Any]) -> None:
    fc = _fhirpy(server)
    bundle = fc.resources("Patient").search(_id=data["p1"]).revinclude("Observation", "subject").fetch_raw()
    assert [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"] == [data["p1"]]
    assert sorted(e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include") == sorted(
        [*data["o1"], data["o1h"]])
    chained = fc.resources("Observation").search(**{"subject:Patient.name": "muller"}).fetch_all()
    assert [o.id for o in chained] == [data["o3"]]
    has = fc.resources("Patient").has("Observation", "subject", code=f"{LOINC}|8302-2").fetch_all()
    assert [p.id for p in has] == [data["p1"]]


def test_fhirpy_total(server: ServerProcess, data: dict[str, Any]) -> None:
    fc = _fhirpy(server)
    bundle = fc.resources("Observation").search(code=WEIGHT, _total="accurate").limit(5).fetch_raw()
    assert bundle["total"] == N_OBS + 3 and len(bundle["entry"]) == 5
    # fhirpy's count() sends its own _totalMethod=count, unknown to FHIR R4: refused unless lenient
    with pytest.raises(Exception, match="_totalMethod"):
        fc.resources("Observation").search(code=WEIGHT).count()


def test_fhirpy_count_lenient(server: ServerProcess, data: dict[str, Any]) -> None:
    from fhirpy import SyncFHIRClient

    lenient = SyncFHIRClient(server.base, extra_headers={"Accept": "application/fhir+json",
                                                         "Prefer": "handling=lenient"})
    assert lenient.resources("Observation").search(code=WEIGHT).count() == N_OBS + 3


# -------------------------------------------------------------------------------------- fhirclient
def test_fhirclient_pages_through_results(server: ServerProcess, data: dict[str, Any]) -> None:
    from fhirclient.models.observation import Observation

    smart = _fhirclient(server)
    search = Observation.where(struct={"subject": f"Patient/{data['p1']}", "code": WEIGHT, "_sort": "date",
                                       "_count": "5"})
    pages = list(search.perform_iter(smart))
    assert len(pages) == 5 and [len(p.entry) for p in pages] == [5, 5, 5, 5, 3]
    assert [o.id for o in search.perform_resources_iter(smart)] == data["o1"]


def test_fhirclient_include_and_revinclude(server: ServerProcess, data: dict[str, Any]) -> None:
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient

    smart = _fhirclient(server)
    search = Observation.where(struct={"code": WEIGHT, "_count": "10"}).include("subject")
    kinds: dict[str, set[str]] = {"Observation": set(), "Patient": set()}
    for page in search.perform_iter(smart):
        for e in page.entry:
            kinds[e.resource.resource_type].add(e.resource.id)
            assert e.search.mode == ("match" if e.resource.resource_type == "Observation" else "include")
    assert kinds["Observation"] == {*data["o1"], *data["o2"], data["o3"]}
    assert kinds["Patient"] == {data["p1"], data["p2"], data["p3"]}

    rev = Patient.where(struct={"name": "HÉLÈNE", "_count": "1"}).include("subject", Observation, reverse=True)
    pages = list(rev.perform_iter(smart))
    assert len(pages) == 2  # one patient per page, each with its own observations
    by_page = [{e.resource.resource_type for e in p.entry} for p in pages]
    assert by_page == [{"Patient", "Observation"}, {"Patient", "Observation"}]
    obs = {e.resource.id for p in pages for e in p.entry if e.resource.resource_type == "Observation"}
    assert obs == {*data["o1"], data["o1h"], *data["o2"]}


# ------------------------------------------------------------------------------------ regression
def test_include_with_sort_on_a_date(server: ServerProcess, data: dict[str, Any]) -> None:
    r = httpx.get(f"{server.base}/Observation", params={"subject": f"Patient/{data['p1']}", "code": WEIGHT,
                                                        "_sort": "-date", "_include": "Observation:subject"},
                  headers=H)
    assert r.status_code == 200, r.text
