"""Query planning: a parsed :class:`SearchRequest` -> one MongoDB filter on ``ix.*`` and a sort.

The document shape is ``{_id, res, v, ts, del, sp, ix}``; the ``ix`` value representation is
described in :mod:`fhir_server.search.extract`. Semantics follow https://hl7.org/fhir/R4/search.html:

* dates: the search value and the stored value are both instant ranges; ``eq`` = the stored
  range lies within the searched one, ``gt``/``lt`` = the stored range extends after/before it,
  ``ge``/``le`` = ``gt``/``lt`` or ``eq``, ``sa``/``eb`` = starts after / ends before, ``ne`` = not
  ``eq``, ``ap`` = overlaps the searched range widened by 10 % of its distance to now;
* numbers and quantities: ``eq`` uses the implicit precision of the search value (``100`` is
  [99.5, 100.5)), the other prefixes compare with the exact value; a stored Range counts by its
  low/high ends; quantities with a known UCUM unit compare in the canonical unit;
* strings: starts-with on folded values (an index range, no regex), ``:exact`` on the raw values,
  ``:contains`` with an escaped regex; token ``:text`` with an escaped word-start regex;
* ``:not`` / ``:not-in`` match resources having no value equal to / in the set, including those
  without the element; ``:missing`` is ``$exists``.

Every comparison on one value of a multi-valued parameter is inside one ``$elemMatch``, and
alternatives (``$or``) are lifted outside ``$elemMatch``, which keeps the filters valid on
every MongoDB wire server (SecantusDB does not take ``$or`` inside ``$elemMatch``).

Chained and ``_has`` clauses need other queries first: pass ``resolve`` to :func:`build_filter`,
a callable that runs the inner request(s) and returns the ``Type/id`` references of a
:class:`ChainClause` match (substituted as ``{"ix.<ref>": {"$in": refs}}``) or the ids of this
type referenced by a :class:`HasClause` match (``{"_id": {"$in": ids}}``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from fhir_server.fhir.errors import BadRequest, NotImplementedFeature
from fhir_server.search.extract import sort_field
from fhir_server.search.parser import (
    ChainClause,
    Clause,
    HasClause,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    SearchRequest,
    TokenValue,
    Value,
)
from fhir_server.search.registry import SearchParam, SearchRegistry
from fhir_server.search.values import (
    MAX_INSTANT,
    MIN_INSTANT,
    UCUM,
    DateRange,
    NumberRange,
    canonical_quantity,
)
from fhir_server.search.valuesets import ValueSets, default_value_sets

__all__ = ["Resolver", "QueryPlanner", "build_filter", "build_sort", "compartment_filter"]

Filter = dict[str, Any]
Resolver = Callable[[ChainClause | HasClause], Sequence[str]]
_TOP = "\U0010ffff"  # sorts after every other code point: v <= s < v + _TOP is "s starts with v"


def _or(conds: list[Filter]) -> Filter:
    if not conds:
        return {"_id": {"$in": []}}  # matches nothing
    return conds[0] if len(conds) == 1 else {"$or": conds}


def _starts_with(v: str) -> Filter:
    return {"$gte": v, "$lt": v + _TOP}


# ---------------------------------------------------------------------------- range semantics
# A "conjunction" is a dict of conditions on an element's ``lo`` / ``hi``; a list of them is ORed.
Conj = dict[str, dict[str, Any]]


def _date_conjs(prefix: str, r: DateRange, now: datetime) -> list[Conj]:
    pl, ph = r.lo, r.hi
    eq: Conj = {"lo": {"$gte": pl}, "hi": {"$lte": ph}}
    table: dict[str, list[Conj]] = {
        "eq": [eq],
        "ne": [{"lo": {"$lt": pl}}, {"hi": {"$gt": ph}}],
        "gt": [{"hi": {"$gt": ph}}],
        "lt": [{"lo": {"$lt": pl}}],
        "ge": [{"hi": {"$gt": ph}}, eq],
        "le": [{"lo": {"$lt": pl}}, eq],
        "sa": [{"lo": {"$gt": ph}}],
        "eb": [{"hi": {"$lt": pl}}],
    }
    if prefix == "ap":
        gap = max(abs(now - pl), abs(now - ph)) * 0.1
        lo = pl - gap if pl - MIN_INSTANT > gap else MIN_INSTANT
        hi = ph + gap if MAX_INSTANT - ph > gap else MAX_INSTANT
        return [{"lo": {"$lte": hi}, "hi": {"$gte": lo}}]
    return table[prefix]


def _number_conjs(prefix: str, n: NumberRange, lo_key: str = "lo", hi_key: str = "hi") -> list[Conj]:
    v = n.value
    if prefix == "ap":
        d = max(abs(v) * 0.1, n.hi - n.value)
        return [{lo_key: {"$lte": v + d}, hi_key: {"$gte": v - d}}]
    table: dict[str, list[Conj]] = {
        "eq": [{lo_key: {"$gte": n.lo}, hi_key: {"$lt": n.hi}}],
        "ne": [{lo_key: {"$lt": n.lo}}, {hi_key: {"$gte": n.hi}}],
        "gt": [{hi_key: {"$gt": v}}],
        "lt": [{lo_key: {"$lt": v}}],
        "ge": [{hi_key: {"$gte": v}}],
        "le": [{lo_key: {"$lte": v}}],
        "sa": [{lo_key: {"$gt": v}}],
        "eb": [{hi_key: {"$lt": v}}],
    }
    return table[prefix]


def _canonical_range(n: NumberRange, code: str) -> tuple[NumberRange, str] | None:
    c = canonical_quantity(n.value, code)
    clo, chi = canonical_quantity(n.lo, code), canonical_quantity(n.hi, code)
    if c is None or clo is None or chi is None:
        return None
    return NumberRange(c[0], clo[0], chi[0]), c[1]


def _quantity_conjs(prefix: str, q: QuantityValue) -> list[Conj]:
    if q.code is None and q.system is None:
        return _number_conjs(prefix, q.number)
    out: list[Conj] = []
    if q.system in (None, UCUM) and q.code is not None:
        canon = _canonical_range(q.number, q.code)
        if canon is not None:
            n, unit = canon
            out.extend({**c, "cu": unit} for c in _number_conjs(prefix, n, "clo", "chi"))  # type: ignore[dict-item]
    raw = _number_conjs(prefix, q.number)
    if q.system is not None:
        unit_conds: list[dict[str, Any]] = [{"s": q.system, **({"c": q.code} if q.code else {})}]
    else:
        unit_conds = [{"c": q.code}, {"u": q.code}]
    for conj, unit in itertools.product(raw, unit_conds):
        out.append({**conj, **unit})
    return out


# ---------------------------------------------------------------------------- the planner
class QueryPlanner:
    """Builds MongoDB filters and sorts. ``now`` is injectable for ``ap`` on dates (tests)."""

    def __init__(self, registry: SearchRegistry | None = None, value_sets: ValueSets | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.registry = registry
        self.value_sets = value_sets or default_value_sets()
        self.now = now or (lambda: datetime.now(UTC))

    # -------------------------------------------------------------- requests
    def filter(self, request: SearchRequest, *, resolve: Resolver | None = None,
               include_deleted: bool = False) -> Filter:
        """One filter for all the clauses of ``request`` (ANDed), current versions only."""
        parts: list[Filter] = []
        for clause in request.clauses:
            if isinstance(clause, Clause):
                parts.append(self.clause(clause))
            else:
                parts.append(self.nested(clause, resolve))
        if not include_deleted:
            parts.insert(0, {"del": False})
        if not parts:
            return {}
        return parts[0] if len(parts) == 1 else {"$and": parts}

    def nested(self, clause: ChainClause | HasClause, resolve: Resolver | None) -> Filter:
        if resolve is None:
            raise NotImplementedFeature(f"'{clause.name}' needs a search executor to resolve it",
                                        expression=clause.name)
        found = list(resolve(clause))
        if isinstance(clause, ChainClause):
            return {clause.param.field: {"$in": found}}
        return {"_id": {"$in": found}}

    def sort(self, request: SearchRequest) -> list[tuple[str, int]]:
        """``_sort`` keys as ``[(field, 1|-1), ...]`` with ``_id`` as the tie-breaker (empty when
        no ``_sort`` was asked: the executor picks its default order)."""
        keys = [(sort_field(k.param, k.descending), -1 if k.descending else 1) for k in request.sort]
        if keys and all(f != "_id" for f, _ in keys):
            keys.append(("_id", keys[-1][1]))
        return keys

    # -------------------------------------------------------------- clauses
    def clause(self, clause: Clause) -> Filter:
        p, mod, field = clause.param, clause.modifier, clause.param.field
        if mod == "missing":
            missing = bool(clause.values[0].parsed)
            if p.code in ("_id", "_lastUpdated"):
                return {"_id": {"$in": []}} if missing else {}
            return {field: {"$exists": not missing}}
        if p.type == "token" and mod in ("not", "not-in"):
            forms = self._token_forms(clause) if mod == "not" else self._expand_all(clause)
            return {field: {"$nin": sorted(forms)}}
        if p.type == "token" and mod in (None, "in"):
            forms = self._token_forms(clause) if mod is None else self._expand_all(clause)
            return {field: {"$in": sorted(forms)}}
        conds: list[Filter] = []
        for value in clause.values:
            conds.extend(self._value_conds(p, mod, value, field, clause.target_type))
        return _or(conds)

    def _token_forms(self, clause: Clause) -> set[str]:
        forms: set[str] = set()
        for v in clause.values:
            tv = v.parsed
            assert isinstance(tv, TokenValue)
            if clause.param.code == "_id":
                forms.add(tv.code or "")
            else:
                forms.add(_token_form(tv))
        return forms

    def _expand_all(self, clause: Clause) -> set[str]:
        codes: set[str] = set()
        for v in clause.values:
            expanded = self.value_sets.expand(str(v.parsed))
            if expanded is None:
                raise BadRequest(f"Unknown value set '{v.parsed}'", expression=clause.name)
            codes |= expanded
        # plain ``code`` elements (status, gender...) are stored without their implied system as ``|code``
        return codes | {"|" + c.split("|", 1)[1] for c in codes}

    def _value_conds(self, p: SearchParam, mod: str | None, value: Value, field: str,
                     target_type: str | None = None) -> list[Filter]:
        """The alternatives (ORed) matching one value, as conditions on ``field``."""
        parsed = value.parsed
        t = p.type
        if t == "string":
            assert isinstance(parsed, str)
            if mod == "exact":
                return [{f"{field}:exact": parsed}]
            if mod == "contains":
                return [{field: {"$regex": re.escape(parsed)}}]
            return [{field: {"$elemMatch": _starts_with(parsed)}}]
        if t == "token":
            if mod == "text":
                assert isinstance(parsed, str)
                return [{f"{field}:text": {"$regex": r"(?:^|\s)" + re.escape(parsed)}}]
            if mod == "of-type":
                assert isinstance(parsed, OfTypeValue)
                return [{f"{field}:of-type": f"{parsed.type_system}|{parsed.type_code}|{parsed.value}"}]
            assert isinstance(parsed, TokenValue)
            return [{field: parsed.code if p.code == "_id" else _token_form(parsed)}]
        if t == "reference":
            if mod == "identifier":
                assert isinstance(parsed, TokenValue)
                return [{f"{field}:identifier": _token_form(parsed)}]
            assert isinstance(parsed, ReferenceValue)
            return [{field: {"$in": _reference_forms(parsed, p, target_type)}}]
        if t == "uri":
            assert isinstance(parsed, str)
            if mod == "below":
                return [{field: parsed}, {field: {"$elemMatch": _starts_with(parsed.rstrip("/") + "/")}}]
            if mod == "above":
                return [{field: {"$in": _uri_ancestors(parsed)}}]
            return [{field: parsed}]
        if t == "date":
            assert isinstance(parsed, DateRange)
            conjs = _date_conjs(value.prefix, parsed, self.now())
            if field == "ts":  # one instant per document: lo = hi = ts
                return [{"ts": _merge_scalar(c)} for c in conjs]
            return [{field: {"$elemMatch": c}} for c in conjs]
        if t == "number":
            assert isinstance(parsed, NumberRange)
            return [{field: {"$elemMatch": c}} for c in _number_conjs(value.prefix, parsed)]
        if t == "quantity":
            assert isinstance(parsed, QuantityValue)
            return [{field: {"$elemMatch": c}} for c in _quantity_conjs(value.prefix, parsed)]
        if t == "composite":
            return self._composite_conds(p, value, field)
        raise BadRequest(f"Parameter type {t} is not searchable", expression=p.code)

    def _composite_conds(self, p: SearchParam, value: Value, field: str) -> list[Filter]:
        per_component: list[list[Filter]] = []
        for i, (comp, part) in enumerate(zip(p.components, value.parsed, strict=True)):
            sub = SearchParam(comp.code, p.base, comp.type, comp.expression)
            conds = self._value_conds(sub, None, part, f"c{i}")
            per_component.append(conds)
        out: list[Filter] = []
        for combo in itertools.product(*per_component):
            merged: Filter = {}
            for cond in combo:
                merged.update(cond)
            out.append({field: {"$elemMatch": merged}})
        return out


def _token_form(tv: TokenValue) -> str:
    if tv.system is None:
        return tv.code or ""
    if tv.code is None:
        return f"{tv.system}|"
    return f"{tv.system}|{tv.code}"


def _reference_forms(ref: ReferenceValue, p: SearchParam, target_type: str | None) -> list[str]:
    if ref.url is not None:
        return [ref.url]
    if ref.type is not None:
        return [f"{ref.type}/{ref.id}"]
    types = [target_type] if target_type else list(p.targets)
    return [f"{t}/{ref.id}" for t in types]


def _uri_ancestors(uri: str) -> list[str]:
    """``http://a/b/c`` -> [``http://a/b/c``, ``http://a/b``, ``http://a``] (``:above``)."""
    out = [uri]
    scheme_end = uri.find("://")
    floor = scheme_end + 3 if scheme_end >= 0 else 0
    cur = uri.rstrip("/")
    while True:
        cut = cur.rfind("/")
        if cut < floor or cut <= 0:
            break
        cur = cur[:cut]
        out.append(cur)
    return out


def _merge_scalar(conj: Conj) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for ops in conj.values():
        for op, v in ops.items():
            if op in merged:  # two bounds of the same kind: keep the tighter one
                keep_max = op in ("$gt", "$gte")
                merged[op] = max(merged[op], v) if keep_max else min(merged[op], v)
            else:
                merged[op] = v
    return merged


# ---------------------------------------------------------------------------- module-level helpers
_DEFAULT = QueryPlanner()


def build_filter(request: SearchRequest, *, resolve: Resolver | None = None,
                 value_sets: ValueSets | None = None, include_deleted: bool = False) -> Filter:
    """The MongoDB filter of ``request`` (see :class:`QueryPlanner`)."""
    planner = _DEFAULT if value_sets is None else QueryPlanner(value_sets=value_sets)
    return planner.filter(request, resolve=resolve, include_deleted=include_deleted)


def build_sort(request: SearchRequest) -> list[tuple[str, int]]:
    return _DEFAULT.sort(request)


def compartment_filter(registry: SearchRegistry, resource_type: str, patient_id: str) -> Filter:
    """Membership of ``resource_type`` in ``Patient/<patient_id>``'s compartment
    (``GET Patient/<id>/<type>``); the executor may also add ``{"sp": patient_id}`` to route
    the query to one shard."""
    if resource_type == "Patient":
        return {"_id": patient_id}
    codes = registry.compartment_params(resource_type)
    ref = f"Patient/{patient_id}"
    return _or([{f"ix.{c}": ref} for c in codes])

