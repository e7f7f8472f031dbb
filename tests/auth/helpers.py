"""Shared fixtures and helpers of the security tests (imported by the conftest of tests/auth, access, audit)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest

from fhir_server.main import Services, build_services, create_app
from fhir_server.rest.context import Caller, RequestContext
from tests.conftest import make_settings

BASE = "http://testserver/fhir"
AUTH = "http://testserver/auth"
FJ = "application/fhir+json"
SYSTEM = Caller(kind="system", subject="seeder", client_id="seeder", scopes=frozenset({"system/*.cruds"}),
                claims={"may_label": True})


def secure_settings(mongo_uri: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {"auth": "on", "auth_rate_limit": 10_000, "auth_login_rate_limit": 10_000}
    values.update(overrides)
    return make_settings(mongo_uri, **values)


def build_secure(mongo_uri: str, **overrides: Any) -> Services:
    return build_services(secure_settings(mongo_uri, **overrides))


def system_ctx(svc: Services) -> RequestContext:
    return RequestContext(base_url=svc.settings.fhir_base, caller=SYSTEM)


def put(svc: Services, resource: dict[str, Any]) -> dict[str, Any]:
    """Store a resource with the given id as the seeding system client."""
    result = svc.fhir.update(system_ctx(svc), resource["resourceType"], resource["id"], resource)
    return dict(result.stored.resource)


def mint(svc: Services, *, kind: str, scope: str, patient: str | None = None, fhir_user: str | None = None,
         client_id: str = "test-app", sub: str = "someone", lifetime: int = 300,
         audience: str | None = None, extra: dict[str, Any] | None = None) -> str:
    tokens = svc.extras["tokens"]
    token, _ = tokens.mint_access(sub=sub, client_id=client_id, scope=scope, kind=kind, lifetime=lifetime,
                                  patient=patient, fhir_user=fhir_user, user=sub, audience=audience, extra=extra)
    return str(token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


def seed_two_patients(svc: Services) -> None:
    """Patients a and b, each with observations (laboratory and vital-signs), a condition, a document."""
    obs_cat = "http://terminology.hl7.org/CodeSystem/observation-category"
    for p in ("a", "b"):
        put(svc, {"resourceType": "Patient", "id": p, "name": [{"family": f"Family-{p}", "given": ["Pat"]}]})
        for n, cat in ((1, "laboratory"), (2, "vital-signs")):
            put(svc, {"resourceType": "Observation", "id": f"obs-{p}-{n}", "status": "final",
                      "category": [{"coding": [{"system": obs_cat, "code": cat}]}],
                      "code": {"text": f"test {n}"}, "subject": {"reference": f"Patient/{p}"}})
        put(svc, {"resourceType": "Condition", "id": f"cond-{p}", "subject": {"reference": f"Patient/{p}"},
                  "code": {"text": "condition"}})
        put(svc, {"resourceType": "Binary", "id": f"bin-{p}", "contentType": "text/plain",
                  "data": base64.b64encode(f"secret of {p}".encode()).decode(),
                  "securityContext": {"reference": f"Patient/{p}"}})
        put(svc, {"resourceType": "DocumentReference", "id": f"doc-{p}", "status": "current",
                  "subject": {"reference": f"Patient/{p}"},
                  "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/bin-{p}"}}]})
    put(svc, {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "House"}]})
    put(svc, {"resourceType": "Practitioner", "id": "dr2", "name": [{"family": "Other"}]})
    put(svc, {"resourceType": "Consent", "id": "consent-a-dr", "status": "active",
              "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                    "code": "patient-privacy"}]},
              "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
              "patient": {"reference": "Patient/a"},
              "provision": {"type": "permit", "actor": [{"role": {"coding": [{
                  "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                  "reference": {"reference": "Practitioner/dr"}}]}})


@pytest.fixture(scope="module")
def secure_services(mongo_uri: str) -> Iterator[Services]:
    svc = build_secure(mongo_uri)
    seed_two_patients(svc)
    yield svc
    svc.repo.drop_everything()
    svc.close()


@pytest.fixture(scope="module")
def secure_client(secure_services: Services) -> Iterator[Any]:
    from starlette.testclient import TestClient

    app = create_app(secure_services.settings, secure_services)
    with TestClient(app, base_url="http://testserver", follow_redirects=False) as c:
        yield c


__all__ = ["AUTH", "BASE", "FJ", "SYSTEM", "bearer", "build_secure", "mint", "pkce", "put", "query_of",
           "secure_client", "secure_services", "secure_settings", "seed_two_patients", "system_ctx", "urlencode"]
