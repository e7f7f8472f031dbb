"""SMART scope grammar: v1, v2, granular categories, intersection."""

from __future__ import annotations

import pytest

from fhir_server.access.scopes import Category, InvalidScope, intersect, parse_scope, parse_scopes
from fhir_server.fhir.models import is_resource_type


def p(s: str):  # noqa: ANN201 - test helper
    return parse_scopes(s, is_resource_type)


@pytest.mark.parametrize("text,actions", [
    ("patient/Observation.read", "rs"), ("patient/Observation.write", "cud"), ("patient/Observation.*", "cruds"),
    ("user/*.rs", "rs"), ("system/Binary.c", "c"), ("patient/Observation.cruds", "cruds"),
])
def test_permissions(text: str, actions: str) -> None:
    rule = parse_scope(text, is_resource_type)
    assert not isinstance(rule, str) and rule.actions == frozenset(actions)


@pytest.mark.parametrize("bad", [
    "patient/Nonsense.rs", "patient/Observation.x", "patient/Observation.sr", "patient/Observation.rr",
    "patient/Observation", "admin/Observation.rs", "patient/Observation.rs?code=1234",
    "patient/Observation.read?category=laboratory", "whatever", "patient/Observation.rs?category=",
])
def test_invalid(bad: str) -> None:
    with pytest.raises(InvalidScope):
        parse_scope(bad, is_resource_type)


def test_granular_category() -> None:
    rule = parse_scope("patient/Observation.rs?category=http://x|laboratory", is_resource_type)
    assert not isinstance(rule, str) and rule.categories == frozenset({Category("http://x", "laboratory")})


def test_intersection() -> None:
    got = intersect(p("launch/patient openid patient/Observation.rs patient/Condition.cruds"),
                    p("launch/patient patient/*.rs"))
    assert set(got.texts()) == {"launch/patient", "patient/Observation.rs", "patient/Condition.rs"}
    got = intersect(p("patient/*.rs"), p("patient/Observation.r"))
    assert got.texts() == ["patient/Observation.r"]
    got = intersect(p("patient/Observation.rs"), p("patient/Observation.rs?category=http://x|lab"))
    assert got.texts() == ["patient/Observation.rs?category=http://x|lab"]
    assert intersect(p("user/Observation.rs"), p("patient/*.rs")).texts() == []
    got = intersect(p("patient/Observation.read"), p("patient/*.cruds"))
    assert got.texts() == ["patient/Observation.read"]
