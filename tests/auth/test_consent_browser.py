"""The consent page in headless Chromium (Debian's chromium driven by Playwright; no browser download).

Load the authorize URL, sign in, untick a scope, approve, and check that the token's scope is exactly
what was approved. A screenshot of the consent page is saved under ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.config import PROJECT_ROOT
from tests.auth.flow import Flow
from tests.auth.helpers import query_of
from tests.auth.live import CB, Live, live

__all__ = ["live"]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (scripts/install.sh installs it with root rights)")
    with sync_api.sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        except Exception as exc:  # noqa: BLE001 - any launch failure means: no usable browser here
            pytest.skip(f"chromium cannot run here: {exc}")
        yield b
        b.close()


def test_consent_page_untick_and_approve(browser: Any, live: Live) -> None:
    flow = Flow("fhirclient-app", CB, "launch/patient openid fhirUser patient/Observation.rs patient/Condition.rs",
                aud=live.base)
    url = f"{live.origin}/auth/authorize?{httpx.QueryParams(flow.params())}"
    page = browser.new_page()
    landed: list[str] = []
    page.route(f"{CB}**", lambda route: (landed.append(route.request.url),
                                          route.fulfill(status=200, body="<p>app</p>", content_type="text/html")))
    page.goto(url)
    assert "Sign in" in page.title()
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-password")
    page.click("#login")
    page.wait_for_selector("#approve")
    assert "Share your health data" in page.content()
    boxes = page.locator("input[type=checkbox][name=scope]")
    values = [boxes.nth(i).get_attribute("value") for i in range(boxes.count())]
    assert "patient/Condition.rs" in values and "patient/Observation.rs" in values
    page.uncheck("input[type=checkbox][value='patient/Condition.rs']")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "consent-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    page.click("#approve")
    page.wait_for_url(f"{CB}**")
    assert landed
    q = query_of(landed[-1])
    assert q["state"] == flow.state
    r = httpx.post(live.token_url, data={"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CB,
                                         "client_id": "fhirclient-app", "code_verifier": flow.verifier})
    assert r.status_code == 200, r.text
    assert set(r.json()["scope"].split()) == {"launch/patient", "openid", "fhirUser", "patient/Observation.rs"}
    h = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert httpx.get(f"{live.base}/Condition/cond-a", headers=h).status_code == 403
    assert httpx.get(f"{live.base}/Observation/obs-a-1", headers=h).status_code == 200
    page.close()
