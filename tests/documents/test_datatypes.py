"""Table-driven tests of the CDA data-type converters (C-CDA on FHIR data type guidance)."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from fhir_server.documents.datatypes import DATATYPES, Choice, Context

NS = 'xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'


def run(type_name: str, xml: str) -> tuple[Any, Context]:
    el = etree.fromstring(xml.replace("<x", f"<x {NS}", 1))
    root = etree.fromstring(f'<doc {NS}><t ID="ref1">Narrative  text</t></doc>')
    ctx = Context(root=root)
    return DATATYPES[type_name](ctx, el), ctx


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2023", "2023"),
        ("202305", "2023-05"),
        ("20230512", "2023-05-12"),
        ("20230512103000+0200", "2023-05-12T10:30:00+02:00"),
        ("202305121030-0500", "2023-05-12T10:30:00-05:00"),
        ("20230512103000.123+0000", "2023-05-12T10:30:00.123+00:00"),
        ("20230512103000", "2023-05-12"),  # no offset: reduced to the date, never stamped UTC
        ("2023051210", "2023-05-12"),
        ("20230512+0200", "2023-05-12"),
        ("20230230", None),  # 30 February
        ("20231301", None),
        ("20230512250000+0200", None),
        ("2023-05-12", None),
        ("yesterday", None),
        ("20230512103000+2500", None),
    ],
)
def test_ts(value: str, expected: str | None) -> None:
    out, ctx = run("TS", f'<x value="{value}"/>')
    assert out == expected
    assert bool(ctx.issues) == (expected is None)


def test_ts_null_flavor_is_omitted_silently() -> None:
    out, ctx = run("TS", '<x nullFlavor="UNK"/>')
    assert out is None and not ctx.issues


@pytest.mark.parametrize(
    "xml, expected",
    [
        ('<x><low value="20230101"/><high value="20230201"/></x>', {"start": "2023-01-01", "end": "2023-02-01"}),
        ('<x><low value="20230101"/><high nullFlavor="UNK"/></x>', {"start": "2023-01-01"}),
        ('<x value="202301011200+0100"/>', {"start": "2023-01-01T12:00:00+01:00"}),
        ('<x><low value="bad"/></x>', None),
        ('<x><low value="20230301"/><high value="20230201"/></x>', {"start": "2023-03-01"}),
    ],
)
def test_ivl_ts(xml: str, expected: dict | None) -> None:
    assert run("IVL_TS", xml)[0] == expected


@pytest.mark.parametrize(
    "xml, expected",
    [
        ('<x value="20230101"/>', Choice("DateTime", "2023-01-01")),
        ('<x><low value="20230101"/><high value="20230105"/></x>', Choice("Period", {"start": "2023-01-01", "end": "2023-01-05"})),
        ('<x><low value="20230101"/></x>', Choice("DateTime", "2023-01-01")),
        ('<x nullFlavor="NA"/>', None),
    ],
)
def test_effective(xml: str, expected: Choice | None) -> None:
    assert run("EFFECTIVE", xml)[0] == expected


UCUM = "http://unitsofmeasure.org"


@pytest.mark.parametrize(
    "value, unit, expected",
    [
        ("1.5", "mg/dL", {"value": 1.5, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}),
        ("120", "mm[Hg]", {"value": 120, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}),
        ("150", "lbs", {"value": 150, "unit": "lbs", "system": UCUM, "code": "[lb_av]"}),
        ("70", "in", {"value": 70, "unit": "in", "system": UCUM, "code": "[in_i]"}),
        ("7.2", "K/uL", {"value": 7.2, "unit": "K/uL", "system": UCUM, "code": "10*3/uL"}),
        ("98.6", "degF", {"value": 98.6, "unit": "degF", "system": UCUM, "code": "[degF]"}),
        ("5.1", "G/L", {"value": 5.1, "unit": "G/L", "system": UCUM, "code": "10*9/L"}),
        ("72", "/min", {"value": 72, "unit": "/min", "system": UCUM, "code": "/min"}),
        ("2", "{tablet}", {"value": 2, "unit": "{tablet}", "system": UCUM, "code": "{tablet}"}),
        ("2", "Puffs", {"value": 2, "unit": "Puffs"}),  # not UCUM: unit text only
        ("3", "1", {"value": 3, "unit": "1", "system": UCUM, "code": "1"}),
        ("&lt;5", "mg/L", {"comparator": "<", "value": 5, "unit": "mg/L", "system": UCUM, "code": "mg/L"}),
        ("abc", "mg", None),
    ],
)
def test_pq(value: str, unit: str, expected: dict | None) -> None:
    assert run("PQ", f'<x value="{value}" unit="{unit}"/>')[0] == expected


def test_cd_with_translations_and_original_text_reference() -> None:
    xml = ('<x code="61077869" codeSystem="1.2.250.1.213.2.3.1" displayName="VACCIN  BCG">'
           '<originalText><reference value="#ref1"/></originalText>'
           '<translation code="J07AN" codeSystem="2.16.840.1.113883.6.73" displayName="BCG"/>'
           '<translation code="bad" codeSystem="not an oid"/></x>')
    out, ctx = run("CD", xml)
    assert out == {
        "coding": [
            {"system": "urn:oid:1.2.250.1.213.2.3.1", "code": "61077869", "display": "VACCIN BCG"},
            {"system": "http://www.whocc.no/atc", "code": "J07AN", "display": "BCG"},
            {"code": "bad"},
        ],
        "text": "Narrative text",
    }
    assert any("not an oid" in i["diagnostics"] for i in ctx.issues)


@pytest.mark.parametrize(
    "xml, expected",
    [
        ('<x nullFlavor="UNK"/>', None),
        ('<x nullFlavor="OTH"><originalText>free text</originalText></x>', {"text": "free text"}),
        ('<x nullFlavor="OTH"><translation code="1" codeSystem="2.16.840.1.113883.6.96"/></x>',
         {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}),
        ('<x code="8480-6" codeSystem="2.16.840.1.113883.6.1"/>', {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}),
    ],
)
def test_cd_null_flavors(xml: str, expected: dict | None) -> None:
    assert run("CD", xml)[0] == expected


@pytest.mark.parametrize(
    "xml, expected",
    [
        ('<x root="1.2.250.1.213.1.4.8" extension="279035121518989"/>', {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "279035121518989"}),
        ('<x root="2.16.840.1.113883.4.6" extension="1234567893"/>', {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}),
        ('<x root="1.2.3.4"/>', {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4"}),
        ('<x root="8A1B2C3D-0000-4000-8000-000000000001"/>', {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:8a1b2c3d-0000-4000-8000-000000000001"}),
        ('<x root="8A1B2C3D-0000-4000-8000-000000000001" extension="42"/>', {"system": "urn:uuid:8a1b2c3d-0000-4000-8000-000000000001", "value": "42"}),
        ('<x root="my-hospital" extension="42"/>', {"value": "42"}),
        ('<x root="my-hospital"/>', None),
        ('<x nullFlavor="NI"/>', None),
    ],
)
def test_ii(xml: str, expected: dict | None) -> None:
    assert run("II", xml)[0] == expected


@pytest.mark.parametrize(
    "xml, expected",
    [
        ('<x xsi:type="PQ" value="3" unit="kg"/>', Choice("Quantity", {"value": 3, "unit": "kg", "system": UCUM, "code": "kg"})),
        ('<x xsi:type="CD" code="N" codeSystem="2.16.840.1.113883.5.83"/>',
         Choice("CodeableConcept", {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"}]})),
        ('<x xsi:type="ST">positive</x>', Choice("String", "positive")),
        ('<x xsi:type="BL" value="true"/>', Choice("Boolean", True)),
        ('<x xsi:type="INT" value="4"/>', Choice("Integer", 4)),
        ('<x xsi:type="IVL_PQ"><low value="1" unit="g"/><high value="2" unit="g"/></x>',
         Choice("Range", {"low": {"value": 1, "unit": "g", "system": UCUM, "code": "g"},
                          "high": {"value": 2, "unit": "g", "system": UCUM, "code": "g"}})),
        ('<x xsi:type="PQ" nullFlavor="NI"/>', None),
        ('<x xsi:type="GLIST_PQ"/>', None),
    ],
)
def test_any_value(xml: str, expected: Choice | None) -> None:
    assert run("ANY", xml)[0] == expected


def test_french_birth_and_used_names() -> None:
    xml = ('<x><given>Marie</given><family qualifier="BR">DUPONT</family>'
           '<family qualifier="SP">MARTIN</family></x>')
    assert run("EN", xml)[0] == [
        {"use": "official", "family": "DUPONT", "given": ["Marie"]},
        {"use": "usual", "family": "MARTIN", "given": ["Marie"]},
    ]


@pytest.mark.parametrize(
    "xml, expected",
    [
        ('<x value="tel:+33-142515151" use="WP"/>', {"system": "phone", "value": "+33-142515151", "use": "work"}),
        ('<x value="mailto:a@b.fr"/>', {"system": "email", "value": "a@b.fr"}),
        ('<x value="tel:555" use="MC HP"/>', {"system": "phone", "value": "555", "use": "mobile"}),
        ('<x nullFlavor="UNK"/>', None),
    ],
)
def test_tel(xml: str, expected: dict | None) -> None:
    assert run("TEL", xml)[0] == expected


def test_address_french_parts() -> None:
    xml = "<x use=\"H\"><houseNumber>25</houseNumber><streetName>Rue Pasteur</streetName><postalCode>92100</postalCode><city>EVRY</city></x>"
    assert run("AD", xml)[0] == {"use": "home", "line": ["25 Rue Pasteur"], "city": "EVRY", "postalCode": "92100"}


def test_identifier_system_without_value_is_not_an_identifier() -> None:
    """<id root="2.16.840.1.113883.4.6" nullFlavor="UNK"/> is "NPI unknown": it identifies nobody,
    and must never become a deduplication key shared by every practitioner without an NPI."""
    from lxml import etree

    from fhir_server.documents.datatypes import DATATYPES, Context

    ctx = Context()
    el = etree.fromstring('<id xmlns="urn:hl7-org:v3" root="2.16.840.1.113883.4.6" nullFlavor="UNK"/>')
    assert DATATYPES["II"](ctx, el) is None
    assert any("no value" in i["diagnostics"] for i in ctx.issues)
    local = etree.fromstring('<id xmlns="urn:hl7-org:v3" root="1.2.3.4.5.6.7.8"/>')
    assert DATATYPES["II"](Context(), local) == {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.5.6.7.8"}
