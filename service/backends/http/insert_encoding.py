"""Insert bodies: an Arrow table conformed to the server's column types, then encoded.

Both encodings start from the same conformed columns (``conformed_columns``): every check that
keeps a value from being stored other than it was given happens once, before anything is sent
(a NULL for a non-Nullable column, a date a ``Date`` cannot hold, sub-second digits a
``DateTime`` would drop, decimal digits beyond the column's scale or precision), and each column
becomes the Arrow type that carries it exactly in the declared type. A server of 23.8 or later
(``Dialect.arrow_inserts``) gets those columns as one ``ArrowStream`` body as they are (its
reader maps each Arrow type to a ClickHouse type and casts that to the column's: exact for these
pairs, tests/integration/test_http_insert_formats.py compares every field type with the text
path); an older one gets them printed as ``TabSeparated`` text. Both are exact for 64-bit
integers, decimals and microsecond timestamps; the Arrow body costs the client no per-value
formatting at all (bench/README.md, "CDC writes on the server path").
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from service.backends.dialect import Dialect
from service.backends.http.column_types import (
    ARROW_INTEGERS,
    DATETIME64_TYPE,
    DATETIME_TYPE,
    DECIMAL_TYPE,
    EPOCH,
    decimal_precision_scale,
    unwrap,
)

_INTEGER_BOUNDS = {
    f"{'U' if unsigned else ''}Int{bits}": (
        (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    for bits in (8, 16, 32, 64, 128, 256)
    for unsigned in (False, True)
}
_DATE32_RANGE = ("1900-01-01", "2299-12-31")
_DATETIME64_RANGE = (dt.datetime(1900, 1, 1, tzinfo=dt.UTC), dt.datetime(2300, 1, 1, tzinfo=dt.UTC))
_DATETIME_RANGE = (EPOCH, dt.datetime(2106, 2, 7, 6, 28, 16, tzinfo=dt.UTC))
_PRECISION_UNITS = {0: "s", 3: "ms", 6: "us", 9: "ns"}
_TICKS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_TSV_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\0", "\\0"))


def encode_arrow_stream(data: pa.Table, column_types: Mapping[str, str], dialect: Dialect) -> bytes:
    """``data`` as one Arrow IPC stream (``FORMAT ArrowStream``) for ``column_types``.

    Raises ValueError as ``conformed_columns`` does.
    """
    table = pa.table(conformed_columns(data, column_types, dialect))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def encode_tsv(data: pa.Table, column_types: Mapping[str, str], dialect: Dialect) -> bytes:
    """``data`` as ``TabSeparated`` rows for ``column_types`` (server type names).

    Raises ValueError as ``conformed_columns`` does.
    """
    texts: list[pa.ChunkedArray] = []
    for name, column in conformed_columns(data, column_types, dialect).items():
        text = _column_text(column, unwrap(column_types[name])[0], dialect)
        texts.append(pc.fill_null(text.cast(pa.binary()), b"\\N"))
    rows = pc.binary_join_element_wise(*texts, b"\t")
    lines = pc.binary_join_element_wise(rows, b"", b"\n")
    return _concatenate(lines)


def conformed_columns(
    data: pa.Table, column_types: Mapping[str, str], dialect: Dialect
) -> dict[str, pa.ChunkedArray]:
    """Each column of ``data`` in the Arrow type that carries it exactly as its server type.

    ``column_types`` are the server's type names. Raises ValueError naming the column when a
    value cannot be written exactly: a column the table lacks, NULLs for a non-Nullable column
    (servers would store the type's default), an integer out of the column's range, a decimal
    with more fractional digits than the column's scale or more digits than its precision, a
    date or time outside what the column holds, sub-second digits a ``DateTime`` cannot keep, or
    an unsupported pairing of Arrow and ClickHouse types.
    """
    conformed: dict[str, pa.ChunkedArray] = {}
    for name in data.column_names:
        if name not in column_types:
            raise ValueError(f"insert_arrow: the table has no column {name!r}")
        declared = column_types[name]
        base, nullable = unwrap(declared)
        column = _decoded(data.column(name))
        if column.null_count and not nullable:
            raise ValueError(
                f"insert_arrow: column {name!r} has {column.null_count} NULLs "
                f"but its type {declared} is not Nullable"
            )
        try:
            conformed[name] = _conformed(column, base, dialect)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise ValueError(f"insert_arrow: column {name!r} ({declared}): {exc}") from None
    return conformed


def _decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        return pa.chunked_array(
            [chunk.dictionary_decode() for chunk in column.chunks], column.type.value_type
        )
    if isinstance(column.type, pa.BaseExtensionType):
        storage = [chunk.storage for chunk in column.chunks]
        return pa.chunked_array(storage, column.type.storage_type)
    return column


def _conformed(column: pa.ChunkedArray, base: str, dialect: Dialect) -> pa.ChunkedArray:
    """One column checked against ``base`` (the declared type without Nullable) and typed."""
    arrow = column.type
    if base in ("String", "UUID") or base.startswith(("FixedString(", "Enum8(", "Enum16(")):
        if base == "UUID" and pa.types.is_fixed_size_binary(arrow) and arrow.byte_width == 16:
            return _uuid_text(column)
        if not (pa.types.is_string(arrow) or pa.types.is_large_string(arrow)) and not (
            pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow)
        ):
            raise ValueError(f"cannot write Arrow {arrow} as text")
        # UUIDs and enums travel as their text, which the server parses into the column's type.
        return column
    if base in _INTEGER_BOUNDS:
        return _conformed_integer(column, base)
    if base in ("Float32", "Float64"):
        if not (pa.types.is_floating(arrow) or pa.types.is_integer(arrow)):
            raise ValueError(f"cannot write Arrow {arrow} as a float")
        if pa.types.is_integer(arrow):
            # Floats print integers as integers: the text path never rounded them; nor do we.
            return pc.cast(column, pa.string())
        return pc.cast(column, pa.float32() if base == "Float32" else pa.float64())
    if DECIMAL_TYPE.match(base):
        return _conformed_decimal(column, base)
    if base == "Bool":
        if not pa.types.is_boolean(arrow):
            raise ValueError(f"cannot write Arrow {arrow} as Bool")
        return column
    if base in ("Date", "Date32"):
        if not (pa.types.is_date32(arrow) or pa.types.is_date64(arrow)):
            raise ValueError(f"cannot write Arrow {arrow} as a date")
        low, high = dialect.date_range if base == "Date" else _DATE32_RANGE
        days = pc.cast(column, pa.date32())
        _check_range(days, dt.date.fromisoformat(low), dt.date.fromisoformat(high))
        return days
    if match := DATETIME64_TYPE.match(base):
        precision = int(match["p"])
        if precision not in _PRECISION_UNITS:
            raise ValueError(f"DateTime64 precision {precision} is not supported")
        return _conformed_timestamp(column, _PRECISION_UNITS[precision], _DATETIME64_RANGE)
    if DATETIME_TYPE.match(base):
        return _conformed_timestamp(column, "s", _DATETIME_RANGE)
    raise ValueError(f"cannot write Arrow {arrow} into {base}")


def _uuid_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    values = [None if raw is None else str(uuid.UUID(bytes=raw)) for raw in column.to_pylist()]
    return pa.chunked_array([pa.array(values, pa.string())])


def _conformed_integer(column: pa.ChunkedArray, base: str) -> pa.ChunkedArray:
    arrow = column.type
    if pa.types.is_boolean(arrow):
        column = pc.cast(column, pa.uint8())
    elif pa.types.is_timestamp(arrow):
        # Integer columns hold timestamps as microseconds since the epoch (legacy layout).
        column = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    elif not pa.types.is_integer(arrow):
        raise ValueError(f"cannot write Arrow {arrow} as {base}")
    # Old servers wrap an out-of-range integer silently, new ones when casting it.
    low, high = _INTEGER_BOUNDS[base]
    _check_range(column, low, high)
    # Arrow has no 128- and 256-bit integers: those columns get the number's text, which the
    # server parses (a cast from String) exactly.
    target = ARROW_INTEGERS.get(base)
    return pc.cast(column, target if target is not None else pa.string())


def _conformed_decimal(column: pa.ChunkedArray, base: str) -> pa.ChunkedArray:
    arrow = column.type
    if pa.types.is_integer(arrow):
        # The number's text: exact for any integer the column's range holds.
        return pc.cast(column, pa.string())
    if not pa.types.is_decimal(arrow):
        raise ValueError(f"cannot write Arrow {arrow} as {base} exactly")
    precision, scale = decimal_precision_scale(base)
    # The column's own precision and scale: a safe cast refuses to drop fractional digits, where
    # the server would silently truncate them, and a value too large for the column.
    target = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    return pc.cast(column, target)


def _conformed_timestamp(
    column: pa.ChunkedArray, unit: str, bounds: tuple[dt.datetime, dt.datetime]
) -> pa.ChunkedArray:
    arrow = column.type
    if not pa.types.is_timestamp(arrow):
        raise ValueError(f"cannot write Arrow {arrow} as a timestamp")
    # A naive Arrow timestamp is taken as UTC. The safe cast to the column's unit refuses to
    # drop digits (a DateTime column cannot hold microseconds).
    utc = pc.cast(column, pa.timestamp(arrow.unit, tz="UTC"))
    # Compared as integer ticks: as_py() cannot represent nanoseconds.
    per_second = _TICKS_PER_SECOND[arrow.unit]
    low, high = ((bound - EPOCH) // dt.timedelta(seconds=1) * per_second for bound in bounds)
    _check_range(pc.cast(utc, pa.int64()), low, high - 1)
    return pc.cast(utc, pa.timestamp(unit, tz="UTC"))


def _column_text(column: pa.ChunkedArray, base: str, dialect: Dialect) -> pa.ChunkedArray:
    """A conformed column as text (nulls stay null) in the form the server parses ``base`` from."""
    arrow = column.type
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return _tsv_escaped(column)
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow):
        return _tsv_escaped(column)
    if pa.types.is_timestamp(arrow):
        match = DATETIME64_TYPE.match(base) or DATETIME_TYPE.match(base)
        zone = (match["tz"] if match else None) or dialect.server_timezone
        local = pc.cast(column, pa.timestamp(arrow.unit, tz=zone))
        return pc.strftime(local, format="%Y-%m-%d %H:%M:%S")
    # Integers, decimals at the column's scale, floats (the shortest text that reads back as the
    # same double, inf and nan too), dates (ISO) and booleans (true/false): Arrow prints each as
    # the server reads it.
    return pc.cast(column, pa.string())


def _tsv_escaped(column: pa.ChunkedArray) -> pa.ChunkedArray:
    # The backslash first, so that the escapes added after it are not escaped again.
    for plain, escaped in _TSV_ESCAPES:
        column = pc.replace_substring(column, plain, escaped)
    return column


def _check_range(column: pa.ChunkedArray, low: Any, high: Any) -> None:
    if column.null_count == len(column):
        return
    extremes = pc.min_max(column)
    smallest, largest = extremes["min"].as_py(), extremes["max"].as_py()
    if smallest < low or largest > high:
        raise ValueError(f"values from {smallest} to {largest} do not fit in {low}..{high}")


def _concatenate(lines: pa.ChunkedArray | pa.Array) -> bytes:
    """The bytes of a binary column's values back to back, without a Python step per row."""
    chunks = lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]
    parts: list[bytes] = []
    for chunk in chunks:
        if not len(chunk):
            continue
        wide = chunk.cast(pa.large_binary())
        _, offsets_buffer, data_buffer = wide.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64)
        start, end = int(offsets[wide.offset]), int(offsets[wide.offset + len(wide)])
        parts.append(memoryview(data_buffer)[start:end].tobytes())
    return b"".join(parts)
