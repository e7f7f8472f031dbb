"""Registration of clients and users (CLI ``fhir-server admin …`` and the admin API).

Clients:

* ``public``        — a browser or mobile app: no secret, PKCE, ``none`` authentication;
* ``confidential``  — a server-side app with a secret (``client_secret_basic``/``_post``);
* ``asymmetric``    — authenticates with ``private_key_jwt`` (RS384/ES384) against a registered
  JWKS or JWKS URL; with ``category="system"`` it is a Backend Services client
  (``client_credentials``, ``system/…`` scopes: its write policy, e.g.
  ``system/DocumentReference.c system/Binary.c system/Bundle.c`` = may create documents for any
  patient and read nothing).

Users: ``patient`` (linked to ``Patient/…``), ``practitioner`` (``Practitioner/…``),
``related`` (``RelatedPerson/…``), ``admin``; ``insurer``, ``mutual`` and ``occupational``
may be registered to be recognised — and are always refused.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from fhir_server.access.policy import REFUSED_KINDS
from fhir_server.access.scopes import InvalidScope, parse_scopes
from fhir_server.auth.passwords import hash_password
from fhir_server.fhir import models
from fhir_server.store.auth_store import AuthStore

__all__ = ["register_client", "register_user", "AdminError", "CLIENT_KINDS", "USER_ROLES", "public_client"]

CLIENT_KINDS = ("public", "confidential", "asymmetric")
CLIENT_CATEGORIES = ("app", "ehr", "system", *sorted(REFUSED_KINDS))
USER_ROLES = ("patient", "practitioner", "related", "admin", *sorted(REFUSED_KINDS))
_ROLE_TYPES = {"patient": "Patient", "practitioner": "Practitioner", "related": "RelatedPerson"}


class AdminError(ValueError):
    """An invalid registration."""


def register_client(store: AuthStore, *, client_id: str, kind: str, scope: str, name: str | None = None,
                    category: str = "app", redirect_uris: list[str] | None = None, secret: str | None = None,
                    jwks: dict[str, Any] | None = None, jwks_uri: str | None = None,
                    grant_types: list[str] | None = None, may_label: bool = False,
                    may_introspect: bool = False) -> dict[str, Any]:
    """Register (or replace) a client; returns the registration, with ``client_secret`` once
    for a confidential client whose secret was generated."""
    if kind not in CLIENT_KINDS:
        raise AdminError(f"kind must be one of {', '.join(CLIENT_KINDS)}")
    if category not in CLIENT_CATEGORIES:
        raise AdminError(f"category must be one of {', '.join(CLIENT_CATEGORIES)}")
    if not client_id or len(client_id) > 200:
        raise AdminError("client_id is required (at most 200 characters)")
    try:
        parsed = parse_scopes(scope, models.is_resource_type)
    except InvalidScope as exc:
        raise AdminError(str(exc)) from exc
    if category in REFUSED_KINDS:
        grant_types = grant_types or ["authorization_code"]  # recorded to be recognised; always refused
    elif category == "system":
        if kind != "asymmetric":
            raise AdminError("backend services (system) clients authenticate with private_key_jwt: kind asymmetric")
        if parsed.context or any(r.level != "system" for r in parsed.rules):
            raise AdminError("a system client is allowed system/ scopes only")
        grant_types = grant_types or ["client_credentials"]
    else:
        if any(r.level == "system" for r in parsed.rules):
            raise AdminError("system/ scopes are for system clients only")
        if not redirect_uris:
            raise AdminError("an app needs at least one redirect URI")
        grant_types = grant_types or ["authorization_code", "refresh_token"]
    doc: dict[str, Any] = {"_id": client_id, "name": name or client_id, "kind": kind, "category": category,
                           "scope": parsed.render(), "redirect_uris": list(redirect_uris or []),
                           "grant_types": grant_types, "may_label": may_label, "may_introspect": may_introspect,
                           "created": datetime.now(UTC)}
    out = dict(doc)
    if kind == "confidential":
        if not secret:
            secret = secrets.token_urlsafe(32)
            out["client_secret"] = secret
        doc["secret_hash"] = hash_password(secret)
    if kind == "asymmetric":
        if not jwks and not jwks_uri:
            raise AdminError("an asymmetric client needs a JWKS or a JWKS URL")
        if jwks_uri and not (jwks_uri.startswith("https://") or jwks_uri.startswith("http://127.0.0.1")
                             or jwks_uri.startswith("http://localhost")):
            raise AdminError("the JWKS URL must use https")
        if jwks is not None:
            if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
                raise AdminError("jwks must be a JSON Web Key Set ({\"keys\": [...]})")
            if any("d" in k for k in jwks["keys"] if isinstance(k, dict)):
                raise AdminError("the JWKS must hold public keys only")
            doc["jwks"] = jwks
        if jwks_uri:
            doc["jwks_uri"] = jwks_uri
    store.put_client(doc)
    out.pop("secret_hash", None)
    return out


def public_client(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("secret_hash",)}


def register_user(store: AuthStore, *, username: str, password: str | None, role: str,
                  fhir_user: str | None = None, name: str | None = None,
                  upstream: str | None = None) -> dict[str, Any]:
    """Register (or replace) a user. ``upstream``: ``<issuer>|<sub>`` of the identity at the upstream
    OpenID Connect provider that may sign in as this user (then a password is optional)."""
    if role not in USER_ROLES:
        raise AdminError(f"role must be one of {', '.join(USER_ROLES)}")
    if not username or len(username) > 200:
        raise AdminError("username is required (at most 200 characters)")
    if password is None and not upstream:
        raise AdminError("a user needs a password or an upstream identity")
    if password is not None and len(password) < 8:
        raise AdminError("passwords have at least 8 characters")
    if upstream is not None and "|" not in upstream:
        raise AdminError("an upstream identity is written <issuer>|<sub>")
    expected = _ROLE_TYPES.get(role)
    if expected:
        parts = (fhir_user or "").split("/")
        if len(parts) != 2 or parts[0] != expected or not parts[1]:
            raise AdminError(f"a {role} user is linked to a {expected} resource: --fhir-user {expected}/<id>")
    doc: dict[str, Any] = {"_id": username, "role": role, "fhir_user": fhir_user, "name": name or username,
                           "password_hash": hash_password(password) if password else None,
                           "created": datetime.now(UTC)}
    if upstream:
        if (other := store.find_user_by_upstream(upstream)) is not None and other["_id"] != username:
            raise AdminError("this upstream identity already signs in another user")
        doc["upstream"] = upstream
    store.put_user(doc)
    return {k: v for k, v in doc.items() if k != "password_hash"}
