"""$ingest-cda and $upload over HTTP, and ITI-68 retrieval of what they stored."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from fhir_server.documents.cda import convert_cda
from fhir_server.documents.ingest import CONVERSION_OUTCOME_URL
from fhir_server.main import Services, build_services, create_app
from tests.conftest import make_settings
from tests.documents.conftest import cda_fr_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cda"
CDA = {"Content-Type": "application/hl7-cda+xml"}
INGEST = "/fhir/DocumentReference/$ingest-cda"
UPLOAD = "/fhir/DocumentReference/$upload"
V3 = "urn:hl7-org:v3"
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n" + bytes(range(256))


def example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def snapshot(services: Services) -> dict[str, int]:
    db = services.repo.db
    return {n: db[n].count_documents({}) for n in db.list_collection_names()}


def make_patient(client: Any, data: bytes) -> str:
    """A Patient carrying the document's first patient identifier."""
    system, value = convert_cda(data).patient_identifiers[0]
    r = client.post("/fhir/Patient", json={"resourceType": "Patient",
                                           "identifier": [{"system": system, "value": value}]},
                    headers={"If-None-Exist": f"identifier={system}|{value}"})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def ingest(client: Any, data: bytes, status: int = 201, ctype: str = "application/hl7-cda+xml") -> dict[str, Any]:
    r = client.post(INGEST, content=data, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    return dict(r.json())


def stored(client: Any, bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    out = []
    for e in bundle["entry"][1:]:
        loc = e["response"].get("location", "")
        if loc.startswith(rtype + "/"):
            r = client.get("/fhir/" + loc.split("/_history")[0], headers={"Accept": "application/fhir+json"})
            assert r.status_code == 200
            out.append(r.json())
    return out


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from references(v)
    elif isinstance(node, list):
        for v in node:
            yield from references(v)


def with_new_id(data: bytes, extension: str, replaces: bytes | None = None) -> bytes:
    """The same document under another ``ClinicalDocument/id``, optionally replacing ``replaces``."""
    root = etree.fromstring(data)
    doc_id = root.find(f"{{{V3}}}id")
    old_id = dict(doc_id.attrib)
    doc_id.set("extension", extension)
    doc_id.attrib.pop("root", None)
    doc_id.set("root", old_id.get("root", "1.2.3"))
    if replaces is not None:
        parent = etree.fromstring(replaces).find(f"{{{V3}}}id")
        rel = etree.Element(f"{{{V3}}}relatedDocument", typeCode="RPLC")
        pd = etree.SubElement(rel, f"{{{V3}}}parentDocument")
        etree.SubElement(pd, f"{{{V3}}}id", dict(parent.attrib))
        root.find(f"{{{V3}}}component").addprevious(rel)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


# ------------------------------------------------------------------ CDA push
@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.xml")))
def test_example_documents_ingest_and_point_at_the_matched_patient(client: Any, name: str) -> None:
    data = example(name)
    pid = make_patient(client, data)
    r = client.post(INGEST, content=data, headers=CDA)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "transaction-response"
    outcome = body["entry"][0]["resource"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(f"Patient/{pid}" in i.get("diagnostics", "") for i in outcome["issue"])
    assert all(e["response"]["status"].startswith(("200", "201")) for e in body["entry"][1:])
    assert "/DocumentReference/" in r.headers["location"]
    (doc,) = stored(client, body, "DocumentReference")
    assert doc["subject"] == {"reference": f"Patient/{pid}"}
    assert not any(loc["response"].get("location", "").startswith("Patient/") for loc in body["entry"][1:])
    # every stored resource points at the matched Patient, none at a placeholder
    for e in body["entry"][1:]:
        loc = e["response"]["location"].split("/_history")[0]
        res = client.get("/fhir/" + loc, headers={"Accept": "application/fhir+json"}).json()
        for ref in references(res):
            assert not ref.startswith("urn:uuid:"), (loc, ref)
            if ref.startswith("Patient/"):
                assert ref == f"Patient/{pid}", (loc, ref)
    # ITI-68: the attachment url gives back the exact original bytes
    att = doc["content"][0]["attachment"]
    assert re.fullmatch(r"Binary/[0-9a-f-]+", att["url"])
    raw = client.get("/fhir/" + att["url"], headers={"Accept": "*/*"})
    assert raw.status_code == 200
    assert raw.content == data
    assert raw.headers["content-type"].startswith("application/hl7-cda+xml")
    assert raw.headers["etag"].startswith('W/"')
    assert att["size"] == len(data)
    assert att["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert client.get("/fhir/" + att["url"], headers={"If-None-Match": raw.headers["etag"]}).status_code == 304


def test_resending_the_same_document_is_idempotent(client: Any, services: Services) -> None:
    data = with_new_id(example("cr-bio-glucose.xml"), "idem-1")
    make_patient(client, data)
    first = ingest(client, data)
    before = snapshot(services)
    again = client.post(INGEST, content=data, headers={"Content-Type": "text/xml"})
    assert again.status_code == 200, again.text
    assert snapshot(services) == before
    (doc,) = stored(client, first, "DocumentReference")
    assert again.json()["entry"][1]["fullUrl"].endswith(f"/DocumentReference/{doc['id']}")
    assert again.json()["entry"][0]["resource"]["issue"][0]["code"] == "duplicate"


def test_other_bytes_under_the_same_document_id_conflict(client: Any, services: Services) -> None:
    data = with_new_id(example("cr-bio-glucose.xml"), "conflict-1")
    make_patient(client, data)
    ingest(client, data)
    before = snapshot(services)
    changed = data.replace(b"</ClinicalDocument>", b"<!-- v2 --></ClinicalDocument>")
    r = client.post(INGEST, content=changed, headers=CDA)
    assert r.status_code == 409, r.text
    assert snapshot(services) == before


def test_a_replacement_supersedes_the_old_version_in_the_same_transaction(client: Any) -> None:
    v1 = with_new_id(example("vac-note.xml"), "rplc-v1")
    make_patient(client, v1)
    first = ingest(client, v1)
    (old,) = stored(client, first, "DocumentReference")
    v2 = with_new_id(example("vac-note.xml"), "rplc-v2", replaces=v1)
    second = ingest(client, v2)
    assert any(e["response"]["location"].startswith(f"DocumentReference/{old['id']}/_history/2")
               for e in second["entry"][1:])
    (new,) = [d for d in stored(client, second, "DocumentReference") if d["id"] != old["id"]]
    assert new["relatesTo"][0]["code"] == "replaces"
    assert new["relatesTo"][0]["target"]["reference"] == f"DocumentReference/{old['id']}"
    assert client.get(f"/fhir/DocumentReference/{old['id']}").json()["status"] == "superseded"
    assert new["status"] == "current"
    issues = second["entry"][0]["resource"]["issue"]
    assert any("superseded" in i["diagnostics"] for i in issues)


def test_replacing_an_unknown_document_is_reported_not_fatal(client: Any) -> None:
    v1 = with_new_id(example("vac-note.xml"), "never-sent")
    v2 = with_new_id(example("vac-note.xml"), "orphan-v2", replaces=v1)
    make_patient(client, v2)
    body = ingest(client, v2)
    assert any(i["severity"] == "warning" and "not known" in i["diagnostics"]
               for i in body["entry"][0]["resource"]["issue"])


def test_authors_are_deduplicated_across_documents(client: Any) -> None:
    a = with_new_id(example("cr-bio-glucose.xml"), "dedup-a")
    b = with_new_id(example("cr-bio-glucose.xml"), "dedup-b")
    make_patient(client, a)
    first, second = ingest(client, a), ingest(client, b)
    pracs_a = {e["response"]["location"].split("/_history")[0] for e in first["entry"][1:]
               if e["response"]["location"].startswith("Practitioner/")}
    pracs_b = {e["response"]["location"].split("/_history")[0] for e in second["entry"][1:]
               if e["response"]["location"].startswith("Practitioner/")}
    assert pracs_a and pracs_a == pracs_b
    assert all(e["response"]["status"].startswith("200") for e in second["entry"][1:]
               if e["response"]["location"].startswith(("Practitioner/", "Organization/")))


def test_conversion_issues_are_kept_with_the_document(client: Any) -> None:
    data = with_new_id(example("ccd-small.xml"), "issues-1")
    make_patient(client, data)
    result = convert_cda(data)
    body = ingest(client, data)
    (doc,) = stored(client, body, "DocumentReference")
    if result.issues:
        ext = next(e for e in doc["extension"] if e["url"] == CONVERSION_OUTCOME_URL)
        oo = next(c for c in doc["contained"] if c["id"] == ext["valueReference"]["reference"][1:])
        assert oo["resourceType"] == "OperationOutcome" and len(oo["issue"]) == len(result.issues)
    returned = body["entry"][0]["resource"]["issue"]
    assert len(returned) >= len(result.issues) + 2  # summary + patient match + conversion issues


def test_unknown_patient_is_a_clear_422_and_nothing_is_stored(client: Any, services: Services) -> None:
    data = with_new_id(example("unstructured-pdf.xml"), "nobody")
    data = data.replace(b"NIA-0001", b"NIA-9999")
    before = snapshot(services)
    r = client.post(INGEST, content=data, headers=CDA)
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert "NIA-9999" in issue["diagnostics"] and "FHIR_SERVER_DOCUMENTS_CREATE_UNKNOWN_PATIENT" in issue["diagnostics"]
    assert snapshot(services) == before


def test_ins_wins_over_local_identifiers(client: Any) -> None:
    data = with_new_id(example("cr-bio-glucose.xml"), "ins-first")
    data = data.replace(b"248092A12345678", b"248092A00000001").replace(b"IPP-42", b"IPP-4242")
    ids = convert_cda(data).patient_identifiers
    (ins,) = [i for i in ids if i[0] == "urn:oid:1.2.250.1.213.1.4.8"]
    local = next(i for i in ids if not i[0].startswith("urn:oid:1.2.250.1.213.1.4."))
    by_local = client.post("/fhir/Patient", json={"resourceType": "Patient", "identifier": [
        {"system": local[0], "value": local[1]}]}).json()["id"]
    by_ins = client.post("/fhir/Patient", json={"resourceType": "Patient", "identifier": [
        {"system": ins[0], "value": ins[1]}]}).json()["id"]
    assert by_local != by_ins
    (doc,) = stored(client, ingest(client, data), "DocumentReference")
    assert doc["subject"]["reference"] == f"Patient/{by_ins}"


def test_local_identifiers_match_when_no_ins_does(client: Any) -> None:
    data = with_new_id(example("ccd-small.xml"), "local-only").replace(b"MRN-7", b"MRN-77")
    system, value = convert_cda(data).patient_identifiers[0]
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient", "identifier": [
        {"system": system, "value": value}]}).json()["id"]
    (doc,) = stored(client, ingest(client, data), "DocumentReference")
    assert doc["subject"]["reference"] == f"Patient/{pid}"


# ---------------------------------------------------------- hostile or not CDA
HOSTILE = {
    "xxe-file": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>',
    "xxe-network": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]>'
                   b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>',
    "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                      + b"".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode()
                                 for i in range(9))
                      + b']><ClinicalDocument xmlns="urn:hl7-org:v3"><title>&j;</title></ClinicalDocument>',
    "quadratic": b'<?xml version="1.0"?><!DOCTYPE q [<!ENTITY a "' + b"x" * 50_000 + b'">]>'
                 b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>' + b"&a;" * 5_000 + b"</title></ClinicalDocument>",
    "doctype": b'<?xml version="1.0"?><!DOCTYPE ClinicalDocument SYSTEM "cda.dtd">'
               b'<ClinicalDocument xmlns="urn:hl7-org:v3"/>',
    "deep": b'<ClinicalDocument xmlns="urn:hl7-org:v3">' + b"<a>" * 5000 + b"</a>" * 5000 + b"</ClinicalDocument>",
    "not-cda": b'<?xml version="1.0"?><Bundle xmlns="http://hl7.org/fhir"/>',
    "malformed": b"<ClinicalDocument xmlns='urn:hl7-org:v3'><unclosed></ClinicalDocument>",
    "not-xml": b"%PDF-1.4 this is not XML",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_or_non_cda_input_is_a_clear_4xx_and_stores_nothing(client: Any, services: Services,
                                                                     name: str) -> None:
    before = snapshot(services)
    r = client.post(INGEST, content=HOSTILE[name], headers={"Content-Type": "text/xml"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "root:" not in r.text  # no /etc/passwd content echoed
    assert snapshot(services) == before


def test_oversized_body_is_413_and_stores_nothing(client: Any, services: Services) -> None:
    before = snapshot(services)
    big = b"<ClinicalDocument xmlns='urn:hl7-org:v3'>" + b" " * (services.settings.max_body_bytes + 1)
    r = client.post(INGEST, content=big, headers=CDA)
    assert r.status_code == 413
    assert snapshot(services) == before


@pytest.mark.parametrize(("ctype", "status"), [("application/fhir+json", 415), ("application/pdf", 415)])
def test_wrong_media_type(client: Any, ctype: str, status: int) -> None:
    r = client.post(INGEST, content=example("vac-note.xml"), headers={"Content-Type": ctype})
    assert r.status_code == status
    assert client.post(INGEST, content=b"", headers=CDA).status_code == 400


# ------------------------------------------------------------- patient uploads
def test_patient_upload_stores_binary_and_document_reference(client: Any) -> None:
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"]
    r = client.post(UPLOAD, params={"patient": f"Patient/{pid}", "type": "DOCPAT03", "title": "Radio du genou",
                                    "date": "2024-05-02", "description": "scan"},
                    content=PDF, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert [e["response"]["status"] for e in body["entry"][1:]] == ["201 Created", "201 Created"]
    doc = client.get(r.headers["location"].replace("http://testserver", "").split("/_history")[0]).json()
    assert doc["type"]["coding"][0]["code"] == "DOCPAT03"
    assert doc["category"][0]["coding"][0]["code"] == "90"
    assert doc["subject"] == {"reference": f"Patient/{pid}"} and doc["author"] == [{"reference": f"Patient/{pid}"}]
    att = doc["content"][0]["attachment"]
    assert att["title"] == "Radio du genou" and att["size"] == len(PDF) and att["creation"] == "2024-05-02"
    assert att["hash"] == base64.b64encode(hashlib.sha1(PDF).digest()).decode()
    assert doc["context"]["facilityType"]["coding"][0]["code"] == "EXP_PATIENT"
    raw = client.get("/fhir/" + att["url"], headers={"Accept": "*/*"})
    assert raw.content == PDF and raw.headers["content-type"] == "application/pdf"
    assert raw.headers["etag"]


@pytest.mark.parametrize(("params", "ctype", "body", "status"), [
    ({"type": "DOCPAT10", "title": "x"}, "application/pdf", PDF, 422),
    ({"type": "11488-4", "title": "x"}, "application/pdf", PDF, 422),
    ({"type": "DOCPAT01"}, "application/pdf", PDF, 400),
    ({"type": "DOCPAT01", "title": "x"}, "text/plain", b"hello", 415),
    ({"type": "DOCPAT01", "title": "x"}, "image/png", PDF, 422),
    ({"type": "DOCPAT01", "title": "x"}, "application/pdf", b"", 400),
    ({"type": "DOCPAT01", "title": "x", "bogus": "1"}, "application/pdf", PDF, 400),
    ({"type": "DOCPAT01", "title": "x", "date": "yesterday"}, "application/pdf", PDF, 400),
])
def test_patient_upload_rejections_store_nothing(client: Any, services: Services, params: dict[str, str],
                                                 ctype: str, body: bytes, status: int) -> None:
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"]
    before = snapshot(services)
    r = client.post(UPLOAD, params={"patient": f"Patient/{pid}", **params}, content=body,
                    headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert snapshot(services) == before


def test_patient_upload_needs_a_known_patient(client: Any) -> None:
    r = client.post(UPLOAD, params={"patient": "Patient/nope", "type": "DOCPAT01", "title": "x"}, content=PDF,
                    headers={"Content-Type": "application/pdf"})
    assert r.status_code == 422
    r = client.post(UPLOAD, params={"type": "DOCPAT01", "title": "x"}, content=PDF,
                    headers={"Content-Type": "application/pdf"})
    assert r.status_code == 400


# ------------------------------------------------- creating unknown patients
@pytest.fixture(scope="module")
def creating_client(mongo_uri: str) -> Iterator[tuple[Any, Services]]:
    from starlette.testclient import TestClient

    svc = build_services(make_settings(mongo_uri, documents_create_unknown_patient=True))
    with TestClient(create_app(svc.settings, svc), base_url="http://testserver") as c:
        yield c, svc
    svc.repo.drop_everything()
    svc.close()


def test_setting_creates_the_unknown_patient_once(creating_client: tuple[Any, Services]) -> None:
    client, _ = creating_client
    a = with_new_id(example("cr-bio-glucose.xml"), "create-a")
    b = with_new_id(example("cr-bio-glucose.xml"), "create-b")
    first = ingest(client, a)
    (patient,) = [e for e in first["entry"][1:] if e["response"]["location"].startswith("Patient/")]
    pid = patient["response"]["location"].split("/")[1]
    second = ingest(client, b)
    assert not any(e["response"]["location"].startswith("Patient/") for e in second["entry"][1:])
    (doc,) = stored(client, second, "DocumentReference")
    assert doc["subject"]["reference"] == f"Patient/{pid}"


def test_every_cda_fr_sample_ingests_over_http(creating_client: tuple[Any, Services]) -> None:
    files = cda_fr_files()
    if not files:
        pytest.skip("../shared/samples/cda-fr is absent")
    client, _ = creating_client
    failures = {}
    for path in files:
        data = path.read_bytes()
        r = client.post(INGEST, content=data, headers=CDA)
        if r.status_code not in (200, 201):
            failures[path.name] = (r.status_code, r.text[:300])
            continue
        doc = next(e for e in r.json()["entry"][1:]
                   if e["response"].get("location", "").startswith("DocumentReference/"))
        loc = doc["response"]["location"].split("/_history")[0]
        url = client.get("/fhir/" + loc).json()["content"][0]["attachment"]["url"]
        assert client.get("/fhir/" + url, headers={"Accept": "*/*"}).content == data, path.name
    assert not failures, failures
