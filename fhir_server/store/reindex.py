"""The MongoDB side of re-indexing: stream one collection, write back changed ``ix``/``sp``.

Changing ``sp`` moves a document between shards on a sharded cluster (``sp`` is the shard
key); MongoDB allows it in an update since 4.2 (inside a transaction or retryable write).
"""

from __future__ import annotations

from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from fhir_server.search.extract import Extractor
from fhir_server.search.reindex import Change, ReindexStats, reindex

__all__ = ["reindex_collection"]


def reindex_collection(db: Database[dict[str, Any]], resource_type: str, extractor: Extractor, *,
                       batch_size: int = 500) -> ReindexStats:
    """Recompute the search values of every current ``resource_type`` document."""
    coll = db[resource_type]

    def write(changes: list[Change]) -> None:
        coll.bulk_write([UpdateOne({"_id": c.id}, {"$set": {"ix": c.ix, "sp": c.sp}}) for c in changes],
                        ordered=False)

    cursor = coll.find({}, {"res": 1, "ix": 1, "sp": 1, "del": 1}, batch_size=batch_size)
    try:
        return reindex(cursor, extractor, write, batch_size=batch_size)
    finally:
        cursor.close()
