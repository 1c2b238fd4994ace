"""The embedded backend: chDB, the ClickHouse engine in this process.

chDB runs one query per connection at a time and blocks the calling thread, so queries run on a
small pool of connections, each used from a worker thread. Deadlines are enforced by the engine
(``max_execution_time`` from the call's remaining time); a cancelled call cancels the engine's
stream, which takes effect at the next block the engine produces. chDB runs everything as its
``default`` user, so per-tenant row policies cannot exist here: the compiler's tenant condition is
the only isolation layer on this backend.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import chdb
import pyarrow as pa
import structlog
from pyarrow import ipc

from service.backends.base import QueryResult, QueryStats
from service.backends.dialect import Dialect, parse_version
from service.errors import (
    ROWS_LIMIT_CODE,
    AnalyticsError,
    ErrorKind,
    engine_unavailable,
    query_timeout,
    rows_limit_exceeded,
)
from service.query.compiler import CompiledQuery
from service.schema import SYNC_STATE_TABLE

log = structlog.get_logger(__name__)
_ERROR_CODE = re.compile(r"Code: (\d+)")
_TIMEOUT_CODES = {"159", "160", "209", "210"}
_MISSING_CODES = {"60", "81"}


#: Writes that have ended, per data directory: shared by every backend of this process on one
#: directory, as each sees the others' writes (``write_generation``). Counted on the engine's
#: threads, hence the lock: a lost increment could leave the number unchanged by a write.
_WRITES: dict[str, int] = {}
_WRITES_LOCK = threading.Lock()


class EmbeddedBackend:
    """chDB behind the backend interface."""

    name = "chdb"
    enforces_row_policies = False

    def __init__(self, data_dir: Path, pool_size: int = 4) -> None:
        """Open ``pool_size`` connections on the data directory (created if missing)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        self._directory = str(data_dir.resolve())
        _WRITES.setdefault(self._directory, 0)
        self._connections: queue.LifoQueue[Any] = queue.LifoQueue()
        self._meters: dict[int, _ReadMeter] = {}
        for _ in range(pool_size):
            connection = chdb.connect(str(data_dir))
            meter = _ReadMeter()
            connection.set_progress_callback(meter.update)
            self._meters[id(connection)] = meter
            self._connections.put(connection)
        self._pool_size = pool_size
        # One extra thread so that a cancel can run while every connection is busy.
        self._threads = ThreadPoolExecutor(pool_size + 1, thread_name_prefix="chdb")
        self._slots = asyncio.Semaphore(pool_size)
        self._active = 0
        self._closed = False

    async def dialect(self) -> Dialect:
        """The capabilities of the engine chDB embeds (its ClickHouse version), for DDL."""
        return Dialect.for_server(parse_version(chdb.engine_version))

    @property
    def write_generation(self) -> int:
        """How many writes (commands and inserts) to this data directory have returned.

        It grows on the engine's thread once a write has ended (committed or failed: a failed
        statement may have written some parts), before its caller sees it return and even if
        the caller was cancelled meanwhile: an unchanged number means that no write ended in
        between (``SoleWriter``).
        """
        return _WRITES[self._directory]

    def _wrote(self) -> None:
        with _WRITES_LOCK:
            _WRITES[self._directory] += 1

    @property
    def active_queries(self) -> int:
        """Engine connections currently running a statement."""
        return self._active

    async def execute(
        self, query: CompiledQuery, *, timeout_seconds: float, query_id: str
    ) -> QueryResult:
        """Run the query and gather every batch."""
        async with self.stream(query, timeout_seconds=timeout_seconds, query_id=query_id) as stream:
            batches = await stream.read_all()
        if batches:
            table = pa.Table.from_batches(batches)
        else:
            table = pa.table({c.alias: pa.array([], pa.null()) for c in query.columns})
        return QueryResult(table, stream.stats)

    @asynccontextmanager
    async def stream(
        self, query: CompiledQuery, *, timeout_seconds: float, query_id: str
    ) -> AsyncIterator[_EmbeddedStream]:
        """Start the query on a pooled connection; batches are fetched one at a time on demand."""
        sql = f"{query.sql} SETTINGS {_settings(timeout_seconds, query.settings)}"
        async with self._slots:
            with self._connection() as connection:
                stream = _EmbeddedStream(
                    self._threads,
                    connection,
                    sql,
                    query.parameters,
                    timeout_seconds,
                    meter=self._meters[id(connection)],
                )
                try:
                    await stream.start()
                    yield stream
                finally:
                    await stream.close()

    async def command(self, sql: str, parameters: Mapping[str, str] | None = None) -> None:
        """Run a statement on a pooled connection."""

        def run(connection: Any) -> None:
            try:
                _run_command(connection, sql, dict(parameters or {}))
            finally:
                self._wrote()

        async with self._slots:
            with self._connection() as connection:
                await asyncio.get_running_loop().run_in_executor(self._threads, run, connection)

    async def query_rows(
        self, sql: str, parameters: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Run a small query and return its rows as dicts (for state tables, not user queries)."""
        async with self._slots:
            with self._connection() as connection:
                table = await asyncio.get_running_loop().run_in_executor(
                    self._threads, _run_small_query, connection, sql, dict(parameters or {})
                )
        return table.to_pylist()  # type: ignore[no-any-return]

    async def insert_arrow(self, database: str, table: str, data: pa.Table) -> int:
        """Append ``data`` to ``database.table``, matching columns by name; return rows written.

        The rows go in as given: ``optimize_on_insert`` is off, so versions of one key sent in
        one batch are not collapsed before FINAL or a merge would, exactly as with several
        batches. The batch travels as one Arrow IPC stream through chDB's streaming inserter,
        with no temporary file.
        """
        names = (database, table, *data.column_names)
        bad = [name for name in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)]
        if bad:
            raise ValueError(f"insert_arrow: not plain identifiers: {bad!r}")
        if not data.num_rows:
            return 0
        columns = ", ".join(f"`{name}`" for name in data.column_names)
        sql = f"INSERT INTO `{database}`.`{table}` ({columns}) SETTINGS optimize_on_insert = 0"

        def write(connection: Any) -> int:
            # Encoding runs here, on the worker thread, to keep the event loop free.
            sink = pa.BufferOutputStream()
            with ipc.new_stream(sink, data.schema) as writer:
                writer.write_table(data)
            try:
                with connection.send_insert(sql, "ArrowStream") as inserter:
                    inserter.append(sink.getvalue().to_pybytes())
                    return int(inserter.finish().rows_written)
            except Exception as exc:
                _reset_after_error(connection)
                raise _map_error(exc, 0) from None
            finally:
                self._wrote()

        async with self._slots:
            with self._connection() as connection:
                return await asyncio.get_running_loop().run_in_executor(
                    self._threads, write, connection
                )

    async def last_sync_at(self, database: str, table: str) -> dt.datetime | None:
        """Read the sync-state row of ``database.table``."""
        sql = (
            f"SELECT argMax(last_sync_at, updated_at) AS at, count() AS n "
            f"FROM `{database}`.`{SYNC_STATE_TABLE}` "
            "WHERE table_name = {table:String}"
        )
        try:
            rows = await self.query_rows(sql, {"table": table})
        except AnalyticsError as exc:
            engine_message = exc.metadata.get("engine_message", "")
            if "UNKNOWN_TABLE" in engine_message or "UNKNOWN_DATABASE" in engine_message:
                return None
            raise
        if not rows or not rows[0]["n"]:
            return None
        moment = rows[0]["at"]
        if not isinstance(moment, dt.datetime):
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)

    async def ping(self) -> None:
        """Run ``SELECT 1``."""
        await self.query_rows("SELECT 1 AS one")

    async def close(self) -> None:
        """Close every connection and stop the threads."""
        self._closed = True
        self._threads.shutdown(wait=True, cancel_futures=True)
        while not self._connections.empty():
            self._connections.get_nowait().close()

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._closed:
            raise engine_unavailable("the embedded engine is shut down")
        connection = self._connections.get_nowait()
        self._active += 1
        try:
            yield connection
        finally:
            self._active -= 1
            self._connections.put(connection)


class _ReadMeter:
    """The rows a connection's current query has read, from chDB's progress callback.

    The callback carries the engine's running total, scalar subqueries included, and fires on
    the thread that fetches. A chunk's own ``storage_rows_read`` is not enough: chDB drops the
    chunk that ends a stream when it has no rows, and with it the final block's progress (on a
    busy machine 60 of 1 000 streams of 1 M rows counted 991 808; the callback counted every
    one in full).
    """

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows = 0

    def update(self, progress: Mapping[str, Any]) -> None:
        """Keep the running total of rows read (called by chDB)."""
        self.rows = int(progress.get("read_rows", 0))


class _EmbeddedStream:
    """One running chDB query, read batch by batch from a worker thread."""

    def __init__(
        self,
        threads: ThreadPoolExecutor,
        connection: Any,
        sql: str,
        parameters: Mapping[str, str],
        timeout_seconds: float,
        *,
        meter: _ReadMeter,
    ) -> None:
        self._threads = threads
        self._connection = connection
        self._meter = meter
        self._sql = sql
        self._parameters = dict(parameters)
        self._timeout = timeout_seconds
        self._result: Any = None
        self._done = False
        self._closing = False
        self._pending: Future[list[pa.RecordBatch] | None] | None = None
        self.stats = QueryStats()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._result = await loop.run_in_executor(self._threads, self._send)

    def _send(self) -> Any:
        started = time.perf_counter()
        self._meter.rows = 0
        try:
            return self._connection.send_query(self._sql, "ArrowStream", params=self._parameters)
        except Exception as exc:
            _reset_after_error(self._connection)
            raise _map_error(exc, self._timeout) from None
        finally:
            # The engine runs a query's scalar subqueries (a funnel's first pass, a trend's
            # breakdown ranking) before it answers here, and the chunks' elapsed times leave
            # them out: their time is counted here (their rows are in the meter's total).
            self.stats.elapsed_ms += (time.perf_counter() - started) * 1000

    def _next(self) -> list[pa.RecordBatch] | None:
        """The next engine block's batches, or None at the end."""
        try:
            chunk = self._result.fetch()
        except Exception as exc:
            self._done = True
            if self._closing:
                # close() cancelled the query under this fetch; the cancel leaves the
                # connection clean, and nobody reads this block.
                return None
            _reset_after_error(self._connection)
            raise _map_error(exc, self._timeout) from None
        self.stats.rows_scanned = self._meter.rows
        if chunk is None:
            return None
        self.stats.elapsed_ms += float(chunk.elapsed()) * 1000
        payload = chunk.bytes()
        if not payload:
            return None
        return list(ipc.open_stream(payload))

    def _drain(self) -> list[pa.RecordBatch]:
        batches: list[pa.RecordBatch] = []
        while not self._closing and (fetched := self._next()) is not None:
            batches.extend(fetched)
        self._done = True
        return batches

    async def read_all(self) -> list[pa.RecordBatch]:
        """Every batch of the result, fetched in one trip to the pool.

        For a unary call, whose caller wants the whole result anyway: a trip per block, as the
        iteration makes, costs the count at 10 M rows 0.3-0.8 ms (bench/README.md, Query
        overhead, second round). A cancelled caller leaves the drain in ``_pending``, which
        ``close()`` cancels and waits for, as it does a block fetched ahead; the drain also
        stops at the next block once the stream is closing.
        """
        self._pending = self._threads.submit(self._drain)
        batches = await asyncio.wrap_future(self._pending)
        self._pending = None
        # The slot is typed for a single fetch, which may end the stream with None.
        return batches or []

    async def __aiter__(self) -> AsyncIterator[pa.RecordBatch]:
        while not self._done:
            # Kept in _pending while awaited: a cancelled caller leaves it to close() to wait for.
            self._pending = self._pending or self._threads.submit(self._next)
            fetched = await asyncio.wrap_future(self._pending)
            self._pending = None
            if fetched is None:
                self._done = True
                return
            # One block ahead: chDB releases the GIL while it produces a block, so the engine
            # works on the next one on a pool thread while the caller encodes and sends this
            # one (a quarter off a long stream's time, bench/README.md). Never more than one:
            # memory stays bounded by two blocks.
            self._pending = self._threads.submit(self._next)
            for batch in fetched:
                yield batch

    async def close(self) -> None:
        pending, self._pending = self._pending, None
        if self._result is None:
            return
        if pending is not None and pending.done():
            if not pending.cancelled() and (
                pending.exception() is not None or pending.result() is None
            ):
                self._done = True  # the block fetched ahead ended the stream: nothing to cancel
            pending = None
        if self._done and pending is None:
            return
        cancel = not self._done
        self._done = True
        self._closing = True
        loop = asyncio.get_running_loop()

        async def stop() -> None:
            if cancel:
                # Cancelling waits for the engine's current block; do it off the event loop.
                await loop.run_in_executor(self._threads, self._result.cancel)
            if pending is not None:
                # The block fetched ahead ends with the cancel. The connection goes back to the
                # pool only after it, or the next query would share it with this fetch.
                fetched = asyncio.wrap_future(pending)
                await asyncio.wait([fetched])
                if not fetched.cancelled():
                    fetched.exception()  # an error of a block nobody reads is not reported

        # Shielded: the caller awaits this even when its own task is being cancelled.
        await asyncio.shield(stop())


def _settings(timeout_seconds: float, extra: Mapping[str, str]) -> str:
    seconds = max(timeout_seconds, 0.001)
    pairs = [
        f"max_execution_time = {seconds:.3f}",
        "timeout_overflow_mode = 'throw'",
        "readonly = 2",
        *(f"{name} = {value}" for name, value in extra.items()),
    ]
    return ", ".join(pairs)


def _reset_after_error(connection: Any) -> None:
    """Clear a chDB 4.4 connection after a failed query.

    A query that fails before its first block leaves the connection returning that query's
    (empty) output to the next query; one throwaway query clears it.
    """
    try:
        connection.query("SELECT 1", "Null")
    except Exception:
        log.warning("could not reset an engine connection after an error")


def _run_command(connection: Any, sql: str, parameters: dict[str, str]) -> None:
    try:
        connection.query(sql, "Null", params=parameters or None)
    except Exception as exc:
        _reset_after_error(connection)
        raise _map_error(exc, 0) from None


def _run_small_query(connection: Any, sql: str, parameters: dict[str, str]) -> pa.Table:
    try:
        result = connection.query(sql, "ArrowStream", params=parameters or None)
    except Exception as exc:
        _reset_after_error(connection)
        raise _map_error(exc, 0) from None
    payload = result.bytes()
    if not payload:
        return pa.table({})
    return ipc.open_stream(payload).read_all()


def _map_error(exc: Exception, timeout_seconds: float) -> AnalyticsError:
    message = str(exc)
    match = _ERROR_CODE.search(message)
    code = match.group(1) if match else ""
    if code in _TIMEOUT_CODES:
        return query_timeout(timeout_seconds, message)
    if code == ROWS_LIMIT_CODE:
        return rows_limit_exceeded(message)
    if code in _MISSING_CODES:
        # Nothing has created the replica yet (no loader has run): not ready, rather than broken.
        return AnalyticsError(
            ErrorKind.UNAVAILABLE,
            "the model's replica table does not exist yet: no loader has created it",
            "REPLICA_MISSING",
            metadata={"engine_message": message[:500], "engine_code": code},
        )
    if "Cannot open" in message or "Permission denied" in message:
        return engine_unavailable(message)
    log.error("engine error", engine_message=message[:2000])
    return AnalyticsError(
        ErrorKind.INTERNAL,
        "the analytics engine failed to run the query",
        "ENGINE_ERROR",
        metadata={"engine_message": message[:500], "engine_code": code},
    )
