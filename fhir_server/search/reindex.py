"""Recompute ``ix`` and ``sp`` of stored resources (after a registry or extractor change).

Database-free: the caller supplies the stored documents and a writer; the MongoDB side is
:func:`fhir_server.store.reindex.reindex_collection`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhir_server.search.extract import Extractor

__all__ = ["ReindexStats", "Change", "reindex"]


@dataclass(frozen=True, slots=True)
class Change:
    """New search values of one stored document."""

    id: str
    ix: dict[str, list[Any]]
    sp: str | None
    v: int | None = None  # the version the values were computed from (the write is conditional on it)


@dataclass
class ReindexStats:
    seen: int = 0
    changed: int = 0
    skipped: int = 0


def reindex(docs: Iterable[Mapping[str, Any]], extractor: Extractor,
            write: Callable[[list[Change]], None], *, batch_size: int = 500) -> ReindexStats:
    """For each stored ``{_id, res, ix, sp, del}`` recompute ``ix``/``sp`` and pass the ones that
    differ to ``write`` in batches. Deleted documents (no ``res``) are skipped."""
    stats = ReindexStats()
    batch: list[Change] = []
    for doc in docs:
        stats.seen += 1
        res = doc.get("res")
        if not isinstance(res, dict) or doc.get("del"):
            stats.skipped += 1
            continue
        ix, sp = extractor.index(res), extractor.owner(res)
        if ix == doc.get("ix") and sp == doc.get("sp"):
            continue
        batch.append(Change(str(doc["_id"]), ix, sp, doc.get("v")))
        if len(batch) >= batch_size:
            write(batch)
            stats.changed += len(batch)
            batch = []
    if batch:
        write(batch)
        stats.changed += len(batch)
    return stats
