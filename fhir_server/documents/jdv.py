"""French CI-SIS value sets ("jeux de valeurs", JDV) used by document metadata, as data.

The tables live in ``terminologies/fr/*.json`` (one file per value set: J02 facility
type, J04 practice setting, J06 class, J07 type, J08 confidentiality, J10 format),
written from the ANS SVS/FSH publications and checked against them by
``tests/documents/test_jdv.py``. Each concept carries its FHIR system URI and the
OID of its code system, so codings written either way (``https://mos.esante.gouv.fr/
NOS/TRE_…`` or ``urn:oid:1.2.250.…``) are recognised.

:meth:`ValueSet.judge` classifies one CodeableConcept against a table:

* ``"member"``: a coding is in the value set;
* ``"unknown-code"``: a coding uses one of the value set's French code systems
  (``TRE_…``), or any of its systems when the binding is extensible or required
  (J08), with a code the table does not hold: a wrong code;
* ``"foreign"``: no coding uses any of the value set's code systems (a SNOMED
  facility type, say): allowed by the PDSm ``preferred`` bindings;
* ``"empty"``: no coding at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fhir_server.documents.terminology import TERMINOLOGIES

__all__ = ["ValueSet", "load_value_sets", "value_sets", "FR_TERMINOLOGIES", "FORMAT_CODE_SYSTEMS"]

FR_TERMINOLOGIES = TERMINOLOGIES / "fr"
_FRENCH = "https://mos.esante.gouv.fr/NOS/"

#: The IHE format code system (TRE_A11-IheFormatCode is the ANS publication of the same codes).
FORMAT_CODE_SYSTEMS = frozenset({
    "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
    "https://mos.esante.gouv.fr/NOS/TRE_A11-IheFormatCode/FHIR/TRE-A11-IheFormatCode",
    "urn:oid:1.3.6.1.4.1.19376.1.2.3",
})


@dataclass(frozen=True)
class ValueSet:
    """One JDV: its concepts as ``(system, code)`` pairs, every system spelled both ways."""

    id: str
    name: str
    url: str
    title: str
    element: str
    strength: str
    complete: bool
    concepts: frozenset[tuple[str, str]]
    displays: dict[tuple[str, str], str]
    aliases: dict[str, str]  # any spelling of a system -> its canonical URI

    @property
    def systems(self) -> frozenset[str]:
        return frozenset(self.aliases.values())

    def canonical(self, system: str | None) -> str | None:
        if system is None:
            return None
        return self.aliases.get(system, system)

    def contains(self, system: str | None, code: str | None) -> bool:
        canon = self.canonical(system)
        return canon is not None and code is not None and (canon, code) in self.concepts

    def display(self, system: str, code: str) -> str | None:
        return self.displays.get((self.canonical(system) or system, code))

    def coding(self, code: str) -> dict[str, str]:
        """The Coding of ``code`` (first system holding it); KeyError when absent."""
        for (system, c), disp in self.displays.items():
            if c == code:
                return {"system": system, "code": c, "display": disp}
        raise KeyError(code)

    def judge(self, concept: Any) -> tuple[str, dict[str, Any] | None]:
        """Classify a CodeableConcept (or a Coding) against the value set; see the module docstring.

        Returns the verdict and the coding it is about (the offending one for ``unknown-code``).
        """
        if isinstance(concept, dict) and "coding" not in concept and ("code" in concept or "system" in concept):
            codings = [concept]
        else:
            codings = [c for c in (concept or {}).get("coding", ()) if isinstance(c, dict)]
        if not codings:
            return "empty", None
        unknown = None
        for c in codings:
            system, code = c.get("system"), c.get("code")
            if self.contains(system, code):
                return "member", c
            canon = self.canonical(system)
            if unknown is None and canon in self.systems and canon is not None and (
                    canon.startswith(_FRENCH) or self.strength in ("extensible", "required")):
                unknown = c
        if unknown is not None:
            return "unknown-code", unknown
        return "foreign", codings[0]


def _load(path: Path) -> ValueSet:
    raw = json.loads(path.read_text(encoding="utf-8"))
    concepts: set[tuple[str, str]] = set()
    displays: dict[tuple[str, str], str] = {}
    aliases: dict[str, str] = {}
    for c in raw["concepts"]:
        system = c["system"]
        aliases[system] = system
        oid = c.get("oid")
        if oid and oid[0].isdigit():
            aliases["urn:oid:" + oid] = system
        concepts.add((system, c["code"]))
        displays.setdefault((system, c["code"]), c.get("display", ""))
    if raw["id"] == "J10":
        for s in FORMAT_CODE_SYSTEMS:
            aliases[s] = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
    binding = raw.get("binding", {})
    return ValueSet(id=raw["id"], name=raw["name"], url=raw["url"], title=raw.get("title", raw["name"]),
                    element=binding.get("element", ""), strength=binding.get("strength", "preferred"),
                    complete=bool(raw.get("complete", True)), concepts=frozenset(concepts), displays=displays,
                    aliases=aliases)


def load_value_sets(folder: Path = FR_TERMINOLOGIES) -> dict[str, ValueSet]:
    """Every ``*.json`` table of ``folder``, by id (``J07``…)."""
    out: dict[str, ValueSet] = {}
    for path in sorted(folder.glob("*.json")):
        vs = _load(path)
        out[vs.id] = vs
    return out


@lru_cache(maxsize=1)
def value_sets() -> dict[str, ValueSet]:
    """The project's tables, loaded once per process."""
    return load_value_sets()
