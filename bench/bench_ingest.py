"""End-to-end CDA ingestion rate through the HTTP API vs conversion alone, in one run.

    .venv/bin/python bench/bench_ingest.py [--clients 4] [--repeat 1]

Starts SecantusDB (or uses MONGODB_URI) and the FHIR server as a real uvicorn
process (unknown patients created, auth off), then for each corpus (``examples/cda``,
``../shared/samples/cda-fr``, the full documents of ``../shared/samples/ccda``):

* conversion only: ``convert_cda`` in this process (no database, no HTTP);
* ingest, 1 client: ``POST DocumentReference/$ingest-cda`` one document at a time,
  p50/p90 latency per document and documents per second;
* ingest, N clients: the same documents into a fresh database with N concurrent
  clients (documents per second).

Documents answered 4xx (e.g. US documents whose patient has no identifier) are
counted apart and left out of the latency figures. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ServerProcess, pct, start_engine  # noqa: E402
from fhir_server.documents.cda import convert_cda  # noqa: E402
from fhir_server.fhir.errors import FhirError  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "samples"
CDA = {"Content-Type": "application/hl7-cda+xml", "Accept": "application/fhir+json"}


def corpora() -> dict[str, list[bytes]]:
    out = {"examples/cda": [p.read_bytes() for p in sorted((ROOT / "examples" / "cda").glob("*.xml"))]}
    fr = SAMPLES / "cda-fr"
    if fr.is_dir():
        out["cda-fr"] = [p.read_bytes() for p in sorted(fr.glob("*.xml"))]
    manifest = SAMPLES / "ccda" / "manifest.json"
    if manifest.is_file():
        rows = json.loads(manifest.read_text())["rows"]
        out["ccda"] = [(SAMPLES / "ccda" / r["folder"] / r["file"]).read_bytes() for r in rows
                       if r["folder"] != "hl7-ccda-examples-fragments"]
    return out




@contextmanager
def server(uri: str) -> Iterator[str]:
    env = {"FHIR_SERVER_SECRET_KEY": "bench", "FHIR_SERVER_DOCUMENTS_CREATE_UNKNOWN_PATIENT": "true"}
    with ServerProcess(mongo_uri=uri, database=f"bench_{uuid.uuid4().hex[:8]}", env=env, quiet=False) as srv:
        yield srv.base


def convert_all(docs: list[bytes], repeat: int) -> tuple[list[float], float]:
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        for d in docs:
            t = time.perf_counter()
            try:
                convert_cda(d)
            except FhirError:
                continue
            times.append(time.perf_counter() - t)
    return times, time.perf_counter() - start


def ingest_all(base: str, docs: list[bytes], clients: int) -> tuple[list[float], Counter[int], float]:
    times: list[float] = []
    rejected: Counter[int] = Counter()
    http = httpx.Client(base_url=base, headers=CDA, timeout=120, limits=httpx.Limits(max_connections=clients * 2))

    def one(d: bytes) -> tuple[float, int]:
        t = time.perf_counter()
        r = http.post("/DocumentReference/$ingest-cda", content=d)
        return time.perf_counter() - t, r.status_code

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for elapsed, status in pool.map(one, docs):
            if status in (200, 201):
                times.append(elapsed)
            else:
                rejected[status] += 1
    wall = time.perf_counter() - start
    http.close()
    return times, rejected, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="conversion-only repetitions")
    args = ap.parse_args()
    uri, engine = start_engine()
    rows = []
    notes: list[str] = []
    try:
        sets = corpora()
        with server(uri) as base:
            seq = {name: ingest_all(base, docs, 1) for name, docs in sets.items()}
        with server(uri) as base:
            par = {name: ingest_all(base, docs, args.clients) for name, docs in sets.items()}
        for name, docs in sets.items():
            if seq[name][1]:
                notes.append(f"{name}: rejected {dict(sorted(seq[name][1].items()))} (status: documents)")
            conv, conv_wall = convert_all(docs, args.repeat)
            s_times, s_rej, s_wall = seq[name]
            p_times, _, p_wall = par[name]
            rows.append((name, len(docs), len(s_times), s_rej.total(), pct(conv, 50), pct(conv, 90),
                         len(conv) / conv_wall if conv_wall else 0.0, pct(s_times, 50), pct(s_times, 90),
                         len(s_times) / s_wall if s_wall else 0.0, len(p_times) / p_wall if p_wall else 0.0))
    finally:
        if engine is not None:
            engine.stop()
    head = (f"{'corpus':<14}{'docs':>6}{'ok':>5}{'4xx':>5} | {'convert p50':>11}{'p90':>8}{'docs/s':>8} | "
            f"{'ingest p50':>10}{'p90':>8}{'docs/s':>8} | {f'{args.clients} clients':>10}")
    print(head)
    print("-" * len(head))
    for name, n, ok, rej, c50, c90, crate, i50, i90, irate, prate in rows:
        print(f"{name:<14}{n:>6}{ok:>5}{rej:>5} | {c50:>9.1f}ms{c90:>6.1f}ms{crate:>8.1f} | "
              f"{i50:>8.1f}ms{i90:>6.1f}ms{irate:>8.1f} | {prate:>6.1f} d/s")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
