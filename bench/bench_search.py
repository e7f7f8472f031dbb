"""Search latency and ingest throughput vs the raw driver, at growing database sizes, in one run.

    .venv/bin/python bench/bench_search.py [--sizes 10000,100000] [--clients 4] [--n 100] [--explain]

Starts SecantusDB (or uses MONGODB_URI) and the FHIR server as a real uvicorn process
(auth off), then for each size:

* ingest: the records of ``bench/datagen.py`` as transaction Bundles (``POST /fhir``) from
  ``--clients`` concurrent clients until the database holds that many resources, in
  resources/s; the baseline is pymongo ``insert_many`` of the very documents the server
  stored (same JSON, same ``{_id, res, v, ts, del, sp, ix}`` shape, same indexes) into a
  sibling database of the same MongoDB wire server, with the same concurrency;
* search: the typical queries of a record over HTTP, latency p50/p95/p99 with one client
  and throughput with ``--clients``; the baseline is the same question asked by hand with
  pymongo on the server's own collections (so both see the same data and indexes), written
  the way the executor stores and queries ``ix`` (see ``fhir_server/search/extract.py``).
  Before timing, each query is run a few times both ways and the matched (and included)
  ids are compared: the ``same`` column says whether they agreed.

``--explain`` prints, for each query, the index the server's own filter (planned by
``QueryPlanner`` exactly as the executor does) and the hand-written one use, and how many
keys and documents they examine.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from pymongo import DESCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ServerProcess, pct, start_engine  # noqa: E402
from bench.datagen import records  # noqa: E402
from fhir_server.search.parser import ChainClause, HasClause, parse_search  # noqa: E402
from fhir_server.search.registry import default_registry  # noqa: E402
from fhir_server.search.values import fold  # noqa: E402
from fhir_server.store.query import QueryPlanner  # noqa: E402
from fhir_server.store.repository import HISTORY, flatten_and  # noqa: E402

H = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
LOINC = "http://loinc.org"
WEIGHT = f"{LOINC}|29463-7"
DIABETES = "http://snomed.info/sct|44054006"
INS = "urn:oid:1.2.250.1.213.1.4.8"
TOP = "\U0010ffff"
D2020 = datetime(2020, 1, 1, tzinfo=UTC)
D2025 = datetime(2025, 1, 1, tzinfo=UTC)
NEWEST = [("ts", DESCENDING), ("_id", DESCENDING)]
NAMES = ["hélène", "HELENE", "zoé", "jérôme", "lefèvre", "léger", "françois", "chloé"]
FAMILIES = ["Lefèvre", "Dubois", "Müller", "Martin", "Léger", "Fontaine", "Gaël", "Girard"]
Doc = dict[str, Any]


# ----------------------------------------------------------------------------- measuring
@dataclass
class Timing:
    lat: list[float] = field(default_factory=list)
    ops: float = 0.0

    @property
    def p50(self) -> float:
        return pct(self.lat, 50)

    @property
    def p95(self) -> float:
        return pct(self.lat, 95)

    @property
    def p99(self) -> float:
        return pct(self.lat, 99)


def measure(fn: Callable[[int], object], n: int, clients: int, budget: float) -> Timing:
    """Latencies of up to ``n`` sequential calls, then throughput of up to ``n`` calls from ``clients``
    threads; each phase stops early (after at least 3 calls) once ``budget`` seconds are spent, so a
    pathologically slow query still finishes. ``clients=0``: latencies only."""
    out = Timing()
    deadline = time.perf_counter() + budget
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.lat.append(time.perf_counter() - t)
        if i >= 2 and t > deadline:
            break
    if clients <= 0:
        return out
    lock = threading.Lock()
    state = {"next": 0}
    deadline = time.perf_counter() + budget

    def worker() -> None:
        while True:
            with lock:
                i = state["next"]
                if i >= n or (i >= 3 and time.perf_counter() > deadline):
                    return
                state["next"] = i + 1
            fn(i)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.ops = state["next"] / (time.perf_counter() - t0)
    return out


# ----------------------------------------------------------------------------- processes
# ----------------------------------------------------------------------------- ingest
@dataclass
class IngestRow:
    size: int
    resources: int
    bundles: int
    http_s: float
    raw_s: float


class Loader:
    """Feeds the datagen records to the server, in steps, and replays them raw for the baseline."""

    def __init__(self, http: httpx.Client, base: str, db: Database[Doc], raw: Database[Doc], clients: int,
                 seed: int, obs: int, upper_every: int) -> None:
        self.http = http
        self.base = base
        self.db = db
        self.raw = raw
        self.clients = clients
        self.source: Iterator[dict[str, Any]] = records(seed, obs, upper_every=upper_every)
        self.total = 0
        self.retries = 0
        self.raw_error = ""

    def _post(self, bundle: dict[str, Any]) -> list[tuple[str, str]]:
        r = self.http.post(self.base, content=orjson.dumps(bundle))
        if r.status_code != 200:
            raise RuntimeError(f"transaction refused: {r.status_code} {r.text[:500]}")
        out = []
        for e in r.json()["entry"]:
            t, rid = e["response"]["location"].split("/")[:2]
            out.append((t, rid))
        return out

    def grow_to(self, size: int) -> IngestRow:
        batch: list[dict[str, Any]] = []
        n = self.total
        while n < size:
            b = next(self.source)
            batch.append(b)
            n += len(b["entry"])
        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.clients) as pool:
            created = list(pool.map(self._post, batch))
        http_s = time.perf_counter() - t0
        count = sum(len(c) for c in created)
        self.total += count
        raw_s = self._raw_replay(created)
        return IngestRow(size, count, len(batch), http_s, raw_s)

    def _raw_replay(self, created: list[list[tuple[str, str]]]) -> float:
        """insert_many of the documents the server wrote (current versions and their history rows),
        bundle by bundle and collection by collection, with the same concurrency."""
        by_type: dict[str, list[str]] = {}
        for refs in created:
            for t, rid in refs:
                by_type.setdefault(t, []).append(rid)
        stored: dict[tuple[str, str], Doc] = {}
        history: dict[tuple[str, str], Doc] = {}
        for t, ids in by_type.items():
            for i in range(0, len(ids), 1000):
                for d in self.db[t].find({"_id": {"$in": ids[i:i + 1000]}}):
                    stored[(t, d["_id"])] = d
                for d in self.db[HISTORY].find({"t": t, "rid": {"$in": ids[i:i + 1000]}}):
                    history[(t, d["rid"])] = d
            self._mirror_indexes(t)
        self._mirror_indexes(HISTORY)
        work: list[dict[str, list[Doc]]] = []
        for refs in created:
            groups: dict[str, list[Doc]] = {}
            for t, rid in refs:
                groups.setdefault(t, []).append(stored[(t, rid)])
                if (t, rid) in history:
                    groups.setdefault(HISTORY, []).append(history[(t, rid)])
            work.append(groups)

        def insert(groups: dict[str, list[Doc]]) -> None:
            for t, docs in groups.items():
                for attempt in range(4):  # SecantusDB now and then answers "internal server error"
                    try:
                        self.raw[t].insert_many(docs, ordered=False)
                        break
                    except BulkWriteError as exc:  # a retry after a partial insert: skip the duplicates
                        if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                            raise
                        break
                    except PyMongoError:
                        if attempt == 3:
                            raise
                        self.retries += 1
                        time.sleep(0.5)

        t0 = time.perf_counter()
        try:
            with ThreadPoolExecutor(self.clients) as pool:
                list(pool.map(insert, work))
        except PyMongoError as exc:  # report it, keep the search part of the run
            self.raw_error = f"{type(exc).__name__}: {str(exc)[:120]}"
            print(f"raw insert_many failed: {self.raw_error}", flush=True)
            return float("nan")
        return time.perf_counter() - t0

    def _mirror_indexes(self, t: str) -> None:
        have = set(self.raw[t].index_information())
        for name, info in self.db[t].index_information().items():
            if name != "_id_" and name not in have:
                self.raw[t].create_index(list(info["key"]), name=name)


# ----------------------------------------------------------------------------- queries
@dataclass
class Query:
    name: str
    type: str
    params: Callable[[int], list[tuple[str, str]]]
    raw: Callable[[int], tuple[list[str], list[str]]]  # (match ids, included ids)
    explain: Callable[[int], tuple[str, Doc, list[tuple[str, int]]]] | None = None  # the raw main find


@dataclass
class Sample:
    patients: list[str]  # patient ids with a weight observation
    docrefs: list[tuple[str, str]]  # (patient id, a DocumentReference type token it has)
    identifiers: list[str]  # INS values


def sample(db: Database[Doc], seed: int, k: int = 50) -> Sample:
    rng = random.Random(seed)
    weights = [d["ix"]["subject"][0] for d in db["Observation"].find(
        {"del": False, "ix.code": WEIGHT}, {"ix.subject": 1}).limit(5000)]
    pats = sorted({r.split("/", 1)[1] for r in weights})
    docs = [(d["ix"]["subject"][0].split("/", 1)[1], next(c for c in d["ix"]["type"] if c.startswith(LOINC + "|")))
            for d in db["DocumentReference"].find({"del": False}, {"ix.subject": 1, "ix.type": 1}).limit(5000)]
    ins = sorted(v.split("|", 1)[1] for d in db["Patient"].find({"del": False}, {"ix.identifier": 1}).limit(5000)
                 for v in d["ix"]["identifier"] if v.startswith(INS + "|") and v != INS + "|")
    return Sample(rng.sample(pats, min(k, len(pats))), rng.sample(docs, min(k, len(docs))),
                  rng.sample(ins, min(k, len(ins))))


def ids(docs: Iterator[Doc] | list[Doc]) -> list[str]:
    return [d["_id"] for d in docs]


def queries(db: Database[Doc], s: Sample) -> list[Query]:
    obs, pat, doc, cond = db["Observation"], db["Patient"], db["DocumentReference"], db["Condition"]
    proj = {"res": 1, "ts": 1}

    def pid(i: int) -> str:
        return s.patients[i % len(s.patients)]

    def weight_filter(i: int) -> Doc:
        return {"del": False, "ix.subject": f"Patient/{pid(i)}", "ix.code": WEIGHT,
                "ix.date": {"$all": [{"$elemMatch": {"hi": {"$gte": D2020}}}, {"$elemMatch": {"lo": {"$lt": D2025}}}]}}

    date_sort = [("ix._sort_date.1", DESCENDING), ("_id", DESCENDING)]

    def weight_params(i: int, sort: bool = True) -> list[tuple[str, str]]:
        return [("subject", f"Patient/{pid(i)}"), ("code", WEIGHT), ("date", "ge2020-01-01"),
                ("date", "lt2025-01-01"), *([("_sort", "-date")] if sort else [])]

    def raw_weight(i: int) -> tuple[list[str], list[str]]:
        return ids(obs.find(weight_filter(i), proj).sort(date_sort).limit(21)), []

    def raw_weight_include(i: int) -> tuple[list[str], list[str]]:
        page = list(obs.find(weight_filter(i), {**proj, "ix.subject": 1}).sort(NEWEST).limit(21))
        refs = {r.split("/", 1)[1] for d in page[:20] for r in d["ix"].get("subject", []) if r.startswith("Patient/")}
        return ids(page), ids(pat.find({"_id": {"$in": sorted(refs)}, "del": False}, proj))

    def docref_filter(i: int) -> Doc:
        p, t = s.docrefs[i % len(s.docrefs)]
        return {"del": False, "ix.subject": f"Patient/{p}", "ix.type": t}

    def name_of(i: int) -> str:
        return NAMES[i % len(NAMES)]

    def name_filter(i: int) -> Doc:
        v = fold(name_of(i))
        return {"del": False, "ix.name": {"$elemMatch": {"$gte": v, "$lt": v + TOP}}}

    def raw_revinclude(i: int) -> tuple[list[str], list[str]]:
        m = ids(pat.find({"_id": pid(i), "del": False}, proj))
        return m, ids(obs.find({"del": False, "ix.subject": {"$in": [f"Patient/{pid(i)}"]}}, proj).limit(1001))

    def family_of(i: int) -> str:
        return FAMILIES[i % len(FAMILIES)]

    def chain_filter(i: int) -> Doc:
        v = fold(family_of(i))
        pids = ids(pat.find({"del": False, "ix.name": {"$elemMatch": {"$gte": v, "$lt": v + TOP}}},
                            {"_id": 1}).limit(1001))
        return {"del": False, "ix.subject": {"$in": [f"Patient/{p}" for p in pids]}, "ix.code": WEIGHT}

    def has_filter(i: int) -> Doc:
        subjects = {r.split("/", 1)[1] for d in cond.find({"del": False, "ix.code": DIABETES},
                                                          {"ix.subject": 1}).limit(1001)
                    for r in d["ix"].get("subject", []) if r.startswith("Patient/")}
        return {"del": False, "_id": {"$in": sorted(subjects)}}

    def ins_filter(i: int) -> Doc:
        return {"del": False, "ix.identifier": f"{INS}|{s.identifiers[i % len(s.identifiers)]}"}

    def newest(coll: Any, flt: Callable[[int], Doc]) -> Callable[[int], tuple[list[str], list[str]]]:
        return lambda i: (ids(coll.find(flt(i), proj).sort(NEWEST).limit(21)), [])

    return [
        Query("Observation subject+code+date, _sort=-date", "Observation", weight_params, raw_weight,
              lambda i: ("Observation", weight_filter(i), date_sort)),
        Query("DocumentReference subject+type", "DocumentReference",
              lambda i: [("subject", f"Patient/{s.docrefs[i % len(s.docrefs)][0]}"),
                         ("type", s.docrefs[i % len(s.docrefs)][1])],
              newest(doc, docref_filter), lambda i: ("DocumentReference", docref_filter(i), NEWEST)),
        Query("Patient name (accents, case)", "Patient", lambda i: [("name", name_of(i))],
              newest(pat, name_filter), lambda i: ("Patient", name_filter(i), NEWEST)),
        Query("Patient identifier (INS)", "Patient",
              lambda i: [("identifier", f"{INS}|{s.identifiers[i % len(s.identifiers)]}")],
              newest(pat, ins_filter), lambda i: ("Patient", ins_filter(i), NEWEST)),
        # without _sort: _include + _sort on a date answers 500 (the executor projects both
        # ix._sort_date and ix: "Path collision at ix"), see tests/search/test_clients.py
        Query("Observation subject+code+date _include=subject", "Observation",
              lambda i: [*weight_params(i, sort=False), ("_include", "Observation:subject")], raw_weight_include,
              lambda i: ("Observation", weight_filter(i), NEWEST)),
        Query("Patient _id + _revinclude Obs", "Patient",
              lambda i: [("_id", pid(i)), ("_revinclude", "Observation:subject")], raw_revinclude,
              lambda i: ("Observation", {"del": False, "ix.subject": {"$in": [f"Patient/{pid(i)}"]}}, [])),
        Query("Observation chain subject:Patient.name", "Observation",
              lambda i: [("subject:Patient.name", family_of(i)), ("code", WEIGHT)],
              newest(obs, chain_filter), lambda i: ("Observation", chain_filter(i), NEWEST)),
        Query("Patient _has:Condition:subject:code", "Patient",
              lambda i: [("_has:Condition:subject:code", DIABETES)],
              newest(pat, has_filter), lambda i: ("Patient", has_filter(i), NEWEST)),
    ]


def server_call(http: httpx.Client, base: str, q: Query) -> Callable[[int], tuple[list[str], list[str]]]:
    def call(i: int) -> tuple[list[str], list[str]]:
        r = http.get(f"{base}/{q.type}", params=q.params(i))
        if r.status_code != 200:
            raise RuntimeError(f"{q.name}: {r.status_code} {r.text[:500]}")
        b = r.json()
        m = [e["resource"]["id"] for e in b.get("entry", []) if e["search"]["mode"] == "match"]
        inc = [e["resource"]["id"] for e in b.get("entry", []) if e["search"]["mode"] == "include"]
        return m, inc
    return call


class Planned:
    """The server's own page query, planned by ``QueryPlanner`` exactly as the executor plans it
    (chains and ``_has`` resolved first, the same sort, limit and projection) and flattened as the
    store flattens it (``flatten_and``), run with pymongo: what the database costs for the
    server's filter shape, without HTTP and the rest."""

    def __init__(self, db: Database[Doc], base: str) -> None:
        self.db = db
        self.base = base
        self.registry = default_registry()
        self.planner = QueryPlanner(self.registry)

    def _resolve(self, clause: ChainClause | HasClause) -> list[str]:
        if isinstance(clause, ChainClause):
            out = []
            for inner in clause.inner:
                assert inner.resource_type is not None
                flt = flatten_and(self.planner.filter(inner, resolve=self._resolve))
                out += [f"{inner.resource_type}/{d['_id']}"
                        for d in self.db[inner.resource_type].find(flt, {"_id": 1}).limit(1001)]
            return out
        flt = flatten_and(self.planner.filter(clause.inner, resolve=self._resolve))
        refs = [r for d in self.db[clause.resource_type].find(flt, {clause.param.field: 1}).limit(1001)
                for r in d.get("ix", {}).get(clause.param.code, [])]
        return sorted({r.split("/", 1)[1] for r in refs if isinstance(r, str) and "/" in r})

    def plan(self, q: Query, i: int) -> tuple[Doc, list[tuple[str, int]]]:
        req = parse_search(q.type, q.params(i), registry=self.registry, base_url=self.base)
        return flatten_and(self.planner.filter(req, resolve=self._resolve)), self.planner.sort(req) or NEWEST

    def call(self, q: Query) -> Callable[[int], list[str]]:
        def run(i: int) -> list[str]:
            flt, sort = self.plan(q, i)
            proj = {"res": 1, "ts": 1, "v": 1, "sp": 1, "del": 1}
            return ids(self.db[q.type].find(flt, proj).sort(sort).limit(21))
        return run


@dataclass
class SearchRow:
    size: int
    name: str
    server: Timing
    raw: Timing
    planned: Timing
    same: bool
    hits: float  # mean matches + includes per answer


def run_searches(size: int, http: httpx.Client, base: str, db: Database[Doc], qs: list[Query], n: int,
                 clients: int, budget: float) -> list[SearchRow]:
    rows = []
    planned = Planned(db, base)
    for q in qs:
        srv, raw = server_call(http, base, q), q.raw
        same = True
        hits = 0
        for i in range(2):  # also the warm-up
            a, b = srv(i), raw(i)
            hits += len(a[0]) + len(a[1])
            # the raw pages fetch one extra row (limit 21, like the executor) to know whether there is more
            if a[0] != b[0][:20] or sorted(set(a[1])) != sorted(set(b[1]) - set(a[0])):
                same = False
        t = time.perf_counter()
        row = SearchRow(size, q.name, measure(srv, n, clients, budget), measure(raw, n, clients, budget),
                        measure(planned.call(q), n, 0, budget), same, hits / 2)
        rows.append(row)
        print(f"  {q.name:48} server p50 {row.server.p50:8.1f} ms, raw {row.raw.p50:6.1f} ms, "
              f"planned filter {row.planned.p50:8.1f} ms ({time.perf_counter() - t:.0f}s)", flush=True)
    return rows


# ----------------------------------------------------------------------------- explain
def _plan_summary(plan: Doc) -> tuple[str, int, int]:
    stats = plan.get("executionStats", {})
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("stage") in ("IXSCAN", "EXPRESS_IXSCAN") and node.get("indexName"):
                names.append(str(node["indexName"]))
            if node.get("stage") == "COLLSCAN":
                names.append("COLLSCAN")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(plan.get("queryPlanner", {}).get("winningPlan", plan.get("queryPlanner", {})))
    return (",".join(dict.fromkeys(names)) or "?", int(stats.get("totalKeysExamined", -1)),
            int(stats.get("totalDocsExamined", -1)))


def _top_ops(flt: Doc) -> str:
    """The operators at the top of a filter: SecantusDB serves a find from an index only when
    there are none (an implicit AND of fields); any top-level ``$and``/``$or`` scans the collection."""
    return ",".join(sorted(k for k in flt if k.startswith("$"))) or "-"


def explain(db: Database[Doc], base: str, qs: list[Query]) -> None:
    """The winning plans of the server's filter and of the hand-written one, with the operators at
    the top of each filter. SecantusDB's explain reports COLLSCAN for multi-field filters that it
    does serve from an index, so on SecantusDB read the ``top ops`` column and the timings."""
    planned = Planned(db, base)
    print(f"\n{'query':48} {'':6} {'top ops':9} {'index':24} {'keys':>7} {'docs':>7}")
    for q in qs:
        flt, sort = planned.plan(q, 0)
        summary = _plan_summary(db[q.type].find(flt).sort(sort).limit(21).explain())
        print(f"{q.name:48} {'server':6} {_top_ops(flt):9} {summary[0]:24} {summary[1]:7} {summary[2]:7}")
        if q.explain is not None:
            t, rflt, rsort = q.explain(0)
            cur = db[t].find(rflt).limit(21)
            if rsort:
                cur = cur.sort(rsort)
            summary = _plan_summary(cur.explain())
            print(f"{'':48} {'raw':6} {_top_ops(rflt):9} {summary[0]:24} {summary[1]:7} {summary[2]:7}")


# ----------------------------------------------------------------------------- report
def print_ingest(rows: list[IngestRow], clients: int) -> None:
    print(f"\nIngest: datagen transaction Bundles, POST /fhir, {clients} concurrent clients "
          "(raw: insert_many of the same stored documents, same indexes, same concurrency)\n")
    hdr = (f"{'step to':>8} {'bundles':>8} {'resources':>10} | {'HTTP s':>8} {'HTTP res/s':>10} | "
           f"{'raw s':>8} {'raw res/s':>10} | {'ratio':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        h, w = r.resources / r.http_s, r.resources / r.raw_s
        if r.raw_s != r.raw_s:  # NaN: the raw replay failed
            print(f"{r.size:8} {r.bundles:8} {r.resources:10} | {r.http_s:8.1f} {h:10.0f} | {'failed':>8} "
                  f"{'-':>10} | {'-':>6}")
            continue
        print(f"{r.size:8} {r.bundles:8} {r.resources:10} | {r.http_s:8.1f} {h:10.0f} | {r.raw_s:8.1f} "
              f"{w:10.0f} | {w / h:5.1f}x")
    print("\nratio = raw resources/s / HTTP resources/s (lower is better); raw writes the current version "
          "and the history row of each resource, as the server does (without its transaction)")


def print_search(rows: list[SearchRow], n: int, clients: int, budget: float) -> None:
    print(f"\nSearch: latency over up to {n} sequential requests, throughput with {clients} concurrent clients "
          f"(each phase stops after {budget:.0f}s); raw: the same question by hand with pymongo on the "
          "server's collections; planned: the server's own filter (QueryPlanner) run with pymongo\n")
    hdr = (f"{'size':>7} {'query':48} {'hits':>4} | {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>6} | "
           f"{'raw p50':>7} {'p95':>6} {'p99':>6} {'q/s':>6} | {'ratio':>7} {'same':>4} | {'planned p50':>11}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        s, w = r.server, r.raw
        print(f"{r.size:7} {r.name:48} {r.hits:4.0f} | {s.p50:8.1f} {s.p95:8.1f} {s.p99:8.1f} {s.ops:6.1f} | "
              f"{w.p50:7.1f} {w.p95:6.1f} {w.p99:6.1f} {w.ops:6.0f} | {s.p50 / w.p50:6.1f}x "
              f"{'yes' if r.same else 'NO':>4} | {r.planned.p50:11.1f}")
    print("\nratio = server p50 / raw p50 (lower is better); hits = matches + includes per answer; "
          "same = the server and the raw query returned the same ids")


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="database sizes (resources) to measure at")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--n", type=int, default=100, help="requests per query and mode")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--obs", type=int, default=40, help="observations per patient")
    ap.add_argument("--upper-every", type=int, default=10, help="every N-th patient's names in capitals")
    ap.add_argument("--budget", type=float, default=10.0, help="seconds per query and phase, at most")
    ap.add_argument("--explain", action="store_true", help="print the query plans at each size")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    uri, engine = start_engine()
    db_name = f"bench_{uuid.uuid4().hex[:8]}"
    server = ServerProcess(mongo_uri=uri, database=db_name, env={"FHIR_SERVER_SECRET_KEY": "bench"}, quiet=False)
    mc: MongoClient[Doc] = MongoClient(uri, tz_aware=True)
    started = time.perf_counter()
    try:
        server.start()
        http = httpx.Client(headers=H, timeout=300, limits=httpx.Limits(max_connections=args.clients * 2))
        db, raw = mc[db_name], mc[f"{db_name}_raw"]
        loader = Loader(http, server.base, db, raw, args.clients, args.seed, args.obs, args.upper_every)
        ingest_rows: list[IngestRow] = []
        search_rows: list[SearchRow] = []
        for size in sizes:
            t = time.perf_counter()
            ingest_rows.append(loader.grow_to(size))
            print(f"[{time.perf_counter() - started:6.0f}s] {loader.total} resources loaded "
                  f"(step {time.perf_counter() - t:.0f}s)", flush=True)
            check_names(http, server.base)
            qs = queries(db, sample(db, args.seed))
            if args.explain:
                explain(db, server.base, qs)
            t = time.perf_counter()
            search_rows += run_searches(loader.total, http, server.base, db, qs, args.n, args.clients,
                                        args.budget)
            print(f"[{time.perf_counter() - started:6.0f}s] searches at {loader.total} done "
                  f"({time.perf_counter() - t:.0f}s)", flush=True)
            engine_name = "MongoDB " + uri if engine is None else "SecantusDB (embedded process)"
            print(f"\nengine: {engine_name}; server: 1 uvicorn process; {os.cpu_count()} CPUs; "
                  f"total {time.perf_counter() - started:.0f}s")
            print_ingest(ingest_rows, args.clients)
            if loader.retries or loader.raw_error:
                print(f"(raw insert_many retried {loader.retries} times after a server error; {loader.raw_error})")
            print_search(search_rows, args.n, args.clients, args.budget)
        for name in (f"{db_name}_raw", db_name):
            try:
                mc.drop_database(name)
            except PyMongoError as exc:  # clean-up only: the figures are printed already
                print(f"(could not drop {name}: {exc.__class__.__name__})")
    finally:
        server.stop()
        mc.close()
        if engine:
            engine.stop()


def check_names(http: httpx.Client, base: str) -> None:
    """``name=hélène``, ``name=HELENE`` and ``name=helene`` find the same patients, however written."""
    found: dict[str, list[str]] = {}
    for v in ("hélène", "HELENE", "helene"):
        b = http.get(f"{base}/Patient", params={"name": v, "_count": "1000"}).json()
        found[v] = sorted(e["resource"]["id"] for e in b.get("entry", []))
    if found["hélène"] != found["HELENE"] or found["hélène"] != found["helene"]:
        raise RuntimeError("name=hélène / HELENE / helene disagree")
    print(f"name=hélène, name=HELENE, name=helene: the same {len(found['hélène'])} patients", flush=True)


if __name__ == "__main__":
    main()
