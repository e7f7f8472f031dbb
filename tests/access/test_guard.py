"""The Guard's contract for the search engine: include never 403s, counts are exact, projections keep sp."""

from __future__ import annotations

import pytest

from fhir_server.fhir.errors import Forbidden
from fhir_server.main import Services
from fhir_server.rest.context import Caller

A = Caller(kind="patient", subject="alice", fhir_user="Patient/a", patient="a",
           scopes=frozenset({"patient/Observation.rs", "patient/DocumentReference.rs", "patient/Binary.rs"}))


def test_include_never_raises_and_yields_nothing_outside_scopes(secure_services: Services) -> None:
    guard = secure_services.fhir.guard
    with pytest.raises(Forbidden):
        list(guard.find(A, "search", "Condition", {}))
    assert list(guard.find(A, "include", "Condition", {})) == []
    got = {d["_id"] for d in guard.find(A, "include", "Observation", {"del": False})}
    assert got and all(i.startswith("obs-a") for i in got)


def test_projection_keeps_what_the_policy_needs(secure_services: Services) -> None:
    guard = secure_services.fhir.guard
    docs = list(guard.find(A, "search", "Observation", {"del": False}, projection={"_id": 1}))
    assert docs and all(d["sp"] == "a" for d in docs)


def test_counts_are_exact(secure_services: Services) -> None:
    guard = secure_services.fhir.guard
    assert guard.count(A, "Binary", {"del": False}) == len(list(guard.find(A, "search", "Binary", {"del": False})))
    assert guard.count(A, "Observation", {"del": False}) == len(
        list(guard.find(A, "search", "Observation", {"del": False})))
