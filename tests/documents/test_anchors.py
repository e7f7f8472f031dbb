"""Myra Jones (HL7 C-CDA on FHIR connectathon input): the clinical content that the
published vendor conversions agree on (found by at least two of the five vendors) is
also found by our converter, compared by code."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_server.documents.cda import convert_cda

from .conftest import SAMPLES, shared_or_skip

CODE_FIELD = {
    "Condition": "code",
    "AllergyIntolerance": "code",
    "Immunization": "vaccineCode",
    "Observation": "code",
    "Encounter": "type",
    "Procedure": "code",
    "MedicationStatement": "medicationCodeableConcept",
    "MedicationRequest": "medicationCodeableConcept",
}
# Vendors disagree on statement vs request for the same medication: compare as one kind.
KIND = {"MedicationRequest": "Medication", "MedicationStatement": "Medication"}


def _json_documents(path: Path) -> list[Any]:
    """Vendor files are sometimes several JSON values back to back, or carry trailing garbage."""
    text, decoder, out, i = path.read_text(encoding="utf-8"), json.JSONDecoder(), [], 0
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        try:
            obj, i = decoder.raw_decode(text, i)
        except ValueError:
            break
        out.append(obj)
    return out


def _resources(value: Any) -> Iterator[dict]:
    if isinstance(value, dict):
        if "resourceType" in value:
            yield value
        for v in value.values():
            yield from _resources(v)
    elif isinstance(value, list):
        for v in value:
            yield from _resources(v)


def _codes(resources: Any) -> set[tuple[str, str]]:
    out = set()
    for res in _resources(resources):
        field = CODE_FIELD.get(res["resourceType"])
        value = res.get(field) if field else None
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, dict):
            for c in value.get("coding", ()):
                if c.get("code") and c["code"] != "unknown":
                    out.add((KIND.get(res["resourceType"], res["resourceType"]), c["code"]))
    return out


def _consensus(min_vendors: int = 2) -> set[tuple[str, str]]:
    folder = SAMPLES / "ccda-anchors" / "ccda-on-fhir-vendor-bundles"
    counts: Counter[tuple[str, str]] = Counter()
    for path in sorted(folder.glob("*.json")):
        counts.update(_codes(_json_documents(path)))
    return {k for k, n in counts.items() if n >= min_vendors}


@pytest.fixture(scope="module")
def ours() -> set[tuple[str, str]]:
    shared_or_skip()
    doc = SAMPLES / "ccda" / "hl7-ccda-on-fhir" / "Myra_Jones_v2.xml"
    return _codes(convert_cda(doc.read_bytes()).all_resources())


@pytest.mark.parametrize("kind", ["Condition", "AllergyIntolerance", "Immunization", "Observation", "Encounter",
                                  "Procedure", "Medication"])
def test_vendor_consensus_is_found(kind: str, ours: set[tuple[str, str]]) -> None:
    expected = {c for c in _consensus() if c[0] == kind}
    assert expected, f"vendors agree on no {kind}"
    assert expected - ours == set()


def test_recommended_outputs_codes_found(ours: set[tuple[str, str]]) -> None:
    """The IG's recommended per-resource outputs (JSONC) for problem, allergy, immunization."""
    folder = SAMPLES / "ccda-anchors" / "ccda-on-fhir-recommended"
    found = set()
    for name in ("Rec_problem.jsonc", "Rec_allergy.jsonc", "Rec_immunization.jsonc"):
        text = "\n".join(line.split("//")[0] if "http" not in line else line for line in
                         (folder / name).read_text(encoding="utf-8").splitlines())
        try:
            found |= _codes(json.loads(text))
        except ValueError:
            continue
    assert found, "could not read any recommended output"
    assert {c[1] for c in found} - {c[1] for c in ours} == set()
