"""Batch and transaction bundles: https://hl7.org/fhir/R4/http.html#transaction."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

H = {"Content-Type": "application/fhir+json"}


def tx(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(full_url: str, res: dict[str, Any], **req: Any) -> dict[str, Any]:
    return {"fullUrl": full_url, "resource": res, "request": {"method": "POST", "url": res["resourceType"], **req}}


def counts(services: Any) -> dict[str, int]:
    db = services.repo.db
    out = {name: db[name].count_documents({}) for name in db.list_collection_names()
           if not name.startswith("system.")}
    return {name: n for name, n in out.items() if n}


def test_transaction_resolves_urn_uuid_references(client: Any) -> None:
    p = "urn:uuid:11111111-1111-4111-8111-111111111111"
    b = "urn:uuid:22222222-2222-4222-8222-222222222222"
    bundle = tx(
        post(p, {"resourceType": "Patient", "name": [{"family": "Bundle"}]}),
        post("urn:uuid:33333333-3333-4333-8333-333333333333",
             {"resourceType": "Observation", "status": "final", "code": {"text": "poids"},
              "subject": {"reference": p}}),
        post(b, {"resourceType": "Binary", "contentType": "text/plain", "data": base64.b64encode(b"hi").decode()}),
        post("urn:uuid:44444444-4444-4444-8444-444444444444",
             {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": p},
              "content": [{"attachment": {"url": b, "contentType": "text/plain"}}]}),
    )
    r = client.post("/fhir", json=bundle, headers=H)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created"] * 4
    pid = out["entry"][0]["response"]["location"].split("/")[1]
    oid = out["entry"][1]["response"]["location"].split("/")[1]
    bid = out["entry"][2]["response"]["location"].split("/")[1]
    assert client.get(f"/fhir/Observation/{oid}").json()["subject"]["reference"] == f"Patient/{pid}"
    doc = client.get(out["entry"][3]["fullUrl"].replace("http://testserver", "")).json()
    assert doc["content"][0]["attachment"]["url"] == f"Binary/{bid}"


def test_transaction_is_all_or_nothing(client: Any, services: Any) -> None:
    existing = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=H).json()
    before = counts(services)
    bad = tx(
        post("urn:uuid:aaaaaaaa-1111-4111-8111-111111111111", {"resourceType": "Patient", "gender": "male"}),
        {"resource": {**existing, "gender": "female"},
         "request": {"method": "PUT", "url": f"Patient/{existing['id']}"}},
        post("urn:uuid:bbbbbbbb-1111-4111-8111-111111111111",
             {"resourceType": "Observation", "status": "not-a-status", "code": {"text": "x"}}),
    )
    r = client.post("/fhir", json=bad, headers=H)
    assert r.status_code == 400
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    assert out["issue"][0]["expression"] == ["Bundle.entry[2].resource.status"]
    assert counts(services) == before
    assert client.get(f"/fhir/Patient/{existing['id']}").json()["meta"]["versionId"] == "1"


def test_transaction_if_match_and_delete(client: Any, services: Any) -> None:
    pat = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=H).json()
    before = counts(services)
    stale = tx({"resource": pat, "request": {"method": "PUT", "url": f"Patient/{pat['id']}", "ifMatch": 'W/"9"'}},
               post("urn:uuid:cccccccc-1111-4111-8111-111111111111", {"resourceType": "Patient"}))
    r = client.post("/fhir", json=stale, headers=H)
    assert r.status_code == 412
    assert counts(services) == before
    ok = tx({"request": {"method": "DELETE", "url": f"Patient/{pat['id']}"}},
            {"request": {"method": "GET", "url": f"Patient/{pat['id']}/_history/1"}})
    r = client.post("/fhir", json=ok, headers=H)
    assert r.status_code == 200, r.text
    assert client.get(f"/fhir/Patient/{pat['id']}").status_code == 410


def test_transaction_conditional_create_and_reference(client: Any) -> None:
    ident = "urn:oid:1.2.250.1.71.4.2.1|810000000001"
    prac = {"resourceType": "Practitioner", "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1",
                                                            "value": "810000000001"}]}
    first = client.post("/fhir", json=tx(post("urn:uuid:dddddddd-1111-4111-8111-111111111111", prac,
                                              ifNoneExist=f"identifier={ident}")), headers=H).json()
    assert first["entry"][0]["response"]["status"] == "201 Created"
    pr_id = first["entry"][0]["response"]["location"].split("/")[1]
    again = tx(
        post("urn:uuid:dddddddd-1111-4111-8111-111111111111", prac, ifNoneExist=f"identifier={ident}"),
        post("urn:uuid:eeeeeeee-1111-4111-8111-111111111111",
             {"resourceType": "PractitionerRole", "practitioner": {"reference": "urn:uuid:dddddddd-1111-4111-8111-111111111111"}}),
        post("urn:uuid:ffffffff-1111-4111-8111-111111111111",
             {"resourceType": "PractitionerRole", "practitioner": {"reference": f"Practitioner?identifier={ident}"}}),
    )
    out = client.post("/fhir", json=again, headers=H).json()
    assert out["entry"][0]["response"]["status"] == "200 OK"
    assert out["entry"][0]["response"]["location"].startswith(f"Practitioner/{pr_id}/")
    for e in out["entry"][1:]:
        role = client.get(e["fullUrl"].replace("http://testserver", "")).json()
        assert role["practitioner"]["reference"] == f"Practitioner/{pr_id}"
    missing = tx(post("urn:uuid:abababab-1111-4111-8111-111111111111",
                      {"resourceType": "PractitionerRole",
                       "practitioner": {"reference": "Practitioner?identifier=urn:x|none"}}))
    assert client.post("/fhir", json=missing, headers=H).status_code == 412


def test_batch_entries_are_independent(client: Any) -> None:
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    pat = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"}, headers=H).json()
    bundle = tx(
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        post("urn:uuid:12121212-1111-4111-8111-111111111111", {"resourceType": "Patient"}),
        post("urn:uuid:13131313-1111-4111-8111-111111111111", {"resourceType": "Patient", "gender": "bad"}),
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": base64.b64encode(orjson.dumps(ops)).decode()},
         "request": {"method": "PATCH", "url": f"Patient/{pat['id']}"}},
        kind="batch")
    r = client.post("/fhir", json=bundle, headers=H)
    assert r.status_code == 200
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["404", "201 Created", "400", "200 OK"]
    assert r.json()["entry"][0]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{pat['id']}").json()["gender"] == "male"


def test_bad_bundles(client: Any) -> None:
    assert client.post("/fhir", json={"resourceType": "Bundle", "type": "collection"}, headers=H).status_code == 400
    assert client.post("/fhir", json={"resourceType": "Patient"}, headers=H).status_code == 400
    r = client.post("/fhir", json=tx({"request": {"method": "POST", "url": "Nope"}, "resource": {}}), headers=H)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.entry[0].request.url"]
    dup = tx({"resource": {"resourceType": "Patient", "id": "d1"}, "request": {"method": "PUT", "url": "Patient/d1"}},
             {"resource": {"resourceType": "Patient", "id": "d1"}, "request": {"method": "PUT", "url": "Patient/d1"}})
    assert client.post("/fhir", json=dup, headers=H).status_code == 400


def test_concurrent_transactions_on_one_resource(client: Any) -> None:
    pat = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=H).json()
    n = 8
    barrier = threading.Barrier(n)

    def run(i: int) -> int:
        barrier.wait()
        body = tx({"resource": {"resourceType": "Patient", "id": pat["id"], "name": [{"family": f"t{i}"}]},
                   "request": {"method": "PUT", "url": f"Patient/{pat['id']}"}},
                  post(f"urn:uuid:{i:08d}-1111-4111-8111-111111111111",
                       {"resourceType": "Observation", "status": "final", "code": {"text": f"t{i}"},
                        "subject": {"reference": f"Patient/{pat['id']}"}}))
        return client.post("/fhir", json=body, headers=H).status_code

    with ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(run, range(n)))
    assert set(statuses) <= {200, 409}, statuses
    wins = statuses.count(200)
    assert wins >= 1
    final = client.get(f"/fhir/Patient/{pat['id']}").json()
    assert final["meta"]["versionId"] == str(1 + wins)  # every winner's version kept, nothing lost


def test_two_conditional_creates_with_one_condition_are_one_resource(client: Any) -> None:
    prac = {"resourceType": "Practitioner", "identifier": [{"system": "urn:npi", "value": "same-npi"}]}
    a, b = "urn:uuid:5a5a5a5a-1111-4111-8111-111111111111", "urn:uuid:5b5b5b5b-1111-4111-8111-111111111111"
    bundle = tx(post(a, prac, ifNoneExist="identifier=urn:npi|same-npi"),
                post(b, prac, ifNoneExist="identifier=urn:npi|same-npi"),
                post("urn:uuid:5c5c5c5c-1111-4111-8111-111111111111",
                     {"resourceType": "PractitionerRole", "practitioner": {"reference": b}}))
    r = client.post("/fhir", json=bundle, headers=H)
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert out[0]["response"]["location"] == out[1]["response"]["location"]
    found = client.get("/fhir/Practitioner", params={"identifier": "urn:npi|same-npi"}).json()
    assert len(found["entry"]) == 1
    role = client.get(out[2]["fullUrl"].replace("http://testserver", "")).json()
    assert role["practitioner"]["reference"] == f"Practitioner/{found['entry'][0]['resource']['id']}"
