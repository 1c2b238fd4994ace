"""SyncService: how fresh each replicated table is."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

from analytics.v1 import sync_pb2, sync_pb2_grpc
from service.api.interceptors import Context, current_principal
from service.api.status import abort_with_error
from service.backends.base import AnalyticsBackend
from service.catalog import Catalog
from service.errors import AnalyticsError, not_found
from service.sync_status import TableStatus, table_statuses

_STATES = {
    "streaming": sync_pb2.SYNC_STATE_STREAMING,
    "lagging": sync_pb2.SYNC_STATE_LAGGING,
    "error": sync_pb2.SYNC_STATE_ERROR,
    "snapshot": sync_pb2.SYNC_STATE_SNAPSHOT,
    "stale": sync_pb2.SYNC_STATE_STALE,
}


class SyncServicer(sync_pb2_grpc.SyncServiceServicer):
    """GetSyncStatus over the models the caller may read."""

    def __init__(self, catalog: Catalog, backend: AnalyticsBackend) -> None:
        """Report on ``catalog``'s tables as stored in ``backend``."""
        self._catalog = catalog
        self._backend = backend

    async def GetSyncStatus(  # noqa: N802 (the generated base class names it)
        self, request: sync_pb2.GetSyncStatusRequest, context: Context
    ) -> sync_pb2.GetSyncStatusResponse:
        """One entry per requested (or readable) model."""
        principal = current_principal.get()
        try:
            if request.models:
                models = []
                for name in request.models:
                    found = self._catalog.find(name)
                    if len(found) != 1:
                        raise not_found(f"models: unknown model {name[:200]!r}", model=name[:200])
                    models.append(found[0])
            else:
                models = list(self._catalog.models.values())
            models = [m for m in models if principal.has_permission(m.read_permission)]
            statuses = await table_statuses(self._backend, self._catalog, models)
        except AnalyticsError as error:
            await abort_with_error(context, error)
        return sync_pb2.GetSyncStatusResponse(tables=[_message(s) for s in statuses])


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
