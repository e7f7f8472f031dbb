"""Normalisation shared by extraction and parsing: dates as instant ranges, folding, numbers, units."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fhir_server.search.values import canonical_quantity, fold, parse_date_range, parse_number


def _dt(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


@pytest.mark.parametrize(("text", "lo", "hi"), [
    ("2023", _dt(2023, 1, 1), _dt(2023, 12, 31, 23, 59, 59, 999000)),
    ("2024-02", _dt(2024, 2, 1), _dt(2024, 2, 29, 23, 59, 59, 999000)),  # leap year
    ("2023-12", _dt(2023, 12, 1), _dt(2023, 12, 31, 23, 59, 59, 999000)),
    ("2023-05-01", _dt(2023, 5, 1), _dt(2023, 5, 1, 23, 59, 59, 999000)),
    ("2023-05-01T10:00+02:00", _dt(2023, 5, 1, 8), _dt(2023, 5, 1, 8, 0, 59, 999000)),
    ("2023-05-01T10:00:00Z", _dt(2023, 5, 1, 10), _dt(2023, 5, 1, 10, 0, 0, 999000)),
    ("2023-05-01T10:00:00", _dt(2023, 5, 1, 10), _dt(2023, 5, 1, 10, 0, 0, 999000)),  # no tz: UTC
    ("2023-05-01T23:30:00-05:00", _dt(2023, 5, 2, 4, 30), _dt(2023, 5, 2, 4, 30, 0, 999000)),
    ("2023-05-01T10:00:00.5Z", _dt(2023, 5, 1, 10, 0, 0, 500000), _dt(2023, 5, 1, 10, 0, 0, 599000)),
    ("2023-05-01T10:00:00.123456Z", _dt(2023, 5, 1, 10, 0, 0, 123000), _dt(2023, 5, 1, 10, 0, 0, 123000)),
    ("9999", _dt(9999, 1, 1), _dt(9999, 12, 31, 23, 59, 59, 999000)),
])
def test_date_ranges_cover_the_precision(text: str, lo: datetime, hi: datetime) -> None:
    r = parse_date_range(text)
    assert (r.lo, r.hi) == (lo, hi)


@pytest.mark.parametrize("text", ["", "23", "2023-13", "2023-02-30", "2023-05-01T25:00Z", "2023-05-01T10Z",
                                  "2023-05-01T10:00+15:00", "yesterday", "2023/05/01"])
def test_bad_dates_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_date_range(text)


@pytest.mark.parametrize(("text", "folded"), [
    ("Hélène", "helene"), ("HELENE", "helene"), ("helene", "helene"), ("  Jean   Dupont ", "jean dupont"),
    ("Œuvre", "oeuvre"), ("Straße", "strasse"), ("Ñandú", "nandu"), ("Zoë", "zoe"),
])
def test_fold(text: str, folded: str) -> None:
    assert fold(text) == folded


@pytest.mark.parametrize(("text", "value", "lo", "hi"), [
    ("100", 100.0, 99.5, 100.5), ("100.0", 100.0, 99.95, 100.05), ("0.5", 0.5, 0.45, 0.55),
    ("-3", -3.0, -3.5, -2.5), ("1e2", 100.0, 50.0, 150.0),
])
def test_number_precision(text: str, value: float, lo: float, hi: float) -> None:
    n = parse_number(text)
    assert n.value == value and n.lo == pytest.approx(lo) and n.hi == pytest.approx(hi)


@pytest.mark.parametrize("text", ["", "abc", "NaN", "Infinity", "1,5"])
def test_bad_numbers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_number(text)


@pytest.mark.parametrize(("value", "code", "expected", "unit"), [
    (72, "kg", 72, "kg"), (72000, "g", 72, "kg"), (175, "mm", 17.5, "cm"), (1.8, "m", 180, "cm"),
    (120, "mm[Hg]", 120, "mm[Hg]"), (100, "mg/dL", 1.0, "g/L"), (5.5, "mmol/L", 5.5, "mmol/L"),
    (98.6, "[degF]", 37.0, "Cel"), (60, "{beats}/min", 60, "/min"), (50, "%", 50, "%"),
])
def test_canonical_units(value: float, code: str, expected: float, unit: str) -> None:
    got = canonical_quantity(value, code)
    assert got is not None and got[0] == pytest.approx(expected) and got[1] == unit


def test_unknown_unit() -> None:
    assert canonical_quantity(1, "furlong") is None and canonical_quantity(1, None) is None
