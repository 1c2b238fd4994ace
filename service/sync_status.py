"""Replication status per table, read from the sync-state table the loaders write."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from service.backends.base import AnalyticsBackend
from service.catalog import Catalog, Model
from service.errors import AnalyticsError
from service.schema import SYNC_STATE_TABLE

STALE_AFTER = dt.timedelta(seconds=30)
LAGGING_AFTER = dt.timedelta(seconds=5)


@dataclass(frozen=True)
class TableStatus:
    """One table's latest report, with the state derived from its age and lag."""

    model: Model
    source: str
    last_sync_at: dt.datetime | None
    lag_seconds: float
    pending_events: int
    events_per_second: float
    events_applied: int
    state: str
    last_error: str
    reported_at: dt.datetime | None


async def table_statuses(
    backend: AnalyticsBackend, catalog: Catalog, models: list[Model], now: dt.datetime | None = None
) -> list[TableStatus]:
    """The latest report of each model's table (``unspecified`` where nothing reported yet)."""
    now = now or dt.datetime.now(dt.UTC)
    sql = (
        "SELECT table_name, argMax(source, updated_at) AS source, "
        "argMax(last_sync_at, updated_at) AS last_sync_at, max(updated_at) AS reported_at, "
        "argMax(state, updated_at) AS state, argMax(pending_events, updated_at) AS pending, "
        "argMax(events_per_second, updated_at) AS rate, "
        "argMax(events_applied, updated_at) AS applied, "
        "argMax(last_error, updated_at) AS last_error "
        f"FROM `{catalog.database}`.`{SYNC_STATE_TABLE}` GROUP BY table_name"
    )
    try:
        rows = {row["table_name"]: row for row in await backend.query_rows(sql)}
    except AnalyticsError as error:
        # Nothing has created the state table yet: every table is simply unreported.
        missing = error.reason == "REPLICA_MISSING" or error.metadata.get("engine_code") in (
            "60",
            "81",
        )
        if not missing:
            raise
        rows = {}
    statuses = []
    for model in models:
        row = rows.get(model.table)
        if row is None:
            statuses.append(TableStatus(model, "", None, 0.0, 0, 0.0, 0, "unspecified", "", None))
            continue
        last_sync = _utc(row["last_sync_at"])
        reported = _utc(row["reported_at"])
        lag = (now - last_sync).total_seconds()
        state = str(row["state"])
        if state == "streaming" and now - reported > STALE_AFTER:
            state = "stale"
        elif state == "streaming" and lag > LAGGING_AFTER.total_seconds():
            state = "lagging"
        statuses.append(
            TableStatus(
                model=model,
                source=str(row["source"]),
                last_sync_at=last_sync,
                lag_seconds=max(lag, 0.0),
                pending_events=int(row["pending"]),
                events_per_second=float(row["rate"]),
                events_applied=int(row["applied"]),
                state=state,
                last_error=str(row["last_error"]),
                reported_at=reported,
            )
        )
    return statuses


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
