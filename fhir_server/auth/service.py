"""The authorization server's interactions, free of HTTP framework code.

Each method takes a :class:`~fhir_server.auth.oauth.RawRequest` and returns a :class:`Reply`;
``api/auth_routes.py`` only converts between the two. The authorization code flow:

1. ``GET|POST /auth/authorize`` — authlib validates client, redirect URI, response type and
   scope; we add ``aud``, PKCE S256 and ``launch``. The request is parked (``auth_pending``)
   and bound to the browser by a cookie.
2. ``/auth/login`` — user name and password (argon2), CSRF token, rate limit; opens a session.
3. ``/auth/consent`` — the user unticks scopes, narrows categories, picks the patient
   (practitioners); the granted scope is exactly what was approved ∩ requested ∩ client-allowed.
4. 302 to the redirect URI with a single-use code bound to client, redirect URI and PKCE challenge.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx
from authlib.oauth2.rfc6749 import OAuth2Error

from fhir_server.access.policy import REFUSED_KINDS, SmartPolicy
from fhir_server.access.scopes import Category, ParsedScopes, intersect
from fhir_server.auth import pages
from fhir_server.auth.admin import AdminError, public_client, register_client, register_user
from fhir_server.auth.oauth import GrantSubject, RawRequest, SmartServer, parse, sha256
from fhir_server.auth.passwords import DUMMY_HASH, verify_password
from fhir_server.auth.ratelimit import RateLimiter
from fhir_server.auth.tokens import TokenError, TokenService, epoch_to_dt
from fhir_server.auth.upstream import UpstreamError, UpstreamProvider
from fhir_server.fhir.errors import BadRequest, Forbidden, Unauthorized
from fhir_server.rest.context import Caller
from fhir_server.store.auth_store import AuthStore

__all__ = ["AuthService", "Reply", "CAPABILITIES"]

log = logging.getLogger("fhir_server.auth")

CAPABILITIES = [
    "launch-standalone", "launch-ehr", "client-public", "client-confidential-symmetric",
    "client-confidential-asymmetric", "context-standalone-patient", "context-ehr-patient",
    "context-ehr-encounter", "context-banner", "context-style", "permission-patient", "permission-user",
    "permission-offline", "permission-online", "permission-v1", "permission-v2", "sso-openid-connect",
    "authorize-post",
]
SESSION_COOKIE = "fhs_session"
BROWSER_COOKIE = "fhs_browser"
PENDING_LIFETIME = 600

_OBS = "http://terminology.hl7.org/CodeSystem/observation-category"
_COND = "http://terminology.hl7.org/CodeSystem/condition-category"
CATEGORY_CHOICES: dict[str, list[tuple[str, str]]] = {
    "Observation": [(f"{_OBS}|{c}", lbl) for c, lbl in (
        ("laboratory", "Laboratory"), ("vital-signs", "Vital signs"), ("imaging", "Imaging"),
        ("social-history", "Social history"), ("survey", "Survey"), ("exam", "Exam"), ("therapy", "Therapy"),
        ("activity", "Activity"), ("procedure", "Procedure"))],
    "Condition": [(f"{_COND}|problem-list-item", "Problem list"),
                  (f"{_COND}|encounter-diagnosis", "Encounter diagnosis")],
}
_CONTEXT_LABELS = {
    "openid": "Confirm who you are (OpenID Connect)", "fhirUser": "Share your user identity",
    "profile": "Share your profile", "offline_access": "Keep access when you are not signed in",
    "online_access": "Keep access while you are signed in", "launch/patient": "Choose a patient",
    "launch": "Use the current context", "launch/encounter": "Use the current encounter",
}
_VERBS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict → JSON, str → HTML
    headers: dict[str, str] = field(default_factory=dict)
    cookies: list[tuple[str, str, int | None]] = field(default_factory=list)  # (name, value, max_age; 0 = delete)
    html: bool = False


def _json(status: int, body: Any, headers: list[tuple[str, str]] | dict[str, str] | None = None) -> Reply:
    h = dict(headers or {})
    h.setdefault("Cache-Control", "no-store")
    h["Pragma"] = "no-cache"
    h.pop("Content-Type", None)
    return Reply(status, body, h)


def _html(status: int, body: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, body, {**pages.PAGE_HEADERS, **(headers or {})}, html=True)


def _redirect(url: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(302, "", {"Location": url, "Cache-Control": "no-store", **(headers or {})})


def _label(rule_text: str) -> str:
    try:
        parsed = parse(rule_text)
    except OAuth2Error:
        return rule_text
    for r in parsed.rules:
        verbs = ", ".join(_VERBS[a] for a in "cruds" if a in r.actions)
        who = {"patient": "your", "user": "accessible", "system": "all"}[r.level]
        what = "all data" if r.type == "*" else r.type
        cats = f" ({', '.join(c.code for c in r.categories)})" if r.categories else ""
        return f"{verbs} {who} {what}{cats}"
    return rule_text


class AuthService:
    def __init__(self, *, store: AuthStore, server: SmartServer, tokens: TokenService, policy: SmartPolicy,
                 fhir_base: str, auth_url: str, issuer: str, secure_cookies: bool, session_lifetime: int,
                 launch_lifetime: int, rate_limit: int, login_rate_limit: int,
                 audit: Callable[..., None], jwks: dict[str, Any], patient_label: Callable[[str], str],
                 csrf_key: bytes | None = None, upstream: UpstreamProvider | None = None) -> None:
        self._csrf_key = csrf_key or secrets.token_bytes(32)
        self.upstream = upstream
        self.store = store
        self.server = server
        self.tokens = tokens
        self.policy = policy
        self.fhir_base = fhir_base
        self.auth_url = auth_url.rstrip("/")
        self.issuer = issuer
        self.secure = secure_cookies
        self.session_lifetime = session_lifetime
        self.launch_lifetime = launch_lifetime
        self.limits = RateLimiter(rate_limit)
        self.login_limits = RateLimiter(login_rate_limit)
        self.audit = audit
        self._jwks = jwks
        self.patient_label = patient_label

    # ------------------------------------------------------------ discovery
    def url(self, path: str) -> str:
        return f"{self.auth_url}/{path}"

    def smart_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.url("jwks"),
            "authorization_endpoint": self.url("authorize"),
            "token_endpoint": self.url("token"),
            "introspection_endpoint": self.url("introspect"),
            "revocation_endpoint": self.url("revoke"),
            "management_endpoint": self.url("manage"),
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types_supported": ["code"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post",
                                                      "private_key_jwt", "none"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                                 "offline_access", "online_access", "patient/*.cruds", "user/*.cruds",
                                 "system/*.cruds", "patient/*.read", "patient/*.write", "user/*.read",
                                 "user/*.write", "system/*.read", "system/*.write"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": CAPABILITIES,
        }

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.url("authorize"),
            "token_endpoint": self.url("token"),
            "jwks_uri": self.url("jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "fhirUser", "profile"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post",
                                                      "private_key_jwt", "none"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        }

    def security(self) -> dict[str, Any]:
        """CapabilityStatement.rest.security with the oauth-uris extension."""
        ext = [{"url": u, "valueUri": v} for u, v in (
            ("authorize", self.url("authorize")), ("token", self.url("token")),
            ("introspect", self.url("introspect")), ("revoke", self.url("revoke")),
            ("manage", self.url("manage")))]
        return {
            "cors": True,
            "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                     "code": "SMART-on-FHIR"}], "text": "OAuth2 using SMART-on-FHIR profile"}],
            "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                           "extension": ext}],
            "description": "SMART App Launch 2.x and SMART Backend Services",
        }

    def jwks(self) -> dict[str, Any]:
        return self._jwks

    # --------------------------------------------------- FHIR authentication
    def authenticate(self, authorization: str | None, address: str | None) -> Caller:
        """The caller of a FHIR request, or 401 with ``WWW-Authenticate``."""
        realm = f'Bearer realm="{self.fhir_base}"'
        if not authorization:
            self.audit("authn", False, address=address, description="no access token")
            raise Unauthorized("An access token is required", headers={"WWW-Authenticate": realm})
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self.audit("authn", False, address=address, description="not a bearer token")
            raise Unauthorized("Use a Bearer access token",
                               headers={"WWW-Authenticate": f'{realm}, error="invalid_request"'})
        try:
            claims = self.tokens.verify(token.strip())
        except TokenError as exc:
            self.audit("authn", False, address=address, description=str(exc))
            raise Unauthorized("The access token is invalid, expired or revoked",
                               headers={"WWW-Authenticate": f'{realm}, error="invalid_token"'}) from exc
        return Caller(kind=str(claims.get("kind", "")), subject=claims.get("sub"), client_id=claims.get("client_id"),
                      fhir_user=claims.get("fhirUser"), patient=claims.get("patient"),
                      scopes=frozenset(str(claims.get("scope", "")).split()), token_id=claims.get("jti"),
                      claims={"encounter": claims.get("encounter"), "may_label": bool(claims.get("may_label")),
                              "grant": claims.get("grant"), "_address": address})

    def bearer_caller(self, raw: RawRequest) -> Caller:
        return self.authenticate(raw.headers.get("authorization"), raw.address)

    # --------------------------------------------------------------- sessions
    def _session(self, raw: RawRequest) -> dict[str, Any] | None:
        sid = raw.cookies.get(SESSION_COOKIE)
        if not sid:
            return None
        doc = self.store.get_session(sha256(sid))
        if doc is None or doc["exp"].timestamp() < time.time():
            return None
        return doc

    def _audit_user(self, event: str, ok: bool, *, user: dict[str, Any] | None, raw: RawRequest,
                    client_id: str | None = None, description: str | None = None) -> None:
        fhir_user = (user or {}).get("fhir_user") or ""
        own = fhir_user.split("/", 1)[1] if fhir_user.startswith("Patient/") else None
        self.audit(event, ok, client_id=client_id, user=(user or {}).get("_id"), fhir_user=fhir_user or None,
                   kind=(user or {}).get("role"), address=raw.address, description=description, patient=own)

    # -------------------------------------------------------------- authorize
    def authorize(self, raw: RawRequest) -> Reply:
        self.limits.hit(f"authorize {raw.address}")
        try:
            grant = self.server.get_consent_grant(request=raw)
        except OAuth2Error as err:
            return self._oauth_error(err)
        params = {**raw.args, **raw.form}
        client = grant.request.client
        if client.refused:
            return _html(403, pages.error_page("This application category has no access to health records."))
        rid = secrets.token_urlsafe(24)
        browser = raw.cookies.get(BROWSER_COOKIE) or secrets.token_urlsafe(24)
        self.store.save_pending({"_id": rid, "params": params, "scope": grant.request.scope,
                                 "client_id": client.client_id, "csrf": secrets.token_urlsafe(24),
                                 "browser": sha256(browser), "exp": epoch_to_dt(time.time() + PENDING_LIFETIME)})
        cookie = [(BROWSER_COOKIE, browser, self.session_lifetime)]
        target = "consent" if self._session(raw) else "login"
        reply = _redirect(f"{self.url(target)}?{urlencode({'rid': rid})}")
        reply.cookies = cookie
        return reply

    def _oauth_error(self, err: OAuth2Error) -> Reply:
        status, body, headers = err()
        if status == 302:
            return _redirect(dict(headers)["Location"])
        desc = getattr(err, "description", None) or getattr(err, "error", "invalid request")
        return _html(400, pages.error_page(f"{err.error}: {desc}"))

    def _pending(self, raw: RawRequest, rid: str | None) -> dict[str, Any]:
        doc = self.store.get_pending(rid) if rid else None
        if doc is None or doc["exp"].timestamp() < time.time():
            raise BadRequest("This sign-in request expired; start again from the application")
        if doc.get("browser") != sha256(raw.cookies.get(BROWSER_COOKIE, "")):
            raise Forbidden("This sign-in request belongs to another browser")
        return doc

    # ------------------------------------------------------------------ login
    def login_form(self, raw: RawRequest, error: str | None = None, status: int = 200, username: str = "") -> Reply:
        rid = raw.args.get("rid") or raw.form.get("rid") or ""
        if rid:
            pending = self._pending(raw, rid)
            csrf = pending["csrf"]
            client = self.server.query_client(pending["client_id"])
            name = client.name if client else None
            cookies: list[tuple[str, str, int | None]] = []
        else:  # direct sign-in (management page)
            browser = raw.cookies.get(BROWSER_COOKIE) or secrets.token_urlsafe(24)
            csrf = _hmac_csrf(self._csrf_key, browser)
            name = None
            cookies = [(BROWSER_COOKIE, browser, self.session_lifetime)]
        upstream = None
        if self.upstream is not None:
            upstream = (self.upstream.name, f"{self.url('login/upstream')}?{urlencode({'rid': rid})}")
        reply = _html(status, pages.login_page(action=self.url("login"), rid=rid, csrf=csrf, client_name=name,
                                               error=error, username=username, upstream=upstream))
        reply.cookies = cookies
        return reply

    def login(self, raw: RawRequest) -> Reply:
        form = raw.form
        rid = form.get("rid", "")
        username = form.get("username", "")[:200]
        self.login_limits.hit(f"login {raw.address}")
        self.login_limits.hit(f"login-user {username.lower()}")
        if rid:
            pending = self._pending(raw, rid)
            ok_csrf = secrets.compare_digest(form.get("csrf", ""), pending["csrf"])
        else:
            browser = raw.cookies.get(BROWSER_COOKIE, "")
            ok_csrf = bool(browser) and secrets.compare_digest(form.get("csrf", ""), _hmac_csrf(self._csrf_key, browser))
        if not ok_csrf:
            raise Forbidden("Invalid form token (CSRF)")
        user = self.store.get_user(username)
        stored_hash = (user or {}).get("password_hash")
        ok = verify_password(stored_hash or DUMMY_HASH, form.get("password", "")) and bool(stored_hash)
        if not user or not ok or user.get("disabled"):
            self._audit_user("login", False, user=user, raw=raw, description=f"failed sign-in for '{username}'")
            return self.login_form(raw, "Unknown user name or wrong password.", 401, username)
        if user.get("role") in REFUSED_KINDS:
            self._audit_user("login", False, user=user, raw=raw, description="refused user category")
            return _html(403, pages.error_page("Your organisation category has no access to health records."))
        return self._open_session(user, raw, rid)

    def _open_session(self, user: dict[str, Any], raw: RawRequest, rid: str, how: str = "password") -> Reply:
        sid = secrets.token_urlsafe(32)
        self.store.save_session({"_id": sha256(sid), "user": user["_id"], "csrf": secrets.token_urlsafe(24),
                                 "auth_time": int(time.time()),
                                 "exp": epoch_to_dt(time.time() + self.session_lifetime)})
        self._audit_user("login", True, user=user, raw=raw, description=f"signed in ({how})")
        target = f"{self.url('consent')}?{urlencode({'rid': rid})}" if rid else self.url("manage")
        reply = _redirect(target)
        reply.cookies = [(SESSION_COOKIE, sid, self.session_lifetime)]
        return reply

    # ---------------------------------------------------- upstream identity
    def upstream_start(self, raw: RawRequest) -> Reply:
        if self.upstream is None:
            raise BadRequest("No upstream identity provider is configured")
        self.login_limits.hit(f"login {raw.address}")
        rid = raw.args.get("rid", "")
        if rid:
            self._pending(raw, rid)
        browser = raw.cookies.get(BROWSER_COOKIE) or secrets.token_urlsafe(24)
        try:
            url, kept = self.upstream.start()
        except (UpstreamError, httpx.HTTPError, KeyError, ValueError) as exc:
            log.warning("upstream identity provider unavailable: %s", exc)
            return _html(502, pages.error_page("The identity provider cannot be reached; try again later."))
        self.store.save_pending({"_id": "upstream " + sha256(kept["state"]), "rid": rid, "kept": kept,
                                 "browser": sha256(browser), "exp": epoch_to_dt(time.time() + PENDING_LIFETIME)})
        reply = _redirect(url)
        reply.cookies = [(BROWSER_COOKIE, browser, self.session_lifetime)]
        return reply

    def upstream_callback(self, raw: RawRequest) -> Reply:
        if self.upstream is None:
            raise BadRequest("No upstream identity provider is configured")
        key = "upstream " + sha256(raw.args.get("state", ""))
        rec = self.store.get_pending(key)
        if rec is None or rec["exp"].timestamp() < time.time():
            return _html(400, pages.error_page("This sign-in expired; start again."))
        self.store.delete_pending(key)
        if rec.get("browser") != sha256(raw.cookies.get(BROWSER_COOKIE, "")):
            raise Forbidden("This sign-in belongs to another browser")
        if raw.args.get("error") or not raw.args.get("code"):
            return _html(401, pages.error_page("The identity provider did not sign you in."))
        try:
            subject = self.upstream.finish(raw.args["code"], rec["kept"])
        except (UpstreamError, httpx.HTTPError, KeyError, ValueError) as exc:
            self.audit("login", False, address=raw.address, description=f"upstream sign-in failed: {exc}")
            return _html(401, pages.error_page(str(exc) if isinstance(exc, UpstreamError) else
                                               "The identity provider cannot be reached; try again later."))
        user = self.store.find_user_by_upstream(subject)
        if user is None or user.get("disabled") or user.get("role") in REFUSED_KINDS:
            self.audit("login", False, address=raw.address, description=f"no usable account for {subject}")
            return _html(403, pages.error_page("No account of this server is linked to this identity."))
        return self._open_session(user, raw, rec.get("rid") or "", how="upstream identity provider")

    def logout(self, raw: RawRequest) -> Reply:
        sid = raw.cookies.get(SESSION_COOKIE)
        session = self._session(raw)
        if session and secrets.compare_digest(raw.form.get("csrf", ""), session["csrf"]):
            self.store.delete_session(sha256(sid or ""))
        reply = _html(200, pages.page("Signed out", "<p>You are signed out.</p>"))
        reply.cookies = [(SESSION_COOKIE, "", 0)]
        return reply

    # ---------------------------------------------------------------- consent
    def _user_of(self, session: dict[str, Any]) -> dict[str, Any]:
        user = self.store.get_user(session["user"])
        if user is None or user.get("disabled"):
            raise Forbidden("This account is disabled")
        return user

    def _patient_choice(self, user: dict[str, Any], launch: dict[str, Any] | None,
                        requested: ParsedScopes) -> tuple[str | None, list[tuple[str, str]] | None]:
        """(fixed patient, choices) for the consent page."""
        if launch is not None:
            return launch.get("patient"), None
        if "launch/patient" not in requested.context:
            return None, None
        fhir_user = user.get("fhir_user") or ""
        if user.get("role") == "patient":
            return fhir_user.split("/", 1)[1] if "/" in fhir_user else None, None
        if user.get("role") == "practitioner":
            ids = sorted(self.policy.rules.patients_of(fhir_user))
            return None, [(i, self.patient_label(i)) for i in ids]
        return None, []

    def _launch_of(self, pending: dict[str, Any], user: dict[str, Any]) -> dict[str, Any] | None:
        launch = pending["params"].get("launch")
        if not launch:
            return None
        rec = self.store.peek_launch(launch)
        if rec is None or rec["exp"].timestamp() < time.time() or rec["client_id"] != pending["client_id"]:
            raise BadRequest("The launch context expired or was already used; launch the app again")
        if rec.get("user") != user["_id"]:
            raise Forbidden("This launch was made for another user")
        return rec

    def consent_form(self, raw: RawRequest) -> Reply:
        rid = raw.args.get("rid", "")
        pending = self._pending(raw, rid)
        session = self._session(raw)
        if session is None:
            return _redirect(f"{self.url('login')}?{urlencode({'rid': rid})}")
        user = self._user_of(session)
        launch = self._launch_of(pending, user)
        requested = parse(pending["scope"])
        client = self.server.query_client(pending["client_id"])
        choices = [pages.ScopeChoice(r.text or r.render(), _label(r.text or r.render()),
                                     CATEGORY_CHOICES.get(r.type, []) if r.categories is None else [])
                   for r in requested.rules]
        ctx = [(c, _CONTEXT_LABELS.get(c, c)) for c in sorted(requested.context)]
        fixed, patients = self._patient_choice(user, launch, requested)
        return _html(200, pages.consent_page(action=self.url("consent"), rid=rid, csrf=session["csrf"],
                                             client_name=client.name if client else pending["client_id"],
                                             user=user.get("name") or user["_id"], choices=choices, context=ctx,
                                             patients=patients, patient_fixed=fixed))

    def consent(self, raw: RawRequest) -> Reply:
        form = raw.form
        rid = form.get("rid", "")
        pending = self._pending(raw, rid)
        session = self._session(raw)
        if session is None or not secrets.compare_digest(form.get("csrf", ""), session["csrf"]):
            raise Forbidden("Invalid form token (CSRF) or expired session")
        user = self._user_of(session)
        launch = self._launch_of(pending, user)
        self.store.delete_pending(rid)
        original = RawRequest("GET", f"{self.url('authorize')}?{urlencode(pending['params'])}", raw.headers,
                              args=dict(pending["params"]), address=raw.address)
        try:
            grant = self.server.get_consent_grant(request=original)
        except OAuth2Error as err:
            return self._oauth_error(err)
        if form.get("decision") != "approve":
            self._audit_user("token", False, user=user, raw=raw, client_id=pending["client_id"],
                             description="the user denied the authorization")
            return self._finish(original, grant, None)
        requested = parse(pending["scope"])
        approved_items = set(raw.datalist.get("scope", []))
        narrowed: list[str] = []
        i = 0
        while f"scope_key_{i}" in form:
            key = form[f"scope_key_{i}"]
            if key in approved_items:
                cat = form.get(f"cat_{i}", "")
                if cat:
                    rule = parse(key).rules[0]
                    system, _, code = cat.rpartition("|")
                    narrowed.append(_with_category(rule.text or rule.render(), Category(system or None, code)))
                else:
                    narrowed.append(key)
            i += 1
        narrowed += [c for c in approved_items if c in requested.context]
        approved = parse(narrowed) if narrowed else ParsedScopes((), frozenset())
        final = intersect(requested, approved)
        fixed, patients = self._patient_choice(user, launch, final)
        patient = fixed
        if launch is not None and "launch" not in final.context:
            patient = None  # the user declined the launch context
        if patients is not None:
            chosen = form.get("patient")
            if not chosen or chosen not in {p for p, _ in patients}:
                return _html(400, pages.error_page("Choose a patient you may open."))
            patient = chosen
        role = user.get("role", "")
        subject = GrantSubject(user=user["_id"], kind=role, fhir_user=user.get("fhir_user"), scope=final.render(),
                               grant=secrets.token_urlsafe(16), patient=patient,
                               encounter=(launch or {}).get("encounter"),
                               fhir_context=list((launch or {}).get("fhir_context") or []),
                               need_patient_banner=launch is None, nonce=pending["params"].get("nonce"),
                               auth_time=session.get("auth_time"), session=session["_id"])
        if launch is not None:
            if self.store.consume_launch(launch["_id"]) is None:
                return _html(400, pages.error_page("This launch was already used; launch the app again."))
            grant.request.launch_consumed = launch["_id"]
        self._audit_user("token", True, user=user, raw=raw, client_id=pending["client_id"],
                         description=f"authorization granted: {subject.scope}")
        return self._finish(original, grant, subject)

    def _finish(self, original: RawRequest, grant: Any, subject: GrantSubject | None) -> Reply:
        status, _body, headers = self.server.create_authorization_response(
            request=grant.request, grant_user=subject, grant=grant)
        location = dict(headers).get("Location")
        if status == 302 and location:
            return _redirect(location)
        return _html(400, pages.error_page("The authorization could not be completed."))

    # ------------------------------------------------------------ token & co
    def token(self, raw: RawRequest) -> Reply:
        self.limits.hit(f"token {raw.address}")
        status, body, headers = self.server.create_token_response(raw)
        grant_type = raw.form.get("grant_type", "")
        if isinstance(body, dict):
            ok = status == 200
            event = "refresh" if grant_type == "refresh_token" else "token"
            cid = raw.form.get("client_id") or _assertion_sub(raw.form.get("client_assertion"))
            self.audit(event, ok, client_id=cid, address=raw.address,
                       patient=body.get("patient") if ok else None,
                       description=(f"{grant_type}: issued scope '{body.get('scope')}'" if ok else
                                    f"{grant_type}: {body.get('error')}: {body.get('error_description', '')}"))
        return _json(status, body, headers)

    def introspect(self, raw: RawRequest) -> Reply:
        self.limits.hit(f"introspect {raw.address}")
        reply = self.server.create_endpoint_response("introspection", raw)
        status, body, headers = reply
        return _json(status, body, headers)

    def revoke(self, raw: RawRequest) -> Reply:
        self.limits.hit(f"revoke {raw.address}")
        status, body, headers = self.server.create_endpoint_response("revocation", raw)
        return _json(status, body, headers)

    # ------------------------------------------------------------- management
    def manage_form(self, raw: RawRequest, notice: str | None = None) -> Reply:
        session = self._session(raw)
        if session is None:
            return _redirect(self.url("login"))
        user = self._user_of(session)
        grants: dict[str, dict[str, str]] = {}
        for rec in self.store.grants_of_user(user["_id"], datetime.now(UTC)):
            g = grants.setdefault(rec["grant"], {"grant": rec["grant"], "client": rec.get("client_id") or "",
                                                 "scope": rec.get("scope") or "",
                                                 "since": rec["iat"].strftime("%Y-%m-%d %H:%M UTC")})
            g["since"] = min(g["since"], rec["iat"].strftime("%Y-%m-%d %H:%M UTC"))
        for g in grants.values():
            client = self.server.query_client(g["client"])
            if client:
                g["client"] = client.name
        return _html(200, pages.manage_page(action=self.url("manage"), csrf=session["csrf"],
                                            user=user.get("name") or user["_id"], grants=list(grants.values()),
                                            notice=notice))

    def manage_revoke(self, raw: RawRequest) -> Reply:
        session = self._session(raw)
        if session is None or not secrets.compare_digest(raw.form.get("csrf", ""), session["csrf"]):
            raise Forbidden("Invalid form token (CSRF) or expired session")
        user = self._user_of(session)
        grant = raw.form.get("grant", "")
        owned = any(rec["grant"] == grant for rec in self.store.grants_of_user(user["_id"], datetime.now(UTC)))
        if not owned:
            raise Forbidden("Not one of your authorizations")
        n = self.store.revoke_grant(grant)
        self._audit_user("revoke", True, user=user, raw=raw, description=f"user revoked an app: {n} token(s)")
        return self.manage_form(raw, "Access revoked.")

    # -------------------------------------------------------------- EHR launch
    def create_launch(self, raw: RawRequest) -> Reply:
        """An EHR (practitioner software) opens a launch for an app: bound to client and user."""
        caller = self.bearer_caller(raw)
        if caller.kind != "practitioner" or not caller.fhir_user or not caller.subject:
            raise Forbidden("Only a practitioner session can create an EHR launch")
        data = {**raw.args, **raw.form}
        client = self.server.query_client(data.get("client_id", ""))
        if client is None or client.refused:
            raise BadRequest("Unknown client_id", expression="client_id")
        patient = data.get("patient") or None
        if patient and not self.policy.rules.may_access(caller.fhir_user, patient):
            raise Forbidden("No valid relationship with this patient")
        encounter = data.get("encounter") or None
        ctx = [{"reference": f"Encounter/{encounter}"}] if encounter else []
        launch = secrets.token_urlsafe(24)
        self.store.save_launch({"_id": launch, "client_id": client.client_id, "user": caller.subject,
                                "patient": patient, "encounter": encounter, "fhir_context": ctx,
                                "exp": epoch_to_dt(time.time() + self.launch_lifetime)})
        self.audit("launch", True, client_id=client.client_id, user=caller.subject, fhir_user=caller.fhir_user,
                   kind="practitioner", patient=patient, address=raw.address)
        return _json(201, {"launch": launch, "iss": self.fhir_base, "expires_in": self.launch_lifetime})

    # ------------------------------------------------------------------ admin
    def _admin(self, raw: RawRequest) -> Caller:
        caller = self.bearer_caller(raw)
        if caller.kind != "admin":
            raise Forbidden("Administrators only")
        return caller

    def admin_register_client(self, raw: RawRequest, body: dict[str, Any]) -> Reply:
        caller = self._admin(raw)
        try:
            out = register_client(self.store, **_only(body, (
                "client_id", "kind", "scope", "name", "category", "redirect_uris", "secret", "jwks", "jwks_uri",
                "grant_types", "may_label", "may_introspect")))
        except (AdminError, TypeError) as exc:
            raise BadRequest(str(exc)) from exc
        self.audit("admin", True, client_id=caller.client_id, user=caller.subject, kind="admin",
                   address=raw.address, description=f"client {out['_id']} registered")
        return _json(201, _jsonable(out))

    def admin_register_user(self, raw: RawRequest, body: dict[str, Any]) -> Reply:
        caller = self._admin(raw)
        try:
            out = register_user(self.store, **_only(body, ("username", "password", "role", "fhir_user", "name",
                                                           "upstream")))
        except (AdminError, TypeError) as exc:
            raise BadRequest(str(exc)) from exc
        self.audit("admin", True, client_id=caller.client_id, user=caller.subject, kind="admin",
                   address=raw.address, description=f"user {out['_id']} registered")
        return _json(201, _jsonable(out))

    def admin_list(self, raw: RawRequest, what: str) -> Reply:
        self._admin(raw)
        items = self.store.list_clients() if what == "clients" else self.store.list_users()
        return _json(200, [_jsonable(public_client(d)) for d in items])


def _only(body: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    unknown = set(body) - set(keys)
    if unknown:
        raise BadRequest(f"Unknown fields: {', '.join(sorted(unknown))}")
    return dict(body)


def _jsonable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in doc.items() if k != "password_hash"}


def _with_category(scope: str, cat: Category) -> str:
    base = scope.split("?", 1)[0]
    level_type, _, perm = base.rpartition(".")
    if perm in ("read", "write", "*"):
        perm = {"read": "rs", "write": "cud", "*": "cruds"}[perm]
    return f"{level_type}.{perm}?category={cat.render()}"


def _assertion_sub(assertion: str | None) -> str | None:
    if not assertion:
        return None
    try:
        import base64
        import json

        payload = assertion.split(".")[1]
        return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("sub"))
    except (ValueError, IndexError):
        return None


def _hmac_csrf(key: bytes, browser: str) -> str:
    import hashlib
    import hmac

    return hmac.new(key, b"login-csrf " + browser.encode(), hashlib.sha256).hexdigest()


def origin_of(url: str) -> str:
    p = urlparse(url)
    return f"{p.scheme}://{p.netloc}"
