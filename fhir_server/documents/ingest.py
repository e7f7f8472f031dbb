"""Document ingestion over the FHIR API: CDA push and patient uploads (no HTTP here).

``DocumentReference/$ingest-cda`` (:meth:`DocumentIngestor.ingest_cda`)
    One CDA R2 document in, everything it becomes stored in ONE transaction
    (Binary with the original bytes, DocumentReference, Composition, extracted
    resources with their Provenance, shared Practitioner/Organization).

    * Patient: matched by INS first (NIR ``urn:oid:1.2.250.1.213.1.4.8``, NIA ``.9``,
      test/demo ``.10``/``.11``), then by the document's other identifiers; every
      extracted resource then points at the matched ``Patient/[id]``. No match: 422,
      unless ``documents_create_unknown_patient`` is on, in which case the Patient is
      created (conditional create on its first identifier).
    * Identity: document-owned resources get the converter's deterministic ids and
      are written with ``PUT`` (update-as-create); shared actors are conditional
      creates on their identifier, so they are deduplicated across documents.
    * Idempotency: the same document (same ``ClinicalDocument/id``, same bytes) sent
      again answers 200 and writes nothing; other bytes under the same id answer 409.
    * Replacement: ``relatedDocument/@typeCode=RPLC`` makes the new
      DocumentReference ``relatesTo.replaces`` the old one (by reference) and sets
      the old one ``superseded`` in the same transaction (a JSON Patch guarded by
      its version). An unknown replaced document is reported, not fatal.
    * What the converter skipped or doubted is kept with the document as a contained
      ``OperationOutcome`` (id ``conversion-outcome``) referenced by the extension
      :data:`CONVERSION_OUTCOME_URL`, and returned in the response.

``DocumentReference/$upload`` (:meth:`DocumentIngestor.upload`)
    A patient's own document (PDF, JPEG or PNG, raw body) with a title and a type
    from ``DOCPAT01``..``DOCPAT09`` (JDV J07): a Binary and a DocumentReference
    (size, SHA-1 hash, class 90, facility/practice ``EXP_PATIENT``) in one transaction.

Both answer a ``transaction-response`` Bundle whose ``entry[0]`` is an
OperationOutcome of the ingestion (patient matched, documents superseded, content
skipped) and whose other entries are the transaction's responses, in order.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from fhir_server.documents.cda import (
    INS_SYSTEMS,
    SHARED_TYPES,
    ConversionResult,
    convert_cda,
    document_reference_id,
)
from fhir_server.documents.jdv import ValueSet, value_sets
from fhir_server.documents.safexml import ParseLimits
from fhir_server.fhir.errors import (
    BadRequest,
    Conflict,
    FhirError,
    Gone,
    NotFound,
    Unprocessable,
    UnsupportedMediaType,
)
from fhir_server.rest.context import RequestContext

__all__ = [
    "DocumentIngestor",
    "IngestOutcome",
    "CONVERSION_OUTCOME_URL",
    "CDA_MEDIA_TYPES",
    "UPLOAD_MEDIA_TYPES",
    "PATIENT_DOCUMENT_TYPES",
]

Json = dict[str, Any]

CONVERSION_OUTCOME_URL = "https://fhir-server.local/StructureDefinition/conversion-outcome"
CDA_MEDIA_TYPES = frozenset({"application/hl7-cda+xml", "text/xml", "application/xml"})
#: media type -> leading bytes that a file of that type starts with
UPLOAD_MEDIA_TYPES: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
}
PATIENT_DOCUMENT_TYPES = tuple(f"DOCPAT{i:02d}" for i in range(1, 10))
_MIME_SUFFICIENT = {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                    "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient", "display": "mimeType Sufficient"}
_PATIENT_CLASS = "90"  # J06: "Autres documents déposés par le patient"
_PATIENT_PRODUCER = "EXP_PATIENT"  # J02/J04 (TRE_A00): "Expression personnelle du patient"


@dataclass
class IngestOutcome:
    """What an ingestion operation answers: HTTP status, the response Bundle, headers."""

    status: int
    bundle: Json
    headers: dict[str, str] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _issue(severity: str, code: str, text: str, expression: str | None = None) -> Json:
    out: Json = {"severity": severity, "code": code, "diagnostics": text}
    if expression:
        out["expression"] = [expression]
    return out


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _replace_refs(node: Any, old: str, new: str) -> Any:
    """A copy of ``node`` with every ``reference`` equal to ``old`` set to ``new``."""
    if isinstance(node, dict):
        return {k: (new if k == "reference" and v == old else _replace_refs(v, old, new)) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_refs(v, old, new) for v in node]
    return node


class DocumentIngestor:
    """The ingestion paths, over the composition root's services (FhirService, bundles, settings)."""

    def __init__(self, services: Any, tables: dict[str, ValueSet] | None = None) -> None:
        self.services = services
        self.tables = tables if tables is not None else value_sets()

    @property
    def fhir(self) -> Any:
        return self.services.fhir

    # ================================================================ CDA push
    def ingest_cda(self, ctx: RequestContext, data: bytes, content_type: str | None) -> IngestOutcome:
        media = _media_type(content_type)
        if media and media not in CDA_MEDIA_TYPES:
            raise UnsupportedMediaType(f"$ingest-cda takes a CDA document ({', '.join(sorted(CDA_MEDIA_TYPES))}), "
                                       f"not {media!r}", expression="Content-Type")
        if not data.strip():
            raise BadRequest("$ingest-cda needs a CDA document in the body", expression="ClinicalDocument")
        result = convert_cda(data, limits=ParseLimits(max_bytes=self.services.settings.max_body_bytes))
        report: list[Json] = []
        docref = result.document_reference
        existing = self._current("DocumentReference", docref["id"], ctx)
        if existing is not None:
            return self._already_there(ctx, result, existing)
        patient_ref, patient_issue = self._match_patient(ctx, result)
        report.append(patient_issue)
        patches = self._supersede(ctx, result, patient_ref, report)
        bundle = self._cda_bundle(result, patient_ref, patches)
        _, response = self.services.bundles.process(ctx, bundle)
        responses = response.get("entry") or []
        doc_index = next(i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] ==
                         "DocumentReference" and e["request"]["method"] == "PUT")
        location = (responses[doc_index].get("response") or {}).get("location", f"DocumentReference/{docref['id']}")
        counts = result.counts()
        summary = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()) if not (t == "Patient" and patient_ref))
        report.insert(0, _issue("information", "informational",
                                f"CDA document {result.document_id} stored as {location.split('/_history')[0]} "
                                f"({summary})"))
        report.extend(result.issues)
        return IngestOutcome(201, self._response(report, responses),
                             {"Location": f"{ctx.base_url}/{location}"})

    def _current(self, type_: str, id_: str, ctx: RequestContext) -> Any:
        try:
            return self.fhir.read(ctx, type_, id_)
        except (NotFound, Gone):
            return None

    def _already_there(self, ctx: RequestContext, result: ConversionResult, stored: Any) -> IngestOutcome:
        res = stored.resource or {}
        new_hash = result.document_reference["content"][0]["attachment"].get("hash")
        old_hash = next((c.get("attachment", {}).get("hash") for c in res.get("content") or ()), None)
        if old_hash != new_hash:
            raise Conflict(f"Another version of document {result.document_id} is already stored as "
                           f"DocumentReference/{stored.id}; a new version needs its own id and "
                           "relatedDocument typeCode=RPLC", expression="ClinicalDocument.id")
        entry = {"fullUrl": f"{ctx.base_url}/DocumentReference/{stored.id}",
                 "response": {"status": "200 OK",
                              "location": f"DocumentReference/{stored.id}/_history/{stored.version}",
                              "etag": f'W/"{stored.version}"'}}
        report = [_issue("information", "duplicate", f"CDA document {result.document_id} was already ingested as "
                                                     f"DocumentReference/{stored.id}: nothing written")]
        return IngestOutcome(200, self._response(report, [entry]),
                             {"Content-Location": f"{ctx.base_url}/DocumentReference/{stored.id}"})

    def _match_patient(self, ctx: RequestContext, result: ConversionResult) -> tuple[str | None, Json]:
        """``Patient/[id]`` matched by INS then local identifiers, or None when the Patient is to be created."""
        ins = [(s, v) for s, v in result.patient_identifiers if s in INS_SYSTEMS]
        local = [(s, v) for s, v in result.patient_identifiers if s not in INS_SYSTEMS]
        where = "ClinicalDocument.recordTarget.patientRole.id"
        for kind, idents in (("INS", ins), ("local identifier", local)):
            for system, value in idents:
                found = self.fhir.searcher.match_ids(ctx, "Patient", [("identifier", f"{system}|{value}")], limit=2)
                if len(found) > 1:
                    raise Unprocessable(f"The document's patient {kind} {system}|{value} matches {len(found)} "
                                        "Patient resources; resolve the duplicate first", expression=where)
                if found:
                    return f"Patient/{found[0]}", _issue(
                        "information", "informational", f"patient matched by {kind} {system}|{value}: "
                                                        f"Patient/{found[0]}", where)
        shown = ", ".join(f"{s}|{v}" for s, v in result.patient_identifiers) or "none"
        if not result.patient_identifiers:
            raise Unprocessable("The document's patient (recordTarget/patientRole) has no usable identifier: it "
                                "cannot be matched to a Patient", expression=where)
        if not self.services.settings.documents_create_unknown_patient:
            raise Unprocessable(f"No Patient matches the document's patient identifiers ({shown}); create the "
                                "Patient first (or enable FHIR_SERVER_DOCUMENTS_CREATE_UNKNOWN_PATIENT)",
                                expression=where)
        return None, _issue("information", "informational",
                            f"no Patient matched ({shown}): the patient is created from the document", where)

    def _supersede(self, ctx: RequestContext, result: ConversionResult, patient_ref: str | None,
                   report: list[Json]) -> list[Json]:
        """PATCH entries marking replaced documents superseded; fills ``relatesTo.target.reference``."""
        patches: list[Json] = []
        for j, rel in enumerate(result.document_reference.get("relatesTo") or ()):
            ident = (rel.get("target") or {}).get("identifier")
            if rel.get("code") != "replaces" or not ident or "value" not in ident:
                continue
            where = f"ClinicalDocument.relatedDocument[{j}]"
            old = self._current("DocumentReference", document_reference_id(ident), ctx)
            if old is None:
                query = f"{ident['system']}|{ident['value']}" if ident.get("system") else ident["value"]
                found = self.fhir.searcher.match_ids(ctx, "DocumentReference", [("identifier", query)], limit=2)
                old = self._current("DocumentReference", found[0], ctx) if len(found) == 1 else None
            if old is None:
                report.append(_issue("warning", "not-found", f"the replaced document {ident['value']} is not known "
                                                            "here: nothing superseded", where))
                continue
            res = old.resource or {}
            old_subject = (res.get("subject") or {}).get("reference")
            if patient_ref is None or (old_subject and old_subject != patient_ref):
                raise Unprocessable(f"The replaced document DocumentReference/{old.id} belongs to another patient",
                                    expression=where)
            rel["target"]["reference"] = f"DocumentReference/{old.id}"
            if res.get("status") != "current":
                report.append(_issue("warning", "business-rule", f"the replaced DocumentReference/{old.id} is "
                                                                f"already {res.get('status')}", where))
                continue
            ops = [{"op": "replace", "path": "/status", "value": "superseded"}]
            patches.append({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                                         "data": base64.b64encode(str.encode(_json(ops))).decode()},
                            "request": {"method": "PATCH", "url": f"DocumentReference/{old.id}",
                                        "ifMatch": f'W/"{old.version}"'}})
            report.append(_issue("information", "informational",
                                 f"DocumentReference/{old.id} superseded by this document", where))
        return patches

    def _cda_bundle(self, result: ConversionResult, patient_ref: str | None, patches: list[Json]) -> Json:
        docref = result.document_reference
        if result.issues:
            docref.setdefault("contained", []).append({"resourceType": "OperationOutcome", "id": "conversion-outcome",
                                                       "issue": result.issues})
            docref.setdefault("extension", []).append({"url": CONVERSION_OUTCOME_URL,
                                                       "valueReference": {"reference": "#conversion-outcome"}})
        patient_urn = "urn:uuid:" + result.patient["id"]
        # The Binary is written (and, for patients, readable) in its patient's space.
        result.binary.setdefault("securityContext", {"reference": patient_urn})
        entries: list[Json] = []
        for entry in result.to_transaction_bundle()["entry"]:
            res = entry["resource"]
            rtype = res["resourceType"]
            if rtype == "Patient" and patient_ref is not None:
                continue
            if patient_ref is not None:
                res = _replace_refs(res, patient_urn, patient_ref)
            if rtype in SHARED_TYPES or rtype == "Patient":
                entries.append({**entry, "resource": res})
            else:
                entries.append({"fullUrl": entry["fullUrl"], "resource": res,
                                "request": {"method": "PUT", "url": f"{rtype}/{res['id']}"}})
        entries.extend(patches)
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    @staticmethod
    def _response(report: list[Json], responses: list[Json]) -> Json:
        outcome = {"resourceType": "OperationOutcome", "issue": report}
        return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "transaction-response",
                "entry": [{"resource": outcome, "response": {"status": "200 OK"}}, *responses]}

    # ============================================================ patient uploads
    def upload(self, ctx: RequestContext, data: bytes, content_type: str | None,
               params: list[tuple[str, str]]) -> IngestOutcome:
        """``POST DocumentReference/$upload?patient=&type=DOCPAT0x&title=[&date=][&description=]``, raw body."""
        args: dict[str, str] = {}
        for name, value in params:
            if name in ("_format", "_pretty"):
                continue
            if name not in ("patient", "type", "title", "date", "description"):
                raise BadRequest(f"Unknown $upload parameter {name!r}", expression=name)
            if name in args:
                raise BadRequest(f"$upload parameter {name!r} given twice", expression=name)
            args[name] = value
        media = _media_type(content_type)
        if media not in UPLOAD_MEDIA_TYPES:
            raise UnsupportedMediaType(f"$upload takes {', '.join(sorted(UPLOAD_MEDIA_TYPES))}, not "
                                       f"{media or 'nothing'!r}", expression="Content-Type")
        if not data:
            raise BadRequest("$upload needs the file as the request body", expression="body")
        if not data.startswith(UPLOAD_MEDIA_TYPES[media]):
            raise Unprocessable(f"The body is not a {media} file", expression="body")
        doc_type = args.get("type", "")
        if doc_type not in PATIENT_DOCUMENT_TYPES:
            raise Unprocessable(f"type must be one of {', '.join(PATIENT_DOCUMENT_TYPES)} (JDV J07), not "
                                f"{doc_type!r}", expression="type")
        title = args.get("title", "").strip()
        if not title:
            raise BadRequest("title is required", expression="title")
        patient_ref = self._upload_patient(ctx, args.get("patient") or ctx.caller.patient)
        when = args.get("date")
        if when is not None:
            try:
                date.fromisoformat(when[:10])
            except ValueError:
                raise BadRequest(f"date {when!r} is not a FHIR date or dateTime", expression="date") from None
        now = _now()
        binary_urn = f"urn:uuid:{uuid.uuid4()}"
        j07, j06, j08 = self.tables["J07"], self.tables["J06"], self.tables["J08"]
        attachment: Json = {"contentType": media, "language": "fr-FR", "url": binary_urn, "size": len(data),
                            "hash": base64.b64encode(hashlib.sha1(data).digest()).decode(),  # noqa: S324
                            "title": title, "creation": when or now}
        docref: Json = {
            "resourceType": "DocumentReference",
            "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
            "status": "current",
            "type": {"coding": [j07.coding(doc_type)]},
            "category": [{"coding": [j06.coding(_PATIENT_CLASS)]}],
            "subject": {"reference": patient_ref},
            "date": now,
            "author": [{"reference": patient_ref}],
            "securityLabel": [{"coding": [j08.coding("N")]}],
            "content": [{"attachment": attachment, "format": dict(_MIME_SUFFICIENT)}],
            "context": {"period": {"start": when or now},
                        "facilityType": {"coding": [self.tables["J02"].coding(_PATIENT_PRODUCER)]},
                        "practiceSetting": {"coding": [self.tables["J04"].coding(_PATIENT_PRODUCER)]}},
        }
        if args.get("description"):
            docref["description"] = args["description"]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": binary_urn, "resource": {"resourceType": "Binary", "contentType": media,
                                                 "securityContext": {"reference": patient_ref},
                                                 "data": base64.b64encode(data).decode()},
             "request": {"method": "POST", "url": "Binary"}},
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": docref,
             "request": {"method": "POST", "url": "DocumentReference"}},
        ]}
        _, response = self.services.bundles.process(ctx, bundle)
        responses = response.get("entry") or []
        location = (responses[1].get("response") or {}).get("location", "")
        report = [_issue("information", "informational", f"{media} document stored as "
                                                         f"{location.split('/_history')[0]} for {patient_ref}")]
        return IngestOutcome(201, self._response(report, responses), {"Location": f"{ctx.base_url}/{location}"})

    def _upload_patient(self, ctx: RequestContext, value: str | None) -> str:
        if not value:
            raise BadRequest("patient is required (Patient/[id])", expression="patient")
        pid = value.split("/")[-1] if value.startswith("Patient/") or "/" not in value else ""
        if not pid:
            raise BadRequest(f"patient must be Patient/[id], not {value!r}", expression="patient")
        try:
            self.fhir.read(ctx, "Patient", pid)
        except FhirError as exc:
            if isinstance(exc, NotFound | Gone | BadRequest):
                raise Unprocessable(f"Patient/{pid} is not known", expression="patient") from None
            raise
        return f"Patient/{pid}"


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))
