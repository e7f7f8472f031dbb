"""Drive the authorization code flow as a browser would (any httpx-like client, redirects off)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin

from tests.auth.helpers import pkce, query_of

_INPUT = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
_CHECKBOX = re.compile(r'<input type="checkbox" name="scope" value="([^"]*)"')


def hidden_fields(html: str) -> dict[str, str]:
    import html as h

    return {h.unescape(k): h.unescape(v) for k, v in _INPUT.findall(html)}


def checkbox_scopes(html: str) -> list[str]:
    import html as h

    return [h.unescape(v) for v in _CHECKBOX.findall(html)]


@dataclass
class Flow:
    client_id: str
    redirect_uri: str
    scope: str
    aud: str = "http://testserver/fhir"
    state: str = "st-ä/é?&=1"
    verifier: str = ""
    challenge: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.verifier:
            self.verifier, self.challenge = pkce()

    def params(self) -> dict[str, str]:
        p = {"response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
             "scope": self.scope, "state": self.state, "aud": self.aud, "code_challenge": self.challenge,
             "code_challenge_method": "S256"}
        p.update(self.extra)
        return {k: v for k, v in p.items() if v is not None}


def absolute(base: str, location: str) -> str:
    return urljoin(base, location)


def login_and_consent(http: Any, base: str, start: Any, username: str, password: str, *,
                      keep: list[str] | None = None, categories: dict[str, str] | None = None,
                      patient: str | None = None, decision: str = "approve") -> Any:
    """From the /authorize response to the final redirect to the app (the last response)."""
    r = start
    assert r.status_code == 302, r.text
    r = http.get(absolute(base, r.headers["location"]))
    if "/login" in str(r.url):
        fields = hidden_fields(r.text)
        r = http.post(absolute(base, "/auth/login"), data={**fields, "username": username, "password": password})
        assert r.status_code == 302, r.text
        r = http.get(absolute(base, r.headers["location"]))
    assert r.status_code == 200, r.text
    fields = hidden_fields(r.text)
    offered = checkbox_scopes(r.text)
    chosen = offered if keep is None else [s for s in offered if s in keep]
    data: list[tuple[str, str]] = [(k, v) for k, v in fields.items()]
    data += [("scope", s) for s in chosen]
    for key, cat in (categories or {}).items():
        idx = next(k for k, v in fields.items() if k.startswith("scope_key_") and v == key).rsplit("_", 1)[1]
        data.append((f"cat_{idx}", cat))
    if patient:
        data.append(("patient", patient))
    data.append(("decision", decision))
    return http.post(absolute(base, "/auth/consent"), content=urlencode(data),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})


def authorize(http: Any, base: str, flow: Flow, username: str, password: str, method: str = "GET",
              **kw: Any) -> Any:
    if method == "GET":
        start = http.get(absolute(base, "/auth/authorize"), params=flow.params())
    else:
        start = http.post(absolute(base, "/auth/authorize"), data=flow.params())
    return login_and_consent(http, base, start, username, password, **kw)


def code_of(final: Any) -> dict[str, str]:
    assert final.status_code == 302, final.text
    return query_of(final.headers["location"])
