"""``fhir-server admin …``: register clients and users without a UI.

Examples::

    fhir-server admin add-client my-app --kind public --redirect-uri https://app.example/cb \\
        --scope "launch/patient openid fhirUser offline_access patient/*.rs"
    fhir-server admin add-client portal --kind confidential --redirect-uri https://portal.example/cb \\
        --scope "launch/patient openid fhirUser patient/*.cruds"          # prints the generated secret once
    fhir-server admin add-client lab-42 --kind asymmetric --category system --jwks lab-42.jwks.json \\
        --scope "system/DocumentReference.c system/Binary.c system/Bundle.c"
    fhir-server admin add-user alice --role patient --fhir-user Patient/123     # asks for the password
    fhir-server admin list-clients
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["admin_app"]

admin_app = typer.Typer(help="Register clients (apps, systems) and users.", no_args_is_help=True)


@contextmanager
def _store() -> Iterator[Any]:
    from fhir_server.config import get_settings
    from fhir_server.main import build_services
    from fhir_server.store.auth_store import AuthStore

    svc = build_services(get_settings())
    try:
        store = AuthStore(svc.repo)
        store.ensure_indexes()
        yield store
    finally:
        svc.close()


def _run(fn: Callable[[Any], Any]) -> None:
    from fhir_server.auth.admin import AdminError

    with _store() as store:
        try:
            out = fn(store)
        except AdminError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")


@admin_app.command("add-client")
def add_client(
    client_id: Annotated[str, typer.Argument(help="client_id")],
    kind: Annotated[str, typer.Option(help="public | confidential | asymmetric")],
    scope: Annotated[str, typer.Option(help="Allowed scopes (space separated); a system client's write policy")],
    redirect_uri: Annotated[list[str] | None, typer.Option(help="Exact redirect URI (repeatable)")] = None,
    category: Annotated[str, typer.Option(help="app | ehr | system | insurer | mutual | occupational")] = "app",
    name: Annotated[str | None, typer.Option(help="Name shown on the consent page")] = None,
    secret: Annotated[str | None, typer.Option(help="Confidential client secret (default: generated)")] = None,
    jwks: Annotated[Path | None, typer.Option(help="File with the client's public JWKS", exists=True)] = None,
    jwks_uri: Annotated[str | None, typer.Option(help="The client's JWKS URL (https)")] = None,
    may_label: Annotated[bool, typer.Option(help="May set meta.security / meta.tag")] = False,
    may_introspect: Annotated[bool, typer.Option(help="May introspect other clients' tokens")] = False,
) -> None:
    """Register or replace a client."""
    from fhir_server.auth.admin import register_client

    keys = json.loads(jwks.read_text()) if jwks else None
    _run(lambda store: register_client(store, client_id=client_id, kind=kind, scope=scope, name=name,
                                       category=category, redirect_uris=redirect_uri or [], secret=secret,
                                       jwks=keys, jwks_uri=jwks_uri, may_label=may_label,
                                       may_introspect=may_introspect))


@admin_app.command("add-user")
def add_user(
    username: Annotated[str, typer.Argument(help="Sign-in name")],
    role: Annotated[str, typer.Option(help="patient | practitioner | related | admin | insurer | …")],
    fhir_user: Annotated[str | None, typer.Option(help="Patient/<id>, Practitioner/<id> or RelatedPerson/<id>")] = None,
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    password: Annotated[str | None, typer.Option(help="Password (prompted when absent; or FHIR_ADMIN_PASSWORD)",
                                                 envvar="FHIR_ADMIN_PASSWORD")] = None,
    upstream: Annotated[str | None, typer.Option(help="<issuer>|<sub> at the upstream OpenID provider "
                                                      "(then no password is needed)")] = None,
) -> None:
    """Register or replace a user (the password is stored as an argon2 hash)."""
    from fhir_server.auth.admin import register_user

    pw = password if (password or upstream) else typer.prompt("Password", hide_input=True,
                                                              confirmation_prompt=True)
    _run(lambda store: register_user(store, username=username, password=pw, role=role, fhir_user=fhir_user,
                                     name=name, upstream=upstream))


@admin_app.command("list-clients")
def list_clients() -> None:
    """The registered clients (no secrets)."""
    from fhir_server.auth.admin import public_client

    _run(lambda store: [public_client(d) for d in store.list_clients()])


@admin_app.command("list-users")
def list_users() -> None:
    """The registered users (no password hashes)."""
    _run(lambda store: store.list_users())
