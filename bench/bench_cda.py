"""Benchmark: CDA -> FHIR conversion time per document on the shared corpora.

Compares, in the same process:
  * ``parse-only``: the lxml parse with our safe parser settings (a floor);
  * ``ours``: ``fhir_server.documents.convert_cda`` (pure conversion, no validation);
  * ``python-fhir-converter`` (PyPI, Liquid templates; a peer), when installed —
    it is NOT a project dependency: ``pip install python-fhir-converter`` to include it.

Usage: ``.venv/bin/python bench/bench_cda.py [--repeat N] [--no-peer]``
Prints median, p90, max (ms) and documents/s per corpus and engine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from lxml import etree

from fhir_server.documents.cda import convert_cda
from fhir_server.fhir.errors import FhirError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "samples"


def corpora() -> dict[str, list[Path]]:
    fr = sorted((SHARED / "cda-fr").glob("*.xml"))
    rows = json.loads((SHARED / "ccda" / "manifest.json").read_text())["rows"]
    us = sorted(SHARED / "ccda" / r["folder"] / r["file"] for r in rows if r["folder"] != "hl7-ccda-examples-fragments")
    return {"cda-fr": fr, "ccda": us}


def parse_only(data: bytes) -> object:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    return etree.fromstring(data.removeprefix(b"\xef\xbb\xbf"), parser)


def peer() -> Callable[[bytes], object] | None:
    try:
        from fhir_converter.renderers import CcdaRenderer
    except ImportError:
        print("python-fhir-converter is not installed: peer skipped (pip install python-fhir-converter)")
        return None
    renderer = CcdaRenderer()

    def run(data: bytes) -> object:
        return renderer.render_fhir_string("CCD", data.decode("utf-8-sig", errors="replace"))

    return run


def measure(fn: Callable[[bytes], object], docs: list[bytes], repeat: int) -> tuple[list[float], int]:
    times: list[float] = []
    failures = 0
    for data in docs:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            try:
                fn(data)
            except (FhirError, etree.XMLSyntaxError):
                pass  # typed rejection of a non-CDA file is a valid outcome
            except Exception:  # noqa: BLE001 - a peer failing on a document is counted, not fatal
                failures += 1
                best = float("nan")
                break
            best = min(best, time.perf_counter() - t0)
        times.append(best)
    return [t for t in times if t == t], failures


def row(name: str, corpus: str, times: list[float], failures: int) -> str:
    if not times:
        return f"{corpus:7} {name:24} {'-':>8} {'-':>8} {'-':>8} {'-':>9} {failures:>5}"
    ts = sorted(times)
    med = statistics.median(ts) * 1000
    p90 = ts[min(len(ts) - 1, int(0.9 * len(ts)))] * 1000
    mx = ts[-1] * 1000
    rate = len(ts) / sum(ts)
    return f"{corpus:7} {name:24} {med:8.2f} {p90:8.2f} {mx:8.2f} {rate:9.1f} {failures:>5}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="runs per document (best kept)")
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit("../shared/samples is absent: nothing to benchmark")
    engines: list[tuple[str, Callable[[bytes], object]]] = [
        ("parse-only (lxml)", parse_only),
        ("ours (convert_cda)", lambda d: convert_cda(d, recorded="2024-01-01T00:00:00Z")),
    ]
    if not args.no_peer:
        p = peer()
        if p is not None:
            engines.append(("python-fhir-converter", p))
    header = f"{'corpus':7} {'engine':24} {'med ms':>8} {'p90 ms':>8} {'max ms':>8} {'docs/s':>9} {'fail':>5}"
    print(header)
    print("-" * len(header))
    for corpus, paths in corpora().items():
        docs = [p.read_bytes() for p in paths]
        for name, fn in engines:
            fn(docs[0]) if name != "python-fhir-converter" else None  # warm-up (mapping load, caches)
            times, failures = measure(fn, docs, args.repeat if name != "python-fhir-converter" else 1)
            print(row(name, corpus, times, failures), flush=True)
        print(f"{corpus}: {len(docs)} documents")


if __name__ == "__main__":
    main()
