"""The read path's answer: the record batches of one query, decoded as the response arrives.

Servers of 20.5 and later answer in ``ArrowStream`` (``arrow_ipc``), older ones in
``JSONCompact`` (``json_compact``); either way the caller gets Arrow record batches named by the
compiled aliases and typed by the compiled logical types (``conform_batch``), so both read paths,
and the embedded backend, give the same tables.

``rows_scanned`` is the server's ``read_rows``: from ``X-ClickHouse-Summary`` on Arrow servers
(complete by itself from 22.6, PR #36884; the client asks older ones for it), from the JSON
``statistics`` otherwise. ``elapsed_ms`` is the summary's ``elapsed_ns`` where present (23.9, PR
#54179), the statistics' ``elapsed`` on the JSON path, and otherwise measured here.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from service.backends.base import QueryStats
from service.backends.http.arrow_ipc import arrow_messages
from service.backends.http.engine_errors import engine_error, read_path_error
from service.backends.http.json_compact import JsonCompactDecoder, response_lines
from service.errors import AnalyticsError, engine_unavailable, query_timeout
from service.query.compiler import OutputColumn

log = structlog.get_logger(__name__)


class HttpResultStream:
    """The record batches of one read, decoded as the response arrives.

    ``stats`` is complete once iteration ends; ``complete`` says whether the whole answer was
    read (the backend kills the query and drops the connection otherwise).
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        columns: Sequence[OutputColumn],
        *,
        arrow: bool,
        server_timezone: str,
        started: float,
        timeout_seconds: float,
        query_id: str,
    ) -> None:
        """Wrap a 200 response whose body is not read yet (``HttpBackend.stream`` makes it)."""
        self.stats = QueryStats()
        self.complete = False
        self._response = response
        self._columns = tuple(columns)
        self._arrow = arrow
        self._server_timezone = server_timezone
        self._started = started
        self._timeout = timeout_seconds
        self._query_id = query_id
        self._schema: pa.Schema | None = None
        self._elapsed_ns: int | None = None
        if arrow:
            summary = _summary(response.headers.get("X-ClickHouse-Summary", ""))
            self.stats.rows_scanned = summary.get("read_rows", 0)
            self._elapsed_ns = summary.get("elapsed_ns")

    async def __aiter__(self) -> AsyncIterator[pa.RecordBatch]:
        """Each batch as soon as its bytes are in; raises AnalyticsError on any failure."""
        decoded = self._arrow_batches() if self._arrow else self._json_batches()
        try:
            async for batch in decoded:
                yield conform_batch(batch, self._columns)
        except AnalyticsError as exc:
            raise read_path_error(exc) from None
        except Exception as exc:
            raise self._failure(exc) from None
        self.complete = True
        if self._elapsed_ns is not None:
            self.stats.elapsed_ms = self._elapsed_ns / 1e6
        elif not self.stats.elapsed_ms:
            self.stats.elapsed_ms = (time.perf_counter() - self._started) * 1000

    def empty_table(self) -> pa.Table:
        """A table of no rows, typed like the result's batches would have been."""
        if self._schema is None:
            # The server sent no schema at all: the embedded backend's empty form.
            return pa.table({c.alias: pa.array([], pa.null()) for c in self._columns})
        empty = pa.RecordBatch.from_pylist([], schema=self._schema)
        return pa.Table.from_batches([conform_batch(empty, self._columns)])

    def _failure(self, exc: Exception) -> AnalyticsError:
        """The AnalyticsError for a failure while reading or decoding the body."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return engine_unavailable(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, TimeoutError):
            # The body did not arrive within the budget; the backend kills the query on exit.
            return query_timeout(self._timeout, "no answer from the server in time")
        if isinstance(exc, asyncio.IncompleteReadError):
            return engine_unavailable("the server ended the response early")
        if isinstance(exc, aiohttp.ClientError | OSError):
            return engine_unavailable(f"{type(exc).__name__}: {exc}")
        return engine_error(
            f"unreadable {'ArrowStream' if self._arrow else 'JSONCompact'} response: "
            f"{type(exc).__name__}: {exc}",
            "",
            self._query_id,
        )

    async def _arrow_batches(self) -> AsyncIterator[pa.RecordBatch]:
        schema: pa.Schema | None = None
        async for message in arrow_messages(self._response.content):
            if message.type == "schema":
                schema = pa.ipc.read_schema(message)
                self._schema = schema
            elif message.type == "record batch" and schema is not None:
                yield pa.ipc.read_record_batch(message, schema)
            else:
                # Dictionaries only come with LowCardinality as dictionary, which we turn off.
                raise ValueError(f"unexpected Arrow IPC message {message.type!r}")

    async def _json_batches(self) -> AsyncIterator[pa.RecordBatch]:
        decoder = JsonCompactDecoder(self._server_timezone, self._timeout)
        async for lines in response_lines(self._response.content):
            for batch in decoder.feed(lines):
                yield batch
            if self._schema is None and decoder.schema is not None:
                self._schema = decoder.schema
        for batch in decoder.finish():
            yield batch
        self._schema = decoder.schema
        statistics = decoder.statistics
        self.stats.rows_scanned = int(statistics.get("rows_read", 0))
        if "elapsed" in statistics:
            self.stats.elapsed_ms = float(statistics["elapsed"]) * 1000


def _summary(header: str) -> dict[str, int]:
    """The integer fields of an ``X-ClickHouse-Summary`` header (numbers are sent as strings)."""
    if not header:
        return {}
    try:
        fields = json.loads(header)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        log.warning("unreadable X-ClickHouse-Summary", header=header[:200])
        return {}
    summary: dict[str, int] = {}
    for name, value in fields.items():
        try:
            summary[name] = int(value)
        except (TypeError, ValueError):
            continue
    return summary


def conform_batch(batch: pa.RecordBatch, columns: Sequence[OutputColumn]) -> pa.RecordBatch:
    """``batch``'s columns in the compiled order and aliases, each conformed to its logical type.

    Raises ValueError when the result lacks one of the compiled aliases.
    """
    names = batch.schema.names
    arrays = []
    for column in columns:
        if column.alias not in names:
            raise ValueError(f"the result has no column {column.alias!r} (it has {names})")
        arrays.append(conform_array(batch.column(names.index(column.alias)), column.type))
    return pa.RecordBatch.from_arrays(arrays, names=[column.alias for column in columns])


def conform_array(array: pa.Array, logical: str) -> pa.Array:
    """One result column in the form the service consumes, whatever the server's output.

    Servers differ in how they write some types to Arrow (by version and settings), so this
    evens them out: dictionaries (LowCardinality) are decoded, binary strings become strings,
    UUIDs their text, UInt8 "bools" (servers before the Bool type) booleans, ``Date`` as UInt16
    days a date32, ``DateTime`` as UInt32 seconds a UTC timestamp. Everything else - the exact
    integer, decimal and float types - passes unchanged.
    """
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    kind = array.type
    if isinstance(kind, pa.BaseExtensionType):
        storage = array.storage
        if kind.extension_name == "arrow.uuid":
            texts = [None if b is None else str(uuid.UUID(bytes=b)) for b in storage.to_pylist()]
            return pa.array(texts, pa.string())
        array, kind = storage, storage.type
    if pa.types.is_fixed_size_binary(kind):
        array, kind = array.cast(pa.binary()), pa.binary()
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        target = pa.string() if pa.types.is_binary(kind) else pa.large_string()
        try:
            return array.cast(target)
        except pa.ArrowInvalid:
            # Not UTF-8: keep the bytes as they are (the embedded engine's output does too).
            return array.view(target)
    if logical == "bool" and pa.types.is_integer(kind):
        return pc.not_equal(array, 0)
    if logical == "date" and pa.types.is_uint16(kind):
        return array.cast(pa.int32()).cast(pa.date32())
    if logical == "timestamp" and pa.types.is_uint32(kind):
        return array.cast(pa.int64()).cast(pa.timestamp("s", tz="UTC"))
    return array
