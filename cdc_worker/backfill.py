"""Backfills: copy a PostgreSQL table into its ClickHouse replica while replication runs.

``BackfillRunner`` is the ``service.backfill_jobs.BackfillLauncher`` the composition root hands
to the server (and the ``analytics backfill`` command uses). One ``TableBackfill`` per run:

1. **Plan.** One REPEATABLE READ transaction exports its snapshot (``pg_export_snapshot``) and
   reads, inside it, the WAL position (``pg_current_wal_lsn``), the snapshot's transaction
   horizon, the smallest and largest key and a row estimate. The keys are split into
   ``4 x parallelism`` ranges; the plan and every range go to the checkpoint table.
2. **Copy.** ``parallelism`` workers, each a connection that imports the exported snapshot, take
   ranges from a queue and copy each in key order, one page of ``batch_rows`` rows at a time
   (``cdc_worker.backfill_plan``): read, convert to Arrow, insert, then checkpoint the next key.
   Memory holds about one page per worker. The versions (``2 * lsn``, see the plan module) put
   the copy below every change committed after the snapshot, which CDC writes with higher
   versions, so FINAL keeps the newest value whichever lands first.
3. **Remove.** A replica row the snapshot does not have survives the copy with a version below
   the snapshot's (every copied row got at least that). Those live rows are read back, checked
   against PostgreSQL as it is now (a key inserted since is left to CDC), and the rest get a
   tombstone at their own version + 1: enough to hide that row, and below any later change of
   the key, which CDC versions above the row's earlier life.

**Resume.** A run with ``resume`` continues the table's latest unfinished backfill: finished
ranges are skipped and the others continue from their checkpointed next key in a new snapshot,
with that snapshot's (higher) version. Each row is still copied as of one snapshot with that
snapshot's version, which is all the argument above needs; rows copied before the crash keep
their older, lower version, so any change since then (replicated by CDC) still wins.

**Cancel.** Cancelling the run cancels the readers, waits for inserts already sent (so nothing
lands after the run ends), and records the backfill as cancelled; the checkpoints never point
past what was inserted, so a resume re-reads at most one page per range.

Only one backfill of a table runs in a process at a time; two processes backfilling the same
table would both be correct row by row, but waste the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pyarrow as pa
import structlog

from cdc_worker.backfill_plan import (
    KeyRange,
    SnapshotInfo,
    UnsupportedKeyError,
    backfill_key,
    checked_snapshot_id,
    page_sql,
    page_table,
    quoted_source,
    split_key_range,
    tombstone_table,
)
from service.backends.base import AnalyticsBackend
from service.backends.dialect import backend_dialect
from service.backfill_jobs import (
    BackfillProgress,
    BackfillRequest,
    BackfillState,
    precondition_failed,
)
from service.catalog import Catalog, Model
from service.errors import AnalyticsError, ErrorKind
from service.schema import (
    BACKFILL_CHECKPOINTS_TABLE,
    SYNC_STATE_TABLE,
    backfill_checkpoint_table,
    backfill_checkpoints_ddl,
    database_ddl,
    replica_table_ddl,
    sync_state_ddl,
    sync_state_table,
)
from service.settings import Settings

log = structlog.get_logger(__name__)
RANGES_PER_WORKER = 4
PROGRESS_SECONDS = 0.5
STATE_REPORT_SECONDS = 1.0
REMOVAL_PAGE_ROWS = 10_000
JOB_RANGE = -1


@dataclass
class RangeProgress:
    """One key range and how far it is copied."""

    key_range: KeyRange
    next_key: int
    rows_copied: int
    snapshot_lsn: int
    done: bool = False


@dataclass
class _Run:
    """The counters of one run, read by the progress reports."""

    backfill_id: str = ""
    resumed: bool = False
    rows_total: int = 0
    ranges: list[RangeProgress] = field(default_factory=list)
    copied_here: int = 0
    removed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rows_copied(self) -> int:
        return sum(r.rows_copied for r in self.ranges)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.copied_here / elapsed if elapsed > 0 else 0.0


class BackfillRunner:
    """Runs backfills of a catalog's tables from the source database into ``backend``."""

    def __init__(self, settings: Settings, catalog: Catalog, backend: AnalyticsBackend) -> None:
        """Read from ``settings.source_database_url``; write to ``backend``."""
        url = settings.source_database_url
        self._dsn = url.get_secret_value() if url is not None else None
        self._catalog = catalog
        self._backend = backend
        self._running: set[str] = set()

    async def run(self, request: BackfillRequest) -> AsyncGenerator[BackfillProgress, None]:
        """Copy ``request.model``'s table; see ``service.backfill_jobs.BackfillLauncher``."""
        model = request.model
        if self._dsn is None:
            raise precondition_failed(
                "backfills read the source database: set ANALYTICS_SOURCE_DATABASE_URL "
                "(source_database_url)",
                "SOURCE_DATABASE_NOT_CONFIGURED",
                setting="source_database_url",
            )
        try:
            backfill_key(model)
        except UnsupportedKeyError as exc:
            raise precondition_failed(
                str(exc), "UNSUPPORTED_KEY", model=model.qualified_name
            ) from exc
        if model.table in self._running:
            raise precondition_failed(
                f"a backfill of {model.qualified_name!r} is already running",
                "BACKFILL_RUNNING",
                model=model.qualified_name,
            )
        self._running.add(model.table)
        job = TableBackfill(self._dsn, self._catalog, self._backend, request)
        task = asyncio.create_task(job.run())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=PROGRESS_SECONDS)
                if not task.done() and job.planned:
                    yield job.progress(BackfillState.RUNNING)
            error = task.exception()
            if error is None:
                yield job.progress(BackfillState.DONE)
                return
            failure = _as_analytics_error(error)
            if job.planned:
                yield job.progress(BackfillState.FAILED, failure.message)
            raise failure from error
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._running.discard(model.table)


class TableBackfill:
    """One run of a backfill of one table."""

    def __init__(
        self, dsn: str, catalog: Catalog, backend: AnalyticsBackend, request: BackfillRequest
    ) -> None:
        """Prepare a run; ``run`` does it."""
        self._dsn = dsn
        self._catalog = catalog
        self._backend = backend
        self._request = request
        self._model: Model = request.model
        self._state = _Run()
        self._inflight: set[asyncio.Future[int]] = set()
        self._last_stamp = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._snapshot_time: dt.datetime | None = None
        self.planned = False

    def progress(self, state: BackfillState, error: str = "") -> BackfillProgress:
        """The run's progress now."""
        run = self._state
        return BackfillProgress(
            model=self._model.qualified_name,
            backfill_id=run.backfill_id,
            state=state,
            rows_copied=run.rows_copied,
            rows_total=max(run.rows_total, run.rows_copied),
            rows_per_second=run.rate,
            resumed=run.resumed,
            ranges_done=sum(1 for r in run.ranges if r.done),
            ranges_total=len(run.ranges),
            rows_removed=run.removed,
            error=error,
        )

    async def run(self) -> None:
        """Plan (or resume), copy every range, remove what the source no longer has."""
        await self._prepare_tables()
        connections: list[Any] = []
        reporter: asyncio.Task[None] | None = None
        outcome = "failed"
        error = ""
        try:
            coordinator = await self._connect()
            connections.append(coordinator)
            async with coordinator.transaction(isolation="repeatable_read", readonly=True):
                snapshot_id, snapshot = await self._open_snapshot(coordinator)
                await self._plan(coordinator, snapshot)
                self.planned = True
                reporter = asyncio.create_task(self._report_loop())
                pending: asyncio.Queue[RangeProgress] = asyncio.Queue()
                for progress in self._state.ranges:
                    if not progress.done:
                        pending.put_nowait(progress)
                workers = min(self._request.parallelism, pending.qsize())
                connections += [await self._connect() for _ in range(workers)]
                async with asyncio.TaskGroup() as group:
                    for connection in connections[1:]:
                        group.create_task(self._copy(connection, snapshot_id, snapshot, pending))
            await self._remove_missing(coordinator)
            outcome = "done"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except BaseException as exc:
            error = str(_as_analytics_error(exc).message)
            raise
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            # Inserts already handed to the engine finish before the run ends, so nothing lands
            # after a cancelled call returns.
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            for connection in connections:
                try:
                    await asyncio.wait_for(connection.close(), 5)
                except (OSError, TimeoutError, asyncpg.InterfaceError):
                    connection.terminate()
            if self.planned:
                await self._finish(outcome, error)

    async def _connect(self) -> Any:
        try:
            # Shortest exact float text, whatever the server's default.
            return await asyncpg.connect(self._dsn, server_settings={"extra_float_digits": "1"})
        except (OSError, asyncpg.PostgresError) as exc:
            raise AnalyticsError(
                ErrorKind.UNAVAILABLE,
                "the source database is unreachable",
                "SOURCE_UNAVAILABLE",
                metadata={"detail": str(exc)[:500]},
            ) from exc

    async def _open_snapshot(self, coordinator: Any) -> tuple[str, SnapshotInfo]:
        row = await coordinator.fetchrow(
            "SELECT pg_export_snapshot() AS id, "
            "(pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS lsn, now() AS at, "
            "txid_snapshot_xmax(txid_current_snapshot()) AS xmax, "
            "ARRAY(SELECT txid_snapshot_xip(txid_current_snapshot())) AS xip"
        )
        self._snapshot_time = row["at"]
        info = SnapshotInfo(int(row["lsn"]), int(row["xmax"]), tuple(int(x) for x in row["xip"]))
        return checked_snapshot_id(str(row["id"])), info

    async def _plan(self, coordinator: Any, snapshot: SnapshotInfo) -> None:
        """Resume the latest unfinished backfill of the table, or plan a new one."""
        run = self._state
        source = quoted_source(self._model)
        key = backfill_key(self._model)
        estimate = await coordinator.fetchval(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass", source
        )
        if not estimate or estimate <= 0:
            estimate = await coordinator.fetchval(f"SELECT count(*) FROM {source}")  # noqa: S608
        run.rows_total = int(estimate)
        if self._request.resume:
            resumed = await self._unfinished()
            if resumed is not None:
                run.backfill_id, run.ranges = resumed
                run.resumed = True
                await self._checkpoint_job("running")
                log.info(
                    "backfill resumed",
                    model=self._model.qualified_name,
                    backfill_id=run.backfill_id,
                    ranges_left=sum(1 for r in run.ranges if not r.done),
                )
                return
        bounds = await coordinator.fetchrow(
            f'SELECT min("{key}") AS low, max("{key}") AS high FROM {source}'  # noqa: S608
        )
        run.backfill_id = uuid.uuid4().hex[:16]
        if bounds["low"] is not None:
            parts = self._request.parallelism * RANGES_PER_WORKER
            run.ranges = [
                RangeProgress(r, r.start, 0, snapshot.lsn)
                for r in split_key_range(int(bounds["low"]), int(bounds["high"]), parts)
            ]
        await self._checkpoint_job("running")
        if run.ranges:
            await self._checkpoint(*run.ranges)
        log.info(
            "backfill started",
            model=self._model.qualified_name,
            backfill_id=run.backfill_id,
            ranges=len(run.ranges),
            rows_estimate=run.rows_total,
            snapshot_lsn=snapshot.lsn,
        )

    async def _unfinished(self) -> tuple[str, list[RangeProgress]] | None:
        rows = await self._backend.query_rows(
            "SELECT backfill_id, range_index, range_start, range_end, next_key, rows_copied, "  # noqa: S608
            "snapshot_lsn, state FROM "
            f"`{self._catalog.database}`.`{BACKFILL_CHECKPOINTS_TABLE}` FINAL "
            "WHERE table_name = {table:String} ORDER BY updated_at",
            {"table": self._model.table},
        )
        jobs = [r for r in rows if r["range_index"] == JOB_RANGE]
        if not jobs or jobs[-1]["state"] == "done":
            return None
        backfill_id = str(jobs[-1]["backfill_id"])
        ranges = sorted(
            (r for r in rows if r["backfill_id"] == backfill_id and r["range_index"] != JOB_RANGE),
            key=lambda r: int(r["range_index"]),
        )
        return backfill_id, [
            RangeProgress(
                KeyRange(int(r["range_index"]), int(r["range_start"]), int(r["range_end"])),
                next_key=int(r["next_key"]),
                rows_copied=int(r["rows_copied"]),
                snapshot_lsn=int(r["snapshot_lsn"]),
                done=r["state"] == "done",
            )
            for r in ranges
        ]

    async def _copy(
        self,
        connection: Any,
        snapshot_id: str,
        snapshot: SnapshotInfo,
        pending: asyncio.Queue[RangeProgress],
    ) -> None:
        """Copy ranges from the queue, page by page, in the exported snapshot.

        No rollback when an error or a cancel leaves early: a page read may still be running on
        the connection (asyncpg then refuses the ROLLBACK, and that error would hide the cancel),
        and ``run`` closes the connection, which ends the read-only transaction anyway.
        """
        await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        await connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
        while not pending.empty():
            progress = pending.get_nowait()
            await self._copy_range(connection, snapshot, progress)
        await connection.execute("COMMIT")

    async def _copy_range(
        self, connection: Any, snapshot: SnapshotInfo, progress: RangeProgress
    ) -> None:
        """Copy one range page by page; the next page is read while this one is inserted.

        At most two pages per worker are held: the one being inserted and the one being read.
        """
        limit = self._request.batch_rows
        key = backfill_key(self._model)
        end = progress.key_range.end
        table = await self._read_page(connection, snapshot, progress.next_key, end)
        while True:
            last = int(table.column(key)[-1].as_py()) if table.num_rows else end - 1
            done = table.num_rows < limit or last + 1 >= end
            following = (
                None
                if done
                else asyncio.create_task(self._read_page(connection, snapshot, last + 1, end))
            )
            try:
                if table.num_rows:
                    await self._insert(table)
                    progress.rows_copied += table.num_rows
                    self._state.copied_here += table.num_rows
                    progress.next_key = last + 1
                progress.done = done
                await self._checkpoint(progress)
            except BaseException:
                if following is not None:
                    following.cancel()
                    await asyncio.gather(following, return_exceptions=True)
                raise
            if following is None:
                return
            table = await following

    async def _read_page(
        self, connection: Any, snapshot: SnapshotInfo, next_key: int, end: int
    ) -> pa.Table:
        chunks: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            chunks.append(chunk)

        sql = page_sql(self._model, snapshot, next_key, end, self._request.batch_rows)
        await connection.copy_from_query(sql, output=collect, format="csv")
        return await asyncio.to_thread(page_table, self._model, chunks)

    async def _insert(self, table: pa.Table) -> int:
        """Insert, letting a cancel wait for the engine rather than abandon the insert."""
        insert = asyncio.ensure_future(
            self._backend.insert_arrow(self._catalog.database, self._model.table, table)
        )
        self._inflight.add(insert)
        insert.add_done_callback(self._inflight.discard)
        return await asyncio.shield(insert)

    async def _remove_missing(self, coordinator: Any) -> None:
        """Tombstone live replica rows older than the copy whose key the source lacks."""
        if not self._state.ranges:
            threshold = 2**64 - 1
        else:
            threshold = 2 * min(r.snapshot_lsn for r in self._state.ranges)
        model, key = self._model, backfill_key(self._model)
        tenant = model.tenant_column
        after: tuple[int, str] | None = None
        while True:
            parameters = {"threshold": str(threshold)}
            keyset = ""
            if after is not None:
                keyset = f"AND (`{key}`, `{tenant}`) > ({{k:Int64}}, {{t:String}}) "
                parameters |= {"k": str(after[0]), "t": after[1]}
            rows = await self._backend.query_rows(
                f"SELECT `{tenant}` AS tenant, `{key}` AS key, _version AS version "  # noqa: S608
                f"FROM `{self._catalog.database}`.`{model.table}` FINAL "
                f"WHERE _is_deleted = 0 AND _version < {{threshold:UInt64}} {keyset}"
                f"ORDER BY `{key}`, `{tenant}` LIMIT {REMOVAL_PAGE_ROWS}",
                parameters,
            )
            if not rows:
                return
            after = (int(rows[-1]["key"]), str(rows[-1]["tenant"]))
            present = await coordinator.fetch(
                f'SELECT "{tenant}"::text AS tenant, "{key}" AS key '  # noqa: S608
                f'FROM {quoted_source(model)} WHERE "{key}" = ANY($1::bigint[])',
                [int(r["key"]) for r in rows],
            )
            alive = {(r["tenant"], int(r["key"])) for r in present}
            missing = [
                (str(r["tenant"]), int(r["key"]), int(r["version"]) + 1)
                for r in rows
                if (str(r["tenant"]), int(r["key"])) not in alive
            ]
            if missing:
                await self._insert_tombstones(missing)
            if len(rows) < REMOVAL_PAGE_ROWS:
                return

    async def _insert_tombstones(self, missing: list[tuple[str, int, int]]) -> None:
        table = tombstone_table(self._model, missing)
        insert = asyncio.ensure_future(
            self._backend.insert_arrow(self._catalog.database, self._model.table, table)
        )
        self._inflight.add(insert)
        insert.add_done_callback(self._inflight.discard)
        await asyncio.shield(insert)
        self._state.removed += len(missing)

    async def _prepare_tables(self) -> None:
        dialect = await backend_dialect(self._backend)
        for statement in (
            database_ddl(self._catalog),
            sync_state_ddl(self._catalog, dialect=dialect),
            backfill_checkpoints_ddl(self._catalog, dialect=dialect),
            replica_table_ddl(self._catalog, self._model, dialect=dialect),
        ):
            await self._backend.command(statement)

    def _stamp(self) -> dt.datetime:
        """Now, strictly later than every earlier stamp of this run (the checkpoint version)."""
        now = dt.datetime.now(dt.UTC)
        self._last_stamp = max(now, self._last_stamp + dt.timedelta(microseconds=1))
        return self._last_stamp

    async def _checkpoint(self, *ranges: RangeProgress) -> None:
        await self._write_checkpoints(
            [self._checkpoint_row(r, "done" if r.done else "copying") for r in ranges]
        )

    async def _checkpoint_job(self, state: str, error: str = "") -> None:
        await self._write_checkpoints([self._checkpoint_row(None, state, error)])

    def _checkpoint_row(
        self, progress: RangeProgress | None, state: str, error: str = ""
    ) -> dict[str, Any]:
        """A range's checkpoint, or (``progress`` None) the backfill's own row."""
        row = {
            "table_name": self._model.table,
            "backfill_id": self._state.backfill_id,
            "range_index": JOB_RANGE,
            "range_start": 0,
            "range_end": 0,
            "next_key": 0,
            "rows_copied": self._state.rows_copied,
            "snapshot_lsn": 0,
            "state": state,
            "rows_total": self._state.rows_total,
            "error": error[:500],
            "updated_at": self._stamp(),
        }
        if progress is not None:
            row |= {
                "range_index": progress.key_range.index,
                "range_start": progress.key_range.start,
                "range_end": progress.key_range.end,
                "next_key": progress.next_key,
                "rows_copied": progress.rows_copied,
                "snapshot_lsn": progress.snapshot_lsn,
            }
        return row

    async def _write_checkpoints(self, rows: Sequence[Mapping[str, Any]]) -> None:
        # Shielded like the data: a checkpoint either lands whole or not at all.
        write = asyncio.ensure_future(
            self._backend.insert_arrow(
                self._catalog.database, BACKFILL_CHECKPOINTS_TABLE, backfill_checkpoint_table(rows)
            )
        )
        self._inflight.add(write)
        write.add_done_callback(self._inflight.discard)
        await asyncio.shield(write)

    async def _report_loop(self) -> None:
        while True:
            await self._report("snapshot")
            await asyncio.sleep(STATE_REPORT_SECONDS)

    async def _report(self, state: str, error: str = "") -> None:
        """Write the table's sync state with source ``backfill``.

        ``last_sync_at`` keeps what the table had (query answers keep their freshness while a
        backfill runs); a finished backfill moves it up to the snapshot's time.
        """
        run = self._state
        known = await self._backend.last_sync_at(self._catalog.database, self._model.table)
        last_sync = known or self._snapshot_time or dt.datetime.now(dt.UTC)
        if state == "idle" and self._snapshot_time is not None:
            last_sync = max(last_sync, self._snapshot_time)
        row = {
            "table_name": self._model.table,
            "source": "backfill",
            "last_sync_at": last_sync,
            "updated_at": dt.datetime.now(dt.UTC),
            "state": state,
            "pending_events": max(run.rows_total - run.rows_copied, 0),
            "events_per_second": run.rate,
            "events_applied": run.rows_copied,
            "last_error": error[:500],
        }
        await self._backend.insert_arrow(
            self._catalog.database, SYNC_STATE_TABLE, sync_state_table([row])
        )

    async def _finish(self, outcome: str, error: str) -> None:
        """Record how the run ended, in the checkpoints and the sync state."""
        run = self._state
        if outcome == "cancelled":
            error = (
                f"backfill {run.backfill_id} cancelled at {run.rows_copied} rows; "
                "StartBackfill with resume continues it"
            )
        try:
            await self._checkpoint_job(outcome, error)
            await self._report("idle" if outcome == "done" else "error", error)
        except AnalyticsError as exc:
            log.warning("could not record the end of a backfill", error=exc.message)
        log.info(
            "backfill ended",
            model=self._model.qualified_name,
            backfill_id=run.backfill_id,
            outcome=outcome,
            rows_copied=run.rows_copied,
            rows_copied_here=run.copied_here,
            rows_removed=run.removed,
            rows_per_second=round(run.rate),
        )


def _as_analytics_error(error: BaseException) -> AnalyticsError:
    if isinstance(error, AnalyticsError):
        return error
    if isinstance(error, BaseExceptionGroup):
        first = error.exceptions[0]
        return _as_analytics_error(first)
    if isinstance(error, (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
        return AnalyticsError(
            ErrorKind.UNAVAILABLE,
            f"the source database failed during the backfill: {str(error)[:300]}",
            "SOURCE_UNAVAILABLE",
        )
    if isinstance(error, asyncpg.PostgresError):
        return AnalyticsError(
            ErrorKind.INTERNAL,
            f"the source database refused a backfill query: {str(error)[:300]}",
            "SOURCE_QUERY_FAILED",
        )
    return AnalyticsError(
        ErrorKind.INTERNAL,
        f"the backfill failed: {type(error).__name__}: {str(error)[:300]}",
        "BACKFILL_FAILED",
    )
