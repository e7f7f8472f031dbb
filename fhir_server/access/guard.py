"""The gate every interaction passes through to reach the store.

``rest/`` (and the search engine, bundles, operations, documents…) never talk to the
:class:`Repository` directly for resource data: they use the one :class:`Guard`, which

* asks the policy whether the caller may do the interaction on the type at all
  (``policy.require``: 403 for a type outside the scopes, 401 without a caller),
* adds the policy's filter to **every** query (``policy.filter``: the patient spaces and
  categories the caller may see),
* checks **every** document it returns (``policy.can_see``), so includes, history rows,
  bundle entries and Binaries are covered the same way,
* checks every write (``policy.check_write``) and strips server-controlled metadata the
  caller may not set (``policy.prepare_write``),
* notes every returned or written resource in the access journal that the audit trail
  is written from (:mod:`fhir_server.audit.journal`), and writes the write's AuditEvent
  inside the write's own transaction (``on_write``).

Contract for the search engine (the single entry point for every query it runs)::

    guard.find(caller, "search", "Observation", {"ix.code": ...}, sort=..., limit=...)   # the match page
    guard.find(caller, "include", "Practitioner", {"_id": {"$in": ids}})                 # _include / _revinclude
    guard.find(caller, "include", "Patient", {"ix.name": ...}, projection={"_id": 1, "sp": 1})
                                                       # chain / _has resolution (inner query)
    guard.count(caller, "Observation", filter_)                                          # total

``"search"`` raises 403 when the scopes do not cover the type; ``"include"`` never raises:
types and documents outside the scopes simply yield nothing. A projection must keep
``sp`` and, for category-limited scopes, ``res.category`` (the guard adds them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from fhir_server.access.policy import AccessPolicy, Interaction
from fhir_server.audit import journal
from fhir_server.fhir.errors import FhirError, Forbidden
from fhir_server.rest.context import Caller
from fhir_server.store.repository import Repository, Stored, Tx

__all__ = ["Guard", "WriteHook"]

WriteHook = Callable[[Tx, Caller, str, Stored], None]
_HISTORY_BATCHES = 20


class Guard:
    def __init__(self, repo: Repository, policy: AccessPolicy) -> None:
        self.repo = repo
        self.policy = policy
        self.on_write: WriteHook | None = None

    # ------------------------------------------------------------------ reads
    def current(self, caller: Caller, interaction: Interaction, type_: str, id_: str,
                tx: Tx | None = None) -> Stored | None:
        """The current version, or ``None`` when missing *or not visible to the caller*."""
        self._require(caller, interaction, type_)
        stored = self.repo.current(type_, id_, tx)
        if stored is None or not self.visible(caller, interaction, type_, stored):
            return None
        if interaction in ("read", "vread", "history"):
            journal.note(interaction, type_, id_, stored.owner, stored.version)
        return stored

    def version(self, caller: Caller, type_: str, id_: str, version: int) -> Stored | None:
        self._require(caller, "vread", type_)
        stored = self.repo.version(type_, id_, version)
        if stored is None or not self.visible(caller, "vread", type_, stored):
            return None
        journal.note("vread", type_, id_, stored.owner, stored.version)
        return stored

    def find(self, caller: Caller, interaction: Interaction, type_: str, filter_: dict[str, Any], *,
             sort: list[tuple[str, int]] | None = None, limit: int = 0,
             projection: dict[str, Any] | None = None, tx: Tx | None = None) -> Iterator[dict[str, Any]]:
        """Stored documents of ``type_`` matching ``filter_`` that the caller may see."""
        self._require(caller, interaction, type_)
        pf = self.policy.filter(caller, interaction, type_)
        query = {"$and": [filter_, pf]} if pf else filter_
        if projection is not None and any(v for v in projection.values()):
            projection = {**projection, "sp": 1, "del": 1}
            if "res" not in projection:  # the policy needs these parts of the resource
                projection["res.category"] = 1
                projection["res.meta"] = 1
                if type_ == "Binary":
                    projection["res.securityContext"] = 1
        full = projection is None or "res" in projection
        for doc in self.repo.find_raw(type_, query, sort=sort, limit=limit, projection=projection, tx=tx):
            if self.policy.can_see(caller, interaction, type_, doc):
                if full:
                    journal.note(interaction, type_, str(doc.get("_id")), doc.get("sp"), doc.get("v"))
                yield doc

    def count(self, caller: Caller, type_: str, filter_: dict[str, Any], *, limit: int = 0,
              max_time_ms: int = 0) -> int:
        """How many documents the caller may see match (exact: when the policy says its filter
        is only an over-approximation, ``filter_is_exact``, each document is checked)."""
        self._require(caller, "search", type_)
        pf = self.policy.filter(caller, "search", type_)
        query = {"$and": [filter_, pf]} if pf else filter_
        exact = getattr(self.policy, "filter_is_exact", None)
        if exact is not None and not exact(caller, "search", type_):
            # the filter over-approximates: count what the per-document check lets through
            return sum(1 for d in self.repo.find_raw(type_, query, limit=limit)
                       if self.policy.can_see(caller, "search", type_, d))
        return self.repo.count(type_, query, limit=limit, max_time_ms=max_time_ms)

    def history(self, caller: Caller, *, type_: str | None = None, id_: str | None = None,
                since: datetime | None = None, at: datetime | None = None,
                before: tuple[datetime, str] | None = None, limit: int = 50,
                types: list[str] | None = None) -> list[Stored]:
        if type_:
            self._require(caller, "history", type_)
        # History rows are checked one by one; keep reading (bounded) until ``limit`` visible rows are
        # found, so that pages are full and a "next" link never betrays invisible activity.
        out: list[Stored] = []
        cursor = before
        for _ in range(_HISTORY_BATCHES if at is None else 1):
            rows = self.repo.history(type_=type_, id_=id_, since=since, at=at, before=cursor, limit=limit,
                                     types=types)
            for r in rows:
                if self.visible(caller, "history", r.type, r):
                    out.append(r)
                    if len(out) >= limit:
                        break
            if len(out) >= limit or len(rows) < limit:
                break
            last = rows[-1]
            cursor = (last.last_updated, f"{last.type}/{last.id}/{last.version}")
        for r in out:
            journal.note("history", r.type, r.id, r.owner, r.version)
        return out

    def _require(self, caller: Caller, interaction: Interaction, type_: str) -> None:
        try:
            self.policy.require(caller, interaction, type_)
        except FhirError as exc:
            journal.note_denial(interaction, type_, str(exc.message))
            raise

    def visible(self, caller: Caller, interaction: Interaction, type_: str, stored: Stored) -> bool:
        """Whether one stored version may be shown to the caller (no ``require``, no journal)."""
        doc = {"_id": stored.id, "res": stored.resource, "sp": stored.owner, "del": stored.deleted}
        if stored.deleted and stored.resource is None and interaction in ("read", "vread", "history"):
            # a deletion carries no content: visible when the last content version was
            prev = self.repo.version(type_, stored.id, stored.version - 1) if stored.version > 1 else None
            if prev is not None and prev.resource is not None:
                doc["res"] = prev.resource
        return self.policy.can_see(caller, interaction, type_, doc)

    # ----------------------------------------------------------------- writes
    def prepare_write(self, caller: Caller, resource: dict[str, Any], previous: Stored | None) -> dict[str, Any]:
        """The resource with the metadata the caller may not set replaced (call before indexing)."""
        return self.policy.prepare_write(caller, resource, previous.resource if previous else None)

    def put(self, caller: Caller, interaction: Interaction, tx: Tx, type_: str, id_: str, *,
            previous: Stored | None, version: int, ts: datetime, resource: dict[str, Any] | None,
            ix: dict[str, Any], owner: str | None, deleted: bool = False, method: str = "PUT",
            blob: str | None = None) -> Stored:
        if type_ == "AuditEvent" and previous is not None:
            raise Forbidden("AuditEvents are immutable")
        self._require(caller, interaction, type_)
        try:
            self.policy.check_write(caller, interaction, type_, resource, owner,
                                    previous.owner if previous else None, existed=previous is not None)
        except FhirError as exc:
            journal.note_denial(interaction, type_, str(exc.message))
            raise
        stored = self.repo.put(tx, type_, id_, expected=previous.version if previous else None, version=version,
                               ts=ts, resource=resource, ix=ix, owner=owner, deleted=deleted, method=method,
                               blob=blob)
        journal.note(interaction, type_, id_, owner, version)
        if self.on_write is not None:
            self.on_write(tx, caller, interaction, stored)
        return stored
