"""Reading the position of the tables a query reads (``TablePosition``): one small query a request.

A position has two halves. The data half is the table's active parts in ``system.parts`` (their
count and a hash of their paths), read on every request. The sync half is the table's newest
report in the sync-state table (its ``lastSyncAt``). The sync-state table is a MergeTree table
too, so it is listed in the same ``system.parts`` read: while its parts are the ones the reports
were last read from, those reports are still what it holds, and they are taken from memory.
Only when a report was written (a new part) or its parts merged are they read again.

On the embedded engine every write passes through this process's backends (``SoleWriter``), so
a listing is not read again while no write has ended since it was read: the positions it gave
are still those of the rows the tables hold (a merge since changes the parts, not the rows).
That saves the hit path its one engine query. A server has other writers, so there every
request lists the parts.

Identifiers come from the catalog; values are bound parameters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.backends.base import AnalyticsBackend, write_generation
from service.cache.key import TablePosition
from service.errors import AnalyticsError
from service.query.values import encode_text_parameter
from service.schema import SYNC_STATE_TABLE

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Engine codes of a missing table or database: nothing has created the sync-state table yet.
_MISSING_CODES = ("60", "81")

#: A table's active parts: (count, sum of a 64-bit hash of their paths, modulo 2^64).
Parts = tuple[int, int]
_MOD = 1 << 64
#: Table sets whose positions are remembered on a sole writer (beyond it, memory starts over).
_REMEMBERED_SETS = 1024


@dataclass
class _Reports:
    """The newest report per table, as read while the sync-state table had ``parts``."""

    parts: Parts
    at: dict[str, dt.datetime]


@dataclass
class PositionReader:
    """Reads positions; remembers the sync reports per (engine, database) between reads."""

    _reports: dict[tuple[int, str], _Reports] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Per (engine, database, tables) of a sole writer: its write generation and the positions
    #: read while it had that generation.
    _known: dict[tuple[int, str, tuple[str, ...]], tuple[int, dict[str, TablePosition]]] = field(
        default_factory=dict
    )
    #: How often the reports were read from the engine (the rest came from memory).
    report_reads: int = 0
    #: How often the parts were listed (on a sole writer, only after a write).
    listings: int = 0

    async def read(
        self, backend: AnalyticsBackend, database: str, tables: Sequence[str]
    ) -> dict[str, TablePosition]:
        """The position of each of ``tables`` (each listed once), read now."""
        names = sorted(set(tables))
        if not names:
            return {}
        slot = (id(backend), database, tuple(names))
        # Read before the listing: a write ending while it runs leaves a smaller number with the
        # positions, and the next request lists again.
        generation = write_generation(backend)
        if generation is not None:
            known = self._known.get(slot)
            if known is not None and known[0] == generation:
                return dict(known[1])
        self.listings += 1
        parts = await read_parts(backend, database, [*names, SYNC_STATE_TABLE])
        reports = await self._current_reports(
            backend, database, parts.get(SYNC_STATE_TABLE, (0, 0))
        )
        positions = {
            name: TablePosition(name, reports.get(name), *parts.get(name, (0, 0))) for name in names
        }
        if generation is not None:
            if len(self._known) >= _REMEMBERED_SETS:
                self._known.clear()
            self._known[slot] = (generation, dict(positions))
        return positions

    async def _current_reports(
        self, backend: AnalyticsBackend, database: str, sync_parts: Parts
    ) -> dict[str, dt.datetime]:
        slot = (id(backend), database)
        known = self._reports.get(slot)
        if known is not None and known.parts == sync_parts:
            return known.at
        async with self._lock:
            known = self._reports.get(slot)
            if known is not None and known.parts == sync_parts:
                return known.at
            self.report_reads += 1
            at = await read_reports(backend, database)
            # Remembered only if the table did not change while it was read: then ``at`` is
            # exactly what those parts hold. (Either way ``at`` is at least as new as them.)
            after = await read_parts(backend, database, [SYNC_STATE_TABLE])
            if after.get(SYNC_STATE_TABLE, (0, 0)) == sync_parts:
                self._reports[slot] = _Reports(sync_parts, at)
            return at


async def read_parts(
    backend: AnalyticsBackend, database: str, tables: Sequence[str]
) -> dict[str, Parts]:
    """Each listed table's active parts (tables with none, or missing, are left out).

    The parts are listed and summed here: the engine's GROUP BY over ``system.parts`` costs
    more (about a millisecond a request on the embedded engine) than the few rows it saves.
    """
    parameters = {f"t{i}": encode_text_parameter(name) for i, name in enumerate(tables)}
    listed = ", ".join(f"{{t{i}:String}}" for i in range(len(tables)))
    rows = await backend.query_rows(
        "SELECT table, path FROM system.parts "
        f"WHERE database = {{db:String}} AND table IN ({listed}) AND active",
        {**parameters, "db": encode_text_parameter(database)},
    )
    parts: dict[str, Parts] = {}
    for row in rows:
        count, fingerprint = parts.get(str(row["table"]), (0, 0))
        digest = hashlib.blake2b(str(row["path"]).encode(), digest_size=8).digest()
        parts[str(row["table"])] = (count + 1, (fingerprint + int.from_bytes(digest)) % _MOD)
    return parts


async def read_reports(backend: AnalyticsBackend, database: str) -> dict[str, dt.datetime]:
    """The newest ``last_sync_at`` reported for each table ({} before any report)."""
    sql = (
        "SELECT table_name, argMax(last_sync_at, updated_at) AS at "
        f"FROM `{database}`.`{SYNC_STATE_TABLE}` GROUP BY table_name"
    )
    try:
        rows = await backend.query_rows(sql)
    except AnalyticsError as error:
        if _is_missing(error):
            return {}
        raise
    reports = {}
    for row in rows:
        moment = _utc(row["at"])
        if moment is not None:
            reports[str(row["table_name"])] = moment
    return reports


def _is_missing(error: AnalyticsError) -> bool:
    if error.reason == "REPLICA_MISSING" or error.metadata.get("engine_code") in _MISSING_CODES:
        return True
    message = error.metadata.get("engine_message", "")
    return "UNKNOWN_TABLE" in message or "UNKNOWN_DATABASE" in message


def _utc(value: Any) -> dt.datetime | None:
    """A report's time as an aware UTC datetime (the legacy layout keeps epoch microseconds)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH + dt.timedelta(microseconds=value)
    if not isinstance(value, dt.datetime):
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
