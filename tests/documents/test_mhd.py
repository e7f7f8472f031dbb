"""ITI-65 Provide Document Bundle: the PDSm rule set (as data-driven unit checks) and over HTTP."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import orjson
import pytest

from fhir_server.documents.mhd import MhdRules, is_mhd_submission
from fhir_server.main import Services

from .conftest import SAMPLES

PDSM4DMP = SAMPLES / "fhir-fr" / "pdsm4dmp"
INS = "urn:oid:1.2.250.1.213.1.4.8"
DOC = b'<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument xmlns="urn:hl7-org:v3"/>'
TRE_A05 = "https://mos.esante.gouv.fr/NOS/TRE_A05-TypeDocComplementaire/FHIR/TRE-A05-TypeDocComplementaire"
R02 = "https://mos.esante.gouv.fr/NOS/TRE_R02-SecteurActivite/FHIR/TRE-R02-SecteurActivite"


def sample(name: str) -> dict[str, Any]:
    path = PDSM4DMP / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared not mounted)")
    return dict(json.loads(path.read_text(encoding="utf-8")))


def sha1(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def submission(ins: str = "900000000000001", n: int = 1, data: bytes = DOC) -> dict[str, Any]:
    """A complete PDSm submission written for these tests (not one of the samples)."""
    subject = {"reference": f"Patient?identifier={INS}|{ins}"}
    contained = [{"resourceType": "Practitioner", "id": "author",
                  "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810101201234"}]}]
    entries: list[dict[str, Any]] = []
    items = []
    for i in range(n):
        doc_url, bin_url = f"urn:uuid:00000000-0000-4000-8000-{i:012d}", f"urn:uuid:00000000-0000-4000-9000-{i:012d}"
        items.append({"item": {"reference": doc_url}})
        entries.append({"fullUrl": doc_url, "request": {"method": "POST", "url": "DocumentReference"}, "resource": {
            "resourceType": "DocumentReference", "contained": copy.deepcopy(contained),
            "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.3.4.{ins}.{i}"},
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
            "category": [{"coding": [{"system": "https://mos.esante.gouv.fr/NOS/TRE_A03-ClasseDocument/FHIR/"
                                                "TRE-A03-ClasseDocument", "code": "10"}]}],
            "subject": dict(subject), "date": "2025-04-29T12:00:00+02:00",
            "author": [{"reference": "#author"}],
            "custodian": {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "1750000000"}},
            "securityLabel": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                           "code": "N"}]}],
            "content": [{"attachment": {"contentType": "application/xml", "url": bin_url, "size": len(data),
                                        "hash": sha1(data), "title": f"CR {i}",
                                        "creation": "2025-04-25T09:30:00+02:00"},
                         "format": {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                                    "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"}}],
            "context": {"period": {"start": "2025-04-20T08:00:00+02:00"},
                        "facilityType": {"coding": [{"system": R02, "code": "SA01"}]},
                        "practiceSetting": {"coding": [{"system": "https://mos.esante.gouv.fr/NOS/TRE_A01-"
                                                                  "CadreExercice/FHIR/TRE-A01-CadreExercice",
                                                        "code": "ETABLISSEMENT"}]}}}})
        entries.append({"fullUrl": bin_url, "request": {"method": "POST", "url": "Binary"},
                        "resource": {"resourceType": "Binary", "contentType": "application/xml",
                                     "data": base64.b64encode(data).decode()}})
    subset = {"fullUrl": "urn:uuid:00000000-0000-4000-a000-000000000000",
              "request": {"method": "POST", "url": "List"},
              "resource": {"resourceType": "List", "contained": copy.deepcopy(contained),
                           "extension": [
                               {"url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-designationType",
                                "valueCodeableConcept": {"coding": [{"system": R02, "code": "SA05"}]}},
                               {"url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId",
                                "valueIdentifier": {"value": "urn:oid:1.2.3.4"}}],
                           "status": "current", "mode": "working",
                           "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes",
                                                "code": "submissionset"}]},
                           "subject": dict(subject), "date": "2025-04-30T14:00:00+02:00",
                           "source": {"reference": "#author"}, "entry": items}}
    return {"resourceType": "Bundle", "type": "transaction",
            "meta": {"profile": ["https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/"
                                 "pdsm-comprehensive-provide-document-bundle"]},
            "entry": [subset, *entries]}


def errors(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    issues = MhdRules().validate(None, bundle)
    return [(i.expression[0], i.diagnostics) for i in issues if i.severity == "error"]


# -------------------------------------------------------------- rules, offline
def test_the_reference_submission_is_valid() -> None:
    assert errors(submission()) == []


def test_recognised_by_profile_or_by_a_submission_set() -> None:
    b = submission()
    assert is_mhd_submission(b)
    del b["meta"]
    assert is_mhd_submission(b)
    b["entry"] = b["entry"][1:]
    assert not is_mhd_submission(b)


def _drop(path: str) -> Any:
    def edit(b: dict[str, Any]) -> None:
        node = b["entry"][1]["resource"]
        *head, leaf = path.split(".")
        for p in head:
            node = node[p][0] if isinstance(node[p], list) else node[p]
        del node[leaf]
    return edit


CASES: dict[str, tuple[Any, str, str]] = {
    # name: (edit, expected expression, words in the message)
    "author": (_drop("author"), "Bundle.entry[1].resource.author", "author"),
    "date": (_drop("date"), "Bundle.entry[1].resource.date", "date"),
    "period.start": (_drop("context.period.start"), "Bundle.entry[1].resource.context.period.start", "period"),
    "size": (_drop("content.attachment.size"), "Bundle.entry[1].resource.content[0].attachment.size", "size"),
    "hash": (_drop("content.attachment.hash"), "Bundle.entry[1].resource.content[0].attachment.hash", "hash"),
    "title": (_drop("content.attachment.title"), "Bundle.entry[1].resource.content[0].attachment.title", "title"),
    "masterIdentifier": (_drop("masterIdentifier"), "Bundle.entry[1].resource.masterIdentifier", "masterIdentifier"),
    "facilityType": (_drop("context.facilityType"), "Bundle.entry[1].resource.context.facilityType", "facility"),
    "wrong hash": (lambda b: b["entry"][1]["resource"]["content"][0]["attachment"].update(hash=sha1(b"other")),
                   "Bundle.entry[1].resource.content[0].attachment.hash", "SHA-1"),
    "wrong size": (lambda b: b["entry"][1]["resource"]["content"][0]["attachment"].update(size=3),
                   "Bundle.entry[1].resource.content[0].attachment.size", "differs"),
    "unknown J07 code": (lambda b: b["entry"][1]["resource"].update(
        type={"coding": [{"system": TRE_A05, "code": "DOCPAT99"}]}), "Bundle.entry[1].resource.type", "J07"),
    "unknown J02 code": (lambda b: b["entry"][1]["resource"]["context"].update(
        facilityType={"coding": [{"system": "urn:oid:1.2.250.1.71.4.2.4", "code": "SA99"}]}),
        "Bundle.entry[1].resource.context.facilityType", "J02"),
    "unknown J08 code": (lambda b: b["entry"][1]["resource"].update(securityLabel=[{"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "U"}]}]),
        "Bundle.entry[1].resource.securityLabel[0]", "J08"),
    "unknown J06 code": (lambda b: b["entry"][1]["resource"]["category"][0]["coding"][0].update(code="77"),
                         "Bundle.entry[1].resource.category[0]", "J06"),
    "not current": (lambda b: b["entry"][1]["resource"].update(status="superseded"),
                    "Bundle.entry[1].resource.status", "current"),
    "other patient": (lambda b: b["entry"][1]["resource"].update(subject={"reference": "Patient/other"}),
                      "Bundle.entry[1].resource.subject", "SubmissionSet"),
    "contained author": (lambda b: b["entry"][1]["resource"].update(author=[{"reference": "#nobody"}]),
                         "Bundle.entry[1].resource.author[0]", "contained"),
    "not listed": (lambda b: b["entry"][0]["resource"].update(entry=[]), "Bundle.entry[1].resource", "listed"),
    "no source": (lambda b: b["entry"][0]["resource"].pop("source"), "Bundle.entry[0].resource.source", "source"),
    "url elsewhere": (lambda b: b["entry"][1]["resource"]["content"][0]["attachment"].update(
        url="http://elsewhere.example/doc"), "Bundle.entry[1].resource.content[0].attachment.url", "Binary"),
    "orphan binary": (lambda b: b["entry"].append({"fullUrl": "urn:uuid:11111111-0000-4000-8000-000000000000",
                                                   "request": {"method": "POST", "url": "Binary"},
                                                   "resource": {"resourceType": "Binary", "contentType": "text/plain",
                                                                "data": "eA=="}}),
                      "Bundle.entry[3]", "not referenced"),
    "two submission sets": (lambda b: b["entry"].append(copy.deepcopy(b["entry"][0])), "Bundle.entry",
                            "exactly one"),
    "foreign type": (lambda b: b["entry"].append({"request": {"method": "POST", "url": "Observation"},
                                                  "resource": {"resourceType": "Observation"}}),
                     "Bundle.entry[3]", "not part"),
    "replaces without superseding": (lambda b: b["entry"][1]["resource"].update(relatesTo=[
        {"code": "replaces", "target": {"reference": "DocumentReference/old"}}]),
        "Bundle.entry[1].resource.relatesTo[0].target", "superseded"),
    "superseding without relatesTo": (lambda b: b["entry"].append(
        {"request": {"method": "PATCH", "url": "DocumentReference/old"},
         "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": base64.b64encode(orjson.dumps([{"op": "replace", "path": "/status",
                                                              "value": "superseded"}])).decode()}}),
        "Bundle.entry[3]", "relatesTo is required"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_violations_point_at_the_entry(name: str) -> None:
    edit, where, words = CASES[name]
    b = submission()
    edit(b)
    found = errors(b)
    assert any(w == where and words.lower() in msg.lower() for w, msg in found), found


def test_foreign_codings_and_missing_custodian_are_warnings_only() -> None:
    b = submission()
    doc = b["entry"][1]["resource"]
    doc["context"]["facilityType"] = {"coding": [{"system": "http://snomed.info/sct", "code": "22232009"}]}
    del doc["custodian"]
    issues = MhdRules().validate(None, b)
    assert not [i for i in issues if i.severity == "error"]
    warned = {i.expression[0] for i in issues if i.severity == "warning"}
    assert {"Bundle.entry[1].resource.context.facilityType", "Bundle.entry[1].resource.custodian"} <= warned


def test_fhirpath_patch_counts_as_superseding() -> None:
    b = submission()
    b["entry"][1]["resource"]["relatesTo"] = [{"code": "replaces", "target": {"reference": "DocumentReference/x"}}]
    b["entry"].append({"request": {"method": "PATCH", "url": "DocumentReference/x"}, "resource": {
        "resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "DocumentReference.status"},
            {"name": "value", "valueCode": "superseded"}]}]}})
    assert errors(b) == []


# ---------------------------------------------------------------- over HTTP
def count(services: Services, type_: str) -> int:
    return services.repo.db[type_].count_documents({})


def patient(client: Any, ins: str) -> str:
    r = client.post("/fhir/Patient", json={"resourceType": "Patient", "identifier": [{"system": INS, "value": ins}]},
                    headers={"If-None-Exist": f"identifier={INS}|{ins}"})
    assert r.status_code in (200, 201)
    return str(r.json()["id"])


def test_a_valid_submission_is_stored_and_retrievable(client: Any) -> None:
    patient(client, "900000000000002")
    r = client.post("/fhir", json=submission("900000000000002", n=2))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created"] * 5
    doc_loc = body["entry"][1]["response"]["location"].split("/_history")[0]
    doc = client.get("/fhir/" + doc_loc).json()
    url = doc["content"][0]["attachment"]["url"]
    assert url.startswith("Binary/")
    raw = client.get("/fhir/" + url, headers={"Accept": "*/*"})
    assert raw.content == DOC and raw.headers["content-type"].startswith("application/xml") and raw.headers["etag"]


def test_a_rejected_entry_rejects_the_whole_submission(client: Any, services: Services) -> None:
    patient(client, "900000000000003")
    b = submission("900000000000003", n=3)
    del b["entry"][5]["resource"]["context"]["period"]  # the third document
    before = {t: count(services, t) for t in ("List", "DocumentReference", "Binary")}
    r = client.post("/fhir", json=b)
    assert r.status_code == 422
    exprs = [x for i in r.json()["issue"] for x in i.get("expression", ())]
    assert "Bundle.entry[5].resource.context.period.start" in exprs
    assert {t: count(services, t) for t in before} == before


def test_unknown_patient_is_rejected_before_writing(client: Any, services: Services) -> None:
    before = count(services, "DocumentReference")
    r = client.post("/fhir", json=submission("900000000009999"))
    assert r.status_code == 422
    assert any("Bundle.entry[0].resource.subject" in i.get("expression", ()) for i in r.json()["issue"])
    assert count(services, "DocumentReference") == before


def test_other_transactions_are_untouched(client: Any) -> None:
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "List"},
         "resource": {"resourceType": "List", "status": "current", "mode": "working"}}]})
    assert r.status_code == 200, r.text


# ----------------------------------------------------- PDSm-for-DMP examples
def test_pdsm4dmp_td2_submission_is_accepted(client: Any) -> None:
    b = sample("Bundle-example-td2-iti65-lot-soumission.json")
    pid = patient(client, "123456789012345")
    r = client.post("/fhir", json=b)
    assert r.status_code == 200, r.text
    locs = [e["response"]["location"] for e in r.json()["entry"]]
    assert [x.split("/")[0] for x in locs] == ["List", "DocumentReference", "Binary"]
    doc = client.get("/fhir/" + locs[1].split("/_history")[0]).json()
    assert doc["subject"] == {"reference": f"Patient/{pid}"}
    binary = b["entry"][2]["resource"]
    raw = client.get("/fhir/" + doc["content"][0]["attachment"]["url"], headers={"Accept": "*/*"})
    assert raw.content == base64.b64decode(binary["data"])


def _seed_doc_x(client: Any) -> str:
    """DocumentReference/doc-x-id of the samples, as it was before TD2.1 (current)."""
    old = sample("DocumentReference-doc-x-id.json")
    old["status"] = "current"
    patient(client, "123456789012345")
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "DocumentReference/doc-x-id", "resource": old,
         "request": {"method": "PUT", "url": "DocumentReference/doc-x-id"}}]})
    assert r.status_code == 200, r.text
    return "doc-x-id"


def _as_json_patch(bundle: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(bundle)
    for e in out["entry"]:
        if e["request"]["method"] == "PATCH" and e["resource"]["resourceType"] == "Parameters":
            ops = [{"op": "replace", "path": "/status", "value": "superseded"}]
            e["resource"] = {"resourceType": "Binary", "contentType": "application/json-patch+json",
                             "data": base64.b64encode(orjson.dumps(ops)).decode()}
    return out


def test_pdsm4dmp_td2_1_replacement_supersedes_doc_x(client: Any) -> None:
    b = sample("Bundle-example-td2-1-remplacement.json")
    assert errors(b) == []
    _seed_doc_x(client)
    r = client.post("/fhir", json=b)
    if r.status_code == 400 and "PATCH entries carry a Binary" in r.text:
        # The transaction processor does not take FHIRPath Patch (Parameters) yet: send the same change as JSON Patch.
        r = client.post("/fhir", json=_as_json_patch(b))
    assert r.status_code == 200, r.text
    assert client.get("/fhir/DocumentReference/doc-x-id").json()["status"] == "superseded"
    new_loc = next(e["response"]["location"] for e in r.json()["entry"]
                   if e["response"].get("location", "").startswith("DocumentReference/")
                   and not e["response"]["location"].startswith("DocumentReference/doc-x-id"))
    new = client.get("/fhir/" + new_loc.split("/_history")[0]).json()
    assert new["relatesTo"] == [{"code": "replaces", "target": {"reference": "DocumentReference/doc-x-id"}}]


def test_pdsm4dmp_td2_1_as_published(client: Any) -> None:
    """TD2.1 exactly as published: its PATCH entry is a FHIRPath Patch (Parameters)."""
    b = sample("Bundle-example-td2-1-remplacement.json")
    try:
        _seed_doc_x(client)
    except AssertionError:
        pass  # already there from the test above (then superseded: reset it)
    client.patch("/fhir/DocumentReference/doc-x-id", content=orjson.dumps(
        [{"op": "replace", "path": "/status", "value": "current"}]),
        headers={"Content-Type": "application/json-patch+json"})
    r = client.post("/fhir", json=b)
    assert r.status_code == 200, r.text
    assert client.get("/fhir/DocumentReference/doc-x-id").json()["status"] == "superseded"


def test_pdsm4dmp_documents_pass_the_document_rules() -> None:
    """The stand-alone DocumentReferences of PDSm-for-DMP satisfy the per-document rules."""
    for name in ("DocumentReference-doc-x-id.json",):
        doc = sample(name)
        doc["status"] = "current"
        b = submission()
        data = base64.b64decode("PD94bWwgdmVyc2lvbj0iMS4wIiBlbmNvZGluZz0iVVRGLTgiPz48Q2xpbmljYWxEb2N1bWVudCB4bWxucz0i"
                                "dXJuOmhsNy1vcmc6djMiLz4=")
        doc["content"][0]["attachment"]["url"] = b["entry"][2]["fullUrl"]
        b["entry"][2]["resource"]["data"] = base64.b64encode(data).decode()
        doc["subject"] = b["entry"][1]["resource"]["subject"]
        b["entry"][1]["resource"] = doc
        assert errors(b) == [], name
