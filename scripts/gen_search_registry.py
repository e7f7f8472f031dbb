"""Write the project's compact search registry from the FHIR R4 definitions.

Reads the HL7 FHIR R4 (4.0.1) definition bundles in ``../shared/fhir-r4/`` and writes

* ``profiles/search-parameters.json``: for every resource type served (those known to
  fhir.resources.R4B) the standard search parameters that apply to it, keyed by code,
  with the part of the FHIRPath expression that concerns that type, the targets of
  references, the supported modifiers and comparators, and composite components;
  parameters common to every resource (``Resource.*``) are under ``common``;
* ``profiles/compartment-patient.json``: which parameters put each resource type in
  the Patient compartment;
* ``terminologies/valuesets/*.json``: a few value sets expanded to ``system|code``
  lists, used by the ``:in`` / ``:not-in`` token modifiers.

Run: ``.venv/bin/python scripts/gen_search_registry.py [path/to/fhir-r4]``.
The output is deterministic (sorted keys), so re-running it gives no diff.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fhir_server.fhir.models import resource_types  # noqa: E402
from fhir_server.search.registry import (  # noqa: E402
    MODIFIERS_BY_TYPE,
    PREFIXES,
    UNSUPPORTED_STANDARD,
    expression_for_base,
    is_identifier_expression,
)

DEFAULT_SPEC = ROOT.parent / "shared" / "fhir-r4"

# Value sets written for :in / :not-in (URL -> file name).
VALUE_SETS = {
    "http://hl7.org/fhir/ValueSet/observation-status": "observation-status",
    "http://hl7.org/fhir/ValueSet/administrative-gender": "administrative-gender",
    "http://hl7.org/fhir/ValueSet/observation-category": "observation-category",
    "http://hl7.org/fhir/ValueSet/condition-clinical": "condition-clinical",
    "http://hl7.org/fhir/ValueSet/allergy-intolerance-criticality": "allergy-intolerance-criticality",
    "http://hl7.org/fhir/ValueSet/document-reference-status": "document-reference-status",
    "http://hl7.org/fhir/ValueSet/request-status": "request-status",
    "http://hl7.org/fhir/ValueSet/event-status": "event-status",
}


def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def choice_elements(spec: Path) -> list[str]:
    """Names of every choice element (``value[x]`` -> ``value``) of resources and data types."""
    names: set[str] = set()
    for file in ("profiles-resources.json", "profiles-types.json"):
        for entry in _load(spec / file).get("entry", []):
            sd = entry.get("resource", {})
            if sd.get("resourceType") != "StructureDefinition":
                continue
            for el in sd.get("snapshot", {}).get("element", []):
                path = el.get("path", "")
                if path.endswith("[x]"):
                    names.add(path.rsplit(".", 1)[-1][:-3])
    return sorted(names)


def _entry(sp: dict[str, Any], base: str, by_url: dict[str, dict[str, Any]],
           any_target: frozenset[str]) -> dict[str, Any] | None:
    type_ = sp["type"]
    expr = expression_for_base(sp.get("expression") or "", base)
    out: dict[str, Any] = {"id": sp["id"], "type": type_}
    if expr:
        out["expr"] = expr
    if sp.get("target"):
        # "Any": every resource type (the registry loader expands it to the served types)
        out["targets"] = "Any" if frozenset(sp["target"]) == any_target else sorted(sp["target"])
    if type_ == "token" and is_identifier_expression(expr):
        out["modifiers"] = [*MODIFIERS_BY_TYPE["token"], "of-type"]
    comparators = sp.get("comparator") or []
    if comparators:
        out["comparators"] = [c for c in PREFIXES if c in comparators]
    if type_ == "composite":
        comps = []
        for comp in sp.get("component", []):
            ref = by_url.get(comp["definition"])
            if ref is None:
                return None
            comps.append({"code": ref["code"], "type": ref["type"], "expr": comp["expression"]})
        out["components"] = comps
    return out


def build_registry(spec: Path) -> tuple[dict[str, Any], list[str]]:
    bundle = _load(spec / "search-parameters.json")
    params = [e["resource"] for e in bundle["entry"]]
    by_url = {p["url"]: p for p in params}
    any_target = max((frozenset(p.get("target", ())) for p in params), key=len)
    served = resource_types()
    types: dict[str, dict[str, Any]] = {t: {} for t in sorted(served)}
    common: dict[str, Any] = {}
    skipped: list[str] = []
    for sp in sorted(params, key=lambda p: p["id"]):
        if sp["code"] in UNSUPPORTED_STANDARD:
            skipped.append(f"{sp['id']}: {UNSUPPORTED_STANDARD[sp['code']]}")
            continue
        for base in sp["base"]:
            if base in ("Resource", "DomainResource"):
                entry = _entry(sp, "Resource", by_url, any_target)
                if entry is not None:
                    common[sp["code"]] = entry
                continue
            if base not in served:
                skipped.append(f"{sp['id']}: base {base} is not an R4B resource type")
                continue
            entry = _entry(sp, base, by_url, any_target)
            if entry is None:
                skipped.append(f"{sp['id']}: composite component not found")
                continue
            types[base][sp["code"]] = entry
    registry = {
        "fhirVersion": "4.0.1",
        "source": "Derived by scripts/gen_search_registry.py from the HL7 FHIR R4 SearchParameter definitions.",
        "choiceElements": choice_elements(spec),
        "common": common,
        "types": types,
    }
    return registry, skipped


def build_compartment(spec: Path) -> dict[str, Any]:
    cd = _load(spec / "compartmentdefinition-patient.json")
    served = resource_types()
    members = {r["code"]: r["param"] for r in cd.get("resource", []) if r.get("param") and r["code"] in served}
    return {"compartment": cd.get("code", "Patient"), "url": cd.get("url"), "resources": dict(sorted(members.items()))}


def build_value_sets(spec: Path) -> dict[str, dict[str, Any]]:
    entries = [e["resource"] for e in _load(spec / "valuesets.json")["entry"]]
    code_systems = {r["url"]: r for r in entries if r.get("resourceType") == "CodeSystem"}
    out: dict[str, dict[str, Any]] = {}
    for vs in entries:
        if vs.get("resourceType") != "ValueSet" or vs.get("url") not in VALUE_SETS:
            continue
        codes: list[str] = []
        for inc in vs.get("compose", {}).get("include", []):
            system = inc.get("system")
            if not system:
                continue
            if inc.get("concept"):
                codes.extend(f"{system}|{c['code']}" for c in inc["concept"])
            elif system in code_systems:
                codes.extend(f"{system}|{c}" for c in _all_codes(code_systems[system].get("concept", [])))
        out[VALUE_SETS[vs["url"]]] = {"url": vs["url"], "name": vs.get("name"), "codes": sorted(set(codes))}
    return out


def _all_codes(concepts: list[dict[str, Any]]) -> list[str]:
    codes: list[str] = []
    for c in concepts:
        codes.append(c["code"])
        codes.extend(_all_codes(c.get("concept", [])))
    return codes


def _dumps(data: Any, depth: int, indent: int = 0) -> str:
    """JSON with one line per leaf entry below ``depth`` levels of objects (small, diff-friendly)."""
    if depth == 0 or not isinstance(data, dict) or not data:
        return json.dumps(data, sort_keys=True, ensure_ascii=False)
    pad = " " * (indent + 1)
    items = [f"{pad}{json.dumps(k)}: {_dumps(v, depth - 1, indent + 1)}" for k, v in sorted(data.items())]
    return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"


def _write(path: Path, data: Any, depth: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dumps(data, depth) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    spec = Path(argv[1]) if len(argv) > 1 else DEFAULT_SPEC
    if not (spec / "search-parameters.json").is_file():
        print(f"FHIR R4 definitions not found in {spec}", file=sys.stderr)
        return 2
    registry, skipped = build_registry(spec)
    _write(ROOT / "profiles" / "search-parameters.json", registry, depth=3)
    _write(ROOT / "profiles" / "compartment-patient.json", build_compartment(spec), depth=2)
    for name, vs in build_value_sets(spec).items():
        _write(ROOT / "terminologies" / "valuesets" / f"{name}.json", vs)
    n = sum(len(v) for v in registry["types"].values())
    print(f"{n} type parameters, {len(registry['common'])} common; skipped {len(skipped)}:")
    for line in skipped:
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
