"""What the interactions need from the search engine at write time."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Indexer", "MinimalIndexer"]


class Indexer(Protocol):
    def index(self, resource: dict[str, Any]) -> dict[str, list[Any]]:
        """The normalised search values (``ix``) of a resource."""

    def owner(self, resource: dict[str, Any]) -> str | None:
        """The id of the Patient whose space owns the resource (``sp``), or None for shared resources."""


class MinimalIndexer:
    """identifier tokens and the owning patient from subject/patient: enough for conditional writes."""

    def index(self, resource: dict[str, Any]) -> dict[str, list[Any]]:
        values: list[str] = []
        idents = resource.get("identifier")
        if isinstance(idents, dict):
            idents = [idents]
        for ident in idents or []:
            v = ident.get("value")
            if v is None:
                continue
            values.append(f"{ident.get('system', '')}|{v}")
            values.append(v)
        return {"identifier": values} if values else {}

    def owner(self, resource: dict[str, Any]) -> str | None:
        if resource.get("resourceType") == "Patient":
            return resource.get("id")
        for key in ("subject", "patient"):
            ref = resource.get(key)
            if isinstance(ref, dict):
                r = ref.get("reference", "")
                if isinstance(r, str) and r.startswith("Patient/"):
                    return r.split("/")[1]
        return None
