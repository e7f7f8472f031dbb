"""Declarative CDA -> FHIR mappings (``mappings/*.toml``) and the engine that runs them.

A mapping file holds any number of ``[[section]]``, ``[[entry]]`` and ``[[struct]]`` tables,
laid out like the document (DESIGN §5):

* a **section** is matched by ANY of its ``templateIds`` or its LOINC ``codes``; ``default``
  names the entry mapping used for entries whose statement no entry mapping claims;
* an **entry** is matched by ANY of the templateIds found on the ``entry`` element or on
  its clinical statement (restricted by ``elements`` / ``moods`` when given, highest
  ``priority`` wins). It produces one ``resource`` (or none: a *wrapper* such as a
  concern act, whose ``ref`` fields turn nested statements into resources);
* a **struct** produces a FHIR backbone element (a reference range, a reaction).

Each ``fields`` item reads ``xpath`` (relative to the statement, namespaces ``cda``,
``sdtc``, ``lab``, ``xsi``), converts with the data-type converter named by ``type``
(see :mod:`fhir_server.documents.datatypes`) and writes the result at ``to``
(``a.b``; ``name[]`` appends to a list; ``name[x]`` takes the choice suffix from the
converter). Special types: ``struct:<id>``; ``ref`` (nested statements become resources
referenced from ``to``; ``default`` names the fallback mapping); ``actor`` (a
Practitioner/Organization reference from an author/performer/participant);
``const`` (the field's ``value``). ``map`` translates a code through a table,
``system`` wraps the result into a CodeableConcept of that system; ``required``
fills a data-absent-reason when nothing is found. ``hooks`` name Python
post-processors registered with :func:`hook` for semantics that are not a path.

Example (``mappings/entries/ccda-problems.toml``)::

    [[entry]]
    id = "problem-observation"
    resource = "Condition"
    templateIds = ["2.16.840.1.113883.10.20.22.4.4"]
    fields = [
      { to = "code", xpath = "cda:value", type = "CD", required = true },
      { to = "onset[x]", xpath = "cda:effectiveTime/cda:low", type = "EFFECTIVE.low" },
    ]
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from lxml import etree

from fhir_server.documents.datatypes import DATATYPES, Choice, Context, data_absent
from fhir_server.documents.safexml import NS

__all__ = [
    "MAPPINGS",
    "FieldSpec",
    "EntryMapping",
    "SectionMapping",
    "MappingSet",
    "HOOKS",
    "hook",
    "load_mappings",
    "set_path",
]

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"

Json = dict[str, Any]
Hook = Callable[..., None]
HOOKS: dict[str, Hook] = {}


def hook(name: str) -> Callable[[Hook], Hook]:
    """Register a post-processor usable as ``hooks = ["name"]`` in a mapping.

    Signature: ``fn(engine, node, resource) -> None`` (mutates ``resource``)."""

    def register(fn: Hook) -> Hook:
        if name in HOOKS:
            raise ValueError(f"hook {name!r} registered twice")
        HOOKS[name] = fn
        return fn

    return register


@dataclass(frozen=True)
class FieldSpec:
    to: str
    xpath: etree.XPath | None
    type: str
    many: bool = False
    required: bool = False
    mapping: dict[str, Any] | None = None
    system: str | None = None
    default: Any = None
    value: Any = None
    ref_default: str | None = None
    source: str = ""
    fallback: bool = False


@dataclass(frozen=True)
class EntryMapping:
    id: str
    resource: str | None
    template_ids: tuple[str, ...]
    elements: tuple[str, ...]
    moods: tuple[str, ...]
    priority: int
    fields: tuple[FieldSpec, ...]
    fixed: Json
    hooks: tuple[str, ...]
    origin: str


@dataclass(frozen=True)
class SectionMapping:
    id: str
    template_ids: tuple[str, ...]
    codes: tuple[str, ...]
    default: str | None
    origin: str
    overrides: dict[str, str] = field(default_factory=dict)


@dataclass
class MappingSet:
    entries: dict[str, EntryMapping] = field(default_factory=dict)
    structs: dict[str, EntryMapping] = field(default_factory=dict)
    sections: dict[str, SectionMapping] = field(default_factory=dict)
    by_template: dict[str, list[EntryMapping]] = field(default_factory=dict)
    section_by_template: dict[str, SectionMapping] = field(default_factory=dict)
    section_by_code: dict[str, SectionMapping] = field(default_factory=dict)
    resources: dict[str, Json] = field(default_factory=dict)

    def entry_for(self, template_ids: list[str], element: str, mood: str | None) -> EntryMapping | None:
        best: EntryMapping | None = None
        for tid in template_ids:
            for m in self.by_template.get(tid, ()):
                if m.elements and element not in m.elements:
                    continue
                if m.moods and (mood or "EVN") not in m.moods:
                    continue
                if best is None or m.priority > best.priority:
                    best = m
        return best

    def section_for(self, template_ids: list[str], code: str | None) -> SectionMapping | None:
        for tid in template_ids:
            hit = self.section_by_template.get(tid)
            if hit is not None:
                return hit
        if code:
            return self.section_by_code.get(code)
        return None


_XPATHS: dict[str, etree.XPath] = {}


def _xpath(expr: str) -> etree.XPath:
    hit = _XPATHS.get(expr)
    if hit is None:
        hit = _XPATHS[expr] = etree.XPath(expr, namespaces=NS)
    return hit


def _field(raw: Json, origin: str) -> FieldSpec:
    try:
        to = raw["to"]
        type_ = raw.get("type", "const" if "value" in raw else "")
    except KeyError as exc:
        raise ValueError(f"{origin}: field without {exc}") from None
    if not type_:
        raise ValueError(f"{origin}: field {to!r} has no type")
    known = type_ in DATATYPES or type_ in ("ref", "actor", "const") or type_.startswith("struct:")
    if not known:
        raise ValueError(f"{origin}: field {to!r}: unknown type {type_!r}")
    xp = raw.get("xpath")
    if xp is None and type_ != "const":
        raise ValueError(f"{origin}: field {to!r} has no xpath")
    return FieldSpec(
        to=to,
        xpath=_xpath(xp) if xp else None,
        type=type_,
        many=bool(raw.get("many", False)),
        required=bool(raw.get("required", False)),
        mapping=raw.get("map"),
        system=raw.get("system"),
        default=raw.get("default"),
        value=raw.get("value"),
        ref_default=raw.get("default") if type_ == "ref" else None,
        source=xp or "",
        fallback=bool(raw.get("fallback", False)),
    )


def _entry(raw: Json, origin: str) -> EntryMapping:
    return EntryMapping(
        id=raw["id"],
        resource=raw.get("resource"),
        template_ids=tuple(raw.get("templateIds", ())),
        elements=tuple(raw.get("elements", ())),
        moods=tuple(raw.get("moods", ())),
        priority=int(raw.get("priority", 0)),
        fields=tuple(_field(f, f"{origin}#{raw['id']}") for f in raw.get("fields", ())),
        fixed=dict(raw.get("fixed", {})),
        hooks=tuple(raw.get("hooks", ())),
        origin=origin,
    )


def load_mappings(directory: Path = MAPPINGS) -> MappingSet:
    """Load and cross-check every ``*.toml`` under ``directory`` (recursively)."""
    ms = MappingSet()
    for path in sorted(directory.rglob("*.toml")):
        origin = str(path.relative_to(directory))
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        ms.resources.update(data.get("resource", {}))
        ms.resources.setdefault("_format_codes", {}).update(data.get("format_codes", {}))
        ms.resources.setdefault("_document_classes", {}).update(data.get("document_classes", {}))
        for raw in data.get("section", ()):
            sm = SectionMapping(raw["id"], tuple(raw.get("templateIds", ())), tuple(raw.get("codes", ())),
                                raw.get("default"), origin, dict(raw.get("overrides", {})))
            if sm.id in ms.sections:
                raise ValueError(f"{origin}: section id {sm.id!r} defined twice")
            ms.sections[sm.id] = sm
            for tid in sm.template_ids:
                if tid in ms.section_by_template:
                    raise ValueError(f"{origin}: section templateId {tid} already mapped by "
                                     f"{ms.section_by_template[tid].id}")
                ms.section_by_template[tid] = sm
            for code in sm.codes:
                ms.section_by_code.setdefault(code, sm)
        for raw in data.get("entry", ()):
            em = _entry(raw, origin)
            if em.id in ms.entries:
                raise ValueError(f"{origin}: entry id {em.id!r} defined twice")
            ms.entries[em.id] = em
            for tid in em.template_ids:
                ms.by_template.setdefault(tid, []).append(em)
        for raw in data.get("struct", ()):
            em = _entry(raw, origin)
            ms.structs[em.id] = em
    # Cross-references must resolve at load time, not in the middle of a conversion.
    for sm in ms.sections.values():
        for target in [sm.default, *sm.overrides.values()]:
            if target and target not in ms.entries:
                raise ValueError(f"{sm.origin}: section {sm.id} names unknown entry mapping {target!r}")
    for em in [*ms.entries.values(), *ms.structs.values()]:
        for h in em.hooks:
            if h not in HOOKS:
                raise ValueError(f"{em.origin}: {em.id} uses unknown hook {h!r}")
        for f in em.fields:
            if f.type.startswith("struct:") and f.type[7:] not in ms.structs:
                raise ValueError(f"{em.origin}: {em.id} uses unknown struct {f.type[7:]!r}")
            if f.type == "ref" and f.ref_default and f.ref_default not in ms.entries:
                raise ValueError(f"{em.origin}: {em.id} ref default {f.ref_default!r} unknown")
    return ms


@lru_cache(maxsize=1)
def default_mappings() -> MappingSet:
    from fhir_server.documents import hooks as _hooks  # noqa: F401 - registers the hooks

    return load_mappings(MAPPINGS)


# --------------------------------------------------------------------------- writing values
@lru_cache(maxsize=1024)
def _parse_path(path: str) -> tuple[tuple[str, str], ...]:
    out = []
    for seg in path.split("."):
        if seg.endswith("[]"):
            out.append((seg[:-2], "list"))
        elif seg.endswith("[x]"):
            out.append((seg[:-3], "choice"))
        else:
            out.append((seg, "plain"))
    return tuple(out)


def set_path(target: Json, path: str, value: Any, *, extend: bool = False) -> None:
    """Write ``value`` into ``target`` at ``path`` (see module docstring)."""
    segs = _parse_path(path)
    cur = target
    last_index = len(segs) - 2
    for i, (name, kind) in enumerate(segs[:-1]):
        if kind == "list":
            lst = cur.setdefault(name, [])
            # A new element when the one being filled already has the final key ("diagnosis[].condition").
            if not lst or (i == last_index and segs[-1][1] == "plain" and segs[-1][0] in lst[-1]):
                lst.append({})
            cur = lst[-1]
        else:
            cur = cur.setdefault(name, {})
    name, kind = segs[-1]
    if kind == "choice":
        if isinstance(value, Choice):
            cur[name + value.suffix] = value.value
        return
    if isinstance(value, Choice):
        value = value.value
    if kind == "list":
        lst = cur.setdefault(name, [])
        if extend and isinstance(value, list):
            lst.extend(value)
        else:
            lst.append(value)
    else:
        cur[name] = value


def absent(target: Json, path: str, reason: str = "unknown") -> None:
    """Mark a required element as absent with a data-absent-reason extension."""
    segs = _parse_path(path)
    name, kind = segs[-1]
    if kind == "choice" or len(segs) > 1:
        return
    if kind == "list":
        target.setdefault(name, []).append({"extension": [data_absent(reason)]})
    else:
        target[name] = {"extension": [data_absent(reason)]}


def _present(target: Json, path: str) -> bool:
    segs = _parse_path(path)
    if len(segs) != 1:
        return False
    name, kind = segs[0]
    if kind == "choice":
        return any(k.startswith(name) and k[len(name):][:1].isupper() for k in target)
    return name in target


def apply_field(ctx: Context, node: etree._Element, spec: FieldSpec, target: Json,
                run_struct: Callable[[EntryMapping, etree._Element], Json | None],
                structs: dict[str, EntryMapping]) -> bool:
    """Run one plain field (not ``ref``/``actor``); returns True when a value was written."""
    if spec.fallback and _present(target, spec.to):
        return False
    nodes = spec.xpath(node) if spec.xpath is not None else []
    if spec.type == "const":
        if spec.xpath is None or nodes:
            set_path(target, spec.to, spec.value)
            return True
        return False
    wrote = False
    for el in nodes:
        if isinstance(el, str):
            value: Any = el.strip() or None
        elif spec.type.startswith("struct:"):
            value = run_struct(structs[spec.type[7:]], el)
        else:
            value = DATATYPES[spec.type](ctx, el)
        if value is not None and spec.mapping is not None:
            key = value if isinstance(value, str) else None
            value = spec.mapping.get(key, spec.mapping.get("*")) if key is not None else None
        if value is not None and spec.system is not None:
            value = {"coding": [{"system": spec.system, "code": value}]}
        if value is None or value == [] or value == {}:
            continue
        set_path(target, spec.to, value, extend=isinstance(value, list))
        wrote = True
        if not spec.many:
            break
    if not wrote and spec.default is not None:
        value = spec.default
        if spec.system is not None and isinstance(value, str):
            value = {"coding": [{"system": spec.system, "code": value}]}
        set_path(target, spec.to, value)
        wrote = True
    if not wrote and spec.required:
        absent(target, spec.to)
    return wrote
