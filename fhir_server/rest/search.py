"""A minimal searcher (``_id``, ``identifier``, ``_count``) used until the full engine is plugged in."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from fhir_server.access.guard import Guard
from fhir_server.fhir.errors import BadRequest
from fhir_server.rest.context import RequestContext
from fhir_server.store.repository import Tx

__all__ = ["MinimalSearcher"]


class MinimalSearcher:
    def __init__(self, guard: Guard, default_count: int = 20, max_count: int = 1000) -> None:
        self.guard = guard
        self.default_count = default_count
        self.max_count = max_count

    def _filter(self, params: list[tuple[str, str]]) -> tuple[dict[str, Any], int]:
        clauses: list[dict[str, Any]] = [{"del": False}]
        count = self.default_count
        for name, value in params:
            if name == "_id":
                clauses.append({"_id": {"$in": value.split(",")}})
            elif name == "identifier":
                clauses.append({"ix.identifier": {"$in": value.split(",")}})
            elif name == "_count":
                if not value.isdigit():
                    raise BadRequest("_count must be an integer", expression="_count")
                count = min(int(value), self.max_count)
            elif name in ("_format", "_pretty"):
                continue
            else:
                raise BadRequest(f"Unknown search parameter '{name}'", expression=name)
        return {"$and": clauses}, count

    def canonical_key(self, type_: str, params: list[tuple[str, str]]) -> str:
        return urlencode(sorted(params))

    def match_ids(self, ctx: RequestContext, type_: str, params: list[tuple[str, str]], *,
                  tx: Tx | None = None, limit: int = 2) -> list[str]:
        flt, _ = self._filter(params)
        return [d["_id"] for d in self.guard.find(ctx.caller, "search", type_, flt, limit=limit,
                                                 projection={"_id": 1, "sp": 1}, tx=tx)]

    def search(self, ctx: RequestContext, type_: str | None, params: list[tuple[str, str]], *,
               compartment: tuple[str, str] | None = None) -> dict[str, Any]:
        if type_ is None:
            raise BadRequest("System-level search needs _type", expression="_type")
        flt, count = self._filter(params)
        docs = list(self.guard.find(ctx.caller, "search", type_, flt, sort=[("ts", -1), ("_id", -1)], limit=count))
        return {
            "resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset",
            "link": [{"relation": "self", "url": f"{ctx.base_url}/{type_}?{urlencode(params)}"}],
            "entry": [{"fullUrl": f"{ctx.base_url}/{type_}/{d['_id']}", "resource": d["res"],
                       "search": {"mode": "match"}} for d in docs],
        }
