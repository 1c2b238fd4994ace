"""Keeping rollups exact: building stale partitions, planning reads, reporting status.

The keeper is the one place rollups touch the engine. ``plan`` reads, in one small query, each
replica partition's signature beside the generation last built for it; ``build`` aggregates every
partition whose signature moved into a new generation and records it; ``run`` does that
periodically in the service. A rollup never serves a partition that changed after its build
(``service.rollups.statements``), so the freshness of a rollup-served answer is its base table's:
what the refresher has not caught up with is read from the replica by the query itself.

Generations are nanosecond timestamps of the build's start. Older generations of a partition are
dropped once superseded for ``RETAIN_SECONDS`` (a query planned just before a build may still be
reading one), along with those of partitions the replica no longer has.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from service.backends.base import AnalyticsBackend, write_generation
from service.backends.dialect import backend_dialect
from service.catalog import Catalog, Model, Rollup
from service.query.values import encode_text_parameter
from service.rollups.statements import (
    PARTITION_ID,
    ROLLUP_STATE_TABLE,
    RollupPlan,
    build_statement,
    signatures_sql,
    state_ddl,
    state_sql,
    table_ddl,
)
from service.schema import database_ddl

log = structlog.get_logger(__name__)

RETAIN_SECONDS = 60
"""How long a superseded generation stays readable."""
#: Called after each partition a build finishes: (rollup, partitions done, partitions to do).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PartitionState:
    """One replica partition as a rollup sees it."""

    partition: str
    signature: str
    generation: int | None
    built_signature: str | None
    rows: int

    @property
    def current(self) -> bool:
        """Whether the partition's generation holds exactly what the replica holds."""
        return self.generation is not None and self.built_signature == self.signature


@dataclass(frozen=True)
class _Record:
    """The state table's record of a partition's current generation."""

    generation: int
    signature: str
    rows: int


def _fingerprint(parts: list[dict[str, Any]], table: str) -> frozenset[str]:
    """The paths of ``table``'s active parts among ``signatures_sql`` rows."""
    return frozenset(str(part["path"]) for part in parts if part["table"] == table)


def partition_signatures(parts: list[dict[str, Any]], table: str) -> dict[str, str]:
    """Each partition of ``table`` with its signature: newest block, data version, directory.

    Block numbers start again in a re-created table (dropped and backfilled, say), so the
    first two alone could name the same state of two different tables; the table's directory,
    named by its UUID, tells them apart.
    """
    newest: dict[str, tuple[int, int, str]] = {}
    for part in parts:
        if part["table"] != table:
            continue
        block, version, _ = newest.get(str(part["partition"]), (0, 0, ""))
        # The table's own directory (its UUID under an Atomic database), not the whole path:
        # a data directory moved or copied elsewhere holds the same tables.
        directory = str(part["path"]).rstrip("/").rsplit("/", 2)[-2]
        newest[str(part["partition"])] = (
            max(block, int(part["block"])),
            max(version, int(part["version"])),
            hashlib.blake2b(directory.encode(), digest_size=8).hexdigest(),
        )
    return {
        partition: f"{block}:{version}:{directory}"
        for partition, (block, version, directory) in newest.items()
    }


@dataclass(frozen=True)
class RollupStatus:
    """What ``analytics rollups status`` reports for one rollup."""

    name: str
    model: str
    table: str
    partitions: int
    current: int
    rows: int


class RollupKeeper:
    """Builds, plans and reports the catalog's rollups on one engine."""

    def __init__(self, catalog: Catalog, backend: AnalyticsBackend) -> None:
        """Keep ``catalog``'s rollups on ``backend`` (``prepare`` first)."""
        self._catalog = catalog
        self._backend = backend
        self._lock = asyncio.Lock()
        #: The state table's records and the fingerprint of the parts they were read from.
        self._state: tuple[frozenset[str], dict[tuple[str, str], _Record]] | None = None
        #: False on an engine the query compiler does not target (rollups then never serve).
        self.enabled = False
        #: The rollups whose tables exist.
        self._ready: set[str] = set()
        #: When each rollup's superseded generations may next be dropped (monotonic seconds).
        self._drop_due: dict[str, float] = {}
        #: On a sole writer: per rollup table, the write generation and the partitions read
        #: while the engine had it.
        self._known: dict[str, tuple[int, tuple[PartitionState, ...]]] = {}
        #: How often the partitions were read from the engine.
        self.listings = 0

    def rollups(self) -> list[tuple[Model, Rollup]]:
        """Every declared rollup with its model, in catalog order."""
        return [(m, r) for m in self._catalog.models.values() for r in m.rollups]

    async def prepare(self) -> None:
        """Create the state table and every rollup's table (idempotent).

        Leaves the keeper disabled on an engine older than the query compiler's minimum.
        """
        if not self.rollups():
            return
        dialect = await backend_dialect(self._backend)
        if not dialect.is_modern:
            log.warning("rollups_disabled", reason="the engine predates ClickHouse 23.2")
            return
        await self._backend.command(database_ddl(self._catalog))
        await self._backend.command(state_ddl(self._catalog))
        self.enabled = True
        await self._create_tables()

    async def _create_tables(self) -> None:
        """Create the tables of the rollups whose model's table exists (and note them ready).

        A rollup's columns are typed from its model's table, which the replication writers
        create (the service never does: a missing table is an error they report); a rollup of
        a model without one waits, and is created by a later build.
        """
        waiting = [(m, r) for m, r in self.rollups() if r.table not in self._ready]
        if not waiting:
            return
        rows = await self._backend.query_rows(
            "SELECT name FROM system.tables WHERE database = {database:String}",
            {"database": encode_text_parameter(self._catalog.database)},
        )
        existing = {str(row["name"]) for row in rows}
        for model, rollup in waiting:
            if model.table in existing:
                await self._backend.command(table_ddl(self._catalog, model, rollup))
                self._ready.add(rollup.table)

    async def partitions(self, model: Model, rollup: Rollup) -> list[PartitionState]:
        """Each replica partition's signature beside the rollup's record of it, read now.

        One ``system.parts`` read; the state table's records are read again only when its
        parts changed since they were last read (as ``service.cache.positions`` does for the
        sync reports), so a planned query costs the engine one small read. On the embedded
        engine, not even that while no write ended since the last read (``SoleWriter``, as
        the result cache's positions): a merge changes no signature.
        """
        # Read before the engine is: a write ending meanwhile leaves a smaller number behind.
        generation = write_generation(self._backend)
        known = self._known.get(rollup.table)
        if known is not None and known[0] == generation:
            return list(known[1])
        self.listings += 1
        rows = await self._backend.query_rows(
            signatures_sql(),
            {
                "database": encode_text_parameter(self._catalog.database),
                "table": encode_text_parameter(model.table),
                "state": ROLLUP_STATE_TABLE,
            },
        )
        records = await self._records(_fingerprint(rows, ROLLUP_STATE_TABLE))
        states = []
        for partition, signature in sorted(partition_signatures(rows, model.table).items()):
            record = records.get((rollup.table, partition))
            states.append(
                PartitionState(
                    partition,
                    signature,
                    record.generation if record else None,
                    record.signature if record else None,
                    record.rows if record else 0,
                )
            )
        if generation is not None:
            self._known[rollup.table] = (generation, tuple(states))
        return states

    async def _records(self, state_parts: frozenset[str]) -> dict[tuple[str, str], _Record]:
        """The state table's records, from memory while its parts are the ones they came from."""
        known = self._state
        if known is not None and known[0] == state_parts:
            return known[1]
        rows = await self._backend.query_rows(state_sql(self._catalog))
        records = {
            (str(row["rollup_table"]), str(row["base_partition"])): _Record(
                int(row["generation"]), str(row["signature"]), int(row["rows"])
            )
            for row in rows
        }
        # Remembered only if the table did not change while it was read: then ``records`` is
        # exactly what those parts hold.
        after = await self._backend.query_rows(
            signatures_sql(),
            {
                "database": encode_text_parameter(self._catalog.database),
                "table": ROLLUP_STATE_TABLE,
                "state": ROLLUP_STATE_TABLE,
            },
        )
        if _fingerprint(after, ROLLUP_STATE_TABLE) == state_parts:
            self._state = (state_parts, records)
        return records

    async def plan(self, model: Model, rollup: Rollup) -> RollupPlan | None:
        """How a query reads ``rollup`` now; None when no partition is current yet."""
        if not self.enabled or rollup.table not in self._ready:
            return None
        states = await self.partitions(model, rollup)
        # ``current`` implies a generation; the second test only says so to the type checker.
        current = tuple(
            (s.partition, s.generation) for s in states if s.current and s.generation is not None
        )
        if not current:
            return None
        stale = tuple(s.partition for s in states if not s.current)
        return RollupPlan(rollup, current, stale)

    async def build(
        self, only: Iterable[str] = (), progress: Progress | None = None
    ) -> dict[str, int]:
        """Rebuild every stale partition of the rollups (those named in ``only``, if any).

        Returns the partitions rebuilt per rollup. One build at a time in this process.
        """
        names = set(only)
        rebuilt: dict[str, int] = {}
        if not self.enabled:
            return rebuilt
        async with self._lock:
            await self._create_tables()
            for model, rollup in self.rollups():
                if (names and rollup.name not in names) or rollup.table not in self._ready:
                    continue
                rebuilt[rollup.name] = await self._build_one(model, rollup, progress)
        return rebuilt

    async def _build_one(self, model: Model, rollup: Rollup, progress: Progress | None) -> int:
        states = await self.partitions(model, rollup)
        stale = [s for s in states if not s.current]
        for done, state in enumerate(stale, start=1):
            if not PARTITION_ID.fullmatch(state.partition):
                raise ValueError(f"unexpected partition id {state.partition!r}")
            generation = time.time_ns()
            await self._backend.command(
                build_statement(self._catalog, model, rollup),
                {"partition": state.partition, "generation": str(generation)},
            )
            counted = await self._backend.query_rows(
                f"SELECT count() AS n FROM `{self._catalog.database}`.`{rollup.table}` "
                "WHERE _base_partition = {partition:String} AND _generation = {generation:UInt64}",
                {"partition": state.partition, "generation": str(generation)},
            )
            # The signature read before the build: a write since leaves the partition stale.
            await self._backend.command(
                f"INSERT INTO `{self._catalog.database}`.`{ROLLUP_STATE_TABLE}` "
                "(rollup_table, base_partition, generation, signature, rows, built_at) VALUES "
                "({rollup:String}, {partition:String}, {generation:UInt64}, {signature:String}, "
                "{rows:UInt64}, now64(6, 'UTC'))",
                {
                    "rollup": encode_text_parameter(rollup.table),
                    "partition": state.partition,
                    "generation": str(generation),
                    "signature": encode_text_parameter(state.signature),
                    "rows": str(int(counted[0]["n"])),
                },
            )
            if progress is not None:
                progress(rollup.name, done, len(stale))
        # Superseded generations are looked for after a rebuild and once they may go (a scan of
        # the rollup table), not at every idle refresh; the first build of a process looks too.
        now = time.monotonic()
        if stale:
            self._drop_due[rollup.table] = now + RETAIN_SECONDS
        if stale or self._drop_due.get(rollup.table, 0.0) <= now:
            await self._drop_superseded(model, rollup)
            if not stale:
                self._drop_due[rollup.table] = float("inf")
        if stale:
            log.info("rollup_built", rollup=rollup.name, partitions=len(stale))
        return len(stale)

    async def _drop_superseded(self, model: Model, rollup: Rollup) -> None:
        states = {s.partition: s for s in await self.partitions(model, rollup)}
        stored = await self._backend.query_rows(
            "SELECT DISTINCT _base_partition AS partition, _generation AS generation "
            f"FROM `{self._catalog.database}`.`{rollup.table}`"
        )
        horizon = time.time_ns() - RETAIN_SECONDS * 1_000_000_000
        for row in stored:
            partition, generation = str(row["partition"]), int(row["generation"])
            state = states.get(partition)
            keep = state is not None and (state.generation == generation or generation >= horizon)
            if keep or not PARTITION_ID.fullmatch(partition):
                continue
            await self._backend.command(
                f"ALTER TABLE `{self._catalog.database}`.`{rollup.table}` "
                f"DROP PARTITION ('{partition}', {generation})"
            )

    async def status(self) -> list[RollupStatus]:
        """Per rollup: replica partitions, how many are current, the rows of their generations."""
        report = []
        for model, rollup in self.rollups():
            ready = self.enabled and rollup.table in self._ready
            states = await self.partitions(model, rollup) if ready else []
            report.append(
                RollupStatus(
                    rollup.name,
                    model.qualified_name,
                    rollup.table,
                    len(states),
                    sum(1 for s in states if s.current),
                    sum(s.rows for s in states if s.current),
                )
            )
        return report

    async def run(self, interval_seconds: float) -> None:
        """Rebuild stale partitions every ``interval_seconds`` until cancelled."""
        failing = False
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.build()
            except Exception as error:  # the loop outlives an engine outage
                if not failing:
                    log.warning("rollup_refresh_failed", error=str(error)[:300])
                failing = True
            else:
                if failing:
                    log.info("rollup_refresh_recovered")
                failing = False
