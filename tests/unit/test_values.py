"""Typed filter values and parameter encoding (service/query/values.py)."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.catalog import FieldSpec, FieldType
from service.errors import AnalyticsError, ErrorKind
from service.query.values import (
    encode_text_parameter,
    parse_time_zone,
    parse_timestamp,
    typed_parameter,
)
from tests.strategies import tsv_unescape

STRING = FieldSpec("title", FieldType.STRING)
ENUM = FieldSpec("stage", FieldType.ENUM, nullable=True)
UUID = FieldSpec("external_ref", FieldType.UUID)
INT = FieldSpec("id", FieldType.INT)
FLOAT = FieldSpec("probability", FieldType.FLOAT)
DECIMAL = FieldSpec("amount", FieldType.DECIMAL, precision=18, scale=2)
BOOL = FieldSpec("is_subscribed", FieldType.BOOL)
TIMESTAMP = FieldSpec("created_at", FieldType.TIMESTAMP)
DATE = FieldSpec("due_date", FieldType.DATE, nullable=True)
TS_TYPE = "DateTime64(6, 'UTC')"


def typed(spec: FieldSpec, text: str, time_zone: str = "UTC") -> tuple[str, str]:
    return typed_parameter(spec, text, "filters.x", time_zone)


def rejected(spec: FieldSpec, text: str, time_zone: str = "UTC") -> AnalyticsError:
    with pytest.raises(AnalyticsError) as info:
        typed_parameter(spec, text, "filters.x", time_zone)
    error = info.value
    assert error.kind is ErrorKind.VALIDATION
    assert error.reason == "INVALID_VALUE"
    assert [v.field for v in error.violations] == ["filters.x"]
    assert spec.type.value in error.message
    return error


# --- strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [STRING, ENUM])
def test_strings_are_escaped_text(spec: FieldSpec) -> None:
    assert typed(spec, "closed_won") == ("String", "closed_won")
    assert typed(spec, "a\tb\\c\nd") == ("String", "a\\tb\\\\c\\nd")
    assert typed(spec, "") == ("String", "")


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("plain", "plain"),
        ("it's", "it's"),
        ('"q"', '"q"'),
        ("back\\slash", "back\\\\slash"),
        ("tab\there", "tab\\there"),
        ("new\nline", "new\\nline"),
        ("cr\rlf", "cr\\rlf"),
        ("nul\0", "nul\\0"),
        ("\b\f", "\\b\\f"),
        ("\\N", "\\\\N"),
        ("{p0:String}", "{p0:String}"),
        ("日本", "日本"),
    ],
)
def test_encode_text_parameter(raw: str, encoded: str) -> None:
    assert encode_text_parameter(raw) == encoded


@settings(max_examples=300)
@given(st.text())
def test_encoded_text_decodes_back_and_has_no_raw_separators(text: str) -> None:
    encoded = encode_text_parameter(text)
    assert tsv_unescape(encoded) == text
    for char in "\t\n\r\0":
        assert char not in encoded


# --- integers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", "0"),
        ("42", "42"),
        ("-7", "-7"),
        ("+7", "7"),
        ("007", "7"),
        ("9223372036854775807", "9223372036854775807"),
        ("-9223372036854775808", "-9223372036854775808"),
        ("00000000000000000001", "1"),
    ],
)
def test_int_values(text: str, value: str) -> None:
    assert typed(INT, text) == ("Int64", value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "1.0",
        "1e3",
        "0x10",
        "1_000",
        " 1",
        "--1",
        "9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901",
        "99999999999999999999",
        "1 OR 1=1",
    ],
)
def test_int_rejects(text: str) -> None:
    rejected(INT, text)


@given(st.integers(-(2**63), 2**63 - 1))
def test_any_int64_round_trips(number: int) -> None:
    assert typed(INT, str(number)) == ("Int64", str(number))


# --- floats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.5", "0.5"),
        ("1", "1.0"),
        ("-2.5e3", "-2500.0"),
        ("1e308", "1e+308"),
        ("5e-324", "5e-324"),
    ],
)
def test_float_values(text: str, value: str) -> None:
    assert typed(FLOAT, text) == ("Float64", value)


@pytest.mark.parametrize(
    "text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e309", "abc", "", "0.5.1"]
)
def test_float_rejects_non_finite_and_junk(text: str) -> None:
    rejected(FLOAT, text)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_round_trips_exactly(number: float) -> None:
    kind, text = typed(FLOAT, repr(number))
    assert kind == "Float64"
    assert float(text) == number
    # -0.0 is bound as 0.0 (one value in SQL; IN tells them apart by their bits)
    assert math.copysign(1, float(text)) == (math.copysign(1, number) if number else 1)


# --- decimals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("10", "Decimal(38, 2)", "10"),
        ("10.5", "Decimal(38, 2)", "10.5"),
        ("10.25", "Decimal(38, 2)", "10.25"),
        # one fractional digit more than the column: compared exactly, not rounded to the column
        ("10.005", "Decimal(38, 3)", "10.005"),
        (".5", "Decimal(38, 2)", "0.5"),
        ("5.", "Decimal(38, 2)", "5"),
        ("+1.5", "Decimal(38, 2)", "1.5"),
        ("1e3", "Decimal(38, 2)", "1000"),
        ("15e-1", "Decimal(38, 2)", "1.5"),
        ("-0.000", "Decimal(38, 2)", "0"),
        ("1." + "0" * 100, "Decimal(38, 2)", "1"),
        # the largest value of Decimal(18, 2) stays itself
        ("9" * 16 + ".99", "Decimal(38, 2)", "9" * 16 + ".99"),
        # more digits: the midpoint of the two multiples of 0.001 around the value
        ("1E-4", "Decimal(38, 4)", "0.0005"),
        ("-0.000001", "Decimal(38, 4)", "-0.0005"),
        ("10.0" + "0" * 80 + "1", "Decimal(38, 4)", "10.0005"),
        ("-1.23456789", "Decimal(38, 4)", "-1.2345"),
        ("1e-80", "Decimal(38, 4)", "0.0005"),
        # past the column's range: the first value past it, of the same sign
        ("9" * 17, "Decimal(38, 2)", "1" + "0" * 16),
        ("-" + "9" * 80, "Decimal(38, 2)", "-1" + "0" * 16),
        ("1e80", "Decimal(38, 2)", "1" + "0" * 16),
    ],
)
def test_decimal_values_choose_an_exact_type(text: str, kind: str, value: str) -> None:
    assert typed(DECIMAL, text) == (kind, value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "1,5",
        "1.2.3",
        "NaN",
        "Infinity",
        "-inf",
        "sNaN",
        "0x10",
        "1_000",
        " 1",
        "1e",
        "e5",
        ".",
    ],
)
def test_decimal_rejects(text: str) -> None:
    rejected(DECIMAL, text)


def _compare(left: Decimal, right: Decimal) -> int:
    return (left > right) - (left < right)


@settings(max_examples=300)
@given(
    precision=st.integers(1, 38),
    data=st.data(),
    literal=st.builds(
        lambda digits, exponent, negative: Decimal(f"{'-' if negative else ''}{digits}e{exponent}"),
        st.integers(0, 10**120),
        st.integers(-130, 60),
        st.booleans(),
    ),
)
def test_a_decimal_literal_of_any_length_compares_exactly(
    precision: int, data: st.DataObject, literal: Decimal
) -> None:
    """Every value a Decimal(P, S) column can hold compares to the bound parameter as to the
    literal itself, however many digits the literal has (PostgreSQL compares them exactly)."""
    scale = data.draw(st.integers(0, precision), label="scale")
    spec = FieldSpec("amount", FieldType.DECIMAL, precision=precision, scale=scale)
    kind, text = typed(spec, format(literal, "f"))
    bound = Decimal(text)
    target_precision, target_scale = (int(p) for p in kind[len("Decimal(") : -1].split(","))
    assert len(bound.as_tuple().digits) <= target_precision
    assert max(-int(bound.as_tuple().exponent), 0) <= target_scale <= scale + 2
    top = 10**precision - 1
    near = int(literal.scaleb(scale).to_integral_value()) if abs(literal) < 10**40 else top
    units = {-top, top, 0, *(max(-top, min(top, near + d)) for d in range(-2, 3))}
    units.add(data.draw(st.integers(-top, top), label="value"))
    for unit in units:
        value = Decimal(f"{unit}e{-scale}")
        assert _compare(value, bound) == _compare(value, literal), (value, literal, bound)


# --- bools, uuids, dates ---------------------------------------------------------------------


def test_bool_values() -> None:
    assert typed(BOOL, "true") == ("Bool", "true")
    assert typed(BOOL, "false") == ("Bool", "false")
    for text in ["True", "1", "0", "yes", "", "t"]:
        rejected(BOOL, text)


def test_uuid_values_are_canonical() -> None:
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    canonical = str(value)
    for text in [canonical, canonical.upper(), value.hex, "{" + canonical + "}", value.urn]:
        assert typed(UUID, text) == ("UUID", canonical)
    for text in ["", "1234", "g" * 32, canonical + "0", "' OR 1=1 --"]:
        rejected(UUID, text)


def test_date_values() -> None:
    assert typed(DATE, "2026-03-01") == ("Date32", "2026-03-01")
    assert typed(DATE, "20260301") == ("Date32", "2026-03-01")
    for text in ["2026-02-30", "2026-13-01", "01/03/2026", "", "2026-03-01T00:00:00", "today"]:
        rejected(DATE, text)


# --- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "time_zone", "value"),
    [
        ("2026-01-01T00:00:00Z", "UTC", "2026-01-01 00:00:00.000000"),
        ("2026-01-01T00:00:00Z", "Asia/Tokyo", "2026-01-01 00:00:00.000000"),
        ("2026-01-01T12:30:00.123456+02:00", "UTC", "2026-01-01 10:30:00.123456"),
        ("2026-01-01T12:30:00-05:30", "Europe/Paris", "2026-01-01 18:00:00.000000"),
        ("2026-01-01 12:30:00", "UTC", "2026-01-01 12:30:00.000000"),
        # naive date-times and bare dates are local time in the request's time zone
        ("2026-01-01T00:00:00", "Europe/Paris", "2025-12-31 23:00:00.000000"),
        ("2026-07-01T00:00:00", "Europe/Paris", "2026-06-30 22:00:00.000000"),
        ("2026-01-01", "UTC", "2026-01-01 00:00:00.000000"),
        ("2026-01-01", "America/New_York", "2026-01-01 05:00:00.000000"),
        ("2026-01-01", "Asia/Kolkata", "2025-12-31 18:30:00.000000"),
        ("1900-01-01T00:00:00Z", "UTC", "1900-01-01 00:00:00.000000"),
        ("2299-12-31T23:59:59.999999Z", "UTC", "2299-12-31 23:59:59.999999"),
    ],
)
def test_timestamp_values(text: str, time_zone: str, value: str) -> None:
    assert typed(TIMESTAMP, text, time_zone) == (TS_TYPE, value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-13-01",
        "2026-01-01T25:00:00",
        "1899-12-31T23:59:59Z",
        "2300-01-01T00:00:00Z",
        "1900-01-01T00:00:00+01:00",
        "0001-01-01",
        "9999-12-31",
        "2026-01-01T00:00:00Z" + " " * 30,
        "2026-01-01T00:00:00' OR '1'='1",
    ],
)
def test_timestamp_rejects(text: str) -> None:
    rejected(TIMESTAMP, text)


def test_timestamp_range_depends_on_the_time_zone() -> None:
    # 1900-01-01 00:00 in Paris is still 1899 in UTC: out of range.
    rejected(TIMESTAMP, "1900-01-01T00:00:00", "Europe/Paris")
    assert typed(TIMESTAMP, "1900-01-01T00:00:00", "America/New_York")[1].startswith("1900-01-01 ")


@given(
    st.datetimes(
        min_value=dt.datetime(1901, 1, 1),
        max_value=dt.datetime(2298, 12, 31),
        timezones=st.just(dt.UTC),
    )
)
def test_aware_timestamps_round_trip(moment: dt.datetime) -> None:
    kind, text = typed(TIMESTAMP, moment.isoformat(), "Pacific/Chatham")
    assert kind == TS_TYPE
    assert dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC) == moment


def test_parse_timestamp_returns_utc() -> None:
    moment = parse_timestamp("2026-03-29T02:30:00", "Europe/Paris")  # in the spring-forward gap
    assert moment.tzinfo is dt.UTC
    assert moment == dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC)


@settings(max_examples=300)
@given(
    spec=st.sampled_from([STRING, ENUM, UUID, INT, FLOAT, DECIMAL, BOOL, TIMESTAMP, DATE]),
    text=st.one_of(st.text(), st.text(alphabet="0123456789.eE+-:TZ ", max_size=30)),
)
def test_any_text_is_typed_or_rejected_as_a_validation_error(spec: FieldSpec, text: str) -> None:
    outcome: tuple[str, str] | AnalyticsError
    try:
        outcome = typed(spec, text, "Europe/Paris")
    except AnalyticsError as error:
        outcome = error
    if isinstance(outcome, AnalyticsError):
        assert outcome.kind is ErrorKind.VALIDATION
        assert outcome.reason == "INVALID_VALUE"
    else:
        kind, value = outcome
        assert kind
        assert isinstance(value, str)


# --- time zones ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "UTC",
        "Europe/Paris",
        "America/Argentina/Buenos_Aires",
        "Etc/GMT+5",
        "Etc/GMT-14",
        "Asia/Kolkata",
    ],
)
def test_time_zone_accepts_iana_names(name: str) -> None:
    assert parse_time_zone(name) == name


def test_time_zone_defaults_to_utc() -> None:
    assert parse_time_zone("") == "UTC"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../../etc/passwd", "INVALID_ARGUMENT"),
        ("/etc/localtime", "INVALID_ARGUMENT"),
        ("Europe/../../../etc/passwd", "INVALID_ARGUMENT"),
        ("Europe/Paris\n", "INVALID_ARGUMENT"),
        ("UTC\0", "INVALID_ARGUMENT"),
        ("Europe/Paris; DROP TABLE x", "INVALID_ARGUMENT"),
        ("'UTC'", "INVALID_ARGUMENT"),
        (" UTC", "INVALID_ARGUMENT"),
        ("Europe\\Paris", "INVALID_ARGUMENT"),
        ("A" * 65, "INVALID_ARGUMENT"),
        ("Mars/Olympus_Mons", "INVALID_TIME_ZONE"),
        ("Europe", "INVALID_TIME_ZONE"),
        ("Europe/", "INVALID_TIME_ZONE"),
        ("leapseconds", "INVALID_TIME_ZONE"),
    ],
)
def test_time_zone_rejects_junk(name: str, reason: str) -> None:
    with pytest.raises(AnalyticsError) as info:
        parse_time_zone(name)
    error = info.value
    assert error.kind is ErrorKind.VALIDATION
    assert error.reason == reason
    assert [v.field for v in error.violations] == ["timeZone"]


def test_time_zone_error_names_the_given_source() -> None:
    with pytest.raises(AnalyticsError) as info:
        parse_time_zone("nope/nope", source="stream.timeZone")
    assert info.value.violations[0].field == "stream.timeZone"


@settings(max_examples=200)
@given(st.text(max_size=80))
def test_time_zone_parser_never_raises_anything_else(name: str) -> None:
    outcome: str | AnalyticsError
    try:
        outcome = parse_time_zone(name)
    except AnalyticsError as error:
        outcome = error
    if isinstance(outcome, AnalyticsError):
        assert outcome.kind is ErrorKind.VALIDATION
    else:
        assert outcome == (name or "UTC")
