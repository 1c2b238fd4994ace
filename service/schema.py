"""ClickHouse DDL derived from the catalog: one ReplacingMergeTree replica per model.

Rows carry ``_version`` (monotonic per row, from the source position) and ``_is_deleted``; the
highest version of a key wins under FINAL. The sort key is (tenant, primary key) and never changes.
The partition key is derived from the tenant only, so a row can never move to another partition
(its delete would then never collapse it) and FINAL need not merge across partitions.
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
SYNC_STATE_TABLE = "_sync_state"


def replica_table_ddl(catalog: Catalog, model: Model, *, dialect: Dialect = MODERN) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a model's replica.

    ``dialect`` is the server's (``HttpBackend.dialect()``); the default is the modern one that
    chDB and production servers speak. On a legacy server the engine has no ``_is_deleted``
    argument: readers filter ``_is_deleted = 0`` after FINAL, which the compiler always does.
    """
    columns = [f"`{model.tenant_column}` {dialect.tenant_column_type()}"]
    columns += [dialect.column_definition(spec.name, spec) for spec in model.fields.values()]
    columns += ["`_version` UInt64", "`_is_deleted` UInt8"]
    order_by = ", ".join(f"`{c}`" for c in (model.tenant_column, *model.primary_key))
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{model.table}` (\n    "
        + ",\n    ".join(columns)
        + f"\n) ENGINE = {dialect.replacing_engine('_version', '_is_deleted')}\n"
        f"PARTITION BY cityHash64(`{model.tenant_column}`) % {PARTITIONS}\n"
        f"ORDER BY ({order_by})"
    )


def sync_state_ddl(catalog: Catalog, *, dialect: Dialect = MODERN) -> str:
    """The table whatever loads data writes: per replica table, the time it is complete up to.

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
        "ORDER BY table_name"
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


def database_ddl(catalog: Catalog) -> str:
    """``CREATE DATABASE IF NOT EXISTS`` for the catalog's database."""
    return f"CREATE DATABASE IF NOT EXISTS `{catalog.database}`"


def all_ddl(catalog: Catalog, *, dialect: Dialect = MODERN) -> list[str]:
    """Every statement that prepares an empty engine for the catalog, in order."""
    statements = [database_ddl(catalog), sync_state_ddl(catalog, dialect=dialect)]
    statements += [
        replica_table_ddl(catalog, model, dialect=dialect) for model in catalog.models.values()
    ]
    return statements
