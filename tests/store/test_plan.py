"""The query runner's branch splitting returns exactly what the plain query returns, in the same order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_server.store.plan import QueryRunner, dnf, flatten_and, order

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LEADING = frozenset({"_id", "sp", "ix.code", "ix.name"})


@pytest.fixture(scope="module")
def coll(mongo_client: Any) -> Iterator[Any]:
    c = mongo_client["plan"][uuid.uuid4().hex]
    docs = []
    for i in range(120):
        d = {"_id": f"r{i:03d}", "sp": f"p{i % 5}", "del": i % 11 == 0, "ts": T0 + timedelta(minutes=i * 7 % 50),
             "ix": {"code": [f"c{i % 4}", f"x{i % 3}"], "name": [f"n{i % 9}a", f"m{i % 6}"],
                    "date": [{"lo": T0 + timedelta(days=i % 10), "hi": T0 + timedelta(days=i % 10 + i % 3)}],
                    "_sort_date": [T0 + timedelta(days=i % 10), T0 + timedelta(days=i % 10 + i % 3)]}}
        if i % 7 == 0:
            del d["ix"]["name"]
        docs.append(d)
    c.insert_many(docs)
    c.create_index([("sp", 1)])
    c.create_index([("ix.code", 1)])
    c.create_index([("ix.name", 1)])
    yield c
    c.drop()


leaf = st.one_of(
    st.builds(lambda v: {"sp": f"p{v}"}, st.integers(0, 5)),
    st.builds(lambda v: {"sp": {"$in": [f"p{x}" for x in v]}}, st.lists(st.integers(0, 5), min_size=1, max_size=3)),
    st.builds(lambda v: {"ix.code": f"c{v}"}, st.integers(0, 4)),
    st.builds(lambda v: {"ix.code": {"$in": [f"x{v}", f"c{v}"]}}, st.integers(0, 3)),
    st.builds(lambda v: {"ix.name": {"$elemMatch": {"$gte": f"n{v}", "$lt": f"n{v}\U0010ffff"}}}, st.integers(0, 9)),
    st.builds(lambda d: {"ix.date": {"$elemMatch": {"hi": {"$gte": T0 + timedelta(days=d)}}}}, st.integers(0, 12)),
    st.builds(lambda b: {"del": b}, st.booleans()),
    st.builds(lambda b: {"ix.name": {"$exists": b}}, st.booleans()),
    st.builds(lambda v: {"ix.code": {"$nin": [f"c{v}"]}}, st.integers(0, 4)),
)
filters = st.recursive(leaf, lambda inner: st.one_of(
    st.builds(lambda xs: {"$or": xs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda xs: {"$and": xs}, st.lists(inner, min_size=1, max_size=3)),
), max_leaves=6)
sorts = st.sampled_from([None, [("ts", -1), ("_id", -1)], [("ix._sort_date.0", 1), ("_id", 1)],
                         [("ix._sort_date.1", -1), ("_id", -1)], [("ix.code", 1), ("_id", 1)]])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flt=filters, sort=sorts, limit=st.sampled_from([0, 1, 5, 40]))
def test_split_equals_plain(coll: Any, flt: dict[str, Any], sort: Any, limit: int) -> None:
    plain = coll.find(flt, {"_id": 1})
    if sort:
        plain = plain.sort(sort)
    if limit:
        plain = plain.limit(limit)
    want = [d["_id"] for d in plain]
    runner = QueryRunner(coll, LEADING, split=True)
    got = [d["_id"] for d in runner.find(flt, {"_id": 1, "sp": 1}, sort, limit)]
    if sort:
        assert got == want
    else:
        full = {d["_id"] for d in coll.find(flt, {"_id": 1})}
        assert len(got) == len(want) and set(got) <= full
    assert runner.count(flt) == coll.count_documents(flt)


def test_normal_form_shapes() -> None:
    f = flatten_and({"$and": [{"sp": "p1"}, {"$or": [{"a": 1}, {"a": 2}]}, {"$or": [{"b": 1}]}]})
    assert f == {"sp": "p1", "b": 1, "$or": [{"a": 1}, {"a": 2}]}
    assert dnf(f) == [{"sp": "p1", "b": 1, "a": 1}, {"sp": "p1", "b": 1, "a": 2}]
    both = dnf({"$and": [{"d": {"$elemMatch": {"x": 1}}}, {"d": {"$elemMatch": {"y": 2}}}]})
    assert both == [{"d": {"$all": [{"$elemMatch": {"x": 1}}, {"$elemMatch": {"y": 2}}]}}]
    assert dnf({"$nor": [{"a": 1}]}) is None
    assert dnf({"$or": [{"a": i} for i in range(5)], "$and": [{"$or": [{"b": i} for i in range(5)]}]}) is None


def test_order_is_bson_order() -> None:
    docs = [{"_id": 1, "k": "b"}, {"_id": 2}, {"_id": 3, "k": 5}, {"_id": 4, "k": ["z", "a"]}]
    assert [d["_id"] for d in order(docs, [("k", 1)])] == [2, 3, 4, 1]
    assert [d["_id"] for d in order(docs, [("k", -1)])] == [4, 1, 3, 2]
