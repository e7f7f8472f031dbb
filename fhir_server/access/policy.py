"""The access policy: one place that decides who may see and do what.

Every read and write path of ``rest/`` goes through :class:`fhir_server.access.guard.Guard`,
which asks the policy for a query filter (narrowing what a search, include,
history or bundle entry can ever see) and for a check on every resource it
returns or writes. A resource the caller may not see behaves exactly like a
missing one (404), so existence does not leak.
"""

from __future__ import annotations

from typing import Any, Protocol

from fhir_server.rest.context import Caller

__all__ = ["AccessPolicy", "OpenPolicy", "Interaction"]

Interaction = str  # "read" | "vread" | "search" | "history" | "create" | "update" | "patch" | "delete" | "operation"


class AccessPolicy(Protocol):
    def require(self, caller: Caller, interaction: Interaction, type_: str) -> None:
        """Raise Forbidden/Unauthorized when the caller may never do ``interaction`` on ``type_``."""

    def filter(self, caller: Caller, interaction: Interaction, type_: str) -> dict[str, Any]:
        """A MongoDB filter on the stored shape (``sp``, ``ix``…) added to every query of ``type_``."""

    def can_see(self, caller: Caller, interaction: Interaction, type_: str, doc: dict[str, Any]) -> bool:
        """Whether one stored document (``{res, sp, …}``) may be returned to the caller."""

    def check_write(self, caller: Caller, interaction: Interaction, type_: str,
                    resource: dict[str, Any] | None, owner: str | None, previous_owner: str | None) -> None:
        """Raise Forbidden when the caller may not write this resource (in its owning space)."""


class OpenPolicy:
    """No restriction: the development mode (``FHIR_SERVER_AUTH=off``)."""

    def require(self, caller: Caller, interaction: Interaction, type_: str) -> None:
        return None

    def filter(self, caller: Caller, interaction: Interaction, type_: str) -> dict[str, Any]:
        return {}

    def can_see(self, caller: Caller, interaction: Interaction, type_: str, doc: dict[str, Any]) -> bool:
        return True

    def check_write(self, caller: Caller, interaction: Interaction, type_: str,
                    resource: dict[str, Any] | None, owner: str | None, previous_owner: str | None) -> None:
        return None
