"""ClickHouse type names as a server declares them: their parts, and the Arrow types of integers.

Result decoding (``JSONCompact``, ``TSVWithNamesAndTypes``) and insert encoding read the same
type names, so what a name means is decided here once.
"""

from __future__ import annotations

import datetime as dt
import re

import pyarrow as pa

#: The Arrow type of each ClickHouse integer type Arrow has (not the 128- and 256-bit ones).
ARROW_INTEGERS = {
    "Int8": pa.int8(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
}
#: ``Decimal32(S)`` (and its 64/128/256 kinds) or ``Decimal(P, S)``.
DECIMAL_SPEC = re.compile(r"^Decimal(?:(32|64|128|256)\((\d+)\)|\((\d+),\s*(\d+)\))$")
#: The largest precision of each ``DecimalN(S)`` kind.
DECIMAL_BITS_PRECISION = {"32": 9, "64": 18, "128": 38, "256": 76}
#: Any decimal type (the start of its name).
DECIMAL_TYPE = re.compile(r"^Decimal(32|64|128|256)?\(")
#: ``DateTime`` with or without its time zone.
DATETIME_TYPE = re.compile(r"^DateTime(?:\('(?P<tz>[^']*)'\))?$")
#: ``DateTime64(P)`` with or without its time zone.
DATETIME64_TYPE = re.compile(r"^DateTime64\((?P<p>\d+)(?:,\s*'(?P<tz>[^']*)')?\)$")
#: Day 0 of ``Date`` and second 0 of ``DateTime``.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def unwrap(declared: str) -> tuple[str, bool]:
    """A declared type without ``LowCardinality``/``Nullable``, and whether it was Nullable."""
    kind = declared
    if kind.startswith("LowCardinality(") and kind.endswith(")"):
        kind = kind[15:-1]
    if kind.startswith("Nullable(") and kind.endswith(")"):
        return kind[9:-1], True
    return kind, False


def decimal_precision_scale(base: str) -> tuple[int, int]:
    """``Decimal(P, S)`` -> (P, S); ``Decimal64(S)`` and its kind -> (their largest P, S)."""
    match = DECIMAL_SPEC.match(base)
    if match is None:
        raise ValueError(f"unknown decimal type {base}")
    bits, short_scale, precision, long_scale = match.groups()
    if bits:
        return DECIMAL_BITS_PRECISION[bits], int(short_scale)
    return int(precision), int(long_scale)


def from_epoch_microseconds(value: int) -> dt.datetime:
    """An aware UTC datetime from microseconds since the epoch (exact, no float step)."""
    return EPOCH + dt.timedelta(microseconds=value)
