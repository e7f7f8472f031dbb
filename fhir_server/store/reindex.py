"""The MongoDB side of re-indexing: stream one collection, write back changed ``ix``/``sp``.

Changing ``sp`` moves a document between shards on a sharded cluster (``sp`` is the shard
key); MongoDB allows it in an update since 4.2 (inside a transaction or retryable write).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from fhir_server.search.extract import Extractor
from fhir_server.search.reindex import Change, ReindexStats, reindex

__all__ = ["reindex_collection", "count_documents"]


def reindex_collection(db: Database[dict[str, Any]], resource_type: str, extractor: Extractor, *,
                       batch_size: int = 500, since: datetime | None = None,
                       progress: Callable[[int], None] | None = None) -> ReindexStats:
    """Recompute the search values of every current ``resource_type`` document.

    Each write is conditional on the version the values were computed from, so a
    resource updated meanwhile keeps the values its own write computed. ``since``
    limits the pass to documents written at or after that instant.
    """
    coll = db[resource_type]

    def write(changes: list[Change]) -> None:
        coll.bulk_write([UpdateOne({"_id": c.id, **({"v": c.v} if c.v is not None else {})},
                                   {"$set": {"ix": c.ix, "sp": c.sp}}) for c in changes], ordered=False)

    query: dict[str, Any] = {"ts": {"$gte": since}} if since else {}
    cursor = coll.find(query, {"res": 1, "ix": 1, "sp": 1, "del": 1, "v": 1}, batch_size=batch_size)

    def docs() -> Iterator[dict[str, Any]]:
        for d in cursor:
            if progress:
                progress(1)
            yield d

    try:
        return reindex(docs(), extractor, write, batch_size=batch_size)
    finally:
        cursor.close()


def count_documents(db: Database[dict[str, Any]], resource_type: str) -> int:
    return db[resource_type].estimated_document_count()
