"""The access policy: one place that decides who may see and do what.

Every read and write path of ``rest/`` goes through :class:`fhir_server.access.guard.Guard`,
which asks the policy for a query filter (narrowing what a search, include,
history or bundle entry can ever see) and for a check on every resource it
returns or writes. A resource the caller may not see behaves exactly like a
missing one (404), so existence does not leak; a *type* the caller's scopes do not
cover answers 403 whether data exists or not.

:class:`SmartPolicy` decides from the token (:class:`~fhir_server.rest.context.Caller`):

* **who**: ``kind`` — ``patient`` (their own space), ``practitioner`` (spaces opened by
  :mod:`fhir_server.access.rules`), ``related`` (spaces given by the rules hook, none
  yet), ``system`` (backend services: every space, limited by scopes), ``admin`` (no
  patient data). Insurers, mutuals and occupational medicine (:data:`REFUSED_KINDS`)
  are always refused.
* **which spaces**: a ``patient/`` scope needs the patient in context; a ``user/``
  scope needs ``fhirUser``; without them the request is refused, never "filtered by
  type only".
* **what**: the SMART scopes (v1, v2, granular categories) for the resource type and
  the interaction's permission letter.

Space membership is the stored ``sp`` (owning patient); shared resources (``sp: null``)
are visible to users only for :data:`SHARED_TYPES`. A Binary is visible only through
a DocumentReference the caller may see (``Binary.securityContext`` or
``DocumentReference.content.attachment.url``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fhir_server.access.rules import NoProfessionalAccess, ProfessionalRules
from fhir_server.access.scopes import Category, ScopeRule, action_for, cached_rules
from fhir_server.fhir.errors import Forbidden, Unauthorized
from fhir_server.rest.context import Caller

__all__ = ["AccessPolicy", "OpenPolicy", "SmartPolicy", "Interaction", "REFUSED_KINDS", "SHARED_TYPES",
           "WRITES", "READS"]

Interaction = str
"""``read`` | ``vread`` | ``search`` | ``history`` | ``include`` (an ``_include``/``_revinclude``/chain
lookup: never 403, yields nothing outside the scopes) | ``create`` | ``update`` | ``patch`` |
``delete`` | ``operation``"""

WRITES = frozenset({"create", "update", "patch", "delete"})
READS = frozenset({"read", "vread", "search", "history", "include"})
REFUSED_KINDS = frozenset({"insurer", "mutual", "occupational"})
USER_KINDS = frozenset({"patient", "practitioner", "related", "admin"})

# Resources that belong to no patient space and that any authorised user may read.
SHARED_TYPES = frozenset({
    "Practitioner", "PractitionerRole", "Organization", "Location", "HealthcareService", "Endpoint",
    "Medication", "MedicationKnowledge", "Substance", "Device", "DeviceDefinition", "CodeSystem",
    "ValueSet", "ConceptMap", "NamingSystem", "StructureDefinition", "SearchParameter", "OperationDefinition",
    "CapabilityStatement", "Questionnaire", "PlanDefinition", "ActivityDefinition", "Library",
    "ObservationDefinition", "SpecimenDefinition", "Measure", "Group",
})
_WRITE_BY_PROFESSIONAL_ONLY = SHARED_TYPES


class AccessPolicy(Protocol):
    def require(self, caller: Caller, interaction: Interaction, type_: str) -> None:
        """Raise Forbidden/Unauthorized when the caller may never do ``interaction`` on ``type_``."""

    def filter(self, caller: Caller, interaction: Interaction, type_: str) -> dict[str, Any]:
        """A MongoDB filter on the stored shape (``sp``, ``res``…) added to every query of ``type_``."""

    def can_see(self, caller: Caller, interaction: Interaction, type_: str, doc: dict[str, Any]) -> bool:
        """Whether one stored document (``{_id, res, sp, …}``) may be returned to the caller."""

    def check_write(self, caller: Caller, interaction: Interaction, type_: str,
                    resource: dict[str, Any] | None, owner: str | None, previous_owner: str | None,
                    *, existed: bool = False) -> None:
        """Raise Forbidden when the caller may not write this resource (in its owning space).

        ``existed``: the write replaces a stored version whose owner was ``previous_owner``."""

    def prepare_write(self, caller: Caller, resource: dict[str, Any],
                      previous: dict[str, Any] | None) -> dict[str, Any]:
        """The resource as it will be stored: server-controlled ``meta`` elements the
        caller may not set (``security``, ``tag``) are replaced by the previous version's."""


class OpenPolicy:
    """No restriction: the development mode (``FHIR_SERVER_AUTH=off``)."""

    def require(self, caller: Caller, interaction: Interaction, type_: str) -> None:
        return None

    def filter(self, caller: Caller, interaction: Interaction, type_: str) -> dict[str, Any]:
        return {}

    def can_see(self, caller: Caller, interaction: Interaction, type_: str, doc: dict[str, Any]) -> bool:
        return True

    def check_write(self, caller: Caller, interaction: Interaction, type_: str,
                    resource: dict[str, Any] | None, owner: str | None, previous_owner: str | None,
                    *, existed: bool = False) -> None:
        return None

    def prepare_write(self, caller: Caller, resource: dict[str, Any],
                      previous: dict[str, Any] | None) -> dict[str, Any]:
        return resource


# ----------------------------------------------------------------------------- SMART
@dataclass(frozen=True)
class _Branch:
    """One way of seeing a type: a set of spaces (None: all) × categories (None: all)."""

    spaces: frozenset[str] | None
    shared: bool
    categories: frozenset[Category] | None
    ids: frozenset[str] | None = None

    def mongo(self) -> dict[str, Any]:
        clauses: list[dict[str, Any]] = []
        if self.spaces is not None:
            allowed: list[Any] = sorted(self.spaces)
            if self.shared:
                allowed.append(None)
            clauses.append({"sp": {"$in": allowed}})
        if self.ids is not None:
            clauses.append({"_id": {"$in": sorted(self.ids)}})
        if self.categories is not None:
            clauses.append({"$or": [_category_clause(c) for c in sorted(
                self.categories, key=lambda c: (c.system or "", c.code))]})
        if not clauses:
            return {}
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def admits(self, doc: dict[str, Any]) -> bool:
        if self.ids is not None and doc.get("_id") not in self.ids:
            return False
        if self.spaces is not None:
            sp = doc.get("sp")
            if sp is None:
                if not self.shared:
                    return False
            elif sp not in self.spaces:
                return False
        if self.categories is not None:
            res = doc.get("res") or {}
            codings = [c for cc in _as_list(res.get("category")) if isinstance(cc, dict)
                       for c in _as_list(cc.get("coding")) if isinstance(c, dict)]
            if not any(cat.matches(codings) for cat in self.categories):
                return False
        return True


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _category_clause(cat: Category) -> dict[str, Any]:
    match: dict[str, Any] = {"code": cat.code}
    if cat.system is not None:
        match["system"] = cat.system
    return {"res.category": {"$elemMatch": {"coding": {"$elemMatch": match}}}}


_NOTHING: dict[str, Any] = {"_id": {"$in": []}}


def _ref_id(ref: str | None, type_: str) -> str | None:
    if not ref or not isinstance(ref, str):
        return None
    parts = ref.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == type_:
        return parts[-1]
    return None


class SmartPolicy:
    """The SMART-scope policy with patient spaces (see the module docstring).

    ``rules`` answers for professionals (:mod:`fhir_server.access.rules`); ``find_owner_docs``
    returns the stored DocumentReferences pointing at a Binary (for Binary visibility).
    """

    def __init__(self, rules: ProfessionalRules | None = None,
                 find_owner_docs: Callable[[str], list[dict[str, Any]]] | None = None,
                 find_doc: Callable[[str, str], dict[str, Any] | None] | None = None) -> None:
        self.rules: ProfessionalRules = rules or NoProfessionalAccess()
        self.find_owner_docs = find_owner_docs or (lambda _id: [])
        self.find_doc = find_doc or (lambda _t, _id: None)

    # ----------------------------------------------------------- who and where
    @staticmethod
    def _levels(caller: Caller) -> frozenset[str]:
        if caller.kind == "system":
            return frozenset({"system"})
        if caller.kind in USER_KINDS:
            return frozenset({"patient", "user"})
        return frozenset()

    def own_spaces(self, caller: Caller) -> frozenset[str]:
        """The spaces a patient or related person holds (their own; parents' later)."""
        if caller.kind == "patient":
            own = _ref_id(caller.fhir_user, "Patient") or caller.claims.get("own_patient")
            return frozenset({own}) if own else frozenset()
        return frozenset()

    def _spaces(self, caller: Caller, level: str) -> frozenset[str] | None:
        """Spaces a grant of ``level`` opens (None: all spaces)."""
        if level == "system":
            return None
        if caller.kind in ("patient", "related"):
            own = self.own_spaces(caller)
            if level == "patient":
                return frozenset({caller.patient}) & own if caller.patient else frozenset()
            return own
        if caller.kind == "practitioner":
            prof = caller.fhir_user
            if not prof:
                return frozenset()
            if level == "patient":
                if caller.patient and self.rules.may_access(prof, caller.patient):
                    return frozenset({caller.patient})
                return frozenset()
            return self.rules.patients_of(prof)
        return frozenset()

    def _usable(self, caller: Caller, rule: ScopeRule) -> bool:
        if rule.level not in self._levels(caller):
            return False
        if rule.level == "patient" and not caller.patient:
            return False
        return not (rule.level == "user" and not caller.fhir_user)

    def _grants(self, caller: Caller, type_: str, letters: str) -> list[ScopeRule]:
        return [r for r in cached_rules(caller.scopes)
                if r.covers_type(type_) and any(ch in r.actions for ch in letters) and self._usable(caller, r)]

    @staticmethod
    def _letters(interaction: Interaction) -> str:
        if interaction == "include":
            return "rs"
        return action_for(interaction) or "r"

    def _self_read(self, caller: Caller, type_: str, interaction: Interaction) -> str | None:
        """The id of the caller's own fhirUser resource when the token may read it as such."""
        if interaction not in ("read", "vread", "include") or not caller.fhir_user:
            return None
        if "fhirUser" not in caller.scopes:
            return None
        return _ref_id(caller.fhir_user, type_)

    def _branches(self, caller: Caller, interaction: Interaction, type_: str) -> list[_Branch]:
        out: list[_Branch] = []
        for rule in self._grants(caller, type_, self._letters(interaction)):
            spaces = self._spaces(caller, rule.level)
            shared = type_ in SHARED_TYPES and caller.kind != "system"
            if spaces is not None and not spaces and not shared:
                continue
            out.append(_Branch(spaces, shared, rule.categories))
        own = self._self_read(caller, type_, interaction)
        if own:
            out.append(_Branch(None, True, None, frozenset({own})))
        return out

    # -------------------------------------------------------------- protocol
    def require(self, caller: Caller, interaction: Interaction, type_: str) -> None:
        if caller.kind == "anonymous":
            raise Unauthorized("Authentication required", headers={"WWW-Authenticate": 'Bearer realm="fhir"'})
        if caller.kind in REFUSED_KINDS or caller.kind not in USER_KINDS | {"system"}:
            raise Forbidden(f"Callers of category '{caller.kind}' have no access to health records")
        if type_ == "AuditEvent" and interaction in WRITES:
            raise Forbidden("AuditEvents are written by the server only and are immutable")
        if interaction in ("include", "operation"):
            return
        if self._self_read(caller, type_, interaction):
            return
        letters = self._letters(interaction)
        if self._grants(caller, type_, letters):
            return
        # scopes that cover the type but lack the context they need: say so
        raw = [r for r in cached_rules(caller.scopes) if r.covers_type(type_) and any(ch in r.actions for ch in letters)]
        if raw:
            raise Forbidden(f"The token lacks the patient or user context its scopes need for {type_}")
        raise Forbidden(f"The token's scopes do not permit {interaction} of {type_}")

    def filter(self, caller: Caller, interaction: Interaction, type_: str) -> dict[str, Any]:
        if caller.kind in REFUSED_KINDS or caller.kind == "anonymous":
            return dict(_NOTHING)
        if type_ == "Binary" and caller.kind != "system":
            return {}  # decided per document by can_see (through the owning DocumentReference)
        branches = self._branches(caller, interaction, type_)
        if not branches:
            return dict(_NOTHING)
        clauses = [b.mongo() for b in branches]
        if any(not c for c in clauses):
            return {}
        return clauses[0] if len(clauses) == 1 else {"$or": clauses}

    def can_see(self, caller: Caller, interaction: Interaction, type_: str, doc: dict[str, Any]) -> bool:
        if caller.kind in REFUSED_KINDS or caller.kind == "anonymous":
            return False
        if type_ == "Binary" and caller.kind != "system":
            return self._binary_visible(caller, interaction, doc)
        if not any(b.admits(doc) for b in self._branches(caller, interaction, type_)):
            return False
        if caller.kind == "practitioner" and doc.get("sp") is not None and caller.fhir_user:
            return self.rules.may_see(caller.fhir_user, doc)
        return True

    def filter_is_exact(self, caller: Caller, interaction: Interaction, type_: str) -> bool:
        """False when :meth:`can_see` is stricter than :meth:`filter` (counts must check documents)."""
        if type_ == "Binary" and caller.kind != "system":
            return False
        return caller.kind != "practitioner"

    def _binary_visible(self, caller: Caller, interaction: Interaction, doc: dict[str, Any]) -> bool:
        res = doc.get("res") or {}
        candidates: list[dict[str, Any]] = []
        sc = (res.get("securityContext") or {}).get("reference")
        dr_id = _ref_id(sc, "DocumentReference")
        if dr_id:
            found = self.find_doc("DocumentReference", dr_id)
            if found:
                candidates.append(found)
        candidates.extend(self.find_owner_docs(str(doc.get("_id"))))
        read = "read" if interaction != "search" else "search"
        return any(not d.get("del") and self.can_see(caller, read, "DocumentReference", d) for d in candidates)

    def check_write(self, caller: Caller, interaction: Interaction, type_: str,
                    resource: dict[str, Any] | None, owner: str | None, previous_owner: str | None,
                    *, existed: bool = False) -> None:
        if existed and owner != previous_owner:
            raise Forbidden(f"An update cannot move {type_} to another patient space")
        grants = self._grants(caller, type_, action_for(interaction) or "u")
        if not grants:
            raise Forbidden(f"The token's scopes do not permit {interaction} of {type_}")
        doc = {"_id": (resource or {}).get("id"), "res": resource or {}, "sp": owner}
        if type_ == "Binary" and caller.kind != "system":
            self._check_binary_write(caller, resource or {})
            return
        for rule in grants:
            spaces = self._spaces(caller, rule.level)
            shared_ok = owner is None and type_ in _WRITE_BY_PROFESSIONAL_ONLY and caller.kind == "practitioner"
            branch = _Branch(spaces, shared_ok, rule.categories)
            if resource is None:  # delete: the category is the stored one, checked on read
                branch = _Branch(spaces, shared_ok, None)
            if branch.admits(doc):
                return
        if owner is None:
            raise Forbidden(f"{type_} outside a patient space cannot be written with this token")
        raise Forbidden(f"The token may not write {type_} in the space of Patient/{owner}")

    def _check_binary_write(self, caller: Caller, resource: dict[str, Any]) -> None:
        sc = (resource.get("securityContext") or {}).get("reference")
        patient = _ref_id(sc, "Patient")
        if patient:
            for rule in self._grants(caller, "Binary", "cu"):
                spaces = self._spaces(caller, rule.level)
                if spaces is None or patient in spaces:
                    return
        dr_id = _ref_id(sc, "DocumentReference")
        if dr_id:
            found = self.find_doc("DocumentReference", dr_id)
            if found and self.can_see(caller, "read", "DocumentReference", found):
                return
        raise Forbidden("A Binary must carry a securityContext (Patient or DocumentReference) the token "
                        "may write to")

    def prepare_write(self, caller: Caller, resource: dict[str, Any],
                      previous: dict[str, Any] | None) -> dict[str, Any]:
        if caller.claims.get("may_label"):
            return resource
        meta = dict(resource.get("meta") or {})
        prev_meta = (previous or {}).get("meta") or {}
        for key in ("security", "tag"):
            if key in prev_meta:
                meta[key] = prev_meta[key]
            else:
                meta.pop(key, None)
        out = dict(resource)
        if meta:
            out["meta"] = meta
        else:
            out.pop("meta", None)
        return out
