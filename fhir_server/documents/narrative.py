"""CDA section narrative (``section/text``, StrucDocText) -> FHIR XHTML ``div``.

Only the FHIR-allowed XHTML subset is produced (http://hl7.org/fhir/R4/narrative.html):
elements are translated through :data:`ELEMENTS`; anything unknown becomes a ``span``
that keeps its text; attributes are whitelisted; links keep only ``http(s)`` and
local (``#``) targets. The output always parses as XML and has non-blank content,
or the function returns ``None``.
"""

from __future__ import annotations

from lxml import etree

from fhir_server.documents.safexml import CDA_NS

__all__ = ["to_xhtml", "ELEMENTS", "XHTML_NS"]

XHTML_NS = "http://www.w3.org/1999/xhtml"
_X = "{" + XHTML_NS + "}"
_CLEN = len(CDA_NS) + 2

# CDA StrucDocText element -> XHTML element.
ELEMENTS: dict[str, str] = {
    "text": "div",
    "paragraph": "p",
    "content": "span",
    "br": "br",
    "list": "ul",
    "item": "li",
    "table": "table",
    "thead": "thead",
    "tbody": "tbody",
    "tfoot": "tfoot",
    "tr": "tr",
    "th": "th",
    "td": "td",
    "caption": "caption",
    "col": "col",
    "colgroup": "colgroup",
    "sub": "sub",
    "sup": "sup",
    "linkHtml": "a",
    "footnote": "span",
    "footnoteRef": "span",
    "renderMultiMedia": "span",
    "section": "div",
    "title": "b",
}
_CELL_ATTRS = ("colspan", "rowspan", "align", "valign", "scope")
_STYLE = {"Bold": "font-weight: bold", "Italics": "font-style: italic", "Underline": "text-decoration: underline"}


def _copy(src: etree._Element, dst: etree._Element, in_table: bool) -> None:
    last: etree._Element | None = None
    if src.text:
        dst.text = src.text
    for child in src:
        tag = child.tag
        if not isinstance(tag, str):  # comments, processing instructions
            if child.tail:
                _append_text(dst, last, child.tail)
            continue
        local = tag[_CLEN:] if tag.startswith("{" + CDA_NS + "}") else etree.QName(tag).localname
        name = ELEMENTS.get(local, "span")
        if local == "list" and child.get("listType") == "ordered":
            name = "ol"
        if name == "caption" and (not in_table or local != "caption" or src.tag[_CLEN:] != "table"):
            name = "b"
        out = etree.SubElement(dst, _X + name)
        ident = child.get("ID")
        if ident and name != "br":
            out.set("id", ident)
        style = child.get("styleCode")
        if style and name != "br":
            css = "; ".join(_STYLE[s] for s in style.split() if s in _STYLE)
            if css:
                out.set("style", css)
        if name in ("td", "th"):
            for a in _CELL_ATTRS:
                v = child.get(a)
                if v:
                    out.set(a, v)
        elif name == "a":
            href = (child.get("href") or "").strip()
            if href.startswith(("http://", "https://", "#")):
                out.set("href", href)
        if name == "br":
            out.tail = None
        elif local == "renderMultiMedia":
            ref = child.get("referencedObject") or ""
            out.text = f"[multimedia {ref}]" if ref else "[multimedia]"
        else:
            _copy(child, out, in_table or name == "table")
        if child.tail:
            out.tail = child.tail
        last = out


def _append_text(dst: etree._Element, last: etree._Element | None, text: str) -> None:
    if last is None:
        dst.text = (dst.text or "") + text
    else:
        last.tail = (last.tail or "") + text


def to_xhtml(text_el: etree._Element | None) -> str | None:
    """The XHTML div for a CDA ``section/text`` element, or ``None`` when it is blank."""
    if text_el is None:
        return None
    div = etree.Element(_X + "div", nsmap={None: XHTML_NS})
    _copy(text_el, div, False)
    if not "".join(div.itertext()).strip():
        return None
    return etree.tostring(div, encoding="unicode")
