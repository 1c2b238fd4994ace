"""The model catalog: which modules and models exist, their ClickHouse tables and typed fields.

The catalog is declarative (``deploy/catalog.toml``) and validated as a whole at start; every
identifier the query compiler ever writes into SQL comes from here, never from a request.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: How many relations a dotted path may follow (``deal.contact.country`` is two): each hop is a
#: join, and reporting questions beyond two hops are better served by a model of their own.
MAX_RELATION_HOPS = 2
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
    property_key: str | None = None
    """Set for ``properties.<key>`` of an event model: the key in the free-form string map
    (such a field is a nullable string that is not a column of its own)."""
    relation_path: tuple[str, ...] = ()
    """Set for a related model's field (``contact.country``): the relations followed, in order.
    ``name`` is then the whole dotted path and ``column`` the related model's column; the field
    reads as nullable, since a row whose related row is missing reads NULL there."""
    column: str = ""
    """The column that stores the field, when it is not ``name`` (related fields)."""

    @property
    def column_name(self) -> str:
        """The column of the model that holds the field (the related model's, for a path)."""
        return self.column or self.name

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


class ModelKind(enum.Enum):
    """Where a model's rows come from."""

    CDC = "cdc"
    """Replicated from a PostgreSQL table (Debezium, the loader, backfills)."""
    EVENTS = "events"
    """Product events written by the event sink; append-only, idempotent by event id."""


@dataclass(frozen=True)
class EventFields:
    """Which fields of an event model play the fixed roles, and its free-form properties."""

    actor: str
    timestamp: str
    event: str
    event_id: str
    properties: str
    """Base name of the string map of further properties: ``properties.<key>`` in requests,
    stored as the parallel arrays ``<properties>_keys`` and ``<properties>_values`` (every
    ClickHouse version has arrays; ``Map`` needs 21.1)."""

    @property
    def key_column(self) -> str:
        """The column holding the property keys."""
        return f"{self.properties}_keys"

    @property
    def value_column(self) -> str:
        """The column holding the property values, parallel to the keys."""
        return f"{self.properties}_values"


@dataclass(frozen=True)
class Relation:
    """A many-to-one relation: ``field`` of the model holds the primary key of ``target``."""

    name: str
    field: str
    target: Model
    """The related model, with its own relations one hop shallower (none at the last hop)."""

    @property
    def target_key(self) -> str:
        """The target's primary key column, which ``field`` refers to."""
        return self.target.primary_key[0]


ROLLUP_AGGREGATES = ("count", "sum", "avg", "min", "max", "count_distinct")
#: A rollup's grain -> the request intervals it can answer (those it divides).
ROLLUP_GRAINS: Mapping[str, tuple[str, ...]] = {
    "hour": ("hour", "day", "week", "month", "quarter", "year"),
    "day": ("day", "week", "month", "quarter", "year"),
    "week": ("week",),
    "month": ("month", "quarter", "year"),
}
_MEASURE = re.compile(r"^(?P<aggregate>[a-z_]+)(?:\((?P<field>[a-z_][a-z0-9_]{0,62})\))?$")


@dataclass(frozen=True)
class RollupMeasure:
    """One additive measure a rollup keeps as a mergeable state: ``count``, ``sum(amount)``..."""

    aggregate: str
    field: str = ""

    @property
    def spelling(self) -> str:
        """The measure as the catalog writes it."""
        return f"{self.aggregate}({self.field})" if self.field else self.aggregate


@dataclass(frozen=True)
class Rollup:
    """A pre-aggregation of a model declared in the catalog (``service.rollups``).

    Rows of the model grouped by ``dimensions`` and by the bucket of ``time_field`` at ``grain``
    in ``time_zone`` (no time bucket when ``time_field`` is empty), with ``measures`` kept as
    aggregate states, so that any coarser grouping merges them exactly.
    """

    name: str
    dimensions: tuple[str, ...]
    measures: tuple[RollupMeasure, ...]
    time_field: str = ""
    grain: str = ""
    time_zone: str = "UTC"

    @property
    def table(self) -> str:
        """The rollup's table: named after the declaration, so that a changed one starts anew."""
        digest = hashlib.sha256(repr(self).encode()).hexdigest()[:10]
        return f"_rollup_{self.name}_{digest}"


@dataclass(frozen=True)
class Model:
    """A queryable model: a module's table replicated into ClickHouse, or an event model."""

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
    kind: ModelKind = ModelKind.CDC
    events: EventFields | None = None
    """The event roles; set exactly when ``kind`` is EVENTS."""
    relations: Mapping[str, Relation] = dataclasses.field(default_factory=dict)
    """Many-to-one relations by name; dotted request paths (``contact.country``) follow them."""
    rollups: tuple[Rollup, ...] = ()
    """The rollups declared on the model (``service.rollups``), in catalog order."""

    @property
    def is_events(self) -> bool:
        """Whether the model holds product events rather than replicated rows."""
        return self.kind is ModelKind.EVENTS

    @property
    def qualified_name(self) -> str:
        """``module.model``, as permissions spell it."""
        return f"{self.module}.{self.name}"

    @property
    def read_permission(self) -> str:
        """The permission a caller needs to query this model."""
        return f"{self.module}.{self.name}.read"

    @property
    def write_permission(self) -> str:
        """The permission a caller needs to send events to this model."""
        return f"{self.module}.{self.name}.write"


@dataclass(frozen=True)
class ActorSegment:
    """A tenant's named actor set, resolved against the catalog (``service.segments``).

    ``behavioral``: the actors (``actor_field``) of ``model``'s events of ``event`` (any when
    empty) passing ``filters``, at least ``min_count`` of them in the last ``window_seconds``.
    ``properties``: the keys (``actor_field``) of ``model``'s live rows passing ``filters``.
    ``actors`` names the model the actor values are keys of.
    """

    name: str
    kind: str
    model: Model
    actor_field: str
    actors: str
    filters: Mapping[str, str]
    event: str = ""
    min_count: int = 0
    window_seconds: int = 0


@dataclass(frozen=True)
class Catalog:
    """Every model, by module and name."""

    database: str
    models: Mapping[tuple[str, str], Model]
    segments: Mapping[str, ActorSegment] = dataclasses.field(default_factory=dict)
    """The segments of the tenant a request is compiled for: set per request by the runner
    (``with_segments``), empty in the catalog the service loads."""

    def with_segments(self, segments: Mapping[str, ActorSegment]) -> Catalog:
        """This catalog as one tenant sees it, with that tenant's segments."""
        return dataclasses.replace(self, segments=dict(segments))

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

    def replicated_models(self) -> list[Model]:
        """The models replicated from PostgreSQL, in catalog order (what CDC and loaders read)."""
        return [m for m in self.models.values() if m.kind is ModelKind.CDC]

    def event_models(self) -> list[Model]:
        """The event models, in catalog order (what the event sink writes)."""
        return [m for m in self.models.values() if m.kind is ModelKind.EVENTS]


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
    declared: dict[tuple[str, str], tuple[str, Any]] = {}
    tables: set[str] = set()
    for index, raw in enumerate(raw_models):
        where = f"{origin}: models[{index}]"
        if not isinstance(raw, dict):
            raise CatalogError(f"{where} must be a table")
        model = _parse_model(
            {k: v for k, v in raw.items() if k not in ("relations", "rollups")},
            default_tenant,
            where,
        )
        if "rollups" in raw:
            model = dataclasses.replace(
                model, rollups=_parse_rollups(model, raw["rollups"], f"{where}.rollups")
            )
        key = (model.module, model.name)
        if key in models:
            raise CatalogError(f"{where}: model {model.qualified_name} is defined twice")
        if model.table in tables:
            raise CatalogError(f"{where}: table {model.table} is used by two models")
        tables.add(model.table)
        models[key] = model
        if "relations" in raw:
            declared[key] = (f"{where} ({model.qualified_name}).relations", raw["relations"])
    rollup_names = [r.name for m in models.values() for r in m.rollups]
    for name in rollup_names:
        if rollup_names.count(name) > 1:
            raise CatalogError(f"{origin}: rollup {name!r} is declared twice")
    return Catalog(database=database, models=_with_relations(models, declared))


def _with_relations(
    models: dict[tuple[str, str], Model], declared: Mapping[tuple[str, str], tuple[str, Any]]
) -> dict[tuple[str, str], Model]:
    """The models with their relations, each target nested as deep as a path may follow.

    Relations may form cycles (contacts -> accounts -> contacts); nesting the targets up to
    MAX_RELATION_HOPS keeps every model immutable and makes a longer path unresolvable.
    """
    links = {
        key: _parse_relations(models[key], raw, models, where)
        for key, (where, raw) in declared.items()
    }
    layer = models
    for _ in range(MAX_RELATION_HOPS):
        previous = layer
        layer = {
            key: dataclasses.replace(
                model,
                relations={
                    name: Relation(name, field_name, previous[target])
                    for name, (field_name, target) in links.get(key, {}).items()
                },
            )
            for key, model in models.items()
        }
    return layer


def _parse_relations(
    model: Model, raw: Any, models: Mapping[tuple[str, str], Model], where: str
) -> dict[str, tuple[str, tuple[str, str]]]:
    """Validate a model's ``relations`` table: name -> (field, target model key)."""
    if not isinstance(raw, dict):
        raise CatalogError(
            f'{where} must be a table of name = {{ field = "...", target = "module.model.key" }}'
        )
    links: dict[str, tuple[str, tuple[str, str]]] = {}
    for name, spec in raw.items():
        here = f"{where}.{name}"
        _identifier(name, here)
        if name in model.fields or name == model.tenant_column:
            raise CatalogError(f"{here}: {name!r} is also a field of the model; rename one")
        if model.events is not None and name == model.events.properties:
            raise CatalogError(f"{here}: {name!r} is the model's property map; rename it")
        if not isinstance(spec, dict):
            raise CatalogError(f'{here} must be a table {{ field = "...", target = "..." }}')
        _only_keys(spec, {"field", "target"}, here)
        field_name = spec.get("field")
        source = model.fields.get(field_name) if isinstance(field_name, str) else None
        if source is None:
            raise CatalogError(f"{here}.field: {field_name!r} is not a field of the model")
        target_text = spec.get("target")
        parts = target_text.split(".") if isinstance(target_text, str) else []
        if len(parts) != 3:
            raise CatalogError(f"{here}.target: {target_text!r} is not module.model.key")
        target = models.get((parts[0], parts[1]))
        if target is None:
            raise CatalogError(f"{here}.target: no model {parts[0]}.{parts[1]} in the catalog")
        if target.is_events:
            raise CatalogError(
                f"{here}.target: {target.qualified_name} is an event model; relations lead to "
                "replicated models, one row per key"
            )
        if target.primary_key != (parts[2],):
            raise CatalogError(
                f"{here}.target: {parts[2]!r} is not the primary key of {target.qualified_name} "
                f"({', '.join(target.primary_key)}); a relation leads to exactly one row"
            )
        key_spec = target.fields[parts[2]]
        if source.type is not key_spec.type:
            raise CatalogError(
                f"{here}.field: {field_name!r} is {source.type.value} but "
                f"{target_text} is {key_spec.type.value}"
            )
        links[name] = (source.name, (target.module, target.name))
    return links


def _parse_model(raw: Mapping[str, Any], default_tenant: Any, where: str) -> Model:
    kind_text = raw.get("kind", "cdc")
    try:
        kind = ModelKind(kind_text)
    except ValueError:
        raise CatalogError(f"{where}.kind: {kind_text!r} is not cdc or events") from None
    if kind is ModelKind.EVENTS:
        return _parse_event_model(raw, default_tenant, where)
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
            "kind",
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
    fields = _parse_fields(raw, tenant_column, where)
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
        marker = fields.get(watermark) if isinstance(watermark, str) else None
        if marker is None:
            raise CatalogError(f"{where}.watermark_column: {watermark!r} is not a field")
        if marker.type is not FieldType.TIMESTAMP or marker.nullable:
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


def _parse_fields(raw: Mapping[str, Any], tenant_column: str, where: str) -> dict[str, FieldSpec]:
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
    return fields


#: The types each event role may have; all roles are non-nullable.
_EVENT_ROLE_TYPES = {
    "actor": (FieldType.INT, FieldType.STRING, FieldType.UUID),
    "timestamp": (FieldType.TIMESTAMP,),
    "event": (FieldType.ENUM, FieldType.STRING),
    "event_id": (FieldType.UUID, FieldType.STRING),
}


def _parse_rollups(model: Model, raw: Any, where: str) -> tuple[Rollup, ...]:
    """Validate a model's ``[[models.rollups]]`` entries."""
    if not isinstance(raw, list):
        raise CatalogError(f"{where} must be a list of tables ([[models.rollups]])")
    rollups = []
    for index, entry in enumerate(raw):
        here = f"{where}[{index}]"
        if not isinstance(entry, dict):
            raise CatalogError(f"{here} must be a table")
        _only_keys(
            entry, {"name", "dimensions", "measures", "time_field", "grain", "time_zone"}, here
        )
        name = _identifier(entry.get("name"), f"{here}.name")
        dimensions = entry.get("dimensions", [])
        if not isinstance(dimensions, list) or len(set(map(str, dimensions))) != len(dimensions):
            raise CatalogError(f"{here}.dimensions must be a list of distinct field names")
        for dimension in dimensions:
            _rollup_field(model, dimension, f"{here}.dimensions")
        time_field = entry.get("time_field", "")
        grain = entry.get("grain", "")
        time_zone = entry.get("time_zone", "UTC")
        if time_field:
            spec = _rollup_field(model, time_field, f"{here}.time_field")
            if not spec.type.is_temporal:
                raise CatalogError(f"{here}.time_field: {time_field!r} is not a timestamp or date")
            if time_field in dimensions:
                raise CatalogError(f"{here}.time_field: {time_field!r} is also a dimension")
            if grain not in ROLLUP_GRAINS:
                raise CatalogError(f"{here}.grain: {grain!r} is not one of {list(ROLLUP_GRAINS)}")
            if grain == "hour" and spec.type is FieldType.DATE:
                raise CatalogError(f"{here}.grain: hour is finer than the date {time_field!r}")
            if grain == "hour" and time_zone != "UTC":
                # A zone whose offset moves by half an hour cuts local hours across UTC hours.
                raise CatalogError(f"{here}.time_zone: hourly rollups are kept in UTC")
        elif grain:
            raise CatalogError(f"{here}.grain: needs a time_field")
        if not isinstance(time_zone, str) or not re.fullmatch(
            r"[A-Za-z][A-Za-z0-9_+\-/]*", time_zone
        ):
            raise CatalogError(f"{here}.time_zone must be an IANA zone name")
        try:
            zoneinfo.ZoneInfo(time_zone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise CatalogError(f"{here}.time_zone: unknown zone {time_zone!r}") from None
        measures = entry.get("measures", ["count"])
        if not isinstance(measures, list) or not measures:
            raise CatalogError(f'{here}.measures must be a non-empty list such as ["count"]')
        parsed = tuple(_rollup_measure(model, text, f"{here}.measures") for text in measures)
        if len(set(parsed)) != len(parsed):
            raise CatalogError(f"{here}.measures: a measure is listed twice")
        rollups.append(
            Rollup(
                name, tuple(dimensions), parsed, time_field, grain if time_field else "", time_zone
            )
        )
    return tuple(rollups)


def _rollup_field(model: Model, name: Any, where: str) -> FieldSpec:
    spec = model.fields.get(name) if isinstance(name, str) else None
    if spec is None:
        raise CatalogError(f"{where}: {name!r} is not a field of the model")
    if name == model.soft_delete_column:
        raise CatalogError(f"{where}: {name!r} is the soft-delete column; rollups hold live rows")
    return spec


def _rollup_measure(model: Model, text: Any, where: str) -> RollupMeasure:
    match = _MEASURE.fullmatch(text) if isinstance(text, str) else None
    if match is None or match["aggregate"] not in ROLLUP_AGGREGATES:
        raise CatalogError(
            f"{where}: {text!r} is not a measure such as count, sum(amount), count_distinct(id) "
            f"(aggregates: {', '.join(ROLLUP_AGGREGATES)})"
        )
    aggregate, field_name = match["aggregate"], match["field"] or ""
    if not field_name:
        if aggregate != "count":
            raise CatalogError(f"{where}: {aggregate} needs a field, as in {aggregate}(amount)")
        return RollupMeasure("count")
    spec = _rollup_field(model, field_name, where)
    if aggregate in ("sum", "avg") and not spec.type.is_numeric:
        raise CatalogError(f"{where}: {aggregate}({field_name}) needs a numeric field")
    if aggregate in ("min", "max") and (not spec.type.is_ordered or spec.type is FieldType.UUID):
        raise CatalogError(f"{where}: {aggregate}({field_name}) needs an ordered field")
    return RollupMeasure(aggregate, field_name)


def _parse_event_model(raw: Mapping[str, Any], default_tenant: Any, where: str) -> Model:
    """An event model: fields with four fixed roles, plus the free-form property map."""
    _only_keys(raw, {"module", "name", "table", "tenant_column", "kind", "events", "fields"}, where)
    module = _identifier(raw.get("module"), f"{where}.module")
    name = _identifier(raw.get("name"), f"{where}.name")
    where = f"{where} ({module}.{name})"
    table = _identifier(raw.get("table", f"{module}_{name}"), f"{where}.table")
    tenant_column = _identifier(raw.get("tenant_column", default_tenant), f"{where}.tenant_column")
    fields = _parse_fields(raw, tenant_column, where)
    roles = raw.get("events")
    if not isinstance(roles, dict):
        raise CatalogError(
            f"{where}.events must be a table naming the actor, timestamp, event and event_id "
            "fields (and optionally properties)"
        )
    _only_keys(roles, {*_EVENT_ROLE_TYPES, "properties"}, f"{where}.events")
    chosen: dict[str, str] = {}
    for role, allowed in _EVENT_ROLE_TYPES.items():
        field_name = roles.get(role, role)
        spec = fields.get(field_name) if isinstance(field_name, str) else None
        if spec is None:
            raise CatalogError(f"{where}.events.{role}: {field_name!r} is not a field")
        if spec.type not in allowed or spec.nullable:
            kinds = " or ".join(t.value for t in allowed)
            raise CatalogError(
                f"{where}.events.{role}: {field_name!r} must be a non-nullable {kinds}"
            )
        if field_name in chosen.values():
            raise CatalogError(f"{where}.events.{role}: {field_name!r} already plays another role")
        chosen[role] = field_name
    properties = _identifier(roles.get("properties", "properties"), f"{where}.events.properties")
    event_fields = EventFields(properties=properties, **chosen)
    for column in (properties, event_fields.key_column, event_fields.value_column):
        if column in fields or column == tenant_column:
            raise CatalogError(
                f"{where}.events.properties: {column!r} collides with a field of the model"
            )
    return Model(
        module=module,
        name=name,
        table=table,
        source="",
        primary_key=(event_fields.event_id,),
        tenant_column=tenant_column,
        soft_delete_column=None,
        fields=fields,
        kind=ModelKind.EVENTS,
        events=event_fields,
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
