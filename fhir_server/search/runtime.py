"""Runtime SearchParameters: a ``SearchParameter`` resource POSTed to the server becomes
a search parameter of its base types.

Life cycle (https://hl7.org/fhir/R4/searchparameter.html):

1. on create/update the resource is checked (known base types, a supported type, a
   FHIRPath expression that compiles, no clash with a standard parameter) — 422 otherwise;
2. once committed it is *pending*: every write from then on indexes it, and a
   background job re-indexes the existing resources of its base types (a second short
   pass covers writes that raced the first one);
3. when the index is complete it becomes *ready*: the parser, the planner and the
   CapabilityStatement know it, so it is usable only once its values are all there.

Deleting (or retiring) the resource removes the parameter. The state survives restarts
(``server_state`` in the store); pending ones resume at start-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_server.fhir.errors import Unprocessable
from fhir_server.search.extract import Extractor, compile_expression
from fhir_server.search.registry import (
    MODIFIERS_BY_TYPE,
    ORDERED_TYPES,
    PREFIXES,
    SearchParam,
    SearchRegistry,
    expression_for_base,
)

__all__ = ["RuntimeSearchParams", "SUPPORTED_TYPES"]

log = logging.getLogger(__name__)
SUPPORTED_TYPES = frozenset({"string", "token", "reference", "date", "number", "quantity", "uri"})


def check_fhirpath_syntax(expression: str) -> None:
    """Raise ``ValueError`` unless ``expression`` is syntactically valid FHIRPath.

    fhirpathpy's own parser recovers from syntax errors silently; this runs its
    grammar with a listener that refuses any error and requires the whole input.
    """
    from antlr4 import CommonTokenStream, InputStream, Token
    from antlr4.error.ErrorListener import ErrorListener
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    class Strict(ErrorListener):  # type: ignore[misc]
        def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str,  # noqa: N802
                        e: Any) -> None:
            raise ValueError(f"column {column}: {msg}")

    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(Strict())
    stream = CommonTokenStream(lexer)
    parser = FHIRPathParser(stream)
    parser.removeErrorListeners()
    parser.addErrorListener(Strict())
    parser.expression()
    if stream.LT(1).type != Token.EOF:
        raise ValueError(f"unexpected '{stream.LT(1).text}' after the expression")


class RuntimeSearchParams:
    """Holds pending and ready runtime parameters and swaps the live registries.

    ``apply(write_registry, read_registry)`` is called whenever the sets change: the
    write registry (standard + pending + ready) drives indexing, the read registry
    (standard + ready) drives searching. ``reindex(type, extractor, since)`` re-computes
    the stored values of one type.
    """

    def __init__(self, base: SearchRegistry, apply: Callable[[SearchRegistry, SearchRegistry], None],
                 reindex: Callable[[str, Extractor, datetime | None], None],
                 save_state: Callable[[str, dict[str, Any]], None],
                 load_state: Callable[[str], dict[str, Any] | None], base_url: str | None = None) -> None:
        self.base = base
        self._apply = apply
        self._reindex = reindex
        self._save = save_state
        self._load = load_state
        self.base_url = base_url
        self.pending: dict[str, list[SearchParam]] = {}
        self.ready: dict[str, list[SearchParam]] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- parsing
    def params_of(self, resource: dict[str, Any]) -> list[SearchParam]:
        """The SearchParams a SearchParameter resource defines (one per base); 422 if unusable."""
        code = resource.get("code")
        type_ = resource.get("type")
        expression = resource.get("expression")
        bases = resource.get("base") or []
        if not isinstance(code, str) or not code or code.startswith("_"):
            raise Unprocessable("SearchParameter.code must be a name not starting with '_'",
                                expression="SearchParameter.code")
        if type_ not in SUPPORTED_TYPES:
            raise Unprocessable(f"SearchParameter.type '{type_}' is not supported at runtime "
                                f"(supported: {', '.join(sorted(SUPPORTED_TYPES))})", expression="SearchParameter.type")
        if not isinstance(expression, str) or not expression.strip():
            raise Unprocessable("SearchParameter.expression (FHIRPath) is required", expression="SearchParameter.expression")
        out = []
        for i, base in enumerate(bases):
            if base not in self.base.by_type:
                raise Unprocessable(f"Unsupported base type '{base}'", expression=f"SearchParameter.base[{i}]")
            std = self.base.by_type[base].get(code)
            if std is not None:
                raise Unprocessable(f"'{code}' is already a standard search parameter of {base}",
                                    expression="SearchParameter.code")
            expr = expression_for_base(expression, base) or expression
            try:
                check_fhirpath_syntax(expr)
                compile_expression(expr, self.base.choice_elements)
            except Exception as exc:  # noqa: BLE001 - any compile failure is the client's expression
                raise Unprocessable(f"SearchParameter.expression does not compile: {exc}",
                                    expression="SearchParameter.expression") from exc
            comparators = tuple(resource.get("comparator") or (PREFIXES if type_ in ORDERED_TYPES else ()))
            out.append(SearchParam(code=code, base=base, type=type_, expression=expr, id=str(resource.get("id", "")),
                                   targets=tuple(resource.get("target") or ()),
                                   modifiers=frozenset(resource.get("modifier") or MODIFIERS_BY_TYPE.get(type_, ())),
                                   comparators=comparators))
        if not out:
            raise Unprocessable("SearchParameter.base must name at least one resource type",
                                expression="SearchParameter.base")
        return out

    def check(self, resource: dict[str, Any]) -> None:
        """Pre-write check (FhirService.checks['SearchParameter'])."""
        if resource.get("status") == "retired":
            return
        self.params_of(resource)

    # --------------------------------------------------------------- changes
    def on_write(self, type_: str, stored: Any) -> None:
        """After-commit listener."""
        if type_ != "SearchParameter":
            return
        res = stored.resource
        if stored.deleted or res is None or res.get("status") == "retired":
            self.remove(stored.id)
        else:
            self.schedule(stored.id, stored.version, self.params_of(res))

    def remove(self, sp_id: str) -> None:
        with self._lock:
            self.pending.pop(sp_id, None)
            self.ready.pop(sp_id, None)
            self._swap()
        self._save(f"searchparameter/{sp_id}", {"state": "removed"})

    def schedule(self, sp_id: str, version: int, params: list[SearchParam]) -> None:
        with self._lock:
            self.ready.pop(sp_id, None)
            self.pending[sp_id] = params
            self._swap()
        self._save(f"searchparameter/{sp_id}", {"state": "pending", "version": version})
        t = threading.Thread(target=self._build, args=(sp_id, version, params), name=f"reindex-{sp_id}",
                             daemon=True)
        self._threads.append(t)
        t.start()

    def _build(self, sp_id: str, version: int, params: list[SearchParam]) -> None:
        try:
            started = datetime.now(UTC)
            extractor = self._write_extractor()
            for base in sorted({p.base for p in params}):
                self._reindex(base, extractor, None)
            for base in sorted({p.base for p in params}):  # writes that raced the first pass
                self._reindex(base, self._write_extractor(), started - timedelta(seconds=5))
            with self._lock:
                if self.pending.get(sp_id) is not params:
                    return  # replaced or removed meanwhile
                del self.pending[sp_id]
                self.ready[sp_id] = params
                self._swap()
            self._save(f"searchparameter/{sp_id}", {"state": "ready", "version": version})
            log.info("runtime search parameter %s ready", sp_id)
        except Exception:  # noqa: BLE001 - stays pending; logged for the operator
            log.exception("indexing runtime search parameter %s failed", sp_id)

    def resume(self, stored: list[Any]) -> None:
        """Start-up: rebuild from the stored SearchParameter resources."""
        for st in stored:
            res = st.resource or {}
            if res.get("status") == "retired":
                continue
            try:
                params = self.params_of(res)
            except Unprocessable:
                log.warning("stored SearchParameter/%s is not usable; ignored", st.id)
                continue
            state = self._load(f"searchparameter/{st.id}") or {}
            if state.get("state") == "ready" and state.get("version") == st.version:
                with self._lock:
                    self.ready[st.id] = params
            else:
                self.schedule(st.id, st.version, params)
        with self._lock:
            self._swap()

    def wait(self, timeout: float = 60.0) -> None:
        """Wait for background indexing (tests, CLI)."""
        for t in list(self._threads):
            t.join(timeout)

    # -------------------------------------------------------------- internals
    def _all(self, *groups: dict[str, list[SearchParam]]) -> list[SearchParam]:
        return [p for g in groups for ps in g.values() for p in ps]

    def _write_extractor(self) -> Extractor:
        with self._lock:
            reg = self.base.with_params(self._all(self.ready, self.pending))
        return Extractor(reg, base_url=self.base_url)

    def _swap(self) -> None:
        write = self.base.with_params(self._all(self.ready, self.pending))
        read = self.base.with_params(self._all(self.ready))
        self._apply(write, read)
