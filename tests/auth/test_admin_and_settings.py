"""Administration (CLI and API), rate limits, the development switch and production refusals."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fhir_server.config import Settings
from fhir_server.main import Services, build_services, create_app
from tests.auth.flow import Flow
from tests.auth.helpers import bearer, build_secure, mint, secure_settings
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def svc(mongo_uri: str) -> Iterator[Services]:
    s = build_secure(mongo_uri, auth_rate_limit=5, auth_login_rate_limit=3)
    yield s
    s.repo.drop_everything()
    s.close()


@pytest.fixture(scope="module")
def http(svc: Services) -> Iterator[Any]:
    from starlette.testclient import TestClient

    with TestClient(create_app(svc.settings, svc), base_url="http://testserver", follow_redirects=False) as c:
        yield c


def test_admin_api(http: Any, svc: Services) -> None:
    admin = bearer(mint(svc, kind="admin", scope="openid", sub="root", fhir_user=None))
    patient = bearer(mint(svc, kind="patient", scope="patient/*.rs", patient="a", fhir_user="Patient/a"))
    body = {"client_id": "api-app", "kind": "confidential", "redirect_uris": ["https://x.example/cb"],
            "scope": "launch/patient patient/*.rs"}
    assert http.post("/auth/admin/clients", json=body).status_code == 401
    assert http.post("/auth/admin/clients", json=body, headers=patient).status_code == 403
    r = http.post("/auth/admin/clients", json=body, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["client_secret"] and "secret_hash" not in r.json()
    listed = http.get("/auth/admin/clients", headers=admin).json()
    assert any(c["_id"] == "api-app" and "secret_hash" not in c for c in listed)
    bad = http.post("/auth/admin/clients", json={**body, "scope": "patient/Nope.rs"}, headers=admin)
    assert bad.status_code == 400
    u = http.post("/auth/admin/users", json={"username": "bob", "password": "bob-password", "role": "patient",
                                             "fhir_user": "Patient/b"}, headers=admin)
    assert u.status_code == 201 and "password_hash" not in u.json()
    assert http.post("/auth/admin/users", json={"username": "x", "password": "long-enough", "role": "patient"},
                     headers=admin).status_code == 400
    users = http.get("/auth/admin/users", headers=admin).json()
    assert all("password_hash" not in x for x in users)
    stored = svc.extras["auth_store"].get_user("bob")
    assert stored["password_hash"].startswith("$argon2")


def test_rate_limits(http: Any) -> None:
    codes = [http.post("/auth/token", data={"grant_type": "client_credentials"}).status_code for _ in range(7)]
    assert codes[-1] == 429
    r = http.post("/auth/token", data={"grant_type": "client_credentials"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    codes = [http.post("/auth/introspect", data={"token": "x"}).status_code for _ in range(7)]
    assert codes[-1] == 429
    codes = [http.get("/auth/authorize", params=Flow("nobody", "https://x/cb", "patient/*.rs").params()).status_code
             for _ in range(7)]
    assert codes[-1] == 429
    codes = [http.post("/auth/login", data={"username": "bob", "password": "x", "csrf": "x"}).status_code
             for _ in range(5)]
    assert codes[-1] == 429


def test_cli_admin(mongo_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fhir_server.cli import app
    from fhir_server.config import get_settings

    db = f"t_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("FHIR_SERVER_MONGODB_DATABASE", db)
    monkeypatch.setenv("FHIR_SERVER_AUTH", "off")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        jwks = tmp_path / "k.json"
        from joserfc.jwk import RSAKey

        jwks.write_text(json.dumps({"keys": [RSAKey.generate_key(2048).as_dict(private=False)]}))
        r = runner.invoke(app, ["admin", "add-client", "lab", "--kind", "asymmetric", "--category", "system",
                                "--jwks", str(jwks), "--scope", "system/DocumentReference.c system/Binary.c"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["admin", "add-client", "web", "--kind", "confidential", "--redirect-uri",
                                "https://web.example/cb", "--scope", "launch/patient patient/*.rs"])
        assert r.exit_code == 0 and json.loads(r.stdout)["client_secret"]
        r = runner.invoke(app, ["admin", "add-client", "bad", "--kind", "public", "--scope", "patient/*.rs"])
        assert r.exit_code == 2  # an app needs a redirect URI
        r = runner.invoke(app, ["admin", "add-user", "carol", "--role", "practitioner", "--fhir-user",
                                "Practitioner/p1", "--password", "carol-password"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["admin", "list-clients"])
        assert {c["_id"] for c in json.loads(r.stdout)} == {"lab", "web"} and "secret_hash" not in r.stdout
        r = runner.invoke(app, ["admin", "list-users"])
        assert json.loads(r.stdout)[0]["_id"] == "carol" and "password_hash" not in r.stdout
    finally:
        get_settings.cache_clear()
        from pymongo import MongoClient

        MongoClient(mongo_uri).drop_database(db)


def test_production_refusals(tmp_path: Path) -> None:
    strong = "a-real-secret-of-32-characters!!"
    with pytest.raises(ValidationError, match="AUTH=off"):
        Settings(mode="production", secret_key=strong, auth="off", auth_signing_key=tmp_path / "k.pem")
    with pytest.raises(ValidationError, match="SIGNING_KEY"):
        Settings(mode="production", secret_key=strong, auth="on")
    for weak in (None, "s", "change-me-in-production"):  # docker-compose's placeholder included
        with pytest.raises(ValidationError, match="SECRET_KEY"):
            Settings(mode="production", secret_key=weak, auth="on", auth_signing_key=tmp_path / "k.pem")
    Settings(mode="production", secret_key=strong, auth="on", auth_signing_key=tmp_path / "k.pem")
    with pytest.raises(ValidationError):
        Settings(auth_backend_token_lifetime=900)
    from fhir_server.auth.keys import load_signing_key

    with pytest.raises(RuntimeError):
        load_signing_key(Settings.model_construct(**{**Settings().model_dump(), "mode": "production",
                                                     "auth_signing_key": None}))


def test_configured_key_is_used(tmp_path: Path) -> None:
    from joserfc.jwk import RSAKey

    from fhir_server.auth.keys import load_signing_key

    key = RSAKey.generate_key(2048)
    path = tmp_path / "signing.pem"
    path.write_bytes(key.as_pem(private=True))
    loaded = load_signing_key(Settings(auth_signing_key=path, data_dir=tmp_path))
    assert loaded.kid == key.thumbprint() and not loaded.generated
    generated = load_signing_key(Settings(data_dir=tmp_path / "dev"))
    assert generated.generated and (tmp_path / "dev" / "auth" / "signing-key.pem").stat().st_mode & 0o077 == 0
    assert load_signing_key(Settings(data_dir=tmp_path / "dev")).kid == generated.kid  # persisted


def test_auth_off_serves_without_tokens_and_says_so(mongo_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    from starlette.testclient import TestClient

    with caplog.at_level(logging.WARNING, logger="fhir_server.auth"):
        s = build_services(make_settings(mongo_uri, auth="off"))
    try:
        assert any("WITHOUT authentication" in r.getMessage() for r in caplog.records)
        with TestClient(create_app(s.settings, s)) as c:
            assert c.get("/fhir/Patient?_count=1").status_code == 200
    finally:
        s.repo.drop_everything()
        s.close()


def test_security_is_on_by_default() -> None:
    assert Settings.model_fields["auth"].default == "on"
    assert secure_settings("mongodb://x").audit_enabled
