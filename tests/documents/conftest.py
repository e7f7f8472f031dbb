"""Shared fixtures for the CDA converter tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
SAMPLES = SHARED / "samples"


def shared_or_skip() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (CI without the shared samples)")
    return SHARED


def cda_fr_files() -> list[Path]:
    folder = SAMPLES / "cda-fr"
    return sorted(folder.glob("*.xml")) if folder.is_dir() else []


def ccda_documents() -> list[Path]:
    """Full documents only, per ccda/manifest.json (fragments excluded)."""
    manifest = SAMPLES / "ccda" / "manifest.json"
    if not manifest.is_file():
        return []
    rows = json.loads(manifest.read_text())["rows"]
    return sorted(SAMPLES / "ccda" / r["folder"] / r["file"] for r in rows
                  if r["folder"] != "hl7-ccda-examples-fragments")
