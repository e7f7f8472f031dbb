"""Typed errors. Code anywhere raises these; only ``api/errors.py`` renders them.

Every error becomes an ``OperationOutcome`` whose issues carry severity, an
issue-type code (http://hl7.org/fhir/R4/valueset-issue-type.html) and, where
known, the FHIRPath ``expression`` of the faulty element.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Issue",
    "FhirError",
    "BadRequest",
    "InvalidResource",
    "NotFound",
    "Gone",
    "MethodNotAllowed",
    "NotAcceptable",
    "Conflict",
    "PreconditionFailed",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "Unprocessable",
    "Unauthorized",
    "Forbidden",
    "TooManyRequests",
    "NotImplementedFeature",
    "operation_outcome",
]


@dataclass(frozen=True)
class Issue:
    """One ``OperationOutcome.issue``."""

    diagnostics: str
    code: str = "invalid"
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code}
        if self.diagnostics:
            out["diagnostics"] = self.diagnostics
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


@dataclass
class FhirError(Exception):
    """Base of every error the server reports to a client."""

    message: str = ""
    expression: tuple[str, ...] | list[str] | str | None = None
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    status: int = field(default=500, init=False)
    code: str = field(default="exception", init=False)

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)
        if not self.issues:
            expr = self.expression
            if isinstance(expr, str):
                expr = (expr,)
            self.issues = [Issue(self.message, self.code, "error", tuple(expr or ()))]

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)

    def __str__(self) -> str:  # pragma: no cover - debugging aid
        return "; ".join(i.diagnostics for i in self.issues) or self.__class__.__name__


def _error(name: str, status: int, code: str, doc: str) -> type[FhirError]:
    cls = dataclass(type(name, (FhirError,), {"__doc__": doc}))

    def post_init(self: FhirError, _status: int = status, _code: str = code) -> None:
        self.status = _status
        self.code = _code
        FhirError.__post_init__(self)

    cls.__post_init__ = post_init  # type: ignore[attr-defined]
    return cls


BadRequest = _error("BadRequest", 400, "invalid", "Malformed request, syntax error (400).")
InvalidResource = _error("InvalidResource", 400, "structure", "Resource failed structural validation (400).")
Unauthorized = _error("Unauthorized", 401, "login", "No or invalid credentials (401).")
Forbidden = _error("Forbidden", 403, "forbidden", "Authenticated but not allowed (403).")
NotFound = _error("NotFound", 404, "not-found", "Unknown resource or type (404).")
MethodNotAllowed = _error("MethodNotAllowed", 405, "not-supported", "Interaction not allowed here (405).")
NotAcceptable = _error("NotAcceptable", 406, "not-supported", "No acceptable response format (406).")
Conflict = _error("Conflict", 409, "conflict", "Version or identity conflict (409).")
Gone = _error("Gone", 410, "deleted", "The resource was deleted (410).")
PreconditionFailed = _error("PreconditionFailed", 412, "conflict", "If-Match or conditional failure (412).")
PayloadTooLarge = _error("PayloadTooLarge", 413, "too-costly", "Body over the configured limit (413).")
UnsupportedMediaType = _error("UnsupportedMediaType", 415, "not-supported", "Unsupported body format (415).")
Unprocessable = _error("Unprocessable", 422, "processing", "Business rule violation (422).")
TooManyRequests = _error("TooManyRequests", 429, "throttled", "Rate limit exceeded (429).")
NotImplementedFeature = _error("NotImplementedFeature", 501, "not-supported", "Not implemented (501).")
