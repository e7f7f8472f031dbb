"""IHE MHD ITI-65 "Provide Document Bundle" rules, French PDSm flavour.

An ITI-65 submission is a ``transaction`` Bundle holding one SubmissionSet ``List``,
``DocumentReference``s, the ``Binary``s they point at and optionally Folder ``List``s
(https://profiles.ihe.net/ITI/MHD/ITI-65.html). It is recognised by its
``meta.profile`` (IHE MHD ProvideBundle profiles, PDSm
``pdsm-comprehensive-provide-document-bundle``) or by a List coded
``MHDlistTypes#submissionset`` among its entries.

:class:`MhdRules` is registered in ``services.bundles.checks``: it runs before the
transaction writes anything and rejects the whole submission with one 422
OperationOutcome listing every error, each pointing at its entry
(``Bundle.entry[i].resource.…``). Rules, from the PDSm 3.1.1 FSH and MHD 4.x
Comprehensive metadata:

* bundle: exactly one SubmissionSet, at least one DocumentReference created, every
  created DocumentReference listed in ``SubmissionSet.entry.item``, every Binary
  referenced by an ``attachment.url``, no resource types foreign to ITI-65;
* SubmissionSet: status ``current``, ``date``, ``source`` (PDSm 1..), ``subject``,
  extensions ``designationType`` and ``sourceId``; a conditional subject must match
  exactly one Patient;
* DocumentReference: ``masterIdentifier``, status ``current``, ``subject`` equal to
  the SubmissionSet's, ``type``, ``category``, ``date``, ``author`` (1..), contained
  references that resolve, ``securityLabel``, ``content.format``,
  ``attachment.contentType/url/size/hash/title`` (size and SHA-1 hash checked
  against the Binary of the bundle, whose contentType must agree),
  ``context.period.start``, ``context.facilityType``, ``context.practiceSetting``;
* replacement: ``relatesTo.replaces`` must target an existing current
  DocumentReference of the same patient, at most once per document, and the
  submission must itself mark that target ``superseded`` (a PATCH entry, JSON Patch
  or FHIRPath Patch, or a PUT, as in the PDSm-for-DMP TD2.1 example); conversely a
  DocumentReference superseded by the submission needs a ``relatesTo`` pointing at it;
* Folder: ``code`` folder, ``date``, ``entry`` (1..), ``designationType``;
* bindings to the CI-SIS value sets in ``terminologies/fr`` (type J07, category J06,
  securityLabel J08, format J10, facilityType J02, practiceSetting J04): a code of
  a French nomenclature (``TRE_…``) that is not in the value set is an error; a
  coding from another system (SNOMED CT facility types…) is only a warning, the
  PDSm bindings being ``preferred``.

Deliberate deviation: a missing ``custodian`` is a *warning*, not an error. PDSm
makes it 1.. but says that in XDS it travels in the caller's security assertion
(VIHF), not in the metadata, and the ANS PDSm-for-DMP examples omit it; the server
does not invent one. Warnings do not block a submission (the transaction hook has no
channel for them); they are logged and returned by :meth:`MhdRules.validate`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from fhir_server.documents.jdv import ValueSet, value_sets
from fhir_server.fhir.errors import FhirError, Issue, Unprocessable
from fhir_server.rest.context import RequestContext

__all__ = ["MhdRules", "is_mhd_submission", "MHD_LIST_TYPES", "PROVIDE_BUNDLE_PROFILES", "BINDINGS"]

log = logging.getLogger(__name__)

Json = dict[str, Any]

MHD_LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
_MHD_SD = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/"
_PDSM_SD = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/"
PROVIDE_BUNDLE_PROFILES = frozenset({
    _MHD_SD + "IHE.MHD.Comprehensive.ProvideBundle",
    _MHD_SD + "IHE.MHD.UnContained.Comprehensive.ProvideBundle",
    _MHD_SD + "IHE.MHD.Minimal.ProvideBundle",
    _PDSM_SD + "pdsm-comprehensive-provide-document-bundle",
})
_DESIGNATION_TYPE = _MHD_SD + "ihe-designationType"
_SOURCE_ID = _MHD_SD + "ihe-sourceId"
_RELATION_CODES = frozenset({"replaces", "transforms", "signs", "appends"})
# Types an ITI-65 transaction may carry (UnContained option: the actors themselves; Parameters: FHIRPath Patch).
_ALLOWED_TYPES = frozenset({"List", "DocumentReference", "Binary", "Patient", "Practitioner", "PractitionerRole",
                            "Organization", "Device", "RelatedPerson", "Parameters"})

#: element (FHIRPath below DocumentReference) -> value set id in ``terminologies/fr``
BINDINGS: tuple[tuple[str, str], ...] = (
    ("type", "J07"),
    ("category", "J06"),
    ("securityLabel", "J08"),
    ("content.format", "J10"),
    ("context.facilityType", "J02"),
    ("context.practiceSetting", "J04"),
)


def _profiles(resource: Json) -> list[str]:
    meta = resource.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    return [str(p).split("|", 1)[0] for p in profiles or () if isinstance(p, str)]


def _list_kind(resource: Json) -> str | None:
    """``submissionset`` / ``folder`` for an MHD List (by code, else by profile), else None."""
    code = resource.get("code")
    for c in (code or {}).get("coding", ()) if isinstance(code, dict) else ():
        if isinstance(c, dict) and c.get("system") == MHD_LIST_TYPES and c.get("code") in ("submissionset", "folder"):
            return str(c["code"])
    for p in _profiles(resource):
        low = p.lower()
        if "submissionset" in low:
            return "submissionset"
        if "folder" in low:
            return "folder"
    return None


def is_mhd_submission(bundle: Json) -> bool:
    """True for an ITI-65 Provide Document Bundle (by profile, or a SubmissionSet List inside)."""
    if any(p in PROVIDE_BUNDLE_PROFILES for p in _profiles(bundle)):
        return True
    for e in bundle.get("entry") or ():
        res = e.get("resource") if isinstance(e, dict) else None
        if isinstance(res, dict) and res.get("resourceType") == "List" and _list_kind(res) == "submissionset":
            return True
    return False


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    full_url: str | None
    resource: Json | None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}].resource"

    @property
    def type(self) -> str:
        """The type written: from ``request.url`` for PATCH (whose body is a Binary or Parameters)."""
        if self.method != "PATCH" and self.resource is not None and isinstance(self.resource.get("resourceType"), str):
            return str(self.resource["resourceType"])
        return self.url.split("?", 1)[0].split("/", 1)[0]

    @property
    def target_id(self) -> str | None:
        """The id in ``request.url`` (``DocumentReference/123``)."""
        path = self.url.split("?", 1)[0].strip("/")
        parts = path.split("/")
        return parts[1] if len(parts) >= 2 and parts[1] else None


@dataclass
class _Report:
    issues: list[Issue] = field(default_factory=list)

    def error(self, where: str, message: str, code: str = "invariant") -> None:
        self.issues.append(Issue(message, code, "error", (where,)))

    def warning(self, where: str, message: str, code: str = "code-invalid") -> None:
        self.issues.append(Issue(message, code, "warning", (where,)))

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity in ("error", "fatal")]


def _get(resource: Json, path: str) -> list[Any]:
    """Values at a dotted path (lists flattened)."""
    nodes: list[Any] = [resource]
    for part in path.split("."):
        nxt: list[Any] = []
        for n in nodes:
            if isinstance(n, dict) and part in n:
                v = n[part]
                nxt.extend(v if isinstance(v, list) else [v])
        nodes = nxt
    return [n for n in nodes if n not in (None, "", [], {})]


def _extension(resource: Json, url: str) -> Json | None:
    for ext in resource.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == url:
            return ext
    return None


def _sets_superseded(entry: _Entry) -> bool:
    """True when a PATCH/PUT entry sets ``DocumentReference.status`` to ``superseded``."""
    res = entry.resource
    if entry.method == "PUT":
        return isinstance(res, dict) and res.get("status") == "superseded"
    if entry.method != "PATCH" or not isinstance(res, dict):
        return False
    if res.get("resourceType") == "Binary":  # JSON Patch carried in a Binary
        try:
            ops = orjson.loads(base64.b64decode(str(res.get("data", ""))))
        except (ValueError, binascii.Error, orjson.JSONDecodeError):
            return False
        return isinstance(ops, list) and any(
            isinstance(o, dict) and o.get("op") in ("replace", "add") and o.get("path") == "/status"
            and o.get("value") == "superseded" for o in ops)
    if res.get("resourceType") == "Parameters":  # FHIRPath Patch
        for p in res.get("parameter") or ():
            if not isinstance(p, dict) or p.get("name") != "operation":
                continue
            parts = {q.get("name"): q for q in p.get("part") or () if isinstance(q, dict)}
            value = parts.get("value", {})
            if (parts.get("type", {}).get("valueCode") == "replace"
                    and parts.get("path", {}).get("valueString") == "DocumentReference.status"
                    and "superseded" in (value.get("valueCode"), value.get("valueString"))):
                return True
    return False


class MhdRules:
    """The ITI-65 / PDSm rule set, usable as a ``services.bundles.checks`` entry.

    ``fhir`` (the FhirService) is used to look up replaced DocumentReferences and
    conditional patient references; without it those checks are skipped.
    """

    def __init__(self, fhir: Any = None, tables: dict[str, ValueSet] | None = None) -> None:
        self.fhir = fhir
        self.tables = tables if tables is not None else value_sets()

    # ------------------------------------------------------------------ hook
    def __call__(self, ctx: RequestContext, bundle: Json) -> None:
        if not is_mhd_submission(bundle):
            return
        issues = self.validate(ctx, bundle)
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        for w in issues:
            if w.severity == "warning":
                log.info("ITI-65 warning at %s: %s", ",".join(w.expression), w.diagnostics)
        if errors:
            raise Unprocessable(f"ITI-65 submission rejected: {len(errors)} error(s)", issues=errors)

    # -------------------------------------------------------------- the rules
    def validate(self, ctx: RequestContext | None, bundle: Json) -> list[Issue]:
        """Every error and warning of a submission (nothing is raised)."""
        rep = _Report()
        entries: list[_Entry] = []
        for i, e in enumerate(bundle.get("entry") or ()):
            if not isinstance(e, dict):
                continue
            req = e.get("request") if isinstance(e.get("request"), dict) else {}
            res = e.get("resource") if isinstance(e.get("resource"), dict) else None
            entries.append(_Entry(i, str(req.get("method", "")).upper(), str(req.get("url", "")),
                                  e.get("fullUrl"), res))
        minimal = any("Minimal" in p for p in _profiles(bundle)) and not any(
            "Comprehensive" in p or p.startswith(_PDSM_SD) for p in _profiles(bundle))
        by_url = {e.full_url: e for e in entries if e.full_url}

        for e in entries:
            if e.type not in _ALLOWED_TYPES:
                rep.error(f"Bundle.entry[{e.index}]", f"{e.type} is not part of an ITI-65 submission", "not-supported")
        subsets = [e for e in entries if e.type == "List" and e.resource and _list_kind(e.resource) == "submissionset"]
        folders = [e for e in entries if e.type == "List" and e.resource and _list_kind(e.resource) == "folder"]
        for e in entries:
            if e.type == "List" and e.resource is not None and e not in subsets and e not in folders:
                rep.error(f"{e.where}.code", "a List of an ITI-65 submission is a SubmissionSet or a Folder "
                                             f"(code from {MHD_LIST_TYPES})", "required")
        new_docs = [e for e in entries if e.type == "DocumentReference" and e.method == "POST" and e.resource]
        superseding = {e.target_id: e for e in entries
                       if e.type == "DocumentReference" and e.method in ("PATCH", "PUT") and e.target_id
                       and _sets_superseded(e)}
        if len(subsets) != 1:
            rep.error("Bundle.entry", f"an ITI-65 submission holds exactly one SubmissionSet List, found {len(subsets)}",
                      "required")
        if not new_docs:
            rep.error("Bundle.entry", "an ITI-65 submission creates at least one DocumentReference", "required")
        subset = subsets[0] if len(subsets) == 1 else None
        subject = None
        if subset is not None and subset.resource is not None:
            subject = self._submission_set(ctx, rep, subset, subset.resource, minimal)
            items = {str(r) for r in _get(subset.resource, "entry.item.reference")}
            for d in new_docs:
                if d.full_url not in items:
                    rep.error(f"{d.where}", "this DocumentReference is not listed in SubmissionSet.entry.item",
                              "required")
            for j, ref in enumerate(_get(subset.resource, "entry.item.reference")):
                if str(ref).startswith("urn:") and ref not in by_url:
                    rep.error(f"{subset.where}.entry[{j}].item", f"{ref} is not an entry of the submission",
                              "not-found")
        targets: set[str] = set()
        for d in new_docs:
            assert d.resource is not None
            binaries = self._document(ctx, rep, d, d.resource, by_url, subject, superseding, minimal)
            targets.update(binaries)
            for rel in d.resource.get("relatesTo") or ():
                ref = (rel.get("target") or {}).get("reference") if isinstance(rel, dict) else None
                if isinstance(rel, dict) and rel.get("code") == "replaces" and isinstance(ref, str):
                    superseding.pop(ref.split("/")[-1] if ref.startswith("DocumentReference/") else ref, None)
        for target_id, e in superseding.items():
            rep.error(f"Bundle.entry[{e.index}]", f"DocumentReference/{target_id} is superseded but no "
                      "DocumentReference of the submission replaces it (relatesTo is required when replacing)",
                      "required")
        for e in entries:
            if e.type == "Binary" and e.method == "POST" and e.full_url not in targets:
                rep.error(f"Bundle.entry[{e.index}]", "this Binary is not referenced by any "
                                                      "DocumentReference.content.attachment.url", "invariant")
        for f in folders:
            if f.resource is not None:
                self._folder(rep, f, f.resource, subject)
        return rep.issues

    def _submission_set(self, ctx: RequestContext | None, rep: _Report, e: _Entry, r: Json,
                        minimal: bool) -> str | None:
        w = e.where
        if e.method != "POST":
            rep.error(f"Bundle.entry[{e.index}].request.method", "the SubmissionSet is created (POST)")
        if r.get("status") != "current":
            rep.error(f"{w}.status", "SubmissionSet.status must be 'current'", "value")
        if r.get("mode") not in (None, "working"):
            rep.error(f"{w}.mode", "SubmissionSet.mode must be 'working'", "value")
        if not r.get("date"):
            rep.error(f"{w}.date", "SubmissionSet.date (dateSoumission) is required", "required")
        subject = (r.get("subject") or {}).get("reference") if isinstance(r.get("subject"), dict) else None
        if not minimal:
            if not isinstance(r.get("source"), dict) or not r["source"]:
                rep.error(f"{w}.source", "SubmissionSet.source (the author of the submission) is required",
                          "required")
            else:
                self._contained_ref(rep, r, r["source"], f"{w}.source")
            if not subject:
                rep.error(f"{w}.subject", "SubmissionSet.subject (the patient) is required", "required")
            if _extension(r, _DESIGNATION_TYPE) is None:
                rep.error(f"{w}.extension", "the designationType extension (typeActivite) is required", "required")
            if _extension(r, _SOURCE_ID) is None:
                rep.error(f"{w}.extension", "the sourceId extension (idSource) is required", "required")
        if subject and "?" in subject and ctx is not None and self.fhir is not None:
            t, q = subject.split("?", 1)
            try:
                found = self.fhir.searcher.match_ids(ctx, t, parse_qsl(q, keep_blank_values=True), limit=2)
            except FhirError as exc:
                rep.error(f"{w}.subject", f"conditional subject {subject!r}: {exc}", "invalid")
            else:
                if len(found) != 1:
                    rep.error(f"{w}.subject", f"the patient {subject!r} matches {len(found)} Patient resources "
                                              "(needs exactly one)", "not-found")
        return subject

    @staticmethod
    def _contained_ref(rep: _Report, r: Json, ref: Any, where: str) -> None:
        target = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(target, str) and target.startswith("#"):
            ids = {c.get("id") for c in r.get("contained") or () if isinstance(c, dict)}
            if target[1:] not in ids:
                rep.error(where, f"{target} does not resolve to a contained resource", "not-found")

    def _document(self, ctx: RequestContext | None, rep: _Report, e: _Entry, r: Json, by_url: dict[str, _Entry],
                  subject: str | None, superseding: dict[str | None, _Entry], minimal: bool) -> set[str]:
        w = e.where
        required = ["content"] if minimal else [
            "masterIdentifier", "type", "category", "date", "author", "securityLabel", "subject"]
        for name in required:
            if not _get(r, name):
                rep.error(f"{w}.{name}", f"DocumentReference.{name} is required", "required")
        if not minimal and not r.get("custodian"):
            rep.warning(f"{w}.custodian", "DocumentReference.custodian is absent (PDSm 1..; expected from the "
                                          "submitter's security context in XDS)", "required")
        if r.get("status") != "current":
            rep.error(f"{w}.status", "a new DocumentReference has status 'current'", "value")
        own = (r.get("subject") or {}).get("reference") if isinstance(r.get("subject"), dict) else None
        if subject and own and own != subject:
            rep.error(f"{w}.subject", f"subject {own!r} differs from the SubmissionSet's {subject!r}", "invariant")
        for j, a in enumerate(r.get("author") or ()):
            self._contained_ref(rep, r, a, f"{w}.author[{j}]")
        if isinstance(r.get("authenticator"), dict):
            self._contained_ref(rep, r, r["authenticator"], f"{w}.authenticator")
        ctx_el = r.get("context") if isinstance(r.get("context"), dict) else {}
        if not minimal:
            if not _get(ctx_el, "period.start"):
                rep.error(f"{w}.context.period.start", "context.period.start (dateDebutActe) is required", "required")
            for name in ("facilityType", "practiceSetting"):
                if not ctx_el.get(name):
                    rep.error(f"{w}.context.{name}", f"context.{name} is required", "required")
        binaries: set[str] = set()
        contents = r.get("content") or []
        if not contents:
            rep.error(f"{w}.content", "DocumentReference.content is required", "required")
        for j, c in enumerate(contents):
            if not isinstance(c, dict):
                continue
            cw = f"{w}.content[{j}]"
            if not minimal and not c.get("format"):
                rep.error(f"{cw}.format", "content.format is required", "required")
            att = c.get("attachment") if isinstance(c.get("attachment"), dict) else {}
            for name in ("contentType", "url", "size", "hash", "title"):
                if att.get(name) in (None, ""):
                    rep.error(f"{cw}.attachment.{name}", f"attachment.{name} is required", "required")
            url = att.get("url")
            target = by_url.get(url) if isinstance(url, str) else None
            if target is not None and target.type == "Binary" and target.resource is not None:
                binaries.add(str(url))
                self._attachment_matches(rep, cw, att, target)
            elif isinstance(url, str) and url:
                rep.error(f"{cw}.attachment.url", f"attachment.url {url!r} must point at a Binary of the "
                                                  "submission", "invariant")
        for j, rel in enumerate(r.get("relatesTo") or ()):
            self._relates_to(ctx, rep, f"{w}.relatesTo[{j}]", rel, own, superseding)
        if sum(1 for rel in r.get("relatesTo") or () if isinstance(rel, dict) and rel.get("code") == "replaces") > 1:
            rep.error(f"{w}.relatesTo", "a DocumentReference replaces at most one document", "invariant")
        self._bindings(rep, w, r)
        return binaries

    @staticmethod
    def _attachment_matches(rep: _Report, cw: str, att: Json, binary: _Entry) -> None:
        res = binary.resource or {}
        try:
            data = base64.b64decode(str(res.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            rep.error(f"Bundle.entry[{binary.index}].resource.data", "Binary.data is not valid base64", "structure")
            return
        size = att.get("size")
        if isinstance(size, int) and size != len(data):
            rep.error(f"{cw}.attachment.size", f"attachment.size {size} differs from the Binary's {len(data)} bytes",
                      "invariant")
        digest = hashlib.sha1(data).digest()  # noqa: S324 - Attachment.hash is SHA-1 by definition
        h = att.get("hash")
        if isinstance(h, str) and h:
            try:
                given = base64.b64decode(h, validate=True)
            except (binascii.Error, ValueError):
                given = b""
            if given != digest:
                rep.error(f"{cw}.attachment.hash", "attachment.hash is not the base64 SHA-1 of the Binary "
                                                   f"(expected {base64.b64encode(digest).decode()})", "invariant")
        ct, bct = att.get("contentType"), res.get("contentType")
        if ct and bct and str(ct).split(";")[0].strip() != str(bct).split(";")[0].strip():
            rep.error(f"{cw}.attachment.contentType", f"attachment.contentType {ct!r} differs from the Binary's "
                                                      f"{bct!r}", "invariant")

    def _relates_to(self, ctx: RequestContext | None, rep: _Report, where: str, rel: Any, subject: str | None,
                    superseding: dict[str | None, _Entry]) -> None:
        if not isinstance(rel, dict):
            return
        if rel.get("code") not in _RELATION_CODES:
            rep.error(f"{where}.code", f"relatesTo.code must be one of {sorted(_RELATION_CODES)}", "code-invalid")
        target = rel.get("target") if isinstance(rel.get("target"), dict) else {}
        ref = target.get("reference")
        if not ref and not target.get("identifier"):
            rep.error(f"{where}.target", "relatesTo.target needs a reference or an identifier", "required")
            return
        if rel.get("code") != "replaces":
            return
        if not isinstance(ref, str) or not ref.startswith("DocumentReference/"):
            rep.error(f"{where}.target", "relatesTo.target of a replacement references the replaced "
                                         "DocumentReference (DocumentReference/[id])", "invariant")
            return
        target_id = ref.split("/")[1]
        if target_id not in superseding:
            rep.error(f"{where}.target", f"{ref} is replaced but the submission does not mark it superseded "
                                         "(add a PATCH of its status)", "required")
        if ctx is None or self.fhir is None:
            return
        try:
            old = self.fhir.read(ctx, "DocumentReference", target_id)
        except FhirError:
            rep.error(f"{where}.target", f"the replaced document {ref} is not known", "not-found")
            return
        res = old.resource or {}
        if res.get("status") != "current":
            rep.error(f"{where}.target", f"the replaced document {ref} is {res.get('status')}, not current",
                      "business-rule")
        old_subject = (res.get("subject") or {}).get("reference")
        new_subject = self._resolve(ctx, subject)
        if old_subject and new_subject and old_subject != new_subject:
            rep.error(f"{where}.target", f"the replaced document {ref} belongs to another patient", "business-rule")

    def _resolve(self, ctx: RequestContext, ref: str | None) -> str | None:
        if not ref or "?" not in ref or self.fhir is None:
            return ref if ref and not ref.startswith("urn:") else None
        t, q = ref.split("?", 1)
        try:
            found = self.fhir.searcher.match_ids(ctx, t, parse_qsl(q, keep_blank_values=True), limit=2)
        except FhirError:
            return None
        return f"{t}/{found[0]}" if len(found) == 1 else None

    def _bindings(self, rep: _Report, w: str, r: Json) -> None:
        for path, vs_id in BINDINGS:
            vs = self.tables.get(vs_id)
            if vs is None:
                continue
            head, _, leaf = path.rpartition(".")
            parents: list[tuple[str, Any]] = [(w, r)]
            for part in head.split(".") if head else ():
                nxt: list[tuple[str, Any]] = []
                for pw, node in parents:
                    v = node.get(part) if isinstance(node, dict) else None
                    if isinstance(v, list):
                        nxt += [(f"{pw}.{part}[{k}]", x) for k, x in enumerate(v)]
                    elif v is not None:
                        nxt.append((f"{pw}.{part}", v))
                parents = nxt
            for pw, node in parents:
                v = node.get(leaf) if isinstance(node, dict) else None
                values = [(f"{pw}.{leaf}[{k}]", x) for k, x in enumerate(v)] if isinstance(v, list) else (
                    [(f"{pw}.{leaf}", v)] if v is not None else [])
                for where, concept in values:
                    verdict, coding = vs.judge(concept)
                    code = (coding or {}).get("code")
                    if verdict == "unknown-code":
                        msg = f"code {code!r} of {coding.get('system') if coding else '?'} is not in {vs.name}"
                        if vs.complete:
                            rep.error(where, msg, "code-invalid")
                        else:
                            rep.warning(where, msg)
                    elif verdict == "foreign":
                        rep.warning(where, f"no coding from {vs.name} ({vs.strength} binding)")

    @staticmethod
    def _folder(rep: _Report, e: _Entry, r: Json, subject: str | None) -> None:
        w = e.where
        if not r.get("date"):
            rep.error(f"{w}.date", "Folder.date is required", "required")
        if not r.get("entry"):
            rep.error(f"{w}.entry", "a Folder lists at least one DocumentReference", "required")
        if _extension(r, _DESIGNATION_TYPE) is None:
            rep.error(f"{w}.extension", "the Folder's designationType extension is required", "required")
        own = (r.get("subject") or {}).get("reference") if isinstance(r.get("subject"), dict) else None
        if subject and own and own != subject:
            rep.error(f"{w}.subject", f"subject {own!r} differs from the SubmissionSet's {subject!r}", "invariant")
