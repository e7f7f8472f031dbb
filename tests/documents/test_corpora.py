"""Every shared CDA document converts, and every produced resource validates (R4B)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from fhir_server.documents.cda import convert_cda
from fhir_server.documents.narrative import XHTML_NS
from fhir_server.fhir.errors import FhirError
from fhir_server.fhir.models import model_class

from .conftest import ccda_documents, cda_fr_files, shared_or_skip

ALL = cda_fr_files() + ccda_documents()


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


def _is_cda(data: bytes) -> bool:
    try:
        root = etree.fromstring(data.removeprefix(b"\xef\xbb\xbf"), etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError:
        return False
    if root.tag == "{http://www.w3.org/1999/XSL/Transform}stylesheet":  # ANS self-presenting CDA
        return root.find("*/{urn:hl7-org:v3}ClinicalDocument") is not None
    # a ClinicalDocument written without its namespace (some HL7 guide examples) is still CDA
    return root.tag in ("{urn:hl7-org:v3}ClinicalDocument", "ClinicalDocument")


def _check_div(div: str) -> None:
    root = etree.fromstring(div.encode())
    assert root.tag == f"{{{XHTML_NS}}}div"
    assert "".join(root.itertext()).strip()
    for el in root.iter():
        assert etree.QName(el).namespace == XHTML_NS


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_document_converts_and_validates(path: Path) -> None:
    shared_or_skip()
    data = path.read_bytes()
    if not _is_cda(data):
        with pytest.raises(FhirError) as info:
            convert_cda(data)
        assert 400 <= info.value.status < 500
        return
    result = convert_cda(data, recorded="2024-01-01T00:00:00Z")
    resources = result.all_resources()
    ids = [r["id"] for r in resources]
    assert len(ids) == len(set(ids)), "resource ids must be unique"
    for res in resources:
        model_class(res["resourceType"]).model_validate(res)
    for sec in _walk((result.composition or {}).get("section", [])):
        if "text" in sec:
            _check_div(sec["text"]["div"])
    known = {"urn:uuid:" + i for i in ids}
    for ref in _references(resources):
        if ref.startswith("urn:uuid:"):
            assert ref in known, f"dangling reference {ref}"
    # deterministic
    again = convert_cda(data, recorded="2024-01-01T00:00:00Z")
    assert [r["id"] for r in again.all_resources()] == ids


def _walk(sections: list[dict]) -> list[dict]:
    out = []
    for s in sections:
        out.append(s)
        out += _walk(s.get("section", []))
    return out


def _references(value: object) -> list[str]:
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                out.append(v)
            else:
                out += _references(v)
    elif isinstance(value, list):
        for v in value:
            out += _references(v)
    return out


def test_corpora_present_or_skip() -> None:
    shared_or_skip()
    assert len(cda_fr_files()) >= 30
    assert len(ccda_documents()) >= 140
