"""ITI-67 Find Document References and ITI-66 Find Lists with the PDSm search parameters.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from fhir_server.main import Services

from .test_ingest_http import INGEST, example, make_patient, with_new_id
from .test_mhd import INS, patient, submission

MHD_LISTS = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
V3 = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ARCHIVED = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-ext-is-archived"
A03 = "https://mos.esante.gouv.fr/NOS/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument"
R02 = "https://mos.esante.gouv.fr/NOS/TRE_R02-SecteurActivite/FHIR/TRE-R02-SecteurActivite"
A01 = "https://mos.esante.gouv.fr/NOS/TRE_A01-CadreExercice/FHIR/TRE-A01-CadreExercice"
FORMAT = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
CCAM = "https://smt.esante.gouv.fr/terminologie-ccam"


@pytest.fixture(scope="module")
def world(client: Any, services: Services) -> Iterator[dict[str, Any]]:
    """Two patients; P1 has two MHD submissions (one archived, one with an event and an end date),
    and a PDF upload; P2 one submission; a third patient a CDA document replaced by a second version."""
    p1, p2 = patient(client, "900000000000101"), patient(client, "900000000000102")
    a = submission("900000000000101")
    doc = a["entry"][1]["resource"]
    doc["context"]["event"] = [{"coding": [{"system": CCAM, "code": "ZCQK002"}]}]
    doc["context"]["period"]["end"] = "2025-04-21T10:00:00+02:00"
    doc["type"] = {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]}
    assert client.post("/fhir", json=a).status_code == 200
    b = submission("900000000000101")
    for e in b["entry"]:
        if e["resource"]["resourceType"] == "DocumentReference":
            e["resource"]["masterIdentifier"]["value"] += ".b"
            e["resource"]["extension"] = [{"url": ARCHIVED, "valueBoolean": True}]
            e["resource"]["securityLabel"] = [{"coding": [{"system": V3, "code": "R"}]}]
            e["resource"]["content"][0]["attachment"]["creation"] = "2023-01-05T10:00:00+01:00"
            e["resource"]["context"]["period"]["start"] = "2023-01-01T10:00:00+01:00"
            e["resource"]["date"] = "2023-01-05T10:00:00+01:00"
    b["entry"][0]["resource"]["date"] = "2023-01-05T10:00:00+01:00"
    assert client.post("/fhir", json=b).status_code == 200
    c = submission("900000000000102")
    for e in c["entry"]:
        if e["resource"]["resourceType"] == "DocumentReference":
            e["resource"]["masterIdentifier"]["value"] += ".c"
    assert client.post("/fhir", json=c).status_code == 200
    v1 = with_new_id(example("vac-note.xml"), "search-v1")
    v2 = with_new_id(example("vac-note.xml"), "search-v2", replaces=v1)
    cda_patient = make_patient(client, v1)
    first = client.post(INGEST, content=v1, headers={"Content-Type": "text/xml"})
    second = client.post(INGEST, content=v2, headers={"Content-Type": "text/xml"})
    assert first.status_code == second.status_code == 201
    old = next(e["response"]["location"].split("/_history")[0] for e in first.json()["entry"][1:]
               if e["response"]["location"].startswith("DocumentReference/"))
    up = client.post("/fhir/DocumentReference/$upload", params={
        "patient": f"Patient/{p1}", "type": "DOCPAT04", "title": "IRM"},
        content=b"%PDF-1.4 upload", headers={"Content-Type": "application/pdf"})
    assert up.status_code == 201
    yield {"p1": p1, "p2": p2, "cda_patient": cda_patient, "old": old, "master": doc["masterIdentifier"]}


def ids(client: Any, path: str, **params: str) -> set[str]:
    r = client.get(f"/fhir/{path}", params={**params, "_count": "100"})
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", ()) if e.get("search", {}).get("mode") != "include"}


def docs(client: Any, **params: str) -> set[str]:
    return ids(client, "DocumentReference", **params)


# ---------------------------------------------------------------------- ITI-67
def test_by_patient(client: Any, world: dict[str, Any]) -> None:
    p1 = docs(client, patient=f"Patient/{world['p1']}")
    p2 = docs(client, patient=f"Patient/{world['p2']}")
    assert len(p1) == 3 and len(p2) == 1 and not p1 & p2


def test_by_chained_patient_identifier(client: Any, world: dict[str, Any]) -> None:
    assert docs(client, **{"patient.identifier": f"{INS}|900000000000101"}) == docs(
        client, patient=f"Patient/{world['p1']}")


def test_by_identifier(client: Any, world: dict[str, Any]) -> None:
    m = world["master"]
    assert len(docs(client, identifier=f"{m['system']}|{m['value']}")) == 1


def test_by_status(client: Any, world: dict[str, Any]) -> None:
    superseded = docs(client, status="superseded")
    assert world["old"].split("/")[1] in superseded
    assert not superseded & docs(client, status="current")


def test_by_type_category_format(client: Any, world: dict[str, Any]) -> None:
    p = f"Patient/{world['p1']}"
    assert len(docs(client, patient=p, type="http://loinc.org|34133-9")) == 1
    assert len(docs(client, patient=p, type="http://loinc.org|11488-4")) == 1
    assert len(docs(client, patient=p, category=f"{A03}|10")) == 2
    assert len(docs(client, patient=p, format=f"{FORMAT}|urn:ihe:iti:xds:2017:mimeTypeSufficient")) == 3


def test_by_event_facility_setting(client: Any, world: dict[str, Any]) -> None:
    p = f"Patient/{world['p1']}"
    assert len(docs(client, patient=p, event=f"{CCAM}|ZCQK002")) == 1
    assert len(docs(client, patient=p, facility=f"{R02}|SA01")) == 2
    assert len(docs(client, patient=p, setting=f"{A01}|ETABLISSEMENT")) == 2


def test_by_security_label(client: Any, world: dict[str, Any]) -> None:
    p = f"Patient/{world['p1']}"
    assert len(docs(client, patient=p, **{"security-label": f"{V3}|R"})) == 1


def test_by_dates(client: Any, world: dict[str, Any]) -> None:
    p = f"Patient/{world['p1']}"
    assert len(docs(client, patient=p, date="lt2024-01-01")) == 1
    assert len(docs(client, patient=p, period="lt2024")) == 1  # an open period extends to now
    assert len(docs(client, patient=p, creation="lt2024")) == 1
    assert len(docs(client, patient=p, **{"period-start": "lt2024"})) == 1
    assert len(docs(client, patient=p, **{"period-end": "ge2025-04-21"})) == 1


def test_by_is_archived(client: Any, world: dict[str, Any]) -> None:
    assert len(docs(client, patient=f"Patient/{world['p1']}", isArchived="true")) == 1


def test_by_relatesto(client: Any, world: dict[str, Any]) -> None:
    assert len(docs(client, relatesto=world["old"])) == 1


def test_by_chained_author(client: Any, world: dict[str, Any]) -> None:
    found = docs(client, **{"author:Practitioner.name": "a"})
    found |= docs(client, **{"author:PractitionerRole.practitioner.name": "a"})
    assert found & docs(client, patient=f"Patient/{world['cda_patient']}")


def test_by_contenttype(client: Any, world: dict[str, Any]) -> None:
    assert len(docs(client, patient=f"Patient/{world['p1']}", contenttype="application/pdf")) == 1


# ---------------------------------------------------------------------- ITI-66
def lists(client: Any, **params: str) -> set[str]:
    return ids(client, "List", **params)


def test_find_submission_sets(client: Any, world: dict[str, Any]) -> None:
    p = f"Patient/{world['p1']}"
    assert len(lists(client, patient=p, code=f"{MHD_LISTS}|submissionset")) == 2
    assert len(lists(client, patient=p, code=f"{MHD_LISTS}|submissionset", date="ge2025")) == 1
    assert len(lists(client, patient=p, status="current")) == 2
    assert len(lists(client, patient=p, designationType=f"{R02}|SA05")) == 2
    assert len(lists(client, patient=p, sourceId="urn:oid:1.2.3.4")) == 2
    assert not lists(client, patient=f"Patient/{world['p2']}", date="lt2024")


def test_unknown_parameters_are_refused(client: Any, world: dict[str, Any]) -> None:
    r = client.get("/fhir/DocumentReference", params={"patient": f"Patient/{world['p1']}", "typo": "1"})
    assert r.status_code == 400


def test_binary_of_a_found_document_is_retrievable(client: Any, world: dict[str, Any]) -> None:
    r = client.get("/fhir/DocumentReference", params={"patient": f"Patient/{world['p1']}",
                                                      "contenttype": "application/pdf"})
    url = r.json()["entry"][0]["resource"]["content"][0]["attachment"]["url"]
    raw = client.get("/fhir/" + url, headers={"Accept": "*/*"})
    assert raw.content == b"%PDF-1.4 upload"
    assert base64.b64encode(raw.content)
