"""ClickHouse DDL derived from the catalog: one ReplacingMergeTree replica per model.

Rows carry ``_version`` (monotonic per row, from the source position) and ``_is_deleted``; the
highest version of a key wins under FINAL. The sort key is (tenant, primary key) and never changes.
The partition key is derived from the tenant only, so a row can never move to another partition
(its delete would then never collapse it) and FINAL need not merge across partitions.
"""

from __future__ import annotations

from service.backends.dialect import MODERN, Dialect
from service.catalog import Catalog, Model

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
