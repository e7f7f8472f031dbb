"""The FHIR RESTful interactions, free of HTTP (https://hl7.org/fhir/R4/http.html).

Each method takes a :class:`RequestContext` and plain values (ids, parsed bodies,
precondition versions) and returns a :class:`Result` or raises a typed error from
``fhir_server.fhir.errors``. Writes run in one store transaction each; every
read and write goes through the access :class:`Guard`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

import jsonpatch

from fhir_server.access.guard import Guard
from fhir_server.fhir import models
from fhir_server.fhir.errors import (
    BadRequest,
    Gone,
    InvalidResource,
    Issue,
    NotFound,
    PreconditionFailed,
    Unprocessable,
)
from fhir_server.fhir.fhirpatch import apply_fhirpatch, is_fhirpatch
from fhir_server.fhir.validate import ID_RE, Validator
from fhir_server.rest.context import RequestContext
from fhir_server.rest.cursor import CursorCodec
from fhir_server.rest.dates import parse_fhir_datetime
from fhir_server.rest.indexing import Indexer
from fhir_server.store.repository import Repository, Stored, Tx, utcnow

_ONE_MS = timedelta(milliseconds=1)

__all__ = ["FhirService", "Result", "Searcher", "instant", "parse_instant"]


@dataclass
class Result:
    """The outcome of an interaction: a status, the affected version and/or a body."""

    status: int
    stored: Stored | None = None
    body: dict[str, Any] | None = None
    location: str | None = None
    issues: list[Issue] = field(default_factory=list)


class Searcher(Protocol):
    def match_ids(self, ctx: RequestContext, type_: str, params: list[tuple[str, str]], *,
                  tx: Tx | None = None, limit: int = 2) -> list[str]:
        """Ids of the current resources matching a search (for conditional interactions)."""

    def search(self, ctx: RequestContext, type_: str | None, params: list[tuple[str, str]], *,
               compartment: tuple[str, str] | None = None) -> dict[str, Any]:
        """A searchset Bundle."""

    def canonical_key(self, type_: str, params: list[tuple[str, str]]) -> str:
        """A canonical form of a conditional query (the conditional-create claim key)."""


def instant(ts: datetime) -> str:
    """FHIR instant with milliseconds and an explicit offset."""
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(value: str, param: str) -> datetime:
    return parse_fhir_datetime(value, param)


def _stamp(resource: dict[str, Any], id_: str, version: int, ts: datetime) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(ts)
    out: dict[str, Any] = {"resourceType": resource["resourceType"], "id": id_, "meta": meta}
    for k, v in resource.items():
        if k not in out:
            out[k] = v
    return out


def _split_query(query: str, what: str) -> list[tuple[str, str]]:
    query = query.lstrip("?")
    if "?" in query:
        query = query.split("?", 1)[1]
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        raise BadRequest(f"Empty {what} condition", expression=what)
    return pairs


class FhirService:
    """Create, read, vread, update, patch, delete and history of any R4 resource type."""

    def __init__(self, repo: Repository, guard: Guard, validator: Validator, indexer: Indexer,
                 searcher: Searcher, cursors: CursorCodec, *, default_count: int = 20, max_count: int = 1000,
                 binary_inline_max: int = 1 << 20) -> None:
        self.repo = repo
        self.guard = guard
        self.validator = validator
        self.indexer = indexer
        self.searcher = searcher
        self.cursors = cursors
        self.default_count = default_count
        self.max_count = max_count
        self.binary_inline_max = binary_inline_max
        #: type -> checks run on every incoming resource of that type after structural validation
        #: (raise a typed error, e.g. Unprocessable, to refuse it)
        self.checks: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        #: called once per committed write: (type, stored version) — deletes included
        self.listeners: list[Callable[[str, Stored], None]] = []

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def check_type(type_: str) -> None:
        if not models.is_resource_type(type_):
            raise NotFound(f"Unknown resource type '{type_}'", expression="type")

    @staticmethod
    def check_id(id_: str) -> None:
        if not ID_RE.match(id_):
            raise BadRequest(f"Invalid resource id '{id_}'", expression="id")

    def _materialise(self, type_: str, resource: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Move a large Binary payload to GridFS (before the transaction; content addressed)."""
        if type_ != "Binary" or not isinstance(resource.get("data"), str):
            return resource, None
        data = resource["data"]
        if len(data) * 3 // 4 <= self.binary_inline_max:
            return resource, None
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidResource("Binary.data is not valid base64", expression="Binary.data") from exc
        key = self.repo.put_blob(raw, resource.get("contentType"))
        slim = {k: v for k, v in resource.items() if k != "data"}
        return slim, key

    def _write(self, ctx: RequestContext, tx: Tx, type_: str, id_: str, resource: dict[str, Any],
               previous: Stored | None, blob: str | None, method: str, interaction: str) -> Stored:
        version = previous.version + 1 if previous else 1
        ts = utcnow()
        if previous is not None and ts <= previous.last_updated:
            ts = previous.last_updated.replace(microsecond=previous.last_updated.microsecond) + _ONE_MS
        resource = self.guard.prepare_write(ctx.caller, resource, previous)  # drop meta the caller may not set
        for check in self.checks.get(type_, ()):
            check(resource)
        stamped = _stamp(resource, id_, version, ts)
        ix = self.indexer.index(stamped)
        owner = self.indexer.owner(stamped)
        stored = self.guard.put(ctx.caller, interaction, tx, type_, id_, previous=previous, version=version, ts=ts,
                                resource=stamped, ix=ix, owner=owner, method=method, blob=blob)
        self._notify(tx, type_, stored)
        return stored

    def _notify(self, tx: Tx, type_: str, stored: Stored) -> None:
        for listener in self.listeners:
            tx.after_commit.append(lambda f=listener: f(type_, stored))

    def full_resource(self, stored: Stored) -> dict[str, Any]:
        """The resource as FHIR JSON (a GridFS Binary payload put back as base64)."""
        res = stored.resource or {}
        if stored.blob and "data" not in res:
            res = dict(res)
            res["data"] = base64.b64encode(self.repo.open_blob(stored.blob).read()).decode()
        return res

    def binary_stream(self, stored: Stored, chunk: int = 256 * 1024) -> tuple[Iterator[bytes], int]:
        """The raw bytes of a Binary, streamed from GridFS when large."""
        res = stored.resource or {}
        if stored.blob:
            grid = self.repo.open_blob(stored.blob)

            def gen() -> Iterator[bytes]:
                while True:
                    part = grid.read(chunk)
                    if not part:
                        return
                    yield part

            return gen(), int(grid.length)
        raw = base64.b64decode(res.get("data", "") or "")
        return iter([raw]), len(raw)

    # ------------------------------------------------------------------ reads
    def read(self, ctx: RequestContext, type_: str, id_: str) -> Stored:
        self.check_type(type_)
        self.check_id(id_)
        stored = self.guard.current(ctx.caller, "read", type_, id_)
        if stored is None:
            raise NotFound(f"{type_}/{id_} is not known", expression=f"{type_}/{id_}")
        if stored.deleted:
            raise Gone(f"{type_}/{id_} was deleted (version {stored.version})", expression=f"{type_}/{id_}",
                       headers={"ETag": f'W/"{stored.version}"'})
        return stored

    def vread(self, ctx: RequestContext, type_: str, id_: str, vid: str) -> Stored:
        self.check_type(type_)
        self.check_id(id_)
        if not vid.isdigit():
            raise NotFound(f"Version '{vid}' of {type_}/{id_} is not known", expression="vid")
        stored = self.guard.version(ctx.caller, type_, id_, int(vid))
        if stored is None:
            if self.guard.current(ctx.caller, "vread", type_, id_) is None:
                raise NotFound(f"{type_}/{id_} is not known", expression=f"{type_}/{id_}")
            raise NotFound(f"Version {vid} of {type_}/{id_} is not known", expression="vid")
        if stored.deleted:
            raise Gone(f"Version {vid} of {type_}/{id_} is a deletion", expression=f"{type_}/{id_}")
        return stored

    # ----------------------------------------------------------------- create
    def create(self, ctx: RequestContext, type_: str, resource: dict[str, Any], *,
               if_none_exist: str | None = None, tx: Tx | None = None, id_: str | None = None) -> Result:
        """POST [type]; ``If-None-Exist`` makes it conditional (0 → create, 1 → 200, more → 412)."""
        self.check_type(type_)
        resource = dict(resource)
        resource.pop("id", None)  # the server assigns ids on create
        self.validator.validate(resource, expected_type=type_)
        resource, blob = self._materialise(type_, resource)
        new_id = id_ or str(uuid.uuid4())
        cond = _split_query(if_none_exist, "If-None-Exist") if if_none_exist else None

        def op(t: Tx) -> Result:
            if cond is not None:
                found = self.searcher.match_ids(ctx, type_, cond, tx=t, limit=2)
                if len(found) > 1:
                    raise PreconditionFailed(f"If-None-Exist matched {len(found)} resources",
                                             expression="If-None-Exist")
                if found:
                    existing = self.guard.current(ctx.caller, "read", type_, found[0], t)
                    if existing is not None:
                        return Result(200, existing)
                self.repo.claim_condition(t, type_, self.searcher.canonical_key(type_, cond), new_id)
            stored = self._write(ctx, t, type_, new_id, resource, None, blob, "POST", "create")
            return Result(201, stored)

        return op(tx) if tx is not None else self.repo.transaction(op)

    # ----------------------------------------------------------------- update
    def update(self, ctx: RequestContext, type_: str, id_: str, resource: dict[str, Any], *,
               if_match: int | None = None, tx: Tx | None = None) -> Result:
        """PUT [type]/[id]; creates the resource when the id is new (update-as-create)."""
        self.check_type(type_)
        self.check_id(id_)
        body_id = resource.get("id")
        if body_id is None:
            raise BadRequest("The resource must carry its id on update", expression=f"{type_}.id")
        if body_id != id_:
            raise BadRequest(f"Resource id '{body_id}' does not match the URL id '{id_}'", expression=f"{type_}.id")
        self.validator.validate(resource, expected_type=type_)
        resource, blob = self._materialise(type_, resource)

        def op(t: Tx) -> Result:
            cur = self.repo.current(type_, id_, t)
            self.guard.policy.require(ctx.caller, "update", type_)
            if cur is not None and not self.guard.visible(ctx.caller, "update", type_, cur):
                # exists but not visible: behave as if it did not exist, without overwriting it
                raise NotFound(f"{type_}/{id_} is not known", expression=f"{type_}/{id_}")
            self._check_if_match(type_, id_, cur, if_match)
            stored = self._write(ctx, t, type_, id_, resource, cur, blob, "PUT", "update")
            return Result(201 if cur is None or cur.deleted else 200, stored)

        return op(tx) if tx is not None else self.repo.transaction(op)

    @staticmethod
    def _check_if_match(type_: str, id_: str, cur: Stored | None, if_match: int | None) -> None:
        if if_match is None:
            return
        if cur is None or cur.deleted:
            raise PreconditionFailed(f"If-Match: {type_}/{id_} has no current version", expression="If-Match")
        if cur.version != if_match:
            raise PreconditionFailed(f"If-Match: version {if_match} is not the current version {cur.version}",
                                     expression="If-Match")

    def conditional_update(self, ctx: RequestContext, type_: str, query: str, resource: dict[str, Any], *,
                           if_match: int | None = None, tx: Tx | None = None) -> Result:
        """PUT [type]?[search]: 0 matches → create, 1 → update it, several → 412."""
        self.check_type(type_)
        cond = _split_query(query, "search")

        def op(t: Tx) -> Result:
            found = self.searcher.match_ids(ctx, type_, cond, tx=t, limit=2)
            if len(found) > 1:
                raise PreconditionFailed(f"Conditional update matched {len(found)} resources", expression="url")
            body_id = resource.get("id")
            if found:
                if body_id is not None and body_id != found[0]:
                    raise BadRequest(f"Resource id '{body_id}' differs from the matched {type_}/{found[0]}",
                                     expression=f"{type_}.id")
                return self.update(ctx, type_, found[0], {**resource, "id": found[0]}, if_match=if_match, tx=t)
            if body_id is not None:
                self.check_id(body_id)
                return self.update(ctx, type_, body_id, resource, if_match=if_match, tx=t)
            self.repo.claim_condition(t, type_, self.searcher.canonical_key(type_, cond), "?")
            return self.create(ctx, type_, resource, tx=t)

        return op(tx) if tx is not None else self.repo.transaction(op)

    # ------------------------------------------------------------------ patch
    def patch(self, ctx: RequestContext, type_: str, id_: str, operations: Any, *,
              if_match: int | None = None, tx: Tx | None = None) -> Result:
        """PATCH with a JSON Patch document (RFC 6902, a list) or a FHIRPath Patch (a Parameters resource)."""
        self.check_type(type_)
        self.check_id(id_)
        fhirpath_patch = is_fhirpatch(operations)
        if not fhirpath_patch:
            if not isinstance(operations, list) or not operations:
                raise BadRequest("A JSON Patch body must be a non-empty array of operations", expression="Patch")
            try:
                patch = jsonpatch.JsonPatch(operations)
            except (jsonpatch.InvalidJsonPatch, TypeError, KeyError) as exc:
                raise BadRequest(f"Invalid JSON Patch: {exc}", expression="Patch") from exc

        def apply(current: dict[str, Any]) -> dict[str, Any]:
            if fhirpath_patch:
                return apply_fhirpatch(current, operations)
            try:
                return patch.apply(current)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise Unprocessable(f"JSON Patch could not be applied: {exc}", expression="Patch") from exc

        def op(t: Tx) -> Result:
            cur = self.guard.current(ctx.caller, "patch", type_, id_, t)
            if cur is None:
                raise NotFound(f"{type_}/{id_} is not known", expression=f"{type_}/{id_}")
            if cur.deleted:
                raise Gone(f"{type_}/{id_} was deleted", expression=f"{type_}/{id_}")
            self._check_if_match(type_, id_, cur, if_match)
            patched = apply(self.full_resource(cur))
            if patched.get("resourceType") != type_ or patched.get("id") != id_:
                raise Unprocessable("A patch may not change resourceType or id", expression=f"{type_}.id")
            self.validator.validate(patched, expected_type=type_)
            slim, blob = self._materialise(type_, patched)
            stored = self._write(ctx, t, type_, id_, slim, cur, blob, "PATCH", "patch")
            return Result(200, stored)

        return op(tx) if tx is not None else self.repo.transaction(op)

    # ----------------------------------------------------------------- delete
    def delete(self, ctx: RequestContext, type_: str, id_: str, *, if_match: int | None = None,
               tx: Tx | None = None) -> Result:
        """Logical delete: a new version marked deleted; reads then answer 410."""
        self.check_type(type_)
        self.check_id(id_)

        def op(t: Tx) -> Result:
            cur = self.guard.current(ctx.caller, "delete", type_, id_, t)
            if cur is None:
                raise NotFound(f"{type_}/{id_} is not known", expression=f"{type_}/{id_}")
            if cur.deleted:
                return Result(204, cur, issues=[Issue(f"{type_}/{id_} was already deleted", "informational",
                                                      "information")])
            self._check_if_match(type_, id_, cur, if_match)
            version = cur.version + 1
            ts = max(utcnow(), cur.last_updated + _ONE_MS)
            gone = self.guard.put(ctx.caller, "delete", t, type_, id_, previous=cur, version=version, ts=ts,
                                  resource=None, ix={}, owner=cur.owner, deleted=True, method="DELETE")
            self._notify(t, type_, gone)
            self.repo.release_condition(t, type_, id_)
            return Result(204, Stored(type_, id_, version, ts, True, None, cur.owner),
                          issues=[Issue(f"Deleted {type_}/{id_}", "informational", "information")])

        return op(tx) if tx is not None else self.repo.transaction(op)

    def conditional_delete(self, ctx: RequestContext, type_: str, query: str, *, tx: Tx | None = None) -> Result:
        """DELETE [type]?[search] (single mode): 0 → 204, 1 → delete it, several → 412."""
        self.check_type(type_)
        cond = _split_query(query, "search")

        def op(t: Tx) -> Result:
            found = self.searcher.match_ids(ctx, type_, cond, tx=t, limit=2)
            if len(found) > 1:
                raise PreconditionFailed(f"Conditional delete matched {len(found)} resources", expression="url")
            if not found:
                return Result(204, issues=[Issue("No resource matched the condition", "not-found", "warning")])
            return self.delete(ctx, type_, found[0], tx=t)

        return op(tx) if tx is not None else self.repo.transaction(op)

    def conditional_patch(self, ctx: RequestContext, type_: str, query: str, operations: Any, *,
                          if_match: int | None = None) -> Result:
        self.check_type(type_)
        cond = _split_query(query, "search")

        def op(t: Tx) -> Result:
            found = self.searcher.match_ids(ctx, type_, cond, tx=t, limit=2)
            if len(found) != 1:
                if not found:
                    raise NotFound("Conditional patch matched no resource", expression="url")
                raise PreconditionFailed(f"Conditional patch matched {len(found)} resources", expression="url")
            return self.patch(ctx, type_, found[0], operations, if_match=if_match, tx=t)

        return self.repo.transaction(op)

    # ---------------------------------------------------------------- history
    def history(self, ctx: RequestContext, params: list[tuple[str, str]], *, type_: str | None = None,
                id_: str | None = None) -> dict[str, Any]:
        """history-instance / -type / -system as a ``history`` Bundle, newest first, keyset-paged."""
        if type_:
            self.check_type(type_)
        if id_:
            self.check_id(id_)
        since = at = None
        count = self.default_count
        before: tuple[datetime, str] | None = None
        kept: list[tuple[str, str]] = []
        for name, value in params:
            if name == "_since":
                since = parse_instant(value, "_since")
            elif name == "_at":
                at = parse_instant(value, "_at")
            elif name == "_count":
                count = self._count(value)
            elif name == "_cursor":
                cur = self.cursors.decode(value)
                before = (datetime.fromisoformat(cur["ts"]), cur["id"])
                continue
            elif name in ("_format", "_pretty", "_summary", "_elements"):
                pass
            else:
                raise BadRequest(f"Unknown history parameter '{name}'", expression=name)
            kept.append((name, value))
        if id_ and type_ and self.guard.current(ctx.caller, "history", type_, id_) is None:
            raise NotFound(f"{type_}/{id_} is not known", expression=f"{type_}/{id_}")
        rows = self.guard.history(ctx.caller, type_=type_, id_=id_, since=since, at=at, before=before,
                                  limit=count + 1)
        more = len(rows) > count
        rows = rows[:count]
        path = "/".join(p for p in (type_, id_) if p) + ("/_history" if (type_ or id_) else "_history")
        self_url = f"{ctx.base_url}/{path}"
        links = [{"relation": "self", "url": self_url + (("?" + urlencode(params)) if params else "")}]
        if more and rows:
            last = rows[-1]
            token = self.cursors.encode({"ts": last.last_updated.isoformat(), "id": f"{last.type}/{last.id}/{last.version}"})
            links.append({"relation": "next", "url": f"{self_url}?{urlencode([*kept, ('_cursor', token)])}"})
        entries = []
        for row in rows:
            entry: dict[str, Any] = {"fullUrl": f"{ctx.base_url}/{row.type}/{row.id}"}
            method = row.method or ("DELETE" if row.deleted else "PUT")
            if not row.deleted and row.resource is not None:
                entry["resource"] = self.full_resource(row)
            entry["request"] = {"method": method,
                                "url": f"{row.type}/{row.id}" if method != "POST" else row.type}
            entry["response"] = {"status": "410 Gone" if row.deleted else ("201 Created" if row.version == 1
                                                                             else "200 OK"),
                                 "etag": f'W/"{row.version}"', "lastModified": instant(row.last_updated)}
            entries.append(entry)
        bundle: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "history",
                                  "link": links, "entry": entries}
        if not entries:
            del bundle["entry"]
        return bundle

    def _count(self, value: str) -> int:
        if not value.isdigit():
            raise BadRequest(f"_count must be a non-negative integer, got '{value}'", expression="_count")
        return min(int(value), self.max_count)

    # ------------------------------------------------------------------ search
    def search(self, ctx: RequestContext, type_: str | None, params: list[tuple[str, str]], *,
               compartment: tuple[str, str] | None = None) -> dict[str, Any]:
        if type_:
            self.check_type(type_)
        return self.searcher.search(ctx, type_, params, compartment=compartment)


def content_hash(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()  # noqa: S324 - FHIR Attachment.hash is SHA-1

