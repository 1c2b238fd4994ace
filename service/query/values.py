"""Typed filter values and their encoding as ClickHouse query parameters.

A request value is parsed into the field's logical type (so ``gt.abc`` on a number is a clear
validation error, not an engine error), then written in the text form ClickHouse reads a query
parameter in. Parameters are sent apart from the SQL and never spliced into it.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import uuid
import zoneinfo
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from service.catalog import FieldSpec, FieldType
from service.errors import AnalyticsError, validation_error

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_TSV_ESCAPES = str.maketrans(
    {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0", "\b": "\\b", "\f": "\\f"}
)
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")


def encode_text_parameter(value: str) -> str:
    """Escape a string the way ClickHouse parses a String query parameter (TSV escaping)."""
    return value.translate(_TSV_ESCAPES)


def parse_time_zone(name: str, source: str = "timeZone") -> str:
    """Validate an IANA time zone name; empty means UTC."""
    if not name:
        return "UTC"
    if len(name) > 64 or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+\-/]*", name):
        raise validation_error(source, f"{source}: {name[:64]!r} is not an IANA time zone name")
    # Only the canonical IANA list: the system's zoneinfo directory also holds names such as
    # right/UTC that Python loads and ClickHouse does not know.
    if name not in _time_zones():
        raise validation_error(
            source, f"{source}: unknown time zone {name[:64]!r}", "INVALID_TIME_ZONE"
        )
    return name


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


def typed_parameter(spec: FieldSpec, text: str, source: str, time_zone: str) -> tuple[str, str]:
    """Parse ``text`` as a value of ``spec``'s type; return (ClickHouse type, parameter text).

    Naive timestamps and dates given for timestamp fields are read in the request's time zone.
    """
    try:
        return _typed_parameter(spec, text, time_zone)
    except AnalyticsError:
        raise
    except (ValueError, InvalidOperation, ArithmeticError) as exc:
        detail = str(exc) or type(exc).__name__
        raise _bad_value(spec, text, source, detail) from None


def _typed_parameter(spec: FieldSpec, text: str, time_zone: str) -> tuple[str, str]:
    kind = spec.type
    if kind in (FieldType.STRING, FieldType.ENUM):
        return "String", encode_text_parameter(text)
    if kind is FieldType.UUID:
        return "UUID", str(uuid.UUID(text))
    if kind is FieldType.INT:
        if not _INTEGER.fullmatch(text):
            raise ValueError("not an integer")
        number = int(text)
        if not INT64_MIN <= number <= INT64_MAX:
            raise ValueError("outside the 64-bit integer range")
        return "Int64", str(number)
    if kind is FieldType.FLOAT:
        number_f = float(text)
        if not math.isfinite(number_f):
            raise ValueError("not a finite number")
        # -0.0 is 0.0 in SQL; bound as 0.0 it also matches in IN's lookup by bits.
        return "Float64", repr(number_f + 0.0)
    if kind is FieldType.DECIMAL:
        return _decimal_parameter(spec, text)
    if kind is FieldType.BOOL:
        if text not in ("true", "false"):
            raise ValueError("expected true or false")
        return "Bool", text
    if kind is FieldType.TIMESTAMP:
        moment = parse_timestamp(text, time_zone)
        return "DateTime64(6, 'UTC')", moment.strftime("%Y-%m-%d %H:%M:%S.%f")
    day = dt.date.fromisoformat(text)
    return "Date32", day.isoformat()


def _decimal_parameter(spec: FieldSpec, text: str) -> tuple[str, str]:
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text):
        raise ValueError("not a decimal number")
    number = _comparable_decimal(Decimal(text), spec)
    # The pattern above admits only finite numbers, so the exponent is an int.
    exponent = int(number.as_tuple().exponent)
    scale = max(spec.scale, -exponent, 0)
    # Compare in a type wide enough for the value itself, so that `gt.10.005` on a
    # Decimal(18, 2) column means exactly that rather than a rounded bound, and for every column
    # value at that scale: ClickHouse rescales the column to the wider scale in the comparison,
    # and a Decimal(38, 10) value of 28 integer digits at scale 11 overflows Decimal128.
    integer_digits = max(number.adjusted() + 1, 1, spec.precision - spec.scale)
    precision = 38 if integer_digits + scale <= 38 else 76
    return f"Decimal({precision}, {scale})", f"{number:f}"


def _comparable_decimal(number: Decimal, spec: FieldSpec) -> Decimal:
    """``number`` cut to at most ``scale + 2`` fractional digits, comparing alike to the column.

    A literal may have more digits than the engine's 76, and every column value must compare to
    the stand-in exactly as it compares to ``number``. A column value is a multiple of 10^-scale
    below 10^(precision - scale) in magnitude. Past that range ``number`` is as good as
    10^(precision - scale); with more than ``scale + 1`` fractional digits, it lies strictly
    between two neighbouring multiples of 10^-(scale + 1) where no column value is, and so does
    the midpoint of the two, which stands in for it.
    """
    if number.is_zero():
        return Decimal(0)
    range_digits = spec.precision - spec.scale
    if number.adjusted() >= range_digits:
        return Decimal(1).scaleb(range_digits).copy_sign(number)
    sign, digits, finite_exponent = number.as_tuple()
    exponent = int(finite_exponent)  # finite: the caller's pattern admits no NaN or infinity
    coefficient = int("".join(map(str, digits)))
    while exponent < 0 and coefficient % 10 == 0:
        coefficient //= 10
        exponent += 1
    signed = -coefficient if sign else coefficient
    kept = spec.scale + 1
    if -exponent <= kept:
        return Decimal(f"{signed}e{exponent}")  # the constructor is exact; scaleb rounds
    floor = signed // 10 ** (-exponent - kept)
    return Decimal(f"{floor * 10 + 5}e{-kept - 1}")


def parse_timestamp(text: str, time_zone: str) -> dt.datetime:
    """Read an ISO 8601 date or date-time; without an offset it is local time in ``time_zone``."""
    if len(text) > 40:
        raise ValueError("too long for a timestamp")
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = local_time(moment, ZoneInfo(time_zone))
    moment = moment.astimezone(dt.UTC)
    if (
        not dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
        <= moment
        < dt.datetime(2300, 1, 1, tzinfo=dt.UTC)
    ):
        raise ValueError("outside the supported range 1900-2299")
    return moment


def local_time(naive: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """A wall-clock time in ``zone``, read as PostgreSQL reads ``timestamp AT TIME ZONE zone``.

    A time that a change of offset skipped (a DST gap) takes the offset before the change, so
    02:30 on a spring-forward night is 03:30 of the new offset; a time that occurs twice (an
    overlap) is the later occurrence, the one after the change.
    """
    first = naive.replace(tzinfo=zone, fold=0)
    second = naive.replace(tzinfo=zone, fold=1)
    # Python's fold=0 takes the offset before a change in both cases; an offset that falls
    # (fold=1's is smaller) marks an overlap, where PostgreSQL takes the later one.
    before, after = first.utcoffset(), second.utcoffset()
    if before is not None and after is not None and after < before:
        return second
    return first


def _bad_value(spec: FieldSpec, text: str, source: str, detail: str) -> AnalyticsError:
    preview = text[:60] + ("..." if len(text) > 60 else "")
    return validation_error(
        source,
        f"{source}: {preview!r} is not a valid {spec.type.value} "
        f"for field {spec.name!r} ({detail})",
        "INVALID_VALUE",
    )
