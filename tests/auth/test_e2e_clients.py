"""End to end against a real uvicorn process, with clients written by others:

* Python ``fhirclient`` completing a standalone launch (login and consent submitted as a browser would);
* authlib's ``OAuth2Session`` with ``PrivateKeyJWT`` (RS384, exp ≤ 300 s) doing Backend Services;
* ``fhirpy`` using the resulting tokens.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.auth.flow import login_and_consent
from tests.auth.live import CB, KEY, Live, live

__all__ = ["live"]


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
