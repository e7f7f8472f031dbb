"""The CapabilityStatement, generated from what the server really implements."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from fhir_server import __version__
from fhir_server.fhir import models
from fhir_server.rest.operations import OperationRegistry

__all__ = ["build_capability_statement", "SearchCapabilities"]

TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type"]


class SearchCapabilities(Protocol):
    def capability_params(self, type_: str) -> list[dict[str, Any]]: ...

    def capability_includes(self, type_: str) -> tuple[list[str], list[str]]: ...


def build_capability_statement(base_url: str, operations: OperationRegistry, search: Any,
                               *, security: dict[str, Any] | None = None,
                               system_interactions: list[str] | None = None) -> dict[str, Any]:
    resources = []
    for t in sorted(models.resource_types()):
        entry: dict[str, Any] = {
            "type": t,
            "interaction": [{"code": c} for c in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical", "local"],
        }
        if hasattr(search, "capability_params"):
            params = search.capability_params(t)
            if params:
                entry["searchParam"] = params
            inc, rev = search.capability_includes(t)
            if inc:
                entry["searchInclude"] = inc
            if rev:
                entry["searchRevInclude"] = rev
        else:
            entry["searchParam"] = [
                {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
            ]
        ops = [{"name": op.name, "definition": op.definition or f"{base_url}/OperationDefinition/{op.name}"}
               for op in operations if op.types is not None and t in op.types]
        if ops:
            entry["operation"] = ops
        resources.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": resources,
        "interaction": [{"code": c} for c in (system_interactions or ["history-system"])],
    }
    sys_ops = [{"name": op.name, "definition": op.definition or f"{base_url}/OperationDefinition/{op.name}"}
               for op in operations if op.types is None]
    if sys_ops:
        rest["operation"] = sys_ops
    if security:
        rest["security"] = security
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now,
        "publisher": "fhir-server",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "Personal health record FHIR server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [rest],
    }
