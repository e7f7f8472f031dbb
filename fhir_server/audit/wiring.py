"""Puts the audit trail around every interaction: ``install(services)``.

The FHIR service, the bundle processor and the operation registry are wrapped so that
each interaction runs inside an access journal (:mod:`fhir_server.audit.journal`) and
its AuditEvents are written before the result goes back to the route: a request whose
audit cannot be written fails. Writes are audited inside their own transaction through
``Guard.on_write``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fhir_server.audit import journal
from fhir_server.audit.auditor import Auditor
from fhir_server.fhir.errors import FhirError
from fhir_server.rest.context import RequestContext

__all__ = ["install", "AuditedFhir", "AuditedBundles", "AuditedOperations"]

log = logging.getLogger("fhir_server.audit")
T = TypeVar("T")


def _status_of(result: Any) -> int:
    return int(getattr(result, "status", 200) or 200)


def run_audited(auditor: Auditor, ctx: RequestContext, interaction: str, type_: str | None, id_: str | None,
                params: list[tuple[str, str]] | None, fn: Callable[[], T]) -> T:
    """Run one interaction inside a journal and audit it (outermost call only)."""
    with journal.opened() as (jr, outermost):
        if not outermost:
            return fn()
        try:
            result = fn()
        except FhirError as exc:
            auditor.rest(ctx, interaction, type_, id_, params, jr, exc.status, exc.message or type(exc).__name__)
            raise
        except Exception as exc:
            auditor.rest(ctx, interaction, type_, id_, params, jr, 500, f"internal error: {type(exc).__name__}")
            raise
        auditor.rest(ctx, interaction, type_, id_, params, jr, _status_of(result))
        return result


class AuditedFhir:
    """The FHIR service with every interaction audited; everything else passes through."""

    def __init__(self, inner: Any, auditor: Auditor) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "auditor", auditor)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)

    def _run(self, ctx: RequestContext, interaction: str, type_: str | None, id_: str | None,
             params: list[tuple[str, str]] | None, fn: Callable[[], T]) -> T:
        return run_audited(self.auditor, ctx, interaction, type_, id_, params, fn)

    def read(self, ctx: RequestContext, type_: str, id_: str) -> Any:
        return self._run(ctx, "read", type_, id_, None, lambda: self.inner.read(ctx, type_, id_))

    def vread(self, ctx: RequestContext, type_: str, id_: str, vid: str) -> Any:
        return self._run(ctx, "vread", type_, id_, None, lambda: self.inner.vread(ctx, type_, id_, vid))

    def create(self, ctx: RequestContext, type_: str, resource: dict[str, Any], **kw: Any) -> Any:
        return self._run(ctx, "create", type_, None, None, lambda: self.inner.create(ctx, type_, resource, **kw))

    def update(self, ctx: RequestContext, type_: str, id_: str, resource: dict[str, Any], **kw: Any) -> Any:
        return self._run(ctx, "update", type_, id_, None, lambda: self.inner.update(ctx, type_, id_, resource, **kw))

    def conditional_update(self, ctx: RequestContext, type_: str, query: str, resource: dict[str, Any],
                           **kw: Any) -> Any:
        return self._run(ctx, "update", type_, None, None,
                         lambda: self.inner.conditional_update(ctx, type_, query, resource, **kw))

    def patch(self, ctx: RequestContext, type_: str, id_: str, operations: Any, **kw: Any) -> Any:
        return self._run(ctx, "patch", type_, id_, None, lambda: self.inner.patch(ctx, type_, id_, operations, **kw))

    def conditional_patch(self, ctx: RequestContext, type_: str, query: str, operations: Any, **kw: Any) -> Any:
        return self._run(ctx, "patch", type_, None, None,
                         lambda: self.inner.conditional_patch(ctx, type_, query, operations, **kw))

    def delete(self, ctx: RequestContext, type_: str, id_: str, **kw: Any) -> Any:
        return self._run(ctx, "delete", type_, id_, None, lambda: self.inner.delete(ctx, type_, id_, **kw))

    def conditional_delete(self, ctx: RequestContext, type_: str, query: str, **kw: Any) -> Any:
        return self._run(ctx, "delete", type_, None, None,
                         lambda: self.inner.conditional_delete(ctx, type_, query, **kw))

    def history(self, ctx: RequestContext, params: list[tuple[str, str]], **kw: Any) -> Any:
        return self._run(ctx, "history", kw.get("type_"), kw.get("id_"), params,
                         lambda: self.inner.history(ctx, params, **kw))

    def search(self, ctx: RequestContext, type_: str | None, params: list[tuple[str, str]], **kw: Any) -> Any:
        return self._run(ctx, "search", type_, None, params, lambda: self.inner.search(ctx, type_, params, **kw))


class AuditedBundles:
    def __init__(self, inner: Any, auditor: Auditor) -> None:
        self.inner = inner
        self.auditor = auditor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def process(self, ctx: RequestContext, bundle: dict[str, Any], **kw: Any) -> Any:
        kind = bundle.get("type") if isinstance(bundle, dict) else None
        interaction = kind if kind in ("batch", "transaction") else "batch"
        return run_audited(self.auditor, ctx, interaction, None, None, None,
                           lambda: self.inner.process(ctx, bundle, **kw))


class AuditedOperations:
    """The operation registry whose resolved handlers are audited."""

    def __init__(self, inner: Any, auditor: Auditor) -> None:
        self.inner = inner
        self.auditor = auditor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.inner)

    def resolve(self, name: str, level: str, type_: str | None, method: str) -> Any:
        op = self.inner.resolve(name, level, type_, method)
        handler = op.handler
        auditor = self.auditor

        def audited(call: Any) -> Any:
            return run_audited(auditor, call.ctx, "operation", call.type, call.id,
                               [("_operation", f"${name}"), *call.params], lambda: handler(call))

        return dataclasses.replace(op, handler=audited)


def install(services: Any) -> None:
    if not services.settings.audit_enabled:
        return
    from urllib.parse import urlparse

    auditor = Auditor(services.repo, lambda: services.fhir.indexer, site=urlparse(services.settings.fhir_base).netloc)
    services.extras["auditor"] = auditor
    services.fhir.guard.on_write = auditor.write_in_tx
    services.fhir = AuditedFhir(services.fhir, auditor)
    if services.bundles is not None:
        services.bundles = AuditedBundles(services.bundles, auditor)
    services.operations = AuditedOperations(services.operations, auditor)
