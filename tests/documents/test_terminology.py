"""The project's OID table agrees with the HL7 terminology table; UCUM recognition."""

from __future__ import annotations

import json

import pytest

from fhir_server.documents.terminology import TERMINOLOGIES, is_oid, oid_table, ucum

from .conftest import shared_or_skip


def test_every_mapped_oid_agrees_with_hl7_table() -> None:
    hl7 = json.loads((shared_or_skip() / "terminology-hl7" / "oid-to-uri.json").read_text())
    ours = json.loads((TERMINOLOGIES / "oids.json").read_text())["systems"]
    disagreements = {oid: (uri, hl7[oid]) for oid, uri in ours.items() if oid in hl7 and hl7[oid] != uri}
    assert disagreements == {}
    assert all(is_oid(oid) for oid in ours)


def test_oid_fallbacks() -> None:
    t = oid_table()
    assert t.uri("2.16.840.1.113883.6.1") == "http://loinc.org"
    assert t.uri("1.2.3.4") == "urn:oid:1.2.3.4"
    assert t.uri("1.02.3") is None
    assert t.uri("LOINC") is None
    assert t.uri("0A1B2C3D-0000-4000-8000-000000000001") == "urn:uuid:0a1b2c3d-0000-4000-8000-000000000001"


@pytest.mark.parametrize("unit", ["mg/dL", "mm[Hg]", "10*9/L", "kg/m2", "/min", "mL/min/{1.73_m2}", "m[IU]/L",
                                  "g/24.h", "[lb_av]", "%", "umol/L", "{score}", "(mL/min)/m2"])
def test_valid_ucum(unit: str) -> None:
    assert ucum().normalise(unit) == unit


@pytest.mark.parametrize("unit", ["Puffs", "cap(s)", "UNK", "mg/3ml", "tablet", "mg per day", ""])
def test_invalid_ucum(unit: str) -> None:
    assert ucum().normalise(unit) is None
