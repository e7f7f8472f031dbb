"""Write terminologies/required-bindings.json from the FHIR R4 definitions.

For every resource type, each element of type ``code`` with a *required* binding
whose value set can be expanded from the core code systems (whole systems or
enumerated concepts) becomes ``{"path": [...codes]}``. The validator reads the
result; the spec files themselves are not copied into the project.

Usage: python scripts/gen_required_bindings.py [../shared/fhir-r4]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _concepts(concepts: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in concepts:
        out.append(c["code"])
        out.extend(_concepts(c.get("concept", [])))
    return out


def main(spec_dir: Path) -> None:
    vsets = json.loads((spec_dir / "valuesets.json").read_text())
    systems: dict[str, list[str]] = {}
    valuesets: dict[str, dict[str, Any]] = {}
    for e in vsets["entry"]:
        r = e["resource"]
        if r["resourceType"] == "CodeSystem" and r.get("content") == "complete":
            systems[r["url"]] = _concepts(r.get("concept", []))
        elif r["resourceType"] == "ValueSet":
            valuesets[r["url"]] = r

    def expand(url: str) -> list[str] | None:
        vs = valuesets.get(url.split("|")[0])
        if vs is None:
            return None
        codes: list[str] = []
        compose = vs.get("compose", {})
        if compose.get("exclude"):
            return None
        for inc in compose.get("include", []):
            if inc.get("filter") or inc.get("valueSet"):
                return None
            if "concept" in inc:
                codes.extend(c["code"] for c in inc["concept"])
            elif inc.get("system") in systems:
                codes.extend(systems[inc["system"]])
            else:
                return None
        return sorted(set(codes)) or None

    prof = json.loads((spec_dir / "profiles-resources.json").read_text())
    out: dict[str, dict[str, list[str]]] = {}
    for e in prof["entry"]:
        sd = e["resource"]
        if sd["resourceType"] != "StructureDefinition" or sd.get("kind") != "resource" or sd.get("abstract"):
            continue
        for el in sd["snapshot"]["element"]:
            b = el.get("binding", {})
            types = [t["code"] for t in el.get("type", [])]
            if b.get("strength") != "required" or types != ["code"] or "valueSet" not in b:
                continue
            if el["path"].endswith(".language") or el["path"].endswith(".contentType"):
                continue  # bound to BCP-47 / MIME, not enumerable
            codes = expand(b["valueSet"])
            if codes:
                out.setdefault(sd["type"], {})[el["path"]] = codes
    target = ROOT / "terminologies" / "required-bindings.json"
    target.write_text(json.dumps({"source": "FHIR R4 4.0.1 required bindings on code elements",
                                  "bindings": out}, indent=1, sort_keys=True) + "\n")
    print(f"{sum(len(v) for v in out.values())} bindings for {len(out)} types -> {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "fhir-r4")
