"""The authlib side of the authorization server: models, grants, client authentication, endpoints.

Deliberate departures from authlib's defaults (each one a SMART App Launch 2.x / RFC 9700
requirement):

* PKCE is required for **every** client and only ``S256`` is accepted (authlib accepts
  ``plain`` and lets confidential clients skip the challenge) — :class:`S256Only`;
* client assertions (``private_key_jwt``) must be signed RS384 or ES384 (authlib's default
  algorithm set rejects those and accepts RS256), expire at most 5 minutes ahead, never
  reuse a ``jti``, and are verified only with the registered JWKS or JWKS URL: a ``jku``
  header naming any other URL is refused and never fetched — :class:`PrivateKeyJWT`;
* codes are single-use: a second use answers ``invalid_grant`` *and* revokes every token
  the first use produced;
* refresh tokens rotate for public clients; replaying a rotated refresh token revokes the
  whole chain; a refresh may narrow the scope, never widen it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, ClientCredentialsGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from fhir_server.access.policy import REFUSED_KINDS
from fhir_server.access.scopes import InvalidScope, ParsedScopes, intersect, parse_scopes
from fhir_server.auth.passwords import verify_password
from fhir_server.auth.tokens import TokenError, TokenService, epoch_to_dt
from fhir_server.fhir import models
from fhir_server.store.auth_store import AuthStore

__all__ = ["Client", "GrantSubject", "Headers", "RawRequest", "SmartServer", "sha256", "ASSERTION_ALGS"]

ASSERTION_ALGS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = 300
USER_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def parse(scope: str | list[str]) -> ParsedScopes:
    try:
        return parse_scopes(scope, models.is_resource_type)
    except InvalidScope as exc:
        raise InvalidScopeError(description=str(exc)) from exc


# ---------------------------------------------------------------------- requests
class Headers(dict[str, str]):
    """Case-insensitive request headers."""

    def __init__(self, items: Any = ()) -> None:
        pairs = items.items() if hasattr(items, "items") else items
        super().__init__((str(k).lower(), v) for k, v in pairs)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(str(key).lower())


@dataclass
class RawRequest:
    """An HTTP request, already read (the API layer builds it; no framework here)."""

    method: str
    uri: str
    headers: dict[str, str]
    args: dict[str, str] = field(default_factory=dict)
    form: dict[str, str] = field(default_factory=dict)
    datalist: dict[str, list[str]] = field(default_factory=dict)
    address: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)


class _Payload(BasicOAuth2Payload):
    def __init__(self, data: dict[str, str], datalist: dict[str, list[str]]) -> None:
        super().__init__(data)
        self._datalist = datalist or {k: [v] for k, v in data.items()}


class _OAuthRequest(OAuth2Request):
    def __init__(self, raw: RawRequest) -> None:
        # OAuth2Request.__init__ refuses http:// URIs; transport security is the
        # deployment's (production mode wants an https base URL).
        self.method = raw.method
        self.uri = raw.uri
        self.headers = raw.headers
        self._body = None
        self.client = None
        self.auth_method = None
        self.user = None
        self.authorization_code = None
        self.refresh_token = None
        self.credential = None
        self._scope = None
        self.raw = raw
        data = {**raw.args, **raw.form}
        self.payload = _Payload(data, raw.datalist)

    @property
    def args(self) -> dict[str, str]:
        return self.raw.args

    @property
    def form(self) -> dict[str, str]:
        return self.raw.form


# ------------------------------------------------------------------------ models
class Client(ClientMixin):
    """A registered client. ``kind``: public | confidential | asymmetric;
    ``category``: app | ehr | system | insurer | mutual | occupational."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.client_id: str = doc["_id"]
        self.kind: str = doc.get("kind", "public")
        self.category: str = doc.get("category", "app")
        self.redirect_uris: list[str] = list(doc.get("redirect_uris") or [])
        self.scope: str = doc.get("scope", "")
        self.grant_types: list[str] = list(doc.get("grant_types") or [])
        self.name: str = doc.get("name") or self.client_id

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # SMART: the redirect_uri parameter is required

    def allowed(self) -> ParsedScopes:
        return parse_scopes(self.scope, models.is_resource_type)

    def get_allowed_scope(self, scope: str | None) -> str | None:
        if not scope:
            return None
        granted = intersect(parse(scope), self.allowed())
        if not granted.rules and not granted.context:
            return None
        return granted.render()

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        h = self.doc.get("secret_hash")
        return bool(h) and verify_password(h, client_secret)

    def auth_methods(self) -> set[str]:
        if self.kind == "public":
            return {"none"}
        if self.kind == "confidential":
            return {"client_secret_basic", "client_secret_post"}
        return {"private_key_jwt"}

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in self.auth_methods()

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types

    @property
    def refused(self) -> bool:
        return self.category in REFUSED_KINDS or bool(self.doc.get("disabled"))


@dataclass
class GrantSubject:
    """What an authorization carries from consent to tokens (authlib's "user")."""

    user: str
    kind: str
    fhir_user: str | None
    scope: str
    grant: str
    patient: str | None = None
    encounter: str | None = None
    fhir_context: list[dict[str, Any]] = field(default_factory=list)
    need_patient_banner: bool = True
    nonce: str | None = None
    auth_time: int | None = None
    session: str | None = None
    refresh_scope: str | None = None

    def get_user_id(self) -> str:
        return self.user

    def to_doc(self) -> dict[str, Any]:
        return {"user": self.user, "ukind": self.kind, "fhirUser": self.fhir_user, "scope": self.scope,
                "grant": self.grant, "patient": self.patient, "encounter": self.encounter,
                "fhir_context": self.fhir_context, "banner": self.need_patient_banner, "nonce": self.nonce,
                "auth_time": self.auth_time, "session": self.session}

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> GrantSubject:
        return cls(d["user"], d["ukind"], d.get("fhirUser"), d["scope"], d["grant"], d.get("patient"),
                   d.get("encounter"), list(d.get("fhir_context") or []), bool(d.get("banner", True)),
                   d.get("nonce"), d.get("auth_time"), d.get("session"))


@dataclass
class CodeRecord:
    doc: dict[str, Any]

    def get_redirect_uri(self) -> str:
        return str(self.doc["redirect_uri"])

    def get_scope(self) -> str:
        return str(self.doc["scope"])

    @property
    def code_challenge(self) -> str | None:
        return self.doc.get("code_challenge")

    @property
    def code_challenge_method(self) -> str | None:
        return self.doc.get("code_challenge_method")


@dataclass
class TokenView:
    """An access token (JWT claims + record) or a refresh token (record), for RFC 7009/7662."""

    record: dict[str, Any]
    claims: dict[str, Any] | None = None

    def check_client(self, client: Client) -> bool:
        return self.record.get("client_id") == client.client_id

    def get_scope(self) -> str:
        return str(self.record.get("scope", ""))

    def is_expired(self) -> bool:
        exp = self.record.get("exp")
        return exp is None or exp.timestamp() <= time.time()

    def is_revoked(self) -> bool:
        return bool(self.record.get("revoked") or self.record.get("used"))


# ------------------------------------------------------------------------- PKCE
class S256Only(CodeChallenge):
    """PKCE with S256, required for every client."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": CodeChallenge.CODE_CHALLENGE_METHODS["S256"]}

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE: 'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("PKCE is required: missing 'code_verifier'")
        super().validate_code_verifier(grant, result)


# -------------------------------------------------------------- client assertions
class PrivateKeyJWT(JWTBearerClientAssertion):
    """``private_key_jwt`` (RFC 7523 §2.2) as SMART Backend Services wants it."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: SmartServer) -> None:
        super().__init__(validate_jti=True, leeway=5)
        self.server = server

    def get_audiences(self) -> list[str]:
        return [self.server.token_url]

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        exp = epoch_to_dt(float(claims["exp"]) + 60)
        return self.server.store.claim_jti(str(claims["sub"]), str(jti), exp)

    def resolve_client_public_key(self, client: Client) -> KeySet:
        return self.server.client_keys(client)

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        headers, claims = self.extract_assertion(assertion)
        alg = headers.get("alg")
        if alg not in ASSERTION_ALGS:
            raise InvalidClientError(description=f"client assertions must be signed with {' or '.join(ASSERTION_ALGS)}")
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGS))
        except (JoseError, ValueError) as e:
            raise InvalidClientError(description="client assertion signature is not valid") from e
        exp = token.claims.get("exp")
        if not isinstance(exp, int | float) or exp - time.time() > MAX_ASSERTION_LIFETIME + self.leeway:
            raise InvalidClientError(description="client assertion 'exp' must be at most 5 minutes ahead")
        self.verify_claims(token.claims)
        return dict(token.claims)

    def __call__(self, query_client: Callable[[str], Any], request: Any) -> Any:
        data = request.form
        if data.get("client_assertion_type") == self.CLIENT_ASSERTION_TYPE and data.get("client_assertion"):
            headers, claims = self.extract_assertion(data["client_assertion"])
            client = query_client(str(claims.get("sub", "")))
            if client is not None:
                self.server.check_jku(client, headers)
        return super().__call__(query_client, request)


# ----------------------------------------------------------------------- grants
class SmartCodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = USER_AUTH_METHODS
    server: SmartServer

    def validate_authorization_request(self) -> str:
        redirect_uri = super().validate_authorization_request()
        data = self.request.payload.data
        aud = data.get("aud")
        sign_in_only = not parse(data.get("scope") or "").rules  # OpenID Connect sign-in, no FHIR access
        if (aud is not None or not sign_in_only) and (aud or "").rstrip("/") != self.server.audience:
            raise InvalidRequestError(f"'aud' must be this server's FHIR base URL ({self.server.audience})",
                                      redirect_uri=redirect_uri)
        launch = data.get("launch")
        if launch and launch != getattr(self.request, "launch_consumed", None):
            rec = self.server.store.peek_launch(launch)
            if rec is None or rec["exp"].timestamp() < time.time() or rec["client_id"] != self.request.client.client_id:
                raise InvalidRequestError("unknown, used or expired 'launch'", redirect_uri=redirect_uri)
        return redirect_uri

    def save_authorization_code(self, code: str, request: Any) -> None:
        subject: GrantSubject = request.user
        data = request.payload.data
        self.server.store.save_code({
            "_id": sha256(code), "client_id": request.client.client_id, "redirect_uri": data.get("redirect_uri"),
            "scope": subject.scope, "code_challenge": data.get("code_challenge"),
            "code_challenge_method": data.get("code_challenge_method"), "subject": subject.to_doc(),
            "grant": subject.grant, "exp": epoch_to_dt(time.time() + self.server.code_lifetime),
        })

    def query_authorization_code(self, code: str, client: Client) -> CodeRecord | None:
        rec, first = self.server.store.consume_code(sha256(code))
        if rec is None:
            return None
        if not first:
            self.server.on_code_reuse(rec)
            return None
        if rec["client_id"] != client.client_id or rec["exp"].timestamp() < time.time():
            return None
        return CodeRecord(rec)

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        return None  # consumed atomically in query_authorization_code

    def authenticate_user(self, authorization_code: CodeRecord) -> GrantSubject:
        return GrantSubject.from_doc(authorization_code.doc["subject"])


@dataclass
class RefreshRecord:
    doc: dict[str, Any]

    def check_client(self, client: Client) -> bool:
        return self.doc.get("client_id") == client.client_id

    def get_scope(self) -> str:
        return str(self.doc.get("scope", ""))


class SmartRefreshGrant(RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = USER_AUTH_METHODS
    server: SmartServer

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        rec = self.server.store.get_token(sha256(refresh_token))
        if rec is None or rec.get("kind") != "refresh":
            return None
        if rec.get("used"):
            self.server.on_refresh_replay(rec)
            return None
        if rec.get("revoked") or rec["exp"].timestamp() < time.time():
            return None
        if rec.get("session") and not self.server.session_alive(rec["session"]):
            return None  # online_access ends with the login session
        return RefreshRecord(rec)

    def _validate_token_scope(self, token: RefreshRecord) -> None:
        scope = self.request.payload.scope
        if not scope:
            return
        asked = parse(scope)
        original = parse(token.get_scope())
        if not asked.context <= original.context:
            raise InvalidScopeError("a refresh may not add scopes")
        for rule in asked.rules:
            if not any(rule.within(o) for o in original.rules):
                raise InvalidScopeError(f"'{rule.text}' is wider than the original grant")

    def authenticate_user(self, refresh_token: RefreshRecord) -> GrantSubject:
        subject = GrantSubject.from_doc(refresh_token.doc["subject"])
        subject.refresh_scope = refresh_token.get_scope()
        return subject

    def issue_token(self, user: GrantSubject, refresh_token: RefreshRecord) -> dict[str, Any]:
        client: Client = self.request.client
        rotate = client.kind == "public"
        if rotate and not self.server.store.use_refresh(refresh_token.doc["_id"]):
            self.server.on_refresh_replay(refresh_token.doc)
            raise InvalidGrantError("refresh token already used")
        scope = self.request.payload.scope or refresh_token.get_scope()
        user.scope = scope
        token: dict[str, Any] = self.generate_token(user=user, scope=scope, include_refresh_token=rotate)
        if not rotate:
            token["refresh_token"] = self.request.form.get("refresh_token")
        return token

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        return None  # rotated tokens were marked used atomically in issue_token


class BackendGrant(ClientCredentialsGrant):
    """SMART Backend Services: client_credentials authenticated by private_key_jwt."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]
    server: SmartServer

    def validate_token_request(self) -> None:
        client: Client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("The client is not authorized to use client_credentials")
        if client.refused:
            raise UnauthorizedClientError("This client category has no access to health records")
        asked = parse(self.request.payload.scope or "")
        if asked.context or any(r.level != "system" for r in asked.rules) or not asked.rules:
            raise InvalidScopeError("Backend services request system/ scopes only")
        granted = intersect(asked, client.allowed())
        if not granted.rules:
            raise InvalidScopeError("none of the requested scopes is allowed for this client")
        self.request.client = client
        self.request.granted_scope = granted.render()

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        scope = self.request.granted_scope
        token = self.generate_token(scope=scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


# -------------------------------------------------------------------- endpoints
class _TokenLookup:
    server: SmartServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return self.server.lookup_token(token_string)


class SmartIntrospection(_TokenLookup, IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def check_permission(self, token: TokenView, client: Client, request: Any) -> bool:
        return token.check_client(client) or bool(client.doc.get("may_introspect"))

    def introspect_token(self, token: TokenView) -> dict[str, Any]:
        rec = token.record
        out: dict[str, Any] = {"active": True, "scope": rec.get("scope", ""), "client_id": rec.get("client_id"),
                               "exp": int(rec["exp"].timestamp()), "token_type": "Bearer" if rec.get("kind") == "access"
                               else "refresh_token", "iss": self.server.tokens.issuer, "sub": rec.get("sub") or
                               rec.get("user") or rec.get("client_id")}
        if rec.get("iat"):
            out["iat"] = int(rec["iat"].timestamp())
        subject = rec.get("subject") or {}
        patient = rec.get("patient") or subject.get("patient")
        fhir_user = rec.get("fhirUser") or subject.get("fhirUser")
        if patient:
            out["patient"] = patient
        if fhir_user:
            out["fhirUser"] = fhir_user
        if token.claims:
            out["aud"] = token.claims.get("aud")
        return out


class SmartRevocation(_TokenLookup, RevocationEndpoint):
    CLIENT_AUTH_METHODS = USER_AUTH_METHODS

    def revoke_token(self, token: TokenView, request: Any) -> None:
        self.server.revoke(token)


# ------------------------------------------------------------------------ server
class SmartServer(AuthorizationServer):
    """authlib's AuthorizationServer bound to our store, key and settings."""

    def __init__(self, *, store: AuthStore, tokens: TokenService, token_url: str, audience: str,
                 access_lifetime: int, backend_lifetime: int, code_lifetime: int, offline_lifetime: int,
                 session_lifetime: int, smart_style_url: str | None,
                 fetch_jwks: Callable[[str], dict[str, Any]], audit: Callable[..., None]) -> None:
        super().__init__()
        self.store = store
        self.tokens = tokens
        self.token_url = token_url
        self.audience = audience
        self.access_lifetime = access_lifetime
        self.backend_lifetime = min(backend_lifetime, 300)
        self.code_lifetime = code_lifetime
        self.offline_lifetime = offline_lifetime
        self.session_lifetime = session_lifetime
        self.smart_style_url = smart_style_url
        self.fetch_jwks = fetch_jwks
        self.audit = audit
        self.register_token_generator("default", self._generate)
        self.register_client_auth_method("private_key_jwt", PrivateKeyJWT(self))
        self.register_grant(SmartCodeGrant, [S256Only(required=True)])
        self.register_grant(SmartRefreshGrant)
        self.register_grant(BackendGrant)
        self.register_endpoint(SmartIntrospection)
        self.register_endpoint(SmartRevocation)

    # authlib hooks
    def query_client(self, client_id: str) -> Client | None:
        doc = self.store.get_client(client_id) if client_id else None
        if doc is None or doc.get("disabled"):
            return None
        return Client(doc)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        return None  # recorded when minted (see _generate)

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return _OAuthRequest(request)

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers or [])

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def validate_requested_scope(self, scope: str | None) -> None:
        if not scope:
            raise InvalidScopeError("a scope is required")
        parse(scope)

    # keys of asymmetric clients
    def client_keys(self, client: Client) -> KeySet:
        doc = client.doc
        try:
            if doc.get("jwks"):
                return KeySet.import_key_set(doc["jwks"])
            if doc.get("jwks_uri"):
                return KeySet.import_key_set(self.fetch_jwks(doc["jwks_uri"]))
        except (JoseError, ValueError, KeyError) as exc:
            raise InvalidClientError(description="the client's registered keys cannot be used") from exc
        raise InvalidClientError(description="the client has no registered keys")

    @staticmethod
    def check_jku(client: Client, headers: dict[str, Any]) -> None:
        jku = headers.get("jku")
        if jku is None:
            return
        if not client.doc.get("jwks_uri") or jku != client.doc["jwks_uri"]:
            raise InvalidClientError(description="'jku' does not match the registered JWKS URL")

    # tokens
    def _generate(self, grant_type: str, client: Client, user: GrantSubject | None = None, scope: str | None = None,
                  expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
        scope = scope or ""
        granted = parse(scope)
        if user is None:  # backend services
            lifetime = self.backend_lifetime
            access, claims = self.tokens.mint_access(
                sub=client.client_id, client_id=client.client_id, scope=scope, kind="system", lifetime=lifetime,
                extra={"may_label": True} if client.doc.get("may_label") else None)
            return {"access_token": access, "token_type": "Bearer", "expires_in": lifetime, "scope": scope}
        lifetime = self.access_lifetime
        extra = {"may_label": True} if client.doc.get("may_label") else None
        access, claims = self.tokens.mint_access(
            sub=user.user, client_id=client.client_id, scope=scope, kind=user.kind, lifetime=lifetime,
            grant=user.grant, patient=user.patient, encounter=user.encounter, fhir_user=user.fhir_user,
            user=user.user, extra=extra)
        token: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": lifetime,
                                 "scope": scope, "need_patient_banner": user.need_patient_banner,
                                 "smart_style_url": self.smart_style_url}
        if user.patient:
            token["patient"] = user.patient
        if user.encounter:
            token["encounter"] = user.encounter
        if user.fhir_context:
            token["fhirContext"] = user.fhir_context
        if "openid" in granted.context:
            token["id_token"] = self.tokens.mint_id_token(
                sub=user.user, client_id=client.client_id,
                fhir_user=user.fhir_user if "fhirUser" in granted.context else None,
                nonce=user.nonce, auth_time=user.auth_time, lifetime=lifetime)
        wants_refresh = {"offline_access", "online_access"} & granted.context or (
            user.refresh_scope and {"offline_access", "online_access"} & parse(user.refresh_scope).context)
        if include_refresh_token and wants_refresh:
            refresh_scope = user.refresh_scope or scope
            online = "offline_access" not in parse(refresh_scope).context
            raw = secrets.token_urlsafe(48)
            life = self.session_lifetime if online else self.offline_lifetime
            self.store.save_token({"_id": sha256(raw), "kind": "refresh", "grant": user.grant,
                                   "client_id": client.client_id, "user": user.user, "scope": refresh_scope,
                                   "subject": user.to_doc(), "session": user.session if online else None,
                                   "iat": epoch_to_dt(time.time()), "exp": epoch_to_dt(time.time() + life)})
            token["refresh_token"] = raw
        return token

    def lookup_token(self, token_string: str) -> TokenView | None:
        if token_string.count(".") == 2:
            try:
                claims = self.tokens.decode(token_string)
            except TokenError:
                return None
            rec = self.store.get_token(str(claims["jti"]))
            return TokenView(rec, claims) if rec else None
        rec = self.store.get_token(sha256(token_string))
        return TokenView(rec) if rec else None

    def revoke(self, token: TokenView) -> None:
        if token.record.get("kind") == "refresh":
            self.store.revoke_grant(token.record["grant"])
        else:
            self.store.revoke_token(token.record["_id"])
        self.audit("revoke", True, client_id=token.record.get("client_id"), user=token.record.get("user"),
                   description=f"{token.record.get('kind')} token revoked")

    def on_code_reuse(self, rec: dict[str, Any]) -> None:
        n = self.store.revoke_grant(rec["grant"])
        self.audit("token", False, client_id=rec.get("client_id"), user=(rec.get("subject") or {}).get("user"),
                   description=f"authorization code reused: {n} token(s) revoked")

    def on_refresh_replay(self, rec: dict[str, Any]) -> None:
        n = self.store.revoke_grant(rec["grant"])
        self.audit("refresh", False, client_id=rec.get("client_id"), user=rec.get("user"),
                   description=f"rotated refresh token replayed: {n} token(s) of the chain revoked")

    def session_alive(self, session_key: str) -> bool:
        doc = self.store.get_session(session_key)
        return doc is not None and doc["exp"].timestamp() > time.time()
