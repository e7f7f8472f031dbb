"""Installs the search engine into the server: the extractor computes ``ix``/``sp`` at
write time, the executor answers searches and conditional interactions, and the
index declarations of ``profiles/indexes.json`` become MongoDB indexes."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fhir_server.search.extract import Extractor
from fhir_server.search.registry import PROFILES_DIR, SearchRegistry
from fhir_server.search.runtime import RuntimeSearchParams
from fhir_server.store.query import QueryPlanner
from fhir_server.store.reindex import reindex_collection

__all__ = ["install", "index_specs"]

_FIELDS = {"_id": "_id", "_lastUpdated": "ts", "sp": "sp", "ts": "ts"}


def index_specs(registry: SearchRegistry, data: dict[str, Any] | None = None) -> Any:
    """``type -> [(keys, options)]`` from the declarations, for the parameters the type has."""
    data = data or json.loads((PROFILES_DIR / "indexes.json").read_text())

    def specs(type_: str) -> list[tuple[list[tuple[str, int]], dict[str, Any]]]:
        params = registry.params(type_)
        out = []
        for keys in [*data.get("all", []), *data.get("types", {}).get(type_, [])]:
            fields = []
            for k in keys:
                if k in _FIELDS:
                    fields.append(_FIELDS[k])
                elif k in params and params[k].indexed:
                    fields.append(f"ix.{k}")
                else:
                    break
            else:
                direction = [(f, -1 if f == "ts" else 1) for f in fields]
                out.append((direction, {"name": "_".join(keys)}))
        return out

    return specs


def install(services: Any) -> None:
    """Declared indexes and runtime SearchParameters (the engine itself is built by ``main``)."""
    settings = services.settings
    fhir = services.fhir
    repo = services.repo
    executor = fhir.searcher
    registry = executor.registry
    repo.set_index_hook(index_specs(registry))
    services.extras["search_registry"] = registry

    def apply(write: SearchRegistry, read: SearchRegistry) -> None:
        fhir.indexer = Extractor(write, base_url=settings.fhir_base)
        executor.registry = read
        executor.planner = QueryPlanner(read)
        services.extras["search_registry"] = read
        services.invalidate_capability()

    def reindex(type_: str, ex: Extractor, since: datetime | None) -> None:
        reindex_collection(repo.db, type_, ex, since=since)

    runtime = RuntimeSearchParams(registry, apply, reindex, repo.set_state, repo.get_state,
                                  base_url=settings.fhir_base)
    fhir.checks.setdefault("SearchParameter", []).append(runtime.check)
    fhir.listeners.append(runtime.on_write)
    services.extras["runtime_search_params"] = runtime
    stored = list(repo.find("SearchParameter", {}))
    if stored:
        runtime.resume(stored)
