"""flatten_and rewrites nested $and into top-level fields without changing what matches."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from fhir_server.store.repository import flatten_and

CASES: list[dict[str, Any]] = [
    {"$and": [{"del": False}, {"$and": [{"k": {"$in": [1, 2]}}, {"sp": "p1"}]}]},
    {"$and": [{"k": {"$gte": 1}}, {"k": {"$lte": 2}}]},  # colliding keys stay in a residual $and
    {"$and": [{"$or": [{"k": 1}, {"k": 3}]}, {"$or": [{"sp": "p1"}, {"sp": "p2"}]}]},
    {"sp": "p1", "$and": [{"k": 2}, {"del": False}]},
    {"$and": [{}, {"k": 3}]},
]


@pytest.mark.parametrize("flt", CASES)
def test_same_matches(mongo_client: Any, flt: dict[str, Any]) -> None:
    coll = mongo_client["flatten"][uuid.uuid4().hex]
    coll.insert_many([{"_id": i, "k": i % 4, "sp": f"p{i % 3}", "del": i % 5 == 0} for i in range(40)])
    flat = flatten_and(flt)
    assert sorted(d["_id"] for d in coll.find(flt)) == sorted(d["_id"] for d in coll.find(flat))
    assert list(flat)[0] != "$and" or len(flat) == 1


def test_shapes() -> None:
    assert flatten_and({"$and": [{"a": 1}, {"$and": [{"b": 2}]}]}) == {"a": 1, "b": 2}
    assert flatten_and({"a": 1}) == {"a": 1}
    assert flatten_and({"$and": [{"a": 1}, {"a": 2}]}) == {"a": 1, "$and": [{"a": 2}]}
