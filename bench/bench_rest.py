"""REST throughput and latency vs the raw driver, in one run against one MongoDB wire server.

    .venv/bin/python bench/bench_rest.py [--clients 8] [--n 300]

Starts SecantusDB (or uses MONGODB_URI) and the FHIR server as a real uvicorn
process, then N concurrent clients do create, read and update of realistic
resources (Patient, Observation with components, a 200 KB DocumentReference +
Binary) over HTTP. The baseline is pymongo inserting/finding/replacing the same
documents in the same server with the same concurrency. Prints a table.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ServerProcess, pct, start_engine  # noqa: E402

H = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def patient(i: int) -> dict[str, Any]:
    return {"resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": f"2{i:014d}"}],
            "name": [{"use": "official", "family": f"Lefèvre-{i}", "given": ["Hélène", "Marie"]}],
            "gender": "female", "birthDate": "1984-03-12",
            "address": [{"line": ["12 rue de la Paix"], "city": "Paris", "postalCode": "75002", "country": "FR"}],
            "telecom": [{"system": "phone", "value": "+33 1 23 45 67 89"}]}


def observation(pid: str, i: int) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": f"2024-05-{1 + i % 28:02d}T10:00:00+02:00",
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 110 + i % 30, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                   "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 70 + i % 20, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                   "code": "mm[Hg]"}}]}


PDF = base64.b64encode(os.urandom(200 * 1024)).decode()


def binary() -> dict[str, Any]:
    return {"resourceType": "Binary", "contentType": "application/pdf", "data": PDF}


def docref(pid: str, bid: str) -> dict[str, Any]:
    return {"resourceType": "DocumentReference", "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
            "subject": {"reference": f"Patient/{pid}"}, "date": "2024-05-02T10:00:00+02:00",
            "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/{bid}",
                                        "size": 200 * 1024, "title": "Compte rendu"}}]}




def run(name: str, fn: Callable[[int], None], n: int, clients: int) -> dict[str, Any]:
    lat: list[float] = []

    def one(i: int) -> None:
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    return {"name": name, "ops": n / wall, "p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    uri, engine = start_engine()
    db_name = f"bench_{uuid.uuid4().hex[:8]}"
    server = ServerProcess(mongo_uri=uri, database=db_name, env={"FHIR_SERVER_SECRET_KEY": "bench"})
    try:
        server.start()
        base = server.base
        http = httpx.Client(base_url=base, headers=H, timeout=60,
                            limits=httpx.Limits(max_connections=args.clients * 2))
        n, c = args.n, args.clients
        ids: dict[str, list[str]] = {"Patient": [], "Observation": [], "DocumentReference": []}
        rows: list[tuple[dict[str, Any], dict[str, Any]]] = []

        # ---------------- HTTP
        def c_pat(i: int) -> None:
            ids["Patient"].append(http.post("/Patient", json=patient(i)).json()["id"])

        def c_obs(i: int) -> None:
            ids["Observation"].append(http.post("/Observation", json=observation(ids["Patient"][i], i)).json()["id"])

        def c_doc(i: int) -> None:
            b = http.post("/Binary", json=binary(), headers={**H, "Prefer": "return=minimal"})
            bid = b.headers["location"].split("/")[-3]
            ids["DocumentReference"].append(
                http.post("/DocumentReference", json=docref(ids["Patient"][i], bid)).json()["id"])

        def reader(t: str) -> Callable[[int], None]:
            return lambda i: http.get(f"/{t}/{ids[t][i]}").raise_for_status()

        def updater(t: str, make: Callable[[int], dict[str, Any]]) -> Callable[[int], None]:
            def f(i: int) -> None:
                body = make(i)
                body["id"] = ids[t][i]
                http.put(f"/{t}/{ids[t][i]}", json=body).raise_for_status()
            return f

        # ---------------- raw driver
        mc: MongoClient[dict[str, Any]] = MongoClient(uri)
        raw = mc[f"{db_name}_raw"]
        raw_ids: dict[str, list[str]] = {"Patient": [], "Observation": [], "DocumentReference": []}

        def raw_create(t: str, make: Callable[[int], dict[str, Any]]) -> Callable[[int], None]:
            def f(i: int) -> None:
                rid = str(uuid.uuid4())
                raw[t].insert_one({"_id": rid, "res": make(i), "v": 1})
                raw_ids[t].append(rid)
            return f

        def raw_doc(i: int) -> None:
            bid = str(uuid.uuid4())
            raw["Binary"].insert_one({"_id": bid, "res": binary(), "v": 1})
            rid = str(uuid.uuid4())
            raw["DocumentReference"].insert_one({"_id": rid, "res": docref("p", bid), "v": 1})
            raw_ids["DocumentReference"].append(rid)

        def raw_read(t: str) -> Callable[[int], None]:
            return lambda i: raw[t].find_one({"_id": raw_ids[t][i]})

        def raw_update(t: str, make: Callable[[int], dict[str, Any]]) -> Callable[[int], None]:
            return lambda i: raw[t].replace_one({"_id": raw_ids[t][i]}, {"res": make(i), "v": 2})

        plan = [
            ("create Patient", c_pat, raw_create("Patient", patient)),
            ("create Observation", c_obs, raw_create("Observation", lambda i: observation("p", i))),
            ("create DocRef+Binary 200KB", c_doc, raw_doc),
            ("read Patient", reader("Patient"), raw_read("Patient")),
            ("read Observation", reader("Observation"), raw_read("Observation")),
            ("read DocumentReference", reader("DocumentReference"), raw_read("DocumentReference")),
            ("update Patient", updater("Patient", patient), raw_update("Patient", patient)),
            ("update Observation", updater("Observation", lambda i: observation(ids["Patient"][i], i)),
             raw_update("Observation", lambda i: observation("p", i))),
        ]
        for label, http_fn, raw_fn in plan:  # ids lists grow thread-safely (list.append); any id will do
            rows.append((run(label, http_fn, n, c), run(label, raw_fn, n, c)))

        print(f"\nREST vs raw pymongo — {c} concurrent clients, {n} ops each, engine: "
              f"{'MongoDB ' + uri if engine is None else 'SecantusDB (embedded process)'}\n")
        hdr = f"{'operation':28} {'HTTP ops/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} | " \
              f"{'raw ops/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} | {'ratio':>6}"
        print(hdr)
        print("-" * len(hdr))
        for h, r in rows:
            print(f"{h['name']:28} {h['ops']:10.0f} {h['p50']:8.1f} {h['p95']:8.1f} {h['p99']:8.1f} | "
                  f"{r['ops']:10.0f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} | "
                  f"{r['ops'] / h['ops']:5.1f}x")
        print("\nratio = raw driver throughput / REST throughput (lower is better)")
        mc.drop_database(f"{db_name}_raw")
        mc.drop_database(db_name)
    finally:
        server.stop()
        if engine:
            engine.stop()


if __name__ == "__main__":
    main()
