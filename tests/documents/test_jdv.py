"""terminologies/fr tables vs the ANS publications in ../shared/terminology-fr, and the judge() verdicts."""

from __future__ import annotations

import re

import pytest
from lxml import etree

from fhir_server.documents.jdv import FR_TERMINOLOGIES, load_value_sets, value_sets

from .conftest import SHARED

SVS = SHARED / "terminology-fr" / "jdv-svs"
SVS_FILES = {
    "J02": "JDV_J02_XdsHealthcareFacilityTypeCode_CISIS.xml",
    "J04": "JDV_J04_XdsPracticeSettingCode_CISIS.xml",
    "J07": "JDV_J07_XdsTypeCode_CISIS.xml",
    "J08": "JDV_J08_XdsConfidentialityCode_CISIS.xml",
}


@pytest.mark.parametrize("vs_id", sorted(SVS_FILES))
def test_tables_hold_exactly_the_svs_concepts(vs_id: str) -> None:
    path = SVS / SVS_FILES[vs_id]
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    root = etree.parse(str(path)).getroot()
    ns = {"s": "urn:ihe:iti:svs:2008"}
    published = {(c.get("codeSystem"), c.get("code"), c.get("displayName"))
                 for c in root.iterfind(".//s:Concept", ns)}
    vs = value_sets()[vs_id]
    import json

    raw = json.loads(next(FR_TERMINOLOGIES.glob(f"{vs_id}-*.json")).read_text(encoding="utf-8"))
    ours = {(c["oid"], c["code"], c["display"]) for c in raw["concepts"]}
    assert ours == published
    assert raw["oid"] == root.find("s:ValueSet", ns).get("id")
    assert len(vs.concepts) == len(published)


def test_j06_matches_the_fsh_value_set() -> None:
    path = SHARED / "terminology-fr" / "fsh" / "JDV_J06_XdsClassCode_CISIS.fsh"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    published = set(re.findall(r'^\* \$TRE-A(?:03-ClasseDocument|10-NomenclatureURN)#(\S+) "', path.read_text(),
                               re.M))
    assert {code for _, code in value_sets()["J06"].concepts} == published


def test_patient_document_types_are_in_j07() -> None:
    j07 = value_sets()["J07"]
    for i in range(1, 10):
        coding = j07.coding(f"DOCPAT{i:02d}")
        assert coding["system"].endswith("TRE-A05-TypeDocComplementaire")
    with pytest.raises(KeyError):
        j07.coding("DOCPAT10")


def test_judge_verdicts() -> None:
    vs = load_value_sets()
    j02, j07, j08 = vs["J02"], vs["J07"], vs["J08"]
    r02 = "https://mos.esante.gouv.fr/NOS/TRE_R02-SecteurActivite/FHIR/TRE-R02-SecteurActivite"
    assert j02.judge({"coding": [{"system": r02, "code": "SA01"}]})[0] == "member"
    assert j02.judge({"coding": [{"system": "urn:oid:1.2.250.1.71.4.2.4", "code": "SA01"}]})[0] == "member"
    assert j02.judge({"coding": [{"system": r02, "code": "SA99"}]})[0] == "unknown-code"
    assert j02.judge({"coding": [{"system": "http://snomed.info/sct", "code": "22232009"}]})[0] == "foreign"
    assert j02.judge({"text": "x"})[0] == "empty"
    # LOINC is one of J07's systems but the binding is preferred: other LOINC codes are allowed
    assert j07.judge({"coding": [{"system": "http://loinc.org", "code": "1-8"}]})[0] == "foreign"
    # J08 is extensible: a v3 confidentiality code outside it is wrong
    v3 = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    assert j08.judge({"coding": [{"system": v3, "code": "U"}]})[0] == "unknown-code"
    assert j08.judge({"system": v3, "code": "N"})[0] == "member"
    assert not vs["J10"].complete
