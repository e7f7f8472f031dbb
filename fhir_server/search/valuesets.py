"""Value sets for the ``:in`` / ``:not-in`` token modifiers, loaded from ``terminologies/valuesets/``.

Each file is ``{"url": ..., "name": ..., "codes": ["system|code", ...]}`` (an expansion written
by ``scripts/gen_search_registry.py`` from the FHIR core value sets). A value set is named in a
search by its canonical URL (``code:in=http://hl7.org/fhir/ValueSet/observation-status``), with
or without ``|version``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["ValueSets", "VALUESETS_DIR", "default_value_sets"]

VALUESETS_DIR = Path(__file__).resolve().parents[2] / "terminologies" / "valuesets"


@dataclass(frozen=True)
class ValueSets:
    """Expanded value sets by canonical URL."""

    by_url: Mapping[str, frozenset[str]]

    @classmethod
    def load(cls, folder: Path = VALUESETS_DIR) -> ValueSets:
        by_url: dict[str, frozenset[str]] = {}
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                data = json.loads(path.read_text(encoding="utf-8"))
                by_url[data["url"]] = frozenset(data.get("codes", ()))
        return cls(by_url)

    def expand(self, url: str) -> frozenset[str] | None:
        """The ``system|code`` members of the value set, None when it is unknown."""
        return self.by_url.get(url.split("|", 1)[0])


@lru_cache(maxsize=1)
def default_value_sets() -> ValueSets:
    return ValueSets.load()
