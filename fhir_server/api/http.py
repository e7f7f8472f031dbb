"""HTTP details of FHIR: content negotiation, body parsing, rendering, ETags, Prefer.

https://hl7.org/fhir/R4/http.html#mime-type, #version-aware-updates, #ops (Prefer).
"""

from __future__ import annotations

from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.fhir.errors import BadRequest, NotAcceptable, UnsupportedMediaType
from fhir_server.fhir.validate import parse_json, parse_xml, to_xml
from fhir_server.rest.service import Result
from fhir_server.store.repository import Stored

__all__ = [
    "JSON", "XML", "negotiate", "read_resource", "render", "render_result", "parse_etag", "resource_headers",
    "prefer", "pretty", "http_date", "parse_http_date",
]

JSON = "application/fhir+json"
XML = "application/fhir+xml"
_JSON_TYPES = {"application/fhir+json", "application/json", "json", "application/json+fhir", "text/json"}
_XML_TYPES = {"application/fhir+xml", "application/xml", "xml", "text/xml", "application/xml+fhir"}


def _mime(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def negotiate(request: Request) -> str:
    """The response format: ``_format`` wins over ``Accept``; ``*/*`` or nothing means JSON."""
    fmt = request.query_params.get("_format")
    if fmt:
        m = _mime(fmt)
        if m in _JSON_TYPES:
            return JSON
        if m in _XML_TYPES:
            return XML
        raise NotAcceptable(f"Unsupported _format '{fmt}'", expression="_format")
    accept = request.headers.get("accept")
    if not accept:
        return JSON
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in pieces[1:]:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if q > 0:
            ranked.append((-q, i, pieces[0].lower()))
    for _, _, m in sorted(ranked):
        if m in _JSON_TYPES or m in ("*/*", "application/*"):
            return JSON
        if m in _XML_TYPES:
            return XML
        if m == "text/*":
            return XML
    raise NotAcceptable(f"None of the accepted types ({accept}) can be produced; use {JSON} or {XML}",
                        expression="Accept")


def body_format(request: Request) -> str:
    ctype = request.headers.get("content-type")
    if not ctype:
        raise UnsupportedMediaType("Content-Type is required", expression="Content-Type")
    m = _mime(ctype)
    if m in _JSON_TYPES:
        return JSON
    if m in _XML_TYPES:
        return XML
    raise UnsupportedMediaType(f"Unsupported Content-Type '{ctype}'; use {JSON} or {XML}", expression="Content-Type")


async def read_resource(request: Request) -> dict[str, Any]:
    fmt = body_format(request)
    body = await request.body()
    if not body.strip():
        raise BadRequest("The request body is empty", expression="Resource")
    return parse_json(body) if fmt == JSON else parse_xml(body)


def pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "").lower() == "true"


def dump(body: dict[str, Any], fmt: str, is_pretty: bool = False) -> bytes:
    if fmt == XML:
        return to_xml(body, pretty=is_pretty)
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 if is_pretty else 0)


def render(request: Request, body: dict[str, Any] | None, status: int = 200,
           headers: dict[str, str] | None = None, fmt: str | None = None) -> Response:
    fmt = fmt or negotiate(request)
    if body is None:
        return Response(status_code=status, headers=headers)
    return Response(dump(body, fmt, pretty(request)), status_code=status, headers=headers,
                    media_type=f"{fmt}; charset=utf-8")


def http_date(ts: Any) -> str:
    return format_datetime(ts, usegmt=True)


def parse_http_date(value: str) -> Any:
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def resource_headers(stored: Stored, base_url: str, *, location: bool = False) -> dict[str, str]:
    h = {"ETag": f'W/"{stored.version}"', "Last-Modified": http_date(stored.last_updated)}
    if location:
        h["Location"] = f"{base_url}/{stored.type}/{stored.id}/_history/{stored.version}"
        h["Content-Location"] = h["Location"]
    return h


def parse_etag(value: str | None, header: str = "If-Match") -> int | None:
    """``W/"3"`` → 3."""
    if value is None:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    if not v.isdigit():
        raise BadRequest(f"Malformed {header} header '{value}' (expected W/\"<version>\")", expression=header)
    return int(v)


def prefer(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in request.headers.get("prefer", "").split(";"):
        for item in part.split(","):
            if "=" in item:
                k, v = item.split("=", 1)
                out[k.strip().lower()] = v.strip().strip('"').lower()
    return out


def render_result(request: Request, result: Result, base_url: str, full: dict[str, Any] | None) -> Response:
    """Render a write result honouring ``Prefer: return=…``."""
    headers: dict[str, str] = {}
    if result.stored is not None:
        headers = resource_headers(result.stored, base_url, location=result.status in (200, 201))
    if result.status == 204:
        return Response(status_code=204, headers=headers)
    ret = prefer(request).get("return", "representation")
    if ret == "minimal":
        return Response(status_code=result.status, headers=headers)
    if ret == "operationoutcome":
        issues = [i.to_fhir() for i in result.issues] or [{
            "severity": "information", "code": "informational",
            "diagnostics": f"{result.stored.type}/{result.stored.id} version {result.stored.version}"
            if result.stored else "done"}]
        return render(request, {"resourceType": "OperationOutcome", "issue": issues}, result.status, headers)
    return render(request, full if full is not None else result.body, result.status, headers)
