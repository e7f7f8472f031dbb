"""Running a query so that the engine can serve it from its indexes.

Some MongoDB wire servers (SecantusDB, the embedded default) serve a query from an
index only when it is a plain conjunction of top-level fields whose leading indexed
field has an equality, ``$in`` or range condition; any top-level ``$or``/``$and``, or
an ``$elemMatch`` on the indexed field, makes them read the whole collection. MongoDB
itself plans ``$or`` branches separately. This module does the same by hand, with the
same results:

1. ``flatten_and`` the filter;
2. rewrite it in disjunctive normal form: a few plain conjunctions (branches) whose
   union is exactly the original set;
3. run every branch on its own (a branch whose only handle on an index is an
   ``$elemMatch`` over scalar values first narrows by the equivalent plain range, then
   re-checks the exact condition on those ids), fetching ids and sort keys, sorted and
   limited per branch;
4. merge in Python by the sort keys (BSON order), keep ``limit``, fetch the documents.

When a branch could not use an index at all, or the normal form would be large, the
original filter runs as it is: one scan is cheaper than several.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

__all__ = ["flatten_and", "dnf", "get_path", "QueryRunner"]

Filter = dict[str, Any]
MAX_BRANCHES = 16
_SERVED_OPS = frozenset({"$eq", "$in", "$gt", "$gte", "$lt", "$lte"})
_RANGE_OPS = frozenset({"$gt", "$gte", "$lt", "$lte", "$eq", "$in"})


def flatten_and(filter_: Filter) -> Filter:
    """``{$and: [{a: 1}, {$and: [{b: 2}]}, {$or: …}]}`` -> ``{a: 1, b: 2, $or: …}``.

    Clauses whose keys collide stay in a residual ``$and``; a one-branch ``$or`` is
    its branch.
    """
    if "$or" in filter_ and len(filter_["$or"]) == 1:
        rest = {k: v for k, v in filter_.items() if k != "$or"}
        return flatten_and({"$and": [rest, filter_["$or"][0]]})
    if set(filter_) != {"$and"}:
        if "$and" not in filter_:
            return filter_
        rest = {k: v for k, v in filter_.items() if k != "$and"}
        return flatten_and({"$and": [rest, *filter_["$and"]]})
    merged: Filter = {}
    residual: list[Filter] = []
    stack = list(reversed(filter_["$and"]))
    while stack:
        part = stack.pop()
        if not part:
            continue
        if set(part) == {"$and"}:
            stack.extend(reversed(part["$and"]))
            continue
        if "$or" in part and len(part["$or"]) == 1:
            rest = {k: v for k, v in part.items() if k != "$or"}
            stack.extend(reversed([rest, part["$or"][0]]))
            continue
        if merged.keys().isdisjoint(part):
            merged.update(part)
        else:
            residual.append(part)
    if residual:
        merged["$and"] = residual if "$and" not in merged else [*merged["$and"], *residual]
    return merged


# ------------------------------------------------------------------ normal form
def _is_ops(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(k, str) and k.startswith("$") for k in v)


def _merge(a: Filter, b: Filter) -> Filter | None:
    """The conjunction of two plain filters as one plain filter, or None."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
            continue
        x = out[k]
        if x == v:
            continue
        if _is_ops(x) and _is_ops(v):
            xm = _elem_matches(x)
            vm = _elem_matches(v)
            if xm is not None and vm is not None:
                out[k] = {"$all": [{"$elemMatch": m} for m in (*xm, *vm)]}
            elif set(x).isdisjoint(v) and "$all" not in x and "$all" not in v:
                out[k] = {**x, **v}
            else:
                return None
        else:
            return None
    return out


def _elem_matches(v: Filter) -> list[Any] | None:
    if set(v) == {"$elemMatch"}:
        return [v["$elemMatch"]]
    if set(v) == {"$all"} and all(isinstance(x, dict) and set(x) == {"$elemMatch"} for x in v["$all"]):
        return [x["$elemMatch"] for x in v["$all"]]
    return None


def dnf(filter_: Filter, max_branches: int = MAX_BRANCHES) -> list[Filter] | None:
    """Plain conjunctions whose union is ``filter_`` (None: not expressible within bounds)."""
    combos: list[Filter] = [{k: v for k, v in filter_.items() if not k.startswith("$")}]
    groups: list[list[Filter]] = []
    for k, v in filter_.items():
        if k == "$or":
            alts: list[Filter] = []
            for branch in v:
                sub = dnf(flatten_and(branch), max_branches)
                if sub is None:
                    return None
                alts += sub
            groups.append(alts)
        elif k == "$and":
            for part in v:
                sub = dnf(flatten_and(part), max_branches)
                if sub is None:
                    return None
                groups.append(sub)
        elif k.startswith("$"):
            return None
    for alts in groups:
        nxt: list[Filter] = []
        for c in combos:
            for alt in alts:
                m = _merge(c, alt)
                if m is None:
                    return None
                nxt.append(m)
        combos = nxt
        if len(combos) > max_branches:
            return None
    return combos


# ------------------------------------------------------------------ serving
def _served(v: Any) -> bool:
    if not isinstance(v, dict):
        return True  # equality
    return bool(v) and set(v) <= _SERVED_OPS


def is_served(branch: Filter, leading: frozenset[str]) -> bool:
    return any(k in leading and _served(v) for k, v in branch.items())


def prefilter(branch: Filter, leading: frozenset[str]) -> Filter | None:
    """A served superset of ``branch``: an ``$elemMatch`` of ranges over scalars on an
    indexed field, written as the plain range (looser on arrays, never stricter)."""
    for k, v in branch.items():
        if k not in leading or not _is_ops(v):
            continue
        matches = _elem_matches(v)
        if not matches:
            continue
        for m in matches:
            if _is_ops(m) and set(m) <= _RANGE_OPS:
                return {k: m}
    return None


# ------------------------------------------------------------------ ordering
def get_path(doc: Any, path: str) -> Any:
    """The value at a dotted path (numeric parts index arrays); None when absent."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, list) and part.isdigit():
            i = int(part)
            cur = cur[i] if i < len(cur) else None
        elif isinstance(cur, dict):
            cur = cur.get(part)
        else:
            return None
        if cur is None:
            return None
    return cur


def _rank(v: Any) -> tuple[Any, ...]:
    """BSON comparison order (null < numbers < strings < objects < … < booleans < dates)."""
    if v is None:
        return (0, 0)
    if isinstance(v, bool):
        return (8, v)
    if isinstance(v, int | float):
        return (1, v)
    if isinstance(v, str):
        return (2, v)
    if isinstance(v, dict):
        return (3, str(sorted(v.items())))
    if isinstance(v, datetime):
        return (9, v)
    return (5, str(v))


def _sort_value(doc: Any, field: str, descending: bool) -> tuple[Any, ...]:
    v = get_path(doc, field)
    if isinstance(v, list):
        if not v:
            return (0, 0)
        ranks = [_rank(x) for x in v]
        return max(ranks) if descending else min(ranks)
    return _rank(v)


def order(docs: list[Filter], sort: list[tuple[str, int]]) -> list[Filter]:
    out = list(docs)
    for field, direction in reversed(sort):
        out.sort(key=lambda d, f=field, desc=direction < 0: _sort_value(d, f, desc), reverse=direction < 0)
    return out


def _roots(sort: list[tuple[str, int]]) -> dict[str, int]:
    """Projection of the sort fields without path collisions (``ix._sort_x.0`` -> ``ix._sort_x``)."""
    proj: dict[str, int] = {"_id": 1}
    for field, _ in sort:
        parts = field.split(".")
        while parts and parts[-1].isdigit():
            parts.pop()
        path = ".".join(parts)
        if not any(path == p or path.startswith(p + ".") for p in proj):
            for p in [p for p in proj if p.startswith(path + ".")]:
                del proj[p]
            proj[path] = 1
    return proj


class QueryRunner:
    """Runs finds and counts on one collection, splitting them into served branches when needed."""

    def __init__(self, coll: Any, leading: frozenset[str], *, split: bool, session: Any = None,
                 max_time_ms: int = 0) -> None:
        self.coll = coll
        self.leading = leading
        self.split = split
        self.session = session
        self.max_time_ms = max_time_ms

    def _plans(self, filter_: Filter) -> list[tuple[Filter, Filter | None]] | None:
        """[(branch, prefilter or None)], or None to run the filter as it is."""
        flat = flatten_and(filter_)
        if not self.split:
            return None
        branches = dnf(flat)
        if branches is None:
            return None
        plans: list[tuple[Filter, Filter | None]] = []
        for b in branches:
            if is_served(b, self.leading):
                plans.append((b, None))
                continue
            pre = prefilter(b, self.leading)
            if pre is None or "_id" in b:
                return None
            plans.append((b, pre))
        if len(plans) == 1 and plans[0][1] is None:
            return None
        return plans

    def _find(self, q: Filter, projection: Any, sort: list[tuple[str, int]] | None = None,
              limit: int = 0) -> Any:
        cur = self.coll.find(q, projection, session=self.session)
        if self.max_time_ms:
            cur = cur.max_time_ms(self.max_time_ms)
        if sort:
            cur = cur.sort(sort)
        if limit:
            cur = cur.limit(limit)
        return cur

    def _branch_query(self, branch: Filter, pre: Filter | None) -> Filter | None:
        if pre is None:
            return branch
        ids = [d["_id"] for d in self._find(pre, {"_id": 1})]
        return {**branch, "_id": {"$in": ids}} if ids else None

    def find(self, filter_: Filter, projection: Any, sort: list[tuple[str, int]] | None,
             limit: int) -> Iterator[Filter]:
        plans = self._plans(filter_)
        if plans is None:
            return iter(self._find(flatten_and(filter_), projection, sort, limit))
        keys = _roots(sort or [])
        found: dict[Any, Filter] = {}
        for branch, pre in plans:
            q = self._branch_query(branch, pre)
            if q is None:
                continue
            for d in self._find(q, keys, sort, limit):
                found[d["_id"]] = d
        rows = order(list(found.values()), sort) if sort else list(found.values())
        if limit:
            rows = rows[:limit]
        ids = [d["_id"] for d in rows]
        if not ids:
            return iter(())
        docs = {d["_id"]: d for d in self._find({"_id": {"$in": ids}}, projection)}
        return iter([docs[i] for i in ids if i in docs])

    def count(self, filter_: Filter, limit: int = 0) -> int:
        plans = self._plans(filter_)
        if plans is None:
            kwargs: dict[str, Any] = {"session": self.session}
            if limit:
                kwargs["limit"] = limit
            if self.max_time_ms:
                kwargs["maxTimeMS"] = self.max_time_ms
            return int(self.coll.count_documents(flatten_and(filter_), **kwargs))
        ids: set[Any] = set()
        for branch, pre in plans:
            q = self._branch_query(branch, pre)
            if q is not None:
                ids.update(d["_id"] for d in self._find(q, {"_id": 1}))
            if limit and len(ids) >= limit:
                return limit
        return len(ids)
