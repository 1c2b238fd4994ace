"""ClickHouse DDL derived from the catalog: one ReplacingMergeTree replica per model.

Rows carry ``_version`` (monotonic per row, from the source position) and ``_is_deleted``; the
highest version of a key wins under FINAL. The sort key is (tenant, primary key) and never changes.
The partition key is derived from the tenant only, so a row can never move to another partition
(its delete would then never collapse it) and FINAL need not merge across partitions.
"""

from __future__ import annotations

from service.catalog import Catalog, Model

PARTITIONS = 16
SYNC_STATE_TABLE = "_sync_state"


def replica_table_ddl(catalog: Catalog, model: Model) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a model's replica."""
    columns = [f"`{model.tenant_column}` LowCardinality(String)"]
    columns += [f"`{spec.name}` {spec.clickhouse_type}" for spec in model.fields.values()]
    columns += ["`_version` UInt64", "`_is_deleted` UInt8"]
    order_by = ", ".join(f"`{c}`" for c in (model.tenant_column, *model.primary_key))
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{model.table}` (\n    "
        + ",\n    ".join(columns)
        + "\n) ENGINE = ReplacingMergeTree(_version, _is_deleted)\n"
        f"PARTITION BY cityHash64(`{model.tenant_column}`) % {PARTITIONS}\n"
        f"ORDER BY ({order_by})"
    )


def sync_state_ddl(catalog: Catalog) -> str:
    """The table whatever loads data writes: per replica table, the time it is complete up to."""
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{SYNC_STATE_TABLE}` (\n"
        "    `table_name` String,\n"
        "    `source` LowCardinality(String),\n"
        "    `last_sync_at` DateTime64(6, 'UTC'),\n"
        "    `updated_at` DateTime64(6, 'UTC')\n"
        ") ENGINE = ReplacingMergeTree(updated_at)\n"
        "ORDER BY table_name"
    )


def database_ddl(catalog: Catalog) -> str:
    """``CREATE DATABASE IF NOT EXISTS`` for the catalog's database."""
    return f"CREATE DATABASE IF NOT EXISTS `{catalog.database}`"


def all_ddl(catalog: Catalog) -> list[str]:
    """Every statement that prepares an empty engine for the catalog, in order."""
    statements = [database_ddl(catalog), sync_state_ddl(catalog)]
    statements += [replica_table_ddl(catalog, model) for model in catalog.models.values()]
    return statements
