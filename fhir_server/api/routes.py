"""Thin routes: HTTP → one interaction call → rendered response."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from fhir_server.api.http import (
    JSON,
    negotiate,
    parse_etag,
    parse_http_date,
    prefer,
    read_resource,
    render,
    render_result,
    resource_headers,
)
from fhir_server.fhir.errors import BadRequest, MethodNotAllowed, UnsupportedMediaType
from fhir_server.rest.context import RequestContext
from fhir_server.rest.operations import OperationCall, OperationResult

__all__ = ["router"]

router = APIRouter()

_FHIR_MIMES = ("fhir+json", "fhir+xml", "application/json", "application/xml", "text/xml", "json", "xml")


def services(request: Request) -> Any:
    return request.app.state.services


def context(request: Request) -> RequestContext:
    """The request context: base URL, caller (set by the auth dependency), lenient handling."""
    svc = services(request)
    caller = svc.authenticate(request)
    return RequestContext(base_url=svc.settings.fhir_base, caller=caller,
                          lenient=prefer(request).get("handling") == "lenient",
                          correlation_id=request.headers.get("x-request-id"),
                          remote_addr=request.client.host if request.client else None)


def query_params(request: Request) -> list[tuple[str, str]]:
    return parse_qsl(request.url.query, keep_blank_values=True)


def _wants_raw_binary(request: Request) -> bool:
    if request.query_params.get("_format"):
        return False
    accept = request.headers.get("accept", "")
    return not any(m in accept for m in _FHIR_MIMES)


# ----------------------------------------------------------------- metadata
@router.get("/metadata")
async def metadata(request: Request) -> Response:
    fmt = negotiate(request)
    return render(request, services(request).capability_statement(request.query_params.get("mode")), fmt=fmt)


# ---------------------------------------------------------------- system level
@router.get("/_history")
async def history_system(request: Request) -> Response:
    fmt = negotiate(request)
    ctx = context(request)
    body = await run_in_threadpool(services(request).fhir.history, ctx, query_params(request))
    return render(request, body, fmt=fmt)


@router.post("/")
async def system_bundle(request: Request) -> Response:
    fmt = negotiate(request)
    ctx = context(request)
    bundle = await read_resource(request)
    svc = services(request)
    representation = prefer(request).get("return") == "representation"
    status, body = await run_in_threadpool(lambda: svc.bundles.process(ctx, bundle, representation=representation))
    return render(request, body, status, fmt=fmt)


@router.get("/")
async def system_search(request: Request) -> Response:
    fmt = negotiate(request)
    ctx = context(request)
    body = await run_in_threadpool(services(request).fhir.search, ctx, None, query_params(request))
    return render(request, body, fmt=fmt)


# -------------------------------------------------------------- operations
async def _operation(request: Request, name: str, type_: str | None, id_: str | None) -> Response:
    svc = services(request)
    level = "instance" if id_ else ("type" if type_ else "system")
    op = svc.operations.resolve(name, level, type_, request.method)
    ctx = context(request)
    body = await request.body()
    call = OperationCall(ctx, name, type_, id_, request.method, query_params(request), body,
                         request.headers.get("content-type"), svc)
    result: OperationResult = await run_in_threadpool(op.handler, call)
    if result.raw is not None:
        return Response(result.raw, status_code=result.status, media_type=result.media_type, headers=result.headers)
    return render(request, result.body, result.status, result.headers)


@router.api_route("/${name}", methods=["GET", "POST"])
async def op_system(request: Request, name: str) -> Response:
    return await _operation(request, name, None, None)


@router.api_route("/{type_}/${name}", methods=["GET", "POST"])
async def op_type(request: Request, type_: str, name: str) -> Response:
    services(request).fhir.check_type(type_)
    return await _operation(request, name, type_, None)


@router.api_route("/{type_}/{id_}/${name}", methods=["GET", "POST"])
async def op_instance(request: Request, type_: str, id_: str, name: str) -> Response:
    services(request).fhir.check_type(type_)
    return await _operation(request, name, type_, id_)


# ---------------------------------------------------------------- type level
@router.get("/{type_}/_history")
async def history_type(request: Request, type_: str) -> Response:
    fmt = negotiate(request)
    ctx = context(request)
    body = await run_in_threadpool(services(request).fhir.history, ctx, query_params(request), type_=type_)
    return render(request, body, fmt=fmt)


@router.get("/{type_}")
async def search_type(request: Request, type_: str) -> Response:
    fmt = negotiate(request)
    ctx = context(request)
    body = await run_in_threadpool(services(request).fhir.search, ctx, type_, query_params(request))
    return render(request, body, fmt=fmt)


@router.post("/{type_}/_search")
async def search_post(request: Request, type_: str) -> Response:
    fmt = negotiate(request)
    ctx = context(request)
    ctype = request.headers.get("content-type", "")
    if ctype and not ctype.startswith("application/x-www-form-urlencoded"):
        raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded", expression="Content-Type")
    form = parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    params = query_params(request) + form
    body = await run_in_threadpool(services(request).fhir.search, ctx, type_, params)
    return render(request, body, fmt=fmt)


@router.post("/{type_}")
async def create(request: Request, type_: str) -> Response:
    negotiate(request)
    ctx = context(request)
    svc = services(request)
    svc.fhir.check_type(type_)
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if type_ == "Binary" and ctype and not any(m in ctype for m in _FHIR_MIMES):
        raw = await request.body()
        resource: dict[str, Any] = {"resourceType": "Binary", "contentType": ctype,
                                    "data": base64.b64encode(raw).decode()}
        sec = request.headers.get("x-security-context")
        if sec:
            resource["securityContext"] = {"reference": sec}
    else:
        resource = await read_resource(request)
    result = await run_in_threadpool(svc.fhir.create, ctx, type_, resource,
                                     if_none_exist=request.headers.get("if-none-exist"))
    return render_result(request, result, ctx.base_url, _full(svc, result))


def _full(svc: Any, result: Any) -> dict[str, Any] | None:
    return svc.fhir.full_resource(result.stored) if result.stored and result.stored.resource else result.body


@router.put("/{type_}")
async def conditional_update(request: Request, type_: str) -> Response:
    negotiate(request)
    ctx = context(request)
    svc = services(request)
    if not request.url.query:
        raise MethodNotAllowed("PUT on a type needs a search (conditional update) or an id", expression=type_)
    resource = await read_resource(request)
    result = await run_in_threadpool(svc.fhir.conditional_update, ctx, type_, _condition(request), resource,
                                     if_match=parse_etag(request.headers.get("if-match")))
    return render_result(request, result, ctx.base_url, _full(svc, result))


def _condition(request: Request) -> str:
    pairs = [(k, v) for k, v in query_params(request) if k not in ("_format", "_pretty")]
    if not pairs:
        raise BadRequest("A conditional interaction needs search parameters", expression="url")
    from urllib.parse import urlencode

    return urlencode(pairs)


@router.delete("/{type_}")
async def conditional_delete(request: Request, type_: str) -> Response:
    ctx = context(request)
    svc = services(request)
    if not request.url.query:
        raise MethodNotAllowed("DELETE on a type needs a search (conditional delete)", expression=type_)
    result = await run_in_threadpool(svc.fhir.conditional_delete, ctx, type_, _condition(request))
    return render_result(request, result, ctx.base_url, None)


@router.patch("/{type_}")
async def conditional_patch(request: Request, type_: str) -> Response:
    negotiate(request)
    ctx = context(request)
    svc = services(request)
    ops = await _patch_body(request)
    result = await run_in_threadpool(svc.fhir.conditional_patch, ctx, type_, _condition(request), ops,
                                     if_match=parse_etag(request.headers.get("if-match")))
    return render_result(request, result, ctx.base_url, _full(svc, result))


# ------------------------------------------------------------ instance level
@router.get("/{type_}/{id_}")
async def read(request: Request, type_: str, id_: str) -> Response:
    svc = services(request)
    raw_binary = type_ == "Binary" and _wants_raw_binary(request)
    fmt = JSON if raw_binary else negotiate(request)
    ctx = context(request)
    stored = await run_in_threadpool(svc.fhir.read, ctx, type_, id_)
    headers = resource_headers(stored, ctx.base_url)
    inm = request.headers.get("if-none-match")
    if inm and inm.strip() in (headers["ETag"], f'"{stored.version}"', "*"):
        return Response(status_code=304, headers=headers)
    ims = parse_http_date(request.headers.get("if-modified-since", ""))
    if ims is not None and stored.last_updated.replace(microsecond=0) <= ims:
        return Response(status_code=304, headers=headers)
    if raw_binary:
        res = stored.resource or {}
        chunks, size = await run_in_threadpool(svc.fhir.binary_stream, stored)
        headers["Content-Length"] = str(size)
        return StreamingResponse(chunks, media_type=res.get("contentType", "application/octet-stream"),
                                 headers=headers)
    full = await run_in_threadpool(svc.fhir.full_resource, stored)
    return render(request, full, 200, headers, fmt=fmt)


@router.put("/{type_}/{id_}")
async def update(request: Request, type_: str, id_: str) -> Response:
    negotiate(request)
    ctx = context(request)
    svc = services(request)
    svc.fhir.check_type(type_)
    resource = await read_resource(request)
    result = await run_in_threadpool(svc.fhir.update, ctx, type_, id_, resource,
                                     if_match=parse_etag(request.headers.get("if-match")))
    return render_result(request, result, ctx.base_url, _full(svc, result))


async def _patch_body(request: Request) -> Any:
    """A JSON Patch (application/json-patch+json) or a FHIRPath Patch Parameters (FHIR JSON/XML)."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype in ("application/fhir+json", "application/fhir+xml", "application/json", "application/xml"):
        body = await read_resource(request)
        if body.get("resourceType") != "Parameters":
            raise BadRequest("A FHIRPath Patch body is a Parameters resource", expression="resourceType")
        return body
    if ctype != "application/json-patch+json":
        raise UnsupportedMediaType(
            f"PATCH takes application/json-patch+json or a FHIRPath Patch in FHIR JSON/XML, not '{ctype or 'nothing'}'",
            expression="Content-Type")
    body = await request.body()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON Patch: {exc}", expression="Patch") from exc


@router.patch("/{type_}/{id_}")
async def patch(request: Request, type_: str, id_: str) -> Response:
    negotiate(request)
    ctx = context(request)
    svc = services(request)
    ops = await _patch_body(request)
    result = await run_in_threadpool(svc.fhir.patch, ctx, type_, id_, ops,
                                     if_match=parse_etag(request.headers.get("if-match")))
    return render_result(request, result, ctx.base_url, _full(svc, result))


@router.delete("/{type_}/{id_}")
async def delete(request: Request, type_: str, id_: str) -> Response:
    ctx = context(request)
    svc = services(request)
    result = await run_in_threadpool(svc.fhir.delete, ctx, type_, id_,
                                     if_match=parse_etag(request.headers.get("if-match")))
    if prefer(request).get("return") == "operationoutcome":
        result.status = 200
        return render_result(request, result, ctx.base_url, None)
    return Response(status_code=204, headers={"ETag": f'W/"{result.stored.version}"'} if result.stored else None)


@router.get("/{type_}/{id_}/_history")
async def history_instance(request: Request, type_: str, id_: str) -> Response:
    fmt = negotiate(request)
    ctx = context(request)
    body = await run_in_threadpool(services(request).fhir.history, ctx, query_params(request), type_=type_, id_=id_)
    return render(request, body, fmt=fmt)


@router.get("/{type_}/{id_}/_history/{vid}")
async def vread(request: Request, type_: str, id_: str, vid: str) -> Response:
    svc = services(request)
    raw_binary = type_ == "Binary" and _wants_raw_binary(request)
    fmt = JSON if raw_binary else negotiate(request)
    ctx = context(request)
    stored = await run_in_threadpool(svc.fhir.vread, ctx, type_, id_, vid)
    headers = resource_headers(stored, ctx.base_url)
    if raw_binary:
        chunks, size = await run_in_threadpool(svc.fhir.binary_stream, stored)
        headers["Content-Length"] = str(size)
        return StreamingResponse(chunks, media_type=(stored.resource or {}).get("contentType",
                                                                               "application/octet-stream"),
                                 headers=headers)
    full = await run_in_threadpool(svc.fhir.full_resource, stored)
    return render(request, full, 200, headers, fmt=fmt)


# Compartment search: Patient/123/Observation
@router.get("/{ctype}/{cid}/{type_}")
async def compartment_search(request: Request, ctype: str, cid: str, type_: str) -> Response:
    fmt = negotiate(request)
    ctx = context(request)
    body = await run_in_threadpool(services(request).fhir.search, ctx, type_, query_params(request),
                                   compartment=(ctype, cid))
    return render(request, body, fmt=fmt)

