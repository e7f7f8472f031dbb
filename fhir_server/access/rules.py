"""Which professionals may reach which patient spaces: the hook for the patient's own rules.

The access policy asks a :class:`ProfessionalRules` three questions about a professional
(``Practitioner/…`` or ``PractitionerRole/…``, the token's ``fhirUser``):

* :meth:`~ProfessionalRules.may_access` — may they open this patient's space at all?
* :meth:`~ProfessionalRules.patients_of` — which spaces may they search across?
* :meth:`~ProfessionalRules.may_see` — may they see this one stored resource?
  (hidden documents, masked confidentiality levels…)

Today :class:`ConsentRelationship` implements "a professional with a valid relationship":
an active ``Consent`` in the patient's space that *permits* the professional as a
``provision.actor`` within its ``provision.period``. The patient-controlled rules of the
next issues (treating physician, authorised and blocked professionals, hidden
documents) plug in by wrapping or replacing this object::

    class BlockedProfessionals:
        def __init__(self, inner: ProfessionalRules, repo: Repository) -> None: ...
        def may_access(self, professional, patient):
            return not self._blocked(professional, patient) and self.inner.may_access(professional, patient)
        ...

    services.policy.rules = BlockedProfessionals(services.policy.rules, services.repo)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from fhir_server.store.repository import Repository

__all__ = ["ProfessionalRules", "ConsentRelationship", "NoProfessionalAccess"]


class ProfessionalRules(Protocol):
    def may_access(self, professional: str, patient: str) -> bool:
        """Whether the professional may open the patient's space."""

    def patients_of(self, professional: str) -> frozenset[str]:
        """Every patient space the professional may open (for searches across patients)."""

    def may_see(self, professional: str, doc: dict[str, Any]) -> bool:
        """Whether one stored resource ``{_id, res, sp, …}`` of an open space may be shown."""


class NoProfessionalAccess:
    """Professionals reach no patient space (the safe default)."""

    def may_access(self, professional: str, patient: str) -> bool:
        return False

    def patients_of(self, professional: str) -> frozenset[str]:
        return frozenset()

    def may_see(self, professional: str, doc: dict[str, Any]) -> bool:
        return False


def _active_now(consent: dict[str, Any], now: datetime) -> bool:
    prov = consent.get("provision") or {}
    if prov.get("type", "permit") != "permit":
        return False
    period = prov.get("period") or {}
    start, end = period.get("start"), period.get("end")
    stamp = now.isoformat()
    return not ((start and str(start) > stamp) or (end and str(end) < stamp[: len(str(end))]))


class ConsentRelationship:
    """A valid relationship is an active, permitting Consent naming the professional as actor."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def _consents(self, professional: str, patient: str | None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"del": False, "res.status": "active",
                                 "res.provision.actor.reference.reference": professional}
        if patient is not None:
            query["sp"] = patient
        return list(self.repo.find_raw("Consent", query, projection={"res": 1, "sp": 1}, limit=1000))

    def may_access(self, professional: str, patient: str) -> bool:
        now = datetime.now(UTC)
        return any(_active_now(d["res"], now) for d in self._consents(professional, patient))

    def patients_of(self, professional: str) -> frozenset[str]:
        now = datetime.now(UTC)
        return frozenset(d["sp"] for d in self._consents(professional, None)
                         if d.get("sp") and _active_now(d["res"], now))

    def may_see(self, professional: str, doc: dict[str, Any]) -> bool:
        return True
