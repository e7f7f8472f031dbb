"""Post-processors named by ``hooks = [...]`` in mappings: semantics that are not a path.

Each hook is ``fn(converter, node, resource, path) -> list[Reference] | None`` and mutates
``resource`` in place. Wrapper mappings (no resource) receive an empty dict and may
return references of resources they produced themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lxml import etree

from fhir_server.documents.datatypes import DATATYPES, clean_text, data_absent, number
from fhir_server.documents.mapping import hook
from fhir_server.documents.safexml import CDA_NS

if TYPE_CHECKING:
    from fhir_server.documents.cda import _Converter

__all__: list[str] = []

Json = dict[str, Any]
_C = "{" + CDA_NS + "}"
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
_ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
# Problem status observation values (SNOMED CT) -> condition-clinical.
_PROBLEM_STATUS = {"55561003": "active", "73425007": "inactive", "413322009": "resolved",
                   "277022003": "remission", "255227004": "recurrence", "246455001": "recurrence"}
_ACT_STATUS = {"active": "active", "suspended": "active", "completed": "resolved", "aborted": "inactive"}


def _cc(system: str, code: str) -> Json:
    return {"coding": [{"system": system, "code": code}]}


def _negated(node: etree._Element) -> bool:
    return node.get("negationInd") == "true"


def _concern(node: etree._Element) -> etree._Element | None:
    parent = node.getparent()
    if parent is not None and parent.tag == _C + "entryRelationship":
        act = parent.getparent()
        if act is not None and act.tag == _C + "act":
            return act
    return None


def _status_obs_code(node: etree._Element) -> str | None:
    for obs in node.iterfind(f"{_C}entryRelationship/{_C}observation"):
        code = obs.find(_C + "code")
        if code is not None and code.get("code") in ("33999-4", "11323-3"):
            val = obs.find(_C + "value")
            if val is not None:
                return val.get("code")
    return None


@hook("condition_status")
def condition_status(conv: _Converter, node: etree._Element, res: Json, path: str) -> None:
    status = _PROBLEM_STATUS.get(_status_obs_code(node) or "")
    if status is None and ("abatementDateTime" in res or "abatementPeriod" in res):
        status = "resolved"
    if status is None:
        concern = _concern(node)
        sc = concern.find(_C + "statusCode") if concern is not None else None
        status = _ACT_STATUS.get(sc.get("code", "") if sc is not None else "", "active")
    res["clinicalStatus"] = _cc(_CLINICAL, status)
    res["verificationStatus"] = _cc(_VERIFICATION, "refuted" if _negated(node) else "confirmed")


@hook("allergy_status")
def allergy_status(conv: _Converter, node: etree._Element, res: Json, path: str) -> None:
    code = _status_obs_code(node)
    status = {"55561003": "active", "73425007": "inactive", "413322009": "resolved"}.get(code or "")
    if status is None:
        concern = _concern(node)
        sc = concern.find(_C + "statusCode") if concern is not None else None
        status = {"completed": "resolved", "aborted": "inactive"}.get(
            sc.get("code", "") if sc is not None else "", "active")
    if _negated(node):
        res["verificationStatus"] = _cc(_ALLERGY_VERIFICATION, "refuted")
    else:
        res["clinicalStatus"] = _cc(_ALLERGY_CLINICAL, status)
        res["verificationStatus"] = _cc(_ALLERGY_VERIFICATION, "confirmed")
    if "code" not in res:
        # "No known allergy" documents carry the negation on the observation value.
        res.pop("category", None)


@hook("immunization_status")
def immunization_status(conv: _Converter, node: etree._Element, res: Json, path: str) -> None:
    if _negated(node):
        res["status"] = "not-done"
    if not any(k.startswith("occurrence") for k in res):
        res["occurrenceString"] = "unknown"
        res["_occurrenceString"] = {"extension": [data_absent()]}


@hook("medication_dosage")
def medication_dosage(conv: _Converter, node: etree._Element, res: Json, path: str) -> None:
    """Dosage: route, dose and the PIVL_TS/EIVL_TS frequency of a substanceAdministration."""
    ctx = conv.ctx
    dosage: Json = {}
    text = node.find(_C + "text")
    if text is not None:
        t = DATATYPES["ST"](ctx, text)
        if t:
            dosage["text"] = t
    for et in node.iterfind(_C + "effectiveTime"):
        xt = (et.get("{http://www.w3.org/2001/XMLSchema-instance}type") or "").rsplit(":", 1)[-1]
        if xt == "PIVL_TS":
            period = et.find(_C + "period")
            if period is not None:
                value = number(period.get("value"))
                unit = {"h": "h", "d": "d", "wk": "wk", "min": "min", "mo": "mo", "a": "a", "s": "s"}.get(
                    (period.get("unit") or "").strip())
                if value is not None and unit and value > 0:
                    dosage["timing"] = {"repeat": {"frequency": 1, "period": value, "periodUnit": unit}}
        elif xt == "EIVL_TS":
            event = et.find(_C + "event")
            if event is not None and event.get("code"):
                dosage["timing"] = {"code": {"text": event.get("code")}}
    route = node.find(_C + "routeCode")
    if route is not None:
        cc = DATATYPES["CD"](ctx, route)
        if cc:
            dosage["route"] = cc
    site = node.find(_C + "approachSiteCode")
    if site is not None:
        cc = DATATYPES["CD"](ctx, site)
        if cc:
            dosage["site"] = cc
    dose = node.find(_C + "doseQuantity")
    if dose is not None:
        rate: Json = {}
        if dose.find(_C + "low") is not None or dose.find(_C + "high") is not None:
            rng = DATATYPES["IVL_PQ"](ctx, dose)
            if rng:
                rate["doseRange"] = rng
        else:
            q = DATATYPES["PQ"](ctx, dose)
            if q:
                q.pop("comparator", None)
                rate["doseQuantity"] = q
        if rate:
            dosage["doseAndRate"] = [rate]
    if dosage:
        res["dosageInstruction" if res.get("resourceType") == "MedicationRequest" else "dosage"] = [dosage]
    if not any(k.startswith("medication") for k in res):
        res["medicationCodeableConcept"] = {"extension": [data_absent()]}


_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@hook("encounter_class")
def encounter_class(conv: _Converter, node: etree._Element, res: Json, path: str) -> None:
    for cc in res.get("type", ()):
        for c in cc.get("coding", ()):
            if c.get("system") == _ACT_CODE:
                res["class"] = dict(c)
                return
    code = node.find(_C + "code")
    if code is not None:
        for tr in code.iterfind(_C + "translation"):
            if tr.get("codeSystem") == "2.16.840.1.113883.5.4" and tr.get("code"):
                res["class"] = {"system": _ACT_CODE, "code": tr.get("code")}
                return
    res["class"] = {"extension": [data_absent()]}


@hook("embedded_document")
def embedded_document(conv: _Converter, node: etree._Element, res: Json, path: str) -> list[Json] | None:
    """observationMedia (e.g. the PDF copy of a French CR-BIO) -> Binary + DocumentReference content."""
    value = node.find(_C + "value")
    if value is None:
        return None
    ref = conv.add_attachment(value, path + "/value", clean_text(node.get("ID")))
    return [ref] if ref else None


@hook("coverage_payor")
def coverage_payor(conv: _Converter, node: etree._Element, res: Json, path: str) -> None:
    if not res.get("payor"):
        res["payor"] = [{"extension": [data_absent()]}]


@hook("observation_negation")
def observation_negation(conv: _Converter, node: etree._Element, res: Json, path: str) -> None:
    """A negated observation ("no fever") is recorded as the absence of the finding."""
    if _negated(node) and "valueCodeableConcept" in res:
        res["valueCodeableConcept"].setdefault("text", "absent")
        res["interpretation"] = [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
            "code": "NEG", "display": "Negative"}]}]


@hook("family_member_sex")
def family_member_sex(conv: _Converter, node: etree._Element, res: Json, path: str) -> None:
    if "sex" in res and isinstance(res["sex"], dict):
        return
    res.pop("sex", None)
