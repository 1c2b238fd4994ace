"""PostgreSQL DDL for the source tables a catalog describes (the demo stack and the tests).

Real modules own their schemas; this renders a compatible one so the local stack and the tests use
the catalog as their one source of truth. REPLICA IDENTITY FULL matters: with the default identity
a delete event carries only the primary key, and the worker needs the tenant column as well to
write the tombstone under the right (tenant, key).
"""

from __future__ import annotations

from service.catalog import Catalog, FieldSpec, FieldType, Model

_PG_TYPES = {
    FieldType.STRING: "text",
    FieldType.ENUM: "text",
    FieldType.UUID: "uuid",
    FieldType.INT: "bigint",
    FieldType.FLOAT: "double precision",
    FieldType.BOOL: "boolean",
    FieldType.TIMESTAMP: "timestamptz",
    FieldType.DATE: "date",
}


def _column(spec: FieldSpec) -> str:
    kind = (
        f"numeric({spec.precision}, {spec.scale})"
        if spec.type is FieldType.DECIMAL
        else _PG_TYPES[spec.type]
    )
    return f'"{spec.name}" {kind}{"" if spec.nullable else " NOT NULL"}'


def source_table_ddl(model: Model) -> list[str]:
    """CREATE TABLE (if missing) and REPLICA IDENTITY FULL for one model's source table."""
    schema, table = model.source.split(".")
    columns = [f'"{model.tenant_column}" text NOT NULL', *map(_column, model.fields.values())]
    key = ", ".join(f'"{c}"' for c in model.primary_key)
    return [
        f'CREATE SCHEMA IF NOT EXISTS "{schema}"',
        f'CREATE TABLE IF NOT EXISTS "{schema}"."{table}" (\n    '
        + ",\n    ".join(columns)
        + f",\n    PRIMARY KEY ({key})\n)",
        f'ALTER TABLE "{schema}"."{table}" REPLICA IDENTITY FULL',
    ]


def source_schema_ddl(catalog: Catalog) -> list[str]:
    """Every statement creating the catalog's source tables, in order."""
    return [s for model in catalog.replicated_models() for s in source_table_ddl(model)]
