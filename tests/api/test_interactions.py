"""The RESTful interactions over HTTP: https://hl7.org/fhir/R4/http.html."""

from __future__ import annotations

import base64
from typing import Any

import pytest

FJ = "application/fhir+json"
FX = "application/fhir+xml"
H = {"Content-Type": FJ}


def patient(family: str = "Dupont", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Hélène"]}], "gender": "female",
            "birthDate": "1980-02-03", **extra}


def obs(pid: str, value: float = 72.0) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure"}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2024-05-01T10:00:00+02:00",
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                               "code": "mm[Hg]"}},
        ],
    }


def create(client: Any, res: dict[str, Any], **headers: str) -> Any:
    r = client.post(f"/fhir/{res['resourceType']}", json=res, headers={**H, **headers})
    assert r.status_code in (200, 201), r.text
    return r


def issue(r: Any) -> dict[str, Any]:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]


# ------------------------------------------------------------------ create/read
def test_create_assigns_id_and_meta(client: Any) -> None:
    r = create(client, patient(id="client-chosen"))
    assert r.status_code == 201
    body = r.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"http://testserver/fhir/Patient/{body['id']}/_history/1"
    assert "last-modified" in r.headers
    assert r.headers["content-type"].startswith(FJ)


def test_read_vread_and_missing(client: Any) -> None:
    pid = create(client, patient()).json()["id"]
    r = client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 200 and r.json()["name"][0]["given"] == ["Hélène"]
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json()["id"] == pid
    r = client.get("/fhir/Patient/does-not-exist")
    assert r.status_code == 404 and issue(r)["code"] == "not-found"
    assert client.get(f"/fhir/Patient/{pid}/_history/9").status_code == 404
    assert client.get(f"/fhir/Patient/{pid}/_history/x").status_code == 404
    r = client.get("/fhir/NotAType/1")
    assert r.status_code == 404 and issue(r)["expression"] == ["type"]
    r = client.get("/fhir/Patient/bad id!")
    assert r.status_code == 400


def test_conditional_read_headers(client: Any) -> None:
    r = create(client, patient())
    pid, etag, lm = r.json()["id"], r.headers["etag"], r.headers["last-modified"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": etag}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"7"'}).status_code == 200
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": lm}).status_code == 304
    r = client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert r.status_code == 200


# ----------------------------------------------------------------------- update
def test_update_versions_and_if_match(client: Any) -> None:
    body = create(client, patient()).json()
    pid = body["id"]
    body["gender"] = "male"
    r = client.put(f"/fhir/Patient/{pid}", json=body, headers=H)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2" and r.headers["etag"] == 'W/"2"'
    r = client.put(f"/fhir/Patient/{pid}", json=body, headers={**H, "If-Match": 'W/"1"'})
    assert r.status_code == 412 and issue(r)["expression"] == ["If-Match"]
    r = client.put(f"/fhir/Patient/{pid}", json=body, headers={**H, "If-Match": 'W/"2"'})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "3"
    r = client.put(f"/fhir/Patient/{pid}", json=body, headers={**H, "If-Match": "garbage"})
    assert r.status_code == 400


def test_update_as_create_and_id_checks(client: Any) -> None:
    r = client.put("/fhir/Patient/my-own-id", json=patient(id="my-own-id"), headers=H)
    assert r.status_code == 201 and r.json()["id"] == "my-own-id"
    r = client.put("/fhir/Patient/other", json=patient(id="my-own-id"), headers=H)
    assert r.status_code == 400 and issue(r)["expression"] == ["Patient.id"]
    r = client.put("/fhir/Patient/no-id", json=patient(), headers=H)
    assert r.status_code == 400
    r = client.put("/fhir/Observation/x1", json=patient(id="x1"), headers=H)
    assert r.status_code == 400 and issue(r)["expression"] == ["resourceType"]


# ------------------------------------------------------------------------ patch
def test_json_patch(client: Any) -> None:
    pid = create(client, patient()).json()["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "other"}, {"op": "add", "path": "/active", "value": True}]
    r = client.patch(f"/fhir/Patient/{pid}", json=ops, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "other" and r.json()["active"] is True and r.json()["meta"]["versionId"] == "2"
    r = client.patch(f"/fhir/Patient/{pid}", json=ops, headers={"Content-Type": FJ})
    assert r.status_code == 400  # FHIR JSON means a FHIRPath Patch Parameters, not a JSON Patch array
    r = client.patch(f"/fhir/Patient/{pid}", content=b"gender=male", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    bad = [{"op": "replace", "path": "/gender", "value": "dragon"}]
    r = client.patch(f"/fhir/Patient/{pid}", json=bad, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 400 and issue(r)["expression"] == ["Patient.gender"]
    missing = [{"op": "remove", "path": "/nothing"}]
    r = client.patch(f"/fhir/Patient/{pid}", json=missing, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 422
    r = client.patch(f"/fhir/Patient/{pid}", json=ops,
                     headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'})
    assert r.status_code == 412
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"


# ----------------------------------------------------------------------- delete
def test_logical_delete(client: Any) -> None:
    pid = create(client, patient()).json()["id"]
    r = client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 204
    r = client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 410 and issue(r)["code"] == "deleted"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 410
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "POST"]
    assert "resource" not in hist["entry"][0]
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204  # idempotent
    assert client.delete("/fhir/Patient/never-was").status_code == 404
    # update after delete re-creates
    r = client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers=H)
    assert r.status_code == 201 and r.json()["meta"]["versionId"] == "3"


# ---------------------------------------------------------------------- history
def test_history_paging_since_at(client: Any) -> None:
    body = create(client, patient("Histoire")).json()
    pid = body["id"]
    stamps = [body["meta"]["lastUpdated"]]
    for g in ("male", "female", "other", "unknown"):
        body["gender"] = g
        stamps.append(client.put(f"/fhir/Patient/{pid}", json=body, headers=H).json()["meta"]["lastUpdated"])
    r = client.get(f"/fhir/Patient/{pid}/_history", params={"_count": 2})
    page = r.json()
    assert page["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in page["entry"]] == ["5", "4"]
    seen = [e["resource"]["meta"]["versionId"] for e in page["entry"]]
    while nxt := next((link["url"] for link in page["link"] if link["relation"] == "next"), None):
        page = client.get(nxt.replace("http://testserver", "")).json()
        seen += [e["resource"]["meta"]["versionId"] for e in page.get("entry", [])]
    assert seen == ["5", "4", "3", "2", "1"]
    since = client.get(f"/fhir/Patient/{pid}/_history", params={"_since": stamps[3]}).json()
    assert [e["resource"]["meta"]["versionId"] for e in since["entry"]] == ["5", "4"]
    at = client.get(f"/fhir/Patient/{pid}/_history", params={"_at": stamps[2]}).json()
    assert [e["resource"]["meta"]["versionId"] for e in at["entry"]] == ["3"]
    assert client.get(f"/fhir/Patient/{pid}/_history", params={"_since": "yesterday"}).status_code == 400
    assert client.get(f"/fhir/Patient/{pid}/_history", params={"_cursor": "forged.value"}).status_code == 400
    assert client.get(f"/fhir/Patient/{pid}/_history", params={"_bogus": "1"}).status_code == 400
    type_hist = client.get("/fhir/Patient/_history", params={"_count": 3}).json()
    assert len(type_hist["entry"]) == 3 and all(e["fullUrl"].startswith("http://testserver/fhir/Patient/")
                                                for e in type_hist["entry"])
    create(client, obs(pid))
    sys_hist = client.get("/fhir/_history", params={"_count": 1}).json()
    assert sys_hist["entry"][0]["resource"]["resourceType"] == "Observation"


# ----------------------------------------------------------------- conditionals
def test_conditional_create(client: Any) -> None:
    ident = {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "280012345678901"}
    cond = "identifier=urn:oid:1.2.250.1.213.1.4.8|280012345678901"
    r1 = create(client, patient(identifier=[ident]), **{"If-None-Exist": cond})
    assert r1.status_code == 201
    r2 = create(client, patient(identifier=[ident]), **{"If-None-Exist": cond})
    assert r2.status_code == 200 and r2.json()["id"] == r1.json()["id"]
    create(client, patient(identifier=[{"system": "urn:x", "value": "dup"}]))
    create(client, patient(identifier=[{"system": "urn:x", "value": "dup"}]))
    r = client.post("/fhir/Patient", json=patient(), headers={**H, "If-None-Exist": "identifier=urn:x|dup"})
    assert r.status_code == 412


def test_conditional_update_and_delete(client: Any) -> None:
    body = patient(identifier=[{"system": "urn:cu", "value": "1"}])
    r = client.put("/fhir/Patient?identifier=urn:cu|1", json=body, headers=H)
    assert r.status_code == 201
    pid = r.json()["id"]
    r = client.put("/fhir/Patient?identifier=urn:cu|1", json={**body, "gender": "male"}, headers=H)
    assert r.status_code == 200 and r.json()["id"] == pid and r.json()["meta"]["versionId"] == "2"
    r = client.put("/fhir/Patient?identifier=urn:cu|1", json={**body, "id": "someone-else"}, headers=H)
    assert r.status_code == 400
    create(client, patient(identifier=[{"system": "urn:cu", "value": "2"}]))
    create(client, patient(identifier=[{"system": "urn:cu", "value": "2"}]))
    assert client.put("/fhir/Patient?identifier=urn:cu|2", json=body, headers=H).status_code == 412
    assert client.delete("/fhir/Patient?identifier=urn:cu|2").status_code == 412
    assert client.delete("/fhir/Patient?identifier=urn:cu|1").status_code == 204
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    assert client.delete("/fhir/Patient?identifier=urn:cu|nothing").status_code == 204
    assert client.delete("/fhir/Patient").status_code == 405


# ----------------------------------------------------------------------- Prefer
def test_prefer_return(client: Any) -> None:
    r = client.post("/fhir/Patient", json=patient(), headers={**H, "Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b"" and r.headers["location"]
    r = client.post("/fhir/Patient", json=patient(), headers={**H, "Prefer": "return=OperationOutcome"})
    assert r.status_code == 201 and r.json()["resourceType"] == "OperationOutcome"
    r = client.post("/fhir/Patient", json=patient(), headers={**H, "Prefer": "return=representation"})
    assert r.json()["resourceType"] == "Patient"


# ---------------------------------------------------------------------- formats
def test_xml_in_and_out(client: Any) -> None:
    xml = (b'<Patient xmlns="http://hl7.org/fhir"><name><family value="Lef\xc3\xa8vre"/></name>'
           b'<gender value="male"/></Patient>')
    r = client.post("/fhir/Patient", content=xml, headers={"Content-Type": FX, "Accept": FX})
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith(FX)
    assert b"Lef\xc3\xa8vre" in r.content and b'<versionId value="1"/>' in r.content
    pid = r.headers["location"].split("/")[-3]
    assert client.get(f"/fhir/Patient/{pid}").json()["name"][0]["family"] == "Lefèvre"
    r = client.get(f"/fhir/Patient/{pid}", params={"_format": "xml", "_pretty": "true"})
    assert r.headers["content-type"].startswith(FX) and b"\n  <" in r.content
    r = client.get(f"/fhir/Patient/{pid}", headers={"Accept": "application/xml"})
    assert r.headers["content-type"].startswith(FX)
    r = client.get(f"/fhir/Patient/{pid}", params={"_pretty": "true"})
    assert r.content.startswith(b"{\n  ")
    r = client.get("/fhir/Patient/nope", headers={"Accept": FX})
    assert r.status_code == 404 and b"<OperationOutcome" in r.content


def test_negotiation_errors(client: Any) -> None:
    r = client.get("/fhir/metadata", headers={"Accept": "text/csv"})
    assert r.status_code == 406 and issue(r)["code"] == "not-supported"
    r = client.get("/fhir/metadata", params={"_format": "turtle"})
    assert r.status_code == 406
    r = client.post("/fhir/Patient", content=b"name=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = client.get("/fhir/metadata", headers={"Accept": "text/html, application/fhir+xml;q=0.9"})
    assert r.status_code == 200 and r.headers["content-type"].startswith(FX)


# ------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("body", "expression"),
    [
        (b'{"resourceType": "Patient", "name": [', "Resource"),
        (b'["not", "an", "object"]', "Resource"),
        (b'{"resourceType": "Patient", "foo": 1}', "Patient.foo"),
        (b'{"resourceType": "Patient", "gender": "dragon"}', "Patient.gender"),
        (b'{"resourceType": "Patient", "name": []}', "Patient.name"),
        (b'{"resourceType": "Patient", "name": [{}]}', "Patient.name[0]"),
        (b'{"resourceType": "Patient", "birthDate": "2020-13-45"}', "Patient.birthDate"),
        (b'{"resourceType": "Patient", "active": "yes"}', "Patient.active"),
        (b'{"resourceType": "Patient", "managingOrganization": {"reference": "Nope/1"}}',
         "Patient.managingOrganization.reference"),
        (b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}}', "resourceType"),
    ],
)
def test_invalid_resources(client: Any, body: bytes, expression: str) -> None:
    r = client.post("/fhir/Patient", content=body, headers=H)
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    assert any(expression in i.get("expression", []) for i in out["issue"]), out


def test_nothing_half_written_on_invalid(client: Any) -> None:
    before = client.get("/fhir/_history", params={"_count": 1}).json()
    client.post("/fhir/Patient", content=b'{"resourceType": "Patient", "gender": "dragon"}', headers=H)
    after = client.get("/fhir/_history", params={"_count": 1}).json()
    assert before.get("entry", [None])[0] == after.get("entry", [None])[0]


@pytest.mark.parametrize(
    "xml",
    [
        b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>',
        b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "http://127.0.0.1:1/evil">]>'
        b'<Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>',
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><Patient xmlns="http://hl7.org/fhir">'
        b'<name><family value="&lol3;"/></name></Patient>',
        b"<Patient xmlns='http://hl7.org/fhir'><name><family value='x'/></name>",
        b"<Patient xmlns='urn:not-fhir'/>",
        b"<Nonsense xmlns='http://hl7.org/fhir'/>",
    ],
)
def test_hostile_or_bad_xml(client: Any, xml: bytes) -> None:
    r = client.post("/fhir/Patient", content=xml, headers={"Content-Type": FX})
    assert r.status_code == 400, r.text
    assert b"root:" not in r.content


def test_method_not_allowed_and_unknown_route(client: Any) -> None:
    r = client.post("/fhir/Patient/123")
    assert r.status_code == 405 and issue(r)["code"] == "not-supported"
    r = client.get("/fhir/Patient/1/2/3/4")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_unexpected_error_has_correlation_id(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    svc = client.app.state.services
    client = TestClient(client.app, raise_server_exceptions=False)

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(svc.fhir, "read", boom)
    r = client.get("/fhir/Patient/x")
    assert r.status_code == 500
    out = issue(r)
    assert "secret internals" not in r.text and "Traceback" not in r.text
    assert r.headers["x-correlation-id"] in out["diagnostics"]


# ----------------------------------------------------------------------- binary
def test_binary_raw_and_fhir(client: Any) -> None:
    pdf = b"%PDF-1.4 small file\x00\x01\x02"
    r = client.post("/fhir/Binary", content=pdf, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    raw = client.get(f"/fhir/Binary/{bid}", headers={"Accept": "*/*"})
    assert raw.content == pdf and raw.headers["content-type"].startswith("application/pdf")
    assert raw.headers["etag"] == 'W/"1"'
    fhir = client.get(f"/fhir/Binary/{bid}", headers={"Accept": FJ}).json()
    assert base64.b64decode(fhir["data"]) == pdf and fhir["contentType"] == "application/pdf"


def test_large_binary_goes_to_gridfs_and_streams(client: Any, services: Any) -> None:
    blob = bytes(range(256)) * (6 * 1024)  # 1.5 MB
    body = {"resourceType": "Binary", "contentType": "application/octet-stream",
            "data": base64.b64encode(blob).decode()}
    r = client.post("/fhir/Binary", json=body, headers={**H, "Prefer": "return=minimal"})
    assert r.status_code == 201
    bid = r.headers["location"].split("/")[-3]
    doc = services.repo.db["Binary"].find_one({"_id": bid})
    assert doc["blob"] and "data" not in doc["res"]
    raw = client.get(f"/fhir/Binary/{bid}")
    assert raw.content == blob and raw.headers["content-length"] == str(len(blob))
    fhir = client.get(f"/fhir/Binary/{bid}", params={"_format": "json"}).json()
    assert base64.b64decode(fhir["data"]) == blob


# --------------------------------------------------------------------- metadata
def test_capability_statement(client: Any) -> None:
    cs = client.get("/fhir/metadata").json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in cs["rest"][0]["resource"]}
    assert {"Patient", "Observation", "DocumentReference", "Binary"} <= types
    pat = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"read", "vread", "update", "patch", "delete", "create", "history-instance"} <= {
        i["code"] for i in pat["interaction"]}
    xml = client.get("/fhir/metadata", params={"_format": "xml"})
    assert xml.status_code == 200 and b"<CapabilityStatement" in xml.content


def test_lost_compare_and_set_is_409(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer whose compare-and-set loses (the version moved under it) gets 409, and nothing is written."""
    body = create(client, patient()).json()
    pid = body["id"]
    client.put(f"/fhir/Patient/{pid}", json=body, headers=H)
    repo = client.app.state.services.repo
    real = repo.current

    def stale(type_: str, id_: str, tx: Any = None) -> Any:
        cur = real(type_, id_, tx)
        return type(cur)(cur.type, cur.id, 1, cur.last_updated, cur.deleted, cur.resource, cur.owner)

    monkeypatch.setattr(repo, "current", stale)
    r = client.put(f"/fhir/Patient/{pid}", json=body, headers=H)
    assert r.status_code == 409 and issue(r)["code"] == "conflict"
    monkeypatch.undo()
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"
