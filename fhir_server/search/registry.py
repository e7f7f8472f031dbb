"""The search parameter registry: ``profiles/search-parameters.json`` loaded into frozen dataclasses.

The data file is written by ``scripts/gen_search_registry.py`` from the FHIR R4
SearchParameter definitions (https://hl7.org/fhir/R4/searchparameter-registry.html).
Adding a parameter is adding an entry to the data (or to the optional
``profiles/search-parameters-local.json``, same shape), never code.

Tables that belong to the search *types* rather than to parameters (which modifiers
and prefixes each type accepts) live here as data, shared by the generator, the parser
and the query planner (https://hl7.org/fhir/R4/search.html#modifiers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "PREFIXES",
    "ORDERED_TYPES",
    "MODIFIERS_BY_TYPE",
    "UNSUPPORTED_STANDARD",
    "SORTABLE_TYPES",
    "Component",
    "SearchParam",
    "SearchRegistry",
    "load_registry",
    "default_registry",
    "expression_for_base",
    "is_identifier_expression",
    "PROFILES_DIR",
]

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"

#: Comparison prefixes (https://hl7.org/fhir/R4/search.html#prefix), in spec order.
PREFIXES: tuple[str, ...] = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")

#: Parameter types whose values take a prefix.
ORDERED_TYPES: frozenset[str] = frozenset({"number", "date", "quantity"})

#: Parameter types a ``_sort`` may use.
SORTABLE_TYPES: frozenset[str] = frozenset({"string", "token", "reference", "date", "number", "quantity", "uri"})

#: Modifiers this server supports per parameter type (the default of a parameter whose
#: registry entry lists none). ``of-type`` is added to Identifier-valued tokens by the
#: generator; reference ``:[type]`` modifiers come from the targets.
MODIFIERS_BY_TYPE: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "string": ("missing", "exact", "contains"),
    "token": ("missing", "not", "text", "in", "not-in"),
    "reference": ("missing", "identifier"),
    "date": ("missing",),
    "number": ("missing",),
    "quantity": ("missing",),
    "uri": ("missing", "below", "above"),
    "composite": (),
    "special": (),
})

#: Standard parameters deliberately left out of the registry, with the reason.
UNSUPPORTED_STANDARD: Mapping[str, str] = MappingProxyType({
    "_text": "narrative full-text search is not supported",
    "_content": "full-text search is not supported",
    "_query": "named queries are not supported",
    "near": "geographic (special) search is not supported",
})


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a composite parameter: the referenced parameter's code and type, and the
    expression evaluated relative to the composite's own expression."""

    code: str
    type: str
    expression: str


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter as it applies to one resource type (or to every type: ``base='Resource'``)."""

    code: str
    base: str
    type: str
    expression: str
    id: str = ""
    targets: tuple[str, ...] = ()
    modifiers: frozenset[str] = frozenset()
    comparators: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()

    @property
    def field(self) -> str:
        """The document field holding the values: ``_id`` and ``ts`` for ``_id`` and
        ``_lastUpdated``, ``ix.<code>`` otherwise."""
        if self.code == "_id":
            return "_id"
        if self.code == "_lastUpdated":
            return "ts"
        return f"ix.{self.code}"

    @property
    def sortable(self) -> bool:
        return self.type in SORTABLE_TYPES

    @property
    def indexed(self) -> bool:
        """True when the extractor writes values for it into ``ix``."""
        return self.code not in ("_id", "_lastUpdated") and bool(self.expression or self.components)


@dataclass(frozen=True)
class SearchRegistry:
    """Every search parameter of every served type, the Patient compartment and the choice elements."""

    by_type: Mapping[str, Mapping[str, SearchParam]]
    common: Mapping[str, SearchParam]
    compartment: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    choice_elements: frozenset[str] = frozenset()

    def types(self) -> frozenset[str]:
        return frozenset(self.by_type)

    def get(self, resource_type: str | None, code: str) -> SearchParam | None:
        """The parameter ``code`` on ``resource_type`` (None: only the common parameters)."""
        if code in self.common:
            return self.common[code]
        if resource_type is None:
            return None
        return self.by_type.get(resource_type, {}).get(code)

    def params(self, resource_type: str) -> dict[str, SearchParam]:
        """Common and type-specific parameters of a type, by code."""
        out = dict(self.common)
        out.update(self.by_type.get(resource_type, {}))
        return out

    def compartment_params(self, resource_type: str) -> tuple[str, ...]:
        """The parameters that put ``resource_type`` in a Patient's compartment (empty: not a member)."""
        return self.compartment.get(resource_type, ())

    def with_params(self, extra: list[SearchParam]) -> SearchRegistry:
        """A new registry: this one plus ``extra`` (runtime SearchParameters), each on its own base."""
        by_type = {t: dict(ps) for t, ps in self.by_type.items()}
        for p in extra:
            by_type.setdefault(p.base, {})[p.code] = p
        return SearchRegistry(
            by_type=MappingProxyType({t: MappingProxyType(ps) for t, ps in by_type.items()}),
            common=self.common, compartment=self.compartment, choice_elements=self.choice_elements)


def _param(code: str, base: str, raw: Mapping[str, Any], all_types: tuple[str, ...]) -> SearchParam:
    targets = raw.get("targets", ())
    return SearchParam(
        code=code,
        base=base,
        type=raw["type"],
        expression=raw.get("expr", ""),
        id=raw.get("id", ""),
        targets=all_types if targets == "Any" else tuple(targets),
        modifiers=frozenset(raw.get("modifiers", MODIFIERS_BY_TYPE.get(raw["type"], ()))),
        comparators=tuple(raw.get("comparators", ())),
        components=tuple(Component(c["code"], c["type"], c["expr"]) for c in raw.get("components", ())),
    )


def load_registry(profiles_dir: Path = PROFILES_DIR) -> SearchRegistry:
    """Build the registry from ``profiles_dir`` (``search-parameters.json``, the optional
    ``search-parameters-local.json`` and ``custom/*.json``, and ``compartment-patient.json``)."""
    data = json.loads((profiles_dir / "search-parameters.json").read_text(encoding="utf-8"))
    local: dict[str, Any] = {"common": {}, "types": {}}
    extra_files = [profiles_dir / "search-parameters-local.json", *sorted((profiles_dir / "custom").glob("*.json"))]
    for path in extra_files:  # our own parameters (e.g. IHE MHD / PDSm), same shape as the main file
        if path.is_file():
            more = json.loads(path.read_text(encoding="utf-8"))
            local["common"].update(more.get("common", {}))
            for type_, params in more.get("types", {}).items():
                local["types"].setdefault(type_, {}).update(params)
    common_raw = {**data.get("common", {}), **local.get("common", {})}
    by_type: dict[str, Mapping[str, SearchParam]] = {}
    types_raw = dict(data.get("types", {}))
    for type_, extra in local.get("types", {}).items():
        types_raw[type_] = {**types_raw.get(type_, {}), **extra}
    all_types = tuple(sorted(types_raw))
    common = {code: _param(code, "Resource", raw, all_types) for code, raw in sorted(common_raw.items())}
    for type_, params in sorted(types_raw.items()):
        by_type[type_] = MappingProxyType({code: _param(code, type_, raw, all_types)
                                           for code, raw in sorted(params.items())})
    compartment: dict[str, tuple[str, ...]] = {}
    comp_path = profiles_dir / "compartment-patient.json"
    if comp_path.is_file():
        comp = json.loads(comp_path.read_text(encoding="utf-8"))
        compartment = {t: tuple(ps) for t, ps in comp.get("resources", {}).items()}
    return SearchRegistry(
        by_type=MappingProxyType(by_type),
        common=MappingProxyType(common),
        compartment=MappingProxyType(compartment),
        choice_elements=frozenset(data.get("choiceElements", ())),
    )


@lru_cache(maxsize=1)
def default_registry() -> SearchRegistry:
    """The registry of the project's ``profiles/`` folder, loaded once per process."""
    return load_registry()


# ---------------------------------------------------------------------------- expression helpers
_ROOT = re.compile(r"^\(*\s*([A-Za-z_][A-Za-z0-9_]*)")


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on its top-level ``|`` operators."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, ch in enumerate(expression):
        if ch == "'" and (i == 0 or expression[i - 1] != "\\"):
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def expression_for_base(expression: str, base: str) -> str:
    """The pieces of a (possibly multi-base) expression that apply to ``base``.

    ``Condition.code | Observation.code`` for ``Observation`` gives ``Observation.code``;
    pieces not rooted at a type name (``name | alias``) apply to every base.
    """
    keep: list[str] = []
    roots = {base} | ({"Resource", "DomainResource"} if base == "Resource" else set())
    for piece in split_union(expression):
        m = _ROOT.match(piece)
        root = m.group(1) if m else ""
        if not root[:1].isupper() or root in roots:
            keep.append(piece)
    return " | ".join(keep)


def is_identifier_expression(expression: str) -> bool:
    """True when every piece of a token expression ends on an Identifier element."""
    pieces = split_union(expression)
    return bool(pieces) and all(re.sub(r"\.where\(.*\)$", "", p).rsplit(".", 1)[-1] in
                                ("identifier", "masterIdentifier") for p in pieces)
