"""Hostile XML: every attack is a typed 4xx error and nothing is produced."""

from __future__ import annotations

import pytest

from fhir_server.documents.cda import convert_cda
from fhir_server.documents.safexml import ParseLimits
from fhir_server.fhir.errors import BadRequest, FhirError, PayloadTooLarge, Unprocessable

MINIMAL = (
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3" extension="x"/>'
    b"<recordTarget><patientRole><id root=\"1.2.250.1.213.1.4.8\" extension=\"123\"/></patientRole></recordTarget>"
    b"</ClinicalDocument>"
)

XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>"""

XXE_NETWORK = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "http://127.0.0.1:1/evil">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>"""

XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument [<!ENTITY % dtd SYSTEM "http://127.0.0.1:1/evil.dtd"> %dtd;]>
<ClinicalDocument xmlns="urn:hl7-org:v3"/>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument SYSTEM "http://127.0.0.1:1/cda.dtd">
<ClinicalDocument xmlns="urn:hl7-org:v3"/>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol9;</title></ClinicalDocument>"""

QUADRATIC = (
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "' + b"A" * 50_000 + b'">]>'
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>' + b"&a;" * 20_000 + b"</title></ClinicalDocument>"
)


@pytest.mark.parametrize(
    "payload",
    [XXE_FILE, XXE_NETWORK, XXE_PARAMETER, EXTERNAL_DTD, BILLION_LAUGHS, QUADRATIC],
    ids=["xxe-file", "xxe-network", "xxe-parameter-entity", "external-dtd", "billion-laughs", "quadratic-blowup"],
)
def test_doctype_attacks_are_rejected(payload: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        convert_cda(payload)
    assert info.value.status == 400
    assert "DOCTYPE" in str(info.value)


def test_doctype_after_bom_and_whitespace_is_rejected() -> None:
    with pytest.raises(BadRequest):
        convert_cda(b"\xef\xbb\xbf  \n" + XXE_FILE)


def test_oversized_document() -> None:
    big = MINIMAL.replace(b"</ClinicalDocument>", b"<!--" + b"x" * 2048 + b"--></ClinicalDocument>")
    with pytest.raises(PayloadTooLarge) as info:
        convert_cda(big, limits=ParseLimits(max_bytes=1024))
    assert info.value.status == 413


def test_default_size_limit_is_enforced() -> None:
    with pytest.raises(PayloadTooLarge):
        convert_cda(MINIMAL + b" " * (20 * 1024 * 1024 + 1))


def test_deep_nesting() -> None:
    depth = 5000
    body = b"<text>" + b"<content>" * depth + b"x" + b"</content>" * depth + b"</text>"
    doc = MINIMAL.replace(b"</ClinicalDocument>", body + b"</ClinicalDocument>")
    with pytest.raises(FhirError) as info:
        convert_cda(doc)
    assert 400 <= info.value.status < 500


def test_depth_limit_is_configurable() -> None:
    body = b"<a>" * 40 + b"</a>" * 40
    doc = MINIMAL.replace(b"</ClinicalDocument>", body + b"</ClinicalDocument>")
    with pytest.raises(BadRequest):
        convert_cda(doc, limits=ParseLimits(max_depth=20))
    assert convert_cda(doc, limits=ParseLimits(max_depth=100)).patient["resourceType"] == "Patient"


@pytest.mark.parametrize(
    "payload, status",
    [
        (b"", 400),
        (b"not xml at all", 400),
        (b"<ClinicalDocument xmlns='urn:hl7-org:v3'>", 400),
        (b"<Document/>", 422),
        (b"<html xmlns='http://www.w3.org/1999/xhtml'/>", 422),
        (b'{"resourceType": "Patient"}', 400),
    ],
    ids=["empty", "text", "truncated", "other-root", "html", "json"],
)
def test_not_cda(payload: bytes, status: int) -> None:
    with pytest.raises(FhirError) as info:
        convert_cda(payload)
    assert info.value.status == status
    assert isinstance(info.value, BadRequest | Unprocessable)


def test_bom_is_tolerated_and_kept_in_binary() -> None:
    import base64

    result = convert_cda(b"\xef\xbb\xbf" + MINIMAL)
    assert base64.b64decode(result.binary["data"]).startswith(b"\xef\xbb\xbf")
    assert result.patient_identifiers == [("urn:oid:1.2.250.1.213.1.4.8", "123")]


def test_clinical_document_without_namespace_is_read_as_cda() -> None:
    from fhir_server.documents.cda import convert_cda

    result = convert_cda(b"<ClinicalDocument><id root='1.2.3' extension='x'/><title>t</title></ClinicalDocument>")
    assert any("no namespace" in i["diagnostics"] for i in result.issues)
    assert result.document_reference["resourceType"] == "DocumentReference"
