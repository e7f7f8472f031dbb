"""The search executor: parsed request -> page of matches + includes -> searchset Bundle.

https://hl7.org/fhir/R4/search.html. Every query it runs (the page, chain and
``_has`` resolution, ``_include``/``_revinclude`` with ``:iterate``, counts) goes
through the injected ``finder`` — in the server, the access :class:`Guard` — so the
access policy filters and checks all of them. This module does not import the
access layer nor pymongo: both are injected.

Paging is keyset-based: a page is ``sort keys > last row's keys`` (or ``<`` going
back), the state is in a signed cursor in the link, bound to the query it belongs
to, so any API process can serve the next page and a forged or foreign cursor is a
400. Sorts on multi-valued fields that have no scalar sort key (references, uris)
fall back to a bounded offset.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from fhir_server.fhir import models
from fhir_server.fhir.errors import BadRequest, Issue
from fhir_server.search.parser import (
    RESULT_PARAMS,
    ChainClause,
    HasClause,
    Include,
    SearchRequest,
    parse_search,
)
from fhir_server.search.registry import SearchRegistry, default_registry
from fhir_server.store.plan import get_path
from fhir_server.store.query import QueryPlanner, compartment_filter

__all__ = ["SearchExecutor", "Finder", "MAX_RESOLVED", "MAX_INCLUDED"]

#: Most ids a chain or ``_has`` may resolve to before the search is refused as too broad.
MAX_RESOLVED = 1000
#: Most resources ``_include``/``_revinclude`` add to one page.
MAX_INCLUDED = 1000
#: Rounds of ``:iterate``.
MAX_ITERATE = 4
#: Deepest offset for sorts without a keyset (reference/uri ``_sort``).
MAX_OFFSET = 10_000
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


class Finder(Protocol):
    """What the executor needs from the access gate (see ``access.guard.Guard``)."""

    def find(self, caller: Any, interaction: str, type_: str, filter_: dict[str, Any], *,
             sort: list[tuple[str, int]] | None = None, limit: int = 0,
             projection: dict[str, Any] | None = None, tx: Any = None) -> Iterator[dict[str, Any]]: ...

    def count(self, caller: Any, type_: str, filter_: dict[str, Any], *, limit: int = 0,
              max_time_ms: int = 0) -> int | None:
        """None when the count did not finish within ``max_time_ms``."""


class Codec(Protocol):
    def encode(self, payload: dict[str, Any]) -> str: ...

    def decode(self, token: str, *, param: str = "_cursor") -> dict[str, Any]: ...


@dataclass
class _Page:
    type: str
    docs: list[dict[str, Any]]


class SearchExecutor:
    """Implements the ``Searcher`` protocol of ``rest.service`` on the search engine."""

    def __init__(self, finder: Finder, cursors: Codec, *, registry: SearchRegistry | None = None,
                 planner: QueryPlanner | None = None, default_count: int = 20, max_count: int = 1000,
                 known_types: Callable[[], Iterable[str]] | None = None,
                 accurate_total_ms: int = 5000) -> None:
        self.finder = finder
        self.cursors = cursors
        self.registry = registry or default_registry()
        self.planner = planner or QueryPlanner(self.registry)
        self.default_count = default_count
        self.max_count = max_count
        self.known_types = known_types or (lambda: sorted(self.registry.by_type))
        self.accurate_total_ms = accurate_total_ms

    # ------------------------------------------------------------ conditional support
    def canonical_key(self, type_: str, params: list[tuple[str, str]]) -> str:
        """The same condition written differently (order, blanks) gives the same key."""
        kept = sorted((k, v) for k, v in params if k not in RESULT_PARAMS and k not in ("_format", "_pretty"))
        return urlencode(kept)

    def match_ids(self, ctx: Any, type_: str, params: list[tuple[str, str]], *, tx: Any = None,
                  limit: int = 2) -> list[str]:
        req = parse_search(type_, params, registry=self.registry, base_url=ctx.base_url)
        if not req.clauses:
            raise BadRequest("A conditional interaction needs at least one search criterion", expression="url")
        flt = self.planner.filter(req, resolve=self._resolver(ctx))
        docs = self.finder.find(ctx.caller, "search", type_, flt, limit=limit, projection={"_id": 1, "sp": 1,
                                                                                          "res.meta": 1}, tx=tx)
        return [d["_id"] for d in docs]

    # ------------------------------------------------------------------- search
    def search(self, ctx: Any, type_: str | None, params: list[tuple[str, str]], *,
               compartment: tuple[str, str] | None = None) -> dict[str, Any]:
        req = parse_search(type_, params, registry=self.registry, lenient=ctx.lenient, base_url=ctx.base_url)
        count = self.default_count if req.count is None else min(req.count, self.max_count)
        types = self._types(req, type_)
        base_filter = self.planner.filter(req, resolve=self._resolver(ctx))
        issues: list[Issue] = [Issue(f"Parameter '{i.name}' ignored: {i.reason}", "not-supported", "warning",
                                     (i.name,)) for i in req.ignored]
        query_key = self._query_key(type_, compartment, req, params)
        sort = self.planner.sort(req) if type_ else []
        keyset = all(_scalar_sort_field(f) for f, _ in sort)
        if not sort:
            sort = [("ts", -1), ("_id", -1)]

        cursor = self.cursors.decode(req.cursor) if req.cursor else None
        if cursor is not None and cursor.get("q") != query_key:
            raise BadRequest("The paging cursor belongs to another search", expression="_cursor")

        if req.summary == "count" or (req.count == 0 and req.total != "none"):  # _count=0: how many, no rows
            total = sum(self._count(ctx, t, self._scoped(t, base_filter, compartment), accurate=True,
                                    issues=issues) or 0 for t in types)
            return self._bundle(ctx, type_, compartment, req, params, [], total, None, None, issues, query_key)

        rows: list[tuple[str, dict[str, Any]]] = []
        more = False
        backwards = bool(cursor and cursor.get("d") == "prev")
        projection = self._projection(req, sort)
        if len(types) == 1:
            t = types[0]
            flt = self._scoped(t, base_filter, compartment)
            offset = 0
            run_sort = sort
            if cursor is not None:
                if keyset:
                    flt = {"$and": [flt, _after(sort, cursor["k"], backwards)]}
                else:
                    offset = int(cursor.get("o", 0))
            if backwards:
                run_sort = [(f, -d) for f, d in sort]
            docs = self._find_page(ctx, t, flt, run_sort, count + 1, offset, projection)
            more = len(docs) > count
            docs = docs[:count]
            if backwards:
                docs.reverse()
            rows = [(t, d) for d in docs]
        else:
            # system level: merge the per-type pages on (ts, type/id), newest first
            after = cursor["k"] if cursor else None
            merged: list[tuple[str, dict[str, Any]]] = []
            for t in types:
                flt = self._scoped(t, base_filter, compartment)
                if after is not None:
                    ts = _decode_value(after[0])
                    flt = {"$and": [flt, {"$or": [{"ts": {"$lt": ts}}, {"ts": ts, "_id": {"$lt": after[1]}}]
                                          if t == after[2] else
                                          ([{"ts": {"$lt": ts}}, {"ts": ts}] if t < after[2] else
                                           [{"ts": {"$lt": ts}}])}]}
                for d in self._find_page(ctx, t, flt, [("ts", -1), ("_id", -1)], count + 1, 0, projection):
                    merged.append((t, d))
            merged.sort(key=lambda r: (r[1]["ts"], r[0], r[1]["_id"]), reverse=True)
            more = len(merged) > count
            rows = merged[:count]
            backwards = False

        # totals: exact when cheap (everything fits in the first page), else as asked
        total: int | None = None
        if req.total in ("accurate", "estimate"):
            total = 0
            for t in types:
                n = self._count(ctx, t, self._scoped(t, base_filter, compartment),
                                accurate=req.total == "accurate", issues=issues)
                if n is None:
                    total = None
                    break
                total += n
        elif cursor is None and not more and req.total != "none":
            total = len(rows)

        next_cur = prev_cur = None
        if rows:
            first_t, first = rows[0]
            last_t, last = rows[-1]
            has_next = more if not backwards else True
            has_prev = cursor is not None and (more if backwards else True)
            if len(types) > 1:
                if has_next:
                    next_cur = {"q": query_key, "d": "next", "k": [_encode_value(last["ts"]), last["_id"], last_t]}
            elif keyset:
                if has_next:
                    next_cur = {"q": query_key, "d": "next", "k": [_encode_value(v) for v in _keys(last, sort)]}
                if has_prev:
                    prev_cur = {"q": query_key, "d": "prev", "k": [_encode_value(v) for v in _keys(first, sort)]}
            else:
                off = int(cursor.get("o", 0)) if cursor else 0
                if has_next and off + count <= MAX_OFFSET:
                    next_cur = {"q": query_key, "d": "next", "o": off + count}
                if off > 0:
                    prev_cur = {"q": query_key, "d": "next", "o": max(0, off - count)}

        included = self._includes(ctx, req, rows) if rows and (req.includes or req.revincludes) else []
        return self._bundle(ctx, type_, compartment, req, params, rows, total, next_cur, prev_cur, issues,
                            query_key, included)

    # ----------------------------------------------------------------- helpers
    def _types(self, req: SearchRequest, type_: str | None) -> list[str]:
        if type_:
            return [type_]
        if req.types:
            return sorted(set(req.types))
        return [t for t in self.known_types() if models.is_resource_type(t)]

    def _scoped(self, type_: str, base: dict[str, Any], compartment: tuple[str, str] | None) -> dict[str, Any]:
        if compartment is None:
            return base
        ctype, cid = compartment
        if ctype != "Patient":
            raise BadRequest(f"Compartment '{ctype}' is not supported (only Patient)", expression=ctype)
        if type_ != "Patient" and not self.registry.compartment_params(type_):
            raise BadRequest(f"{type_} is not in the Patient compartment", expression=type_)
        comp = compartment_filter(self.registry, type_, cid)
        return {"$and": [base, comp]} if base else comp

    def _query_key(self, type_: str | None, compartment: tuple[str, str] | None, req: SearchRequest,
                   params: list[tuple[str, str]]) -> str:
        kept = sorted((k, v) for k, v in params if k not in ("_cursor", "_format", "_pretty"))
        raw = f"{type_}|{compartment}|{urlencode(kept)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def _projection(self, req: SearchRequest, sort: list[tuple[str, int]]) -> dict[str, Any]:
        proj: dict[str, Any] = {"res": 1, "ts": 1, "v": 1, "sp": 1, "del": 1}
        if req.includes or req.revincludes:
            proj["ix"] = 1  # covers the sort keys too (projecting ix and ix.x would collide)
            return proj
        for f, _ in sort:
            if f.startswith("ix."):
                proj[_root(f)] = 1
        return proj

    def _find_page(self, ctx: Any, type_: str, flt: dict[str, Any], sort: list[tuple[str, int]], limit: int,
                   offset: int, projection: dict[str, Any]) -> list[dict[str, Any]]:
        docs = self.finder.find(ctx.caller, "search", type_, flt, sort=sort, limit=limit + offset,
                                projection=projection)
        out = list(docs)
        return out[offset:] if offset else out

    def _count(self, ctx: Any, type_: str, flt: dict[str, Any], *, accurate: bool,
               issues: list[Issue]) -> int | None:
        if accurate:
            n = self.finder.count(ctx.caller, type_, flt, max_time_ms=self.accurate_total_ms)
        else:
            n = self.finder.count(ctx.caller, type_, flt, limit=10_000, max_time_ms=200)
        if n is None:
            issues.append(Issue("The total was not computed: counting took too long", "too-costly", "warning",
                                ("_total",)))
        return n

    def _resolver(self, ctx: Any) -> Callable[[ChainClause | HasClause], Sequence[str]]:
        def resolve(clause: ChainClause | HasClause) -> Sequence[str]:
            if isinstance(clause, ChainClause):
                refs: list[str] = []
                for inner in clause.inner:
                    t = inner.resource_type
                    assert t is not None
                    flt = self.planner.filter(inner, resolve=resolve)
                    for d in self.finder.find(ctx.caller, "include", t, flt, limit=MAX_RESOLVED + 1,
                                              projection={"_id": 1, "sp": 1, "res.meta": 1}):
                        refs.append(f"{t}/{d['_id']}")
                if len(refs) > MAX_RESOLVED:
                    raise BadRequest(f"The chained criterion '{clause.name}' matches more than {MAX_RESOLVED} "
                                     "resources; make it more selective", expression=clause.name)
                return refs
            inner = clause.inner
            field = clause.param.field
            flt = self.planner.filter(inner, resolve=resolve)
            ids: set[str] = set()
            n = 0
            for d in self.finder.find(ctx.caller, "include", clause.resource_type, flt, limit=MAX_RESOLVED + 1,
                                      projection={"_id": 1, "sp": 1, "res.meta": 1, field: 1}):
                n += 1
                for ref in _values(d, field):
                    if isinstance(ref, str) and "/" in ref:
                        ids.add(ref.split("/", 1)[1])
            if n > MAX_RESOLVED:
                raise BadRequest(f"The _has criterion '{clause.name}' matches more than {MAX_RESOLVED} "
                                 "resources; make it more selective", expression=clause.name)
            return sorted(ids)

        return resolve

    # ----------------------------------------------------------------- includes
    def _includes(self, ctx: Any, req: SearchRequest,
                  rows: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        seen = {f"{t}/{d['_id']}" for t, d in rows}
        frontier = list(rows)
        out: list[tuple[str, dict[str, Any]]] = []
        first = True
        for _ in range(MAX_ITERATE + 1):
            found: list[tuple[str, dict[str, Any]]] = []
            incs = [i for i in req.includes if first or i.iterate]
            revs = [i for i in req.revincludes if first or i.iterate]
            if not incs and not revs:
                break
            for inc in incs:
                found += self._forward(ctx, inc, frontier, seen)
            for rev in revs:
                found += self._reverse(ctx, rev, frontier, seen)
            if not found:
                break
            out += found
            if len(out) > MAX_INCLUDED:
                raise BadRequest(f"_include/_revinclude would add more than {MAX_INCLUDED} resources to a page; "
                                 "use a smaller _count", expression="_include")
            frontier = found
            first = False
        return out

    def _ref_params(self, source_type: str, param: str) -> list[str]:
        if param == "*":
            return [c for c, p in self.registry.params(source_type).items() if p.type == "reference"]
        p = self.registry.get(source_type, param)
        if p is None or p.type != "reference":
            raise BadRequest(f"_include: '{source_type}:{param}' is not a reference parameter",
                             expression="_include")
        return [param]

    def _forward(self, ctx: Any, inc: Include, frontier: list[tuple[str, dict[str, Any]]],
                 seen: set[str]) -> list[tuple[str, dict[str, Any]]]:
        wanted: dict[str, set[str]] = {}
        for t, d in frontier:
            if inc.source_type not in ("*", t):
                continue
            for code in self._ref_params(t, inc.param):
                for ref in _values(d, f"ix.{code}"):
                    if not isinstance(ref, str) or "/" not in ref or ref.count("/") != 1:
                        continue
                    rt, rid = ref.split("/", 1)
                    if inc.target_type and rt != inc.target_type:
                        continue
                    if models.is_resource_type(rt) and ref not in seen:
                        wanted.setdefault(rt, set()).add(rid)
        found = []
        for rt, ids in wanted.items():
            for d in self.finder.find(ctx.caller, "include", rt, {"_id": {"$in": sorted(ids)}, "del": False},
                                      limit=MAX_INCLUDED + 1, projection={"res": 1, "ts": 1, "sp": 1, "ix": 1,
                                                                          "del": 1}):
                key = f"{rt}/{d['_id']}"
                if key not in seen:
                    seen.add(key)
                    found.append((rt, d))
        return found

    def _reverse(self, ctx: Any, rev: Include, frontier: list[tuple[str, dict[str, Any]]],
                 seen: set[str]) -> list[tuple[str, dict[str, Any]]]:
        refs = [f"{t}/{d['_id']}" for t, d in frontier if not rev.target_type or t == rev.target_type]
        if not refs:
            return []
        if rev.source_type == "*":  # every (type, reference parameter) that can point at the frontier
            targets = {t for t, _ in frontier}
            pairs = [(st, [c for c, p in self.registry.params(st).items() if p.type == "reference"
                           and (targets & set(p.targets) or "Any" in p.targets)])
                     for st in self.known_types() if st in self.registry.by_type]
        else:
            pairs = [(rev.source_type, self._ref_params(rev.source_type, rev.param))]
        found = []
        for st, codes in pairs:
            if not codes:
                continue
            flt = {"del": False, "$or": [{f"ix.{c}": {"$in": refs}} for c in codes]}
            for d in self.finder.find(ctx.caller, "include", st, flt, limit=MAX_INCLUDED + 1,
                                      projection={"res": 1, "ts": 1, "sp": 1, "ix": 1, "del": 1}):
                key = f"{st}/{d['_id']}"
                if key not in seen:
                    seen.add(key)
                    found.append((st, d))
        return found

    # ------------------------------------------------------------------ bundle
    def _bundle(self, ctx: Any, type_: str | None, compartment: tuple[str, str] | None, req: SearchRequest,
                params: list[tuple[str, str]], rows: list[tuple[str, dict[str, Any]]], total: int | None,
                next_cur: dict[str, Any] | None, prev_cur: dict[str, Any] | None, issues: list[Issue],
                query_key: str, included: list[tuple[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
        path = f"{compartment[0]}/{compartment[1]}/{type_}" if compartment else (type_ or "")
        base = f"{ctx.base_url}/{path}".rstrip("/")
        ignored = {i.name for i in req.ignored}
        applied = [(k, v) for k, v in params if k not in ("_cursor", "_format", "_pretty") and k not in ignored]
        links = [{"relation": "self", "url": f"{base}?{urlencode(params_with(applied, req.cursor))}"
                  if applied or req.cursor else base}]
        if next_cur:
            links.append({"relation": "next", "url": f"{base}?{urlencode([*applied, ('_cursor', self.cursors.encode(next_cur))])}"})
        if prev_cur:
            links.append({"relation": "previous",
                          "url": f"{base}?{urlencode([*applied, ('_cursor', self.cursors.encode(prev_cur))])}"})
        if req.cursor:
            links.append({"relation": "first", "url": f"{base}?{urlencode(applied)}" if applied else base})
        entries = [self._entry(ctx, t, d, "match", req) for t, d in rows]
        entries += [self._entry(ctx, t, d, "include", req) for t, d in included or []]
        if issues:
            entries.append({"resource": {"resourceType": "OperationOutcome", "id": str(uuid.uuid4()),
                                         "issue": [i.to_fhir() for i in issues]},
                            "search": {"mode": "outcome"}})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset"}
        if total is not None:
            bundle["total"] = total
        bundle["link"] = links
        if entries:
            bundle["entry"] = entries
        return bundle

    def _entry(self, ctx: Any, type_: str, doc: dict[str, Any], mode: str, req: SearchRequest) -> dict[str, Any]:
        res = doc["res"]
        if req.summary in ("true", "text", "data") or req.elements:
            res = subset(res, req.summary, req.elements)
        return {"fullUrl": f"{ctx.base_url}/{type_}/{doc['_id']}", "resource": res, "search": {"mode": mode}}

    # ---------------------------------------------------------- capabilities
    def capability_params(self, type_: str) -> list[dict[str, Any]]:
        out = []
        for code, p in sorted(self.registry.params(type_).items()):
            entry: dict[str, Any] = {"name": code, "type": p.type,
                                     "definition": f"http://hl7.org/fhir/SearchParameter/{p.id}"
                                     if p.id else f"urn:fhir-server:SearchParameter/{code}"}
            mods = sorted(p.modifiers)
            doc = []
            if mods:
                doc.append("modifiers: " + ", ".join(mods))
            if p.comparators:
                doc.append("comparators: " + ", ".join(p.comparators))
            if doc:
                entry["documentation"] = "; ".join(doc)
            out.append(entry)
        return out

    def capability_includes(self, type_: str) -> tuple[list[str], list[str]]:
        refs = [c for c, p in self.registry.params(type_).items() if p.type == "reference"]
        inc = ["*"] + [f"{type_}:{c}" for c in sorted(refs)] if refs else []
        rev: list[str] = []
        for other in sorted(self.registry.by_type):
            for c, p in self.registry.params(other).items():
                if p.type == "reference" and (type_ in p.targets or "Any" in p.targets):
                    rev.append(f"{other}:{c}")
        return inc, rev


def params_with(applied: list[tuple[str, str]], cursor: str | None) -> list[tuple[str, str]]:
    return [*applied, ("_cursor", cursor)] if cursor else applied


# ------------------------------------------------------------------ summaries
def _summary_fields(type_: str) -> frozenset[str]:
    return _SUMMARY_CACHE.get(type_) or _SUMMARY_CACHE.setdefault(type_, _compute_summary(type_))


_SUMMARY_CACHE: dict[str, frozenset[str]] = {}


def _compute_summary(type_: str) -> frozenset[str]:
    cls = models.model_class(type_)
    out = {"resourceType", "id", "meta"}
    for name, f in cls.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if extra.get("summary_element_property"):
            alias = f.alias or name
            out.add(alias)
            out.add(f"_{alias}")
    return frozenset(out)


def subset(res: dict[str, Any], summary: str | None, elements: tuple[str, ...]) -> dict[str, Any]:
    """``_summary`` / ``_elements`` view of a resource, tagged SUBSETTED."""
    t = res.get("resourceType", "")
    if summary == "true":
        keep = _summary_fields(t)
        out = {k: v for k, v in res.items() if k in keep}
    elif summary == "text":
        out = {k: v for k, v in res.items() if k in ("resourceType", "id", "meta", "text")}
    elif summary == "data":
        out = {k: v for k, v in res.items() if k != "text"}
    else:
        tops = {e.split(".")[0] for e in elements}
        out = {k: v for k, v in res.items() if k in ("resourceType", "id", "meta") or k in tops
               or (k.startswith("_") and k[1:] in tops)}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


# ------------------------------------------------------------------ keyset helpers
def _root(field: str) -> str:
    parts = field.split(".")
    return ".".join(parts[:2]) if parts[0] == "ix" else parts[0]


def _scalar_sort_field(field: str) -> bool:
    return field in ("ts", "_id") or (field.startswith("ix._sort_") and field[-2:] in (".0", ".1"))


def _values(doc: dict[str, Any], field: str) -> list[Any]:
    v = get_path(doc, field)
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _keys(doc: dict[str, Any], sort: list[tuple[str, int]]) -> list[Any]:
    return [get_path(doc, f) for f, _ in sort]


def _after(sort: list[tuple[str, int]], encoded: list[Any], backwards: bool) -> dict[str, Any]:
    """Rows strictly after (or before) the row whose sort keys are ``encoded``.

    Missing values sort first ascending and last descending (MongoDB's order), so
    "after a missing value" is "missing with a later tie-breaker, or present".
    """
    values = [_decode_value(v) for v in encoded]
    ors: list[dict[str, Any]] = []
    for i, (field, direction) in enumerate(sort):
        d = -direction if backwards else direction
        eq = {f: ({"$exists": False} if v is None else v) for (f, _), v in zip(sort[:i], values[:i], strict=False)}
        v = values[i]
        if v is None:
            if d > 0:  # after a missing value (first ascending): any present value
                ors.append({**eq, field: {"$exists": True}})
            continue
        ors.append({**eq, field: {"$gt" if d > 0 else "$lt": v}})
        if d < 0 and field != "_id":  # descending: missing values come after every present one
            ors.append({**eq, field: {"$exists": False}})
    return {"$or": ors} if ors else {"_id": {"$in": []}}


def _encode_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return {"$d": v.isoformat()}
    return v


def _decode_value(v: Any) -> Any:
    if isinstance(v, dict) and "$d" in v:
        return datetime.fromisoformat(v["$d"])
    return v
