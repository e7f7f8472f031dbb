"""Search over HTTP: paging, includes, chains, _has, totals, summaries, levels (https://hl7.org/fhir/R4/search.html)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

H = {"Content-Type": "application/fhir+json"}


def post(client: Any, res: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{res['resourceType']}", json=res, headers=H)
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def data(client: Any) -> dict[str, Any]:
    org = post(client, {"resourceType": "Organization", "name": "CHU de Besançon"})
    prac = post(client, {"resourceType": "Practitioner", "name": [{"family": "Lefèvre", "given": ["Jérôme"]}]})
    p1 = post(client, {"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Hélène"]}],
                       "gender": "female", "birthDate": "1980-05-01", "managingOrganization": {"reference": f"Organization/{org}"},
                       "generalPractitioner": [{"reference": f"Practitioner/{prac}"}]})
    p2 = post(client, {"resourceType": "Patient", "name": [{"family": "Martin", "given": ["Noël"]}],
                       "gender": "male", "birthDate": "1975"})
    obs = []
    for i in range(25):
        obs.append(post(client, {
            "resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7" if i % 2 else "8302-2"}]},
            "subject": {"reference": f"Patient/{p1 if i < 20 else p2}"},
            "performer": [{"reference": f"Practitioner/{prac}"}],
            "effectiveDateTime": f"2024-03-{1 + i:02d}T08:00:00+01:00",
            "valueQuantity": {"value": 60 + i, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}))
    enc = post(client, {"resourceType": "Encounter", "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                        "subject": {"reference": f"Patient/{p1}"}})
    prov = post(client, {"resourceType": "Provenance", "target": [{"reference": f"Observation/{obs[0]}"}],
                         "recorded": "2024-03-01T09:00:00Z",
                         "agent": [{"who": {"reference": f"Practitioner/{prac}"}}]})
    return {"org": org, "prac": prac, "p1": p1, "p2": p2, "obs": obs, "enc": enc, "prov": prov}


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def follow(client: Any, bundle: dict[str, Any], rel: str) -> dict[str, Any] | None:
    url = next((link["url"] for link in bundle["link"] if link["relation"] == rel), None)
    if url is None:
        return None
    parts = urlsplit(url)
    r = client.get(parts.path, params=parse_qsl(parts.query))
    assert r.status_code == 200, r.text
    return r.json()


def test_accents_and_case_fold(client: Any, data: dict[str, Any]) -> None:
    for q in ("Hélène", "HELENE", "helene", "hél"):
        assert ids(client.get("/fhir/Patient", params={"given": q}).json()) == [data["p1"]], q
    assert ids(client.get("/fhir/Patient", params={"name:exact": "Müller"}).json()) == [data["p1"]]
    assert ids(client.get("/fhir/Patient", params={"name:exact": "muller"}).json()) == []
    assert ids(client.get("/fhir/Patient", params={"family:contains": "ull"}).json()) == [data["p1"]]


def test_keyset_paging_walks_everything_once(client: Any, data: dict[str, Any]) -> None:
    page = client.get("/fhir/Observation", params={"subject": f"Patient/{data['p1']}", "_count": 6,
                                                    "_sort": "-date"}).json()
    seen = ids(page)
    pages = [page]
    while (page := follow(client, page, "next")) is not None:
        seen += ids(page)
        pages.append(page)
    assert len(seen) == 20 and len(set(seen)) == 20
    assert seen == list(reversed(data["obs"][:20]))  # -date: newest first
    back = follow(client, pages[-1], "previous")
    assert back is not None and ids(back) == ids(pages[-2])


def test_paging_stays_consistent_while_data_changes(client: Any, data: dict[str, Any]) -> None:
    page1 = client.get("/fhir/Observation", params={"subject": f"Patient/{data['p1']}", "_count": 5,
                                                     "_sort": "date"}).json()
    # a new, earlier observation appears after page 1 was served: it must not shift page 2
    late = post(client, {"resourceType": "Observation", "status": "final", "code": {"text": "late"},
                         "subject": {"reference": f"Patient/{data['p1']}"}, "effectiveDateTime": "2020-01-01"})
    page2 = follow(client, page1, "next")
    client.delete(f"/fhir/Observation/{late}")
    assert page2 is not None
    assert ids(page2) == data["obs"][5:10]


def test_forged_or_foreign_cursor(client: Any, data: dict[str, Any]) -> None:
    page = client.get("/fhir/Observation", params={"_count": 2}).json()
    url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    cursor = dict(parse_qsl(urlsplit(url).query))["_cursor"]
    bad = cursor[:-3] + ("AAA" if not cursor.endswith("AAA") else "BBB")
    r = client.get("/fhir/Observation", params={"_count": 2, "_cursor": bad})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["_cursor"]
    r = client.get("/fhir/Observation", params={"_count": 3, "code": "8302-2", "_cursor": cursor})
    assert r.status_code == 400


def test_unknown_parameter_is_400_unless_lenient(client: Any) -> None:
    r = client.get("/fhir/Patient", params={"nmae": "x"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["nmae"]
    r = client.get("/fhir/Patient", params={"name:fuzzy": "x"})
    assert r.status_code == 400
    r = client.get("/fhir/Patient", params={"birthdate": "not-a-date"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["birthdate"]
    r = client.get("/fhir/Patient", params={"nmae": "x", "gender": "male"}, headers={"Prefer": "handling=lenient"})
    assert r.status_code == 200
    bundle = r.json()
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "nmae" not in self_link and "gender=male" in self_link
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["resource"]["issue"][0]["expression"] == ["nmae"]
    assert all(e["resource"]["gender"] == "male" for e in bundle["entry"] if e["search"]["mode"] == "match")


def test_include_revinclude_iterate(client: Any, data: dict[str, Any]) -> None:
    b = client.get("/fhir/Observation", params={"_id": data["obs"][0], "_include": "Observation:subject"}).json()
    assert ids(b) == [data["obs"][0]] and ids(b, "include") == [data["p1"]]
    b = client.get("/fhir/Observation", params={"_id": data["obs"][0], "_include": "Observation:subject",
                                                 "_include:iterate": "Patient:organization"}).json()
    assert set(ids(b, "include")) == {data["p1"], data["org"]}
    b = client.get("/fhir/Patient", params={"_id": data["p1"], "_revinclude": "Encounter:subject"}).json()
    assert ids(b, "include") == [data["enc"]]
    b = client.get("/fhir/Observation", params={"_id": data["obs"][0], "_revinclude": "Provenance:target"}).json()
    assert ids(b, "include") == [data["prov"]]
    b = client.get("/fhir/Observation", params={"_id": data["obs"][0], "_include": "*"}).json()
    assert {data["p1"], data["prac"]} <= set(ids(b, "include"))
    assert client.get("/fhir/Observation", params={"_include": "Observation:status"}).status_code == 400


def test_chains_and_has(client: Any, data: dict[str, Any]) -> None:
    of_p1 = set(ids(client.get("/fhir/Observation", params={"subject": f"Patient/{data['p1']}",
                                                             "_count": 100}).json()))
    assert len(of_p1) >= 20
    b = client.get("/fhir/Observation", params={"subject:Patient.name": "muller", "_count": 100}).json()
    assert set(ids(b)) == of_p1
    b = client.get("/fhir/Observation", params={"subject:Patient.organization.name": "CHU", "_count": 100}).json()
    assert set(ids(b)) == of_p1
    b = client.get("/fhir/Patient", params={"_has:Observation:subject:code": "http://loinc.org|29463-7"}).json()
    assert set(ids(b)) == {data["p1"], data["p2"]}
    b = client.get("/fhir/Patient", params={"_has:Encounter:subject:status": "finished"}).json()
    assert ids(b) == [data["p1"]]
    b = client.get("/fhir/Patient", params={"_has:Observation:subject:_has:Provenance:target:agent":
                                            f"Practitioner/{data['prac']}"}).json()
    assert ids(b) == [data["p1"]]


def test_totals_and_summaries(client: Any, data: dict[str, Any]) -> None:
    b = client.get("/fhir/Observation", params={"code": "http://loinc.org|29463-7", "_total": "accurate",
                                                "_count": 2}).json()
    assert b["total"] == 12 and len(ids(b)) == 2
    b = client.get("/fhir/Observation", params={"code": "http://loinc.org|29463-7", "_summary": "count"}).json()
    assert b["total"] == 12 and "entry" not in b
    b = client.get("/fhir/Observation", params={"code": "http://loinc.org|29463-7", "_count": 2}).json()
    assert "total" not in b  # not cheap: several pages
    b = client.get("/fhir/Patient", params={"_id": data["p1"], "_summary": "true"}).json()
    res = b["entry"][0]["resource"]
    assert "name" in res and "generalPractitioner" not in res
    assert any(t["code"] == "SUBSETTED" for t in res["meta"]["tag"])
    b = client.get("/fhir/Patient", params={"_id": data["p1"], "_elements": "gender"}).json()
    assert set(b["entry"][0]["resource"]) == {"resourceType", "id", "meta", "gender"}


def test_quantity_date_token_forms(client: Any, data: dict[str, Any]) -> None:
    p1 = f"Patient/{data['p1']}"
    assert len(ids(client.get("/fhir/Observation", params={"subject": p1, "value-quantity": "ge75",
                                                          "_count": 50}).json())) == 5
    assert len(ids(client.get("/fhir/Observation", params={"subject": p1, "value-quantity": "75000|http://unitsofmeasure.org|g",
                                                          "_count": 50}).json())) == 1
    assert len(ids(client.get("/fhir/Observation", params={"subject": p1, "date": ["ge2024-03-05", "lt2024-03-08"],
                                                          "_count": 50}).json())) == 3
    assert len(ids(client.get("/fhir/Observation", params={"subject": p1, "code:not": "8302-2",
                                                          "_count": 50}).json())) == 10


def test_system_level_and_compartment(client: Any, data: dict[str, Any]) -> None:
    b = client.get("/fhir", params={"_type": "Patient,Encounter", "_count": 100}).json()
    types = {e["resource"]["resourceType"] for e in b["entry"]}
    assert types == {"Patient", "Encounter"}
    b = client.get("/fhir", params={"_type": "Patient,Observation", "_count": 4}).json()
    seen = ids(b)
    while (b := follow(client, b, "next")) is not None:
        seen += ids(b)
    assert len(seen) == len(set(seen)) >= 27
    b = client.get(f"/fhir/Patient/{data['p2']}/Observation", params={"_count": 50}).json()
    assert set(ids(b)) == set(data["obs"][20:])
    b = client.get(f"/fhir/Practitioner/{data['prac']}/Observation")
    assert b.status_code == 400


def test_post_search(client: Any, data: dict[str, Any]) -> None:
    r = client.post("/fhir/Patient/_search", content="family=martin",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and ids(r.json()) == [data["p2"]]


def test_capability_lists_search_params(client: Any) -> None:
    cs = client.get("/fhir/metadata").json()
    obs = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Observation")
    names = {p["name"] for p in obs["searchParam"]}
    assert {"code", "subject", "date", "value-quantity", "code-value-quantity", "_id", "_lastUpdated"} <= names
    assert "Observation:subject" in obs["searchInclude"]
    pat = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    assert "Observation:subject" in pat["searchRevInclude"]
