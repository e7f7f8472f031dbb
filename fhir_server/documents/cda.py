"""Pure CDA R2 -> FHIR R4 conversion (no database, no HTTP).

:func:`convert_cda` turns one CDA document into a :class:`ConversionResult`: the
original bytes as a Binary, a DocumentReference carrying the header metadata, the
Patient from ``recordTarget``, a Composition mirroring the sections (narrative
sanitised to XHTML), and the discrete resources the mappings in ``mappings/``
extract from structured entries, each with a Provenance pointing at the
DocumentReference and at the source entry's location.

Identity is deterministic: every id is a UUID derived from the document id
(``ClinicalDocument/id``), the element's path in the document and its CDA id, so
converting the same document twice gives the same resources (CDA ids alone are not
unique inside many real documents). Shared resources (Practitioner, Organization)
get ids derived from their identifier, so they deduplicate across documents.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from fhir_server.documents.datatypes import (
    DATATYPES,
    Context,
    clean_text,
    codeable_concept,
    data_absent,
    ts_to_fhir,
    ts_to_instant,
)
from fhir_server.documents.mapping import (
    EntryMapping,
    FieldSpec,
    MappingSet,
    apply_field,
    default_mappings,
    set_path,
)
from fhir_server.documents.narrative import to_xhtml
from fhir_server.documents.safexml import CDA_NS, NAMESPACE_ADDED, ParseLimits, parse_cda_xml

__all__ = [
    "ConversionResult",
    "SectionStats",
    "convert_cda",
    "SOURCE_LOCATION_URL",
    "INS_SYSTEMS",
    "CDA_CONTENT_TYPE",
    "SHARED_TYPES",
    "document_reference_id",
]

Json = dict[str, Any]
_C = "{" + CDA_NS + "}"
CDA_CONTENT_TYPE = "application/hl7-cda+xml"
SOURCE_LOCATION_URL = "https://fhir-server.local/StructureDefinition/cda-source-location"
INS_SYSTEMS = (
    "urn:oid:1.2.250.1.213.1.4.8",  # INS-NIR
    "urn:oid:1.2.250.1.213.1.4.9",  # INS-NIA
    "urn:oid:1.2.250.1.213.1.4.10",  # INS-NIR test
    "urn:oid:1.2.250.1.213.1.4.11",  # INS-NIR demo
)
_STATEMENTS = frozenset(
    _C + n for n in ("act", "observation", "organizer", "substanceAdministration", "procedure",
                     "encounter", "supply", "observationMedia", "regionOfInterest")
)
_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
_RELATES = {"RPLC": "replaces", "APND": "appends", "XFRM": "transforms"}
_FORMAT_SYSTEM = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
_SHARED_TYPES = ("Practitioner", "Organization", "PractitionerRole")
SHARED_TYPES = _SHARED_TYPES  # resources shared across documents (deduplicated by identifier)


@dataclass
class SectionStats:
    """Entries present vs mapped in one section (for the report)."""

    path: str
    title: str | None
    code: str | None
    mapping: str | None
    present: int = 0
    mapped: int = 0
    resources: Counter[str] = field(default_factory=Counter)


@dataclass
class ConversionResult:
    """Everything one CDA document becomes. All references are ``urn:uuid:`` fullUrls."""

    document_id: str
    binary: Json
    document_reference: Json
    patient: Json
    patient_identifiers: list[tuple[str, str]]
    composition: Json | None
    resources: list[Json]
    issues: list[Json]
    sections: list[SectionStats]
    replaces: list[str] = field(default_factory=list)
    attachments: list[Json] = field(default_factory=list)

    def all_resources(self) -> list[Json]:
        """Binary, DocumentReference, Patient, Composition, then every other resource."""
        head = [self.binary, *self.attachments, self.document_reference, self.patient]
        if self.composition is not None:
            head.append(self.composition)
        return head + self.resources

    def counts(self) -> Counter[str]:
        return Counter(r["resourceType"] for r in self.all_resources())

    @property
    def entries_present(self) -> int:
        return sum(s.present for s in self.sections)

    @property
    def entries_mapped(self) -> int:
        return sum(s.mapped for s in self.sections)

    def operation_outcome(self) -> Json:
        issues = self.issues or [{"severity": "information", "code": "informational",
                                  "diagnostics": "converted without issues"}]
        return {"resourceType": "OperationOutcome", "issue": issues}

    def to_transaction_bundle(self) -> Json:
        """A FHIR transaction Bundle; conditional creates on identifiers make a re-import idempotent."""
        entries = []
        for res in self.all_resources():
            request: Json = {"method": "POST", "url": res["resourceType"]}
            cond = _condition(res)
            if cond:
                request["ifNoneExist"] = cond
            entries.append({"fullUrl": "urn:uuid:" + res["id"], "resource": res, "request": request})
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _condition(res: Json) -> str | None:
    rt = res["resourceType"]
    if rt == "DocumentReference" and res.get("masterIdentifier"):
        ident = res["masterIdentifier"]
    elif rt == "Patient":
        ident = next(iter(res.get("identifier", ())), None)
    else:
        idents = res.get("identifier")
        if isinstance(idents, dict):
            ident = idents
        elif idents:
            # Our deterministic identifier (last) for extracted resources; the first real one for shared ones.
            ident = idents[0] if rt in _SHARED_TYPES else idents[-1]
        else:
            ident = None
    if not ident or "value" not in ident:
        return None
    system = ident.get("system")
    return f"identifier={system}|{ident['value']}" if system else f"identifier={ident['value']}"


def _uid(*parts: str) -> str:
    digest = hashlib.sha1("\x1f".join(parts).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def document_reference_id(identifier: Json) -> str:
    """The DocumentReference id :func:`convert_cda` gives the document whose
    ``ClinicalDocument/id`` converts to ``identifier`` (a FHIR Identifier)."""
    return _uid(f"{identifier.get('system', '')}|{identifier['value']}", "DocumentReference")


def _ref(res: Json, display: str | None = None) -> Json:
    out: Json = {"reference": "urn:uuid:" + res["id"]}
    if display:
        out["display"] = display
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _local(el: etree._Element) -> str:
    tag = el.tag
    return tag[len(_C):] if isinstance(tag, str) and tag.startswith(_C) else etree.QName(tag).localname


def _template_ids(el: etree._Element) -> list[str]:
    return [t.get("root", "") for t in el.iterfind(_C + "templateId")]


class _Converter:
    def __init__(self, root: etree._Element, data: bytes, mappings: MappingSet, recorded: str,
                 source_url: str | None) -> None:
        self.root = root
        self.data = data
        self.ms = mappings
        self.ctx = Context(root=root)
        self.recorded = recorded
        self.source_url = source_url
        self.resources: list[Json] = []
        self.shared: dict[str, Json] = {}
        self.sections: list[SectionStats] = []
        self.attachments: list[Json] = []
        self.extra_content: list[Json] = []
        doc_id = root.find(_C + "id")
        ident = DATATYPES["II"](self.ctx, doc_id) if doc_id is not None else None
        self.master_identifier: Json | None = ident
        if ident:
            self.doc_key = f"{ident.get('system', '')}|{ident['value']}"
        else:
            self.doc_key = "sha1:" + hashlib.sha1(data).hexdigest()
            self.ctx.issue("ClinicalDocument/id is missing or invalid: the document hash identifies it",
                           code="required")
        self.docref_id = _uid(self.doc_key, "DocumentReference")
        self.patient_id = _uid(self.doc_key, "Patient")
        self.patient_ref = {"reference": "urn:uuid:" + self.patient_id}
        self.doc_author_ref: Json | None = None

    # ------------------------------------------------------------------ shared actors
    def actor(self, el: etree._Element) -> Json | None:
        """Reference to the Practitioner / PractitionerRole / Organization behind a participation."""
        role = el
        for tag in ("assignedAuthor", "assignedEntity", "participantRole", "associatedEntity",
                    "intendedRecipient", "healthCareFacility", "manufacturedProduct"):
            sub = el.find(_C + tag)
            if sub is not None:
                role = sub
                break
        person = None
        for tag in ("assignedPerson", "associatedPerson", "informationRecipient", "playingEntity"):
            person = role.find(_C + tag)
            if person is not None:
                break
        org = None
        for tag in ("representedOrganization", "scopingOrganization", "serviceProviderOrganization",
                    "manufacturerOrganization", "receivedOrganization", "providerOrganization"):
            org = role.find(_C + tag)
            if org is not None:
                break
        if _local(el) in ("representedCustodianOrganization", "serviceProviderOrganization",
                          "manufacturerOrganization", "providerOrganization", "representedOrganization"):
            org, person, role = el, None, None
        org_ref = self.organization(org) if org is not None else None
        if person is None or (person.find(_C + "name") is None and _local(person) == "playingEntity"):
            if role is not None and org_ref is None and _local(role) in ("assignedEntity", "assignedAuthor"):
                device = role.find(_C + "assignedAuthoringDevice")
                name = device.findtext(_C + "softwareName") if device is not None else None
                return {"display": clean_text(name)} if clean_text(name) else None
            return org_ref
        prac = self.practitioner(role, person)
        if prac is None:
            return org_ref
        if org_ref is None:
            return prac
        code = role.find(_C + "code") if role is not None else None
        key = "PractitionerRole|" + prac["reference"] + "|" + org_ref["reference"]
        existing = self.shared.get(key)
        if existing is None:
            pr: Json = {"resourceType": "PractitionerRole", "id": _uid(key)}
            pr["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:" + pr["id"]}]
            pr["practitioner"] = {"reference": prac["reference"]}
            pr["organization"] = {"reference": org_ref["reference"]}
            if code is not None:
                cc = codeable_concept(self.ctx, code)
                if cc:
                    pr["specialty" if "1.2.250.1.213.1.1.4.5" in (code.get("codeSystem") or "") else "code"] = [cc]
            existing = self.shared[key] = pr
        return {"reference": "urn:uuid:" + existing["id"], **({"display": prac["display"]} if "display" in prac else {})}

    def _identifiers(self, el: etree._Element | None) -> list[Json]:
        if el is None:
            return []
        out = []
        for i in el.iterfind(_C + "id"):
            v = DATATYPES["II"](self.ctx, i)
            if v and v not in out:
                out.append(v)
        return out

    def practitioner(self, role: etree._Element | None, person: etree._Element) -> Json | None:
        ids = self._identifiers(role)
        name_el = person.find(_C + "name")
        names = DATATYPES["EN"](self.ctx, name_el) if name_el is not None else None
        if not ids and not names:
            return None
        key = ("Practitioner|" + ids[0].get("system", "") + "|" + ids[0]["value"]) if ids else (
            "Practitioner|" + self.doc_key + "|" + repr(names))
        display = _display_name(names)
        existing = self.shared.get(key)
        if existing is None:
            prac: Json = {"resourceType": "Practitioner", "id": _uid(key)}
            if ids:
                prac["identifier"] = ids
            if names:
                prac["name"] = names
            self._contact(role, prac)
            existing = self.shared[key] = prac
        out = {"reference": "urn:uuid:" + existing["id"]}
        if display:
            out["display"] = display
        return out

    def organization(self, org: etree._Element) -> Json | None:
        ids = self._identifiers(org)
        name = clean_text("".join(org.find(_C + "name").itertext())) if org.find(_C + "name") is not None else None
        if not ids and not name:
            return None
        key = ("Organization|" + ids[0].get("system", "") + "|" + ids[0]["value"]) if ids else (
            "Organization|" + self.doc_key + "|" + (name or ""))
        existing = self.shared.get(key)
        if existing is None:
            res: Json = {"resourceType": "Organization", "id": _uid(key)}
            if ids:
                res["identifier"] = ids
            if name:
                res["name"] = name
            self._contact(org, res)
            sic = org.find(_C + "standardIndustryClassCode")
            if sic is not None:
                cc = codeable_concept(self.ctx, sic)
                if cc:
                    res["type"] = [cc]
            existing = self.shared[key] = res
        out = {"reference": "urn:uuid:" + existing["id"]}
        if name:
            out["display"] = name
        return out

    def _contact(self, el: etree._Element | None, res: Json) -> None:
        if el is None:
            return
        telecom = [t for t in (DATATYPES["TEL"](self.ctx, x) for x in el.iterfind(_C + "telecom")) if t]
        if telecom:
            res["telecom"] = telecom
        addr = [a for a in (DATATYPES["AD"](self.ctx, x) for x in el.iterfind(_C + "addr")) if a]
        if addr:
            res["address"] = addr

    # ------------------------------------------------------------------ paths and ids
    @staticmethod
    def rel_path(el: etree._Element, stop: etree._Element | None) -> str:
        parts: list[str] = []
        cur = el
        while cur is not None and cur is not stop:
            parent = cur.getparent()
            name = _local(cur)
            if parent is not None:
                same = [c for c in parent if c.tag == cur.tag]
                if len(same) > 1:
                    name += f"[{same.index(cur) + 1}]"
            parts.append(name)
            cur = parent
        return "/".join(reversed(parts))

    def new_resource(self, rtype: str, path: str, node: etree._Element) -> Json:
        cda_id = node.find(_C + "id")
        id_part = f"{cda_id.get('root', '')}|{cda_id.get('extension', '')}" if cda_id is not None else ""
        return {"resourceType": rtype, "id": _uid(self.doc_key, path, id_part)}

    def provenance(self, res: Json, path: str) -> Json:
        agents = [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                 "code": "assembler"}]},
            "who": {"display": "fhir-server CDA converter"},
        }]
        if self.doc_author_ref:
            agents.insert(0, {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                     "code": "author"}]},
                "who": dict(self.doc_author_ref),
            })
        return {
            "resourceType": "Provenance",
            "id": _uid(res["id"], "Provenance"),
            "target": [{"reference": "urn:uuid:" + res["id"]}],
            "recorded": self.recorded,
            "agent": agents,
            "entity": [{
                "extension": [{"url": SOURCE_LOCATION_URL, "valueString": path}],
                "role": "source",
                "what": {"reference": "urn:uuid:" + self.docref_id},
            }],
        }

    # ------------------------------------------------------------------ entries
    def dispatch(self, node: etree._Element, extra_tids: list[str], default: str | None) -> EntryMapping | None:
        tids = extra_tids + _template_ids(node)
        m = self.ms.entry_for(tids, _local(node), node.get("moodCode"))
        if m is None and default:
            m = self.ms.entries[default]
        return m

    def run_entry(self, m: EntryMapping, node: etree._Element, path: str) -> list[Json]:
        """Run ``m`` on ``node``; returns references to the resources to list in the section."""
        self.ctx.location = path
        if m.resource is None:
            refs: list[Json] = []
            for spec in m.fields:
                if spec.type == "ref":
                    refs += self._children(spec, node, path, None)
            for h in m.hooks:
                from fhir_server.documents.mapping import HOOKS

                out = HOOKS[h](self, node, {}, path)
                if out:
                    refs += out
            return refs
        res = self.new_resource(m.resource, path, node)
        self.fill(m, node, res, path)
        self.finish(m.resource, res, path)
        return [_ref(res)]

    def fill(self, m: EntryMapping, node: etree._Element, res: Json, path: str) -> None:
        from fhir_server.documents.mapping import HOOKS

        for key, value in m.fixed.items():
            set_path(res, key, _copy(value))
        for spec in m.fields:
            if spec.type == "ref":
                self._children(spec, node, path, res)
            elif spec.type == "actor":
                self._actor_field(spec, node, res)
            else:
                apply_field(self.ctx, node, spec, res, self.run_struct, self.ms.structs)
        for h in m.hooks:
            HOOKS[h](self, node, res, path)

    def run_struct(self, m: EntryMapping, node: etree._Element) -> Json | None:
        out: Json = {}
        self.fill(m, node, out, self.ctx.location)
        return out or None

    def _actor_field(self, spec: FieldSpec, node: etree._Element, res: Json) -> None:
        for el in spec.xpath(node) if spec.xpath is not None else ():
            ref = self.actor(el)
            if ref:
                set_path(res, spec.to, ref)
                if not spec.many:
                    return

    def _children(self, spec: FieldSpec, node: etree._Element, path: str, parent: Json | None) -> list[Json]:
        refs: list[Json] = []
        for child in spec.xpath(node) if spec.xpath is not None else ():
            if not isinstance(child, etree._Element):
                continue
            cm = self.dispatch(child, [], spec.ref_default)
            child_path = path + "/" + self.rel_path(child, node)
            if cm is None:
                self.ctx.issue(f"no mapping for nested {_local(child)} {_template_ids(child)}: skipped",
                               severity="information", code="not-supported", location=child_path)
                continue
            produced = self.run_entry(cm, child, child_path)
            self.ctx.location = path
            if parent is not None:
                for r in produced:
                    set_path(parent, spec.to, r)
            refs += produced
        return refs

    def finish(self, rtype: str, res: Json, path: str) -> None:
        conf = self.ms.resources.get(rtype, {})
        subject = conf.get("subject")
        if subject and subject not in res:
            res[subject] = dict(self.patient_ref)
        for key, value in conf.get("defaults", {}).items():
            if key not in res:
                res[key] = _copy(value)
        for key in conf.get("required", ()):
            if key not in res:
                res[key] = {"extension": [data_absent()]}
        ident_kind = conf.get("identifier", "list")
        own = {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:" + res["id"]}
        if ident_kind == "list":
            res.setdefault("identifier", []).append(own)
        elif ident_kind == "single" and "identifier" not in res:
            res["identifier"] = own
        self.resources.append(res)
        self.resources.append(self.provenance(res, path))

    # ------------------------------------------------------------------ body
    def run_section(self, sec: etree._Element, path: str) -> Json:
        tids = _template_ids(sec)
        code_el = sec.find(_C + "code")
        code = code_el.get("code") if code_el is not None else None
        sm = self.ms.section_for(tids, code)
        title = clean_text("".join(sec.find(_C + "title").itertext())) if sec.find(_C + "title") is not None else None
        stats = SectionStats(path, title, code, sm.id if sm else None)
        self.sections.append(stats)
        out: Json = {}
        if title:
            out["title"] = title
        if code_el is not None:
            cc = codeable_concept(self.ctx, code_el)
            if cc:
                out["code"] = cc
        div = to_xhtml(sec.find(_C + "text"))
        if div:
            out["text"] = {"status": "additional", "div": div}
        entries: list[Json] = []
        for i, entry in enumerate(sec.iterfind(_C + "entry"), 1):
            stats.present += 1
            statement = next((c for c in entry if c.tag in _STATEMENTS), None)
            epath = f"{path}/entry[{i}]"
            if statement is None:
                self.ctx.issue("entry without a clinical statement: skipped", severity="information",
                               code="structure", location=epath)
                continue
            spath = epath + "/" + _local(statement)
            m = None
            if sm is not None and sm.overrides:
                hit = next((sm.overrides[t] for t in _template_ids(entry) + _template_ids(statement)
                            if t in sm.overrides), None)
                m = self.ms.entries[hit] if hit else None
            if m is None:
                m = self.dispatch(statement, _template_ids(entry), sm.default if sm else None)
            if m is None:
                self.ctx.issue(
                    f"no mapping for {_local(statement)} with templateIds {_template_ids(entry) + _template_ids(statement)}"
                    f" in section {code or tids}: skipped", severity="information", code="not-supported",
                    location=spath)
                continue
            mark = len(self.resources)
            shared_mark = dict(self.shared)
            issues_mark = len(self.ctx.issues)
            try:
                refs = self.run_entry(m, statement, spath)
            except Exception as exc:  # one bad entry never sinks the document
                del self.resources[mark:]
                self.shared = shared_mark
                del self.ctx.issues[issues_mark:]
                self.ctx.issue(f"entry mapping {m.id} failed: {type(exc).__name__}: {exc}", severity="error",
                               code="exception", location=spath)
                continue
            if refs:
                stats.mapped += 1
                entries += refs
                for r in self.resources[mark:]:
                    if r["resourceType"] != "Provenance":
                        stats.resources[r["resourceType"]] += 1
            else:
                self.ctx.issue(f"entry mapping {m.id} produced nothing", severity="information",
                               code="informational", location=spath)
        if entries:
            out["entry"] = entries
        subs = []
        for j, comp in enumerate(sec.iterfind(_C + "component"), 1):
            sub = comp.find(_C + "section")
            if sub is not None:
                subs.append(self.run_section(sub, f"{path}/component[{j}]/section"))
        if subs:
            out["section"] = subs
        if not (div or entries or subs):
            out["emptyReason"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable"}]}
        return out

    def add_attachment(self, value_el: etree._Element, path: str, title: str | None) -> Json | None:
        """An embedded document (nonXMLBody or observationMedia) becomes a Binary and a
        second DocumentReference.content entry."""
        media = value_el.get("mediaType") or "text/plain"
        if value_el.get("representation") == "B64":
            raw = "".join("".join(value_el.itertext()).split())
            try:
                payload = base64.b64decode(raw, validate=True)
            except ValueError:
                self.ctx.issue("embedded document is not valid base64: skipped", location=path)
                return None
        else:
            ref = value_el.find(_C + "reference")
            if ref is not None and ref.get("value"):
                att = {"contentType": media, "url": ref.get("value")}
                self.extra_content.append({"attachment": att})
                return None
            payload = "".join(value_el.itertext()).encode()
        if not payload.strip():
            return None
        binary = {"resourceType": "Binary", "id": _uid(self.doc_key, path, "Binary"),
                  "contentType": media, "data": base64.b64encode(payload).decode()}
        self.attachments.append(binary)
        att: Json = {
            "contentType": media,
            "url": "urn:uuid:" + binary["id"],
            "size": len(payload),
            "hash": base64.b64encode(hashlib.sha1(payload).digest()).decode(),
        }
        if title:
            att["title"] = title
        self.extra_content.append({"attachment": att})
        return _ref(binary)

    # ------------------------------------------------------------------ header
    def convert(self) -> ConversionResult:
        root, ctx = self.root, self.ctx
        ctx.location = "ClinicalDocument"
        if root.get(NAMESPACE_ADDED):
            ctx.issue("ClinicalDocument has no namespace: read as urn:hl7-org:v3", severity="warning")
            del root.attrib[NAMESPACE_ADDED]
        patient, patient_ids = self.patient()
        authors = []
        for a in root.iterfind(_C + "author"):
            ref = self.actor(a)
            if ref:
                authors.append(ref)
        self.doc_author_ref = authors[0] if authors else None
        custodian_el = root.find(f"{_C}custodian/{_C}assignedCustodian/{_C}representedCustodianOrganization")
        custodian = self.actor(custodian_el) if custodian_el is not None else None
        legal = root.find(_C + "legalAuthenticator")
        authenticator = self.actor(legal) if legal is not None else None
        code_el = root.find(_C + "code")
        doc_type = codeable_concept(ctx, code_el) if code_el is not None else None
        title = clean_text("".join(root.find(_C + "title").itertext())) if root.find(_C + "title") is not None else None
        eff = root.find(_C + "effectiveTime")
        eff_value = eff.get("value") if eff is not None else None
        date = ts_to_fhir(eff_value) if eff_value else None
        if eff_value and date is None:
            ctx.issue(f"invalid ClinicalDocument/effectiveTime {eff_value!r}", location="ClinicalDocument/effectiveTime")
        instant = ts_to_instant(eff_value) if eff_value else None
        conf_el = root.find(_C + "confidentialityCode")
        security = None
        if conf_el is not None and conf_el.get("code"):
            security = codeable_concept(ctx, conf_el)
            if security and not any(c.get("system") for c in security.get("coding", ())):
                security["coding"][0]["system"] = _CONFIDENTIALITY
        lang = root.find(_C + "languageCode")
        language = lang.get("code") if lang is not None else None

        # Encounter (componentOf) and service event (documentationOf).
        encounter = self.encompassing_encounter()
        context: Json = {}
        if encounter is not None:
            context["encounter"] = [_ref(encounter)]
        events, period, practice = [], None, None
        for doc_of in root.iterfind(f"{_C}documentationOf/{_C}serviceEvent"):
            ec = doc_of.find(_C + "code")
            if ec is not None:
                cc = codeable_concept(ctx, ec)
                if cc:
                    events.append(cc)
            et = doc_of.find(_C + "effectiveTime")
            if et is not None and period is None:
                period = DATATYPES["IVL_TS"](ctx, et)
            if practice is None:
                sic = doc_of.find(f"{_C}performer/{_C}assignedEntity/{_C}representedOrganization/"
                                  f"{_C}standardIndustryClassCode")
                if sic is not None:
                    practice = codeable_concept(ctx, sic)
        if events:
            context["event"] = events
        if period:
            context["period"] = period
        fac = root.find(f"{_C}componentOf/{_C}encompassingEncounter/{_C}location/{_C}healthCareFacility/{_C}code")
        if fac is not None:
            cc = codeable_concept(ctx, fac)
            if cc:
                context["facilityType"] = cc
        if practice:
            context["practiceSetting"] = practice
        context["sourcePatientInfo"] = dict(self.patient_ref)

        relates, replaces = [], []
        for rel in root.iterfind(_C + "relatedDocument"):
            pid = rel.find(f"{_C}parentDocument/{_C}id")
            ident = DATATYPES["II"](ctx, pid) if pid is not None else None
            code = _RELATES.get(rel.get("typeCode", ""))
            if ident and code:
                relates.append({"code": code, "target": {"identifier": ident}})
                if code == "replaces":
                    replaces.append(ident["value"])

        # Body.
        body = root.find(f"{_C}component/{_C}structuredBody")
        sections: list[Json] = []
        if body is not None:
            for i, comp in enumerate(body.iterfind(_C + "component"), 1):
                sec = comp.find(_C + "section")
                if sec is not None:
                    sections.append(self.run_section(sec, f"/ClinicalDocument/component/structuredBody/component[{i}]/section"))
        non_xml = root.find(f"{_C}component/{_C}nonXMLBody/{_C}text")
        if non_xml is not None:
            self.add_attachment(non_xml, "/ClinicalDocument/component/nonXMLBody/text", title)

        binary = {"resourceType": "Binary", "id": _uid(self.doc_key, "Binary"),
                  "contentType": CDA_CONTENT_TYPE, "data": base64.b64encode(self.data).decode()}
        attachment: Json = {"contentType": CDA_CONTENT_TYPE}
        if language:
            attachment["language"] = language
        attachment["url"] = "urn:uuid:" + binary["id"]
        attachment["size"] = len(self.data)
        attachment["hash"] = base64.b64encode(hashlib.sha1(self.data).digest()).decode()
        if title:
            attachment["title"] = title
        if date:
            attachment["creation"] = date
        content: Json = {"attachment": attachment}
        fmt = self.format_code(body is not None)
        if fmt:
            content["format"] = fmt
        docref: Json = {"resourceType": "DocumentReference", "id": self.docref_id}
        if self.master_identifier:
            docref["masterIdentifier"] = self.master_identifier
        set_id = root.find(_C + "setId")
        idents = []
        if set_id is not None:
            si = DATATYPES["II"](ctx, set_id)
            if si:
                idents.append(si)
        if idents:
            docref["identifier"] = idents
        docref["status"] = "current"
        docref["docStatus"] = "final" if legal is not None else "preliminary"
        docref["type"] = doc_type or {"extension": [data_absent()]}
        category = self.document_class(code_el)
        if category:
            docref["category"] = [category]
        docref["subject"] = dict(self.patient_ref)
        if instant:
            docref["date"] = instant
        if authors:
            docref["author"] = [dict(a) for a in authors]
        if authenticator:
            docref["authenticator"] = dict(authenticator)
        if custodian:
            docref["custodian"] = dict(custodian)
        if relates:
            docref["relatesTo"] = relates
        if title:
            docref["description"] = title
        if security:
            docref["securityLabel"] = [security]
        docref["content"] = [content, *self.extra_content]
        docref["context"] = context
        if self.source_url:
            docref.setdefault("extension", []).append(
                {"url": "https://fhir-server.local/StructureDefinition/cda-source-url", "valueUri": self.source_url})

        composition = None
        if body is not None:
            composition = {"resourceType": "Composition", "id": _uid(self.doc_key, "Composition")}
            if self.master_identifier:
                composition["identifier"] = self.master_identifier
            composition["status"] = "final"
            composition["type"] = docref["type"]
            if category:
                composition["category"] = [category]
            composition["subject"] = dict(self.patient_ref)
            if encounter is not None:
                composition["encounter"] = _ref(encounter)
            if date:
                composition["date"] = date
            else:
                composition["_date"] = {"extension": [data_absent()]}
            composition["author"] = [dict(a) for a in authors] or [{"extension": [data_absent()]}]
            composition["title"] = title or (doc_type or {}).get("text") or _first_display(doc_type) or "Clinical document"
            if security and security.get("coding") and security["coding"][0].get("system") == _CONFIDENTIALITY:
                composition["confidentiality"] = security["coding"][0]["code"]
            if legal is not None and authenticator:
                att: Json = {"mode": "legal", "party": dict(authenticator)}
                t = legal.find(_C + "time")
                tv = ts_to_fhir(t.get("value", "")) if t is not None and t.get("value") else None
                if tv:
                    att["time"] = tv
                composition["attester"] = [att]
            if custodian:
                composition["custodian"] = dict(custodian)
            if relates:
                composition["relatesTo"] = [{"code": r["code"], "targetIdentifier": r["target"]["identifier"]}
                                            for r in relates]
            if events or period:
                ev: Json = {}
                if events:
                    ev["code"] = events
                if period:
                    ev["period"] = period
                composition["event"] = [ev]
            if sections:
                composition["section"] = sections

        shared = list(self.shared.values())
        extra = ([encounter, self.provenance(encounter, "/ClinicalDocument/componentOf/encompassingEncounter")]
                 if encounter is not None else [])
        return ConversionResult(
            document_id=self.master_identifier["value"] if self.master_identifier else self.doc_key,
            binary=binary,
            document_reference=docref,
            patient=patient,
            patient_identifiers=patient_ids,
            composition=composition,
            resources=shared + extra + self.resources,
            issues=ctx.issues,
            sections=self.sections,
            replaces=replaces,
            attachments=self.attachments,
        )

    def format_code(self, structured: bool) -> Json | None:
        table = self.ms.resources.get("_format_codes", {})
        for t in reversed(self.root.findall(_C + "templateId")):
            hit = table.get(f"{t.get('root')}|{t.get('extension', '')}") or table.get(t.get("root", ""))
            if hit:
                return {"system": _FORMAT_SYSTEM, **hit}
        if not structured:
            media = self.root.find(f"{_C}component/{_C}nonXMLBody/{_C}text")
            mt = media.get("mediaType") if media is not None else None
            code = "urn:ihe:iti:xds-sd:pdf:2008" if mt == "application/pdf" else "urn:ihe:iti:xds-sd:text:2008"
            return {"system": _FORMAT_SYSTEM, "code": code}
        return None

    def document_class(self, code_el: etree._Element | None) -> Json | None:
        if code_el is None:
            return None
        table = self.ms.resources.get("_document_classes", {})
        hit = table.get(code_el.get("code") or "")
        if hit is None and "2.16.840.1.113883.10.20.22.1.1" in _template_ids(self.root):
            hit = table.get("*ccda")
        return _copy(hit) if hit else None

    def patient(self) -> tuple[Json, list[tuple[str, str]]]:
        ctx = self.ctx
        role = self.root.find(f"{_C}recordTarget/{_C}patientRole")
        res: Json = {"resourceType": "Patient", "id": self.patient_id}
        if role is None:
            ctx.issue("no recordTarget/patientRole: empty Patient", code="required", severity="error")
            return res, []
        ids = self._identifiers(role)
        order = {s: i for i, s in enumerate(INS_SYSTEMS)}
        ids.sort(key=lambda i: order.get(i.get("system", ""), len(order)))
        for ident in ids:
            if ident.get("system") in order:
                ident["type"] = {"coding": [{"system": "http://interopsante.org/fhir/CodeSystem/fr-v2-0203",
                                             "code": "INS-NIR" if ident["system"].endswith(".8") else (
                                                 "INS-NIA" if ident["system"].endswith(".9") else "INS-NIR-TEST")}]}
        if ids:
            res["identifier"] = ids
        pat = role.find(_C + "patient")
        if pat is not None:
            names: list[Json] = []
            for n in pat.iterfind(_C + "name"):
                names += DATATYPES["EN"](ctx, n) or []
            if names:
                res["name"] = names
        self._contact(role, res)
        if pat is not None:
            g = pat.find(_C + "administrativeGenderCode")
            if g is not None:
                v = DATATYPES["gender"](ctx, g)
                if v:
                    res["gender"] = v
            b = pat.find(_C + "birthTime")
            if b is not None:
                v = DATATYPES["TS.date"](ctx, b)
                if v:
                    res["birthDate"] = v
            deceased = pat.find("{urn:hl7-org:sdtc}deceasedTime")
            dind = pat.find("{urn:hl7-org:sdtc}deceasedInd")
            if deceased is not None and deceased.get("value") and ts_to_fhir(deceased.get("value", "")):
                res["deceasedDateTime"] = ts_to_fhir(deceased.get("value", ""))
            elif dind is not None and dind.get("value") in ("true", "false"):
                res["deceasedBoolean"] = dind.get("value") == "true"
            ms = pat.find(_C + "maritalStatusCode")
            if ms is not None:
                cc = codeable_concept(ctx, ms)
                if cc:
                    res["maritalStatus"] = cc
            mb = pat.find("{urn:hl7-org:sdtc}multipleBirthInd")
            if mb is not None and mb.get("value") in ("true", "false"):
                res["multipleBirthBoolean"] = mb.get("value") == "true"
            comms = []
            for lc in pat.iterfind(f"{_C}languageCommunication/{_C}languageCode"):
                if lc.get("code"):
                    comms.append({"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": lc.get("code")}]}})
            if comms:
                res["communication"] = comms
        provider = role.find(_C + "providerOrganization")
        if provider is not None:
            ref = self.actor(provider)
            if ref and "reference" in ref:
                res["managingOrganization"] = ref
        pids = [(i["system"], i["value"]) for i in ids if "system" in i]
        return res, pids

    def encompassing_encounter(self) -> Json | None:
        enc = self.root.find(f"{_C}componentOf/{_C}encompassingEncounter")
        if enc is None:
            return None
        path = "/ClinicalDocument/componentOf/encompassingEncounter"
        self.ctx.location = path
        m = self.ms.entries.get("header-encompassing-encounter")
        if m is None:
            return None
        res = self.new_resource("Encounter", path, enc)
        self.fill(m, enc, res, path)
        conf = self.ms.resources.get("Encounter", {})
        res.setdefault("subject", dict(self.patient_ref))
        for key, value in conf.get("defaults", {}).items():
            res.setdefault(key, _copy(value))
        res.setdefault("identifier", []).append({"system": "urn:ietf:rfc:3986", "value": "urn:uuid:" + res["id"]})
        return res


def _display_name(names: list[Json] | None) -> str | None:
    if not names:
        return None
    n = names[0]
    parts = [*n.get("prefix", ()), *n.get("given", ()), n.get("family", "")]
    text = " ".join(p for p in parts if p).strip()
    return text or n.get("text")


def _first_display(cc: Json | None) -> str | None:
    for c in (cc or {}).get("coding", ()):
        if c.get("display"):
            return c["display"]
    return None


def convert_cda(
    data: bytes,
    *,
    source_url: str | None = None,
    limits: ParseLimits | None = None,
    recorded: str | None = None,
    mappings: MappingSet | None = None,
) -> ConversionResult:
    """Convert one CDA R2 document (bytes, as received) into FHIR resources.

    Raises typed errors (``BadRequest`` 400, ``PayloadTooLarge`` 413, ``Unprocessable``
    422) for hostile or non-CDA input; never for bad content inside a valid document,
    which is recorded in ``ConversionResult.issues`` instead.

    ``recorded`` is the Provenance.recorded instant (default: now, UTC).
    """
    root = parse_cda_xml(data, limits or ParseLimits())
    when = recorded or datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    conv = _Converter(root, bytes(data), mappings or default_mappings(), when, source_url)
    return conv.convert()
