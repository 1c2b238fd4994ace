"""Replication status per table, read from the sync-state table the loaders write.

Each source (``cdc``, ``loader``, ``backfill``) keeps its own latest row per table. The status
of a table is its running backfill's while one reports (state ``snapshot``, fresh), else the
most recent report of any source. ``rows`` is counted in the replica when the status is read:
live rows after FINAL, the number a ``count`` query would answer across all tenants.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from service.backends.base import AnalyticsBackend
from service.catalog import Catalog, Model
from service.errors import AnalyticsError
from service.schema import SYNC_STATE_TABLE

T = TypeVar("T")


async def oldest_sync(
    backend: AnalyticsBackend, database: str, tables: Sequence[str]
) -> dt.datetime | None:
    """The ``lastSyncAt`` of an answer read from ``tables``: the oldest of theirs.

    None (never synced) when any of them has never been synced: nothing can be promised then.
    """
    found = await asyncio.gather(*(backend.last_sync_at(database, table) for table in tables))
    if any(at is None for at in found):
        return None
    return min(at for at in found if at is not None)


async def with_freshness(
    backend: AnalyticsBackend, database: str, tables: Sequence[str], work: Awaitable[T]
) -> tuple[T, dt.datetime | None]:
    """``work``'s result and the tables' ``lastSyncAt``, looked up beside it, not after it.

    On small answers the lookup after the query was a noticeable part of the latency. If
    ``work`` fails, the lookup is cancelled and the failure raised.
    """
    freshness = asyncio.ensure_future(oldest_sync(backend, database, tables))
    try:
        result = await work
    except BaseException:
        freshness.cancel()
        await asyncio.gather(freshness, return_exceptions=True)
        raise
    return result, await freshness


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
    rows: int = 0
    backfill_rows_copied: int = 0
    backfill_rows_total: int = 0


async def table_statuses(
    backend: AnalyticsBackend, catalog: Catalog, models: list[Model], now: dt.datetime | None = None
) -> list[TableStatus]:
    """The latest report of each model's table (``unspecified`` where nothing reported yet)."""
    now = now or dt.datetime.now(dt.UTC)
    sql = (
        "SELECT table_name, source, argMax(last_sync_at, updated_at) AS last_sync_at, "
        "max(updated_at) AS reported_at, "
        "argMax(state, updated_at) AS state, argMax(pending_events, updated_at) AS pending, "
        "argMax(events_per_second, updated_at) AS rate, "
        "argMax(events_applied, updated_at) AS applied, "
        "argMax(last_error, updated_at) AS last_error "
        f"FROM `{catalog.database}`.`{SYNC_STATE_TABLE}` GROUP BY table_name, source"
    )
    try:
        reports = await backend.query_rows(sql)
    except AnalyticsError as error:
        if not _is_missing(error):
            raise
        reports = []
    by_table: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        report["reported_at"] = _utc(report["reported_at"])
        report["last_sync_at"] = _utc(report["last_sync_at"])
        by_table.setdefault(str(report["table_name"]), []).append(report)
    statuses = []
    for model in models:
        rows = await replica_rows(backend, catalog, model)
        row = _chosen(by_table.get(model.table, []), now)
        if row is None:
            statuses.append(
                TableStatus(model, "", None, 0.0, 0, 0.0, 0, "unspecified", "", None, rows)
            )
            continue
        last_sync: dt.datetime = row["last_sync_at"]
        reported: dt.datetime = row["reported_at"]
        lag = (now - last_sync).total_seconds()
        state = str(row["state"])
        if state == "streaming" and now - reported > STALE_AFTER:
            state = "stale"
        elif state == "streaming" and lag > LAGGING_AFTER.total_seconds():
            state = "lagging"
        copying = row["source"] == "backfill" and state == "snapshot"
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
                rows=rows,
                backfill_rows_copied=int(row["applied"]) if copying else 0,
                backfill_rows_total=int(row["applied"]) + int(row["pending"]) if copying else 0,
            )
        )
    return statuses


async def replica_rows(backend: AnalyticsBackend, catalog: Catalog, model: Model) -> int:
    """Live rows of a model's replica (0 while nothing has created it)."""
    sql = (
        f"SELECT count() AS n FROM `{catalog.database}`.`{model.table}` FINAL WHERE _is_deleted = 0"
    )
    try:
        found = await backend.query_rows(sql)
    except AnalyticsError as error:
        if not _is_missing(error):
            raise
        return 0
    return int(found[0]["n"]) if found else 0


def _chosen(reports: list[dict[str, Any]], now: dt.datetime) -> dict[str, Any] | None:
    """A running backfill's report if one is fresh, else the most recent report."""
    for report in reports:
        if (
            report["source"] == "backfill"
            and report["state"] == "snapshot"
            and now - report["reported_at"] <= STALE_AFTER
        ):
            return report
    return max(reports, key=lambda report: report["reported_at"], default=None)


def _is_missing(error: AnalyticsError) -> bool:
    """Nothing has created the table (or database) yet: every table is simply unreported."""
    return error.reason == "REPLICA_MISSING" or error.metadata.get("engine_code") in ("60", "81")


def _utc(value: dt.datetime | int) -> dt.datetime:
    if isinstance(value, int):
        # The legacy server layout stores the times as microseconds since the epoch.
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
