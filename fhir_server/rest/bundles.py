"""Batch and transaction Bundles (https://hl7.org/fhir/R4/http.html#transaction).

* ``batch``: entries are independent; each runs as its own interaction and a
  failing entry gets its OperationOutcome in ``response.outcome``.
* ``transaction``: all-or-nothing in one MongoDB multi-document transaction
  (retried on write conflicts). Entries run in the spec's order (DELETE, POST,
  PUT/PATCH, GET/HEAD); ``urn:uuid:``/``urn:oid:`` fullUrls get their server ids
  before anything runs and every reference to them is rewritten, conditional
  references (``Patient?identifier=…``) are resolved by search. Any failure
  aborts the whole transaction: nothing created, updated, deleted, indexed or
  historised is left behind.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from fhir_server.fhir import models
from fhir_server.fhir.errors import BadRequest, FhirError, Issue, PreconditionFailed
from fhir_server.rest.context import RequestContext
from fhir_server.rest.service import FhirService, Result, instant
from fhir_server.store.repository import Tx

__all__ = ["BundleProcessor", "install"]

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 304: "304 Not Modified"}


@dataclass
class _Entry:
    index: int
    method: str
    type: str
    id: str | None
    vid: str | None
    query: str
    resource: dict[str, Any] | None
    full_url: str | None
    request: dict[str, Any]


BundleCheck = Callable[[RequestContext, dict[str, Any]], None]


class BundleProcessor:
    """Processes batch/transaction Bundles.

    ``checks`` are run on every transaction Bundle before anything is written; a
    profile-specific rule set (e.g. IHE MHD ITI-65 submissions) registers one and
    raises a typed error to reject the whole submission.
    """

    def __init__(self, fhir: FhirService) -> None:
        self.fhir = fhir
        self.checks: list[BundleCheck] = []

    # --------------------------------------------------------------- entry point
    def process(self, ctx: RequestContext, bundle: dict[str, Any], *,
                representation: bool = False) -> tuple[int, dict[str, Any]]:
        if bundle.get("resourceType") != "Bundle":
            raise BadRequest("POST to the base takes a Bundle", expression="resourceType")
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            raise BadRequest(f"Bundle.type must be batch or transaction, not '{kind}'", expression="Bundle.type")
        entries = [self._parse(i, e) for i, e in enumerate(bundle.get("entry") or [])]
        if kind == "batch":
            return 200, self._batch(ctx, entries, representation)
        for check in self.checks:
            check(ctx, bundle)
        return 200, self._transaction(ctx, entries, representation)

    def _parse(self, i: int, entry: Any) -> _Entry:
        where = f"Bundle.entry[{i}]"
        if not isinstance(entry, dict):
            raise BadRequest("Bundle entry must be an object", expression=where)
        req = entry.get("request")
        if not isinstance(req, dict) or not req.get("method") or not req.get("url"):
            raise BadRequest("Each entry needs request.method and request.url", expression=f"{where}.request")
        method = str(req["method"]).upper()
        if method not in _ORDER:
            raise BadRequest(f"Unsupported method {method}", expression=f"{where}.request.method")
        parts = urlsplit(str(req["url"]))
        path = parts.path.strip("/")
        if path.startswith(("http:", "https:")) or "://" in str(req["url"]):
            path = path.split("/fhir/", 1)[-1]
        segs = [s for s in path.split("/") if s]
        if not segs or not models.is_resource_type(segs[0]):
            raise BadRequest(f"Unknown resource type in request.url '{req['url']}'", expression=f"{where}.request.url")
        rid = segs[1] if len(segs) > 1 else None
        vid = segs[3] if len(segs) > 3 and segs[2] == "_history" else None
        if len(segs) > 2 and vid is None:
            raise BadRequest(f"Unsupported request.url '{req['url']}'", expression=f"{where}.request.url")
        resource = entry.get("resource")
        if method in ("POST", "PUT") and not isinstance(resource, dict):
            raise BadRequest(f"{method} entries need a resource", expression=f"{where}.resource")
        if method == "PATCH" and not (isinstance(resource, dict) and resource.get("resourceType") in ("Binary",
                                                                                                  "Parameters")):
            raise BadRequest("PATCH entries carry a Parameters (FHIRPath Patch) or a Binary (JSON Patch)",
                             expression=f"{where}.resource")
        return _Entry(i, method, segs[0], rid, vid, parts.query, resource, entry.get("fullUrl"), req)

    # --------------------------------------------------------------------- batch
    def _batch(self, ctx: RequestContext, entries: list[_Entry], representation: bool) -> dict[str, Any]:
        out: list[dict[str, Any] | None] = [None] * len(entries)
        for e in sorted(entries, key=lambda x: _ORDER[x.method]):
            try:
                out[e.index] = self._run(ctx, e, None, representation)
            except FhirError as exc:
                out[e.index] = {"response": {"status": str(exc.status), "outcome": exc.outcome()}}
        return _response_bundle("batch-response", out)

    # --------------------------------------------------------------- transaction
    def _transaction(self, ctx: RequestContext, entries: list[_Entry], representation: bool) -> dict[str, Any]:
        seen: set[str] = set()
        for e in entries:
            if e.id and e.method in ("PUT", "PATCH", "DELETE"):
                key = f"{e.type}/{e.id}"
                if key in seen:
                    raise BadRequest(f"{key} appears more than once in the transaction",
                                     expression=f"Bundle.entry[{e.index}]")
                seen.add(key)
        # server ids for every POST, fixed before the first attempt so retries reuse them
        new_ids = {e.index: str(uuid.uuid4()) for e in entries if e.method == "POST"}

        targets: dict[str, list[str]] = {}
        for e in entries:
            if e.id and e.method in ("PUT", "PATCH", "DELETE"):
                targets.setdefault(e.type, []).append(e.id)

        def work(tx: Tx) -> list[dict[str, Any] | None]:
            for type_, ids in targets.items():  # one read per type instead of one per entry
                self.fhir.repo.prefetch(tx, type_, ids)
            mapping: dict[str, str] = {}
            duplicates: dict[int, int] = {}  # entry index -> the earlier entry with the same ifNoneExist
            for e in entries:
                if e.full_url and e.method == "POST":
                    mapping[e.full_url] = f"{e.type}/{new_ids[e.index]}"
                elif e.full_url and e.method == "PUT" and e.id:
                    mapping[e.full_url] = f"{e.type}/{e.id}"
            # conditional creates that match an existing resource point there instead; two entries
            # with the same condition in one bundle are one resource (the first one written)
            first_of: dict[tuple[str, str], _Entry] = {}
            for e in entries:
                if e.method == "POST" and e.request.get("ifNoneExist"):
                    cond = parse_qsl(str(e.request["ifNoneExist"]).lstrip("?"), keep_blank_values=True)
                    key = (e.type, self.fhir.searcher.canonical_key(e.type, cond))
                    if key in first_of:
                        same = first_of[key]
                        duplicates[e.index] = same.index
                        if e.full_url:
                            mapping[e.full_url] = mapping.get(same.full_url or "", f"{e.type}/{new_ids[same.index]}")
                        continue
                    first_of[key] = e
                    found = self.fhir.searcher.match_ids(ctx, e.type, cond, tx=tx, limit=2)
                    if len(found) > 1:
                        raise PreconditionFailed(f"ifNoneExist matched {len(found)} resources",
                                                 expression=f"Bundle.entry[{e.index}].request.ifNoneExist")
                    if found and e.full_url:
                        mapping[e.full_url] = f"{e.type}/{found[0]}"
            cache: dict[str, str] = {}

            def resolve(ref: str) -> str | None:
                if ref in mapping:
                    return mapping[ref]
                if "?" in ref and not ref.startswith(("http:", "https:", "urn:")):
                    if ref not in cache:
                        t, q = ref.split("?", 1)
                        if not models.is_resource_type(t):
                            raise BadRequest(f"Invalid conditional reference '{ref}'", expression="reference")
                        found = self.fhir.searcher.match_ids(ctx, t, parse_qsl(q, keep_blank_values=True),
                                                             tx=tx, limit=2)
                        if len(found) != 1:
                            raise PreconditionFailed(
                                f"Conditional reference '{ref}' matched {len(found)} resources (needs exactly one)",
                                expression="reference")
                        cache[ref] = f"{t}/{found[0]}"
                    return cache[ref]
                return None

            out: list[dict[str, Any] | None] = [None] * len(entries)
            for e in sorted(entries, key=lambda x: _ORDER[x.method]):
                if e.index in duplicates:
                    continue
                if e.resource is not None:
                    e_res = _rewrite(e.resource, resolve)
                else:
                    e_res = None
                run = _Entry(e.index, e.method, e.type, e.id, e.vid, e.query, e_res, e.full_url, e.request)
                try:
                    out[e.index] = self._run(ctx, run, tx, representation, new_ids.get(e.index))
                except FhirError as exc:
                    raise _located(exc, e.index) from exc
            for dup, first in duplicates.items():
                out[dup] = out[first]
            return out

        results = self.fhir.repo.transaction(work, atomic=True)
        return _response_bundle("transaction-response", results)

    # ------------------------------------------------------------ one entry
    def _run(self, ctx: RequestContext, e: _Entry, tx: Tx | None, representation: bool,
             new_id: str | None = None) -> dict[str, Any]:
        fhir = self.fhir
        if_match = _etag(e.request.get("ifMatch"))
        if e.method == "POST":
            assert e.resource is not None
            res = fhir.create(ctx, e.type, e.resource, if_none_exist=e.request.get("ifNoneExist"), tx=tx,
                              id_=new_id)
            return _entry_for(ctx, fhir, res, representation)
        if e.method == "PUT":
            assert e.resource is not None
            if e.id:
                res = fhir.update(ctx, e.type, e.id, e.resource, if_match=if_match, tx=tx)
            else:
                if not e.query:
                    raise BadRequest("PUT needs an id or a search", expression="request.url")
                res = fhir.conditional_update(ctx, e.type, e.query, e.resource, if_match=if_match, tx=tx)
            return _entry_for(ctx, fhir, res, representation)
        if e.method == "PATCH":
            assert e.resource is not None
            ops: Any = e.resource
            if e.resource.get("resourceType") == "Binary":
                try:
                    ops = orjson.loads(base64.b64decode(e.resource.get("data", "")))
                except (ValueError, orjson.JSONDecodeError) as exc:
                    raise BadRequest("PATCH entry Binary.data must be a base64 JSON Patch",
                                     expression="resource.data") from exc
            if not e.id:
                raise BadRequest("PATCH entries need an id", expression="request.url")
            res = fhir.patch(ctx, e.type, e.id, ops, if_match=if_match, tx=tx)
            return _entry_for(ctx, fhir, res, representation)
        if e.method == "DELETE":
            if e.id:
                res = fhir.delete(ctx, e.type, e.id, if_match=if_match, tx=tx)
            else:
                res = fhir.conditional_delete(ctx, e.type, e.query, tx=tx)
            return {"response": {"status": "204 No Content", **({"etag": f'W/"{res.stored.version}"'}
                                                                  if res.stored else {})}}
        # GET / HEAD
        if e.id and e.vid:
            stored = fhir.vread(ctx, e.type, e.id, e.vid)
        elif e.id:
            stored = fhir.read(ctx, e.type, e.id)
        else:
            bundle = fhir.search(ctx, e.type, parse_qsl(e.query, keep_blank_values=True))
            return {"resource": bundle, "response": {"status": "200 OK"}}
        entry: dict[str, Any] = {"fullUrl": f"{ctx.base_url}/{stored.type}/{stored.id}",
                                 "response": {"status": "200 OK", "etag": f'W/"{stored.version}"',
                                              "lastModified": instant(stored.last_updated)}}
        if e.method == "GET":
            entry["resource"] = fhir.full_resource(stored)
        return entry


def _entry_for(ctx: RequestContext, fhir: FhirService, res: Result, representation: bool) -> dict[str, Any]:
    st = res.stored
    if st is None:
        return {"response": {"status": _STATUS_TEXT.get(res.status, str(res.status))}}
    entry: dict[str, Any] = {
        "fullUrl": f"{ctx.base_url}/{st.type}/{st.id}",
        "response": {"status": _STATUS_TEXT.get(res.status, str(res.status)),
                     "location": f"{st.type}/{st.id}/_history/{st.version}",
                     "etag": f'W/"{st.version}"', "lastModified": instant(st.last_updated)},
    }
    if representation and st.resource is not None:
        entry["resource"] = fhir.full_resource(st)
    return entry


def _response_bundle(kind: str, entries: list[dict[str, Any] | None]) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": kind}
    if entries:
        bundle["entry"] = [e or {"response": {"status": "500"}} for e in entries]
    return bundle


def _etag(value: Any) -> int | None:
    if value is None:
        return None
    v = str(value).strip()
    v = v[2:] if v.startswith("W/") else v
    v = v.strip('"')
    if not v.isdigit():
        raise BadRequest(f"Malformed ifMatch '{value}'", expression="request.ifMatch")
    return int(v)


def _rewrite(node: Any, resolve: Callable[[str], str | None]) -> Any:
    """Copy ``node`` with every reference (and attachment url) to a bundle entry rewritten."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in ("reference", "url") and isinstance(v, str):
                new = resolve(v)
                out[k] = new if new is not None else v
            else:
                out[k] = _rewrite(v, resolve)
        return out
    if isinstance(node, list):
        return [_rewrite(v, resolve) for v in node]
    return node


def _located(exc: FhirError, index: int) -> FhirError:
    """The same error, its issues pointing into the failing entry."""
    prefix = f"Bundle.entry[{index}]"
    issues = []
    for i in exc.issues:
        exprs = tuple(f"{prefix}.resource" + (x[x.index("."):] if "." in x else "") if not x.startswith("Bundle")
                      else x for x in i.expression) or (prefix,)
        issues.append(Issue(f"entry {index}: {i.diagnostics}", i.code, i.severity, exprs))
    exc.issues = issues
    return exc


def install(services: Any) -> None:
    services.bundles = BundleProcessor(services.fhir)

