"""Golden files: our own small CDA documents (examples/cda/*.xml) and their reviewed FHIR
output (``*.expected.json``). Regenerate with ``python -m tests.documents.test_golden``
after a deliberate mapping change, then review the diff entry by entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server.documents.cda import convert_cda
from fhir_server.fhir.models import model_class

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cda"
DOCS = sorted(EXAMPLES.glob("*.xml"))
RECORDED = "2024-06-01T00:00:00Z"


def snapshot(path: Path) -> dict[str, Any]:
    r = convert_cda(path.read_bytes(), recorded=RECORDED)
    for res in r.all_resources():
        model_class(res["resourceType"]).model_validate(res)
    return {
        "document_reference": r.document_reference,
        "patient": r.patient,
        "patient_identifiers": [list(x) for x in r.patient_identifiers],
        "replaces": r.replaces,
        "composition": r.composition,
        "resources": [x for x in r.resources if x["resourceType"] != "Provenance"],
        "provenance_example": next((x for x in r.resources if x["resourceType"] == "Provenance"), None),
        "issues": r.issues,
        "sections": [{"path": s.path, "code": s.code, "mapping": s.mapping, "present": s.present,
                      "mapped": s.mapped, "resources": dict(s.resources)} for s in r.sections],
    }


@pytest.mark.parametrize("path", DOCS, ids=[p.stem for p in DOCS])
def test_golden(path: Path) -> None:
    expected = json.loads(path.with_suffix(".expected.json").read_text(encoding="utf-8"))
    assert snapshot(path) == expected


def test_golden_set_covers_the_volets() -> None:
    assert {p.stem for p in DOCS} >= {"cr-bio-glucose", "vac-note", "ccd-small", "unstructured-pdf"}


def test_key_facts() -> None:
    """Facts reviewed by hand, stated independently of the snapshots."""
    bio = snapshot(EXAMPLES / "cr-bio-glucose.xml")
    assert bio["replaces"] == ["CRBIO-0000"]
    assert bio["patient_identifiers"][0] == ["urn:oid:1.2.250.1.213.1.4.8", "248092A12345678"]
    assert [n["use"] for n in bio["patient"]["name"]] == ["official", "usual"]
    glucose = next(r for r in bio["resources"] if r.get("code", {}).get("coding", [{}])[0].get("code") == "14749-6")
    assert glucose["valueQuantity"] == {"value": 5.8, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                                        "code": "mmol/L"}
    assert glucose["referenceRange"][0]["high"]["value"] == 5.5
    assert glucose["code"]["text"] == "Glucose à jeun"
    assert [c["attachment"]["contentType"] for c in bio["document_reference"]["content"]] == [
        "application/hl7-cda+xml", "application/pdf"]
    vac = snapshot(EXAMPLES / "vac-note.xml")
    imm = next(r for r in vac["resources"] if r["resourceType"] == "Immunization")
    assert imm["protocolApplied"] == [{"doseNumberPositiveInt": 2}]
    assert imm["lotNumber"] == "LOT-123"
    assert imm["occurrenceDateTime"] == "2024-04-02"  # time without offset: reduced to the date
    ccd = snapshot(EXAMPLES / "ccd-small.xml")
    allergy = next(r for r in ccd["resources"] if r["resourceType"] == "AllergyIntolerance")
    assert (allergy["category"], allergy["criticality"], allergy["reaction"][0]["severity"]) == (
        ["medication"], "high", "moderate")
    weight = next(r for r in ccd["resources"] if r.get("code", {}).get("coding", [{}])[0].get("code") == "29463-7")
    assert weight["valueQuantity"]["code"] == "[lb_av]"


if __name__ == "__main__":  # regenerate
    for doc in DOCS:
        doc.with_suffix(".expected.json").write_text(
            json.dumps(snapshot(doc), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
