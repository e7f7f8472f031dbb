"""A real server process (uvicorn) with auth on, seeded with two patients, a public app, a backend client."""

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

import httpx
import pytest
from joserfc.jwk import RSAKey

from fhir_server.auth.admin import register_client, register_user
from fhir_server.store.embedded import free_port
from tests.auth.helpers import build_secure, seed_two_patients

__all__ = ["CB", "KEY", "Live", "live"]

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
    register_client(store, client_id="downstream", kind="confidential", secret="downstream-secret",
                    redirect_uris=["http://testserver/auth/login/upstream/callback"], scope="openid fhirUser")
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
