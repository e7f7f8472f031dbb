"""Search query parsing: ``[(name, value), ...]`` -> a frozen, database-free :class:`SearchRequest`.

Spec: https://hl7.org/fhir/R4/search.html. Repeating a parameter ANDs its clauses; commas in
one value OR its alternatives; ``\\,`` ``\\|`` ``\\$`` ``\\\\`` escape. Chained parameters
(``subject:Patient.name=x``, several levels) and reverse chains (``_has:Observation:patient:code=x``,
nested) become :class:`ChainClause` / :class:`HasClause` holding inner requests, for the executor
to resolve to ids first.

Unknown or unsupported parameters and modifiers raise :class:`BadRequest` naming the parameter,
or with ``lenient=True`` are collected in :attr:`SearchRequest.ignored` (for an OperationOutcome
warning, ``Prefer: handling=lenient``). Malformed values always raise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fhir_server.fhir.errors import BadRequest
from fhir_server.search.extract import normalise_reference
from fhir_server.search.registry import (
    ORDERED_TYPES,
    PREFIXES,
    SearchParam,
    SearchRegistry,
    default_registry,
)
from fhir_server.search.values import DateRange, NumberRange, fold, parse_date_range, parse_number

__all__ = [
    "TokenValue",
    "OfTypeValue",
    "QuantityValue",
    "ReferenceValue",
    "Value",
    "Clause",
    "ChainClause",
    "HasClause",
    "AnyClause",
    "SortKey",
    "Include",
    "Ignored",
    "SearchRequest",
    "parse_search",
    "RESULT_PARAMS",
    "SUMMARY_VALUES",
    "TOTAL_VALUES",
]


# ---------------------------------------------------------------------------- parsed values
@dataclass(frozen=True, slots=True)
class TokenValue:
    """``system|code``: ``system`` None when no ``|`` was given (any system), ``""`` for ``|code``
    (no system); ``code`` None for ``system|`` (any code in the system)."""

    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class OfTypeValue:
    """``:of-type`` value ``typeSystem|typeCode|value`` (Identifier type and value)."""

    type_system: str
    type_code: str
    value: str


@dataclass(frozen=True, slots=True)
class QuantityValue:
    """``number|system|code``: system None when absent or empty (then the code matches the unit
    code or the unit text of any system)."""

    number: NumberRange
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """A reference search value: ``Type/id`` (``type`` None for a bare id; the planner then
    tries each target type) or an absolute URL / canonical (``url``)."""

    type: str | None
    id: str | None
    url: str | None = None


Parsed = Any  # str | bool | DateRange | NumberRange | TokenValue | OfTypeValue | QuantityValue | ReferenceValue | tuple


@dataclass(frozen=True, slots=True)
class Value:
    """One OR alternative of a clause. ``prefix`` is ``eq`` for unordered types. For a
    composite, ``parsed`` is a tuple of component :class:`Value` s."""

    raw: str
    parsed: Parsed
    prefix: str = "eq"


@dataclass(frozen=True, slots=True)
class Clause:
    """``param[:modifier]=v1,v2``: true when any value matches. ``target_type`` is set by a
    reference ``:[type]`` modifier."""

    param: SearchParam
    values: tuple[Value, ...]
    modifier: str | None = None
    target_type: str | None = None

    @property
    def name(self) -> str:
        return self.param.code + (f":{self.modifier}" if self.modifier else "")


@dataclass(frozen=True, slots=True)
class ChainClause:
    """``ref[:Type].rest=value``: resources whose ``ref`` points at a match of one of the inner
    requests (one per candidate target type). Executor: run the inner requests, collect
    ``Type/id`` of the matches, filter ``{"ix.<ref>": {"$in": [...]}}``."""

    param: SearchParam
    inner: tuple[SearchRequest, ...]
    name: str = ""


@dataclass(frozen=True, slots=True)
class HasClause:
    """``_has:Type:ref:rest=value``: resources referenced (through ``Type.ref``) by a match of
    ``inner`` (a request on ``Type``). Executor: run ``inner``, collect the ``ix.<ref>`` values
    pointing at this type, filter ``{"_id": {"$in": [ids]}}``."""

    resource_type: str
    param: SearchParam
    inner: SearchRequest
    name: str = ""


AnyClause = Clause | ChainClause | HasClause


@dataclass(frozen=True, slots=True)
class SortKey:
    param: SearchParam
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Include:
    """``_include`` / ``_revinclude`` = ``source_type:param[:target_type]``; ``param`` ``*`` for all."""

    source_type: str
    param: str
    target_type: str | None = None
    iterate: bool = False


@dataclass(frozen=True, slots=True)
class Ignored:
    """A parameter left out in lenient mode, with the reason (for an OperationOutcome warning)."""

    name: str
    reason: str


@dataclass(frozen=True)
class SearchRequest:
    """A parsed search. ``clauses`` are ANDed. ``resource_type`` None: a system-level search
    (``types`` from ``_type``, possibly empty = all)."""

    resource_type: str | None
    clauses: tuple[AnyClause, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int | None = None
    total: str | None = None
    summary: str | None = None
    elements: tuple[str, ...] = ()
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()
    types: tuple[str, ...] = ()
    cursor: str | None = None
    ignored: tuple[Ignored, ...] = field(default=())

    @property
    def simple_clauses(self) -> tuple[Clause, ...]:
        return tuple(c for c in self.clauses if isinstance(c, Clause))

    @property
    def nested_clauses(self) -> tuple[ChainClause | HasClause, ...]:
        return tuple(c for c in self.clauses if not isinstance(c, Clause))


# ---------------------------------------------------------------------------- tables
SUMMARY_VALUES = frozenset({"true", "text", "data", "count", "false"})
TOTAL_VALUES = frozenset({"none", "estimate", "accurate"})
#: Parameters ignored silently (rendering is the HTTP layer's business).
SILENT_PARAMS = frozenset({"_format", "_pretty"})
#: Result and control parameters: name -> modifiers allowed.
RESULT_PARAMS: dict[str, frozenset[str]] = {
    "_sort": frozenset(), "_count": frozenset(), "_total": frozenset(), "_summary": frozenset(),
    "_elements": frozenset(), "_include": frozenset({"iterate", "recurse"}),
    "_revinclude": frozenset({"iterate", "recurse"}), "_type": frozenset(), "_cursor": frozenset(),
}
MAX_CHAIN_DEPTH = 4
_ELEMENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


# ---------------------------------------------------------------------------- escaping
def split_escaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` not preceded by a backslash; escapes are kept (see :func:`unescape`)."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", text)


# ---------------------------------------------------------------------------- value parsers
def _bad(name: str, message: str) -> BadRequest:
    return BadRequest(f"Invalid search parameter '{name}': {message}", expression=name)


def _split_prefix(raw: str, param: SearchParam, name: str) -> tuple[str, str]:
    if len(raw) > 2 and raw[:2].isalpha():
        prefix = raw[:2]
        if prefix not in PREFIXES:
            raise _bad(name, f"unknown prefix '{prefix}'")
        if param.comparators and prefix not in param.comparators:
            raise _bad(name, f"prefix '{prefix}' not allowed")
        return prefix, raw[2:]
    return "eq", raw


def _parse_date(raw: str, name: str) -> DateRange:
    try:
        return parse_date_range(raw)
    except ValueError as exc:
        raise _bad(name, str(exc)) from None


def _parse_number(raw: str, name: str) -> NumberRange:
    try:
        return parse_number(raw)
    except ValueError as exc:
        raise _bad(name, str(exc)) from None


def _token(raw: str) -> TokenValue:
    parts = split_escaped(raw, "|")
    if len(parts) == 1:
        return TokenValue(None, unescape(parts[0]))
    system, code = unescape(parts[0]), unescape("|".join(parts[1:]))
    return TokenValue(system, code or None)


def _reference(raw: str, base_url: str | None) -> ReferenceValue:
    ref = normalise_reference(raw, base_url) or raw
    if "://" in ref or ref.startswith("urn:"):
        return ReferenceValue(None, None, ref)
    parts = ref.split("/")
    if len(parts) == 2 and _TYPE.match(parts[0]):
        return ReferenceValue(parts[0], parts[1])
    if len(parts) == 1:
        return ReferenceValue(None, parts[0])
    return ReferenceValue(None, None, ref)


@dataclass(frozen=True)
class _Ctx:
    registry: SearchRegistry
    base_url: str | None
    lenient: bool


def _parse_value(param_type: str, param: SearchParam, modifier: str | None, raw: str, name: str,
                 ctx: _Ctx, target_type: str | None = None) -> Value:
    """Parse one OR alternative (escapes still in ``raw``)."""
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise _bad(name, ":missing takes true or false")
        return Value(raw, raw == "true")
    if param_type in ORDERED_TYPES:
        prefix, rest = _split_prefix(raw, param, name)
        if param_type == "date":
            return Value(raw, _parse_date(rest, name), prefix)
        if param_type == "number":
            return Value(raw, _parse_number(rest, name), prefix)
        parts = split_escaped(rest, "|")
        if len(parts) not in (1, 3):
            raise _bad(name, "a quantity is number, number|system|code or number||code")
        number = _parse_number(parts[0], name)
        system = unescape(parts[1]) or None if len(parts) == 3 else None
        code = unescape(parts[2]) or None if len(parts) == 3 else None
        return Value(raw, QuantityValue(number, system, code), prefix)
    if param_type == "string":
        text = unescape(raw)
        return Value(raw, text if modifier == "exact" else fold(text))
    if param_type == "token":
        if modifier == "text":
            return Value(raw, fold(unescape(raw)))
        if modifier in ("in", "not-in"):
            return Value(raw, unescape(raw))
        if modifier == "of-type":
            parts = split_escaped(raw, "|")
            if len(parts) != 3 or not all(parts):
                raise _bad(name, ":of-type takes typeSystem|typeCode|value")
            return Value(raw, OfTypeValue(*(unescape(p) for p in parts)))
        return Value(raw, _token(raw))
    if param_type == "reference":
        if modifier == "identifier":
            return Value(raw, _token(raw))
        ref = _reference(unescape(raw), ctx.base_url)
        if target_type is not None:
            if ref.type is not None and ref.type != target_type:
                raise _bad(name, f"reference type {ref.type} does not match :{target_type}")
            if ref.url is None:
                ref = ReferenceValue(target_type, ref.id)
        if ref.id is not None and not _ID.match(ref.id):
            raise _bad(name, f"'{ref.id}' is not a valid id")
        return Value(raw, ref)
    if param_type == "uri":
        return Value(raw, unescape(raw))
    raise _bad(name, f"parameter type {param_type} is not searchable")


def _parse_composite(param: SearchParam, raw: str, name: str, ctx: _Ctx) -> Value:
    parts = split_escaped(raw, "$")
    if len(parts) != len(param.components):
        raise _bad(name, f"a composite value has {len(param.components)} parts separated by '$'")
    parsed = []
    for comp, part in zip(param.components, parts, strict=True):
        comp_param = SearchParam(comp.code, param.base, comp.type, comp.expression, comparators=PREFIXES)
        parsed.append(_parse_value(comp.type, comp_param, None, part, name, ctx))
    return Value(raw, tuple(parsed))


# ---------------------------------------------------------------------------- the parser
class _Parser:
    def __init__(self, resource_type: str | None, ctx: _Ctx, depth: int = 0) -> None:
        self.type = resource_type
        self.ctx = ctx
        self.depth = depth
        self.clauses: list[AnyClause] = []
        self.ignored: list[Ignored] = []
        self.result: dict[str, Any] = {"includes": [], "revincludes": [], "sort": (), "elements": (), "types": ()}

    # -------------------------------------------------------------- helpers
    def unsupported(self, name: str, reason: str) -> None:
        if self.ctx.lenient:
            self.ignored.append(Ignored(name, reason))
            return
        raise BadRequest(f"Unsupported search parameter '{name}': {reason}", expression=name)

    def param(self, code: str, resource_type: str | None = None) -> SearchParam | None:
        type_ = resource_type if resource_type is not None else self.type
        if type_ is None and self.result["types"]:
            found = [self.ctx.registry.get(t, code) for t in self.result["types"]]
            if all(found) and len({p.type for p in found if p}) == 1:
                return found[0]
            return None
        return self.ctx.registry.get(type_, code)

    # -------------------------------------------------------------- entry
    def parse(self, pairs: list[tuple[str, str]]) -> SearchRequest:
        for name, value in pairs:  # _type first: it decides which parameters exist
            if name == "_type":
                self.parse_types(value)
        for name, value in pairs:
            if name == "_type" or name in SILENT_PARAMS:
                continue
            base = name.split(":", 1)[0]
            if base in RESULT_PARAMS:
                self.parse_result(name, base, value)
            elif name.startswith("_has:"):
                if value != "":
                    self.parse_has(name, value)
            elif value == "":
                continue  # an empty value is ignored (search.html#3.1.1.3)
            elif "." in name:
                self.parse_chain(name, value)
            else:
                self.parse_clause(name, value)
        r = self.result
        return SearchRequest(
            resource_type=self.type, clauses=tuple(self.clauses), sort=tuple(r["sort"]), count=r.get("count"),
            total=r.get("total"), summary=r.get("summary"), elements=tuple(r["elements"]),
            includes=tuple(r["includes"]), revincludes=tuple(r["revincludes"]), types=tuple(r["types"]),
            cursor=r.get("cursor"), ignored=tuple(self.ignored),
        )

    # -------------------------------------------------------------- plain clauses
    def parse_clause(self, name: str, value: str) -> None:
        code, _, modifier = name.partition(":")
        param = self.param(code)
        if param is None:
            self.unsupported(name, f"unknown parameter '{code}' for {self.type or 'a system search'}")
            return
        mod: str | None = modifier or None
        target_type: str | None = None
        if mod is not None and mod not in param.modifiers:
            if param.type == "reference" and _TYPE.match(mod) and (not param.targets or mod in param.targets):
                target_type, mod = mod, None
            else:
                self.unsupported(name, f"modifier ':{mod}' is not supported on {param.type} parameter '{code}'")
                return
        alternatives = split_escaped(value, ",")
        if mod == "missing" and len(alternatives) != 1:
            raise _bad(name, ":missing takes one value")
        if param.type == "composite":
            values = tuple(_parse_composite(param, a, name, self.ctx) for a in alternatives)
        elif param.type == "special":
            self.unsupported(name, "special parameters are not supported")
            return
        else:
            values = tuple(_parse_value(param.type, param, mod, a, name, self.ctx, target_type)
                           for a in alternatives if a != "" or mod is not None)
        if not values:
            return
        self.clauses.append(Clause(param, values, mod, target_type))

    # -------------------------------------------------------------- chains
    def parse_chain(self, name: str, value: str) -> None:
        head, _, rest = name.partition(".")
        code, _, type_mod = head.partition(":")
        param = self.param(code)
        if param is None or param.type != "reference":
            self.unsupported(name, f"'{code}' is not a reference parameter of {self.type}")
            return
        if self.depth + 1 > MAX_CHAIN_DEPTH:
            raise _bad(name, f"chains are limited to {MAX_CHAIN_DEPTH} levels")
        next_code = rest.split(".", 1)[0].split(":", 1)[0]
        if type_mod:
            if param.targets and type_mod not in param.targets:
                self.unsupported(name, f"{type_mod} is not a target of '{code}'")
                return
            candidates = [type_mod]
        else:
            candidates = [t for t in param.targets if self.ctx.registry.get(t, next_code) is not None]
        candidates = [t for t in candidates if self.ctx.registry.get(t, next_code) is not None]
        if not candidates:
            self.unsupported(name, f"no target type of '{code}' has a parameter '{next_code}'")
            return
        inner = []
        for t in candidates:
            sub = _Parser(t, self.ctx, self.depth + 1)
            req = sub.parse([(rest, value)])
            self.ignored.extend(req.ignored)
            if req.clauses:
                inner.append(req)
        if inner:
            self.clauses.append(ChainClause(param, tuple(inner), name))

    def parse_has(self, name: str, value: str) -> None:
        parts = name.split(":", 3)  # _has, Type, param, rest
        if len(parts) != 4 or not parts[3]:
            raise _bad(name, "_has takes _has:Type:reference:parameter=value")
        _, type_, code, rest = parts
        if not self.ctx.registry.by_type.get(type_):
            self.unsupported(name, f"unknown resource type '{type_}'")
            return
        param = self.ctx.registry.get(type_, code)
        if param is None or param.type != "reference":
            self.unsupported(name, f"'{code}' is not a reference parameter of {type_}")
            return
        if self.type is not None and param.targets and self.type not in param.targets:
            self.unsupported(name, f"{type_}.{code} does not point to {self.type}")
            return
        if self.depth + 1 > MAX_CHAIN_DEPTH:
            raise _bad(name, f"_has is limited to {MAX_CHAIN_DEPTH} levels")
        sub = _Parser(type_, self.ctx, self.depth + 1)
        req = sub.parse([(rest, value)])
        self.ignored.extend(req.ignored)
        if req.clauses:
            self.clauses.append(HasClause(type_, param, req, name))

    # -------------------------------------------------------------- result parameters
    def parse_types(self, value: str) -> None:
        types = [t.strip() for t in value.split(",") if t.strip()]
        for t in types:
            if t not in self.ctx.registry.by_type:
                raise _bad("_type", f"unknown resource type '{t}'")
        self.result["types"] = tuple(types)

    def parse_result(self, name: str, base: str, value: str) -> None:
        modifier = name[len(base) + 1:] if ":" in name else ""
        if modifier and modifier not in RESULT_PARAMS[base]:
            self.unsupported(name, f"modifier ':{modifier}' is not supported on {base}")
            return
        handler: Callable[[str, str, str], None] = getattr(self, "_r" + base)
        handler(name, value, modifier)

    def _r_sort(self, name: str, value: str, modifier: str) -> None:
        keys = []
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            desc = item.startswith("-")
            code = item.lstrip("-")
            param = self.param(code)
            if param is None or not param.sortable:
                self.unsupported("_sort", f"cannot sort on '{code}'")
                continue
            keys.append(SortKey(param, desc))
        self.result["sort"] = tuple(keys)

    def _r_count(self, name: str, value: str, modifier: str) -> None:
        if not value.isdigit():
            raise _bad("_count", "must be a non-negative integer")
        self.result["count"] = int(value)

    def _r_total(self, name: str, value: str, modifier: str) -> None:
        if value not in TOTAL_VALUES:
            raise _bad("_total", f"must be one of {', '.join(sorted(TOTAL_VALUES))}")
        self.result["total"] = value

    def _r_summary(self, name: str, value: str, modifier: str) -> None:
        if value not in SUMMARY_VALUES:
            raise _bad("_summary", f"must be one of {', '.join(sorted(SUMMARY_VALUES))}")
        self.result["summary"] = value

    def _r_elements(self, name: str, value: str, modifier: str) -> None:
        elements = [e.strip() for e in value.split(",") if e.strip()]
        for e in elements:
            if not _ELEMENT.match(e):
                raise _bad("_elements", f"'{e}' is not an element name")
        self.result["elements"] = (*self.result["elements"], *elements)

    def _r_cursor(self, name: str, value: str, modifier: str) -> None:
        self.result["cursor"] = value

    def _include(self, name: str, value: str, modifier: str, reverse: bool) -> None:
        iterate = modifier in ("iterate", "recurse")
        if value == "*":
            self.result["revincludes" if reverse else "includes"].append(Include("*", "*", None, iterate))
            return
        parts = value.split(":")
        if len(parts) not in (2, 3):
            raise _bad(name, "takes SourceType:parameter[:TargetType]")
        source, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if source not in self.ctx.registry.by_type:
            raise _bad(name, f"unknown resource type '{source}'")
        if target is not None and target not in self.ctx.registry.by_type:
            raise _bad(name, f"unknown resource type '{target}'")
        if not reverse and not iterate and self.type is not None and source != self.type:
            self.unsupported(name, f"_include source must be {self.type} (or use :iterate)")
            return
        if code != "*":
            param = self.ctx.registry.get(source, code)
            if param is None or param.type != "reference":
                self.unsupported(name, f"'{code}' is not a reference parameter of {source}")
                return
            if target is not None and param.targets and target not in param.targets:
                self.unsupported(name, f"{target} is not a target of {source}.{code}")
                return
        self.result["revincludes" if reverse else "includes"].append(Include(source, code, target, iterate))

    def _r_include(self, name: str, value: str, modifier: str) -> None:
        self._include(name, value, modifier, reverse=False)

    def _r_revinclude(self, name: str, value: str, modifier: str) -> None:
        self._include(name, value, modifier, reverse=True)

    def _r_type(self, name: str, value: str, modifier: str) -> None:  # handled first, in parse()
        return


def parse_search(resource_type: str | None, params: Iterable[tuple[str, str]], *,
                 registry: SearchRegistry | None = None, lenient: bool = False,
                 base_url: str | None = None) -> SearchRequest:
    """Parse a search on ``resource_type`` (None: system-level) from query pairs in order.

    ``base_url`` (this server's FHIR base) makes absolute reference values relative.
    Raises :class:`BadRequest` (see the module doc).
    """
    reg = registry or default_registry()
    if resource_type is not None and resource_type not in reg.by_type:
        raise BadRequest(f"Unknown resource type '{resource_type}'", expression=resource_type)
    ctx = _Ctx(reg, base_url.rstrip("/") if base_url else None, lenient)
    return _Parser(resource_type, ctx).parse(list(params))
