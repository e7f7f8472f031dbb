"""Index extraction at write time: a resource -> its ``ix`` sub-document and its owner (``sp``).

Each parameter's FHIRPath expression is compiled once per resource type. Plain paths and
the common forms (``as X`` / ``.as(X)`` / ``ofType(X)`` on choice elements,
``.where(resolve() is X)``, ``.where(field='value')``, ``[n]``) become small Python
getters; anything else is evaluated with fhirpathpy.

The ``ix`` value representation (what :mod:`fhir_server.store.query` queries):

========== ======================================================================================
type       ``ix[code]`` (and auxiliary keys)
========== ======================================================================================
string     folded strings (lower case, no accents, single spaces); ``code:exact`` the raw strings
token      ``system|code``, ``code`` and ``system|`` for a coded value with a system; ``|code`` and
           ``code`` without one; booleans as ``true``/``false``. ``code:text`` folded
           CodeableConcept.text / Coding.display / Identifier.type.text; ``code:of-type``
           ``typeSystem|typeCode|value`` for Identifiers
reference  ``Type/id`` (relative; absolute URLs on this server's base made relative; other absolute
           URLs and canonicals kept as written, canonicals also without ``|version``; contained
           ``#refs`` skipped); ``code:identifier`` token forms of ``Reference.identifier``
date       ``{"lo": datetime, "hi": datetime}`` instants (inclusive, ms, UTC) covering the precision
           of the value; Period start/end (open ends: year 1 / 9999); Timing events and bounds
number     ``{"lo": v, "hi": v}``
quantity   ``{"lo", "hi"}`` raw value (a Range gives low/high, open ends +-inf), ``"s"`` system,
           ``"c"`` code, ``"u"`` unit text, and for known UCUM units ``"clo"``/``"chi"``/``"cu"`` in
           the canonical unit (see :func:`fhir_server.search.values.canonical_quantity`)
uri        the URIs as written (canonicals also without ``|version``)
composite  one ``{"c0": [...], "c1": [...]}`` per element of the composite's expression, each
           ``cN`` holding the main values of component N as above, so a query matches within one
           element
========== ======================================================================================

Sort keys: for each string, token, date, number and quantity parameter with values (except
the ``meta`` ones: ``_tag``, ``_security``, ``_profile``, ``_source``),
``ix["_sort_<code>"] = [ascending key, descending key]``: the smallest and the largest
value (the lowest ``lo`` and highest ``hi`` for dates, numbers and quantities, code-only
forms for tokens, folded strings). Scalars, so that a keyset cursor can page on them;
``_sort`` on a reference or uri parameter sorts on the value array itself (MongoDB uses
its smallest element ascending, its largest descending). See :data:`SORT_KEY_TYPES`.

Parameters without values get no key, so ``:missing`` is ``$exists``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir_server.search.registry import SearchParam, SearchRegistry, default_registry, split_union
from fhir_server.search.values import (
    MAX_INSTANT,
    MIN_INSTANT,
    UCUM,
    DateRange,
    canonical_quantity,
    fold,
    parse_date_range,
)

__all__ = ["Extractor", "compile_expression", "Getter", "normalise_reference", "SORT_PREFIX", "SORT_KEY_TYPES",
           "sort_field"]

log = logging.getLogger(__name__)

Getter = Callable[[Any], list[Any]]
Aux = dict[str, list[Any]]
SORT_PREFIX = "_sort_"
#: Parameter types for which a scalar sort key is stored (others sort on the value array).
SORT_KEY_TYPES = frozenset({"string", "token", "date", "number", "quantity"})

# ---------------------------------------------------------------------------- expression compiler
_AS_PAREN = re.compile(r"^\((?P<inner>[^()]+?)\s+as\s+(?P<type>[A-Za-z]+)\)(?P<rest>(\.[A-Za-z][\w.]*)?)$")
_SEGMENT = re.compile(
    r"^(?:(?P<name>[A-Za-z_]\w*)(?:\[(?P<index>\d+)\])?"
    r"|(?P<fn>as|ofType)\((?P<type>[A-Za-z]+)\)"
    r"|where\(resolve\(\)\s+is\s+(?P<rtype>[A-Z][A-Za-z]+)\)"
    r"|where\((?P<wfield>[a-z]\w*)\s*=\s*'(?P<wvalue>[^']*)'\))$"
)


def _split_dots(path: str) -> list[str]:
    out: list[str] = []
    depth = 0
    cur = ""
    for ch in path:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "." and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


Step = Callable[[list[Any]], list[Any]]


def _field_step(name: str, choice: bool) -> Step:
    def step(items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            v = item.get(name)
            if v is None and choice:
                n = len(name)
                for key, val in item.items():
                    if len(key) > n and key.startswith(name) and key[n].isupper():
                        v = val
                        break
            if v is None:
                continue
            if isinstance(v, list):
                out.extend(v)
            else:
                out.append(v)
        return out

    return step


def _index_step(index: int) -> Step:
    return lambda items: items[index:index + 1]


def _ref_type_step(type_: str) -> Step:
    marker = f"{type_}/"

    def step(items: list[Any]) -> list[Any]:
        out = []
        for item in items:
            if not isinstance(item, dict):
                continue
            ref = item.get("reference")
            if isinstance(ref, str) and (ref.startswith(marker) or f"/{marker}" in ref):
                out.append(item)
            elif ref is None and item.get("type") == type_:
                out.append(item)
        return out

    return step


def _where_eq_step(field_: str, value: str) -> Step:
    return lambda items: [i for i in items if isinstance(i, dict) and i.get(field_) == value]


def _compile_fast(piece: str, choice_elements: frozenset[str]) -> Getter | None:
    """A Python getter for the simple forms, None when fhirpathpy is needed."""
    piece = piece.strip()
    m = _AS_PAREN.match(piece)
    if m:
        piece = f"{m.group('inner').strip()}.as({m.group('type')}){m.group('rest') or ''}"
    segments = _split_dots(piece)
    if not segments or not segments[0]:
        return None
    steps: list[Step] = []
    first = segments[0]
    if first[:1].isupper() and _SEGMENT.match(first) and "[" not in first:
        segments = segments[1:]  # the resource type: the root itself
    last_name: str | None = None
    for seg in segments:
        sm = _SEGMENT.match(seg.strip())
        if sm is None:
            return None
        if sm.group("name"):
            last_name = sm.group("name")
            steps.append(_field_step(last_name, last_name in choice_elements))
            if sm.group("index") is not None:
                steps.append(_index_step(int(sm.group("index"))))
        elif sm.group("fn"):
            # as(X)/ofType(X) right after a choice element: read the typed JSON key
            if last_name is None or last_name not in choice_elements or not steps:
                return None
            type_ = sm.group("type")
            steps[-1] = _field_step(last_name + type_[0].upper() + type_[1:], False)
            last_name = None
        elif sm.group("rtype"):
            steps.append(_ref_type_step(sm.group("rtype")))
            last_name = None
        else:
            steps.append(_where_eq_step(sm.group("wfield"), sm.group("wvalue")))
            last_name = None

    def getter(resource: Any) -> list[Any]:
        items = [resource]
        for step in steps:
            items = step(items)
            if not items:
                return items
        return items

    return getter


def _compile_fhirpath(piece: str) -> Getter:
    import fhirpathpy
    from fhirpathpy.models import models

    fn = fhirpathpy.compile(piece, models["r4"])

    def getter(resource: Any) -> list[Any]:
        try:
            return list(fn(resource, {}))
        except Exception:  # noqa: BLE001 - a failing expression must not block a write
            log.warning("FHIRPath evaluation failed: %s", piece, exc_info=True)
            return []

    return getter


def compile_expression(expression: str, choice_elements: frozenset[str] = frozenset()) -> Getter:
    """Compile a FHIRPath expression (a union of pieces) into ``resource -> [values]``."""
    getters: list[Getter] = []
    for piece in split_union(expression):
        fast = _compile_fast(piece, choice_elements)
        getters.append(fast if fast is not None else _compile_fhirpath(piece))
    if len(getters) == 1:
        return getters[0]

    def union(resource: Any) -> list[Any]:
        out: list[Any] = []
        for g in getters:
            out.extend(g(resource))
        return out

    return union


# ---------------------------------------------------------------------------- normalisers
def _unique(values: Iterable[Any]) -> list[Any]:
    seen: set[Any] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


_NAME_KEYS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_KEYS = ("text", "line", "city", "district", "state", "postalCode", "country")
_STRINGISH_KEYS = ("display", "value", "name")


def _strings_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict):
        return []
    out: list[str] = []
    keys: tuple[str, ...]
    if any(k in value for k in ("family", "given")):
        keys = _NAME_KEYS
    elif any(k in value for k in ("line", "city", "postalCode", "country", "district", "state")):
        keys = _ADDRESS_KEYS
    else:
        keys = ("text", *_STRINGISH_KEYS)
    for k in keys:
        v = value.get(k)
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out.extend(x for x in v if isinstance(x, str))
    if "given" in value or "family" in value:  # the whole name, so "jean dupont" matches too
        given = value.get("given") or []
        whole = " ".join([*(g for g in given if isinstance(g, str)), value.get("family") or ""]).strip()
        if whole and whole not in out:
            out.append(whole)
    return out


def norm_string(values: list[Any], ctx: Extractor) -> tuple[list[Any], Aux]:
    raw = _unique(s for v in values for s in _strings_of(v) if s)
    if not raw:
        return [], {}
    return _unique(fold(s) for s in raw), {":exact": raw}


def _coding_forms(system: Any, code: Any, out: list[str]) -> None:
    if not isinstance(code, str) or not code:
        if isinstance(system, str) and system:
            out.append(f"{system}|")
        return
    if isinstance(system, str) and system:
        out.extend((f"{system}|{code}", code, f"{system}|"))
    else:
        out.extend((f"|{code}", code))


def norm_token(values: list[Any], ctx: Extractor) -> tuple[list[Any], Aux]:
    forms: list[str] = []
    texts: list[str] = []
    of_type: list[str] = []
    for v in values:
        if isinstance(v, bool):
            forms.extend(("true" if v else "false", "|true" if v else "|false"))
        elif isinstance(v, str):
            forms.extend((v, f"|{v}"))
        elif isinstance(v, int | float):
            forms.append(str(v))
        elif isinstance(v, dict):
            if "coding" in v or ("text" in v and "code" not in v and "value" not in v):
                for c in v.get("coding") or []:
                    if isinstance(c, dict):
                        _coding_forms(c.get("system"), c.get("code"), forms)
                        if isinstance(c.get("display"), str):
                            texts.append(fold(c["display"]))
                if isinstance(v.get("text"), str):
                    texts.append(fold(v["text"]))
            elif "value" in v and "code" not in v:  # Identifier, ContactPoint
                value = v.get("value")
                _coding_forms(v.get("system"), value if isinstance(value, str) else None, forms)
                type_ = v.get("type")
                if isinstance(type_, dict) and isinstance(value, str):
                    for c in type_.get("coding") or []:
                        if isinstance(c, dict) and c.get("code"):
                            of_type.append(f"{c.get('system') or ''}|{c['code']}|{value}")
                    if isinstance(type_.get("text"), str):
                        texts.append(fold(type_["text"]))
            else:  # Coding (and Quantity-like code/system pairs)
                _coding_forms(v.get("system"), v.get("code"), forms)
                if isinstance(v.get("display"), str):
                    texts.append(fold(v["display"]))
    aux: Aux = {}
    if texts:
        aux[":text"] = _unique(texts)
    if of_type:
        aux[":of-type"] = _unique(of_type)
    return _unique(forms), aux


def normalise_reference(ref: str, base_url: str | None) -> str | None:
    """``Type/id`` for a literal reference (server base stripped, history version dropped),
    the absolute URL for one elsewhere, None for a contained (``#``) reference."""
    if not ref or ref.startswith("#"):
        return None
    if base_url and ref.startswith(base_url + "/"):
        ref = ref[len(base_url) + 1:]
    if "/_history/" in ref:
        ref = ref.split("/_history/", 1)[0]
    return ref


def norm_reference(values: list[Any], ctx: Extractor) -> tuple[list[Any], Aux]:
    refs: list[str] = []
    idents: list[Any] = []
    for v in values:
        if isinstance(v, str):  # canonical / uri
            refs.append(v)
            if "|" in v:
                refs.append(v.split("|", 1)[0])
        elif isinstance(v, dict):
            ref = v.get("reference")
            if isinstance(ref, str):
                norm = normalise_reference(ref, ctx.base_url)
                if norm:
                    refs.append(norm)
            elif isinstance(v.get("resourceType"), str) and isinstance(v.get("id"), str):
                refs.append(f"{v['resourceType']}/{v['id']}")
            if isinstance(v.get("identifier"), dict):
                idents.append(v["identifier"])
    aux: Aux = {}
    if idents:
        forms, _ = norm_token(idents, ctx)
        if forms:
            aux[":identifier"] = forms
    return _unique(refs), aux


def _range_of(text: Any) -> DateRange | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_date_range(text)
    except ValueError:
        return None


def norm_date(values: list[Any], ctx: Extractor) -> tuple[list[Any], Aux]:
    out: list[dict[str, Any]] = []
    for v in values:
        if isinstance(v, str):
            r = _range_of(v)
            if r is not None:
                out.append({"lo": r.lo, "hi": r.hi})
        elif isinstance(v, dict):
            if "start" in v or "end" in v:  # Period
                s, e = _range_of(v.get("start")), _range_of(v.get("end"))
                if s is not None or e is not None:
                    out.append({"lo": s.lo if s else MIN_INSTANT, "hi": e.hi if e else MAX_INSTANT})
            else:  # Timing
                sub = [*(v.get("event") or [])]
                bounds = (v.get("repeat") or {}).get("boundsPeriod")
                if isinstance(bounds, dict):
                    sub.append(bounds)
                if sub:
                    out.extend(norm_date(sub, ctx)[0])
    return _unique_dicts(out), {}


def _unique_dicts(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(items) < 2:
        return items
    seen: set[tuple[Any, ...]] = set()
    out = []
    for d in items:
        key = tuple(sorted(d.items()))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def norm_number(values: list[Any], ctx: Extractor) -> tuple[list[Any], Aux]:
    out = []
    for v in values:
        n = _num(v.get("value") if isinstance(v, dict) else v)
        if n is not None:
            out.append({"lo": n, "hi": n})
    return _unique_dicts(out), {}


def _quantity_entry(lo: float, hi: float, q: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"lo": lo, "hi": hi}
    system, code, unit = q.get("system"), q.get("code"), q.get("unit")
    if "currency" in q:
        system, code = "urn:iso:std:iso:4217", q.get("currency")
    if isinstance(system, str):
        entry["s"] = system
    if isinstance(code, str):
        entry["c"] = code
    if isinstance(unit, str):
        entry["u"] = unit
    if system in (UCUM, None) and isinstance(code, str):
        clo, chi = canonical_quantity(lo, code), canonical_quantity(hi, code)
        if clo is not None and chi is not None:
            entry["clo"], entry["chi"], entry["cu"] = clo[0], chi[0], clo[1]
    return entry


def norm_quantity(values: list[Any], ctx: Extractor) -> tuple[list[Any], Aux]:
    out = []
    for v in values:
        if not isinstance(v, dict):
            continue
        if "low" in v or "high" in v:  # Range
            low, high = v.get("low") or {}, v.get("high") or {}
            lo, hi = _num(low.get("value")), _num(high.get("value"))
            if lo is None and hi is None:
                continue
            unit_src = low if lo is not None else high
            out.append(_quantity_entry(lo if lo is not None else float("-inf"),
                                       hi if hi is not None else float("inf"), unit_src))
        else:
            n = _num(v.get("value"))
            if n is not None:
                out.append(_quantity_entry(n, n, v))
    return _unique_dicts(out), {}


def norm_uri(values: list[Any], ctx: Extractor) -> tuple[list[Any], Aux]:
    out: list[str] = []
    for v in values:
        if isinstance(v, str) and v:
            out.append(v)
            if "|" in v:
                out.append(v.split("|", 1)[0])
    return _unique(out), {}


Normaliser = Callable[[list[Any], "Extractor"], tuple[list[Any], Aux]]

NORMALISERS: dict[str, Normaliser] = {
    "string": norm_string,
    "token": norm_token,
    "reference": norm_reference,
    "date": norm_date,
    "number": norm_number,
    "quantity": norm_quantity,
    "uri": norm_uri,
}


# ---------------------------------------------------------------------------- sort keys
def _sort_key(type_: str, values: list[Any]) -> list[Any] | None:
    if type_ in ("date", "number"):
        return [min(v["lo"] for v in values), max(v["hi"] for v in values)]
    if type_ == "quantity":
        canon = all("clo" in v for v in values)
        lo_key, hi_key = ("clo", "chi") if canon else ("lo", "hi")
        return [min(v[lo_key] for v in values), max(v[hi_key] for v in values)]
    if type_ == "token":
        codes = [v for v in values if "|" not in v] or values
        return [min(codes), max(codes)]
    if type_ == "string":
        return [min(values), max(values)]
    return None


def sort_field(param: SearchParam, descending: bool) -> str:
    """The document field a ``_sort`` on ``param`` orders by (see the module doc)."""
    if param.code in ("_id", "_lastUpdated"):
        return param.field
    if param.type in SORT_KEY_TYPES and param.base != "Resource":
        return f"ix.{SORT_PREFIX}{param.code}.{1 if descending else 0}"
    if param.type in ("date", "number", "quantity"):
        return f"ix.{param.code}.{'hi' if descending else 'lo'}"
    return f"ix.{param.code}"


# ---------------------------------------------------------------------------- the extractor
@dataclass(frozen=True, slots=True)
class _Compiled:
    param: SearchParam
    getter: Getter
    normalise: Normaliser | None
    components: tuple[tuple[Getter, Normaliser], ...] = ()


class Extractor:
    """Computes ``ix`` and ``sp`` for resources, per the search registry.

    ``base_url`` is this server's FHIR base (``http://host/fhir``): absolute references to it
    are stored relative. Thread-safe after construction (compiled getters are cached).
    """

    def __init__(self, registry: SearchRegistry | None = None, base_url: str | None = None) -> None:
        self.registry = registry or default_registry()
        self.base_url = base_url.rstrip("/") if base_url else None
        self._compile = lru_cache(maxsize=None)(self._compile_type)

    # -------------------------------------------------------------- compilation
    def _compile_param(self, p: SearchParam) -> _Compiled | None:
        choice = self.registry.choice_elements
        if not p.indexed:
            return None
        if p.type == "composite":
            comps = []
            for c in p.components:
                norm = NORMALISERS.get(c.type)
                if norm is None:
                    return None
                comps.append((compile_expression(c.expression, choice), norm))
            return _Compiled(p, compile_expression(p.expression, choice), None, tuple(comps))
        norm = NORMALISERS.get(p.type)
        if norm is None:
            return None
        return _Compiled(p, compile_expression(p.expression, choice), norm)

    def _compile_type(self, resource_type: str) -> tuple[_Compiled, ...]:
        out = []
        for p in self.registry.params(resource_type).values():
            c = self._compile_param(p)
            if c is not None:
                out.append(c)
        return tuple(out)

    def warm_up(self, resource_types: Iterable[str] | None = None) -> None:
        """Compile every type's expressions now (start-up) rather than at first write."""
        for t in resource_types or self.registry.types():
            self._compile(t)

    # -------------------------------------------------------------- public API
    def index(self, resource: dict[str, Any]) -> dict[str, list[Any]]:
        """The normalised search values (``ix``) of a resource (see the module doc for the shapes)."""
        type_ = resource.get("resourceType")
        if not isinstance(type_, str):
            return {}
        ix: dict[str, list[Any]] = {}
        for c in self._compile(type_):
            raw = c.getter(resource)
            if not raw:
                continue
            code = c.param.code
            if c.normalise is None:
                values = self._composite(c, raw)
                if values:
                    ix[code] = values
                continue
            values, aux = c.normalise(raw, self)
            if not values and not aux:
                continue
            if values:
                ix[code] = values
                if c.param.type in SORT_KEY_TYPES and c.param.base != "Resource":
                    key = _sort_key(c.param.type, values)
                    if key is not None:
                        ix[SORT_PREFIX + code] = key
            for suffix, extra in aux.items():
                ix[code + suffix] = extra
        return ix

    def _composite(self, c: _Compiled, elements: list[Any]) -> list[Any]:
        out = []
        for element in elements:
            entry: dict[str, Any] = {}
            for i, (getter, norm) in enumerate(c.components):
                values, _ = norm(getter(element), self)
                if not values:
                    break
                entry[f"c{i}"] = values
            else:
                out.append(entry)
        return out

    def owner(self, resource: dict[str, Any]) -> str | None:
        """The id of the Patient whose compartment holds the resource (``sp``): a Patient is its own
        owner; otherwise the first Patient reference among the compartment parameters
        (https://hl7.org/fhir/R4/compartmentdefinition-patient.html); None for shared resources."""
        type_ = resource.get("resourceType")
        if type_ == "Patient":
            id_ = resource.get("id")
            return id_ if isinstance(id_, str) else None
        if not isinstance(type_, str):
            return None
        codes = self.registry.compartment_params(type_)
        if not codes:
            return None
        by_code = {c.param.code: c for c in self._compile(type_)}
        for code in codes:
            c = by_code.get(code)
            if c is None or c.param.type != "reference":
                continue
            refs, _ = norm_reference(c.getter(resource), self)
            for ref in refs:
                if ref.startswith("Patient/"):
                    return ref[len("Patient/"):]
        return None

    def owner_from_index(self, resource_type: str, ix: dict[str, list[Any]]) -> str | None:
        """Same as :meth:`owner` from an already computed ``ix`` (no re-evaluation)."""
        for code in self.registry.compartment_params(resource_type):
            for ref in ix.get(code, ()):
                if isinstance(ref, str) and ref.startswith("Patient/"):
                    return ref[len("Patient/"):]
        return None
