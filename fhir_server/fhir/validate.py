"""Parsing and validation of incoming resources (no I/O beyond reading terminologies/).

``parse_json``/``parse_xml`` turn a body into a FHIR JSON dict; ``Validator``
validates it with the fhir.resources R4B models and adds the checks the models
skip: required bindings on ``code`` elements (terminologies/required-bindings.json),
empty objects/arrays/strings, id syntax and reference syntax. Every problem is an
:class:`Issue` with the FHIRPath expression of the faulty element.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from lxml import etree

from fhir_server.fhir import models
from fhir_server.fhir.errors import BadRequest, InvalidResource, Issue

__all__ = ["ID_RE", "Validator", "field_info", "parse_json", "parse_xml", "to_xml", "safe_xml_parser"]

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REF_RE = re.compile(
    r"^(?:(?:https?://[^\s]+/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?"
    r"|#[A-Za-z0-9\-.]*|urn:uuid:[0-9a-fA-F\-]{36}|urn:oid:[0-2](?:\.(?:0|[1-9][0-9]*))+"
    r"|https?://\S+)$"
)
_REFERENCE_KEYS = frozenset({"reference", "type", "identifier", "display", "id", "extension"})
FHIR_NS = "http://hl7.org/fhir"
MAX_XML_DEPTH = 200


def safe_xml_parser() -> etree.XMLParser:
    """An lxml parser that resolves no entity, loads no DTD and touches no network."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=False)


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON: {exc}", expression="Resource") from exc
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object (a FHIR resource)", expression="Resource")
    return data


def check_xml(body: bytes) -> etree._Element:
    """Parse untrusted XML safely; any DOCTYPE is refused (XXE, entity expansion)."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        root = etree.fromstring(body, parser=safe_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise BadRequest(f"Malformed XML: {exc}", expression="Resource") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise BadRequest("XML with a DOCTYPE is refused (entities and DTDs are not allowed)", expression="Resource")
    depth = _depth(root)
    if depth > MAX_XML_DEPTH:
        raise BadRequest(f"XML nested deeper than {MAX_XML_DEPTH} levels", expression="Resource")
    return root


def _depth(root: etree._Element) -> int:
    best = 0
    for el in root.iter():
        d = 0
        p = el
        while p is not None and d <= MAX_XML_DEPTH:
            p = p.getparent()
            d += 1
        best = max(best, d)
        if best > MAX_XML_DEPTH:
            break
    return best


def parse_xml(body: bytes) -> dict[str, Any]:
    """FHIR XML -> FHIR JSON dict (through the R4B model, which knows the element types)."""
    root = check_xml(body)
    qname = etree.QName(root)
    if qname.namespace != FHIR_NS:
        raise BadRequest(f"Root element must be in the FHIR namespace {FHIR_NS}", expression="Resource")
    rtype = qname.localname
    if not models.is_resource_type(rtype):
        raise BadRequest(f"Unknown resource type '{rtype}'", expression="Resource")
    try:
        model = models.model_class(rtype).model_validate_xml(etree.tostring(root), xmlparser=safe_xml_parser())
    except models.ValidationError as exc:
        raise InvalidResource(issues=_pydantic_issues(rtype, exc)) from exc
    except (ValueError, TypeError, KeyError, AttributeError, etree.LxmlError) as exc:
        raise BadRequest(f"Invalid FHIR XML: {exc}", expression=rtype) from exc
    return orjson.loads(model.model_dump_json(exclude_none=True))


def to_xml(resource: dict[str, Any], pretty: bool = False) -> bytes:
    model = models.model_class(resource["resourceType"]).model_validate(resource)
    return model.model_dump_xml(pretty_print=pretty)


def _expr(rtype: str, loc: tuple[Any, ...]) -> str:
    out = rtype
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("function-") and part not in ("__root__",):
            out += f".{part}"
    return out


def _pydantic_issues(rtype: str, exc: models.ValidationError) -> list[Issue]:
    issues = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        kind = err.get("type", "")
        code = "structure" if kind in ("extra_forbidden", "missing") else "value"
        if kind == "missing":
            code = "required"
        msg = err.get("msg", "invalid")
        if kind == "extra_forbidden":
            msg = "Unknown element"
        issues.append(Issue(f"{msg} ({_expr(rtype, loc)})", code, "error", (_expr(rtype, loc),)))
    return issues


class Validator:
    """Structural validation plus the checks the R4B models skip."""

    def __init__(self, terminologies: Path) -> None:
        data = orjson.loads((terminologies / "required-bindings.json").read_bytes())
        self.bindings: dict[str, dict[str, frozenset[str]]] = {
            t: {path: frozenset(codes) for path, codes in paths.items()} for t, paths in data["bindings"].items()
        }

    def validate(self, resource: dict[str, Any], *, expected_type: str | None = None) -> None:
        """Raise :class:`InvalidResource` (400) listing every problem found."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not models.is_resource_type(rtype):
            raise InvalidResource(f"Unknown or missing resourceType '{rtype}'", expression="resourceType")
        if expected_type and rtype != expected_type:
            raise BadRequest(f"Resource type '{rtype}' does not match the URL ({expected_type})",
                             expression="resourceType")
        issues: list[Issue] = list(self._shape_issues(rtype, resource))
        rid = resource.get("id")
        if rid is not None and (not isinstance(rid, str) or not ID_RE.match(rid)):
            issues.append(Issue(f"Invalid id '{rid}': must match [A-Za-z0-9-.]{{1,64}}", "value", "error",
                                (f"{rtype}.id",)))
        if issues:
            raise InvalidResource(issues=issues)
        try:
            models.model_class(rtype).model_validate(resource)
        except models.ValidationError as exc:
            raise InvalidResource(issues=_pydantic_issues(rtype, exc)) from exc
        except (ValueError, TypeError) as exc:
            raise InvalidResource(f"Invalid resource: {exc}", expression=rtype) from exc
        issues = list(_primitive_issues(models.model_class(rtype), resource, rtype))
        issues += list(self._binding_issues(rtype, resource))
        if issues:
            raise InvalidResource(issues=issues)

    # --------------------------------------------------------------- checks
    def _shape_issues(self, rtype: str, resource: dict[str, Any]) -> Iterator[Issue]:
        stack: list[tuple[str, Any]] = [(rtype, resource)]
        while stack:
            path, value = stack.pop()
            if isinstance(value, dict):
                if not value:
                    yield Issue("Empty object is not allowed", "structure", "error", (path,))
                    continue
                ref = value.get("reference")
                if isinstance(ref, str) and _REFERENCE_KEYS.issuperset(value):
                    m = _REF_RE.match(ref)
                    if not m or (m.group("type") and not models.is_resource_type(m.group("type"))):
                        yield Issue(f"Invalid reference '{ref}'", "value", "error", (f"{path}.reference",))
                for k, v in value.items():
                    if k == "div" and path.endswith(".text"):
                        continue
                    if k == "contained" and isinstance(v, list):
                        for i, c in enumerate(v):
                            stack.append((f"{path}.contained[{i}]", c))
                        continue
                    stack.append((f"{path}.{k}", v))
            elif isinstance(value, list):
                if not value:
                    yield Issue("Empty array is not allowed", "structure", "error", (path,))
                for i, v in enumerate(value):
                    stack.append((f"{path}[{i}]", v))
            elif isinstance(value, str) and not value.strip():
                yield Issue("Empty or blank string is not allowed", "value", "error", (path,))

    def _binding_issues(self, rtype: str, resource: dict[str, Any]) -> Iterator[Issue]:
        for path, codes in self.bindings.get(rtype, {}).items():
            for expr, value in _walk(resource, path.split(".")[1:], rtype):
                if isinstance(value, str) and value not in codes:
                    yield Issue(f"Code '{value}' is not in the required value set of {path}", "code-invalid",
                                "error", (expr,))


def _walk(node: Any, parts: list[str], expr: str) -> Iterator[tuple[str, Any]]:
    if not parts:
        yield expr, node
        return
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, parts, f"{expr}[{i}]")
        return
    if not isinstance(node, dict):
        return
    head = parts[0]
    if head in node:
        value = node[head]
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _walk(item, parts[1:], f"{expr}.{head}[{i}]")
        else:
            yield from _walk(value, parts[1:], f"{expr}.{head}")


# ----------------------------------------------------------- JSON primitive types
# The R4B models coerce ("yes" -> True, "3" -> 3); FHIR JSON does not. Walk the JSON
# beside the model's field annotations and insist on the JSON type of each primitive.
_KIND_OF = {bool: "boolean", int: "integer", float: "number", Decimal: "number", str: "string",
            date: "string", datetime: "string", time: "string"}
_JSON_TYPES: dict[str, tuple[type, ...]] = {"boolean": (bool,), "integer": (int,), "number": (int, float),
                                            "string": (str,)}


@cache
def _field_kinds(cls: type) -> dict[str, tuple[str, Any]]:
    """alias -> (kind, child model class or None); kind is a JSON type, "complex" or "resource"."""
    out: dict[str, tuple[str, Any]] = {}
    for name, f in cls.model_fields.items():  # type: ignore[attr-defined]
        alias = f.alias or name
        base = _unwrap(f.annotation)
        if base in _KIND_OF:
            out[alias] = (_KIND_OF[base], None)
        elif isinstance(base, type) and base.__name__.endswith("Type") and hasattr(base, "get_model_klass"):
            if base.__name__ == "ResourceType":
                out[alias] = ("resource", None)
            else:
                try:
                    out[alias] = ("complex", base.get_model_klass())
                except Exception:  # noqa: BLE001 - unknown helper type: skip the check
                    continue
    return out


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType, list, typing.List):  # noqa: UP006
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None
            annotation = args[0]
        else:
            return annotation


def _primitive_issues(cls: type, node: dict[str, Any], path: str) -> Iterator[Issue]:
    kinds = _field_kinds(cls)
    for key, value in node.items():
        spec = kinds.get(key)
        if spec is None:
            continue
        kind, child = spec
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"{path}.{key}[{i}]" if isinstance(value, list) else f"{path}.{key}"
            if item is None:
                continue
            if kind == "complex":
                if isinstance(item, dict):
                    yield from _primitive_issues(child, item, where)
            elif kind == "resource":
                rt = item.get("resourceType") if isinstance(item, dict) else None
                if isinstance(rt, str) and models.is_resource_type(rt):
                    yield from _primitive_issues(models.model_class(rt), item, where)
            else:
                ok = _JSON_TYPES[kind]
                if not isinstance(item, ok) or (kind != "boolean" and isinstance(item, bool)):
                    yield Issue(f"Expected a JSON {kind} for {where}, got {type(item).__name__}", "value", "error",
                                (where,))


@cache
def field_info(cls: type, name: str) -> tuple[bool, Any]:
    """(is repeating, child model class or None) of element ``name`` of model ``cls``."""
    for fname, f in cls.model_fields.items():  # type: ignore[attr-defined]
        if (f.alias or fname) != name:
            continue
        ann = f.annotation
        is_list = "List" in str(ann) or "list[" in str(ann)
        kinds = _field_kinds(cls)
        kind = kinds.get(name)
        return is_list, kind[1] if kind and kind[0] == "complex" else None
    return False, None
