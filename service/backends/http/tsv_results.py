"""Small reads' answers: ``TSVWithNamesAndTypes`` text as rows of Python values.

Used for state tables, lookups and probes (``HttpBackend.query_rows``), on every server version
alike. Each column is converted by its declared type to the Python values the embedded backend
returns (int, Decimal at its column's scale, str, bool, date, aware UTC datetime, UUID, None).
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from service.backends.dialect import unescape_bytes
from service.backends.http.column_types import (
    DATETIME64_TYPE,
    DATETIME_TYPE,
    DECIMAL_TYPE,
    EPOCH,
    decimal_precision_scale,
)
from service.backends.http.engine_errors import EXCEPTION_LINE, code_of, engine_error

#: Turns one field's bytes into its Python value.
Converter = Callable[[bytes], Any]
_NULL = b"\\N"
_INTEGER_TYPE = re.compile(r"^U?Int(8|16|32|64|128|256)$")
# Room for every digit of a Decimal256 (76): the default context holds 28.
_WIDE = decimal.Context(prec=80)


def decode_tsv_with_names_and_types(payload: bytes, server_timezone: str) -> list[dict[str, Any]]:
    """Rows of a ``TSVWithNamesAndTypes`` response, each value converted by its column type.

    Plain ``DateTime`` columns are read in ``server_timezone``; every datetime comes back aware,
    in UTC. Types without a converter (arrays, maps, ...) come back as their unescaped text.
    """
    if not payload:
        return []
    lines = payload.split(b"\n")
    if lines[-1]:
        # A response cut short by an error ends without a newline, in the exception's text.
        raise engine_error(lines[-1].decode("utf-8", "replace"), code_of(lines[-1]), "")
    lines.pop()
    names = [unescape_bytes(field).decode() for field in lines[0].split(b"\t")]
    types = [unescape_bytes(field).decode() for field in lines[1].split(b"\t")]
    converters = [_converter(kind, server_timezone) for kind in types]
    rows = []
    for line in lines[2:]:
        fields = line.split(b"\t")
        if len(fields) != len(names):
            if EXCEPTION_LINE.match(line):
                raise engine_error(line.decode("utf-8", "replace"), code_of(line), "")
            raise engine_error(f"malformed result row: {line[:200]!r}", "", "")
        rows.append(
            {
                name: convert(field)
                for name, convert, field in zip(names, converters, fields, strict=True)
            }
        )
    return rows


def _converter(kind: str, server_timezone: str) -> Converter:
    if kind.startswith("LowCardinality(") and kind.endswith(")"):
        return _converter(kind[15:-1], server_timezone)
    if kind.startswith("Nullable(") and kind.endswith(")"):
        inner = _converter(kind[9:-1], server_timezone)
        return lambda raw: None if raw == _NULL else inner(raw)
    if _INTEGER_TYPE.match(kind):
        return int
    if kind in ("Float32", "Float64"):
        return float
    if DECIMAL_TYPE.match(kind):
        # Servers since 21.9 print no trailing zeros (output_format_decimal_trailing_zeros):
        # the column's scale is put back, as the embedded backend returns it (exact: the text
        # has at most that many fractional digits).
        quantum = Decimal(1).scaleb(-decimal_precision_scale(kind)[1])
        return lambda raw: Decimal(raw.decode()).quantize(quantum, context=_WIDE)
    if kind == "Bool":
        return lambda raw: raw == b"true"
    if kind == "UUID":
        return lambda raw: uuid.UUID(raw.decode())
    if kind == "Date":
        # Servers before 19.x print day 0 (1970-01-01) as 0000-00-00.
        return lambda raw: (
            dt.date(1970, 1, 1) if raw == b"0000-00-00" else dt.date.fromisoformat(raw.decode())
        )
    if kind == "Date32":
        return lambda raw: dt.date.fromisoformat(raw.decode())
    if match := DATETIME_TYPE.match(kind):
        return _datetime_converter(ZoneInfo(match["tz"] or server_timezone))
    if match := DATETIME64_TYPE.match(kind):
        return _datetime_converter(ZoneInfo(match["tz"] or server_timezone))
    return _text


def _text(raw: bytes) -> str:
    # surrogateescape: a String holding bytes that are not UTF-8 still round-trips exactly.
    return unescape_bytes(raw).decode("utf-8", "surrogateescape")


def _datetime_converter(zone: ZoneInfo) -> Converter:
    def convert(raw: bytes) -> dt.datetime:
        text = raw.decode()
        if text.startswith("0000-00-00"):
            return EPOCH  # how old servers print the epoch
        head, _, fraction = text.partition(".")
        # Python keeps microseconds; DateTime64(7..9) digits beyond them are cut, not rounded.
        micro = int((fraction[:6]).ljust(6, "0")) if fraction else 0
        local = dt.datetime.fromisoformat(head).replace(microsecond=micro, tzinfo=zone)
        return local.astimezone(dt.UTC)

    return convert
