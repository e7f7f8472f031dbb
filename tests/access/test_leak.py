"""Property test: with patient p1's token, no query ever returns anything of another patient.

A store holds four patients (observations with history and a deletion, conditions, encounters,
documents with their Binary, consents) and shared practitioners. Hypothesis generates requests:
reads, vreads, instance/type/system history, compartment searches, searches built from the
CapabilityStatement's ``searchParam``/``searchInclude``/``searchRevInclude`` of each type (so the
test exercises more as the search engine grows), chains, ``_has``, ``_include``/``_revinclude``
(``:iterate``), and follows ``next`` paging links. Every response is checked twice: no content
marker of another patient appears anywhere in it, and every resource in it belongs to p1's space
or to no space. The number of generated requests is written to ``test-artifacts/leak-report.json``.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_server.config import PROJECT_ROOT
from fhir_server.main import Services, create_app
from tests.auth.helpers import bearer, build_secure, mint, put, system_ctx

PATIENTS = ["p1", "p2", "p3", "p4"]
ME = "p1"
TYPES = ["Patient", "Observation", "Condition", "Encounter", "DocumentReference", "Binary", "Consent",
         "Practitioner", "AuditEvent", "MedicationRequest"]
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
STATS: Counter[str] = Counter()


def marker(p: str) -> str:
    return f"SECRET-{p}-MARK"


def seed(svc: Services) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {t: [] for t in TYPES}
    for p in PATIENTS:
        ref = {"reference": f"Patient/{p}"}
        put(svc, {"resourceType": "Patient", "id": p, "identifier": [{"system": "urn:ins", "value": f"ins-{p}"}],
                  "name": [{"family": f"Fam-{p}", "text": marker(p)}]})
        ids["Patient"].append(p)
        put(svc, {"resourceType": "Encounter", "id": f"enc-{p}", "status": "finished",
                  "class": {"code": "AMB"}, "subject": ref, "reasonCode": [{"text": marker(p)}]})
        ids["Encounter"].append(f"enc-{p}")
        for n in range(3):
            oid = f"obs-{p}-{n}"
            cat = "laboratory" if n % 2 == 0 else "vital-signs"
            res = {"resourceType": "Observation", "id": oid, "status": "final",
                   "identifier": [{"system": "urn:obs", "value": f"oi-{p}-{n}"}],
                   "category": [{"coding": [{"system": OBS_CAT, "code": cat}]}],
                   "code": {"coding": [{"system": "http://loinc.org", "code": f"100{n}-1"}]},
                   "subject": ref, "encounter": {"reference": f"Encounter/enc-{p}"},
                   "performer": [{"reference": "Practitioner/dr"}], "note": [{"text": marker(p)}]}
            put(svc, res)
            put(svc, {**res, "status": "amended"})  # a second version
            ids["Observation"].append(oid)
        svc.fhir.delete(system_ctx(svc), "Observation", f"obs-{p}-2")
        put(svc, {"resourceType": "Condition", "id": f"cond-{p}", "subject": ref,
                  "code": {"text": marker(p)}, "encounter": {"reference": f"Encounter/enc-{p}"}})
        ids["Condition"].append(f"cond-{p}")
        put(svc, {"resourceType": "Binary", "id": f"bin-{p}", "contentType": "text/plain",
                  "data": base64.b64encode(marker(p).encode()).decode(),
                  "securityContext": {"reference": f"DocumentReference/doc-{p}"}})
        ids["Binary"].append(f"bin-{p}")
        put(svc, {"resourceType": "DocumentReference", "id": f"doc-{p}", "status": "current", "subject": ref,
                  "description": marker(p),
                  "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/bin-{p}"}}]})
        ids["DocumentReference"].append(f"doc-{p}")
        put(svc, {"resourceType": "MedicationRequest", "id": f"mr-{p}", "status": "active", "intent": "order",
                  "subject": ref, "medicationCodeableConcept": {"text": marker(p)}})
        ids["MedicationRequest"].append(f"mr-{p}")
        put(svc, {"resourceType": "Consent", "id": f"consent-{p}", "status": "active",
                  "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                        "code": "patient-privacy"}]},
                  "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                  "patient": ref, "policyRule": {"text": marker(p)},
                  "provision": {"type": "permit", "actor": [{"role": {"text": "x"},
                                                             "reference": {"reference": "Practitioner/dr"}}]}})
        ids["Consent"].append(f"consent-{p}")
    put(svc, {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "House"}]})
    ids["Practitioner"].append("dr")
    return ids


@pytest.fixture(scope="module")
def leak_env(mongo_uri: str) -> Iterator[tuple[Any, dict[str, str], dict[str, list[str]], dict[str, Any]]]:
    from starlette.testclient import TestClient

    svc = build_secure(mongo_uri)
    ids = seed(svc)
    # other patients' activity puts AuditEvents in their spaces
    token = mint(svc, kind="patient", scope="patient/*.rs openid fhirUser", patient=ME, fhir_user=f"Patient/{ME}",
                 sub="p1-user")
    with TestClient(create_app(svc.settings, svc), base_url="http://testserver") as client:
        for p in PATIENTS[1:]:
            other = bearer(mint(svc, kind="patient", scope="patient/*.rs", patient=p, fhir_user=f"Patient/{p}"))
            client.get(f"/fhir/Observation/obs-{p}-0", headers=other)
            client.get("/fhir/Observation", headers=other)
        cap = client.get("/fhir/metadata").json()
        yield client, bearer(token), ids, cap
    report = {"generated_requests": STATS["requests"], "followed_next_links": STATS["next"],
              "status_counts": {k[7:]: v for k, v in STATS.items() if k.startswith("status:")},
              "resources_checked": STATS["resources"]}
    out = PROJECT_ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "leak-report.json").write_text(json.dumps(report, indent=2))
    print(f"\nleak test: {json.dumps(report)}")
    svc.repo.drop_everything()
    svc.close()


# ------------------------------------------------------------------- checks
def owner_of(res: dict[str, Any]) -> str | None:
    rt = res.get("resourceType")
    if rt == "Patient":
        return str(res.get("id"))
    if rt == "AuditEvent":
        for e in res.get("entity", []):
            if (e.get("role") or {}).get("code") == "1":
                return str(e["what"]["reference"]).split("/")[-1]
        return None
    for key in ("subject", "patient"):
        ref = (res.get(key) or {}).get("reference", "") if isinstance(res.get(key), dict) else ""
        if ref.startswith("Patient/"):
            return ref.split("/")[1]
    sc = (res.get("securityContext") or {}).get("reference", "")
    if sc.startswith("DocumentReference/doc-"):
        return sc.rsplit("-", 1)[1]
    return None


def resources_in(body: Any) -> Iterator[dict[str, Any]]:
    if isinstance(body, dict):
        if body.get("resourceType") == "Bundle":
            for e in body.get("entry", []):
                if "resource" in e:
                    yield from resources_in(e["resource"])
        elif "resourceType" in body:
            yield body
            for c in body.get("contained", []):
                yield from resources_in(c)


def check(resp: Any) -> None:
    STATS[f"status:{resp.status_code}"] += 1
    text = resp.content.decode("utf-8", "replace")
    for p in PATIENTS[1:]:
        assert marker(p) not in text, f"{marker(p)} leaked by {resp.request.url}"
        assert marker(p) not in _maybe_b64(text), f"{marker(p)} leaked (base64) by {resp.request.url}"
    if resp.status_code != 200 or not resp.headers.get("content-type", "").startswith("application/fhir+json"):
        return
    for res in resources_in(resp.json()):
        STATS["resources"] += 1
        assert owner_of(res) in (ME, None), f"{res.get('resourceType')}/{res.get('id')} leaked by {resp.request.url}"


def _maybe_b64(text: str) -> str:
    try:
        return " ".join(base64.b64decode(tok + "==").decode("utf-8", "ignore")
                        for tok in text.replace('"', " ").split() if len(tok) > 16)
    except ValueError:
        return ""


# ------------------------------------------------------------------- strategies
def values_for(ids: dict[str, list[str]]) -> st.SearchStrategy[str]:
    refs = [f"{t}/{i}" for t, lst in ids.items() for i in lst]
    idents = [f"ins-{p}" for p in PATIENTS] + [f"oi-{p}-{n}" for p in PATIENTS for n in range(3)]
    plain = [i for lst in ids.values() for i in lst]
    misc = ["final", "amended", "laboratory", f"{OBS_CAT}|laboratory", "http://loinc.org|1000-1", "Fam-p2",
            "Fam-p1", "House", "ge2000-01-01", "AMB"]
    return st.sampled_from(refs + idents + plain + misc + [",".join(plain[:3])])


def search_params(cap: dict[str, Any], type_: str) -> tuple[list[str], list[str], list[str]]:
    for r in cap["rest"][0]["resource"]:
        if r["type"] == type_:
            names = [p["name"] for p in r.get("searchParam", [])]
            return names, r.get("searchInclude", []), r.get("searchRevInclude", [])
    return ["_id"], [], []


@st.composite
def request(draw: st.DrawFn, ids: dict[str, list[str]], cap: dict[str, Any]) -> str:
    kind = draw(st.sampled_from(["read", "vread", "history-instance", "history-type", "history-system", "search",
                                 "search", "search", "compartment"]))
    type_ = draw(st.sampled_from(TYPES))
    pool = ids.get(type_) or ["x"]
    id_ = draw(st.sampled_from(pool + ["does-not-exist"]))
    count = draw(st.integers(min_value=1, max_value=4))
    if kind == "read":
        return f"/fhir/{type_}/{id_}"
    if kind == "vread":
        return f"/fhir/{type_}/{id_}/_history/{draw(st.integers(min_value=1, max_value=3))}"
    if kind == "history-instance":
        return f"/fhir/{type_}/{id_}/_history?_count={count}"
    if kind == "history-type":
        return f"/fhir/{type_}/_history?_count={count}"
    if kind == "history-system":
        return f"/fhir/_history?_count={count}"
    if kind == "compartment":
        pid = draw(st.sampled_from(PATIENTS))
        return f"/fhir/Patient/{pid}/{draw(st.sampled_from(TYPES[1:]))}?_count={count}"
    names, includes, revincludes = search_params(cap, type_)
    params: list[tuple[str, str]] = []
    value = values_for(ids)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        shape = draw(st.sampled_from(["param", "param", "chain", "has", "include", "revinclude", "modifier"]))
        if shape == "param":
            params.append((draw(st.sampled_from(names or ["_id"])), draw(value)))
        elif shape == "modifier":
            mod = draw(st.sampled_from([":missing", ":exact", ":not", ":contains", ""]))
            params.append((draw(st.sampled_from(names or ["_id"])) + mod, draw(value)))
        elif shape == "chain":
            params.append((draw(st.sampled_from(["subject:Patient.name", "patient.identifier",
                                                 "subject.identifier", "encounter.subject"])), draw(value)))
        elif shape == "has":
            params.append((draw(st.sampled_from(["_has:Observation:subject:code", "_has:Observation:patient:_id",
                                                 "_has:Condition:subject:_id"])), draw(value)))
        elif shape == "include":
            inc = draw(st.sampled_from(includes or ["Observation:subject", "Observation:performer", "*"]))
            params.append((draw(st.sampled_from(["_include", "_include:iterate"])), inc))
        else:
            rev = draw(st.sampled_from(revincludes or ["Observation:subject", "Provenance:target",
                                                        "AuditEvent:patient"]))
            params.append((draw(st.sampled_from(["_revinclude", "_revinclude:iterate"])), rev))
    params.append(("_count", str(count)))
    return f"/fhir/{type_}?{urlencode(params)}"


@pytest.mark.parametrize("seed_index", [0])
def test_no_query_leaks_another_patient(leak_env: tuple[Any, dict[str, str], dict[str, list[str]], dict[str, Any]],
                                        seed_index: int) -> None:
    client, auth, ids, cap = leak_env

    @settings(max_examples=300, deadline=None, derandomize=False,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(request(ids, cap))
    def run(url: str) -> None:
        STATS["requests"] += 1
        resp = client.get(url, headers={**auth, "Accept": "application/fhir+json"})
        check(resp)
        hops = 0
        while resp.status_code == 200 and hops < 5:
            body = resp.json() if resp.headers.get("content-type", "").startswith("application/fhir+json") else {}
            nxt = next((lk["url"] for lk in body.get("link", []) if lk.get("relation") == "next"), None)
            if not nxt:
                break
            parts = urlsplit(nxt)
            resp = client.get(f"{parts.path}?{parts.query}", headers={**auth, "Accept": "application/fhir+json"})
            STATS["next"] += 1
            check(resp)
            hops += 1

    run()
    assert STATS["requests"] >= 300


def test_raw_binary_reads_do_not_leak(leak_env: tuple[Any, dict[str, str], dict[str, list[str]], dict[str, Any]]
                                      ) -> None:
    client, auth, _ids, _cap = leak_env
    assert client.get(f"/fhir/Binary/bin-{ME}", headers=auth).content == marker(ME).encode()
    for p in PATIENTS[1:]:
        for url in (f"/fhir/Binary/bin-{p}", f"/fhir/Binary/bin-{p}/_history/1"):
            r = client.get(url, headers=auth)
            assert r.status_code == 404 and marker(p).encode() not in r.content
