"""Server-rendered HTML pages: login, consent, the patient's app management, errors.

No external assets, no JavaScript; every form carries a CSRF token; values are escaped.
Pages are sent with a strict Content-Security-Policy and ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

__all__ = ["page", "login_page", "consent_page", "manage_page", "error_page", "ScopeChoice", "PAGE_HEADERS"]

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#1d2733}
h1{font-size:1.4rem}fieldset{border:1px solid #ccd;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}
label{display:block;margin:.4rem 0}input[type=text],input[type=password],select{width:100%;padding:.4rem}
button{padding:.5rem 1.2rem;margin:.5rem .5rem 0 0}.err{color:#a00}.muted{color:#667;font-size:.9rem}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #dde;padding:.3rem;text-align:left}
"""


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"><style>{_STYLE}</style></head>"
            f"<body><h1>{escape(title)}</h1>{body}</body></html>")


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'


def login_page(*, action: str, rid: str, csrf: str, client_name: str | None, error: str | None = None,
               username: str = "", upstream: tuple[str, str] | None = None) -> str:
    who = f"<p>Sign in to continue to <strong>{escape(client_name)}</strong>.</p>" if client_name else ""
    err = f'<p class="err" role="alert">{escape(error)}</p>' if error else ""
    body = (f"{who}{err}<form method=\"post\" action=\"{escape(action)}\">{_hidden('rid', rid)}{_hidden('csrf', csrf)}"
            f"<label>User name <input type=\"text\" name=\"username\" autocomplete=\"username\" "
            f"value=\"{escape(username)}\" required></label>"
            f"<label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" "
            f"required></label><button type=\"submit\" id=\"login\">Sign in</button></form>")
    if upstream:
        body += f'<p><a id="upstream" href="{escape(upstream[1])}">Sign in with {escape(upstream[0])}</a></p>'
    return page("Sign in", body)


@dataclass
class ScopeChoice:
    scope: str
    label: str
    categories: list[tuple[str, str]]  # (value "system|code", label) offered to narrow; empty: none


def consent_page(*, action: str, rid: str, csrf: str, client_name: str, user: str,
                 choices: list[ScopeChoice], context: list[tuple[str, str]],
                 patients: list[tuple[str, str]] | None, patient_fixed: str | None) -> str:
    rows = []
    for i, c in enumerate(choices):
        cat = ""
        if c.categories:
            opts = "".join(f'<option value="{escape(v)}">{escape(lbl)}</option>' for v, lbl in c.categories)
            cat = (f'<label class="muted">Categories <select name="cat_{i}" id="cat_{i}">'
                   f'<option value="" selected>all categories</option>{opts}</select></label>')
        rows.append(f'<label><input type="checkbox" name="scope" value="{escape(c.scope)}" id="scope_{i}" checked> '
                    f'{escape(c.label)} <code class="muted">{escape(c.scope)}</code></label>'
                    f'{_hidden(f"scope_key_{i}", c.scope)}{cat}')
    ctx = "".join(f'<label><input type="checkbox" name="scope" value="{escape(s)}" checked> {escape(lbl)}</label>'
                  for s, lbl in context)
    pat = ""
    if patient_fixed:
        pat = f"<p>Patient: <strong>{escape(patient_fixed)}</strong></p>"
    elif patients is not None:
        if patients:
            opts = "".join(f'<option value="{escape(v)}">{escape(lbl)}</option>' for v, lbl in patients)
            pat = f'<label>Patient <select name="patient" id="patient">{opts}</select></label>'
        else:
            pat = '<p class="err">You have no patient you may open.</p>'
    body = (f"<p><strong>{escape(client_name)}</strong> asks to access data on behalf of "
            f"<strong>{escape(user)}</strong>. Untick what you do not want to share.</p>"
            f"<form method=\"post\" action=\"{escape(action)}\">{_hidden('rid', rid)}{_hidden('csrf', csrf)}{pat}"
            f"<fieldset><legend>Data</legend>{''.join(rows) or '<p class=muted>none</p>'}</fieldset>"
            f"<fieldset><legend>Sign-in and session</legend>{ctx or '<p class=muted>none</p>'}</fieldset>"
            f"<button type=\"submit\" name=\"decision\" value=\"approve\" id=\"approve\">Allow</button>"
            f"<button type=\"submit\" name=\"decision\" value=\"deny\" id=\"deny\">Deny</button></form>")
    return page("Share your health data?", body)


def manage_page(*, action: str, csrf: str, user: str, grants: list[dict[str, str]], notice: str | None = None) -> str:
    rows = "".join(
        f"<tr><td>{escape(g['client'])}</td><td><code>{escape(g['scope'])}</code></td><td>{escape(g['since'])}</td>"
        f"<td><form method=\"post\" action=\"{escape(action)}\">{_hidden('csrf', csrf)}{_hidden('grant', g['grant'])}"
        f"<button type=\"submit\">Revoke</button></form></td></tr>" for g in grants)
    note = f"<p role=\"status\">{escape(notice)}</p>" if notice else ""
    table = (f"<table><tr><th>Application</th><th>Access</th><th>Since</th><th></th></tr>{rows}</table>"
             if grants else "<p>No application has access to your data.</p>")
    return page("Applications with access", f"<p>Signed in as <strong>{escape(user)}</strong>.</p>{note}{table}")


def error_page(message: str) -> str:
    return page("Authorization error", f'<p class="err" role="alert">{escape(message)}</p>')
