"""IncrementalLoader: PostgreSQL polled by a write-time watermark into the ClickHouse replicas.

For deployments without Kafka and Debezium. Every ``loader_poll_seconds`` each catalog table is
read in one ``REPEATABLE READ`` snapshot: the rows whose position ``(watermark, tenant, primary
key)`` is past the table's checkpoint, in that order, ``loader_batch_rows`` at a time. Each batch
is inserted as new versions, then the checkpoint is written to ``_loader_checkpoints`` in the same
ClickHouse database: a crash between the two replays the batch, which ``FINAL`` collapses.

The watermark is a timestamp the source sets to the write time on every insert and update
(``watermark_column`` of the catalog, ``updated_at`` by default), by trigger or in every write.
A soft delete is an update of the soft-delete column and must move it too.

Versions: every row of a poll gets ``snapshot_version(pg_current_wal_lsn())`` read inside the
poll's snapshot, so a later poll, a backfill or the CDC worker always writes newer data with a
higher version.

Late commits. A plain ``watermark > checkpoint`` loses rows: a transaction stamps its rows with
its own start time (``now()``) but may commit after a later-stamped transaction whose rows a poll
already read past. So the checkpoint never moves past a *commit horizon*, read just before each
poll's snapshot: the earliest of ``statement_timestamp() - loader_lookback_seconds`` and the
start (``pg_stat_activity.xact_start``) of every other open transaction of the database. Any
transaction the snapshot cannot see yet started after that horizon, and its stamps (``now()``,
``clock_timestamp()``) are not earlier than its start; so every row stamped before the horizon
is committed and read. Rows stamped after it are read again by the next poll, and the loader
skips those it wrote unchanged in the poll before. The lookback covers stamps that lag the
transaction's start (an application clock, say). Seeing other roles' transactions needs the
``pg_read_all_stats`` role (or a superuser); without it only the lookback protects, and the
loader says so at start. A long open transaction holds the checkpoint back (re-reads grow) but
loses nothing.

Hard deletes leave no row to read. Every ``loader_reconcile_seconds`` the loader compares, per
tenant and in primary-key ranges of the replica, the live replica keys with the source's keys in
one snapshot and writes a tombstone (at that snapshot's version) for every key that is gone. A
row that moved to another tenant is removed from its old tenant the same way.

Sync state: after each complete poll a table's ``last_sync_at`` is the poll snapshot's start time
(every transaction committed before it is loaded), source ``loader``; a failing table is retried
with back-off and reported as ``error`` meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import asyncpg
import pyarrow as pa
import structlog

from cdc_worker.decoder import MAX_DATE, MAX_TIMESTAMP, MIN_DATE, MIN_TIMESTAMP, snapshot_version
from cdc_worker.worker import ReplicaSink, report_sync_state
from service.backends.dialect import backend_dialect
from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.errors import AnalyticsError
from service.query.values import encode_text_parameter
from service.schema import all_ddl, arrow_type, zero_value
from service.settings import Settings

log = structlog.get_logger(__name__)

CHECKPOINT_TABLE: Final = "_loader_checkpoints"
APPLICATION_NAME: Final = "analytics-loader"
"""The loader's PostgreSQL sessions only read, so they never hold the commit horizon back."""

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_RECENT_ROWS_LIMIT: Final = 200_000
_RECONCILE_CHUNK: Final = 50_000

Key = tuple[Any, ...]
"""(tenant, *primary key) of one row."""


def checkpoint_ddl(database: str) -> str:
    """The checkpoint table: per replica table, the last source position written (newest wins).

    Plain integer and string columns, so every ClickHouse the replicas run on can hold it.
    """
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{CHECKPOINT_TABLE}` (\n"
        "    `table_name` String,\n"
        "    `watermark_column` String,\n"
        "    `watermark_us` Int64,\n"
        "    `after_key` String,\n"
        "    `rows_loaded` Int64,\n"
        "    `revision` UInt64\n"
        ") ENGINE = ReplacingMergeTree(revision)\n"
        "ORDER BY table_name"
    )


@dataclass(frozen=True)
class Checkpoint:
    """Every source row at or before this position is in the replica.

    ``after_key`` None means "before every key at ``watermark_us``": all rows stamped earlier.
    """

    watermark_us: int
    after_key: Key | None = None

    def order(self) -> tuple[int, int, Key]:
        """A sort key: positions compare by watermark, then key (no key first)."""
        if self.after_key is None:
            return (self.watermark_us, 0, ())
        return (self.watermark_us, 1, self.after_key)


START: Final = Checkpoint(-62_135_596_800_000_000)
"""Before every row: 0001-01-01T00:00:00Z, the earliest timestamp Python and asyncpg handle."""


def advance(current: Checkpoint, last_read: Checkpoint | None, horizon_us: int) -> Checkpoint:
    """The checkpoint after a batch whose last row sits at ``last_read`` (None: read to the end).

    Never past the commit horizon (rows stamped from it on may still be committed by open
    transactions), never backwards.
    """
    candidate = Checkpoint(horizon_us)
    if last_read is not None and last_read.watermark_us < horizon_us:
        candidate = last_read
    return max(current, candidate, key=Checkpoint.order)


def to_micros(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware (or UTC naive) timestamp, exactly."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


def from_micros(micros: int) -> dt.datetime:
    """The UTC timestamp ``micros`` after the epoch."""
    return _EPOCH + dt.timedelta(microseconds=micros)


def source_expression(spec: FieldSpec) -> str:
    """How the loader selects a source column: already in the form the replica's column takes.

    PostgreSQL does the conversion, not a Python loop per value: UUIDs as canonical text,
    timestamps as ``timestamptz`` (a ``timestamp`` column is read as UTC) and they and dates
    clamped to ClickHouse's range (the decoder's bounds; they also catch the infinities).
    """
    column = f'"{spec.name}"'
    if spec.type is FieldType.UUID:
        return f"{column}::text"
    if spec.type is FieldType.TIMESTAMP:
        low, high = (f"TIMESTAMPTZ '{m.isoformat()}'" for m in (MIN_TIMESTAMP, MAX_TIMESTAMP))
        clamped = f"LEAST(GREATEST({column}::timestamptz, {low}), {high})"
    elif spec.type is FieldType.DATE:
        clamped = f"LEAST(GREATEST({column}, DATE '{MIN_DATE}'), DATE '{MAX_DATE}')"
    else:
        return column
    # GREATEST and LEAST skip NULLs, so a NULL must not reach them.
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE {clamped} END"


def encode_key(key: Key) -> str:
    """A key as JSON text for the checkpoint table (decoded again with the model's types)."""
    return json.dumps([_json_value(v) for v in key])


def decode_key(model: Model, text: str) -> Key:
    """The inverse of ``encode_key`` for ``model``'s (tenant, *primary key)."""
    values = json.loads(text)
    if not isinstance(values, list) or len(values) != 1 + len(model.primary_key):
        raise ValueError(f"checkpoint key {text!r} does not fit {model.qualified_name}")
    specs = [model.fields[c] for c in model.primary_key]
    return (str(values[0]), *(_from_json(s, v) for s, v in zip(specs, values[1:], strict=True)))


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return to_micros(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _from_json(spec: FieldSpec, value: Any) -> Any:
    if spec.type is FieldType.TIMESTAMP:
        return from_micros(int(value))
    if spec.type is FieldType.DATE:
        return dt.date.fromisoformat(value)
    if spec.type is FieldType.DECIMAL:
        return Decimal(value)
    return value


class RecentRows:
    """Rows written at or after the checkpoint, which the next poll reads again.

    Only an optimisation: a row read again unchanged is not written again. Bounded: past the
    limit it forgets everything (the price is rewriting, which ``FINAL`` collapses).
    """

    def __init__(self, limit: int = _RECENT_ROWS_LIMIT) -> None:
        """Remember at most ``limit`` rows."""
        self._rows: dict[Key, tuple[int, tuple[Any, ...]]] = {}
        self._limit = limit

    def unchanged(self, key: Key, row: tuple[Any, ...]) -> bool:
        """Whether exactly this row was written for ``key`` and is still remembered."""
        seen = self._rows.get(key)
        return seen is not None and seen[1] == row

    def remember(self, key: Key, watermark_us: int, row: tuple[Any, ...]) -> None:
        """``row`` was written for ``key``."""
        if len(self._rows) >= self._limit:
            self._rows.clear()
        self._rows[key] = (watermark_us, row)

    def forget(self, key: Key) -> None:
        """``key`` got a tombstone."""
        self._rows.pop(key, None)

    def prune(self, checkpoint: Checkpoint) -> None:
        """Drop rows the next poll will not read again."""
        self._rows = {k: v for k, v in self._rows.items() if v[0] >= checkpoint.watermark_us}

    def __len__(self) -> int:
        """Rows remembered."""
        return len(self._rows)


@dataclass
class TableState:
    """What the loader knows and reports about one replica table."""

    model: Model
    checkpoint: Checkpoint = START
    rows_read: int = 0
    rows_written: int = 0
    tombstones: int = 0
    polls: int = 0
    last_sync_at: dt.datetime | None = None
    state: str = "streaming"
    last_error: str = ""
    retry_at: float = 0.0
    retry_delay: float = 0.0
    recent: RecentRows = field(default_factory=RecentRows)
    _rate_start: float = field(default_factory=time.monotonic)
    _rate_rows: int = 0

    def note_poll(self, read: int, written: int) -> None:
        """A poll read ``read`` rows and wrote ``written`` of them."""
        self.polls += 1
        self.rows_read += read
        self.rows_written += written
        self._rate_rows += written

    def rate(self) -> float:
        """Rows written per second since the last call."""
        now = time.monotonic()
        elapsed = now - self._rate_start
        rate = self._rate_rows / elapsed if elapsed > 0 else 0.0
        self._rate_start, self._rate_rows = now, 0
        return rate


class IncrementalLoader:
    """Keeps the catalog's replicas equal to the PostgreSQL tables by polling a watermark."""

    def __init__(self, settings: Settings, catalog: Catalog, sink: ReplicaSink) -> None:
        """Prepare per-table state; models without a watermark column are skipped (logged)."""
        if settings.source_database_url is None:
            raise ValueError("set ANALYTICS_SOURCE_DATABASE_URL to run the incremental loader")
        self._dsn = settings.source_database_url.get_secret_value()
        self._settings = settings
        self._catalog = catalog
        self._sink = sink
        self._pool: Any = None
        self._revision = 0
        self._last_reconcile = time.monotonic()
        self.tables: dict[str, TableState] = {}
        for model in catalog.replicated_models():
            if model.watermark_column is None:
                log.warning(
                    "model has no watermark column; the incremental loader skips it "
                    "(add a non-nullable timestamp updated_at, or set watermark_column)",
                    model=model.qualified_name,
                )
                continue
            self.tables[model.table] = TableState(model)

    async def start(self) -> None:
        """Create the replica, sync-state and checkpoint tables, connect, read the checkpoints."""
        dialect = await backend_dialect(self._sink)
        for statement in [
            *all_ddl(self._catalog, dialect=dialect),
            checkpoint_ddl(self._catalog.database),
        ]:
            await self._sink.command(statement)
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=2,
            server_settings={"application_name": APPLICATION_NAME, "timezone": "UTC"},
        )
        async with self._pool.acquire() as connection:
            sees_all = await connection.fetchval(
                "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') "
                "OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            )
        if not sees_all:
            log.warning(
                "the loader's role cannot see other roles' open transactions (grant it "
                "pg_read_all_stats): only ANALYTICS_LOADER_LOOKBACK_SECONDS protects rows "
                "committed late",
                lookback_seconds=self._settings.loader_lookback_seconds,
            )
        await self._read_checkpoints()
        log.info(
            "incremental loader started",
            tables={t: _describe(s.checkpoint) for t, s in self.tables.items()},
        )

    async def close(self) -> None:
        """Close the PostgreSQL connections."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def run(self, stop: asyncio.Event) -> None:
        """Poll (and reconcile) until ``stop`` is set; retry the start while PostgreSQL is down."""
        delay = 0.2
        while not stop.is_set():
            try:
                await self.start()
                break
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                AnalyticsError,
            ) as error:
                await self.close()
                log.warning("loader cannot start; retrying", error=str(error), retry_in=delay)
                await _sleep_unless(stop, delay)
                delay = min(delay * 2, self._settings.cdc_retry_max_seconds)
        try:
            while not stop.is_set():
                started = time.monotonic()
                await self.poll_once(stop)
                every = self._settings.loader_reconcile_seconds
                if every and time.monotonic() - self._last_reconcile >= every:
                    await self.reconcile_once()
                await self.report()
                await _sleep_unless(
                    stop, self._settings.loader_poll_seconds - (time.monotonic() - started)
                )
        finally:
            await self.close()
            log.info("incremental loader stopped")

    async def poll_once(self, stop: asyncio.Event | None = None) -> None:
        """Poll every table that is not waiting for a retry; a failure backs that table off."""
        for state in self.tables.values():
            if time.monotonic() < state.retry_at:
                continue
            await self._guarded(state, self._poll(state, stop))

    async def reconcile_once(self) -> None:
        """Tombstone the replica keys that are gone from the source, table by table."""
        self._last_reconcile = time.monotonic()
        for state in self.tables.values():
            if time.monotonic() < state.retry_at:
                continue
            await self._guarded(state, self._reconcile(state))

    async def _guarded(self, state: TableState, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            await self._failed(state, str(error))
        except AnalyticsError as error:
            await self._failed(state, error.message)
        else:
            state.retry_delay = 0.0
            if state.state == "error":
                state.state, state.last_error = "streaming", ""

    async def _failed(self, state: TableState, message: str) -> None:
        """Back the table off; it resumes from its persisted checkpoint, so nothing is lost."""
        state.retry_delay = min(
            max(state.retry_delay * 2, 0.2), self._settings.cdc_retry_max_seconds
        )
        state.retry_at = time.monotonic() + state.retry_delay
        state.state, state.last_error = "error", message[:500]
        log.warning(
            "loader failed; retrying from the checkpoint",
            table=state.model.table,
            error=message[:500],
            retry_in_seconds=state.retry_delay,
        )
        await self.report()

    async def _poll(self, state: TableState, stop: asyncio.Event | None) -> None:
        model = state.model
        read = written = 0
        layout = _Layout.of(model)
        async with self._pool.acquire() as connection:
            horizon_us = await self._horizon(connection)
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                snapshot_at, version = await _snapshot(connection)
                cursor = state.checkpoint
                while True:
                    rows = await connection.fetch(*self._select(model, cursor))
                    read += len(rows)
                    batch = [_Row.of(layout, record) for record in rows]
                    fresh = [r for r in batch if not state.recent.unchanged(r.key, r.values)]
                    if fresh:
                        await self._sink.insert_arrow(
                            self._catalog.database,
                            model.table,
                            _arrow(model, [r.values for r in fresh], version),
                        )
                        for row in fresh:
                            state.recent.remember(row.key, row.watermark_us, row.values)
                        written += len(fresh)
                    complete = len(rows) < self._settings.loader_batch_rows
                    if rows:
                        cursor = batch[-1].position
                    checkpoint = advance(state.checkpoint, None if complete else cursor, horizon_us)
                    if rows and checkpoint != state.checkpoint:
                        await self._save_checkpoint(state, checkpoint, state.rows_written + written)
                    # Without rows there is nothing a restart could miss: keep it in memory only.
                    state.checkpoint = checkpoint
                    if complete or (stop is not None and stop.is_set()):
                        break
        state.recent.prune(state.checkpoint)
        state.note_poll(read, written)
        if complete:
            state.last_sync_at = snapshot_at
        if written:
            log.info(
                "loader rows written",
                table=model.table,
                rows=written,
                read=read,
                checkpoint=_describe(state.checkpoint),
            )

    def _select(self, model: Model, cursor: Checkpoint) -> tuple[Any, ...]:
        """The batch query after ``cursor`` and its arguments."""
        order = [model.watermark_column or "", model.tenant_column, *model.primary_key]
        moment = from_micros(cursor.watermark_us)
        if cursor.after_key is None:
            where, arguments = f'"{order[0]}" >= $1', [moment]
        else:
            positions = ", ".join(f"${i + 1}" for i in range(len(order)))
            where = f"({_quoted(order)}) > ({positions})"
            arguments = [moment, *cursor.after_key]
        sql = (
            f"SELECT {_source_columns(model, [model.tenant_column, *model.fields])}, "  # noqa: S608
            f'"{order[0]}" AS _watermark FROM {_source_table(model)} WHERE {where} '
            f"ORDER BY {_quoted(order)} LIMIT ${len(arguments) + 1}"
        )
        return (sql, *arguments, self._settings.loader_batch_rows)

    async def _horizon(self, connection: Any) -> int:
        """The commit horizon in microseconds, read before the poll's snapshot is taken."""
        row = await connection.fetchrow(
            "SELECT statement_timestamp() AS started, ("
            "  SELECT min(xact_start) FROM pg_stat_activity"
            "  WHERE datname = current_database() AND pid <> pg_backend_pid()"
            "    AND backend_type = 'client backend' AND application_name <> $1"
            ") AS oldest",
            APPLICATION_NAME,
        )
        lookback = dt.timedelta(seconds=self._settings.loader_lookback_seconds)
        horizon = row["started"] - lookback
        if row["oldest"] is not None:
            horizon = min(horizon, row["oldest"])
        return to_micros(horizon)

    async def _reconcile(self, state: TableState) -> None:
        model = state.model
        database = self._catalog.database
        removed = 0
        async with (
            self._pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            _, version = await _snapshot(connection)
            tenants = await self._sink.query_rows(
                f"SELECT DISTINCT `{model.tenant_column}` AS tenant "  # noqa: S608
                f"FROM `{database}`.`{model.table}` FINAL WHERE _is_deleted = 0"
            )
            for tenant in sorted(str(t["tenant"]) for t in tenants):
                after: Key | None = None
                while True:
                    keys = await self._replica_keys(model, tenant, after)
                    if not keys:
                        break
                    present = await self._source_keys(connection, model, tenant, keys)
                    gone = [k for k in keys if k not in present]
                    if gone:
                        await self._sink.insert_arrow(
                            database, model.table, _tombstones(model, gone, version)
                        )
                        for key in gone:
                            state.recent.forget(key)
                        removed += len(gone)
                    after = keys[-1]
        state.tombstones += removed
        if removed:
            log.info("loader tombstoned hard-deleted rows", table=model.table, rows=removed)

    async def _replica_keys(self, model: Model, tenant: str, after: Key | None) -> list[Key]:
        """Up to a chunk of live replica keys of ``tenant`` after ``after``, in key order."""
        specs = [model.fields[c] for c in model.primary_key]
        selected = ", ".join(
            f"toString(`{s.name}`) AS `{s.name}`" if s.type is FieldType.UUID else f"`{s.name}`"
            for s in specs
        )
        parameters = {"tenant": encode_text_parameter(tenant)}
        where = f"`{model.tenant_column}` = {{tenant:String}} AND _is_deleted = 0"
        if after is not None:
            bounds = []
            for index, (spec, value) in enumerate(zip(specs, after[1:], strict=True)):
                parameters[f"k{index}"] = encode_text_parameter(_parameter_text(value))
                bounds.append(f"{{k{index}:{spec.parameter_type}}}")
            columns = ", ".join(f"`{s.name}`" for s in specs)
            where += f" AND ({columns}) > ({', '.join(bounds)})"
        order = ", ".join(f"`{s.name}`" for s in specs)
        rows = await self._sink.query_rows(
            f"SELECT {selected} FROM `{self._catalog.database}`.`{model.table}` FINAL "  # noqa: S608
            f"WHERE {where} ORDER BY {order} LIMIT {_RECONCILE_CHUNK}",
            parameters,
        )
        return [(tenant, *(_stored_key_value(s, row[s.name]) for s in specs)) for row in rows]

    async def _source_keys(
        self, connection: Any, model: Model, tenant: str, keys: Sequence[Key]
    ) -> set[Key]:
        """The keys of ``tenant`` the source holds between the first and last of ``keys``."""
        specs = [model.fields[c] for c in model.primary_key]
        width = len(specs)
        low = ", ".join(f"${2 + i}" for i in range(width))
        high = ", ".join(f"${2 + width + i}" for i in range(width))
        rows = await connection.fetch(
            f"SELECT {_source_columns(model, model.primary_key)} "  # noqa: S608
            f"FROM {_source_table(model)} "
            f'WHERE "{model.tenant_column}" = $1 '
            f"AND ({_quoted(model.primary_key)}) >= ({low}) "
            f"AND ({_quoted(model.primary_key)}) <= ({high})",
            tenant,
            *keys[0][1:],
            *keys[-1][1:],
        )
        return {(tenant, *record) for record in rows}

    async def report(self) -> None:
        """Write every table's state to the sync-state table (source ``loader``)."""
        reported_at = dt.datetime.now(dt.UTC)
        rows = [
            {
                "table_name": table,
                "source": "loader",
                "last_sync_at": state.last_sync_at or _EPOCH,
                "updated_at": reported_at,
                "state": state.state,
                "pending_events": 0,
                "events_per_second": state.rate(),
                "events_applied": state.rows_written + state.tombstones,
                "last_error": state.last_error,
            }
            for table, state in self.tables.items()
            if state.last_sync_at is not None or state.last_error
        ]
        await report_sync_state(self._sink, self._catalog.database, rows)

    async def _read_checkpoints(self) -> None:
        rows = await self._sink.query_rows(
            "SELECT table_name, argMax(watermark_column, revision) AS w_column, "  # noqa: S608
            "argMax(watermark_us, revision) AS w_us, argMax(after_key, revision) AS w_key, "
            "max(revision) AS latest "
            f"FROM `{self._catalog.database}`.`{CHECKPOINT_TABLE}` GROUP BY table_name"
        )
        for row in rows:
            self._revision = max(self._revision, int(row["latest"]))
            state = self.tables.get(row["table_name"])
            if state is None:
                continue
            if row["w_column"] != state.model.watermark_column:
                log.warning(
                    "the watermark column changed; loading the table from the start",
                    table=state.model.table,
                    was=row["w_column"],
                )
                continue
            after = decode_key(state.model, row["w_key"]) if row["w_key"] else None
            state.checkpoint = Checkpoint(int(row["w_us"]), after)

    async def _save_checkpoint(self, state: TableState, checkpoint: Checkpoint, rows: int) -> None:
        """Persist ``checkpoint``: called after the rows it covers are written."""
        # Newest wins by revision: a clock that steps back must not resurrect an old checkpoint.
        self._revision = max(self._revision + 1, time.time_ns())
        data = pa.table(
            {
                "table_name": pa.array([state.model.table], pa.string()),
                "watermark_column": pa.array([state.model.watermark_column], pa.string()),
                "watermark_us": pa.array([checkpoint.watermark_us], pa.int64()),
                "after_key": pa.array(
                    [encode_key(checkpoint.after_key) if checkpoint.after_key else ""], pa.string()
                ),
                "rows_loaded": pa.array([rows], pa.int64()),
                "revision": pa.array([self._revision], pa.uint64()),
            }
        )
        await self._sink.insert_arrow(self._catalog.database, CHECKPOINT_TABLE, data)


async def run_loader(
    settings: Settings, catalog: Catalog, sink: ReplicaSink, stop: asyncio.Event
) -> None:
    """Run the incremental loader until ``stop`` is set (``analytics loader`` and ``serve``)."""
    await IncrementalLoader(settings, catalog, sink).run(stop)


async def _snapshot(connection: Any) -> tuple[dt.datetime, int]:
    """The snapshot's start time and the version of rows read in it (first statement of it)."""
    row = await connection.fetchrow(
        "SELECT now() AS at, (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS lsn"
    )
    return row["at"], snapshot_version(int(row["lsn"]))


@dataclass(frozen=True)
class _Layout:
    """Where a fetched record holds what: tenant, the fields, then the raw watermark."""

    width: int
    key_at: tuple[int, ...]

    @classmethod
    def of(cls, model: Model) -> _Layout:
        """The layout of ``model``'s batch query."""
        names = list(model.fields)
        key_at = (0, *(1 + names.index(c) for c in model.primary_key))
        return cls(1 + len(names), key_at)


@dataclass(frozen=True)
class _Row:
    """One source row in the replica's form, with its key and position."""

    key: Key
    watermark_us: int
    values: tuple[Any, ...]

    @property
    def position(self) -> Checkpoint:
        """Where the row sits in the read order."""
        return Checkpoint(self.watermark_us, self.key)

    @classmethod
    def of(cls, layout: _Layout, record: Sequence[Any]) -> _Row:
        """Split a fetched record."""
        values = tuple(record)
        # The unclamped watermark: positions must be the ones the batch query compares.
        return cls(
            tuple(values[i] for i in layout.key_at),
            to_micros(values[layout.width]),
            values[: layout.width],
        )


def _quoted(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def _source_table(model: Model) -> str:
    schema, table = model.source.split(".")
    return f'"{schema}"."{table}"'


def _source_columns(model: Model, columns: Sequence[str]) -> str:
    return ", ".join(
        source_expression(model.fields[c]) if c in model.fields else f'"{c}"' for c in columns
    )


def _arrow(
    model: Model, rows: Sequence[tuple[Any, ...]], version: int, *, deleted: bool = False
) -> pa.Table:
    columns: dict[str, pa.Array] = {
        model.tenant_column: pa.array([r[0] for r in rows], pa.string())
    }
    for index, spec in enumerate(model.fields.values(), start=1):
        columns[spec.name] = pa.array([r[index] for r in rows], arrow_type(spec))
    columns["_version"] = pa.array([version] * len(rows), pa.uint64())
    columns["_is_deleted"] = pa.array([int(deleted)] * len(rows), pa.uint8())
    return pa.table(columns)


def _tombstones(model: Model, keys: Sequence[Key], version: int) -> pa.Table:
    """Delete markers for ``keys``: key columns set, the rest nullable-None or the zero value."""
    positions = {c: i for i, c in enumerate(model.primary_key, start=1)}
    rows = [
        (
            key[0],
            *(
                key[positions[s.name]] if s.name in positions else _tombstone_value(s)
                for s in model.fields.values()
            ),
        )
        for key in keys
    ]
    return _arrow(model, rows, version, deleted=True)


def _tombstone_value(spec: FieldSpec) -> Any:
    return None if spec.nullable else zero_value(spec)


def _parameter_text(value: Any) -> str:
    """A key value as ClickHouse parses a query parameter of the column's type."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _stored_key_value(spec: FieldSpec, value: Any) -> Any:
    """A key value read back from the replica, in the form the source query gives it."""
    if spec.type is FieldType.TIMESTAMP and isinstance(value, dt.datetime) and not value.tzinfo:
        return value.replace(tzinfo=dt.UTC)
    return value


def _describe(checkpoint: Checkpoint) -> str:
    if checkpoint == START:
        return "start"
    at = from_micros(checkpoint.watermark_us).isoformat()
    return at if checkpoint.after_key is None else f"{at} after {checkpoint.after_key}"


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
