"""CDA R2 data types -> FHIR data types, as a registry of converters.

Every converter has the signature ``(ctx, element) -> value | None``: it never raises
on bad data; it returns ``None`` and records an issue on ``ctx`` instead, so one bad
value never sinks a document. Converters are registered by CDA type name with
:func:`datatype` and looked up by the mapping engine from the ``type`` of a field::

    @datatype("BL")
    def boolean(ctx: Context, el: etree._Element) -> bool | None:
        ...

Converters of FHIR choice elements (``value[x]``, ``effective[x]``) return a
:class:`Choice` naming the type suffix.

References: HL7 "C-CDA on FHIR" data type guidance
(https://build.fhir.org/ig/HL7/ccda-on-fhir/mappingGuidance.html).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from fhir_server.documents.safexml import CDA_NS
from fhir_server.documents.terminology import OidTable, Ucum, is_oid, is_uuid, oid_table, ucum

__all__ = [
    "Choice",
    "Context",
    "DATATYPES",
    "DAR_URL",
    "datatype",
    "convert",
    "data_absent",
    "ts_to_fhir",
    "ts_to_instant",
]

DAR_URL = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
UCUM_URI = "http://unitsofmeasure.org"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_C = "{" + CDA_NS + "}"

Json = dict[str, Any]


def data_absent(reason: str = "unknown") -> Json:
    """A data-absent-reason extension (http://hl7.org/fhir/R4/extension-data-absent-reason.html)."""
    return {"url": DAR_URL, "valueCode": reason}


# CDA nullFlavor -> data-absent-reason code (C-CDA on FHIR guidance).
NULL_FLAVOR_DAR = {
    "NI": "unknown",
    "UNK": "unknown",
    "ASKU": "asked-unknown",
    "NAV": "temp-unknown",
    "NASK": "not-asked",
    "MSK": "masked",
    "NA": "not-applicable",
    "NP": "unknown",
    "OTH": "unsupported",
    "NINF": "negative-infinity",
    "PINF": "positive-infinity",
    "TRC": "unknown",
}


@dataclass(frozen=True)
class Choice:
    """The value of a FHIR choice element; ``suffix`` is the type (``Quantity``, ``Period``)."""

    suffix: str
    value: Any


@dataclass
class Context:
    """Per-document conversion state shared by converters and the mapping engine."""

    root: etree._Element | None = None
    oids: OidTable = field(default_factory=oid_table)
    units: Ucum = field(default_factory=ucum)
    issues: list[Json] = field(default_factory=list)
    location: str = "ClinicalDocument"
    _ids: dict[str, etree._Element] | None = None

    def issue(self, diagnostics: str, *, severity: str = "warning", code: str = "value",
              location: str | None = None) -> None:
        self.issues.append(
            {
                "severity": severity,
                "code": code,
                "diagnostics": diagnostics,
                "location": [location or self.location],
            }
        )

    def narrative(self, ref: str) -> str | None:
        """Text of the narrative element whose ``ID`` is ``ref`` (``#id`` or ``id``)."""
        if self.root is None:
            return None
        if self._ids is None:
            self._ids = {}
            for el in self.root.iter():
                ident = el.get("ID") if isinstance(el.tag, str) else None
                if ident is not None and ident not in self._ids:
                    self._ids[ident] = el
        el = self._ids.get(ref[1:] if ref.startswith("#") else ref)
        if el is None:
            return None
        return clean_text("".join(el.itertext()))

    def system(self, oid: str | None, what: str = "codeSystem") -> str | None:
        if not oid:
            return None
        uri = self.oids.uri(oid.strip())
        if uri is None:
            self.issue(f"{what} {oid!r} is neither an OID nor a UUID: system dropped", code="code-invalid")
        return uri


Converter = Callable[[Context, etree._Element], Any]
DATATYPES: dict[str, Converter] = {}


def datatype(*names: str) -> Callable[[Converter], Converter]:
    """Register a converter under one or more CDA type names."""

    def register(fn: Converter) -> Converter:
        for name in names:
            if name in DATATYPES:
                raise ValueError(f"data type {name!r} registered twice")
            DATATYPES[name] = fn
        return fn

    return register


def convert(ctx: Context, type_name: str, el: etree._Element) -> Any:
    try:
        fn = DATATYPES[type_name]
    except KeyError:
        raise KeyError(f"no converter registered for CDA data type {type_name!r}") from None
    return fn(ctx, el)


_WS = re.compile(r"\s+")


def clean_text(text: str | None) -> str | None:
    if text is None:
        return None
    text = _WS.sub(" ", text).strip()
    return text or None


def xsi_type(el: etree._Element) -> str | None:
    t = el.get(XSI_TYPE)
    if t is None:
        return None
    return t.rsplit(":", 1)[-1].strip()


# --------------------------------------------------------------------------- TS
_TS = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,9}))?)?)?)?)?)?"
    r"(?:([+-])(\d{2})(\d{2})|Z)?$"
)


def _parse_ts(value: str) -> tuple[str, str | None] | None:
    """(FHIR dateTime, FHIR instant or None) for a CDA TS literal; None if invalid."""
    m = _TS.match(value.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, sign, oh, om = m.groups()
    y = int(year)
    if y < 1 or (month and not 1 <= int(month) <= 12):
        return None
    if day and not 1 <= int(day) <= calendar.monthrange(y, int(month))[1]:
        return None
    if hour and (int(hour) > 23 or (minute and int(minute) > 59) or (second and int(second) > 59)):
        return None
    if sign and (int(oh) > 14 or int(om) > 59):
        return None
    if not month:
        return year, None
    if not day:
        return f"{year}-{month}", None
    date = f"{year}-{month}-{day}"
    if not hour:
        return date, None
    zone = None
    if sign:
        zone = f"{sign}{oh}:{om}"
    elif value.strip().endswith("Z"):
        zone = "Z"
    if zone is None:
        # A time without an offset is not a valid FHIR dateTime: keep the date, never stamp UTC.
        return date, None
    full = f"{date}T{hour}:{minute or '00'}:{second or '00'}"
    if frac:
        full += "." + frac
    full += zone
    return full, full


def ts_to_fhir(value: str) -> str | None:
    parsed = _parse_ts(value)
    return parsed[0] if parsed else None


def ts_to_instant(value: str) -> str | None:
    parsed = _parse_ts(value)
    return parsed[1] if parsed else None


@datatype("TS")
def ts(ctx: Context, el: etree._Element) -> str | None:
    value = el.get("value")
    if value is None:
        if el.get("nullFlavor") is None:
            # An IVL_TS used where a point is expected: take its center, else its low.
            for child in ("center", "low"):
                sub = el.find(_C + child)
                if sub is not None and sub.get("value"):
                    return ts(ctx, sub)
        return None
    out = ts_to_fhir(value)
    if out is None:
        ctx.issue(f"invalid TS value {value!r}: skipped", code="value")
    return out


@datatype("TS.date")
def ts_date(ctx: Context, el: etree._Element) -> str | None:
    out = ts(ctx, el)
    return out[:10] if out else None


@datatype("TS.instant")
def ts_instant(ctx: Context, el: etree._Element) -> str | None:
    value = el.get("value")
    return ts_to_instant(value) if value else None


@datatype("IVL_TS")
def ivl_ts(ctx: Context, el: etree._Element) -> Json | None:
    period: Json = {}
    low = el.find(_C + "low")
    high = el.find(_C + "high")
    if low is not None:
        v = ts(ctx, low)
        if v:
            period["start"] = v
    if high is not None:
        v = ts(ctx, high)
        if v:
            period["end"] = v
    if not period and el.get("value"):
        v = ts(ctx, el)
        if v:
            period["start"] = v
    if not period:
        center = el.find(_C + "center")
        if center is not None:
            v = ts(ctx, center)
            if v:
                period["start"] = period["end"] = v
    if "start" in period and "end" in period and period["end"] < period["start"][: len(period["end"])]:
        ctx.issue(f"period end {period['end']} before start {period['start']}: end dropped")
        del period["end"]
    return period or None


@datatype("EFFECTIVE")
def effective(ctx: Context, el: etree._Element) -> Choice | None:
    """``effective[x]`` / ``onset[x]`` / ``performed[x]``: a point becomes dateTime, a range a Period."""
    if el.get("value"):
        v = ts(ctx, el)
        return Choice("DateTime", v) if v else None
    period = ivl_ts(ctx, el)
    if period is None:
        return None
    if list(period) == ["start"] and el.find(_C + "high") is None:
        return Choice("DateTime", period["start"])
    return Choice("Period", period)


@datatype("EFFECTIVE.low")
def effective_low(ctx: Context, el: etree._Element) -> Choice | None:
    """A point in time from an IVL_TS: its value, else low, else center (``occurrence[x]``)."""
    v = ts(ctx, el)
    return Choice("DateTime", v) if v else None


# --------------------------------------------------------------------------- numbers
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_COMPARATOR = re.compile(r"^\s*(<=|>=|<|>)\s*(.+)$")


def number(text: str | None) -> int | float | None:
    if text is None:
        return None
    text = text.strip()
    if not _NUMBER.match(text):
        return None
    if re.fullmatch(r"[+-]?\d+", text) and len(text) < 16:
        return int(text)
    try:
        f = float(text)
    except ValueError:
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


@datatype("PQ")
def pq(ctx: Context, el: etree._Element) -> Json | None:
    raw = el.get("value")
    if raw is None:
        return None
    qty: Json = {}
    value = number(raw)
    if value is None:
        m = _COMPARATOR.match(raw)
        value = number(m.group(2)) if m else None
        if value is None:
            ctx.issue(f"PQ value {raw!r} is not a number: skipped")
            return None
        qty["comparator"] = m.group(1)  # type: ignore[union-attr]
    qty["value"] = value
    unit = (el.get("unit") or "").strip()
    if unit and unit != "1":
        code = ctx.units.normalise(unit)
        qty["unit"] = unit
        if code is not None:
            qty["system"] = UCUM_URI
            qty["code"] = code
    elif unit == "1":
        qty.update(unit="1", system=UCUM_URI, code="1")
    return qty


@datatype("REAL", "INT.Quantity")
def real(ctx: Context, el: etree._Element) -> Json | None:
    v = number(el.get("value"))
    if v is None:
        if el.get("value") is not None:
            ctx.issue(f"number {el.get('value')!r} invalid: skipped")
        return None
    return {"value": v}


@datatype("INT")
def integer(ctx: Context, el: etree._Element) -> int | None:
    v = number(el.get("value"))
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if v is None or not isinstance(v, int):
        if el.get("value") is not None:
            ctx.issue(f"integer {el.get('value')!r} invalid: skipped")
        return None
    return v


@datatype("INT.positive")
def positive_int(ctx: Context, el: etree._Element) -> int | None:
    v = integer(ctx, el)
    return v if v is not None and v > 0 else None


@datatype("BL")
def boolean(ctx: Context, el: etree._Element) -> bool | None:
    v = el.get("value")
    if v in ("true", "false"):
        return v == "true"
    return None


@datatype("IVL_PQ")
def ivl_pq(ctx: Context, el: etree._Element) -> Json | None:
    rng: Json = {}
    for part in ("low", "high"):
        sub = el.find(_C + part)
        if sub is not None:
            q = pq(ctx, sub)
            if q:
                q.pop("comparator", None)
                rng[part] = q
    if not rng and el.get("value") is not None:
        q = pq(ctx, el)
        if q:
            q.pop("comparator", None)
            rng["low"] = rng["high"] = q
    return rng or None


@datatype("RTO")
def ratio(ctx: Context, el: etree._Element) -> Json | None:
    out: Json = {}
    for part in ("numerator", "denominator"):
        sub = el.find(_C + part)
        if sub is not None:
            q = pq(ctx, sub) if xsi_type(sub) != "INT" else real(ctx, sub)
            if q:
                q.pop("comparator", None)
                out[part] = q
    return out or None


# --------------------------------------------------------------------------- codes
_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")


def _coding(ctx: Context, el: etree._Element) -> Json | None:
    code = el.get("code")
    if code is None:
        return None
    code = clean_text(code)
    if not code or not _CODE.match(code):
        return None
    coding: Json = {}
    system = ctx.system(el.get("codeSystem"))
    if system:
        coding["system"] = system
    version = clean_text(el.get("codeSystemVersion"))
    if version:
        coding["version"] = version
    coding["code"] = code
    display = clean_text(el.get("displayName"))
    if display:
        coding["display"] = display
    return coding


def original_text(ctx: Context, el: etree._Element) -> str | None:
    ot = el.find(_C + "originalText")
    if ot is None:
        return None
    ref = ot.find(_C + "reference")
    if ref is not None and ref.get("value"):
        text = ctx.narrative(ref.get("value", ""))
        if text:
            return text
    return clean_text(ot.text)


@datatype("CD", "CE", "CV", "CO")
def codeable_concept(ctx: Context, el: etree._Element) -> Json | None:
    codings: list[Json] = []
    main = _coding(ctx, el)
    if main:
        codings.append(main)
    for tr in el.iterfind(_C + "translation"):
        c = _coding(ctx, tr)
        if c and c not in codings:
            codings.append(c)
    cc: Json = {}
    if codings:
        cc["coding"] = codings
    text = original_text(ctx, el)
    if text:
        cc["text"] = text
    elif not codings:
        return None
    return cc


@datatype("CD.coding")
def coding(ctx: Context, el: etree._Element) -> Json | None:
    return _coding(ctx, el)


@datatype("CS")
def code_simple(ctx: Context, el: etree._Element) -> str | None:
    code = clean_text(el.get("code"))
    return code if code and _CODE.match(code) else None


# --------------------------------------------------------------------------- identifiers
@datatype("II")
def identifier(ctx: Context, el: etree._Element) -> Json | None:
    root = (el.get("root") or "").strip()
    ext = clean_text(el.get("extension"))
    if not root and not ext:
        return None
    if not ext:
        known = ctx.system(root, "II root") if is_oid(root) else None
        if known and not known.startswith("urn:oid:"):
            # the root names an identifier system (NPI, INS, RPPS…) whose value is missing or
            # null-flavoured: not an identifier of this object, and never a deduplication key
            ctx.issue(f"II with the identifier system {known} but no value: identifier skipped",
                      severity="information", code="incomplete")
            return None
        if is_oid(root):
            return {"system": "urn:ietf:rfc:3986", "value": "urn:oid:" + root}
        if is_uuid(root):
            return {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:" + root.lower()}
        ctx.issue(f"II root {root!r} is neither an OID nor a UUID: identifier skipped", code="code-invalid")
        return None
    out: Json = {}
    if root:
        system = ctx.system(root, "II root")
        if system:
            out["system"] = system
    out["value"] = ext
    return out


# --------------------------------------------------------------------------- strings
@datatype("ST")
def string(ctx: Context, el: etree._Element) -> str | None:
    if el.get("nullFlavor") is not None and not len(el) and not (el.text or "").strip():
        return None
    ref = el.find(_C + "reference")
    if ref is not None and ref.get("value"):
        text = ctx.narrative(ref.get("value", ""))
        if text:
            return text
    return clean_text("".join(t for t in el.itertext()))


@datatype("ED")
def attachment(ctx: Context, el: etree._Element) -> Json | None:
    """ED -> Attachment (inline base64 data kept as is; text content encoded)."""
    import base64

    media = el.get("mediaType") or "text/plain"
    out: Json = {"contentType": media}
    ref = el.find(_C + "reference")
    raw = "".join(t for t in el.itertext() if t) if el.get("representation") == "B64" else None
    if raw is not None:
        data = "".join(raw.split())
        try:
            base64.b64decode(data, validate=True)
        except ValueError:
            ctx.issue("ED base64 content is invalid: skipped")
            return None
        out["data"] = data
    else:
        text = clean_text(el.text)
        if text:
            out["data"] = base64.b64encode(text.encode()).decode()
        elif ref is not None and ref.get("value", "").startswith("#"):
            text = ctx.narrative(ref.get("value", ""))
            if not text:
                return None
            out["contentType"] = "text/plain"
            out["data"] = base64.b64encode(text.encode()).decode()
        elif ref is not None and ref.get("value"):
            out["url"] = ref.get("value")
        else:
            return None
    return out


# --------------------------------------------------------------------------- value[x]
def _value_string(ctx: Context, el: etree._Element) -> Choice | None:
    s = string(ctx, el)
    return Choice("String", s) if s else None


_VALUE_TYPES: dict[str, Callable[[Context, etree._Element], Choice | None]] = {
    "PQ": lambda c, e: (lambda q: Choice("Quantity", q) if q else None)(pq(c, e)),
    "REAL": lambda c, e: (lambda q: Choice("Quantity", q) if q else None)(real(c, e)),
    "INT": lambda c, e: (lambda v: Choice("Integer", v) if v is not None else None)(integer(c, e)),
    "BL": lambda c, e: (lambda v: Choice("Boolean", v) if v is not None else None)(boolean(c, e)),
    "ST": _value_string,
    "SC": _value_string,
    "TS": lambda c, e: (lambda v: Choice("DateTime", v) if v else None)(ts(c, e)),
    "IVL_TS": lambda c, e: (lambda v: Choice("Period", v) if v else None)(ivl_ts(c, e)),
    "IVL_PQ": lambda c, e: (lambda v: Choice("Range", v) if v else None)(ivl_pq(c, e)),
    "RTO": lambda c, e: (lambda v: Choice("Ratio", v) if v else None)(ratio(c, e)),
    "RTO_PQ_PQ": lambda c, e: (lambda v: Choice("Ratio", v) if v else None)(ratio(c, e)),
    "RTO_INT_INT": lambda c, e: (lambda v: Choice("Ratio", v) if v else None)(ratio(c, e)),
    "ED": _value_string,
}
for _t in ("CD", "CE", "CV", "CO"):
    _VALUE_TYPES[_t] = lambda c, e: (lambda v: Choice("CodeableConcept", v) if v else None)(
        codeable_concept(c, e)
    )


@datatype("ANY")
def any_value(ctx: Context, el: etree._Element) -> Choice | None:
    """``value[x]`` from an ANY-typed ``value`` element, dispatching on ``xsi:type``."""
    t = xsi_type(el)
    if t is None:
        if el.get("code") is not None or el.find(_C + "originalText") is not None:
            t = "CD"
        elif el.get("value") is not None:
            t = "PQ" if el.get("unit") else "ST"
        else:
            t = "ST"
    fn = _VALUE_TYPES.get(t)
    if fn is None:
        ctx.issue(f"value of xsi:type {t!r} is not mapped: skipped", code="not-supported")
        return None
    return fn(ctx, el)


# --------------------------------------------------------------------------- names, addresses, telecom
_NAME_USE = {"L": "official", "OR": "official", "C": "official", "P": "nickname", "A": "nickname",
             "ASGN": "usual", "I": "usual", "SRCH": "temp"}


def _parts(el: etree._Element, tag: str) -> list[etree._Element]:
    return [p for p in el.iterfind(_C + tag) if clean_text("".join(p.itertext()))]


@datatype("EN")
def human_names(ctx: Context, el: etree._Element) -> list[Json] | None:
    """EN/PN -> HumanName list. French names carry a birth family name (qualifier BR,
    official) and optionally a used name (qualifier SP/CL, usual): one HumanName each."""
    if el.get("nullFlavor") is not None and not len(el):
        return None
    given = [clean_text("".join(g.itertext())) for g in _parts(el, "given")]
    prefix = [clean_text("".join(g.itertext())) for g in _parts(el, "prefix")]
    suffix = [clean_text("".join(g.itertext())) for g in _parts(el, "suffix")]
    families = _parts(el, "family")
    use = _NAME_USE.get((el.get("use") or "").split(" ")[0])
    base: Json = {}
    if given:
        base["given"] = given
    if prefix:
        base["prefix"] = prefix
    if suffix:
        base["suffix"] = suffix
    names: list[Json] = []
    if families:
        birth = [f for f in families if (f.get("qualifier") or "") == "BR"]
        used = [f for f in families if (f.get("qualifier") or "") in ("SP", "CL")]
        if birth and used:
            for group, group_use in ((birth, "official"), (used, "usual")):
                n = {"use": group_use, "family": " ".join(clean_text("".join(f.itertext())) or "" for f in group)}
                names.append({**n, **base})
        else:
            family = " ".join(clean_text("".join(f.itertext())) or "" for f in families)
            n = {"family": family, **base}
            if use:
                n = {"use": use, **n}
            names.append(n)
    elif base:
        names.append({"use": use, **base} if use else base)
    else:
        text = clean_text(el.text)
        if text:
            names.append({"text": text})
    return names or None


_ADDR_USE = {"H": "home", "HP": "home", "HV": "home", "WP": "work", "DIR": "work", "PUB": "work",
             "TMP": "temp", "OLD": "old", "BAD": "old"}


@datatype("AD")
def address(ctx: Context, el: etree._Element) -> Json | None:
    if el.get("nullFlavor") is not None and not len(el):
        return None
    out: Json = {}
    use = _ADDR_USE.get((el.get("use") or "").split(" ")[0])
    if use:
        out["use"] = use

    def text_of(tag: str) -> list[str]:
        return [t for t in (clean_text("".join(p.itertext())) for p in el.iterfind(_C + tag)) if t]

    lines = text_of("streetAddressLine")
    if not lines:
        street = " ".join(text_of("houseNumber") + text_of("houseNumberNumeric") + text_of("streetNameType")
                          + text_of("streetName"))
        if street:
            lines.append(street)
        lines += text_of("additionalLocator") + text_of("unitID") + text_of("postBox")
    if lines:
        out["line"] = lines
    for tag, key in (("city", "city"), ("county", "district"), ("state", "state"),
                     ("postalCode", "postalCode"), ("country", "country")):
        vals = text_of(tag)
        if vals:
            out[key] = vals[0]
    if len(out) == (1 if use else 0):
        text = clean_text(el.text)
        if not text:
            return None
        out["text"] = text
    period = el.find(_C + "useablePeriod")
    if period is not None:
        p = ivl_ts(ctx, period)
        if p:
            out["period"] = p
    return out


_TEL_USE = {"HP": "home", "H": "home", "HV": "home", "WP": "work", "DIR": "work", "PUB": "work",
            "MC": "mobile", "PG": "mobile", "TMP": "temp", "BAD": "old"}
_TEL_SCHEME = {"tel": "phone", "fax": "fax", "mailto": "email", "http": "url", "https": "url",
               "mllp": "other", "ftp": "url"}


@datatype("TEL")
def contact_point(ctx: Context, el: etree._Element) -> Json | None:
    value = clean_text(el.get("value"))
    if not value:
        return None
    scheme, sep, rest = value.partition(":")
    out: Json = {}
    if sep and scheme.lower() in _TEL_SCHEME:
        system = _TEL_SCHEME[scheme.lower()]
        out["system"] = system
        out["value"] = value if system == "url" else (clean_text(rest) or value)
    else:
        out["system"] = "other"
        out["value"] = value
    uses = (el.get("use") or "").split()
    for u in uses:
        if u in _TEL_USE:
            out["use"] = "mobile" if "MC" in uses else _TEL_USE[u]
            break
    return out


_GENDER = {"M": "male", "F": "female", "UN": "other", "U": "unknown", "UNK": "unknown"}


@datatype("gender")
def gender(ctx: Context, el: etree._Element) -> str | None:
    code = el.get("code")
    if code is None:
        return "unknown" if el.get("nullFlavor") else None
    return _GENDER.get(code.strip().upper(), "unknown")
