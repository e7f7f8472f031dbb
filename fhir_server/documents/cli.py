"""``cda-report`` command, mounted by ``fhir_server/cli.py`` (``app.add_typer``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fhir_server.documents.report import run_cda_report

app = typer.Typer(help="CDA document tools.", no_args_is_help=True)


@app.command("cda-report")
def cda_report_command(
    directory: Path = typer.Argument(..., exists=True, help="A folder of CDA documents (or one file)."),
) -> None:
    """Convert every CDA document under DIRECTORY and report what was mapped and skipped."""
    totals = run_cda_report(directory, Console())
    raise typer.Exit(code=0 if totals["converted"] else 1)


if __name__ == "__main__":  # pragma: no cover
    app()
