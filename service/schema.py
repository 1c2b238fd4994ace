"""ClickHouse DDL derived from the catalog: one ReplacingMergeTree replica per model.

Rows carry ``_version`` (monotonic per row, from the source position) and ``_is_deleted``; the
highest version of a key wins under FINAL. The sort key is (tenant, primary key) and never changes.
The partition key is derived from the sort key only (``partition_expression``), so a row can never
move to another partition (its delete would then never collapse it) and FINAL need not merge
across partitions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa

from service.backends.dialect import MODERN, Dialect
from service.catalog import Catalog, FieldSpec, FieldType, Model

PARTITIONS = 16
"""Tenant buckets of a replica whose primary key is not a single integer."""
KEYS_PER_PARTITION = 1 << 20
"""Width of a replica partition in primary-key values, for single integer primary keys."""
FORCE_MERGE_AFTER_SECONDS = 60
"""Seconds without inserts after which a replica partition is merged into one part."""
MERGE_SELECTOR_BASE = 2
"""How many times its largest part a range of parts must hold before a replica merges it."""
SYNC_STATE_TABLE = "_sync_state"
BACKFILL_CHECKPOINTS_TABLE = "_backfill_checkpoints"


def replica_table_ddl(catalog: Catalog, model: Model, *, dialect: Dialect = MODERN) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a model's replica.

    ``dialect`` is the server's (``HttpBackend.dialect()``); the default is the modern one that
    chDB and production servers speak. On a legacy server the engine has no ``_is_deleted``
    argument: readers filter ``_is_deleted = 0`` after FINAL, which the compiler always does.
    """
    if model.events is not None:
        return event_table_ddl(catalog, model, dialect=dialect)
    columns = [f"`{model.tenant_column}` {dialect.tenant_column_type()}"]
    columns += [dialect.column_definition(spec.name, spec) for spec in model.fields.values()]
    columns += ["`_version` UInt64", "`_is_deleted` UInt8"]
    order_by = ", ".join(f"`{c}`" for c in (model.tenant_column, *model.primary_key))
    settings: list[str] = []
    if dialect.is_modern:
        # FINAL has nothing to merge in a partition of one part (bench/README.md: unmerged
        # versions cost FINAL 3-7 times a plain scan). A partition left alone for a while is
        # merged into one part; one still being written is left to the usual merges, so a
        # steady stream of inserts never rewrites a whole partition again and again.
        settings += [
            f"min_age_to_force_merge_seconds = {FORCE_MERGE_AFTER_SECONDS}",
            "min_age_to_force_merge_on_partition_only = 1",
        ]
    if dialect.merge_selector_base:
        # Until that forced merge, FINAL merges every part of a partition still being written.
        # The default base (5) leaves a burst of changes in 4-7 parts per partition; 2 merges
        # parts once together they hold as much as the largest, so a partition that just
        # changed has 1-3 parts: the live FINAL count at 10 M rows 1.3-2.0 times a plain read
        # instead of 2.1-2.5, for at most about 10 % of ingestion throughput spent merging
        # (bench/README.md, FINAL fifth round).
        settings.append(f"merge_selector_base = {MERGE_SELECTOR_BASE}")
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{model.table}` (\n    "
        + ",\n    ".join(columns)
        + f"\n) ENGINE = {dialect.replacing_engine('_version', '_is_deleted')}\n"
        f"PARTITION BY {partition_expression(model)}\n"
        f"ORDER BY ({order_by})" + (f"\nSETTINGS {', '.join(settings)}" if settings else "")
    )


#: Microseconds in 31 days: the legacy layout's stand-in for a calendar month of epoch times.
_LEGACY_EVENT_PARTITION_MICROSECONDS = 31 * 86_400 * 1_000_000
_DAY_MICROSECONDS = 86_400 * 1_000_000


def event_table_ddl(catalog: Catalog, model: Model, *, dialect: Dialect = MODERN) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for an event model.

    The sort key is (tenant, month, day, event id) of the event time, in UTC: FINAL keeps one row
    per event id and day, so a re-sent event (a retry carries the same timestamp) counts once
    and the latest send wins (``_version`` is the sink's write sequence). The time comes before
    the id so that a trend over a date range reads only those days: with the partition key
    (the month) part of the sort key, FINAL may skip other months' partitions, and the day
    narrows the read inside them; keyed by (tenant, event id) alone, FINAL had to read a
    tenant's whole history for any range. ``_is_deleted`` is there for erasure requests and so
    that every reader is the same.
    """
    roles = model.events
    if roles is None:
        raise ValueError(f"{model.qualified_name} is not an event model")
    columns = [f"`{model.tenant_column}` {dialect.tenant_column_type()}"]
    columns += [dialect.column_definition(spec.name, spec) for spec in model.fields.values()]
    columns += [
        f"`{roles.key_column}` Array(String)",
        f"`{roles.value_column}` Array(String)",
        "`_version` UInt64",
        "`_is_deleted` UInt8 DEFAULT 0",
    ]
    time = f"`{roles.timestamp}`"
    if dialect.is_modern:
        month, day = f"toYYYYMM({time})", f"toDate({time})"
    else:
        month = f"intDiv({time}, {_LEGACY_EVENT_PARTITION_MICROSECONDS})"
        day = f"intDiv({time}, {_DAY_MICROSECONDS})"
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{model.table}` (\n    "
        + ",\n    ".join(columns)
        + f"\n) ENGINE = {dialect.replacing_engine('_version', '_is_deleted')}\n"
        f"PARTITION BY {month}\n"
        f"ORDER BY (`{model.tenant_column}`, {month}, {day}, `{roles.event_id}`)"
    )


def partition_expression(model: Model) -> str:
    """The replica's partition key: ranges of a single integer primary key, else tenant buckets.

    FINAL reads a partition of one merged part without merging, so its cost is that of the
    partitions still receiving changes. Sequence keys put new rows, and most changes to them, in
    the newest ranges; older ranges are settled by the forced merge, and FINAL costs what merging
    the newest ranges costs, not the whole table (figures in bench/README.md). An insert
    batch of recent changes also touches one or two partitions instead of every tenant bucket.
    Other keys (text, UUIDs, composite) have no such order: their partitions are tenant buckets.
    """
    if len(model.primary_key) == 1 and model.fields[model.primary_key[0]].type is FieldType.INT:
        return f"intDiv(`{model.primary_key[0]}`, {KEYS_PER_PARTITION})"
    return f"cityHash64(`{model.tenant_column}`) % {PARTITIONS}"


def sync_state_ddl(catalog: Catalog, *, dialect: Dialect = MODERN) -> str:
    """The table whatever loads data writes: per replica table, the time it is complete up to.

    One row per (table, source) survives merges, so a backfill's report does not replace the
    CDC worker's (and the reader can prefer a running backfill). Writers append a row per
    report with the ``sync_state_table`` columns: ``table_name``, ``source`` (``cdc``,
    ``loader``, ``backfill``), ``last_sync_at``, ``updated_at`` (now), ``state`` (``streaming``,
    ``error``, ``snapshot``, ``idle``), and optionally the counters and ``last_error``.

    On a legacy server (see ``service.backends.dialect``) the two times are Int64 microseconds
    since the epoch, so ``updated_at`` stays an exact, monotonic version, and the low-cardinality
    strings are plain ``String``.
    """
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{SYNC_STATE_TABLE}` (\n"
        "    `table_name` String,\n"
        f"    `source` {dialect.string_key_type()},\n"
        f"    {dialect.timestamp_column_definition('last_sync_at')},\n"
        f"    {dialect.timestamp_column_definition('updated_at')},\n"
        f"    `state` {dialect.string_key_type()} DEFAULT 'streaming',\n"
        "    `pending_events` Int64 DEFAULT 0,\n"
        "    `events_per_second` Float64 DEFAULT 0,\n"
        "    `events_applied` Int64 DEFAULT 0,\n"
        "    `last_error` String DEFAULT ''\n"
        f") ENGINE = {dialect.replacing_engine('updated_at')}\n"
        "ORDER BY (table_name, source)"
    )


def backfill_checkpoints_ddl(catalog: Catalog, *, dialect: Dialect = MODERN) -> str:
    """Where backfills keep their progress: one row per (table, backfill, key range).

    ``range_index`` -1 is the backfill itself (its state and plan); every other row is one
    primary-key range ``[range_start, range_end)`` whose keys below ``next_key`` are copied.
    ``snapshot_lsn`` is the WAL position of the snapshot the range's rows were first read in
    (their versions are ``2 * snapshot_lsn``). The newest ``updated_at`` of a row wins.
    """
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{BACKFILL_CHECKPOINTS_TABLE}` (\n"
        "    `table_name` String,\n"
        "    `backfill_id` String,\n"
        "    `range_index` Int32,\n"
        "    `range_start` Int64,\n"
        "    `range_end` Int64,\n"
        "    `next_key` Int64,\n"
        "    `rows_copied` Int64,\n"
        "    `snapshot_lsn` UInt64,\n"
        f"    `state` {dialect.string_key_type()},\n"
        "    `rows_total` Int64 DEFAULT 0,\n"
        "    `error` String DEFAULT '',\n"
        f"    {dialect.timestamp_column_definition('updated_at')}\n"
        f") ENGINE = {dialect.replacing_engine('updated_at')}\n"
        "ORDER BY (table_name, backfill_id, range_index)"
    )


def arrow_type(spec: FieldSpec) -> pa.DataType:
    """The Arrow type that carries a catalog field exactly (UUIDs travel in canonical text)."""
    if spec.type is FieldType.DECIMAL:
        return pa.decimal128(spec.precision, spec.scale)
    return {
        FieldType.STRING: pa.string(),
        FieldType.ENUM: pa.string(),
        FieldType.UUID: pa.string(),
        FieldType.INT: pa.int64(),
        FieldType.FLOAT: pa.float64(),
        FieldType.BOOL: pa.bool_(),
        FieldType.TIMESTAMP: _TIMESTAMP,
        FieldType.DATE: pa.date32(),
    }[spec.type]


def zero_value(spec: FieldSpec) -> Any:
    """What a tombstone carries in a non-nullable field (ClickHouse's default for the type).

    Nobody reads it: FINAL keeps the tombstone and every query filters deleted rows.
    """
    return {
        FieldType.STRING: "",
        FieldType.ENUM: "",
        FieldType.UUID: "00000000-0000-0000-0000-000000000000",
        FieldType.INT: 0,
        FieldType.FLOAT: 0.0,
        FieldType.DECIMAL: Decimal(0).scaleb(-spec.scale),
        FieldType.BOOL: False,
        FieldType.TIMESTAMP: dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        FieldType.DATE: dt.date(1970, 1, 1),
    }[spec.type]


_TIMESTAMP = pa.timestamp("us", tz="UTC")
_SYNC_STATE_TYPES = {
    "table_name": pa.string(),
    "source": pa.string(),
    "last_sync_at": _TIMESTAMP,
    "updated_at": _TIMESTAMP,
    "state": pa.string(),
    "pending_events": pa.int64(),
    "events_per_second": pa.float64(),
    "events_applied": pa.int64(),
    "last_error": pa.string(),
}


def sync_state_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows for the sync-state table; columns the rows leave out take their DDL defaults."""
    names = [name for name in _SYNC_STATE_TYPES if rows and name in rows[0]]
    return pa.table(
        {name: pa.array([row[name] for row in rows], _SYNC_STATE_TYPES[name]) for name in names}
    )


_CHECKPOINT_TYPES = {
    "table_name": pa.string(),
    "backfill_id": pa.string(),
    "range_index": pa.int32(),
    "range_start": pa.int64(),
    "range_end": pa.int64(),
    "next_key": pa.int64(),
    "rows_copied": pa.int64(),
    "snapshot_lsn": pa.uint64(),
    "state": pa.string(),
    "rows_total": pa.int64(),
    "error": pa.string(),
    "updated_at": _TIMESTAMP,
}


def backfill_checkpoint_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows for the backfill checkpoint table (every column given)."""
    return pa.table(
        {
            name: pa.array([row[name] for row in rows], kind)
            for name, kind in _CHECKPOINT_TYPES.items()
        }
    )


def database_ddl(catalog: Catalog) -> str:
    """``CREATE DATABASE IF NOT EXISTS`` for the catalog's database."""
    return f"CREATE DATABASE IF NOT EXISTS `{catalog.database}`"


def all_ddl(catalog: Catalog, *, dialect: Dialect = MODERN) -> list[str]:
    """Every statement that prepares an empty engine for the catalog, in order."""
    statements = [
        database_ddl(catalog),
        sync_state_ddl(catalog, dialect=dialect),
        backfill_checkpoints_ddl(catalog, dialect=dialect),
    ]
    statements += [
        replica_table_ddl(catalog, model, dialect=dialect) for model in catalog.models.values()
    ]
    return statements
