"""The read path's answer from servers before 20.5: ``JSONCompact`` text, decoded into Arrow.

Such servers have no ``ArrowStream`` output. ``JSONCompact`` rather than a TSV format because it
ends with the server's own ``statistics`` (``rows_read``, ``elapsed``): 18.16 sends neither
``X-ClickHouse-Summary`` nor progress headers (checked on the server). The read path asks for
64-bit integers quoted and NaN and infinities quoted; decimals and floats are kept as the
server's text and converted by pyarrow with the column's declared type, so every column comes
out exactly, in the Arrow types an ``ArrowStream`` answer would have. Its one loss: 18.16 writes
bytes that are not UTF-8 as U+FFFD in JSON; replicated PostgreSQL text is UTF-8.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.compute as pc

from service.backends.http.column_types import (
    ARROW_INTEGERS,
    DATETIME64_TYPE,
    DATETIME_TYPE,
    DECIMAL_BITS_PRECISION,
    DECIMAL_SPEC,
    unwrap,
)
from service.backends.http.engine_errors import (
    EXCEPTION_LINE,
    TIMEOUT_CODES,
    code_of,
    engine_error,
)
from service.errors import ROWS_LIMIT_CODE, query_timeout, rows_limit_exceeded

# Rows and bytes of JSON text decoded into one record batch: small enough that the Python objects
# of one decoded batch (about 100 bytes a value) stay around a megabyte.
_JSON_BATCH_ROWS = 8_192
_JSON_BATCH_BYTES = 1 << 20
# Network reads of a text response (each becomes a list of line objects).
_CHUNK_BYTES = 64 << 10
_TIME_UNITS = ("s", "ms", "us", "ns")
_ZERO_DATE = "0000-00-00"


async def response_lines(content: aiohttp.StreamReader) -> AsyncIterator[list[bytes]]:
    """The body's complete lines (without their newline), in groups as the bytes arrive."""
    buffer = bytearray()
    async for chunk in content.iter_chunked(_CHUNK_BYTES):
        cut = chunk.rfind(b"\n")
        if cut < 0:
            buffer += chunk
            continue
        buffer += chunk[:cut]
        lines = bytes(buffer).split(b"\n")
        buffer = bytearray(chunk[cut + 1 :])
        yield lines
    if buffer:
        yield [bytes(buffer)]


class JsonCompactDecoder:
    """An incremental reader of ``JSONCompact`` text: meta, data rows, then the statistics.

    ClickHouse writes that format one data row per line (strings are JSON-escaped, so a value
    never spans lines), which lets rows be decoded a batch at a time. Numbers are kept as the
    server's text and converted by pyarrow with the column's declared type, so 64-bit integers
    (quoted), decimals and floats come out exactly.
    """

    def __init__(self, server_timezone: str, timeout_seconds: float = 0.0) -> None:
        """Decode ``DateTime`` columns without a time zone in ``server_timezone``.

        ``timeout_seconds`` is the query's budget, for the error of a query that ran out of it.
        """
        self.schema: pa.Schema | None = None
        self._timeout = timeout_seconds
        self.statistics: dict[str, Any] = {}
        self._server_timezone = server_timezone
        self._phase = "meta"
        self._meta: list[bytes] = []
        self._tail: list[bytes] = []
        self._rows = bytearray(b"[")
        self._row_count = 0
        self._rows_seen = 0
        self._names: list[str] = []
        self._types: list[str] = []
        self._last = b""

    def feed(self, lines: Sequence[bytes]) -> list[pa.RecordBatch]:
        """Take more lines; return the batches they complete."""
        batches = []
        for line in lines:
            text = line.strip()
            if text and self._phase != "failed":
                self._last = line
            if self._phase == "meta":
                if text == b'"data":':
                    self._read_meta()
                    self._phase = "open"
                else:
                    self._meta.append(line)
            elif self._phase == "open":
                if text != b"[":
                    raise ValueError(f"expected the data array, got {line[:200]!r}")
                self._phase = "data"
            elif self._phase == "data":
                if text in (b"]", b"],"):
                    self._phase = "tail"
                elif EXCEPTION_LINE.match(text):
                    # The server's error in place of the rest (see finish).
                    self._phase = "failed"
                elif text:
                    # One bytearray per batch, not an object per row: "[[row],[row],..."
                    self._rows += text if text.endswith(b",") else text + b","
                    self._row_count += 1
                    if self._row_count >= _JSON_BATCH_ROWS or len(self._rows) >= _JSON_BATCH_BYTES:
                        batches.append(self._flush())
            elif self._phase == "tail":
                self._tail.append(line)
        return batches

    def finish(self) -> list[pa.RecordBatch]:
        """The last batch, once the body has ended; reads the statistics."""
        if self._phase != "tail":
            # Without wait_end_of_query a failure would end the body in the server's message.
            if EXCEPTION_LINE.match(self._last.strip()):
                message = self._last.strip().decode("utf-8", "replace")
                code = code_of(self._last)
                if code in TIMEOUT_CODES:
                    raise query_timeout(self._timeout, message)
                if code == ROWS_LIMIT_CODE:
                    raise rows_limit_exceeded(message)
                raise engine_error(message, code, "")
            raise ValueError(
                f"the response ends early, in {self._phase} (last line {self._last[:200]!r})"
            )
        batches = [self._flush()] if self._row_count else []
        tail = json.loads(b"{" + b"\n".join(self._tail))
        rows = tail.get("rows")
        if rows is not None and int(rows) != self._rows_seen:
            raise ValueError(f"the server announced {rows} rows and sent {self._rows_seen}")
        statistics = tail.get("statistics")
        self.statistics = statistics if isinstance(statistics, dict) else {}
        return batches

    def _read_meta(self) -> None:
        head = b"\n".join(self._meta).strip().removesuffix(b",")
        meta = json.loads(head + b"}")["meta"]
        self._names = [str(column["name"]) for column in meta]
        self._types = [str(column["type"]) for column in meta]
        arrays = [json_column([], kind, self._server_timezone) for kind in self._types]
        self.schema = pa.RecordBatch.from_arrays(arrays, names=self._names).schema

    def _flush(self) -> pa.RecordBatch:
        self._rows[-1:] = b"]"  # the last row's comma closes the array
        # surrogateescape: bytes that are not UTF-8 survive to the string columns (see
        # _json_strings) instead of failing the whole batch.
        text = self._rows.decode("utf-8", "surrogateescape")
        self._rows = bytearray(b"[")
        self._row_count = 0
        rows = json.loads(text, parse_float=str, parse_int=str)
        del text
        width = len(self._names)
        if any(len(row) != width for row in rows):
            raise ValueError(f"a row does not have the {width} columns of the meta")
        self._rows_seen += len(rows)
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self._names]
        arrays = [
            json_column(list(values), kind, self._server_timezone)
            for values, kind in zip(columns, self._types, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, names=self._names)


def json_column(values: list[Any], declared: str, server_timezone: str) -> pa.Array:
    """One ``JSONCompact`` column (JSON values, numbers as their text) as an exact Arrow array.

    The Arrow type is the one a server's ``ArrowStream`` output would have (``Date`` as date32,
    ``DateTime`` as a UTC timestamp), so both read paths give the same tables. Types without a
    closer match (UUID, enums, 128/256-bit integers, arrays, ...) come back as their text.
    """
    base, _ = unwrap(declared)
    if base == "Nothing":
        return pa.nulls(len(values))
    if base in ARROW_INTEGERS:
        return pa.array(values, pa.string()).cast(ARROW_INTEGERS[base])
    if base in ("Float32", "Float64"):
        # pyarrow parses the shortest text the server writes back into the same binary value,
        # and "nan", "inf", "-inf" too.
        return pa.array(values, pa.string()).cast(
            pa.float32() if base == "Float32" else pa.float64()
        )
    if match := DECIMAL_SPEC.match(base):
        bits, short_scale, precision_text, long_scale = match.groups()
        precision = DECIMAL_BITS_PRECISION[bits] if bits else int(precision_text)
        scale = int(short_scale if bits else long_scale)
        kind = (
            pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
        )
        return pa.array(values, pa.string()).cast(kind)
    if base == "Bool":
        return pa.array(values, pa.bool_())
    if base in ("Date", "Date32"):
        text = pa.array(values, pa.string())
        # Servers before 19.x print day 0 (1970-01-01) as 0000-00-00.
        return pc.if_else(pc.equal(text, _ZERO_DATE), "1970-01-01", text).cast(pa.date32())
    if match := DATETIME_TYPE.match(base):
        return _json_datetimes(values, "s", match["tz"] or server_timezone)
    if match := DATETIME64_TYPE.match(base):
        unit = _TIME_UNITS[min((int(match["p"]) + 2) // 3, 3)]
        return _json_datetimes(values, unit, match["tz"] or server_timezone)
    return _json_strings(values)


def _json_datetimes(values: list[Any], unit: str, zone: str) -> pa.Array:
    """Local date-time texts of ``zone`` as a UTC timestamp array."""
    text = pa.array(values, pa.string())
    # Old servers print the epoch (whatever the zone) as 0000-00-00 00:00:00.
    zero = pc.starts_with(text, _ZERO_DATE)
    local = pc.if_else(zero, "1970-01-01 00:00:00", text).cast(pa.timestamp(unit))
    # A local time that occurs twice (the hour clocks go back) cannot be told apart in text;
    # the earlier one is taken. UTC, what replicas use, has no such hour.
    aware = pc.assume_timezone(local, timezone=zone, ambiguous="earliest", nonexistent="raise")
    utc = aware.cast(pa.timestamp(unit, tz="UTC"))
    return pc.if_else(zero, pa.scalar(0, pa.timestamp(unit, tz="UTC")), utc)


def _json_strings(values: list[Any]) -> pa.Array:
    """JSON strings (or other JSON values, as their JSON text) as a string array."""
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
    except UnicodeEncodeError:
        pass
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        # Bytes that are not UTF-8 (kept by surrogateescape) go through as they are, as the
        # embedded engine's Arrow output would carry them.
        raw = [None if v is None else v.encode("utf-8", "surrogateescape") for v in values]
        return pa.array(raw, pa.binary()).view(pa.string())
