"""Conversion report over a folder of CDA documents (``fhir-server cda-report DIR``).

Per document: resources produced by type, entries mapped vs present per section, and
skipped entries with their reasons; then totals over the folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table

from fhir_server.documents.cda import ConversionResult, convert_cda
from fhir_server.fhir.errors import FhirError

__all__ = ["cda_report", "run_cda_report"]


def _files(directory: Path) -> list[Path]:
    if directory.is_file():
        return [directory]
    suffixes = {".xml", ".cda", ".ccda"}
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _document_table(path: Path, result: ConversionResult) -> Table:
    table = Table(title=f"{path.name}  ({result.entries_mapped}/{result.entries_present} entries mapped)",
                  title_justify="left", show_lines=False)
    table.add_column("section")
    table.add_column("mapping")
    table.add_column("mapped/present", justify="right")
    table.add_column("resources")
    for s in result.sections:
        if not s.present:
            continue
        table.add_row(f"{s.code or '-'} {s.title or ''}"[:60], s.mapping or "-", f"{s.mapped}/{s.present}",
                      ", ".join(f"{k} {v}" for k, v in sorted(s.resources.items())))
    counts = result.counts()
    table.caption = "produced: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return table


def cda_report(directory: Path) -> tuple[Group, dict[str, Any]]:
    """Build the rich-printable report and the totals for every ``*.xml`` under ``directory``."""
    parts: list[Any] = []
    totals: dict[str, Any] = {"documents": 0, "converted": 0, "rejected": 0, "entries_present": 0,
                              "entries_mapped": 0, "resources": Counter(), "skipped": Counter(),
                              "rejections": []}
    for path in _files(directory):
        totals["documents"] += 1
        try:
            result = convert_cda(path.read_bytes(), source_url=path.name)
        except FhirError as exc:
            totals["rejected"] += 1
            totals["rejections"].append((path.name, exc.status, str(exc)[:120]))
            parts.append(f"[red]{path.name}: rejected {exc.status}[/red] {str(exc)[:120]}")
            continue
        totals["converted"] += 1
        totals["entries_present"] += result.entries_present
        totals["entries_mapped"] += result.entries_mapped
        totals["resources"].update(result.counts())
        parts.append(_document_table(path, result))
        reasons = Counter(i["diagnostics"].split(":")[0][:90] for i in result.issues)
        totals["skipped"].update(reasons)
        if reasons:
            parts.append("  issues: " + "; ".join(f"{r} ×{n}" for r, n in reasons.most_common(8)))
    summary = Table(title="Totals", title_justify="left")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_row("documents", str(totals["documents"]))
    summary.add_row("converted", str(totals["converted"]))
    summary.add_row("rejected (typed 4xx)", str(totals["rejected"]))
    present, mapped = totals["entries_present"], totals["entries_mapped"]
    summary.add_row("entries mapped / present", f"{mapped}/{present} ({100 * mapped / present:.1f}%)" if present else "0/0")
    for rtype, n in sorted(totals["resources"].items(), key=lambda kv: -kv[1]):
        summary.add_row(f"  {rtype}", str(n))
    parts.append(summary)
    top = Table(title="Most frequent issues", title_justify="left")
    top.add_column("count", justify="right")
    top.add_column("issue")
    for reason, n in totals["skipped"].most_common(15):
        top.add_row(str(n), reason)
    parts.append(top)
    return Group(*parts), totals


def run_cda_report(path: Path, console: Console | None = None) -> dict[str, Any]:
    """Print the report for ``path`` (a folder or one file) and return the totals."""
    renderable, totals = cda_report(path)
    (console or Console()).print(renderable)
    return totals
