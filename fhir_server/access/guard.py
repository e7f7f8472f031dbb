"""The gate every interaction passes through to reach the store.

``rest/`` never talks to the :class:`Repository` directly for resource data: it
uses a :class:`Guard`, which adds the policy's filter to every query and checks
every document it returns (reads, searches, includes, history, bundle entries,
binaries) and every write.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fhir_server.access.policy import AccessPolicy, Interaction
from fhir_server.rest.context import Caller
from fhir_server.store.repository import Repository, Stored, Tx

__all__ = ["Guard"]


class Guard:
    def __init__(self, repo: Repository, policy: AccessPolicy) -> None:
        self.repo = repo
        self.policy = policy

    # ------------------------------------------------------------------ reads
    def current(self, caller: Caller, interaction: Interaction, type_: str, id_: str,
                tx: Tx | None = None) -> Stored | None:
        """The current version, or ``None`` when missing *or not visible to the caller*."""
        self.policy.require(caller, interaction, type_)
        stored = self.repo.current(type_, id_, tx)
        if stored is None or not self.visible(caller, interaction, type_, stored):
            return None
        return stored

    def version(self, caller: Caller, type_: str, id_: str, version: int) -> Stored | None:
        self.policy.require(caller, "vread", type_)
        stored = self.repo.version(type_, id_, version)
        if stored is None or not self.visible(caller, "vread", type_, stored):
            return None
        return stored

    def find(self, caller: Caller, interaction: Interaction, type_: str, filter_: dict[str, Any], *,
             sort: list[tuple[str, int]] | None = None, limit: int = 0,
             projection: dict[str, Any] | None = None, tx: Tx | None = None) -> Iterator[dict[str, Any]]:
        """Stored documents of ``type_`` matching ``filter_`` that the caller may see."""
        self.policy.require(caller, interaction, type_)
        pf = self.policy.filter(caller, interaction, type_)
        query = {"$and": [filter_, pf]} if pf else filter_
        for doc in self.repo.find_raw(type_, query, sort=sort, limit=limit, projection=projection, tx=tx):
            if self.policy.can_see(caller, interaction, type_, doc):
                yield doc

    def count(self, caller: Caller, type_: str, filter_: dict[str, Any], *, limit: int = 0,
              max_time_ms: int = 0) -> int:
        self.policy.require(caller, "search", type_)
        pf = self.policy.filter(caller, "search", type_)
        query = {"$and": [filter_, pf]} if pf else filter_
        return self.repo.count(type_, query, limit=limit, max_time_ms=max_time_ms)

    def history(self, caller: Caller, *, type_: str | None = None, id_: str | None = None,
                since: datetime | None = None, at: datetime | None = None,
                before: tuple[datetime, str] | None = None, limit: int = 50,
                types: list[str] | None = None) -> list[Stored]:
        if type_:
            self.policy.require(caller, "history", type_)
        rows = self.repo.history(type_=type_, id_=id_, since=since, at=at, before=before, limit=limit, types=types)
        return [r for r in rows if self.visible(caller, "history", r.type, r)]

    def visible(self, caller: Caller, interaction: Interaction, type_: str, stored: Stored) -> bool:
        doc = {"_id": stored.id, "res": stored.resource, "sp": stored.owner, "del": stored.deleted}
        return self.policy.can_see(caller, interaction, type_, doc)

    # ----------------------------------------------------------------- writes
    def put(self, caller: Caller, interaction: Interaction, tx: Tx, type_: str, id_: str, *,
            previous: Stored | None, version: int, ts: datetime, resource: dict[str, Any] | None,
            ix: dict[str, Any], owner: str | None, deleted: bool = False, method: str = "PUT",
            blob: str | None = None) -> Stored:
        self.policy.require(caller, interaction, type_)
        self.policy.check_write(caller, interaction, type_, resource, owner, previous.owner if previous else None)
        return self.repo.put(tx, type_, id_, expected=previous.version if previous else None, version=version,
                             ts=ts, resource=resource, ix=ix, owner=owner, deleted=deleted, method=method,
                             blob=blob)
