"""SMART Backend Services: client_credentials with private_key_jwt (RS384 / ES384)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from fhir_server.auth.admin import register_client
from fhir_server.main import Services, create_app
from tests.auth.helpers import FJ, bearer, build_secure, seed_two_patients

TOKEN_URL = "http://testserver/auth/token"
ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
WRITE_POLICY = "system/DocumentReference.c system/Binary.c system/Bundle.c"

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


class _Jwks(BaseHTTPRequestHandler):
    hits: list[str] = []
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[tuple[str, type[_Jwks]]]:
    handler = type("H", (_Jwks,), {"hits": [], "body": json.dumps(
        {"keys": [RSA.as_dict(private=False)]}).encode()})
    srv = HTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/jwks.json", handler
    srv.shutdown()


@pytest.fixture(scope="module")
def svc(mongo_uri: str, jwks_server: tuple[str, type[_Jwks]]) -> Iterator[Services]:
    s = build_secure(mongo_uri)
    seed_two_patients(s)
    store = s.extras["auth_store"]
    jwks = {"keys": [RSA.as_dict(private=False), EC.as_dict(private=False)]}
    register_client(store, client_id="lab", kind="asymmetric", category="system", jwks=jwks, scope=WRITE_POLICY)
    register_client(store, client_id="lab-url", kind="asymmetric", category="system", jwks_uri=jwks_server[0],
                    scope=WRITE_POLICY)
    register_client(store, client_id="insurer", kind="asymmetric", category="insurer", jwks=jwks,
                    scope="system/*.rs", grant_types=["client_credentials"])
    yield s
    s.repo.drop_everything()
    s.close()


@pytest.fixture(scope="module")
def http(svc: Services) -> Iterator[Any]:
    from starlette.testclient import TestClient

    with TestClient(create_app(svc.settings, svc), base_url="http://testserver") as c:
        yield c


def assertion(client_id: str = "lab", key: Any = RSA, alg: str = "RS384", headers: dict[str, Any] | None = None,
              **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "exp": now + 240, "iat": now,
            "jti": str(uuid.uuid4())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    head = {"alg": alg, "kid": key.kid, "typ": "JWT", **(headers or {})}
    return jwt.encode(head, body, key, algorithms=[alg])


def request_token(http: Any, client_assertion: str, scope: str = "system/DocumentReference.c") -> Any:
    return http.post("/auth/token", data={"grant_type": "client_credentials", "scope": scope,
                                          "client_assertion_type": ASSERTION, "client_assertion": client_assertion})


@pytest.mark.parametrize("key,alg", [(RSA, "RS384"), (EC, "ES384")])
def test_token_with_rs384_and_es384(http: Any, key: Any, alg: str) -> None:
    r = request_token(http, assertion(key=key, alg=alg), scope="system/DocumentReference.c system/Binary.c")
    assert r.status_code == 200, r.text
    tok = r.json()
    assert tok["token_type"] == "Bearer" and 0 < tok["expires_in"] <= 300
    assert "refresh_token" not in tok and "id_token" not in tok
    assert set(tok["scope"].split()) == {"system/DocumentReference.c", "system/Binary.c"}
    assert "no-store" in r.headers["cache-control"]


def test_write_policy_create_for_any_patient_read_nothing(http: Any) -> None:
    tok = request_token(http, assertion(), scope=WRITE_POLICY).json()["access_token"]
    h = bearer(tok)
    doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": "Patient/a"},
           "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/bin-a"}}]}
    r = http.post("/fhir/DocumentReference", json=doc, headers={**h, "Content-Type": FJ})
    assert r.status_code == 201, r.text
    assert http.get(f"/fhir/DocumentReference/{r.json()['id']}", headers=h).status_code == 403
    assert http.get("/fhir/Patient/a", headers=h).status_code == 403
    assert http.get("/fhir/DocumentReference", headers=h).status_code == 403


@pytest.mark.parametrize("case", [
    "rs256", "hs256", "wrong-key", "expired", "too-long", "no-exp", "iss-not-sub", "wrong-aud", "no-jti",
    "unknown-client", "foreign-jku", "jku-on-inline-jwks", "none-alg",
])
def test_bad_assertions(http: Any, case: str) -> None:
    if case == "rs256":
        a = assertion(alg="RS256")
    elif case == "hs256":
        from joserfc.jwk import OctKey

        a = jwt.encode({"alg": "HS256"}, {"iss": "lab", "sub": "lab", "aud": TOKEN_URL, "exp": int(time.time()) + 60,
                                          "jti": str(uuid.uuid4())}, OctKey.import_key(b"k" * 32), algorithms=["HS256"])
    elif case == "wrong-key":
        a = assertion(key=OTHER)
    elif case == "expired":
        a = assertion(exp=int(time.time()) - 120)
    elif case == "too-long":
        a = assertion(exp=int(time.time()) + 600)
    elif case == "no-exp":
        a = assertion(exp=None)
    elif case == "iss-not-sub":
        a = assertion(iss="someone-else")
    elif case == "wrong-aud":
        a = assertion(aud="http://testserver/fhir")
    elif case == "no-jti":
        a = assertion(jti=None)
    elif case == "unknown-client":
        a = assertion(client_id="nobody")
    elif case in ("foreign-jku", "jku-on-inline-jwks"):
        a = assertion(headers={"jku": "https://attacker.example/jwks.json"})
    else:
        header = jwt.encode({"alg": "RS384"}, {"a": 1}, RSA, algorithms=["RS384"]).split(".")[0]
        import base64

        def b64(d: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

        a = f"{b64({'alg': 'none'})}.{b64({'iss': 'lab', 'sub': 'lab', 'aud': TOKEN_URL})}."
        assert header
    r = request_token(http, a)
    assert r.status_code in (400, 401), (case, r.text)
    assert r.json()["error"] == "invalid_client", (case, r.text)


def test_jti_is_never_reused(http: Any) -> None:
    a = assertion()
    assert request_token(http, a).status_code == 200
    again = request_token(http, a)
    assert again.status_code in (400, 401) and again.json()["error"] == "invalid_client"


def test_scopes_are_limited_to_the_registered_policy(http: Any) -> None:
    r = request_token(http, assertion(), scope="system/Observation.rs")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = request_token(http, assertion(), scope="patient/DocumentReference.c")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = request_token(http, assertion(), scope="system/Nonsense.c")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = request_token(http, assertion(), scope="system/*.cruds")
    assert r.status_code == 200 and set(r.json()["scope"].split()) == set(WRITE_POLICY.split())


def test_refused_category_gets_no_token(http: Any) -> None:
    r = request_token(http, assertion(client_id="insurer"), scope="system/Patient.rs")
    assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"


def test_secret_or_none_auth_is_refused(http: Any) -> None:
    r = http.post("/auth/token", data={"grant_type": "client_credentials", "scope": "system/Binary.c",
                                       "client_id": "lab"})
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"


def test_jwks_url_client(http: Any, jwks_server: tuple[str, type[_Jwks]]) -> None:
    url, handler = jwks_server
    r = request_token(http, assertion(client_id="lab-url"))
    assert r.status_code == 200, r.text
    r = request_token(http, assertion(client_id="lab-url", headers={"jku": url}))
    assert r.status_code == 200, r.text
    before = list(handler.hits)
    foreign = url.replace("/jwks.json", "/other.json")
    r = request_token(http, assertion(client_id="lab-url", headers={"jku": foreign}))
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"
    assert "/other.json" not in handler.hits and handler.hits[: len(before)] == before
    r = request_token(http, assertion(client_id="lab-url", key=OTHER))
    assert r.status_code in (400, 401)


def test_backend_token_introspection_has_no_patient(http: Any) -> None:
    tok = request_token(http, assertion()).json()["access_token"]
    r = http.post("/auth/introspect", data={"token": tok, "client_assertion_type": ASSERTION,
                                            "client_assertion": assertion()})
    assert r.status_code == 200 and r.json()["active"] is True and r.json()["client_id"] == "lab"
    assert "patient" not in r.json()
    assert KeySet  # imported for symmetry with the other suites
