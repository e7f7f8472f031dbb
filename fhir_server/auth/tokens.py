"""Access tokens and id_tokens: JWTs signed RS256 by the server key.

Access-token claims::

    iss, aud (the FHIR base URL), sub (user or client id), client_id, exp, iat, jti,
    scope, kind (patient | practitioner | related | admin | system | <refused category>),
    grant (the authorization the token belongs to), and when known patient, encounter, fhirUser

Every token is also recorded in the store under its ``jti``; :meth:`TokenService.verify`
checks the signature, issuer, audience and expiry *and* that the record exists and is not
revoked, so revocation takes effect at once on every API process.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError

from fhir_server.auth.keys import SigningKey
from fhir_server.store.auth_store import AuthStore

__all__ = ["TokenService", "TokenError", "epoch_to_dt"]


class TokenError(Exception):
    """The token is not acceptable (message says why; never shown verbatim to attackers)."""


def epoch_to_dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass
class TokenService:
    key: SigningKey
    store: AuthStore
    issuer: str
    audience: str
    leeway: int = 5

    # --------------------------------------------------------------- minting
    def mint_access(self, *, sub: str, client_id: str, scope: str, kind: str, lifetime: int,
                    grant: str | None = None, patient: str | None = None, encounter: str | None = None,
                    fhir_user: str | None = None, user: str | None = None,
                    extra: dict[str, Any] | None = None, audience: str | None = None) -> tuple[str, dict[str, Any]]:
        """A signed access token and its claims; the token is recorded in the store."""
        now = int(time.time())
        jti = str(uuid.uuid4())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": audience or self.audience, "sub": sub, "client_id": client_id,
            "iat": now, "nbf": now - 1, "exp": now + lifetime, "jti": jti, "scope": scope, "kind": kind,
            "grant": grant or jti,
        }
        if patient:
            claims["patient"] = patient
        if encounter:
            claims["encounter"] = encounter
        if fhir_user:
            claims["fhirUser"] = fhir_user
        if extra:
            claims.update(extra)
        token = jwt.encode({"alg": "RS256", "kid": self.key.kid, "typ": "at+jwt"}, claims, self.key.key,
                           algorithms=["RS256"])
        self.store.save_token({"_id": jti, "kind": "access", "grant": claims["grant"], "client_id": client_id,
                               "user": user, "sub": sub, "scope": scope, "patient": patient,
                               "fhirUser": fhir_user, "iat": epoch_to_dt(now), "exp": epoch_to_dt(now + lifetime),
                               "tkind": kind})
        return token, claims

    def mint_id_token(self, *, sub: str, client_id: str, fhir_user: str | None, nonce: str | None,
                      auth_time: int | None, lifetime: int, profile: dict[str, Any] | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": sub, "aud": client_id, "iat": now,
                                  "exp": now + lifetime, "jti": secrets.token_urlsafe(16)}
        if fhir_user:
            claims["fhirUser"] = fhir_user
        if nonce:
            claims["nonce"] = nonce
        if auth_time:
            claims["auth_time"] = auth_time
        if profile:
            claims.update(profile)
        return jwt.encode({"alg": "RS256", "kid": self.key.kid, "typ": "JWT"}, claims, self.key.key,
                          algorithms=["RS256"])

    # ------------------------------------------------------------- checking
    def decode(self, token: str) -> dict[str, Any]:
        """Signature, issuer, audience and time checks (no store lookup)."""
        try:
            decoded = jwt.decode(token, self.key.key, algorithms=["RS256"])
        except (JoseError, ValueError) as exc:
            raise TokenError("invalid token signature or format") from exc
        if decoded.header.get("kid") not in (None, self.key.kid):
            raise TokenError("unknown signing key")
        claims = dict(decoded.claims)
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            exp={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise TokenError(f"token rejected: {exc.error}") from exc
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if self.audience not in auds:
            raise TokenError("token audience is not this server")
        return claims

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a live access token, or :class:`TokenError`."""
        claims = self.decode(token)
        rec = self.store.get_token(str(claims["jti"]))
        if rec is None or rec.get("kind") != "access":
            raise TokenError("unknown token")
        if rec.get("revoked"):
            raise TokenError("token revoked")
        return claims
