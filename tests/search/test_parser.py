"""Query parsing into SearchRequest: values, modifiers, prefixes, chains, _has, result parameters, errors."""

from __future__ import annotations

import pytest

from fhir_server.fhir.errors import BadRequest
from fhir_server.search.parser import (
    ChainClause,
    Clause,
    HasClause,
    Include,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    TokenValue,
    parse_search,
)
from fhir_server.search.values import DateRange, NumberRange


def _clause(type_: str, name: str, value: str) -> Clause:
    req = parse_search(type_, [(name, value)], base_url="http://srv/fhir")
    assert len(req.clauses) == 1 and isinstance(req.clauses[0], Clause)
    return req.clauses[0]


@pytest.mark.parametrize(("type_", "name", "value", "modifier", "parsed"), [
    ("Patient", "family", "Hélène", None, ["helene"]),
    ("Patient", "family:exact", "Hélène", "exact", ["Hélène"]),
    ("Patient", "family:contains", "ÉL", "contains", ["el"]),
    ("Patient", "family", "a\\,b,c", None, ["a,b", "c"]),
    ("Observation", "code", "http://loinc.org|1234-5", None, [TokenValue("http://loinc.org", "1234-5")]),
    ("Observation", "code", "|1234-5", None, [TokenValue("", "1234-5")]),
    ("Observation", "code", "1234-5", None, [TokenValue(None, "1234-5")]),
    ("Observation", "code", "http://loinc.org|", None, [TokenValue("http://loinc.org", None)]),
    ("Observation", "code", "urn:a\\|b|c", None, [TokenValue("urn:a|b", "c")]),
    ("Observation", "code:not", "x,y", "not", [TokenValue(None, "x"), TokenValue(None, "y")]),
    ("Observation", "code:text", "Tension ARTÉRIELLE", "text", ["tension arterielle"]),
    ("Observation", "code:in", "http://hl7.org/fhir/ValueSet/x", "in", ["http://hl7.org/fhir/ValueSet/x"]),
    ("Patient", "identifier:of-type", "http://t|MR|123", "of-type", [OfTypeValue("http://t", "MR", "123")]),
    ("Observation", "subject", "Patient/1", None, [ReferenceValue("Patient", "1")]),
    ("Observation", "subject", "1", None, [ReferenceValue(None, "1")]),
    ("Observation", "subject", "http://srv/fhir/Patient/1", None, [ReferenceValue("Patient", "1")]),
    ("Observation", "subject", "http://other/fhir/Patient/1", None,
     [ReferenceValue(None, None, "http://other/fhir/Patient/1")]),
    ("Observation", "subject:Patient", "1", None, [ReferenceValue("Patient", "1")]),
    ("Observation", "subject:identifier", "urn:sys|42", "identifier", [TokenValue("urn:sys", "42")]),
    ("Observation", "subject:missing", "true", "missing", [True]),
    ("Observation", "value-quantity", "5.4|http://unitsofmeasure.org|mg",
     None, [QuantityValue(NumberRange(5.4, 5.35, 5.45), "http://unitsofmeasure.org", "mg")]),
    ("Observation", "value-quantity", "5.4||mg", None, [QuantityValue(NumberRange(5.4, 5.35, 5.45), None, "mg")]),
    ("Observation", "value-quantity", "5", None, [QuantityValue(NumberRange(5.0, 4.5, 5.5), None, None)]),
    ("ValueSet", "url:below", "http://a/b", "below", ["http://a/b"]),
])
def test_values(type_: str, name: str, value: str, modifier: str | None, parsed: list[object]) -> None:
    c = _clause(type_, name, value)
    assert c.modifier == modifier
    got = [v.parsed for v in c.values]
    if parsed and isinstance(parsed[0], QuantityValue):
        assert [(g.system, g.code, g.number.value) for g in got] == [(p.system, p.code, p.number.value)
                                                                      for p in parsed]
        assert got[0].number.lo == pytest.approx(parsed[0].number.lo)
    else:
        assert got == parsed


def test_reference_type_modifier_sets_target() -> None:
    c = _clause("Observation", "subject:Patient", "1")
    assert c.target_type == "Patient" and c.modifier is None


@pytest.mark.parametrize(("value", "prefix"), [
    ("2023", "eq"), ("eq2023", "eq"), ("ne2023", "ne"), ("gt2023", "gt"), ("lt2023", "lt"), ("ge2023", "ge"),
    ("le2023", "le"), ("sa2023", "sa"), ("eb2023", "eb"), ("ap2023", "ap"),
])
def test_date_prefixes(value: str, prefix: str) -> None:
    v = _clause("Observation", "date", value).values[0]
    assert v.prefix == prefix and isinstance(v.parsed, DateRange)


def test_number_prefix() -> None:
    v = _clause("RiskAssessment", "probability", "gt0.8").values[0]
    assert v.prefix == "gt" and v.parsed.value == 0.8


def test_composite() -> None:
    c = _clause("Observation", "component-code-value-quantity", "http://loinc.org|8480-6$gt100||mm[Hg]")
    token, qty = c.values[0].parsed
    assert token.parsed == TokenValue("http://loinc.org", "8480-6")
    assert qty.prefix == "gt" and qty.parsed.code == "mm[Hg]"


def test_and_by_repeats_or_by_commas() -> None:
    req = parse_search("Observation", [("code", "a,b"), ("code", "c")])
    assert [len(c.values) for c in req.clauses] == [2, 1]


@pytest.mark.parametrize(("type_", "name", "value"), [
    ("Observation", "date", "2023-13-01"),
    ("Observation", "date", "xx2023"),
    ("Observation", "date", "yesterday"),
    ("RiskAssessment", "probability", "abc"),
    ("Observation", "value-quantity", "5|a"),
    ("Observation", "value-quantity", "gtx"),
    ("Patient", "identifier:of-type", "a|b"),
    ("Observation", "code:missing", "maybe"),
    ("Observation", "component-code-value-quantity", "a|b"),
    ("Observation", "subject:Patient", "Group/1"),
    ("Observation", "_count", "ten"),
    ("Observation", "_count", "-1"),
    ("Observation", "_total", "all"),
    ("Observation", "_summary", "yes"),
    ("Observation", "_include", "Observation"),
    ("Observation", "_type", "Nope"),
])
def test_malformed_values_name_the_parameter(type_: str, name: str, value: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_search(type_, [(name, value)])
    assert exc.value.status == 400
    assert exc.value.issues[0].expression[0].split(":")[0] == name.split(":")[0]


@pytest.mark.parametrize(("name", "value"), [
    ("nope", "1"), ("code:exact", "x"), ("family:below", "x"), ("subject:Medication", "1"),
    ("subject:Patient.nope", "1"), ("_text", "x"), ("_content", "x"), ("_filter", "x"),
    ("_has:Nope:patient:code", "1"), ("_sort", "nope"), ("_include:deep", "Observation:subject"),
])
def test_unknown_or_unsupported_raise_or_are_ignored_when_lenient(name: str, value: str) -> None:
    type_ = "Observation" if not name.startswith("family") else "Patient"
    with pytest.raises(BadRequest):
        parse_search(type_, [(name, value)])
    other = ("status", "final") if type_ == "Observation" else ("active", "true")
    req = parse_search(type_, [(name, value), other], lenient=True)
    assert [i.name for i in req.ignored] == [name if not name.startswith("_sort") else "_sort"]
    assert len(req.clauses) == 1


def test_near_is_declared_unsupported() -> None:
    with pytest.raises(BadRequest):
        parse_search("Location", [("near", "1|2|3|km")])


def test_result_parameters() -> None:
    req = parse_search("Observation", [
        ("_sort", "-date,code"), ("_count", "10"), ("_total", "accurate"), ("_summary", "data"),
        ("_elements", "code,subject"), ("_include", "Observation:subject:Patient"),
        ("_include:iterate", "Patient:general-practitioner"), ("_revinclude", "Provenance:target"),
        ("_format", "json"), ("_pretty", "true"), ("_cursor", "abc"),
    ])
    assert [(k.param.code, k.descending) for k in req.sort] == [("date", True), ("code", False)]
    assert (req.count, req.total, req.summary, req.elements, req.cursor) == (
        10, "accurate", "data", ("code", "subject"), "abc")
    assert req.includes == (Include("Observation", "subject", "Patient"),
                            Include("Patient", "general-practitioner", None, True))
    assert req.revincludes == (Include("Provenance", "target"),)
    assert req.clauses == () and req.ignored == ()


def test_chain_one_and_several_levels() -> None:
    req = parse_search("Observation", [("subject:Patient.name", "dupont")])
    chain = req.clauses[0]
    assert isinstance(chain, ChainClause) and chain.param.code == "subject"
    assert [r.resource_type for r in chain.inner] == ["Patient"]
    assert chain.inner[0].clauses[0].values[0].parsed == "dupont"
    # untyped: every target type having the parameter
    untyped = parse_search("Observation", [("subject.name", "x")]).clauses[0]
    assert isinstance(untyped, ChainClause)
    assert {r.resource_type for r in untyped.inner} == {"Patient", "Location"}  # Group and Device have no "name"
    deep = parse_search("Observation", [("subject:Patient.organization.name", "hop")]).clauses[0]
    inner = deep.inner[0].clauses[0]
    assert isinstance(inner, ChainClause) and inner.inner[0].resource_type == "Organization"


def test_has_nested() -> None:
    req = parse_search("Patient", [("_has:Observation:patient:_has:AuditEvent:entity:agent", "Practitioner/1")])
    has = req.clauses[0]
    assert isinstance(has, HasClause) and has.resource_type == "Observation" and has.param.code == "patient"
    inner = has.inner.clauses[0]
    assert isinstance(inner, HasClause) and inner.resource_type == "AuditEvent"
    with pytest.raises(BadRequest):
        parse_search("Observation", [("_has:Observation:patient:code", "1")])  # patient points to Patient


def test_system_search_and_type() -> None:
    req = parse_search(None, [("_type", "Patient,Observation"), ("_lastUpdated", "gt2023")])
    assert req.types == ("Patient", "Observation") and req.clauses[0].param.code == "_lastUpdated"
    with pytest.raises(BadRequest):
        parse_search(None, [("code", "x")])
    with pytest.raises(BadRequest):
        parse_search("Nope", [])


def test_empty_values_are_ignored() -> None:
    assert parse_search("Patient", [("family", "")]).clauses == ()


def test_frozen() -> None:
    req = parse_search("Patient", [])
    with pytest.raises(AttributeError):
        req.count = 3  # type: ignore[misc]
