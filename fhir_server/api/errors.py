"""Every error becomes an OperationOutcome, in one place."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.http import JSON, dump, negotiate, pretty
from fhir_server.fhir.errors import FhirError, Issue, NotAcceptable, operation_outcome

__all__ = ["install_error_handlers", "outcome_response"]

log = logging.getLogger("fhir_server.errors")

_HTTP_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
               406: "not-supported", 409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly",
               415: "not-supported", 422: "processing", 429: "throttled"}


def outcome_response(request: Request, status: int, outcome: dict, headers: dict[str, str] | None = None) -> Response:
    try:
        fmt = negotiate(request)
    except NotAcceptable:
        fmt = JSON
    return Response(dump(outcome, fmt, pretty(request)), status_code=status, headers=headers,
                    media_type=f"{fmt}; charset=utf-8")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, exc: FhirError) -> Response:
        return outcome_response(request, exc.status, exc.outcome(), exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "exception")
        msg = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404:
            msg = f"No such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            msg = f"Method {request.method} is not allowed on {request.url.path}"
        return outcome_response(request, exc.status_code, operation_outcome([Issue(msg, code)]),
                                dict(exc.headers) if exc.headers else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        issues = [Issue(f"{e.get('msg')}", "invalid", "error", (".".join(str(x) for x in e.get("loc", ())),))
                  for e in exc.errors()]
        return outcome_response(request, 400, operation_outcome(issues))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        cid = str(uuid.uuid4())
        log.error("unexpected error %s on %s %s", cid, request.method, request.url.path, exc_info=exc)
        issue = Issue(f"Internal error; correlation id {cid}", "exception", "fatal")
        return outcome_response(request, 500, operation_outcome([issue]), {"X-Correlation-Id": cid})
