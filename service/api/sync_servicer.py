"""SyncService: how fresh each replicated table is, and backfills (admin only).

``StartBackfill`` needs exactly the ``analytics.admin`` permission, as ``TenantService`` does:
a backfill rewrites a whole replica for every tenant. The copy itself is done by a
``BackfillLauncher`` the composition root injects; this module only translates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from google.protobuf import timestamp_pb2

from analytics.v1 import sync_pb2, sync_pb2_grpc
from service import audit
from service.api.interceptors import Context, current_principal
from service.api.status import abort_with_error
from service.auth import ADMIN_PERMISSION, Principal
from service.backends.base import AnalyticsBackend
from service.backfill_jobs import (
    BackfillLauncher,
    BackfillProgress,
    BackfillRequest,
    BackfillState,
    backfills_unavailable,
)
from service.catalog import Catalog, Model
from service.errors import AnalyticsError, forbidden, not_found, validation_error
from service.sync_status import TableStatus, table_statuses

_STATES = {
    "streaming": sync_pb2.SYNC_STATE_STREAMING,
    "lagging": sync_pb2.SYNC_STATE_LAGGING,
    "error": sync_pb2.SYNC_STATE_ERROR,
    "snapshot": sync_pb2.SYNC_STATE_SNAPSHOT,
    "stale": sync_pb2.SYNC_STATE_STALE,
    "idle": sync_pb2.SYNC_STATE_IDLE,
}
_BACKFILL_STATES = {
    BackfillState.RUNNING: sync_pb2.BACKFILL_STATE_RUNNING,
    BackfillState.DONE: sync_pb2.BACKFILL_STATE_DONE,
    BackfillState.CANCELLED: sync_pb2.BACKFILL_STATE_CANCELLED,
    BackfillState.FAILED: sync_pb2.BACKFILL_STATE_FAILED,
}
DEFAULT_WATCH_INTERVAL = 2.0
MIN_WATCH_INTERVAL = 0.2
MAX_WATCH_INTERVAL = 300.0
#: A watcher hears from the server at least this often, changed or not (so it can tell a quiet
#: table from a dead connection).
WATCH_KEEPALIVE_SECONDS = 30.0


class SyncServicer(sync_pb2_grpc.SyncServiceServicer):
    """GetSyncStatus and WatchSyncStatus over the models the caller may read; StartBackfill."""

    def __init__(
        self,
        catalog: Catalog,
        backend: AnalyticsBackend,
        backfills: BackfillLauncher | None = None,
    ) -> None:
        """Report on ``catalog``'s tables as stored in ``backend``; backfill with ``backfills``.

        Without a launcher, StartBackfill answers FAILED_PRECONDITION.
        """
        self._catalog = catalog
        self._backend = backend
        self._backfills = backfills

    async def GetSyncStatus(  # noqa: N802 (the generated base class names it)
        self, request: sync_pb2.GetSyncStatusRequest, context: Context
    ) -> sync_pb2.GetSyncStatusResponse:
        """One entry per requested (or readable) model."""
        try:
            tables = await self._tables(list(request.models))
        except AnalyticsError as error:
            await abort_with_error(context, error)
        return sync_pb2.GetSyncStatusResponse(tables=tables)

    async def WatchSyncStatus(  # noqa: N802 (the generated base class names it)
        self, request: sync_pb2.WatchSyncStatusRequest, context: Context
    ) -> AsyncIterator[sync_pb2.WatchSyncStatusResponse]:
        """The statuses now, then whenever they change, until the caller cancels."""
        try:
            interval = _watch_interval(request.interval_seconds)
            models = list(request.models)
            tables = await self._tables(models)
        except AnalyticsError as error:
            await abort_with_error(context, error)
        sent = _fingerprint(tables)
        sent_at = time.monotonic()
        yield sync_pb2.WatchSyncStatusResponse(tables=tables)
        while True:
            await asyncio.sleep(interval)
            try:
                tables = await self._tables(models)
            except AnalyticsError as error:
                await abort_with_error(context, error)
            current = _fingerprint(tables)
            if current != sent or time.monotonic() - sent_at >= WATCH_KEEPALIVE_SECONDS:
                sent, sent_at = current, time.monotonic()
                yield sync_pb2.WatchSyncStatusResponse(tables=tables)

    async def StartBackfill(  # noqa: N802 (the generated base class names it)
        self, request: sync_pb2.StartBackfillRequest, context: Context
    ) -> AsyncIterator[sync_pb2.StartBackfillResponse]:
        """Copy the model's table from PostgreSQL, streaming progress until it ends."""
        started = time.perf_counter()
        principal = current_principal.get()
        model_name = request.model[:200]
        outcome, reason = "ok", ""
        try:
            try:
                _require_admin(principal)
                model = self._model(request.model, "model")
                if self._backfills is None:
                    raise backfills_unavailable()
                backfill = BackfillRequest.validated(
                    model,
                    parallelism=request.parallelism,
                    batch_rows=request.batch_rows,
                    resume=request.resume,
                )
                async with aclosing(self._backfills.run(backfill)) as progress:
                    async for record in progress:
                        if record.state is BackfillState.CANCELLED:
                            outcome = "cancelled"
                        yield _progress_message(record)
            except AnalyticsError as error:
                outcome, reason = error.kind.value, error.reason
                await abort_with_error(context, error)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            audit.record_query(
                tenant=principal.tenant,
                subject=principal.subject,
                model=model_name,
                rpc="SyncService/StartBackfill",
                outcome=outcome,
                reason=reason,
                duration_ms=(time.perf_counter() - started) * 1000,
            )

    async def _tables(self, names: list[str]) -> list[sync_pb2.TableSyncStatus]:
        principal = current_principal.get()
        if names:
            models = [self._model(name, "models") for name in names]
        else:
            models = list(self._catalog.models.values())
        models = [m for m in models if principal.has_permission(m.read_permission)]
        statuses = await table_statuses(self._backend, self._catalog, models)
        return [_message(s) for s in statuses]

    def _model(self, name: str, field_name: str) -> Model:
        found = self._catalog.find(name)
        if len(found) != 1:
            raise not_found(f"{field_name}: unknown model {name[:200]!r}", model=name[:200])
        return found[0]


def _require_admin(principal: Principal) -> None:
    """Exactly ``analytics.admin``: wildcard read grants never confer it."""
    if ADMIN_PERMISSION not in principal.permissions:
        raise forbidden(
            f"running a backfill requires the {ADMIN_PERMISSION!r} permission", ADMIN_PERMISSION
        )


def _watch_interval(seconds: float) -> float:
    if not seconds:
        return DEFAULT_WATCH_INTERVAL
    if not MIN_WATCH_INTERVAL <= seconds <= MAX_WATCH_INTERVAL:
        raise validation_error(
            "intervalSeconds",
            f"intervalSeconds must be between {MIN_WATCH_INTERVAL} and {MAX_WATCH_INTERVAL}",
        )
    return seconds


def _fingerprint(tables: list[sync_pb2.TableSyncStatus]) -> list[bytes]:
    """What a watcher cares about: everything but the lag and report time, which always move."""
    prints = []
    for table in tables:
        copy = sync_pb2.TableSyncStatus()
        copy.CopyFrom(table)
        copy.ClearField("lag_seconds")
        copy.ClearField("reported_at")
        prints.append(copy.SerializeToString(deterministic=True))
    return prints


def _progress_message(record: BackfillProgress) -> sync_pb2.StartBackfillResponse:
    return sync_pb2.StartBackfillResponse(
        model=record.model,
        backfill_id=record.backfill_id,
        rows_copied=record.rows_copied,
        rows_total=record.rows_total,
        rows_per_second=record.rows_per_second,
        percent=record.percent,
        eta_seconds=record.eta_seconds,
        state=_BACKFILL_STATES[record.state],
        resumed=record.resumed,
        ranges_done=record.ranges_done,
        ranges_total=record.ranges_total,
        rows_removed=record.rows_removed,
        error=record.error,
    )


def _message(status: TableStatus) -> sync_pb2.TableSyncStatus:
    message = sync_pb2.TableSyncStatus(
        model=status.model.qualified_name,
        table=status.model.table,
        source=status.source,
        lag_seconds=status.lag_seconds,
        pending_events=status.pending_events,
        events_per_second=status.events_per_second,
        events_applied=status.events_applied,
        state=_STATES.get(status.state, sync_pb2.SYNC_STATE_UNSPECIFIED),
        last_error=status.last_error,
        rows=status.rows,
        backfill_rows_copied=status.backfill_rows_copied,
        backfill_rows_total=status.backfill_rows_total,
    )
    if status.last_sync_at is not None:
        message.last_sync_at.CopyFrom(_timestamp(status.last_sync_at))
    if status.reported_at is not None:
        message.reported_at.CopyFrom(_timestamp(status.reported_at))
    return message


def _timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(dt.UTC))
    return stamp
