"""Sign-in through an upstream OpenID Connect identity provider (optional).

Configured with ``FHIR_SERVER_AUTH_OIDC_UPSTREAM`` (the provider's issuer URL),
``FHIR_SERVER_AUTH_OIDC_CLIENT_ID`` and ``FHIR_SERVER_AUTH_OIDC_CLIENT_SECRET``; the login page
then offers "Sign in with …". The flow is the authorization code flow with PKCE S256, ``state``
bound to the browser and ``nonce``; the ``id_token`` is verified with the provider's published keys
(issuer, audience, expiry, nonce). A provider identity (``iss|sub``) signs in the local user
registered with that ``upstream`` subject — never anyone else, and nobody is created on the fly.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

__all__ = ["UpstreamProvider", "UpstreamError"]

ID_TOKEN_ALGS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class UpstreamError(Exception):
    """The upstream sign-in failed (the message is safe to show)."""


@dataclass
class UpstreamProvider:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    timeout: float = 10.0

    def __post_init__(self) -> None:
        self._config: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.issuer

    def configuration(self) -> dict[str, Any]:
        with self._lock:
            if self._config and self._config[0] > time.monotonic():
                return self._config[1]
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        conf = httpx.get(url, timeout=self.timeout).json()
        if conf.get("issuer", "").rstrip("/") != self.issuer.rstrip("/"):
            raise UpstreamError("the identity provider's configuration names another issuer")
        with self._lock:
            self._config = (time.monotonic() + 3600, conf)
        return conf

    def start(self) -> tuple[str, dict[str, str]]:
        """The URL to send the browser to, and the secrets to keep until the callback."""
        conf = self.configuration()
        state, nonce, verifier = (secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        params = {"response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
                  "scope": "openid", "state": state, "nonce": nonce, "code_challenge": challenge,
                  "code_challenge_method": "S256"}
        return f"{conf['authorization_endpoint']}?{urlencode(params)}", {"state": state, "nonce": nonce,
                                                                          "verifier": verifier}

    def finish(self, code: str, kept: dict[str, str]) -> str:
        """Exchange the code and verify the id_token; returns ``iss|sub``."""
        conf = self.configuration()
        resp = httpx.post(conf["token_endpoint"], data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
            "code_verifier": kept["verifier"]}, auth=(self.client_id, self.client_secret), timeout=self.timeout)
        if resp.status_code != 200:
            raise UpstreamError("the identity provider refused the sign-in")
        id_token = resp.json().get("id_token")
        if not id_token:
            raise UpstreamError("the identity provider returned no id_token")
        keys = KeySet.import_key_set(httpx.get(conf["jwks_uri"], timeout=self.timeout).json())
        try:
            claims = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGS).claims
            jwt.JWTClaimsRegistry(leeway=30, iss={"essential": True, "value": conf["issuer"]},
                                  sub={"essential": True}, exp={"essential": True},
                                  nonce={"essential": True, "value": kept["nonce"]}).validate(claims)
        except (JoseError, ValueError) as exc:
            raise UpstreamError("the id_token could not be verified") from exc
        aud = claims.get("aud")
        if self.client_id not in (aud if isinstance(aud, list) else [aud]):
            raise UpstreamError("the id_token was issued to another client")
        return f"{claims['iss']}|{claims['sub']}"
