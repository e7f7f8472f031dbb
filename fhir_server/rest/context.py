"""What an interaction knows about the request, without any HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Caller", "RequestContext"]


@dataclass(frozen=True)
class Caller:
    """Who is asking. ``kind``: anonymous (auth off), patient, practitioner, system, admin."""

    kind: str = "anonymous"
    subject: str | None = None  # user or client id
    client_id: str | None = None
    fhir_user: str | None = None  # e.g. "Patient/123"
    patient: str | None = None  # patient in context (launch or own space)
    scopes: frozenset[str] = frozenset()
    token_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestContext:
    base_url: str
    caller: Caller = field(default_factory=Caller)
    lenient: bool = False  # Prefer: handling=lenient
    correlation_id: str | None = None
    remote_addr: str | None = None
