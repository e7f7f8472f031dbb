"""SMART App Launch: discovery, authorization code + PKCE, consent, tokens, refresh, introspection, revocation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from fhir_server.auth.admin import register_client, register_user
from fhir_server.main import Services, create_app
from tests.auth.flow import Flow, authorize, code_of, hidden_fields
from tests.auth.helpers import bearer, build_secure, query_of, seed_two_patients

BASE = "http://testserver"
CB = "https://app.example/cb"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"


@pytest.fixture(scope="module")
def svc(mongo_uri: str) -> Iterator[Services]:
    s = build_secure(mongo_uri)
    seed_two_patients(s)
    store = s.extras["auth_store"]
    register_client(store, client_id="pub", kind="public", redirect_uris=[CB], name="Public App",
                    scope="launch launch/patient openid fhirUser profile offline_access online_access patient/*.cruds "
                          "user/*.cruds")
    register_client(store, client_id="conf", kind="confidential", redirect_uris=[CB], secret="conf-secret-123",
                    scope="launch/patient openid fhirUser offline_access patient/*.rs")
    register_client(store, client_id="rs", kind="confidential", redirect_uris=[CB], secret="rs-secret-1234",
                    scope="patient/*.rs", may_introspect=True)
    register_client(store, client_id="ehr-app", kind="public", redirect_uris=[CB],
                    scope="launch openid fhirUser patient/*.rs user/*.rs")
    register_user(store, username="alice", password="alice-password", role="patient", fhir_user="Patient/a")
    register_user(store, username="drhouse", password="house-password", role="practitioner",
                  fhir_user="Practitioner/dr")
    register_user(store, username="acme", password="acme-password", role="insurer")
    yield s
    s.repo.drop_everything()
    s.close()


@pytest.fixture
def http(svc: Services) -> Iterator[Any]:
    from starlette.testclient import TestClient

    with TestClient(create_app(svc.settings, svc), base_url=BASE, follow_redirects=False) as c:
        yield c


def token_request(http: Any, data: dict[str, str], auth: tuple[str, str] | None = None) -> Any:
    return http.post("/auth/token", data=data, auth=auth)


def full_flow(http: Any, scope: str = "launch/patient openid fhirUser offline_access patient/*.rs",
              client_id: str = "pub", user: tuple[str, str] = ("alice", "alice-password"), **kw: Any
              ) -> tuple[Flow, dict[str, Any]]:
    flow = Flow(client_id, CB, scope)
    q = code_of(authorize(http, BASE, flow, *user, **kw))
    data = {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CB,
            "code_verifier": flow.verifier, "client_id": client_id}
    r = token_request(http, data)
    assert r.status_code == 200, r.text
    return flow, r.json()


# ------------------------------------------------------------------- discovery
def test_discovery(http: Any) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        r = http.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        c = r.json()
        assert c["code_challenge_methods_supported"] == ["S256"]
        for key in ("authorization_endpoint", "token_endpoint", "introspection_endpoint", "revocation_endpoint",
                    "management_endpoint", "jwks_uri"):
            assert c[key].startswith("http://testserver/")
        assert {"launch-standalone", "launch-ehr", "client-public", "client-confidential-symmetric",
                "client-confidential-asymmetric", "context-standalone-patient", "context-ehr-patient",
                "context-ehr-encounter", "context-banner", "permission-patient", "permission-user",
                "permission-offline", "permission-v1", "permission-v2", "sso-openid-connect"} <= set(c["capabilities"])
        assert "private_key_jwt" in c["token_endpoint_auth_methods_supported"]
        assert set(c["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
        assert "client_credentials" in c["grant_types_supported"]
    assert http.get("/.well-known/openid-configuration").json()["issuer"] == "http://testserver/fhir"
    keys = http.get("/auth/jwks").json()["keys"]
    assert keys and all("d" not in k for k in keys)
    sec = http.get("/fhir/metadata").json()["rest"][0]["security"]
    uris = sec["extension"][0]
    assert uris["url"].endswith("oauth-uris")
    assert {e["url"] for e in uris["extension"]} >= {"authorize", "token"}


# -------------------------------------------------------- authorization code
def test_standalone_patient_launch(http: Any, svc: Services) -> None:
    flow = Flow("pub", CB, "launch/patient openid fhirUser offline_access patient/*.rs")
    final = authorize(http, BASE, flow, "alice", "alice-password")
    q = code_of(final)
    assert final.headers["location"].startswith(CB + "?")
    assert q["state"] == flow.state
    r = token_request(http, {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CB,
                             "code_verifier": flow.verifier, "client_id": "pub"})
    assert r.status_code == 200, r.text
    assert "no-store" in r.headers["cache-control"]
    tok = r.json()
    assert tok["token_type"] == "Bearer" and tok["expires_in"] > 0 and tok["patient"] == "a"
    assert set(tok["scope"].split()) == {"launch/patient", "openid", "fhirUser", "offline_access", "patient/*.rs"}
    assert tok["need_patient_banner"] is True and tok["smart_style_url"]
    assert tok["refresh_token"]
    claims = jwt.decode(tok["access_token"], KeySet.import_key_set(http.get("/auth/jwks").json())).claims
    assert claims["jti"] and claims["aud"] == "http://testserver/fhir"
    idt = jwt.decode(tok["id_token"], KeySet.import_key_set(http.get("/auth/jwks").json()), algorithms=["RS256"])
    assert idt.header["alg"] == "RS256" and idt.claims["fhirUser"] == "Patient/a" and idt.claims["aud"] == "pub"
    h = bearer(tok["access_token"])
    assert http.get("/fhir/Patient/a", headers=h).status_code == 200
    assert http.get(idt.claims["fhirUser"].join(("/fhir/", "")), headers=h).status_code == 200
    assert http.get("/fhir/Patient/b", headers=h).status_code == 404


def test_authorize_by_post_and_confidential_client(http: Any) -> None:
    flow = Flow("conf", CB, "launch/patient patient/Observation.rs")
    q = code_of(authorize(http, BASE, flow, "alice", "alice-password", method="POST"))
    data = {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CB,
            "code_verifier": flow.verifier}
    assert token_request(http, data).status_code in (400, 401)  # no client authentication: code not spent
    r = token_request(http, data, auth=("conf", "conf-secret-123"))
    assert r.status_code == 200, r.text
    assert "refresh_token" not in r.json()  # no offline_access / online_access requested
    r2 = token_request(http, data, auth=("conf", "wrong-secret"))
    assert r2.status_code in (400, 401) and r2.json()["error"] == "invalid_client"


def test_consent_narrowing_is_exact(http: Any, svc: Services) -> None:
    scope = "launch/patient openid patient/Observation.rs patient/Condition.rs patient/Patient.rs"
    _, tok = full_flow(http, scope=scope, keep=["launch/patient", "patient/Observation.rs", "patient/Patient.rs"],
                       categories={"patient/Observation.rs": f"{OBS_CAT}|laboratory"})
    assert set(tok["scope"].split()) == {"launch/patient", f"patient/Observation.rs?category={OBS_CAT}|laboratory",
                                         "patient/Patient.rs"}
    assert "id_token" not in tok
    h = bearer(tok["access_token"])
    assert http.get("/fhir/Condition/cond-a", headers=h).status_code == 403
    found = {e["resource"]["id"] for e in http.get("/fhir/Observation", headers=h).json().get("entry", [])}
    assert found == {"obs-a-1"}


def test_denied_consent(http: Any) -> None:
    flow = Flow("pub", CB, "launch/patient patient/*.rs")
    final = authorize(http, BASE, flow, "alice", "alice-password", decision="deny")
    q = code_of(final)
    assert q["error"] == "access_denied" and q["state"] == flow.state


@pytest.mark.parametrize("change,error", [
    ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge_method": None}, "invalid_request"),
    ({"aud": "https://evil.example/fhir"}, "invalid_request"),
    ({"scope": "patient/Nonsense.rs"}, "invalid_scope"),
    ({"scope": "patient/Observation.xyz"}, "invalid_scope"),
    ({"launch": "not-a-launch"}, "invalid_request"),
])
def test_bad_authorize_requests_redirect_with_error(http: Any, change: dict[str, Any], error: str) -> None:
    flow = Flow("pub", CB, "launch/patient patient/*.rs")
    params = {**flow.params(), **change}
    r = http.get("/auth/authorize", params={k: v for k, v in params.items() if v is not None})
    assert r.status_code == 302
    q = query_of(r.headers["location"])
    assert r.headers["location"].startswith(CB) and q["error"] == error and q["state"] == flow.state


def test_wrong_redirect_uri_is_never_followed(http: Any) -> None:
    for bad in ("https://evil.example/cb", CB + "/", CB + "?x=1", None):
        flow = Flow("pub", bad or "", "patient/*.rs")
        params = flow.params()
        if bad is None:
            params.pop("redirect_uri")
        r = http.get("/auth/authorize", params=params)
        assert r.status_code == 400 and "location" not in r.headers
    r = http.get("/auth/authorize", params={**Flow("nobody", CB, "patient/*.rs").params()})
    assert r.status_code == 400 and "location" not in r.headers


def test_token_request_checks(http: Any) -> None:
    flow = Flow("pub", CB, "launch/patient patient/*.rs")
    q = code_of(authorize(http, BASE, flow, "alice", "alice-password"))
    base = {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CB, "client_id": "pub"}
    r = token_request(http, base)  # missing verifier: refused, and the code is spent
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    for case in ("wrong-verifier", "wrong-redirect", "other-client"):
        flow = Flow("pub", CB, "launch/patient patient/*.rs")
        q = code_of(authorize(http, BASE, flow, "alice", "alice-password"))
        data = {**base, "code": q["code"], "code_verifier": flow.verifier}
        if case == "wrong-verifier":
            data["code_verifier"] = "x" * 50
        elif case == "wrong-redirect":
            data["redirect_uri"] = "https://app.example/other"
        else:
            data["client_id"] = "ehr-app"
        r = token_request(http, data)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", (case, r.text)


def test_code_reuse_revokes_what_it_produced(http: Any) -> None:
    flow = Flow("pub", CB, "launch/patient offline_access patient/*.rs")
    q = code_of(authorize(http, BASE, flow, "alice", "alice-password"))
    data = {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CB, "client_id": "pub",
            "code_verifier": flow.verifier}
    first = token_request(http, data)
    assert first.status_code == 200
    again = token_request(http, data)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert http.get("/fhir/Patient/a", headers=bearer(first.json()["access_token"])).status_code == 401
    r = token_request(http, {"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"],
                             "client_id": "pub"})
    assert r.status_code == 400


def test_expired_code(http: Any, svc: Services) -> None:
    flow = Flow("pub", CB, "launch/patient patient/*.rs")
    q = code_of(authorize(http, BASE, flow, "alice", "alice-password"))
    from fhir_server.auth.oauth import sha256
    from fhir_server.auth.tokens import epoch_to_dt

    svc.extras["auth_store"].codes.update_one({"_id": sha256(q["code"])}, {"$set": {"exp": epoch_to_dt(0)}})
    r = token_request(http, {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CB,
                             "client_id": "pub", "code_verifier": flow.verifier})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


# ---------------------------------------------------------------------- refresh
def test_refresh_narrower_wider_rotation_and_replay(http: Any) -> None:
    _, tok = full_flow(http, scope="launch/patient offline_access patient/Observation.rs patient/Patient.rs")
    rt = tok["refresh_token"]
    wider = token_request(http, {"grant_type": "refresh_token", "refresh_token": rt, "client_id": "pub",
                                 "scope": "patient/Observation.cruds"})
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    other_client = token_request(http, {"grant_type": "refresh_token", "refresh_token": rt, "client_id": "ehr-app"})
    assert other_client.status_code == 400 and other_client.json()["error"] == "invalid_grant"
    narrower = token_request(http, {"grant_type": "refresh_token", "refresh_token": rt, "client_id": "pub",
                                    "scope": "patient/Observation.r"})
    assert narrower.status_code == 200, narrower.text
    body = narrower.json()
    assert body["scope"] == "patient/Observation.r" and body["refresh_token"] != rt  # rotated (public client)
    h = bearer(body["access_token"])
    assert http.get("/fhir/Observation/obs-a-1", headers=h).status_code == 200
    assert http.get("/fhir/Patient/a", headers=h).status_code == 403
    new_rt = body["refresh_token"]
    again = token_request(http, {"grant_type": "refresh_token", "refresh_token": new_rt, "client_id": "pub"})
    assert again.status_code == 200 and set(again.json()["scope"].split()) >= {"patient/Observation.rs"}
    replay = token_request(http, {"grant_type": "refresh_token", "refresh_token": rt, "client_id": "pub"})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # the whole chain is revoked
    latest = again.json()
    assert http.get("/fhir/Patient/a", headers=bearer(latest["access_token"])).status_code == 401
    r = token_request(http, {"grant_type": "refresh_token", "refresh_token": latest["refresh_token"],
                             "client_id": "pub"})
    assert r.status_code == 400


def test_confidential_refresh_does_not_rotate(http: Any) -> None:
    flow = Flow("conf", CB, "launch/patient offline_access patient/*.rs")
    q = code_of(authorize(http, BASE, flow, "alice", "alice-password"))
    tok = token_request(http, {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CB,
                               "code_verifier": flow.verifier}, auth=("conf", "conf-secret-123")).json()
    for _ in range(2):
        r = token_request(http, {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
                          auth=("conf", "conf-secret-123"))
        assert r.status_code == 200 and r.json()["refresh_token"] == tok["refresh_token"]


# ------------------------------------------------- introspection and revocation
def test_introspection_and_revocation(http: Any) -> None:
    _, tok = full_flow(http)
    at = tok["access_token"]
    r = http.post("/auth/introspect", data={"token": at}, auth=("rs", "rs-secret-1234"))
    body = r.json()
    assert r.status_code == 200 and body["active"] is True
    assert body["client_id"] == "pub" and body["patient"] == "a" and body["fhirUser"] == "Patient/a"
    assert body["exp"] > 0 and "patient/*.rs" in body["scope"]
    assert http.post("/auth/introspect", data={"token": at}).status_code == 401  # unauthenticated
    assert http.post("/auth/introspect", data={"token": "garbage"},
                     auth=("rs", "rs-secret-1234")).json() == {"active": False}
    not_mine = http.post("/auth/introspect", data={"token": at}, auth=("conf", "conf-secret-123"))
    assert not_mine.json() == {"active": False}
    assert http.post("/auth/revoke", data={"token": at, "client_id": "pub"}).status_code == 200
    assert http.post("/auth/introspect", data={"token": at}, auth=("rs", "rs-secret-1234")).json() == {"active": False}
    assert http.get("/fhir/Patient/a", headers=bearer(at)).status_code == 401
    # revoking the refresh token revokes the grant
    assert http.post("/auth/revoke", data={"token": tok["refresh_token"], "client_id": "pub"}).status_code == 200
    r = token_request(http, {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"], "client_id": "pub"})
    assert r.status_code == 400


def test_management_page_lists_and_revokes(http: Any) -> None:
    _, tok = full_flow(http)
    page = http.get("/auth/manage")
    assert page.status_code == 200 and "Public App" in page.text
    fields = hidden_fields(page.text)
    r = http.post("/auth/manage", data={"csrf": fields["csrf"], "grant": fields["grant"]})
    assert r.status_code == 200 and "revoked" in r.text
    statuses = {http.get("/fhir/Patient/a", headers=bearer(tok["access_token"])).status_code}
    assert statuses <= {200, 401}
    bad = http.post("/auth/manage", data={"csrf": "forged", "grant": fields["grant"]})
    assert bad.status_code == 403


def test_login_is_csrf_protected_and_refuses_bad_passwords(http: Any) -> None:
    flow = Flow("pub", CB, "launch/patient patient/*.rs")
    r = http.get("/auth/authorize", params=flow.params())
    page = http.get(r.headers["location"])
    fields = hidden_fields(page.text)
    bad = http.post("/auth/login", data={**fields, "csrf": "forged", "username": "alice", "password": "alice-password"})
    assert bad.status_code == 403
    wrong = http.post("/auth/login", data={**fields, "username": "alice", "password": "nope-nope"})
    assert wrong.status_code == 401 and "wrong password" in wrong.text
    http.cookies.clear()
    stolen = http.post("/auth/login", data={**fields, "username": "alice", "password": "alice-password"})
    assert stolen.status_code == 403  # the pending request belongs to another browser
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_refused_user_category_cannot_sign_in(http: Any) -> None:
    flow = Flow("pub", CB, "launch/patient patient/*.rs")
    r = http.get("/auth/authorize", params=flow.params())
    fields = hidden_fields(http.get(r.headers["location"]).text)
    out = http.post("/auth/login", data={**fields, "username": "acme", "password": "acme-password"})
    assert out.status_code == 403


# ------------------------------------------------------------------ EHR launch
def test_ehr_launch(http: Any, svc: Services) -> None:
    from tests.auth.helpers import mint

    dr = mint(svc, kind="practitioner", scope="user/*.rs openid fhirUser", fhir_user="Practitioner/dr",
              sub="drhouse")
    assert http.post("/auth/launch", data={"client_id": "ehr-app", "patient": "b"},
                     headers=bearer(dr)).status_code == 403  # no relationship with b
    r = http.post("/auth/launch", data={"client_id": "ehr-app", "patient": "a", "encounter": "enc-1"},
                  headers=bearer(dr))
    assert r.status_code == 201, r.text
    launch = r.json()["launch"]
    flow = Flow("ehr-app", CB, "launch openid fhirUser patient/*.rs", extra={"launch": launch})
    q = code_of(authorize(http, BASE, flow, "drhouse", "house-password"))
    tok = token_request(http, {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CB,
                               "client_id": "ehr-app", "code_verifier": flow.verifier}).json()
    assert tok["patient"] == "a" and tok["encounter"] == "enc-1" and tok["need_patient_banner"] is False
    assert tok["fhirContext"] == [{"reference": "Encounter/enc-1"}]
    assert http.get("/fhir/Observation/obs-a-1", headers=bearer(tok["access_token"])).status_code == 200
    flow2 = Flow("ehr-app", CB, "launch patient/*.rs", extra={"launch": launch})
    r = http.get("/auth/authorize", params=flow2.params())  # single use
    assert r.status_code == 302 and query_of(r.headers["location"]).get("error") == "invalid_request"


def test_ehr_launch_bound_to_user(http: Any, svc: Services) -> None:
    from tests.auth.helpers import mint

    dr = mint(svc, kind="practitioner", scope="user/*.rs", fhir_user="Practitioner/dr", sub="drhouse")
    launch = http.post("/auth/launch", data={"client_id": "ehr-app", "patient": "a"}, headers=bearer(dr)).json()["launch"]
    flow = Flow("ehr-app", CB, "launch patient/*.rs", extra={"launch": launch})
    start = http.get("/auth/authorize", params=flow.params())
    from tests.auth.flow import login_and_consent

    with pytest.raises(AssertionError):
        login_and_consent(http, BASE, start, "alice", "alice-password")


def test_practitioner_standalone_chooses_patient(http: Any) -> None:
    flow = Flow("pub", CB, "launch/patient patient/*.rs")
    q = code_of(authorize(http, BASE, flow, "drhouse", "house-password", patient="a"))
    tok = token_request(http, {"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CB,
                               "client_id": "pub", "code_verifier": flow.verifier}).json()
    assert tok["patient"] == "a"
    http.cookies.clear()
    flow = Flow("pub", CB, "launch/patient patient/*.rs")
    final = authorize(http, BASE, flow, "drhouse", "house-password", patient="b")
    assert final.status_code == 400  # no relationship with b: not offered, not accepted
