"""The model catalog: which modules and models exist, their ClickHouse tables and typed fields.

The catalog is declarative (``deploy/catalog.toml``) and validated as a whole at start; every
identifier the query compiler ever writes into SQL comes from here, never from a request.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TYPE_SPEC = re.compile(r"^(?P<base>[a-z]+)(?:\((?P<p>\d+)\s*,\s*(?P<s>\d+)\))?(?P<nullable>\?)?$")


class CatalogError(ValueError):
    """The catalog file is malformed; the message names the file and the offending key."""


class FieldType(enum.Enum):
    """Logical field types; each maps to one ClickHouse type and one set of filter operators."""

    STRING = "string"
    ENUM = "enum"
    UUID = "uuid"
    INT = "int"
    FLOAT = "float"
    DECIMAL = "decimal"
    BOOL = "bool"
    TIMESTAMP = "timestamp"
    DATE = "date"

    @property
    def is_numeric(self) -> bool:
        """Whether sums, averages and percentiles make sense."""
        return self in (FieldType.INT, FieldType.FLOAT, FieldType.DECIMAL)

    @property
    def is_temporal(self) -> bool:
        """Whether the field can be bucketed by ``groupByInterval``."""
        return self in (FieldType.TIMESTAMP, FieldType.DATE)

    @property
    def is_ordered(self) -> bool:
        """Whether ``gt``/``lt`` and ``min``/``max`` make sense."""
        return self is not FieldType.BOOL


@dataclass(frozen=True)
class FieldSpec:
    """One queryable field of a model."""

    name: str
    type: FieldType
    nullable: bool = False
    precision: int = 0
    scale: int = 0

    @property
    def clickhouse_type(self) -> str:
        """The column type in ClickHouse, ``Nullable`` included."""
        base = {
            FieldType.STRING: "String",
            FieldType.ENUM: "LowCardinality(String)",
            FieldType.UUID: "UUID",
            FieldType.INT: "Int64",
            FieldType.FLOAT: "Float64",
            FieldType.DECIMAL: f"Decimal({self.precision}, {self.scale})",
            FieldType.BOOL: "Bool",
            FieldType.TIMESTAMP: "DateTime64(6, 'UTC')",
            FieldType.DATE: "Date32",
        }[self.type]
        if self.nullable:
            if base.startswith("LowCardinality("):
                return f"LowCardinality(Nullable({base[15:-1]}))"
            return f"Nullable({base})"
        return base

    @property
    def parameter_type(self) -> str:
        """The ClickHouse type a bound value for this field is declared with (never Nullable)."""
        if self.type is FieldType.ENUM:
            return "String"
        return FieldSpec(self.name, self.type, False, self.precision, self.scale).clickhouse_type


@dataclass(frozen=True)
class Model:
    """A queryable model: a module's table replicated into ClickHouse."""

    module: str
    name: str
    table: str
    source: str
    primary_key: tuple[str, ...]
    tenant_column: str
    soft_delete_column: str | None
    fields: Mapping[str, FieldSpec]
    watermark_column: str | None = None
    """The non-nullable timestamp the incremental loader orders changes by (the source must set
    it to the write time on every insert and update); None: the loader cannot read the model."""

    @property
    def qualified_name(self) -> str:
        """``module.model``, as permissions spell it."""
        return f"{self.module}.{self.name}"

    @property
    def read_permission(self) -> str:
        """The permission a caller needs to query this model."""
        return f"{self.module}.{self.name}.read"


@dataclass(frozen=True)
class Catalog:
    """Every model, by module and name."""

    database: str
    models: Mapping[tuple[str, str], Model]

    def find(self, reference: str) -> list[Model]:
        """Models matching ``module.model`` or a bare model name (several if it is ambiguous)."""
        if "." in reference:
            module, _, name = reference.partition(".")
            model = self.models.get((module, name))
            return [model] if model else []
        return [m for (_, name), m in self.models.items() if name == reference]

    def get(self, module: str, name: str) -> Model | None:
        """The model ``name`` of ``module``, if it exists."""
        return self.models.get((module, name))


def load_catalog(path: Path) -> Catalog:
    """Read and validate the catalog file; raise CatalogError naming what is wrong and where."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CatalogError(f"{path}: catalog file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from exc
    return parse_catalog(data, origin=str(path))


def parse_catalog(data: Mapping[str, Any], origin: str = "<catalog>") -> Catalog:
    """Validate an already-parsed catalog document."""
    _only_keys(data, {"database", "defaults", "models"}, origin)
    database = _identifier(data.get("database", "analytics"), f"{origin}: database")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise CatalogError(f"{origin}: defaults must be a table")
    _only_keys(defaults, {"tenant_column"}, f"{origin}: defaults")
    default_tenant = defaults.get("tenant_column", "tenant_id")
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise CatalogError(f"{origin}: at least one [[models]] entry is required")
    models: dict[tuple[str, str], Model] = {}
    tables: set[str] = set()
    for index, raw in enumerate(raw_models):
        where = f"{origin}: models[{index}]"
        if not isinstance(raw, dict):
            raise CatalogError(f"{where} must be a table")
        model = _parse_model(raw, default_tenant, where)
        key = (model.module, model.name)
        if key in models:
            raise CatalogError(f"{where}: model {model.qualified_name} is defined twice")
        if model.table in tables:
            raise CatalogError(f"{where}: table {model.table} is used by two models")
        tables.add(model.table)
        models[key] = model
    return Catalog(database=database, models=models)


def _parse_model(raw: Mapping[str, Any], default_tenant: Any, where: str) -> Model:
    _only_keys(
        raw,
        {
            "module",
            "name",
            "table",
            "source",
            "primary_key",
            "tenant_column",
            "soft_delete_column",
            "watermark_column",
            "fields",
        },
        where,
    )
    module = _identifier(raw.get("module"), f"{where}.module")
    name = _identifier(raw.get("name"), f"{where}.name")
    where = f"{where} ({module}.{name})"
    table = _identifier(raw.get("table", f"{module}_{name}"), f"{where}.table")
    source = raw.get("source", f"public.{name}")
    parts = source.split(".") if isinstance(source, str) else []
    if len(parts) != 2 or not all(IDENTIFIER.fullmatch(p) for p in parts):
        raise CatalogError(f"{where}.source must be schema.table of lowercase identifiers")
    tenant_column = _identifier(raw.get("tenant_column", default_tenant), f"{where}.tenant_column")
    raw_fields = raw.get("fields")
    if not isinstance(raw_fields, dict) or not raw_fields:
        raise CatalogError(f'{where}.fields must be a non-empty table of name = "type"')
    fields: dict[str, FieldSpec] = {}
    for field_name, spec in raw_fields.items():
        fname = _identifier(field_name, f"{where}.fields")
        if fname == tenant_column:
            raise CatalogError(
                f"{where}.fields.{fname}: the tenant column is implicit and must not be listed"
            )
        if fname.startswith("_"):
            raise CatalogError(f"{where}.fields.{fname}: names starting with _ are reserved")
        fields[fname] = _parse_field(fname, spec, f"{where}.fields.{fname}")
    primary_key = raw.get("primary_key", ["id"])
    if not isinstance(primary_key, list) or not primary_key:
        raise CatalogError(f"{where}.primary_key must be a non-empty list of field names")
    for column in primary_key:
        if column not in fields:
            raise CatalogError(f"{where}.primary_key: {column!r} is not a field")
        if fields[column].nullable:
            raise CatalogError(f"{where}.primary_key: {column!r} must not be nullable")
    soft_delete = raw.get("soft_delete_column")
    if soft_delete is not None:
        if soft_delete not in fields:
            raise CatalogError(f"{where}.soft_delete_column: {soft_delete!r} is not a field")
        spec = fields[soft_delete]
        if not (spec.nullable and spec.type in (FieldType.TIMESTAMP, FieldType.BOOL)):
            raise CatalogError(
                f"{where}.soft_delete_column: {soft_delete!r} must be a nullable timestamp or bool"
            )
    watermark = raw.get("watermark_column")
    if watermark is not None:
        spec = fields.get(watermark) if isinstance(watermark, str) else None
        if spec is None:
            raise CatalogError(f"{where}.watermark_column: {watermark!r} is not a field")
        if spec.type is not FieldType.TIMESTAMP or spec.nullable:
            raise CatalogError(
                f"{where}.watermark_column: {watermark!r} must be a non-nullable timestamp"
            )
    elif (
        (updated := fields.get("updated_at")) is not None
        and updated.type is FieldType.TIMESTAMP
        and not updated.nullable
    ):
        # The conventional write-time column serves unless the model names another one.
        watermark = "updated_at"
    return Model(
        module=module,
        name=name,
        table=table,
        source=source,
        primary_key=tuple(primary_key),
        tenant_column=tenant_column,
        soft_delete_column=soft_delete,
        fields=fields,
        watermark_column=watermark,
    )


def _parse_field(name: str, spec: Any, where: str) -> FieldSpec:
    if not isinstance(spec, str):
        raise CatalogError(f'{where}: type must be a string such as "int" or "decimal(18,2)?"')
    match = _TYPE_SPEC.fullmatch(spec.strip())
    if not match:
        raise CatalogError(f"{where}: cannot read type {spec!r}")
    try:
        field_type = FieldType(match["base"])
    except ValueError:
        known = ", ".join(t.value for t in FieldType)
        raise CatalogError(f"{where}: unknown type {match['base']!r} (known: {known})") from None
    precision = int(match["p"]) if match["p"] else 0
    scale = int(match["s"]) if match["s"] else 0
    if field_type is FieldType.DECIMAL:
        if not 1 <= precision <= 38 or not 0 <= scale <= precision:
            raise CatalogError(
                f"{where}: decimal needs 1 <= precision <= 38, 0 <= scale <= precision"
            )
    elif match["p"]:
        raise CatalogError(f"{where}: only decimal takes (precision, scale)")
    return FieldSpec(name, field_type, bool(match["nullable"]), precision, scale)


def _identifier(value: Any, where: str) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise CatalogError(f"{where}: {value!r} is not a lowercase identifier ([a-z_][a-z0-9_]*)")
    return value


def _only_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise CatalogError(f"{where}: unknown keys {unknown} (allowed: {sorted(allowed)})")
