"""Storage of FHIR resources in MongoDB (the only importer of pymongo, with ``store/*``).

Storage model (DESIGN.md §2):

* one collection per resource type holds the **current** version of each resource::

      {_id: id, res: <FHIR JSON>, v: versionId, ts: lastUpdated, del: bool, sp: owner, ix: {...}}

* one ``history`` collection holds **every** version (the current one included),
  keyed ``"Type/id/v"``. Keeping the current version there too means that
  instance, type and system history are one indexed query on one collection.
* every write runs in a MongoDB multi-document transaction: the current document
  is swapped by compare-and-set on ``v`` and the history row is inserted in the
  same transaction, so no reader ever sees one without the other, and two
  concurrent writers can never both win the same version.
* deletes are logical: ``del: true`` and a history row with ``del: true``.
* Binary payloads over ``binary_inline_max`` live in GridFS (content addressed
  by SHA-256, written before the transaction, so a retry is idempotent).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import gridfs
from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
)
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from fhir_server.fhir.errors import Conflict, FhirError, NotImplementedFeature
from fhir_server.store.plan import QueryRunner, flatten_and

__all__ = ["Repository", "RetryTransaction", "Stored", "Tx", "connect", "flatten_and"]

log = logging.getLogger(__name__)
T = TypeVar("T")

HISTORY = "history"
#: fields leading an index of the history collection (see ensure_base_indexes)
_HISTORY_LEADING = frozenset({"_id", "t", "ts"})
_MAX_TX_SECONDS = 30.0


def connect(uri: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=10_000, uuidRepresentation="standard")


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored version of a resource."""

    type: str
    id: str
    version: int
    last_updated: datetime
    deleted: bool
    resource: dict[str, Any] | None
    owner: str | None = None
    blob: str | None = None
    method: str | None = None

    @classmethod
    def from_current(cls, type_: str, doc: Mapping[str, Any]) -> Stored:
        return cls(type_, doc["_id"], doc["v"], doc["ts"], bool(doc.get("del")), doc.get("res"),
                   doc.get("sp"), doc.get("blob"))

    @classmethod
    def from_history(cls, doc: Mapping[str, Any]) -> Stored:
        return cls(doc["t"], doc["rid"], doc["v"], doc["ts"], bool(doc.get("del")), doc.get("res"),
                   doc.get("sp"), doc.get("blob"), doc.get("m"))


class RetryTransaction(Exception):
    """Raised inside a transaction to have it retried from the start (a benign race)."""


class Tx:
    """An open write transaction (opaque to callers outside ``store``).

    New documents and history rows are buffered and written in bulk (``insert_many``)
    before any query of the transaction and at commit, so a transaction creating many
    resources costs a few round trips, not three per resource. ``known`` holds current
    documents prefetched (or written) in this transaction.
    """

    __slots__ = ("session", "after_commit", "pending", "history", "known")

    def __init__(self, session: ClientSession | None) -> None:
        self.session = session
        self.after_commit: list[Callable[[], None]] = []
        self.pending: dict[str, dict[str, dict[str, Any]]] = {}
        self.history: list[dict[str, Any]] = []
        self.known: dict[tuple[str, str], dict[str, Any] | None] = {}


def _is_transient(exc: PyMongoError) -> bool:
    if isinstance(exc, ConnectionFailure):
        return True
    if exc.has_error_label("TransientTransactionError"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in (112, 251, 24)  # WriteConflict, NoSuchTransaction, LockTimeout


class Repository:
    """Versioned resource storage on one MongoDB database.

    Contract of the write methods: they must be called inside :meth:`transaction`
    (pass the ``Tx``); they raise :class:`Conflict` when the compare-and-set on the
    version fails, which callers turn into 409/412 or a retry.
    """

    def __init__(self, client: MongoClient[dict[str, Any]], database: str, *, binary_inline_max: int = 1 << 20,
                 index_hook: Callable[[str], list[tuple[list[tuple[str, int]], dict[str, Any]]]] | None = None,
                 query_split: str = "auto") -> None:
        self.client = client
        self.db: Database[dict[str, Any]] = client.get_database(
            database,
            codec_options=CodecOptions(tz_aware=True, tzinfo=UTC),
            write_concern=WriteConcern("majority"),
            read_concern=ReadConcern("majority"),
        )
        self.binary_inline_max = binary_inline_max
        self._index_hook = index_hook
        self._ensured: set[str] = set()
        self._leading: dict[str, frozenset[str]] = {}
        self._fs = gridfs.GridFS(self.db, collection="blobs")
        self.supports_transactions = self._detect_transactions()
        #: split $or queries into index-served branches (see store/plan.py): "auto" = for engines whose
        #: planner does not serve $or from indexes (SecantusDB)
        self.split_queries = query_split == "on" or (query_split == "auto" and self._engine() == "secantus")

    # ------------------------------------------------------------------ set-up
    def _detect_transactions(self) -> bool:
        try:
            hello = self.client.admin.command("hello")
        except PyMongoError:
            return False
        return bool(hello.get("setName") or hello.get("msg") == "isdbgrid")

    def _engine(self) -> str:
        try:
            return str(self.client.admin.command("hello").get("setName") or "")
        except PyMongoError:
            return ""

    def set_index_hook(self, hook: Callable[[str], list[tuple[list[tuple[str, int]], dict[str, Any]]]]) -> None:
        """Declare the extra indexes of each type (``type -> [(keys, options)]``), created by ensure_type."""
        self._index_hook = hook
        self._leading.clear()
        self._ensured.clear()

    def leading_fields(self, type_: str) -> frozenset[str]:
        """Fields that lead an index of the type's collection (what a query can be served by)."""
        cached = self._leading.get(type_)
        if cached is None:
            fields = {"_id", "ts", "sp"}
            if self._index_hook is not None:
                fields |= {keys[0][0] for keys, _ in self._index_hook(type_) if keys}
            cached = self._leading[type_] = frozenset(fields)
        return cached

    def _runner(self, type_: str, tx: Tx | None = None, max_time_ms: int = 0) -> QueryRunner:
        return QueryRunner(self.db[type_], self.leading_fields(type_), split=self.split_queries, session=_s(tx),
                           max_time_ms=max_time_ms)

    def ensure_base_indexes(self) -> None:
        h = self.db[HISTORY]
        h.create_index([("t", ASCENDING), ("rid", ASCENDING), ("v", DESCENDING)], name="t_rid_v")
        h.create_index([("t", ASCENDING), ("ts", DESCENDING), ("_id", DESCENDING)], name="t_ts")
        h.create_index([("ts", DESCENDING), ("_id", DESCENDING)], name="ts")
        self.db["conditions"].create_index([("t", ASCENDING), ("key", ASCENDING)], name="t_key", unique=True)

    def ensure_type(self, type_: str) -> None:
        """Create the collection and indexes of a type once per process (idempotent)."""
        if type_ in self._ensured:
            return
        coll = self.db[type_]
        coll.create_index([("ts", DESCENDING), ("_id", DESCENDING)], name="ts")
        coll.create_index([("sp", ASCENDING), ("ts", DESCENDING)], name="sp_ts")
        if self._index_hook is not None:
            for keys, opts in self._index_hook(type_):
                coll.create_index(keys, **opts)
        self._ensured.add(type_)

    def drop_everything(self) -> None:
        """Test helper: drop the whole database."""
        self.client.drop_database(self.db.name)
        self._ensured.clear()

    # ------------------------------------------------------------ transactions
    def transaction(self, fn: Callable[[Tx], T], *, atomic: bool = False) -> T:
        """Run ``fn`` in one multi-document transaction, retrying transient failures.

        ``fn`` may run several times; it must compute everything from what it reads
        through the ``Tx`` (snapshot isolation). Callbacks in ``tx.after_commit`` run
        once, after the commit succeeded.

        On a deployment without transactions (standalone ``mongod``) single-resource
        writes still work (``put`` then orders its writes so that a failure leaves no
        visible half-write), but ``atomic=True`` work (transaction bundles) is refused.
        """
        if not self.supports_transactions:
            if atomic:
                raise NotImplementedFeature(
                    "This MongoDB deployment has no multi-document transactions (standalone mongod): "
                    "transaction bundles are unavailable; run a replica set"
                )
            tx = Tx(None)
            result = fn(tx)
            for cb in tx.after_commit:
                cb()
            return result
        deadline = time.monotonic() + _MAX_TX_SECONDS
        attempt = 0
        with self.client.start_session(causal_consistency=False) as session:
            while True:
                attempt += 1
                tx = Tx(session)
                session.start_transaction(read_concern=ReadConcern("snapshot"),
                                          write_concern=WriteConcern("majority"))
                try:
                    result = fn(tx)
                    self.flush(tx)
                except FhirError:
                    _abort(session)
                    raise
                except RetryTransaction:
                    _abort(session)
                    if time.monotonic() < deadline:
                        _backoff(attempt)
                        continue
                    raise Conflict("Too much contention on a conditional create; retry") from None
                except PyMongoError as exc:
                    _abort(session)
                    if _is_transient(exc) and time.monotonic() < deadline:
                        _backoff(attempt)
                        continue
                    if isinstance(exc, OperationFailure) and exc.code == 112:
                        raise Conflict("Concurrent modification of the same resource; retry") from exc
                    raise
                except BaseException:
                    _abort(session)
                    raise
                try:
                    _commit(session, deadline)
                except PyMongoError as exc:
                    if _is_transient(exc) and time.monotonic() < deadline:
                        _backoff(attempt)
                        continue
                    if isinstance(exc, OperationFailure) and exc.code == 112:
                        raise Conflict("Concurrent modification of the same resource; retry") from exc
                    raise
                for cb in tx.after_commit:
                    try:
                        cb()
                    except Exception:  # noqa: BLE001 - never fail a committed write
                        log.exception("after-commit callback failed")
                return result

    # ------------------------------------------------------------------ reads
    def current(self, type_: str, id_: str, tx: Tx | None = None) -> Stored | None:
        if tx is not None and tx.session is not None:
            pending = tx.pending.get(type_, {}).get(id_)
            if pending is not None:
                return Stored.from_current(type_, pending)
            if (type_, id_) in tx.known:
                known = tx.known[(type_, id_)]
                return Stored.from_current(type_, known) if known else None
        doc = self.db[type_].find_one({"_id": id_}, {"ix": 0}, session=_s(tx))
        return Stored.from_current(type_, doc) if doc else None

    def prefetch(self, tx: Tx, type_: str, ids: list[str]) -> None:
        """Read the current documents of ``ids`` in one query, for the transaction's later reads."""
        if tx.session is None or not ids:
            return
        wanted = [i for i in ids if (type_, i) not in tx.known and i not in tx.pending.get(type_, {})]
        if not wanted:
            return
        found = {d["_id"]: d for d in self.db[type_].find({"_id": {"$in": wanted}}, {"ix": 0}, session=tx.session)}
        for i in wanted:
            tx.known[(type_, i)] = found.get(i)

    def flush(self, tx: Tx) -> None:
        """Write the transaction's buffered documents (before its queries and at commit)."""
        if tx.session is None:
            return
        pending, history = tx.pending, tx.history
        tx.pending, tx.history = {}, []
        for type_, docs in pending.items():
            if not docs:
                continue
            try:
                self.db[type_].insert_many(list(docs.values()), ordered=True, session=tx.session)
            except DuplicateKeyError as exc:
                raise Conflict(f"A {type_} in this transaction already exists") from exc
            except BulkWriteError as exc:
                if any(e.get("code") == 11000 for e in exc.details.get("writeErrors", [])):
                    raise Conflict(f"A {type_} in this transaction already exists") from exc
                raise
            for id_, doc in docs.items():
                tx.known[(type_, id_)] = doc
        if history:
            try:
                self.db[HISTORY].insert_many(history, ordered=True, session=tx.session)
            except (DuplicateKeyError, BulkWriteError) as exc:
                raise Conflict("A version written in this transaction already exists") from exc

    def version(self, type_: str, id_: str, version: int) -> Stored | None:
        doc = self.db[HISTORY].find_one({"_id": f"{type_}/{id_}/{version}"})
        return Stored.from_history(doc) if doc else None

    def find(self, type_: str, filter_: dict[str, Any], *, sort: list[tuple[str, int]] | None = None,
             limit: int = 0, projection: dict[str, Any] | None = None, tx: Tx | None = None) -> Iterator[Stored]:
        """Current, non-deleted resources of a type matching a MongoDB filter on the stored shape."""
        query = {"del": False, **filter_}
        if tx is not None:
            self.flush(tx)
        for doc in self._runner(type_, tx).find(query, projection or {"ix": 0}, sort, limit):
            yield Stored.from_current(type_, doc)

    def find_raw(self, type_: str, filter_: dict[str, Any], *, sort: list[tuple[str, int]] | None = None,
                 limit: int = 0, projection: dict[str, Any] | None = None,
                 tx: Tx | None = None) -> Iterator[dict[str, Any]]:
        """Like :meth:`find`, returning the stored documents themselves (for the search executor)."""
        if tx is not None:
            self.flush(tx)
        return self._runner(type_, tx).find(filter_, projection, sort, limit)

    def count(self, type_: str, filter_: dict[str, Any], *, limit: int = 0, max_time_ms: int = 0) -> int | None:
        """Matching documents, or None when counting exceeded ``max_time_ms``."""
        try:
            return self._runner(type_, max_time_ms=max_time_ms).count(filter_, limit)
        except ExecutionTimeout:
            return None

    def nonempty_types(self) -> list[str]:
        """Collections of resource types holding at least one document (system-level search)."""
        names = [n for n in self.db.list_collection_names() if n[:1].isupper()]
        return sorted(n for n in names if self.db[n].find_one({}, {"_id": 1}) is not None)

    def estimated_count(self, type_: str) -> int:
        return self.db[type_].estimated_document_count()

    def history(self, *, type_: str | None = None, id_: str | None = None, since: datetime | None = None,
                at: datetime | None = None, before: tuple[datetime, str] | None = None,
                limit: int = 50, types: list[str] | None = None) -> list[Stored]:
        """Versions, newest first. ``before`` is a keyset cursor (ts, _id) for paging."""
        q: dict[str, Any] = {}
        if type_:
            q["t"] = type_
        elif types is not None:
            q["t"] = {"$in": types}
        if id_:
            q["rid"] = id_
        ts: dict[str, Any] = {}
        if since:
            ts["$gte"] = since
        if at:
            ts["$lte"] = at
        if ts:
            q["ts"] = ts
        if before:
            q["$or"] = [{"ts": {"$lt": before[0]}}, {"ts": before[0], "_id": {"$lt": before[1]}}]
        runner = QueryRunner(self.db[HISTORY], _HISTORY_LEADING, split=self.split_queries)
        docs = runner.find(q, None, [("ts", DESCENDING), ("_id", DESCENDING)], limit)
        rows = [Stored.from_history(d) for d in docs]
        if at:
            # _at: the version current at that instant, one per resource
            seen: set[tuple[str, str]] = set()
            rows = [r for r in rows if not ((r.type, r.id) in seen or seen.add((r.type, r.id)))]
        return rows

    # ----------------------------------------------------------------- writes
    def put(self, tx: Tx, type_: str, id_: str, *, expected: int | None, version: int, ts: datetime,
            resource: dict[str, Any] | None, ix: dict[str, Any], owner: str | None,
            deleted: bool = False, method: str = "PUT", blob: str | None = None) -> Stored:
        """Write version ``version`` of ``type_/id_`` in ``tx``.

        ``expected`` is the version the caller read (``None``: the resource must not exist).
        Raises :class:`Conflict` if the current version is not ``expected``.
        """
        self.ensure_type(type_)
        s = tx.session
        doc = {"_id": id_, "res": resource, "v": version, "ts": ts, "del": deleted, "sp": owner, "ix": ix}
        if blob:
            doc["blob"] = blob
        coll = self.db[type_]
        hist = {"_id": f"{type_}/{id_}/{version}", "t": type_, "rid": id_, "v": version, "ts": ts,
                "del": deleted, "res": resource, "sp": owner, "m": method}
        if blob:
            hist["blob"] = blob
        if s is None:
            return self._put_without_transaction(coll, doc, hist, expected)
        buffered = tx.pending.setdefault(type_, {})
        if expected is None:
            if id_ in buffered or tx.known.get((type_, id_)) is not None:
                raise Conflict(f"{type_}/{id_} already exists")
            buffered[id_] = doc  # inserted in bulk by flush(); a duplicate key then fails the transaction
        elif id_ in buffered:  # created earlier in this transaction: still only in the buffer
            if buffered[id_]["v"] != expected:
                raise Conflict(f"{type_}/{id_} was modified in this transaction (expected version {expected})")
            buffered[id_] = doc
        else:
            found = coll.find_one_and_replace({"_id": id_, "v": expected}, doc, session=s,
                                              projection={"_id": 1}, return_document=ReturnDocument.BEFORE)
            if found is None:
                raise Conflict(f"{type_}/{id_} was modified concurrently (expected version {expected})")
            tx.known[(type_, id_)] = doc
        tx.history.append(hist)
        return Stored(type_, id_, version, ts, deleted, resource, owner, blob, method)

    def _put_without_transaction(self, coll: Any, doc: dict[str, Any], hist: dict[str, Any],
                                 expected: int | None) -> Stored:
        """Standalone mongod: claim the version in history first (unique key), then swap.

        If the swap fails the claim is withdrawn, so readers of the current version
        never see a version that history lacks.
        """
        try:
            self.db[HISTORY].insert_one(hist)
        except DuplicateKeyError as exc:
            raise Conflict(f"{hist['_id']} already exists") from exc
        try:
            if expected is None:
                coll.insert_one(doc)
            elif coll.find_one_and_replace({"_id": doc["_id"], "v": expected}, doc, projection={"_id": 1}) is None:
                raise Conflict(f"{hist['t']}/{hist['rid']} was modified concurrently (expected version {expected})")
        except (DuplicateKeyError, Conflict) as exc:
            self.db[HISTORY].delete_one({"_id": hist["_id"]})
            if isinstance(exc, Conflict):
                raise
            raise Conflict(f"{hist['t']}/{hist['rid']} already exists") from exc
        return Stored(hist["t"], hist["rid"], hist["v"], hist["ts"], hist["del"], hist["res"], hist["sp"],
                      hist.get("blob"), hist["m"])

    def claim_condition(self, tx: Tx, type_: str, key: str, id_: str) -> None:
        """Serialise conditional creates that share a condition.

        Every conditional create that found no match writes the row of its condition
        key (unique index on (t, key)) in its transaction. Two concurrent ones thus
        write-conflict: one commits, the other is retried from the start, runs its
        search again on a fresh snapshot and finds the winner.
        """
        if tx.session is None:
            return  # standalone mongod: best effort only (documented)
        try:
            self.db["conditions"].update_one({"t": type_, "key": key}, {"$set": {"rid": id_}, "$inc": {"n": 1}},
                                             upsert=True, session=tx.session)
        except DuplicateKeyError as exc:
            raise RetryTransaction("concurrent conditional create") from exc

    def release_condition(self, tx: Tx, type_: str, rid: str) -> None:
        self.db["conditions"].delete_many({"t": type_, "rid": rid}, session=tx.session)

    # ------------------------------------------------------------ server state
    def get_state(self, key: str) -> dict[str, Any] | None:
        """Server bookkeeping (not FHIR data), e.g. the indexing state of runtime SearchParameters."""
        return self.db["server_state"].find_one({"_id": key})

    def set_state(self, key: str, value: dict[str, Any]) -> None:
        self.db["server_state"].replace_one({"_id": key}, {"_id": key, **value}, upsert=True)

    # ---------------------------------------------------------------- binaries
    def put_blob(self, data: bytes, content_type: str | None) -> str:
        """Store a large payload in GridFS (content addressed); returns its key."""
        key = hashlib.sha256(data).hexdigest()
        if not self._fs.exists({"_id": key}):
            try:
                self._fs.put(data, _id=key, contentType=content_type)
            except gridfs.errors.FileExists:
                pass
        return key

    def open_blob(self, key: str) -> Any:
        """A file-like GridOut (``read(n)``, ``length``) for streaming."""
        return self._fs.get(key)


def _s(tx: Tx | None) -> ClientSession | None:
    return tx.session if tx else None


def _abort(session: ClientSession) -> None:
    if session.in_transaction:
        try:
            session.abort_transaction()
        except PyMongoError:
            log.debug("abort failed", exc_info=True)


def _commit(session: ClientSession, deadline: float) -> None:
    while True:
        try:
            session.commit_transaction()
            return
        except PyMongoError as exc:
            if exc.has_error_label("UnknownTransactionCommitResult") and time.monotonic() < deadline:
                continue
            raise


def _backoff(attempt: int) -> None:
    time.sleep(min(0.2, 0.002 * (2 ** min(attempt, 7))) * random.random())


def utcnow() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)
