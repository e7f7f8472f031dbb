"""Command line: ``fhir-server serve | load | reindex | cda-report`` (``--help`` everywhere)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fhir_server.config import get_settings

app = typer.Typer(help="FHIR R4 personal health record server.", no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]})
console = Console(stderr=True)


def _logging(level: str, fmt: str) -> None:
    if fmt == "json":
        logging.basicConfig(level=level.upper(), stream=sys.stderr,
                            format='{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s",'
                                   '"msg":"%(message)s"}')
    else:
        logging.basicConfig(level=level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (FHIR_SERVER_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (FHIR_SERVER_PORT)")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes (needs MONGODB_URI when > 1)")] = 1,
) -> None:
    """Run the HTTP server (embedded SecantusDB unless MONGODB_URI is set)."""
    import uvicorn

    settings = get_settings()
    _logging(settings.log_level, settings.log_format)
    if workers > 1 and not settings.mongodb_uri:
        raise typer.BadParameter("several workers need a shared MongoDB (set MONGODB_URI)")
    if workers > 1:
        uvicorn.run("fhir_server.asgi:app", host=host or settings.host, port=port or settings.port,
                    workers=workers, log_level=settings.log_level.lower())
        return
    from fhir_server.main import create_app

    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port,
                log_level=settings.log_level.lower())


def _iter_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in (".json", ".xml", ".ndjson"))
    return [path]


def _resources_of(path: Path) -> list[dict[str, Any]]:
    from fhir_server.fhir.validate import parse_json, parse_xml

    data = path.read_bytes()
    if path.suffix.lower() == ".ndjson":
        return [parse_json(line) for line in data.splitlines() if line.strip()]
    if path.suffix.lower() == ".xml":
        return [parse_xml(data)]
    return [parse_json(data)]


@app.command()
def load(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories of resources/bundles (.json, .ndjson, .xml)",
                                                exists=True)],
) -> None:
    """Load resources or Bundles (batch/transaction posted as such; collections entry by entry)."""
    from fhir_server.fhir.errors import FhirError
    from fhir_server.main import build_services
    from fhir_server.rest.context import RequestContext

    settings = get_settings()
    _logging("WARNING", settings.log_format)
    files = [f for p in paths for f in _iter_files(p)]
    svc = build_services(settings)
    ctx = RequestContext(base_url=settings.fhir_base)
    ok = failed = 0
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console) as progress:
            task = progress.add_task("loading", total=len(files))
            for f in files:
                progress.update(task, description=f.name[:40])
                try:
                    for res in _resources_of(f):
                        if res.get("resourceType") == "Bundle" and res.get("type") in ("batch", "transaction"):
                            if svc.bundles is None:
                                raise typer.BadParameter("bundle processing is not available")
                            svc.bundles.process(ctx, res)
                        elif res.get("resourceType") == "Bundle" and res.get("type") == "collection":
                            for e in res.get("entry", []):
                                r = e.get("resource")
                                if r:
                                    _put(svc, ctx, r)
                        else:
                            _put(svc, ctx, res)
                        ok += 1
                except FhirError as exc:
                    failed += 1
                    console.print(f"[red]{f}: {exc.outcome()['issue'][0].get('diagnostics')}")
                progress.advance(task)
    finally:
        svc.close()
    console.print(f"loaded {ok} item(s), {failed} failed")
    if failed:
        raise typer.Exit(1)


def _put(svc: Any, ctx: Any, res: dict[str, Any]) -> None:
    if res.get("id"):
        svc.fhir.update(ctx, res["resourceType"], res["id"], res)
    else:
        svc.fhir.create(ctx, res["resourceType"], res)


@app.command()
def reindex(
    types: Annotated[list[str] | None, typer.Argument(help="Resource types (default: every non-empty type)")] = None,
) -> None:
    """Recompute the search index values (ix) and owning space (sp) after a registry change."""
    from fhir_server.fhir.models import is_resource_type
    from fhir_server.main import build_services
    from fhir_server.store.reindex import count_documents, reindex_collection

    settings = get_settings()
    _logging("WARNING", settings.log_format)
    svc = build_services(settings)
    try:
        runtime = svc.extras.get("runtime_search_params")
        if runtime is not None:
            runtime.wait()
        chosen = types or svc.repo.nonempty_types()
        unknown = [t for t in chosen if not is_resource_type(t)]
        if unknown:
            raise typer.BadParameter(f"unknown resource type(s): {', '.join(unknown)}")
        extractor = svc.fhir.indexer
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console) as progress:
            for t in chosen:
                task = progress.add_task(t, total=count_documents(svc.repo.db, t))
                stats = reindex_collection(svc.repo.db, t, extractor,
                                           progress=lambda n, task=task: progress.advance(task, n))
                progress.update(task, description=f"{t}: {stats.changed} changed / {stats.seen}")
    finally:
        svc.close()


@app.command("capability")
def capability() -> None:
    """Print the CapabilityStatement (JSON) without starting HTTP."""
    from fhir_server.main import build_services

    svc = build_services(get_settings())
    try:
        sys.stdout.buffer.write(orjson.dumps(svc.capability_statement(), option=orjson.OPT_INDENT_2))
    finally:
        svc.close()


def _register_feature_commands() -> None:
    from fhir_server.documents.cli import cda_report_command

    app.command("cda-report")(cda_report_command)


_register_feature_commands()


def _admin() -> None:
    from fhir_server.auth.cli import admin_app

    app.add_typer(admin_app, name="admin")


_admin()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
