"""Hostile-input-safe parsing of CDA documents (DESIGN §5).

The parser resolves no entity, loads no DTD, touches no network and refuses huge
trees. On top of lxml's own guards we reject *any* DOCTYPE (entity expansion
attacks such as billion laughs and quadratic blow-up need one), enforce a byte
size limit before parsing and an element depth limit after, and tolerate a
leading UTF-8 byte-order mark.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from lxml import etree

from fhir_server.fhir.errors import BadRequest, PayloadTooLarge, Unprocessable

__all__ = ["ParseLimits", "parse_cda_xml", "CDA_NS", "NS", "NAMESPACE_ADDED"]

CDA_NS = "urn:hl7-org:v3"
NS = {
    "cda": CDA_NS,
    "sdtc": "urn:hl7-org:sdtc",
    "lab": "urn:oid:1.3.6.1.4.1.19376.1.3.2",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}

_BOM = b"\xef\xbb\xbf"
# A DOCTYPE may only appear in the prolog, before the root element; look for it there.
_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_ROOT_START = re.compile(rb"<[A-Za-z_]")


@dataclass(frozen=True)
class ParseLimits:
    """Limits applied to every document. ``max_bytes`` defaults to 20 MB."""

    max_bytes: int = 20 * 1024 * 1024
    max_depth: int = 256


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
    )


_PARSER = _parser()


_XSL_STYLESHEET = "{http://www.w3.org/1999/XSL/Transform}stylesheet"


def _self_presenting(stylesheet: etree._Element) -> etree._Element:
    """The ClinicalDocument of an ANS "CDA autoprésentable" document (an XSLT stylesheet
    carrying the CDA in a top-level data element), detached; the stylesheet itself when none."""
    found = [el for el in stylesheet.iterfind(f"*/{{{CDA_NS}}}ClinicalDocument")
             if etree.QName(el.getparent()).namespace != "http://www.w3.org/1999/XSL/Transform"]
    if len(found) != 1:
        return stylesheet
    return copy.deepcopy(found[0])


def _check_depth(root: etree._Element, max_depth: int) -> None:
    # Iterative walk: a recursive one would itself be a stack risk on hostile input.
    stack: list[tuple[etree._Element, int]] = [(root, 1)]
    while stack:
        el, depth = stack.pop()
        if depth > max_depth:
            raise BadRequest(f"XML nesting deeper than {max_depth} levels", expression="ClinicalDocument")
        for child in el:
            if len(child):
                stack.append((child, depth + 1))


def _into_cda_namespace(root: etree._Element) -> etree._Element:
    """A ``ClinicalDocument`` written without its namespace (some published guide examples):
    its un-namespaced elements are put in ``urn:hl7-org:v3``; the document is marked with
    the attribute ``{urn:fhir-server}namespace-added`` so the converter can report it."""
    for el in root.iter():
        if isinstance(el.tag, str) and not el.tag.startswith("{"):
            el.tag = f"{{{CDA_NS}}}{el.tag}"
    etree.cleanup_namespaces(root)
    root.set(NAMESPACE_ADDED, "true")
    return root


NAMESPACE_ADDED = "{urn:fhir-server}namespace-added"


def parse_cda_xml(data: bytes, limits: ParseLimits = ParseLimits()) -> etree._Element:
    """Parse ``data`` into the ``ClinicalDocument`` root element.

    Raises ``PayloadTooLarge`` (413) over the size limit, ``BadRequest`` (400) for a
    DOCTYPE, malformed XML or excessive depth, and ``Unprocessable`` (422) when the
    root is not ``{urn:hl7-org:v3}ClinicalDocument``. A self-presenting ("autoprésentable")
    document, an XSLT stylesheet embedding one ClinicalDocument, gives that ClinicalDocument.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadRequest("CDA document must be bytes", expression="ClinicalDocument")
    data = bytes(data)
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"CDA document is {len(data)} bytes, over the {limits.max_bytes} byte limit",
            expression="ClinicalDocument",
        )
    if data.startswith(_BOM):
        data = data[3:]
    if not data.strip():
        raise BadRequest("empty CDA document", expression="ClinicalDocument")
    root_start = _ROOT_START.search(data)
    prolog = data[: root_start.start()] if root_start else data
    if _DOCTYPE.search(prolog) or (b"<!ENTITY" in prolog.upper()):
        raise BadRequest("DOCTYPE declarations are not accepted in CDA documents", expression="ClinicalDocument")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise BadRequest(f"malformed XML: {exc}", expression="ClinicalDocument") from None
    if root is None:
        raise BadRequest("empty CDA document", expression="ClinicalDocument")
    if root.getroottree().docinfo.doctype:
        raise BadRequest("DOCTYPE declarations are not accepted in CDA documents", expression="ClinicalDocument")
    if root.tag == _XSL_STYLESHEET:
        root = _self_presenting(root)
    if root.tag == "ClinicalDocument":
        root = _into_cda_namespace(root)
    if root.tag != f"{{{CDA_NS}}}ClinicalDocument":
        raise Unprocessable(
            f"not a CDA document: root element is {root.tag!r}, expected {{{CDA_NS}}}ClinicalDocument",
            expression="ClinicalDocument",
        )
    _check_depth(root, limits.max_depth)
    return root
