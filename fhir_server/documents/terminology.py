"""Code-system and unit tables loaded from ``terminologies/`` (data, not code).

* ``oids.json``: CDA ``codeSystem``/``root`` OIDs -> FHIR system URIs.
* ``cda-ucum.json``: a UCUM subset (prefixes, atoms) to recognise valid UCUM units,
  and aliases for non-UCUM units seen in real documents (``lbs`` -> ``[lb_av]``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "TERMINOLOGIES",
    "OidTable",
    "Ucum",
    "is_oid",
    "is_uuid",
    "oid_table",
    "ucum",
]

TERMINOLOGIES = Path(__file__).resolve().parents[2] / "terminologies"

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_oid(value: str) -> bool:
    """True for a syntactically valid ISO OID (``2.16.840.1.113883.6.1``)."""
    return bool(_OID.match(value)) and len(value) <= 128


def is_uuid(value: str) -> bool:
    return bool(_UUID.match(value))


@dataclass(frozen=True)
class OidTable:
    systems: dict[str, str]

    def uri(self, oid: str) -> str | None:
        """FHIR system URI for ``oid``: table entry, else ``urn:oid:`` (valid OIDs), else
        ``urn:uuid:`` (UUIDs), else ``None`` (caller records an issue)."""
        hit = self.systems.get(oid)
        if hit is not None:
            return hit
        if is_oid(oid):
            return "urn:oid:" + oid
        if is_uuid(oid):
            return "urn:uuid:" + oid.lower()
        return None


@lru_cache(maxsize=4)
def oid_table(path: Path | None = None) -> OidTable:
    data = json.loads((path or TERMINOLOGIES / "oids.json").read_text(encoding="utf-8"))
    return OidTable(dict(data["systems"]))


_EXP = re.compile(r"^(.*?)([+-]?\d+)$")


class Ucum:
    """Recognises UCUM unit expressions over a known subset of atoms.

    Grammar (UCUM §2.2): ``term := ['/'] component (('.' | '/') component)*``,
    ``component := annotatable [annotation] | annotation | factor | '(' term ')'``,
    ``annotatable := simple-unit [exponent]``, ``simple-unit := atom | prefix metric-atom``.
    """

    def __init__(self, prefixes: list[str], metric: list[str], nonmetric: list[str], aliases: dict[str, str]):
        self.prefixes = sorted(prefixes, key=len, reverse=True)
        self.metric = frozenset(metric)
        self.atoms = frozenset(metric) | frozenset(nonmetric)
        self.aliases = dict(aliases)
        self._cache: dict[str, bool] = {}

    def normalise(self, unit: str) -> str | None:
        """The UCUM code for ``unit`` (itself when valid, via aliases otherwise), or ``None``."""
        unit = unit.strip()
        if not unit:
            return None
        # Aliases first: "K/uL" is syntactically kelvin per microlitre, but documents mean 10*3/uL.
        alias = self.aliases.get(unit)
        if alias is not None and self.is_valid(alias):
            return alias
        return unit if self.is_valid(unit) else None

    def is_valid(self, unit: str) -> bool:
        hit = self._cache.get(unit)
        if hit is None:
            hit = self._term(unit) if unit and " " not in unit and len(unit) < 100 else False
            if len(self._cache) < 10_000:
                self._cache[unit] = hit
        return hit

    # -- grammar -------------------------------------------------------------
    def _term(self, text: str) -> bool:
        parts = self._split(text)
        if parts is None:
            return False
        for i, part in enumerate(parts):
            if part == "" and i == 0:
                continue  # leading '/' ("/min")
            if not self._component(part):
                return False
        return True

    @staticmethod
    def _split(text: str) -> list[str] | None:
        parts: list[str] = []
        depth_paren = depth_brace = depth_bracket = 0
        start = 0
        for i, ch in enumerate(text):
            if ch == "{":
                depth_brace += 1
            elif ch == "}":
                depth_brace -= 1
            elif depth_brace:
                continue
            elif ch == "[":
                depth_bracket += 1
            elif ch == "]":
                depth_bracket -= 1
            elif ch == "(":
                depth_paren += 1
            elif ch == ")":
                depth_paren -= 1
            elif ch in "./" and not depth_paren and not depth_bracket:
                parts.append(text[start:i])
                start = i + 1
            if min(depth_paren, depth_brace, depth_bracket) < 0:
                return None
        if depth_paren or depth_brace or depth_bracket:
            return None
        parts.append(text[start:])
        return parts

    def _component(self, comp: str) -> bool:
        if not comp:
            return False
        if comp.startswith("(") and comp.endswith(")"):
            return self._term(comp[1:-1])
        if comp.isdigit():
            return True
        brace = comp.find("{")
        if brace >= 0:
            if not comp.endswith("}") or "}" in comp[brace + 1 : -1]:
                return False
            comp = comp[:brace]
            if not comp:
                return True  # annotation alone, e.g. {cells}
        if self._simple(comp):
            return True
        m = _EXP.match(comp)
        return bool(m and m.group(1) and self._simple(m.group(1)))

    def _simple(self, unit: str) -> bool:
        if unit in self.atoms:
            return True
        for p in self.prefixes:
            if unit.startswith(p) and unit[len(p) :] in self.metric:
                return True
        return False


@lru_cache(maxsize=1)
def ucum() -> Ucum:
    data = json.loads((TERMINOLOGIES / "cda-ucum.json").read_text(encoding="utf-8"))
    return Ucum(data["prefixes"], data["metric"], data["nonmetric"], data["aliases"])
