"""FHIR date/dateTime/instant parsing for parameters such as ``_since`` and ``_at``."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fhir_server.fhir.errors import BadRequest

__all__ = ["parse_fhir_datetime"]

_DT = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def parse_fhir_datetime(value: str, param: str) -> datetime:
    """The earliest instant of a FHIR date/dateTime/instant (no zone: UTC)."""
    m = _DT.match(value.strip())
    if not m:
        raise BadRequest(f"Invalid date/time '{value}' for {param}", expression=param)
    g = m.groupdict()
    try:
        frac = (g["f"] or "0")[:6].ljust(6, "0")
        dt = datetime(int(g["y"]), int(g["m"] or 1), int(g["d"] or 1), int(g["H"] or 0), int(g["M"] or 0),
                      int(g["S"] or 0), int(frac), tzinfo=UTC)
        tz = g["tz"]
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            from datetime import timedelta

            dt = dt - sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    except ValueError as exc:
        raise BadRequest(f"Invalid date/time '{value}' for {param}", expression=param) from exc
    return dt
