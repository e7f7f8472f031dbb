"""FHIRPath Patch (https://hl7.org/fhir/R4/fhirpatch.html) on FHIR JSON.

A ``Parameters`` resource lists operations (add, insert, delete, replace, move),
each with a FHIRPath ``path``. Paths are resolved with a small evaluator over the
JSON that knows the subset patch paths use in practice: element names, indexers
``[n]``, ``first()``, ``last()``, ``where(<path> = <literal>)`` (several joined with
``and``) and ``ofType(<Type>)`` on choice elements. Anything else is refused with a
clear error rather than guessed. Whether a new child is repeating comes from the R4B
model of the element being patched.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from fhir_server.fhir import models
from fhir_server.fhir.errors import BadRequest, Unprocessable
from fhir_server.fhir.validate import field_info

__all__ = ["apply_fhirpatch", "is_fhirpatch"]


def is_fhirpatch(body: Any) -> bool:
    return isinstance(body, dict) and body.get("resourceType") == "Parameters"


@dataclass
class _Node:
    """One element: ``container[key]`` (key a str for a property, an int for a list position)."""

    container: Any
    key: Any
    cls: Any  # the R4B model class of the element's value (None for primitives / unknown)

    @property
    def value(self) -> Any:
        return self.container[self.key]


_SEG = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<idx>(\[\d+\])*)$")
_FUNC = re.compile(r"^(?P<fn>where|first|last|ofType|exists)\((?P<arg>.*)\)(?P<idx>(\[\d+\])*)$", re.S)


def _split(path: str) -> list[str]:
    out, depth, quoted, cur = [], 0, False, []
    for ch in path:
        if ch == "'" :
            quoted = not quoted
        if not quoted:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == "." and depth == 0:
                out.append("".join(cur))
                cur = []
                continue
        cur.append(ch)
    out.append("".join(cur))
    return [s.strip() for s in out]


def _literal(text: str) -> Any:
    text = text.strip()
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1].replace("\\'", "'")
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError as exc:
        raise ValueError(f"unsupported literal {text}") from exc


def _select(nodes: list[_Node], segment: str, path: str) -> list[_Node]:
    m = _FUNC.match(segment)
    if m:
        fn, arg = m.group("fn"), m.group("arg")
        if fn == "first":
            nodes = nodes[:1]
        elif fn == "last":
            nodes = nodes[-1:]
        elif fn == "where":
            nodes = [n for n in nodes if _holds(n, arg, path)]
        elif fn == "ofType":
            nodes = [n for n in nodes if n.cls is not None and n.cls.__name__ == arg.strip()]
        else:
            raise ValueError(f"function {fn}() is not supported in patch paths")
        return _index(nodes, m.group("idx"))
    m = _SEG.match(segment)
    if not m:
        raise ValueError(f"unsupported path segment '{segment}'")
    name = m.group("name")
    out: list[_Node] = []
    for n in nodes:
        v = n.value
        if not isinstance(v, dict):
            continue
        is_list, child = field_info(n.cls, name) if n.cls is not None else (False, None)
        key = name
        if name not in v and n.cls is not None:  # a choice element named without its type suffix
            for k in v:
                if k.startswith(name) and k[len(name):][:1].isupper():
                    key = k
                    is_list, child = field_info(n.cls, k)
                    break
        if key not in v:
            continue
        if isinstance(v[key], list):
            out += [_Node(v[key], i, child) for i in range(len(v[key]))]
        else:
            out.append(_Node(v, key, child))
    return _index(out, m.group("idx"))


def _index(nodes: list[_Node], idx: str) -> list[_Node]:
    for i in re.findall(r"\[(\d+)\]", idx or ""):
        nodes = nodes[int(i):int(i) + 1]
    return nodes


def _holds(node: _Node, condition: str, path: str) -> bool:
    for part in re.split(r"\s+and\s+", condition):
        if "=" not in part:
            raise ValueError(f"unsupported where() condition '{part}'")
        left, right = part.split("=", 1)
        want = _literal(right)
        found = _resolve_from([node], left.strip(), path)
        if not any(f.value == want for f in found):
            return False
    return True


def _resolve_from(nodes: list[_Node], expr: str, path: str) -> list[_Node]:
    for seg in _split(expr):
        if seg == "$this":
            continue
        nodes = _select(nodes, seg, path)
    return nodes


def _resolve(resource: dict[str, Any], path: str) -> list[_Node]:
    segs = _split(path)
    if not segs or segs[0] != resource.get("resourceType"):
        raise ValueError(f"the path must start with the resource type {resource.get('resourceType')}")
    root = _Node({"root": resource}, "root", models.model_class(resource["resourceType"]))
    nodes = [root]
    for seg in segs[1:]:
        nodes = _select(nodes, seg, path)
    return nodes


def _parts(op: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in op.get("part") or []:
        name = part.get("name")
        value = next((v for k, v in part.items() if k.startswith("value")), None)
        if value is None and "part" in part:
            raise Unprocessable("Anonymous (part-valued) patch values are not supported; give a value[x]",
                                expression=where)
        out[name] = value
    return out


def apply_fhirpatch(resource: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A patched copy of ``resource``; 400 for a malformed patch, 422 when it cannot apply."""
    result = copy.deepcopy(resource)
    ops = [p for p in patch.get("parameter") or [] if p.get("name") == "operation"]
    if not ops:
        raise BadRequest("A FHIRPath Patch needs at least one 'operation' parameter", expression="Parameters.parameter")
    for i, op in enumerate(ops):
        where = f"Parameters.parameter[{i}]"
        parts = _parts(op, where)
        kind, path = parts.get("type"), parts.get("path")
        if kind not in ("add", "insert", "delete", "replace", "move") or not isinstance(path, str):
            raise BadRequest("Each operation needs a type (add|insert|delete|replace|move) and a path",
                             expression=where)
        try:
            nodes = _resolve(result, path)
        except ValueError as exc:
            raise Unprocessable(f"Patch path '{path}': {exc}", expression=where) from exc
        _apply_one(kind, nodes, parts, path, where)
    return result


def _one(nodes: list[_Node], path: str, where: str) -> _Node:
    if len(nodes) != 1:
        raise Unprocessable(f"Patch path '{path}' matches {len(nodes)} elements (needs exactly one)", expression=where)
    return nodes[0]


def _apply_one(kind: str, nodes: list[_Node], parts: dict[str, Any], path: str, where: str) -> None:
    if kind == "replace":
        node = _one(nodes, path, where)
        if "value" not in parts:
            raise BadRequest("replace needs a value", expression=where)
        node.container[node.key] = parts["value"]
    elif kind == "delete":
        if not nodes:
            return
        node = _one(nodes, path, where)
        if isinstance(node.container, list):
            del node.container[node.key]
        else:
            del node.container[node.key]
    elif kind == "add":
        node = _one(nodes, path, where)
        name, value = parts.get("name"), parts.get("value")
        if not isinstance(name, str) or value is None:
            raise BadRequest("add needs a name and a value", expression=where)
        target = node.value
        if not isinstance(target, dict):
            raise Unprocessable(f"Patch path '{path}' is not an element that can have children", expression=where)
        is_list, _ = field_info(node.cls, name) if node.cls is not None else (isinstance(target.get(name), list), None)
        if is_list:
            target.setdefault(name, []).append(value)
        elif name in target:
            raise Unprocessable(f"'{name}' already has a value; use replace", expression=where)
        else:
            target[name] = value
    elif kind == "insert":
        _insert_or_move(nodes, parts, path, where, move=False)
    else:
        _insert_or_move(nodes, parts, path, where, move=True)


def _insert_or_move(nodes: list[_Node], parts: dict[str, Any], path: str, where: str, *, move: bool) -> None:
    if not nodes or not isinstance(nodes[0].container, list):
        raise Unprocessable(f"Patch path '{path}' is not a repeating element", expression=where)
    lst = nodes[0].container
    if move:
        src, dst = parts.get("source"), parts.get("destination")
        if not isinstance(src, int) or not isinstance(dst, int) or not (0 <= src < len(lst)) or not (
                0 <= dst < len(lst)):
            raise Unprocessable("move needs valid source and destination indexes", expression=where)
        lst.insert(dst, lst.pop(src))
        return
    idx, value = parts.get("index"), parts.get("value")
    if not isinstance(idx, int) or not (0 <= idx <= len(lst)) or value is None:
        raise Unprocessable("insert needs a value and an index within the list", expression=where)
    lst.insert(idx, value)
