"""EventSink: one group commit for every caller's events, acknowledged only once written.

Callers ``submit`` validated events and await the returned future. One flusher task takes
everything held once ``flush_events`` are held or the oldest has waited ``flush_seconds``,
writes it (one insert per event table, every tenant and caller together) and then resolves the
futures: success only after the engine accepted the insert; if it refuses, every caller of that
flush gets UNAVAILABLE and nothing of it is acknowledged (a retry is safe: the tables keep one
row per (tenant, event id) under FINAL). While a flush runs the next one fills, so the write
size follows the load by itself.

Held events are bounded: past ``capacity`` a submit fails at once with RESOURCE_EXHAUSTED and a
retry delay (never a silent drop). ``close`` stops taking events, writes what it holds and
answers those callers. After each flush the model's sync state moves (``lastSyncAt``: every
event acknowledged before it is visible), at most once per ``sync_interval`` per table.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import structlog

from service.backends.base import AnalyticsBackend
from service.backends.dialect import backend_dialect
from service.catalog import Catalog, Model
from service.errors import AnalyticsError, ErrorKind, engine_unavailable, resource_exhausted
from service.events.metrics import SinkMetrics
from service.events.validation import EventColumns, EventRows, rows_table
from service.schema import SYNC_STATE_TABLE, database_ddl, event_table_ddl, sync_state_table

log = structlog.get_logger(__name__)

SYNC_SOURCE = "events"
"""The ``source`` of the sink's rows in the sync-state table."""
_MIN_RETRY_SECONDS = 0.1
_MAX_RETRY_SECONDS = 10.0


@dataclass
class _Held:
    columns: EventColumns
    future: asyncio.Future[None]
    entered: float


async def create_event_tables(backend: AnalyticsBackend, catalog: Catalog) -> None:
    """Create the catalog's database and each event model's table where missing.

    The sink is the event models' writer, as the CDC worker is the replicas': the tables are its
    to create (a fresh ``analytics serve`` answered every ingest REPLICA_MISSING). A server that
    refuses (no CREATE grant) is logged and left: ingestion then answers REPLICA_MISSING until
    an administrator creates the tables.
    """
    dialect = await backend_dialect(backend)
    statements = [database_ddl(catalog)]
    statements += [event_table_ddl(catalog, m, dialect=dialect) for m in catalog.event_models()]
    for statement in statements:
        try:
            await backend.command(statement)
        except AnalyticsError as error:
            log.warning("cannot create an event table", statement=statement[:200], error=error)


class EventSink:
    """Batches events across callers and writes them; see the module docstring."""

    def __init__(
        self,
        backend: AnalyticsBackend,
        database: str,
        *,
        flush_events: int,
        flush_seconds: float,
        capacity: int,
        metrics: SinkMetrics | None = None,
        sync_interval: float = 1.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        """Write to ``database`` on ``backend`` with the group-commit thresholds given."""
        self._backend = backend
        self._database = database
        self._flush_events = flush_events
        self._flush_seconds = flush_seconds
        self._capacity = capacity
        self.metrics = metrics or SinkMetrics()
        self.metrics.capacity.set(capacity)
        self._sync_interval = sync_interval
        self._clock = clock
        self._held: list[_Held] = []
        self._held_events = 0
        self._writing_events = 0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._last_version = 0
        self._rate = 0.0
        self._sync_owed: dict[str, dt.datetime] = {}
        self._sync_written_at = 0.0

    @property
    def buffered(self) -> int:
        """Events submitted and not yet acknowledged (held or being written)."""
        return self._held_events + self._writing_events

    def start(self) -> None:
        """Start the flusher task (in the running event loop)."""
        # pyarrow imports pandas on its first conversion of a Python list (about 0.3 s): done
        # here, at start, rather than on the event loop under the first caller's batch.
        pa.array(["start"], pa.string())
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, columns: EventColumns) -> asyncio.Future[None]:
        """Hold ``columns`` for the next flush; the future resolves when they are written.

        Raises RESOURCE_EXHAUSTED (with a retry delay) when the sink is full, and UNAVAILABLE
        once it is closing. An empty batch resolves at once.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # A caller that went away leaves its future unawaited; its failure is not an error here.
        future.add_done_callback(_consume_exception)
        count = len(columns)
        if not count:
            future.set_result(None)
            return future
        if self._closing or self._task is None:
            self.metrics.refused.labels("closing").inc()
            raise AnalyticsError(
                ErrorKind.UNAVAILABLE,
                "the event sink is shutting down; send the events again (to another instance)",
                "SINK_CLOSING",
            )
        if self.buffered and self.buffered + count > self._capacity:
            self.metrics.refused.labels("buffer_full").inc()
            raise resource_exhausted(
                f"the event buffer is full ({self.buffered} of {self._capacity} events unwritten)",
                "EVENT_BUFFER_FULL",
                self._retry_after(),
            )
        self._held.append(_Held(columns, future, time.perf_counter()))
        self._held_events += count
        self.metrics.buffered.set(self.buffered)
        self._arrived.set()
        if self._held_events >= self._flush_events:
            self._full.set()
        return future

    async def close(self) -> None:
        """Stop taking events, write every held one, answer their callers, record sync state."""
        self._closing = True
        self._arrived.set()
        self._full.set()
        if self._task is not None:
            await self._task

    def _retry_after(self) -> float:
        rate = self._rate or self._flush_events / self._flush_seconds
        return min(max(self.buffered / rate, _MIN_RETRY_SECONDS), _MAX_RETRY_SECONDS)

    async def _run(self) -> None:
        while True:
            if not self._held:
                if self._closing:
                    await self._write_sync_state(force=True)
                    return
                await self._wait_for_events()
                continue
            await self._wait_until_due()
            batch, self._held = self._held, []
            self._writing_events, self._held_events = self._held_events, 0
            self._full.clear()
            try:
                await self._flush(batch)
            finally:
                self._writing_events = 0
                self.metrics.buffered.set(self.buffered)

    async def _wait_for_events(self) -> None:
        """Idle: wait for events, writing owed sync state when it falls due."""
        self._arrived.clear()
        timeout = None
        if self._sync_owed:
            timeout = max(self._sync_written_at + self._sync_interval - time.perf_counter(), 0)
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            # Idle: nothing is held or being written, so every event acknowledged until now is
            # visible. Recording now rather than the last flush's end keeps lastSyncAt within
            # one interval of the latest acknowledgement (the flush's end could be an interval
            # older than this record, and the record an interval older than the next).
            self._sync_owed = dict.fromkeys(self._sync_owed, self._clock())
            await self._write_sync_state(force=True)

    async def _wait_until_due(self) -> None:
        """Until ``flush_events`` are held or the oldest held event waited ``flush_seconds``."""
        deadline = self._held[0].entered + self._flush_seconds
        while self._held_events < self._flush_events and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), remaining)

    async def _flush(self, batch: Sequence[_Held]) -> None:
        started = time.perf_counter()
        version = self._next_version()
        by_table: dict[str, list[EventColumns]] = {}
        for held in batch:
            by_table.setdefault(held.columns.model.table, []).append(held.columns)
        events = sum(len(held.columns) for held in batch)
        try:
            for table, parts in by_table.items():
                await self._backend.insert_arrow(self._database, table, event_table(parts, version))
        except Exception as exc:
            error = exc if isinstance(exc, AnalyticsError) else engine_unavailable(str(exc))
            self.metrics.flush_failures.inc()
            log.warning("event flush failed; its callers are told", events=events, error=str(exc))
            for held in batch:
                if not held.future.done():
                    held.future.set_exception(error)
            return
        finished = time.perf_counter()
        completed_at = self._clock()
        for table in by_table:
            self._sync_owed[table] = completed_at
        # Recorded (when due) before the callers are answered: an acknowledgement never finds
        # lastSyncAt unset or more than an interval behind, and acknowledged events are no
        # longer counted as buffered (against the capacity) while the record is written.
        await self._write_sync_state(force=False)
        answered = time.perf_counter()
        for held in batch:
            if not held.future.done():
                held.future.set_result(None)
            self.metrics.acknowledge_seconds.observe(answered - held.entered)
            self.metrics.written.labels(held.columns.model.qualified_name).inc(len(held.columns))
        self.metrics.flush_events.observe(events)
        self.metrics.flush_seconds.observe(finished - started)
        # The write rate (events per second of flushing) sizes the retry delay of a full buffer.
        current = events / max(finished - started, 1e-6)
        self._rate = current if not self._rate else 0.8 * self._rate + 0.2 * current

    async def _write_sync_state(self, *, force: bool) -> None:
        now = time.perf_counter()
        if not self._sync_owed or (not force and now - self._sync_written_at < self._sync_interval):
            return
        owed, self._sync_owed = self._sync_owed, {}
        rows = [
            {
                "table_name": table,
                "source": SYNC_SOURCE,
                "last_sync_at": moment,
                "updated_at": self._clock(),
                "state": "streaming",
            }
            for table, moment in owed.items()
        ]
        try:
            await self._backend.insert_arrow(
                self._database, SYNC_STATE_TABLE, sync_state_table(rows)
            )
        except Exception as exc:
            log.warning("event sync state not recorded; retried", error=str(exc))
            for table, moment in owed.items():
                self._sync_owed.setdefault(table, moment)
        self._sync_written_at = now

    def _next_version(self) -> int:
        """A version above every earlier one: the latest send of an event id wins under FINAL."""
        self._last_version = max(self._last_version + 1, time.time_ns())
        return self._last_version


def event_table(parts: Sequence[EventColumns], version: int) -> pa.Table:
    """The Arrow rows of ``parts`` (one model) for the event table, every row at ``version``.

    Parts still held as lists (small calls) become columns here, all of them at once.
    """
    model: Model = parts[0].model
    count = sum(len(part) for part in parts)
    # Each part's tenant repeated by a take of index 0: no Python object per row.
    tenants = pa.concat_arrays(
        [
            pa.array([part.tenant], pa.string()).take(np.zeros(len(part), dtype=np.int32))
            for part in parts
        ]
    )
    # In the callers' order (of two sends of one event id in one flush the later one wins),
    # each run of listed parts as one table.
    tables: list[pa.Table] = []
    run: list[EventRows] = []
    for part in parts:
        if part.rows is not None:
            run.append(part.rows)
            continue
        if run:
            tables.append(rows_table(model, run))
            run = []
        tables.append(part.table)
    if run:
        tables.append(rows_table(model, run))
    rows = pa.concat_tables(tables)
    return rows.add_column(0, model.tenant_column, tenants).append_column(
        "_version", pa.array(np.full(count, version, dtype=np.uint64))
    )


def _consume_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
