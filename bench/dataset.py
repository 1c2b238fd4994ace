"""The benchmark dataset: deals with history at 1 M and 10 M current rows, and its ground truth.

The demo generator (``service.demo.generator``) makes the rows: every version of every key, about
10 % of keys with older versions, about 3 % soft-deleted and 1 % ending in a tombstone, in the
order a CDC log has them. One tenant owns them all, so a query covers the whole table. Sizes above
``BASE_LIMIT`` are the base generated once and inserted several times, each copy's ids right after
the previous copy's, as a sequence continues (generating 10 M rows with contacts and invoices
besides would take minutes and gigabytes for no different shape). Each size is one model of a bench
catalog (``bench.deals_<size>``) with the fields of the shipped ``crm.deals``, and has twins in
other physical states (``TABLE_STATES``).

The ground truth comes from the generated Arrow rows alone (latest version per key, tombstones and
soft deletes dropped), never from the engine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, FieldSpec, FieldType, Model, load_catalog, parse_catalog
from service.demo.generator import (
    DELETED_COLUMN,
    MODEL_SHARES,
    VERSION_COLUMN,
    generate_dataset,
)
from service.schema import (
    FORCE_MERGE_AFTER_SECONDS,
    database_ddl,
    replica_table_ddl,
    sync_state_ddl,
)
from service.settings import DEFAULT_CATALOG

TENANT = "bench"
DATABASE = "bench"
BASE_LIMIT = 1_000_000
INSERT_BATCH_ROWS = 100_000
_SOURCE_MODEL = ("crm", "deals")
_SIZE = re.compile(r"^(\d+)([km]?)$")


TABLE_STATES = ("settled", "live", "unmerged")
"""How a size's table is held when FINAL is measured:

* ``settled``: every copy inserted, then left until the table's forced merge made each partition
  one part (the replica some time after its last change);
* ``live``: the copies but the last settled the same way, then the last copy (its creates,
  updates and deletes: the newest tenth of the table, about 12 % of its rows superseded) inserted
  just before the measurement with merges running (the replica while changes to its newest rows
  arrive);
* ``unmerged``: merges stopped before every copy was inserted (every partition holds unmerged
  versions; the worst case, as if every key range were changing at once).
"""


@dataclass(frozen=True)
class Size:
    """One dataset size: its label (``1m``), current rows, and how it is built."""

    label: str
    rows: int
    base_rows: int
    copies: int

    @property
    def model_name(self) -> str:
        """The bench catalog's model of this size."""
        return f"deals_{self.label}"


def parse_sizes(text: str) -> list[Size]:
    """Sizes from ``1m,10m`` (suffix k or m); a size above 1 M must be a multiple of 1 M."""
    sizes: list[Size] = []
    for part in text.split(","):
        label = part.strip().lower()
        match = _SIZE.fullmatch(label)
        if not match:
            raise ValueError(f"--rows: {part!r} is not a size like 100k, 1m or 10m")
        rows = int(match.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2)]
        if rows < 1_000:
            raise ValueError(f"--rows: {part!r} is below 1k rows")
        base = min(rows, BASE_LIMIT)
        if rows % base:
            raise ValueError(f"--rows: {part!r} above 1m must be a whole number of millions")
        sizes.append(Size(label, rows, base, rows // base))
    return sizes


@dataclass(frozen=True)
class GroundTruth:
    """What a correct engine answers for the three benchmark queries on one size."""

    count: int
    by_stage: Mapping[str, tuple[int, Decimal]]
    """stage -> (count, sum of amount)."""
    by_day: Mapping[dt.date, tuple[int, Decimal]]
    """UTC day of created_at -> (count, sum of amount)."""


@dataclass
class TableState:
    """What the engine holds physically for one table when it is measured."""

    parts: int
    partitions: int
    unsettled_partitions: int
    """Partitions FINAL has to merge: several parts, or one never merged (level 0)."""
    physical_rows: int
    keys: int

    def describe(self) -> str:
        """A short note for the table of figures."""
        superseded = (self.physical_rows - self.keys) / max(self.physical_rows, 1)
        return (
            f"{_count(self.parts, 'part')} in {_count(self.partitions, 'partition')}, "
            f"{self.unsettled_partitions} unmerged, {superseded:.1%} of rows superseded"
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@dataclass
class BenchData:
    """The prepared engine data: catalog, sizes and their ground truth."""

    catalog: Catalog
    catalog_text: str
    sizes: list[Size]
    truth: dict[str, GroundTruth] = field(default_factory=dict)
    base_tables: dict[int, pa.Table] = field(default_factory=dict)
    settled_seconds: float = 0.0

    def model(self, size: Size, state: str = "settled") -> Model:
        """The catalog model of ``size`` in one of the ``TABLE_STATES``."""
        name = size.model_name + ("" if state == "settled" else f"_{state}")
        found = self.catalog.get("bench", name)
        if found is None:
            raise KeyError(name)
        return found


def bench_catalog(sizes: Sequence[Size]) -> tuple[Catalog, str]:
    """A catalog with ``bench.deals_<size>`` and its ``_live`` and ``_unmerged`` twins per size.

    Returned as text too: the served process reads it from a file.
    """
    shipped = load_catalog(DEFAULT_CATALOG).get(*_SOURCE_MODEL)
    if shipped is None:
        raise RuntimeError("the shipped catalog has no crm.deals model")
    lines = [f'database = "{DATABASE}"', ""]
    for size in sizes:
        for suffix in ("", "_live", "_unmerged"):
            name = size.model_name + suffix
            lines += [
                "[[models]]",
                'module = "bench"',
                f'name = "{name}"',
                f'table = "{name}"',
                f'source = "public.{name}"',
                f"primary_key = [{', '.join(repr(k) for k in shipped.primary_key)}]",
                f'tenant_column = "{shipped.tenant_column}"',
                f'soft_delete_column = "{shipped.soft_delete_column}"',
                "",
                "[models.fields]",
                *(f'{spec.name} = "{_field_type(spec)}"' for spec in shipped.fields.values()),
                "",
            ]
    text = "\n".join(lines).replace("'", '"')
    return parse_catalog(tomllib.loads(text), origin="bench catalog"), text


def _field_type(spec: FieldSpec) -> str:
    base = spec.type.value
    if spec.type is FieldType.DECIMAL:
        base = f"decimal({spec.precision},{spec.scale})"
    return base + ("?" if spec.nullable else "")


def generate_base(rows: int, tenants: Sequence[str] = (TENANT,)) -> pa.Table:
    """Every version of ``rows`` current deals of ``tenants`` (the bench tenant), in CDC order."""
    # The generator splits its row count over the models by their shares; events are not needed.
    total = round(rows / MODEL_SHARES["crm.deals"])
    catalog = load_catalog(DEFAULT_CATALOG)
    dataset = generate_dataset(catalog, rows=total, tenants=tenants, events=0)
    deals: pa.Table = dataset.tables["crm.deals"]
    return deals


def ground_truth(base: pa.Table, copies: int) -> GroundTruth:
    """The answers computed from the generated rows: latest version per key, live rows only."""
    ids = base.column("id").to_numpy()
    versions = base.column(VERSION_COLUMN).to_numpy()
    order = np.lexsort((versions, ids))
    sorted_ids = ids[order]
    last = np.ones(len(order), bool)
    last[:-1] = sorted_ids[:-1] != sorted_ids[1:]
    latest = base.take(pa.array(order[last]))
    live = latest.filter(
        pc.and_(pc.equal(latest.column(DELETED_COLUMN), 0), pc.is_null(latest.column("deleted_at")))
    )
    by_stage = live.group_by("stage").aggregate([("id", "count"), ("amount", "sum")])
    days = pc.cast(live.column("created_at"), pa.timestamp("us", tz="UTC")).cast(pa.int64())
    day_numbers = pc.floor(pc.divide(days.cast(pa.float64()), 86_400_000_000.0)).cast(pa.int32())
    by_day = (
        pa.table({"day": day_numbers.cast(pa.date32()), "amount": live.column("amount")})
        .group_by("day")
        .aggregate([("amount", "count"), ("amount", "sum")])
    )
    return GroundTruth(
        count=live.num_rows * copies,
        by_stage={
            stage: (count * copies, total * copies)
            for stage, count, total in zip(
                by_stage.column("stage").to_pylist(),
                by_stage.column("id_count").to_pylist(),
                by_stage.column("amount_sum").to_pylist(),
                strict=True,
            )
        },
        by_day={
            day: (count * copies, total * copies)
            for day, count, total in zip(
                by_day.column("day").to_pylist(),
                by_day.column("amount_count").to_pylist(),
                by_day.column("amount_sum").to_pylist(),
                strict=True,
            )
        },
    )


def shifted(base: pa.Table, copy: int) -> pa.Table:
    """Copy number ``copy`` of the base rows: the same rows, ids after the previous copy's."""
    if copy == 0:
        return base
    index = base.column_names.index("id")
    stride = int(pc.max(base.column("id")).as_py()) + 1
    moved = pc.add(base.column("id"), pa.scalar(copy * stride, pa.int64()))
    return base.set_column(index, "id", moved)


async def load(
    backend: EmbeddedBackend, data: BenchData, size: Size, state: str = "settled"
) -> None:
    """Create the size's table in ``state`` (``TABLE_STATES``) and insert its copies.

    The ``live`` twin gets every copy but the last here; ``insert_newest`` adds that one.
    """
    model = data.model(size, state)
    table = f"`{data.catalog.database}`.`{model.table}`"
    await backend.command(f"DROP TABLE IF EXISTS {table} SYNC")
    for statement in (
        database_ddl(data.catalog),
        sync_state_ddl(data.catalog),
        replica_table_ddl(data.catalog, model, dialect=await backend.dialect()),
    ):
        await backend.command(statement)
    if state == "unmerged":
        # The worst case for FINAL: every version still in the parts it was inserted into.
        await backend.command(f"SYSTEM STOP MERGES {table}")
    copies = size.copies - 1 if state == "live" else size.copies
    for copy in range(copies):
        await _insert_copy(backend, data, size, model, copy)


async def insert_newest(backend: EmbeddedBackend, data: BenchData, size: Size) -> None:
    """Insert the last copy into the ``live`` twin: changes to the newest keys arriving."""
    await _insert_copy(backend, data, size, data.model(size, "live"), size.copies - 1)


async def _insert_copy(
    backend: EmbeddedBackend, data: BenchData, size: Size, model: Model, copy: int
) -> None:
    columns = [model.tenant_column, *model.fields, VERSION_COLUMN, DELETED_COLUMN]
    rows = shifted(data.base_tables[size.base_rows], copy).select(columns)
    for offset in range(0, rows.num_rows, INSERT_BATCH_ROWS):
        await backend.insert_arrow(
            data.catalog.database, model.table, rows.slice(offset, INSERT_BATCH_ROWS)
        )


async def settle(
    backend: EmbeddedBackend, database: str, *, optimize: bool, limit_seconds: float = 900.0
) -> float:
    """Wait until every partition of the model tables is one part; return the seconds waited.

    That is the replica's state once its partitions have been left alone for
    ``FORCE_MERGE_AFTER_SECONDS`` (the table's ``min_age_to_force_merge_seconds``).
    ``optimize`` runs the same merge at once (``OPTIMIZE ... FINAL``) instead of waiting for it.
    """
    started = time.monotonic()
    tables = [
        str(row["name"])
        for row in await backend.query_rows(
            "SELECT name FROM system.tables WHERE database = {db:String} AND name LIKE 'deals%'",
            {"db": database},
        )
    ]
    if optimize:
        for table in tables:
            await backend.command(f"OPTIMIZE TABLE `{database}`.`{table}` FINAL")
    while time.monotonic() - started < limit_seconds:
        merging = await backend.query_rows(
            "SELECT count() AS n FROM system.merges WHERE database = {db:String}", {"db": database}
        )
        parts = await backend.query_rows(
            "SELECT max(n) AS most FROM (SELECT count() AS n FROM system.parts "
            "WHERE active AND database = {db:String} AND table LIKE 'deals%' "
            "GROUP BY table, partition)",
            {"db": database},
        )
        if not merging[0]["n"] and int(parts[0]["most"] or 0) <= 1:
            return time.monotonic() - started
        await asyncio.sleep(1.0)
    raise TimeoutError(
        f"partitions in {database} still hold several parts after {limit_seconds:.0f} s "
        f"(expected a merge {FORCE_MERGE_AFTER_SECONDS} s after the last insert)"
    )


async def table_state(backend: EmbeddedBackend, database: str, model: Model) -> TableState:
    """Parts, physical rows and distinct keys of a model's table right now."""
    parts = await backend.query_rows(
        "SELECT sum(n) AS parts, count() AS partitions, countIf(n > 1 OR merged = 0) AS unsettled "
        "FROM (SELECT count() AS n, min(level) AS merged FROM system.parts "
        "WHERE active AND database = {db:String} AND table = {t:String} GROUP BY partition)",
        {"db": database, "t": model.table},
    )
    rows = await backend.query_rows(
        f"SELECT count() AS n, uniqExact(id) AS k FROM `{database}`.`{model.table}`"  # noqa: S608
    )
    return TableState(
        parts=int(parts[0]["parts"]),
        partitions=int(parts[0]["partitions"]),
        unsettled_partitions=int(parts[0]["unsettled"]),
        physical_rows=int(rows[0]["n"]),
        keys=int(rows[0]["k"]),
    )


async def prepare(
    backend: EmbeddedBackend, sizes: Sequence[Size], *, optimize: bool, live: bool
) -> BenchData:
    """Generate the bases, compute the ground truth and load every size's table, then settle.

    ``live``: load the ``live`` twins' older copies too (they settle in the same wait).
    ``optimize``: merge at once rather than wait for the tables' forced merge.
    """
    catalog, text = bench_catalog(sizes)
    data = BenchData(catalog, text, list(sizes))
    for size in sizes:
        if size.base_rows not in data.base_tables:
            data.base_tables[size.base_rows] = await asyncio.to_thread(
                generate_base, size.base_rows
            )
        data.truth[size.label] = ground_truth(data.base_tables[size.base_rows], size.copies)
        await load(backend, data, size)
        if live:
            await load(backend, data, size, "live")
    data.settled_seconds = await settle(backend, catalog.database, optimize=optimize)
    return data
