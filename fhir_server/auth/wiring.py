"""Security wired into the server: ``install(services)`` (picked up by ``main.EXTENSIONS``).

With ``FHIR_SERVER_AUTH=on`` (the default):

* ``services.set_policy(SmartPolicy(...))`` — the one access policy behind the Guard, with the
  professional-relationship rules (:class:`~fhir_server.access.rules.ConsentRelationship`);
* ``services.authenticator`` — Bearer token → :class:`~fhir_server.rest.context.Caller`
  (401 + ``WWW-Authenticate`` otherwise);
* ``services.security`` — ``CapabilityStatement.rest.security`` with the ``oauth-uris`` extension;
* ``services.routers`` — discovery and the ``/auth/*`` endpoints;
* ``services.extras["auth"]`` — the :class:`~fhir_server.auth.service.AuthService` (tests, CLI).

With ``FHIR_SERVER_AUTH=off`` (refused in production mode) the API is open and the server
says so loudly at start-up and every minute while it serves requests.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any
from urllib.parse import urlparse

import httpx

from fhir_server.access.policy import SmartPolicy
from fhir_server.access.rules import ConsentRelationship
from fhir_server.auth.keys import load_signing_key
from fhir_server.auth.oauth import SmartServer
from fhir_server.auth.service import AuthService
from fhir_server.auth.tokens import TokenService
from fhir_server.auth.upstream import UpstreamProvider
from fhir_server.rest.context import Caller
from fhir_server.store.auth_store import AuthStore

__all__ = ["install", "JwksFetcher"]

log = logging.getLogger("fhir_server.auth")

_BANNER = ("\n" + "!" * 78 + "\n!!  FHIR_SERVER_AUTH=off: the FHIR API is served WITHOUT authentication or access"
           "\n!!  control. Development only; never expose this server.\n" + "!" * 78)


class JwksFetcher:
    """Fetches a client's registered JWKS URL (never any other), with a short cache."""

    def __init__(self, ttl: float = 300.0, timeout: float = 5.0) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(url)
            if hit and hit[0] > now:
                return hit[1]
        resp = httpx.get(url, timeout=self.timeout, follow_redirects=False)
        resp.raise_for_status()
        data = resp.json()
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("not a JWKS")
        with self._lock:
            self._cache[url] = (now + self.ttl, data)
        return data


def _auth_off(services: Any) -> None:
    log.warning(_BANNER)
    last = [time.monotonic()]

    def anonymous(request: Any) -> Caller:
        now = time.monotonic()
        if now - last[0] > 60:
            last[0] = now
            log.warning("FHIR_SERVER_AUTH=off: serving the FHIR API without authentication")
        return Caller()

    services.authenticator = anonymous


def install(services: Any) -> None:
    settings = services.settings
    if settings.auth == "off":
        if settings.mode == "production":
            raise RuntimeError("FHIR_SERVER_AUTH=off is refused in production mode")
        _auth_off(services)
        return
    repo = services.repo
    fhir_base = settings.fhir_base
    parsed = urlparse(fhir_base)
    origin = f"{parsed.scheme}://{parsed.netloc}"
    auth_url = (settings.auth_url or f"{origin}/auth").rstrip("/")
    issuer = (settings.auth_issuer or fhir_base).rstrip("/")
    if settings.mode == "production" and parsed.scheme != "https":
        log.error("production mode with a non-https base URL (%s): tokens and cookies need TLS", fhir_base)
    store = AuthStore(repo)
    store.ensure_indexes()
    key = load_signing_key(settings)
    tokens = TokenService(key, store, issuer=issuer, audience=fhir_base)

    def find_owner_docs(binary_id: str) -> list[dict[str, Any]]:
        refs = [f"Binary/{binary_id}", f"{fhir_base}/Binary/{binary_id}"]
        return list(repo.find_raw("DocumentReference", {"del": False, "res.content.attachment.url": {"$in": refs}},
                                  limit=20))

    def find_doc(type_: str, id_: str) -> dict[str, Any] | None:
        stored = repo.current(type_, id_)
        if stored is None:
            return None
        return {"_id": stored.id, "res": stored.resource, "sp": stored.owner, "del": stored.deleted}

    policy = SmartPolicy(ConsentRelationship(repo), find_owner_docs, find_doc)
    services.set_policy(policy)

    auditor = services.extras.get("auditor")

    def audit(event: str, success: bool, *, client_id: str | None = None, user: str | None = None,
              fhir_user: str | None = None, kind: str | None = None, patient: str | None = None,
              address: str | None = None, description: str | None = None) -> None:
        if auditor is None:
            return
        caller = Caller(kind=kind or ("anonymous" if not user else "user"), subject=user, client_id=client_id,
                        fhir_user=fhir_user)
        auditor.security(event, success=success, caller=caller, address=address, patient=patient,
                         description=description)

    server = SmartServer(store=store, tokens=tokens, token_url=f"{auth_url}/token", audience=fhir_base,
                         access_lifetime=settings.auth_access_token_lifetime,
                         backend_lifetime=settings.auth_backend_token_lifetime,
                         code_lifetime=settings.auth_code_lifetime, offline_lifetime=settings.auth_offline_lifetime,
                         session_lifetime=settings.auth_session_lifetime,
                         smart_style_url=settings.auth_smart_style_url or f"{auth_url}/smart-style.json",
                         fetch_jwks=JwksFetcher(), audit=audit)

    def patient_label(pid: str) -> str:
        stored = repo.current("Patient", pid)
        names = ((stored.resource or {}).get("name") or []) if stored else []
        if names:
            n = names[0]
            text = n.get("text") or " ".join([*n.get("given", []), n.get("family", "")]).strip()
            if text:
                return f"{text} (Patient/{pid})"
        return f"Patient/{pid}"

    upstream = None
    if settings.auth_oidc_upstream:
        if not (settings.auth_oidc_client_id and settings.auth_oidc_client_secret):
            raise RuntimeError("FHIR_SERVER_AUTH_OIDC_UPSTREAM needs FHIR_SERVER_AUTH_OIDC_CLIENT_ID and _SECRET")
        upstream = UpstreamProvider(settings.auth_oidc_upstream, settings.auth_oidc_client_id,
                                    settings.auth_oidc_client_secret, f"{auth_url}/login/upstream/callback")
    auth = AuthService(store=store, server=server, tokens=tokens, policy=policy, fhir_base=fhir_base,
                       auth_url=auth_url, issuer=issuer, secure_cookies=parsed.scheme == "https",
                       session_lifetime=settings.auth_session_lifetime, launch_lifetime=settings.auth_launch_lifetime,
                       rate_limit=settings.auth_rate_limit, login_rate_limit=settings.auth_login_rate_limit,
                       audit=audit, jwks=key.jwks(), patient_label=patient_label,
                       csrf_key=hashlib.sha256(b"fhir-server login csrf " + (settings.secret_key or "").encode()
                                               ).digest() if settings.secret_key else None,
                       upstream=upstream)
    services.extras["auth"] = auth
    services.extras["auth_store"] = store
    services.extras["tokens"] = tokens

    def authenticate(request: Any) -> Caller:
        return auth.authenticate(request.headers.get("authorization"),
                                 request.client.host if request.client else None)

    services.authenticator = authenticate
    services.security = auth.security()
    services.invalidate_capability()

    from fhir_server.api.auth_routes import build_router

    services.routers.append(build_router(auth, fhir_base, parsed.scheme == "https"))
