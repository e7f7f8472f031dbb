"""End to end against a real uvicorn process, with clients written by others:

* Python ``fhirclient`` completing a standalone launch (login and consent submitted as a browser would);
* authlib's ``OAuth2Session`` with ``PrivateKeyJWT`` (RS384, exp ≤ 300 s) doing Backend Services;
* ``fhirpy`` using the resulting tokens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import RSAKey

from fhir_server.auth.admin import register_client, register_user
from fhir_server.store.embedded import free_port
from tests.auth.flow import login_and_consent
from tests.auth.helpers import build_secure, seed_two_patients

CB = "http://127.0.0.1:9/callback"  # never contacted: the test reads the redirect
KEY = RSAKey.generate_key(2048, parameters={"kid": "lab-e2e"})


@dataclass
class Live:
    origin: str
    base: str
    token_url: str


@pytest.fixture(scope="module")
def live(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    db = f"e2e_auth_{uuid.uuid4().hex[:10]}"
    seeder = build_secure(mongo_uri, mongodb_database=db, base_url=f"{origin}/fhir")
    seed_two_patients(seeder)
    store = seeder.extras["auth_store"]
    register_client(store, client_id="fhirclient-app", kind="public", redirect_uris=[CB], name="fhirclient app",
                    scope="launch launch/patient openid fhirUser profile offline_access patient/*.rs user/*.rs")
    register_client(store, client_id="lab-e2e", kind="asymmetric", category="system",
                    jwks={"keys": [KEY.as_dict(private=False)]},
                    scope="system/DocumentReference.c system/Binary.c system/Bundle.c")
    register_user(store, username="alice", password="alice-password", role="patient", fhir_user="Patient/a")
    data_dir: Path = tmp_path_factory.mktemp("auth-e2e")
    env = {**os.environ, "MONGODB_URI": mongo_uri, "FHIR_SERVER_MONGODB_DATABASE": db,
           "FHIR_SERVER_BASE_URL": f"{origin}/fhir", "FHIR_SERVER_PORT": str(port), "FHIR_SERVER_AUTH": "on",
           "FHIR_SERVER_SECRET_KEY": "e2e-secret", "FHIR_SERVER_DATA_DIR": str(data_dir),
           "FHIR_SERVER_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            try:
                if httpx.get(f"{origin}/fhir/metadata", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not start")
            time.sleep(0.2)
        yield Live(origin, f"{origin}/fhir", f"{origin}/auth/token")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        seeder.repo.drop_everything()
        seeder.close()


def test_fhirclient_standalone_launch_then_fhirpy(live: Live) -> None:
    from fhirclient import client
    from fhirclient.models.patient import Patient

    smart = client.FHIRClient(settings={
        "app_id": "fhirclient-app", "api_base": live.base, "redirect_uri": CB,
        "scope": "launch/patient openid fhirUser offline_access patient/*.rs"})
    url = smart.authorize_url
    assert url.startswith(f"{live.origin}/auth/authorize")
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        final = login_and_consent(browser, live.origin, browser.get(url), "alice", "alice-password")
    assert final.status_code == 302 and final.headers["location"].startswith(CB)
    smart.handle_callback(final.headers["location"])
    assert smart.ready and smart.patient_id == "a"
    patient = Patient.read("a", smart.server)
    assert patient.name[0].family == "Family-a"
    with pytest.raises(Exception):  # noqa: B017 - fhirclient raises requests' HTTPError (404)
        Patient.read("b", smart.server)
    token = smart.server.auth.access_token

    from fhirpy import SyncFHIRClient

    fp = SyncFHIRClient(live.base, authorization=f"Bearer {token}")
    observations = fp.resources("Observation").fetch_all()
    assert {o["id"] for o in observations} == {"obs-a-1", "obs-a-2"}
    anonymous = SyncFHIRClient(live.base)
    with pytest.raises(Exception):  # noqa: B017 - fhirpy raises its own error types on 401
        anonymous.resources("Observation").fetch()


def test_backend_services_with_authlib_then_fhirpy(live: Live) -> None:
    from authlib.integrations.requests_client import OAuth2Session
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

    scope = "system/DocumentReference.c system/Binary.c"
    default = OAuth2Session("lab-e2e", KEY, token_endpoint_auth_method=PrivateKeyJWT(live.token_url), scope=scope)
    with pytest.raises(Exception):  # noqa: B017 - authlib's defaults (RS256, exp one hour ahead) are refused
        default.fetch_token(live.token_url, grant_type="client_credentials")

    auth = PrivateKeyJWT(live.token_url, alg="RS384", headers={"kid": KEY.kid},
                         claims={"exp": int(time.time()) + 280})
    session = OAuth2Session("lab-e2e", KEY, token_endpoint_auth_method=auth, scope=scope)
    token: dict[str, Any] = session.fetch_token(live.token_url, grant_type="client_credentials")
    assert token["token_type"] == "Bearer" and token["expires_in"] <= 300 and "refresh_token" not in token

    from fhirpy import SyncFHIRClient

    fp = SyncFHIRClient(live.base, authorization=f"Bearer {token['access_token']}")
    doc = fp.resource("DocumentReference", status="current", subject={"reference": "Patient/b"},
                      content=[{"attachment": {"contentType": "text/plain", "url": "Binary/bin-b"}}])
    doc.save()
    assert doc["id"]
    with pytest.raises(Exception):  # noqa: B017 - the write policy reads nothing (403)
        fp.resources("DocumentReference").fetch()
