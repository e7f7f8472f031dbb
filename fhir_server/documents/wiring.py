"""Wires the document features into the server (listed in ``fhir_server.main.EXTENSIONS``).

* ``services.bundles.checks`` gets :class:`~fhir_server.documents.mhd.MhdRules`: every
  ITI-65 Provide Document Bundle posted to ``[base]`` is validated against the
  PDSm/MHD rules before the transaction writes anything.
* ``POST [base]/DocumentReference/$ingest-cda``: body = one CDA document
  (``application/hl7-cda+xml``, ``text/xml`` or ``application/xml``); 201 + a
  transaction-response Bundle (200 when the same document was already ingested).
* ``POST [base]/DocumentReference/$upload?patient=Patient/[id]&type=DOCPAT0x&title=…``
  ``[&date=…][&description=…]``: body = the raw file (``application/pdf``,
  ``image/jpeg``, ``image/png``); 201 + a transaction-response Bundle. A raw body
  rather than a multipart form: no form parser on the request path, the media type
  is the request's ``Content-Type``, and the metadata fit in the query.

See :mod:`fhir_server.documents.ingest` for the contracts.
"""

from __future__ import annotations

from typing import Any

from fhir_server.documents.ingest import DocumentIngestor
from fhir_server.documents.mhd import MhdRules
from fhir_server.rest.operations import OperationCall, OperationResult

__all__ = ["install"]


def install(services: Any) -> None:
    ingestor = DocumentIngestor(services)
    services.extras["documents"] = ingestor
    if services.bundles is not None:
        services.bundles.checks.append(MhdRules(services.fhir))
    ops = services.operations

    @ops.register("ingest-cda", levels=("type",), types=("DocumentReference",), methods=("POST",),
                  documentation="Store a CDA R2 document and everything extracted from it in one transaction")
    def ingest_cda(call: OperationCall) -> OperationResult:
        out = ingestor.ingest_cda(call.ctx, call.body, call.content_type)
        return OperationResult(out.status, out.bundle, headers=out.headers)

    @ops.register("upload", levels=("type",), types=("DocumentReference",), methods=("POST",),
                  documentation="Store a patient's own document (PDF/JPEG/PNG, type DOCPAT01..09) with its "
                                "DocumentReference")
    def upload(call: OperationCall) -> OperationResult:
        out = ingestor.upload(call.ctx, call.body, call.content_type, call.params)
        return OperationResult(out.status, out.bundle, headers=out.headers)
