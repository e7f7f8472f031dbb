"""HTTP routes of the authorization server (thin: request → AuthService call → response).

Discovery at the root and at the FHIR base (``/.well-known/smart-configuration``,
``/.well-known/openid-configuration``), and the endpoints under ``/auth``: ``authorize``
(GET and POST), ``login``, ``consent``, ``token``, ``introspect``, ``revoke``, ``manage``,
``logout``, ``launch``, ``jwks`` and the administrators' ``admin/clients`` / ``admin/users``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlparse

import orjson
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from fhir_server.auth.oauth import Headers, RawRequest
from fhir_server.auth.service import AuthService, Reply
from fhir_server.fhir.errors import BadRequest, UnsupportedMediaType

__all__ = ["build_router"]


async def _raw(request: Request) -> RawRequest:
    form: dict[str, str] = {}
    datalist: dict[str, list[str]] = {}
    args = dict(request.query_params)
    for k, v in request.query_params.multi_items():
        datalist.setdefault(k, []).append(v)
    if request.method == "POST":
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        body = await request.body()
        if body:
            if ctype != "application/x-www-form-urlencoded":
                raise UnsupportedMediaType("Use application/x-www-form-urlencoded", expression="Content-Type")
            for k, v in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
                form.setdefault(k, v)
                datalist.setdefault(k, []).append(v)
    return RawRequest(request.method, str(request.url), Headers(request.headers.items()), args=args, form=form,
                      datalist=datalist, address=request.client.host if request.client else None,
                      cookies=dict(request.cookies))


def build_router(auth: AuthService, fhir_base: str, secure_cookies: bool) -> APIRouter:
    router = APIRouter()
    base_path = urlparse(fhir_base).path.rstrip("/")
    auth_path = urlparse(auth.auth_url).path.rstrip("/")

    def respond(reply: Reply) -> Response:
        if reply.html:
            resp: Response = HTMLResponse(reply.body, status_code=reply.status, headers=reply.headers)
        elif reply.status == 302:
            resp = Response(status_code=302, headers=reply.headers)
        else:
            resp = Response(orjson.dumps(reply.body), status_code=reply.status, headers=reply.headers,
                            media_type="application/json")
        for name, value, max_age in reply.cookies:
            if max_age == 0:
                resp.delete_cookie(name, path=auth_path or "/")
            else:
                resp.set_cookie(name, value, max_age=max_age, path=auth_path or "/", httponly=True,
                                samesite="lax", secure=secure_cookies)
        return resp

    def json_doc(body: Any) -> Response:
        return Response(orjson.dumps(body), media_type="application/json",
                        headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"})

    for prefix in dict.fromkeys(("", base_path)):
        router.add_api_route(f"{prefix}/.well-known/smart-configuration",
                             lambda: json_doc(auth.smart_configuration()), methods=["GET"])
        router.add_api_route(f"{prefix}/.well-known/openid-configuration",
                             lambda: json_doc(auth.openid_configuration()), methods=["GET"])

    @router.get(f"{auth_path}/jwks")
    async def jwks() -> Response:
        return json_doc(auth.jwks())

    @router.get(f"{auth_path}/smart-style.json")
    async def smart_style() -> Response:
        return json_doc({"color_background": "#f6f8fb", "color_highlight": "#2f6fb3", "color_text": "#1d2733",
                         "dim_border_radius": "6px", "font_family_body": "system-ui, sans-serif"})

    async def call(fn: Any, request: Request) -> Response:
        raw = await _raw(request)
        return respond(await run_in_threadpool(fn, raw))

    @router.api_route(f"{auth_path}/authorize", methods=["GET", "POST"])
    async def authorize(request: Request) -> Response:
        return await call(auth.authorize, request)

    @router.get(f"{auth_path}/login")
    async def login_form(request: Request) -> Response:
        return await call(auth.login_form, request)

    @router.post(f"{auth_path}/login")
    async def login(request: Request) -> Response:
        return await call(auth.login, request)

    @router.get(f"{auth_path}/login/upstream")
    async def upstream_start(request: Request) -> Response:
        return await call(auth.upstream_start, request)

    @router.get(f"{auth_path}/login/upstream/callback")
    async def upstream_callback(request: Request) -> Response:
        return await call(auth.upstream_callback, request)

    @router.post(f"{auth_path}/logout")
    async def logout(request: Request) -> Response:
        return await call(auth.logout, request)

    @router.get(f"{auth_path}/consent")
    async def consent_form(request: Request) -> Response:
        return await call(auth.consent_form, request)

    @router.post(f"{auth_path}/consent")
    async def consent(request: Request) -> Response:
        return await call(auth.consent, request)

    @router.post(f"{auth_path}/token")
    async def token(request: Request) -> Response:
        return await call(auth.token, request)

    @router.post(f"{auth_path}/introspect")
    async def introspect(request: Request) -> Response:
        return await call(auth.introspect, request)

    @router.post(f"{auth_path}/revoke")
    async def revoke(request: Request) -> Response:
        return await call(auth.revoke, request)

    @router.get(f"{auth_path}/manage")
    async def manage_form(request: Request) -> Response:
        return await call(auth.manage_form, request)

    @router.post(f"{auth_path}/manage")
    async def manage(request: Request) -> Response:
        return await call(auth.manage_revoke, request)

    @router.post(f"{auth_path}/launch")
    async def launch(request: Request) -> Response:
        return await call(auth.create_launch, request)

    async def _json_body(request: Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise BadRequest("A JSON object is expected") from exc
        if not isinstance(body, dict):
            raise BadRequest("A JSON object is expected")
        return body

    @router.post(f"{auth_path}/admin/clients")
    async def admin_client(request: Request) -> Response:
        raw, body = await _raw_json(request)
        return respond(await run_in_threadpool(auth.admin_register_client, raw, body))

    @router.post(f"{auth_path}/admin/users")
    async def admin_user(request: Request) -> Response:
        raw, body = await _raw_json(request)
        return respond(await run_in_threadpool(auth.admin_register_user, raw, body))

    @router.get(f"{auth_path}/admin/clients")
    async def admin_clients(request: Request) -> Response:
        raw = await _raw(request)
        return respond(await run_in_threadpool(auth.admin_list, raw, "clients"))

    @router.get(f"{auth_path}/admin/users")
    async def admin_users(request: Request) -> Response:
        raw = await _raw(request)
        return respond(await run_in_threadpool(auth.admin_list, raw, "users"))

    async def _raw_json(request: Request) -> tuple[RawRequest, dict[str, Any]]:
        body = await _json_body(request)
        raw = RawRequest(request.method, str(request.url), Headers(request.headers.items()),
                         address=request.client.host if request.client else None)
        return raw, body

    return router
