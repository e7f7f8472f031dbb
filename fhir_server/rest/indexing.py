"""What the interactions need from the search engine at write time."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Indexer"]


class Indexer(Protocol):
    def index(self, resource: dict[str, Any]) -> dict[str, list[Any]]:
        """The normalised search values (``ix``) of a resource."""

    def owner(self, resource: dict[str, Any]) -> str | None:
        """The id of the Patient whose space owns the resource (``sp``), or None for shared resources."""
