"""SMART on FHIR scopes, v1 and v2 (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

A resource scope is ``<level>/<type>.<permissions>[?<query>]``:

* level: ``patient``, ``user`` or ``system``;
* type: a FHIR resource type or ``*``;
* permissions: v1 ``read`` / ``write`` / ``*``, or v2 letters ``c r u d s`` in that order;
* query (v2 granular scopes): ``category=<system>|<code>`` (the only parameter this server
  honours; any other parameter is refused rather than ignored, so a scope never grants more
  than it says).

Everything else a client may ask is a context scope (``launch``, ``launch/patient``,
``openid``, ``fhirUser``, ``offline_access``…). Unknown scopes, types or permissions raise
:class:`InvalidScope`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from urllib.parse import parse_qsl, quote

__all__ = [
    "ACTION_LETTERS",
    "CONTEXT_SCOPES",
    "Category",
    "InvalidScope",
    "ScopeRule",
    "ParsedScopes",
    "parse_scope",
    "parse_scopes",
    "intersect",
    "action_for",
]

ACTION_LETTERS = "cruds"
CONTEXT_SCOPES = frozenset({
    "launch", "launch/patient", "launch/encounter", "openid", "fhirUser", "profile",
    "offline_access", "online_access",
})
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_LEVELS = ("patient", "user", "system")

# interaction -> the permission letter it needs
_ACTIONS = {
    "read": "r", "vread": "r", "history": "r", "search": "s", "create": "c", "update": "u", "patch": "u",
    "delete": "d",
}


class InvalidScope(ValueError):
    """A scope this server does not understand (``invalid_scope``)."""


@dataclass(frozen=True, slots=True)
class Category:
    system: str | None
    code: str

    def render(self) -> str:
        return f"{self.system}|{self.code}" if self.system is not None else self.code

    def matches(self, codings: Iterable[dict[str, object]]) -> bool:
        for c in codings:
            if c.get("code") == self.code and (self.system is None or c.get("system") == self.system):
                return True
        return False


@dataclass(frozen=True, slots=True)
class ScopeRule:
    """One resource scope. ``categories`` None: every category."""

    level: str
    type: str
    actions: frozenset[str]
    categories: frozenset[Category] | None = None
    text: str = ""

    def covers_type(self, type_: str) -> bool:
        return self.type == "*" or self.type == type_

    def render(self) -> str:
        letters = "".join(a for a in ACTION_LETTERS if a in self.actions)
        out = f"{self.level}/{self.type}.{letters}"
        if self.categories:
            out += "?" + "&".join(f"category={quote(c.render(), safe='|:/')}"
                                  for c in sorted(self.categories, key=lambda c: (c.system or "", c.code)))
        return out

    def within(self, other: ScopeRule) -> bool:
        """Whether everything this rule grants is granted by ``other``."""
        if other.level != self.level or (other.type != "*" and other.type != self.type):
            return False
        if not self.actions <= other.actions:
            return False
        if other.categories is None:
            return True
        return self.categories is not None and self.categories <= other.categories


def _parse_permissions(perm: str, scope: str) -> frozenset[str]:
    if perm in _V1:
        return frozenset(_V1[perm])
    if not perm:
        raise InvalidScope(f"scope '{scope}' has no permissions")
    pos = -1
    for ch in perm:
        idx = ACTION_LETTERS.find(ch)
        if idx < 0 or idx <= pos:
            raise InvalidScope(f"scope '{scope}': permissions must be letters of 'cruds' in that order")
        pos = idx
    return frozenset(perm)


def parse_scope(scope: str, is_type: Callable[[str], bool]) -> ScopeRule | str:
    """A :class:`ScopeRule`, or the scope itself for a known context scope."""
    if scope in CONTEXT_SCOPES:
        return scope
    level, sep, rest = scope.partition("/")
    if not sep or level not in _LEVELS:
        raise InvalidScope(f"unknown scope '{scope}'")
    body, qsep, query = rest.partition("?")
    type_, dot, perm = body.partition(".")
    if not dot:
        raise InvalidScope(f"scope '{scope}' has no permissions")
    if type_ != "*" and not is_type(type_):
        raise InvalidScope(f"scope '{scope}': unknown resource type '{type_}'")
    actions = _parse_permissions(perm, scope)
    categories: frozenset[Category] | None = None
    if qsep:
        if perm in _V1:
            raise InvalidScope(f"scope '{scope}': parameters need v2 permissions")
        cats: set[Category] = set()
        pairs = parse_qsl(query, keep_blank_values=True)
        if not pairs:
            raise InvalidScope(f"scope '{scope}': empty query")
        for name, value in pairs:
            if name != "category" or not value:
                raise InvalidScope(f"scope '{scope}': only 'category=<system>|<code>' is supported")
            for one in value.split(","):
                system, bar, code = one.rpartition("|")
                if not code:
                    raise InvalidScope(f"scope '{scope}': empty category code")
                cats.add(Category(system if bar else None, code))
        categories = frozenset(cats)
    return ScopeRule(level, type_, actions, categories, scope)


@dataclass(frozen=True)
class ParsedScopes:
    rules: tuple[ScopeRule, ...]
    context: frozenset[str]

    def texts(self) -> list[str]:
        return [*sorted(self.context), *(r.text or r.render() for r in self.rules)]

    def render(self) -> str:
        return " ".join(self.texts())


def parse_scopes(scope: str | Iterable[str], is_type: Callable[[str], bool]) -> ParsedScopes:
    items = scope.split() if isinstance(scope, str) else list(scope)
    rules: list[ScopeRule] = []
    context: set[str] = set()
    for item in items:
        parsed = parse_scope(item, is_type)
        if isinstance(parsed, str):
            context.add(parsed)
        elif parsed not in rules:
            rules.append(parsed)
    return ParsedScopes(tuple(rules), frozenset(context))


def _narrow(req: ScopeRule, allowed: ScopeRule) -> ScopeRule | None:
    """The part of ``req`` that ``allowed`` grants, or None."""
    if req.level != allowed.level:
        return None
    if allowed.type != "*" and req.type not in (allowed.type, "*"):
        return None
    type_ = allowed.type if req.type == "*" else req.type
    actions = req.actions & allowed.actions
    if not actions:
        return None
    if allowed.categories is None:
        cats = req.categories
    elif req.categories is None:
        cats = allowed.categories
    else:
        cats = req.categories & allowed.categories
        if not cats:
            return None
    out = ScopeRule(req.level, type_, actions, cats)
    if out == replace(req, text=""):
        return req
    return replace(out, text=out.render())


def intersect(requested: ParsedScopes, *limits: ParsedScopes) -> ParsedScopes:
    """Requested ∩ each limit (client-allowed, user-approved…); context scopes by name."""
    rules = list(requested.rules)
    context = set(requested.context)
    for limit in limits:
        narrowed: list[ScopeRule] = []
        for r in rules:
            for a in limit.rules:
                n = _narrow(r, a)
                if n is not None and n not in narrowed:
                    narrowed.append(n)
        # drop rules implied by another kept rule
        rules = [r for r in narrowed if not any(o is not r and r.within(o) and not o.within(r) for o in narrowed)]
        context &= set(limit.context)
    return ParsedScopes(tuple(rules), frozenset(context))


def action_for(interaction: str) -> str | None:
    """The permission letter an interaction needs (None: not a resource interaction)."""
    return _ACTIONS.get(interaction)


@lru_cache(maxsize=4096)
def cached_rules(scopes: frozenset[str]) -> tuple[ScopeRule, ...]:
    """Rules of a token's (already validated) scopes; unknown items are ignored here."""
    from fhir_server.fhir import models

    out: list[ScopeRule] = []
    for s in scopes:
        try:
            parsed = parse_scope(s, models.is_resource_type)
        except InvalidScope:
            continue
        if isinstance(parsed, ScopeRule):
            out.append(parsed)
    return tuple(out)
