"""The registry in profiles/ against the FHIR R4 SearchParameter definitions (../shared/fhir-r4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server.search.registry import (
    PREFIXES,
    PROFILES_DIR,
    UNSUPPORTED_STANDARD,
    SearchRegistry,
    default_registry,
    expression_for_base,
    split_union,
)

# Differences on purpose: (parameter id, base) -> why.
DECLARED_DIFFERENCES: dict[str, str] = {
    **{f"code:{code}": reason for code, reason in UNSUPPORTED_STANDARD.items()},
}


def _own_parameters() -> set[tuple[str, str]]:
    """(type, code) of the parameters the server adds itself, outside the R4 spec."""
    own: set[tuple[str, str]] = set()
    for path in [PROFILES_DIR / "search-parameters-local.json", *sorted((PROFILES_DIR / "custom").glob("*.json"))]:
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            own |= {(t, c) for t, ps in data.get("types", {}).items() for c in ps}
    return own


def _spec(name: str) -> Any:
    """A file of ../shared/fhir-r4, or a skip with the reason when the shared folder is absent."""
    path = Path(__file__).resolve().parents[2].parent / "shared" / "fhir-r4" / name
    if not path.is_file():
        pytest.skip(f"FHIR R4 definitions not present at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def spec_params(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return [e["resource"] for e in _spec("search-parameters.json")["entry"]]


@pytest.fixture(scope="module")
def registry() -> SearchRegistry:
    return default_registry()


def test_every_spec_parameter_is_in_the_registry_with_the_same_facts(
        spec_params: list[dict[str, Any]], registry: SearchRegistry) -> None:
    served = registry.types()
    # Declared difference: a target list of every R4 resource type ("Any") means every served type.
    any_target = max((frozenset(sp.get("target", ())) for sp in spec_params), key=len)
    problems: list[str] = []
    checked = 0
    for sp in spec_params:
        if f"code:{sp['code']}" in DECLARED_DIFFERENCES:
            continue
        for base in sp["base"]:
            target_base = "Resource" if base in ("Resource", "DomainResource") else base
            if target_base != "Resource" and base not in served:
                continue  # an R4 type that R4B no longer has: not served
            p = registry.common.get(sp["code"]) if target_base == "Resource" else registry.by_type[base].get(sp["code"])
            where = f"{sp['id']} on {base}"
            if p is None:
                problems.append(f"{where}: missing")
                continue
            checked += 1
            if p.type != sp["type"]:
                problems.append(f"{where}: type {p.type} != {sp['type']}")
            if p.expression != expression_for_base(sp.get("expression", ""), target_base):
                problems.append(f"{where}: expression {p.expression!r}")
            for piece in split_union(p.expression):
                if piece not in split_union(sp.get("expression", "")):
                    problems.append(f"{where}: expression piece {piece!r} not in the spec")
            spec_targets = frozenset(sp.get("target", ()))
            if spec_targets == any_target:
                if set(p.targets) != served:
                    problems.append(f"{where}: targets should be every served type")
            elif set(p.targets) != spec_targets & served:
                problems.append(f"{where}: targets differ")
            if tuple(p.comparators) != tuple(c for c in PREFIXES if c in sp.get("comparator", ())):
                problems.append(f"{where}: comparators differ")
            if sp["type"] == "composite":
                if len(p.components) != len(sp["component"]):
                    problems.append(f"{where}: components differ")
                for mine, theirs in zip(p.components, sp["component"], strict=False):
                    if mine.expression != theirs["expression"] or not theirs["definition"].endswith(
                            "-" + mine.code) and mine.code not in theirs["definition"]:
                        problems.append(f"{where}: component {mine.code} differs")
    assert not problems, "\n".join(problems[:50])
    assert checked > 1500


def test_nothing_in_the_registry_that_the_spec_does_not_define(
        spec_params: list[dict[str, Any]], registry: SearchRegistry) -> None:
    known = {(b if b not in ("DomainResource",) else "Resource", sp["code"]) for sp in spec_params for b in sp["base"]}
    ours = _own_parameters()  # declared on purpose: the server's own parameters (profiles/custom, -local)
    extra = [(t, code) for t, ps in registry.by_type.items() for code in ps
             if (t, code) not in known and (t, code) not in ours]
    extra += [("Resource", code) for code in registry.common if ("Resource", code) not in known]
    assert extra == []


def test_patient_compartment_matches_the_spec(registry: SearchRegistry) -> None:
    cd = _spec("compartmentdefinition-patient.json")
    expected = {r["code"]: tuple(r["param"]) for r in cd["resource"] if r.get("param") and r["code"] in registry.types()}
    assert dict(registry.compartment) == expected
    for type_, codes in registry.compartment.items():
        for code in codes:
            if code == "{def}":
                continue
            p = registry.get(type_, code)
            assert p is not None and p.type == "reference", (type_, code)


def test_registry_shape(registry: SearchRegistry) -> None:
    assert registry.get("Observation", "code") is not None
    assert registry.get("Patient", "_id") is not None and registry.get("Patient", "_id").field == "_id"
    assert registry.get("Patient", "_lastUpdated").field == "ts"
    assert registry.get(None, "_tag") is not None
    assert registry.get(None, "code") is None
    ident = registry.get("Patient", "identifier")
    assert "of-type" in ident.modifiers
    assert "of-type" not in registry.get("Observation", "code").modifiers
    assert registry.compartment_params("Observation") == ("subject", "performer")
    assert registry.compartment_params("Practitioner") == ()
    assert "effective" in registry.choice_elements
    for code in UNSUPPORTED_STANDARD:
        assert registry.get(None, code) is None
        assert registry.get("Location", code) is None
