"""Sign-in through an upstream OpenID Connect provider — here another instance of this very server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from fhir_server.auth.admin import register_client, register_user
from fhir_server.main import Services, create_app
from tests.auth.flow import Flow, hidden_fields, login_and_consent
from tests.auth.helpers import build_secure, query_of, seed_two_patients
from tests.auth.live import Live, live

__all__ = ["live"]

CB = "https://app.example/cb"


@pytest.fixture(scope="module")
def downstream(mongo_uri: str, live: Live) -> Iterator[Services]:
    s = build_secure(mongo_uri, auth_oidc_upstream=live.base, auth_oidc_client_id="downstream",
                     auth_oidc_client_secret="downstream-secret")
    seed_two_patients(s)
    store = s.extras["auth_store"]
    register_client(store, client_id="app", kind="public", redirect_uris=[CB], scope="launch/patient patient/*.rs")
    register_user(store, username="alice-here", password=None, role="patient", fhir_user="Patient/a",
                  upstream=f"{live.base}|alice")
    yield s
    s.repo.drop_everything()
    s.close()


def test_sign_in_with_upstream_provider(downstream: Services, live: Live) -> None:
    from starlette.testclient import TestClient

    with TestClient(create_app(downstream.settings, downstream), base_url="http://testserver",
                    follow_redirects=False) as here, httpx.Client(follow_redirects=False, timeout=10) as there:
        flow = Flow("app", CB, "launch/patient patient/*.rs")
        r = here.get("/auth/authorize", params=flow.params())
        page = here.get(r.headers["location"])
        assert 'id="upstream"' in page.text
        link = page.text.split('id="upstream" href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        to_idp = here.get(link)
        assert to_idp.status_code == 302 and to_idp.headers["location"].startswith(live.origin)
        back = login_and_consent(there, live.origin, there.get(to_idp.headers["location"]), "alice",
                                 "alice-password")
        assert back.status_code == 302 and back.headers["location"].startswith("http://testserver/")
        cb = urlsplit(back.headers["location"])
        replay_url = f"{cb.path}?{cb.query}"
        consent = here.get(replay_url)
        assert consent.status_code == 302 and "/auth/consent" in consent.headers["location"], consent.text
        form = here.get(consent.headers["location"])
        fields = hidden_fields(form.text)
        final = here.post("/auth/consent", data={**fields, "scope": ["launch/patient", "patient/*.rs"],
                                                 "decision": "approve"})
        q = query_of(final.headers["location"])
        tok = here.post("/auth/token", data={"grant_type": "authorization_code", "code": q["code"],
                                             "redirect_uri": CB, "client_id": "app",
                                             "code_verifier": flow.verifier}).json()
        assert tok["patient"] == "a"
        assert here.get(replay_url).status_code == 400  # the upstream state is single use


def test_unlinked_identity_is_refused(downstream: Services, live: Live) -> None:
    from starlette.testclient import TestClient

    downstream.extras["auth_store"].users.update_one({"_id": "alice-here"}, {"$set": {"upstream": "x|y"}})
    try:
        with TestClient(create_app(downstream.settings, downstream), base_url="http://testserver",
                        follow_redirects=False) as here, httpx.Client(follow_redirects=False, timeout=10) as there:
            to_idp = here.get("/auth/login/upstream")
            back = login_and_consent(there, live.origin, there.get(to_idp.headers["location"]), "alice",
                                     "alice-password")
            cb = urlsplit(back.headers["location"])
            r: Any = here.get(f"{cb.path}?{cb.query}")
            assert r.status_code == 403
    finally:
        downstream.extras["auth_store"].users.update_one({"_id": "alice-here"},
                                                         {"$set": {"upstream": f"{live.base}|alice"}})
