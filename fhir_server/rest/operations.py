"""Registry of FHIR operations (``$name``): an extension point instead of routes.

Register a handler with::

    @operations.register("ingest-cda", types=("DocumentReference",), level="type", method="POST")
    def ingest(call: OperationCall) -> OperationResult: ...

The HTTP layer dispatches ``[base]/$op``, ``[base]/[type]/$op`` and
``[base]/[type]/[id]/$op`` here, and the CapabilityStatement lists what is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fhir_server.fhir.errors import MethodNotAllowed, NotFound
from fhir_server.rest.context import RequestContext

__all__ = ["OperationCall", "OperationResult", "Operation", "OperationRegistry"]


@dataclass
class OperationCall:
    ctx: RequestContext
    name: str
    type: str | None
    id: str | None
    method: str
    params: list[tuple[str, str]]
    body: bytes
    content_type: str | None
    services: Any  # the composition root's Services (rest-level services only)


@dataclass
class OperationResult:
    status: int = 200
    body: dict[str, Any] | None = None  # a FHIR resource (Parameters, Bundle, OperationOutcome, …)
    raw: bytes | None = None
    media_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[OperationCall], OperationResult]


@dataclass(frozen=True)
class Operation:
    name: str
    handler: Handler
    levels: frozenset[str]  # "system" | "type" | "instance"
    types: frozenset[str] | None  # None: any type
    methods: frozenset[str]
    definition: str | None = None
    documentation: str = ""


class OperationRegistry:
    def __init__(self) -> None:
        self._ops: dict[str, list[Operation]] = {}

    def register(self, name: str, *, levels: tuple[str, ...] = ("type",), types: tuple[str, ...] | None = None,
                 methods: tuple[str, ...] = ("POST",), definition: str | None = None,
                 documentation: str = "") -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            op = Operation(name, fn, frozenset(levels), frozenset(types) if types else None, frozenset(methods),
                           definition, documentation or (fn.__doc__ or "").strip().split("\n")[0])
            self._ops.setdefault(name, []).append(op)
            return fn

        return deco

    def __iter__(self) -> Iterator[Operation]:
        for ops in self._ops.values():
            yield from ops

    def resolve(self, name: str, level: str, type_: str | None, method: str) -> Operation:
        for op in self._ops.get(name, []):
            if level in op.levels and (op.types is None or type_ in op.types):
                if method not in op.methods:
                    raise MethodNotAllowed(f"${name} does not accept {method}", expression=f"${name}")
                return op
        where = f"{type_} " if type_ else ""
        raise NotFound(f"Unknown operation ${name} at {where}{level} level", expression=f"${name}")
