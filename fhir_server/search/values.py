"""Value normalisation shared by index extraction (write time) and query parsing (read time).

Both sides of a comparison go through the same functions, so ``Hélène`` written and
``HELENE`` searched meet as ``helene``, and ``2023`` searched and ``2023-05-01T10:00+02:00``
written are both instant ranges in UTC.

Time zones: a dateTime without a time zone (allowed by FHIR when it has no time part,
and tolerated otherwise) is read as UTC. This is a documented server choice
(https://hl7.org/fhir/R4/search.html#date leaves it to the server).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

__all__ = [
    "MIN_INSTANT",
    "MAX_INSTANT",
    "ONE_MS",
    "DateRange",
    "NumberRange",
    "fold",
    "parse_date_range",
    "parse_number",
    "canonical_quantity",
    "UCUM",
]

ONE_MS = timedelta(milliseconds=1)
MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
UCUM = "http://unitsofmeasure.org"

# ---------------------------------------------------------------------------- strings
_LIGATURES = str.maketrans({"œ": "oe", "Œ": "oe", "æ": "ae", "Æ": "ae", "ø": "o", "Ø": "o",
                            "đ": "d", "Đ": "d", "ł": "l", "Ł": "l", "ı": "i"})
_SPACES = re.compile(r"\s+")


def fold(text: str) -> str:
    """Lower-case, strip accents and collapse white space: ``"  Hélène  Œuvre"`` -> ``"helene oeuvre"``."""
    if text.isascii():
        return _SPACES.sub(" ", text).strip().lower()
    decomposed = unicodedata.normalize("NFKD", text.translate(_LIGATURES))
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACES.sub(" ", bare).strip().casefold()


# ---------------------------------------------------------------------------- dates
@dataclass(frozen=True, slots=True)
class DateRange:
    """The instants ``[lo, hi]`` (both inclusive, millisecond resolution, UTC) a date value covers."""

    lo: datetime
    hi: datetime


_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _add_months(dt: datetime, months: int) -> datetime | None:
    """``dt`` plus whole months; None past year 9999."""
    total = dt.year * 12 + dt.month - 1 + months
    year, month = divmod(total, 12)
    if year > 9999:
        return None
    return dt.replace(year=year, month=month + 1)


def parse_date_range(text: str) -> DateRange:
    """The instant range of a FHIR date, dateTime or instant string.

    ``2023`` -> [2023-01-01T00:00:00Z, 2023-12-31T23:59:59.999Z];
    ``2023-05-01T10:00+02:00`` -> [08:00:00.000Z, 08:00:59.999Z]. Raises ``ValueError``.
    """
    m = _DATE.match(text.strip())
    if m is None:
        raise ValueError(f"not a FHIR date/dateTime: {text!r}")
    g = m.groupdict()
    year = int(g["y"])
    end: datetime | None
    try:
        if g["m"] is None:
            lo = datetime(year, 1, 1, tzinfo=UTC)
            end = _add_months(lo, 12)
        elif g["d"] is None:
            lo = datetime(year, int(g["m"]), 1, tzinfo=UTC)
            end = _add_months(lo, 1)
        elif g["H"] is None:
            lo = datetime(year, int(g["m"]), int(g["d"]), tzinfo=UTC)
            end = lo + timedelta(days=1) if lo.date() < MAX_INSTANT.date() else None
        else:
            tz = UTC
            if g["tz"] and g["tz"] != "Z":
                sign = 1 if g["tz"][0] == "+" else -1
                hh, mm = int(g["tz"][1:3]), int(g["tz"][4:6])
                if hh > 14 or mm > 59:
                    raise ValueError(f"bad time zone offset in {text!r}")

                tz = timezone(sign * timedelta(hours=hh, minutes=mm))
            local = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]),
                             int(g["S"] or 0), tzinfo=tz)
            if g["S"] is None:
                step = timedelta(minutes=1)
            elif g["f"] is None:
                step = timedelta(seconds=1)
            else:
                digits = g["f"]
                micro = int(digits[:6].ljust(6, "0"))
                local = local.replace(microsecond=micro - micro % 1000)
                step = timedelta(seconds=10.0 ** -len(digits)) if len(digits) < 3 else ONE_MS
            lo = local.astimezone(UTC)
            end = lo + step if MAX_INSTANT - lo >= step else None
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid date: {text!r} ({exc})") from None
    return DateRange(lo, end - ONE_MS if end is not None else MAX_INSTANT)


# ---------------------------------------------------------------------------- numbers
@dataclass(frozen=True, slots=True)
class NumberRange:
    """A decimal search value with its implicit precision range ``[lo, hi)``
    (``100`` -> [99.5, 100.5), ``100.0`` -> [99.95, 100.05))."""

    value: float
    lo: float
    hi: float


def parse_number(text: str) -> NumberRange:
    """Parse a decimal as written in a search (``ValueError`` when malformed)."""
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    if not d.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return NumberRange(float(d), float(d - half), float(d + half))


# ---------------------------------------------------------------------------- units (UCUM)
# unit code -> (canonical unit, factor, offset): canonical = value * factor + offset.
_UNITS: dict[str, tuple[str, float, float]] = {
    # mass -> kg
    "kg": ("kg", 1.0, 0.0), "g": ("kg", 1e-3, 0.0), "mg": ("kg", 1e-6, 0.0), "ug": ("kg", 1e-9, 0.0),
    "[lb_av]": ("kg", 0.45359237, 0.0), "[oz_av]": ("kg", 0.028349523125, 0.0),
    # length -> cm
    "cm": ("cm", 1.0, 0.0), "mm": ("cm", 0.1, 0.0), "m": ("cm", 100.0, 0.0), "km": ("cm", 1e5, 0.0),
    "[in_i]": ("cm", 2.54, 0.0), "[ft_i]": ("cm", 30.48, 0.0),
    # pressure -> mm[Hg]
    "mm[Hg]": ("mm[Hg]", 1.0, 0.0), "kPa": ("mm[Hg]", 7.500615758, 0.0), "cm[H2O]": ("mm[Hg]", 0.73555924, 0.0),
    # substance concentration -> mmol/L
    "mmol/L": ("mmol/L", 1.0, 0.0), "umol/L": ("mmol/L", 1e-3, 0.0), "mol/L": ("mmol/L", 1e3, 0.0),
    "nmol/L": ("mmol/L", 1e-6, 0.0),
    # mass concentration -> g/L
    "g/L": ("g/L", 1.0, 0.0), "mg/dL": ("g/L", 1e-2, 0.0), "g/dL": ("g/L", 10.0, 0.0), "mg/L": ("g/L", 1e-3, 0.0),
    "ug/L": ("g/L", 1e-6, 0.0), "mg/mL": ("g/L", 1.0, 0.0), "ng/mL": ("g/L", 1e-6, 0.0), "ug/dL": ("g/L", 1e-5, 0.0),
    # ratios
    "%": ("%", 1.0, 0.0),
    # rates -> /min
    "/min": ("/min", 1.0, 0.0), "{beats}/min": ("/min", 1.0, 0.0), "{breaths}/min": ("/min", 1.0, 0.0),
    "/s": ("/min", 60.0, 0.0), "/h": ("/min", 1 / 60, 0.0),
    # temperature -> Cel
    "Cel": ("Cel", 1.0, 0.0), "[degF]": ("Cel", 5 / 9, -32 * 5 / 9), "K": ("Cel", 1.0, -273.15),
    # volume -> L
    "L": ("L", 1.0, 0.0), "mL": ("L", 1e-3, 0.0), "dL": ("L", 0.1, 0.0),
    # durations and ages -> s
    "s": ("s", 1.0, 0.0), "min": ("s", 60.0, 0.0), "h": ("s", 3600.0, 0.0), "d": ("s", 86400.0, 0.0),
    "wk": ("s", 604800.0, 0.0), "mo": ("s", 2629800.0, 0.0), "a": ("s", 31557600.0, 0.0),
    # body mass index
    "kg/m2": ("kg/m2", 1.0, 0.0),
}


def canonical_quantity(value: float, code: str | None) -> tuple[float, str] | None:
    """``(value, unit)`` in this server's canonical UCUM unit, or None for an unknown unit."""
    if code is None:
        return None
    conv = _UNITS.get(code)
    if conv is None:
        return None
    unit, factor, offset = conv
    return value * factor + offset, unit
