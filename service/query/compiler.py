"""compile_query: a pure function (request, catalog, tenant) -> SQL text + bound parameters.

Shape of every query::

    SELECT <formatted keys and metrics> FROM (
        SELECT <raw group keys k0..>, <metrics m0..>
        FROM `db`.`table` AS t FINAL
        WHERE t.`tenant_id` = {tenant:String} AND t.`_is_deleted` = 0 AND (<filters>)
        GROUP BY k0..
    ) ORDER BY <raw keys> LIMIT {limit:UInt64} OFFSET {offset:UInt64}

The inner query aggregates on raw values; the outer one renders timestamps as ISO 8601 and orders
on the raw values (so time buckets sort chronologically). Internal aliases (k0, m0, c0) never
collide with column names: ClickHouse lets an alias shadow a column everywhere in a query, which
would otherwise change what a filter means. No text from the request reaches the SQL: identifiers
come from the catalog, values are parameters, and the SQL depends only on the request's shape.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.errors import AnalyticsError, ErrorKind, not_found, validation_error
from service.query.actor_keys import holder_of
from service.query.field_paths import column_sql, fields_read, resolve_field
from service.query.filters import Condition, Filter, Junction, mentioned_fields, parse_filters
from service.query.joins import from_clause, pushable_filters, related_models
from service.query.request import MetricRequest, QueryRequest
from service.query.text_match import fold_case, folded_sql, like_pattern
from service.query.time_buckets import (
    BUCKET_SETTINGS,
    INTERVALS,
    UTC,
    bucket_start,
    date_bucket,
    render_local,
    timestamp_bucket_key,
)
from service.query.values import encode_text_parameter, parse_time_zone, typed_parameter

SIMPLE_AGGREGATES = ("count", "sum", "avg", "min", "max", "count_distinct")
_PERCENTILE = re.compile(r"^p([1-9][0-9]?)$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MAX_METRICS = 32
MAX_GROUP_KEYS = 8


@dataclass(frozen=True)
class QueryLimits:
    """Row limits a compiled query must respect (from settings)."""

    default_limit: int = 1000
    max_limit: int = 10_000
    max_offset: int = 1_000_000


SEGMENT_KEY = "segment"
"""The filter key naming a tenant's segment (``split_segment``)."""
SEGMENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class OutputColumn:
    """One key of each result row: its name for the caller, SQL alias and logical type."""

    key: str
    alias: str
    type: str


@dataclass(frozen=True)
class CompiledQuery:
    """SQL with ``{name:Type}`` placeholders, the parameter texts, and the result columns."""

    sql: str
    parameters: dict[str, str]
    columns: tuple[OutputColumn, ...]
    model: Model
    limit: int
    settings: dict[str, str] = field(default_factory=dict)
    #: The tenant the query was compiled for: the engine runs it as that tenant's user where
    #: row policies are enforced (empty for queries that are not a tenant's).
    tenant: str = ""
    #: The related models the query joins (its freshness is the oldest of all it reads).
    joined: tuple[Model, ...] = ()
    #: The rollup that answers the query instead of the model's rows ("" for none).
    rollup: str = ""

    @property
    def tables(self) -> tuple[str, ...]:
        """Every table the query reads: the model's, then the joined ones'."""
        return (self.model.table, *(m.table for m in self.joined))


@dataclass
class ParameterBuilder:
    """Collects parameters; names are positional so the SQL never depends on values.

    Shared by every compiler, so that one request's SQL numbers its parameters in one sequence.
    """

    parameters: dict[str, str] = field(default_factory=dict)

    def bind(self, clickhouse_type: str, text: str) -> str:
        """Add a parameter of ``clickhouse_type`` with the encoded ``text``; its placeholder."""
        name = f"p{len(self.parameters)}"
        self.parameters[name] = text
        return f"{{{name}:{clickhouse_type}}}"


class AggregatedSource(Protocol):
    """Pre-aggregated rows that answer a query in place of the model's (``service.rollups``)."""

    @property
    def name(self) -> str:
        """What ``meta.rollup`` reports."""
        ...

    def source(self, catalog: Catalog, model: Model, tenant: str, builder: ParameterBuilder) -> str:
        """The FROM source ``(...) AS t``: the fields as columns, the tenant's rows only."""
        ...

    def merge(self, metric: MetricRequest) -> str:
        """The SQL over the source's rows ``t`` that computes ``metric`` for a group."""
        ...

    def states(self, metric: MetricRequest) -> tuple[str, str]:
        """(aggregate function, column of the source's rows ``t``) of ``metric``'s states.

        ``<function>Merge(<column>)`` is ``merge(metric)``; with combinators after ``Merge``
        (``If``, ``State``) a caller merges some rows' states only, or keeps a partial state.
        """
        ...


def resolve_model(catalog: Catalog, reference: str) -> Model:
    """The model a request names, as ``module.model`` or a bare model name unique in the catalog."""
    if not reference:
        raise validation_error("model", "model: required", "REQUIRED")
    matches = catalog.find(reference[:200])
    if not matches:
        raise not_found(f"model: unknown model {reference[:200]!r}", model=reference[:200])
    if len(matches) > 1:
        names = ", ".join(sorted(m.qualified_name for m in matches))
        raise validation_error(
            "model", f"model: {reference!r} is ambiguous, name one of {names}", "AMBIGUOUS_MODEL"
        )
    return matches[0]


def compile_query(
    request: QueryRequest,
    catalog: Catalog,
    tenant: str,
    limits: QueryLimits | None = None,
    *,
    aggregated: AggregatedSource | None = None,
) -> CompiledQuery:
    """Validate ``request`` against the catalog and compile it for ``tenant``.

    Raises AnalyticsError (NOT_FOUND for an unknown model, VALIDATION naming the request field
    for anything else). The tenant condition, the deleted-row guard and FINAL are always present.
    ``aggregated``: a rollup the router found able to answer the request exactly; the query then
    groups its rows, merging their states, under the same keys, filters, order and limit.
    """
    limits = limits or QueryLimits()
    if not tenant:
        raise AnalyticsError(ErrorKind.UNAUTHORIZED, "no tenant in the token", "NO_TENANT")
    model = resolve_model(catalog, request.model)
    builder = ParameterBuilder()
    tenant_placeholder = builder.bind("String", encode_text_parameter(tenant))
    time_zone = parse_time_zone(request.time_zone)

    group_keys = _group_keys(request, model)
    interval = _interval(request, group_keys)
    metrics = _metrics(request, model)

    inner_select: list[str] = []
    outer_select: list[str] = []
    columns: list[OutputColumn] = []
    order_targets: dict[str, str] = {}
    used_keys: set[str] = set()
    for index, spec in enumerate(group_keys):
        raw = f"k{index}"
        expression, output_type = _group_expression(spec, model, interval, time_zone, builder)
        inner_select.append(f"{expression} AS {raw}")
        alias = f"c{len(columns)}"
        outer_select.append(
            f"{_render(raw, output_type, spec, interval, time_zone, builder)} AS {alias}"
        )
        columns.append(OutputColumn(spec.name, alias, output_type))
        order_targets[spec.name] = raw
        used_keys.add(spec.name)
    metric_fields = [_field(model, m.field, source) for m, _, source in metrics if m.field]
    for index, (metric, key, metric_source) in enumerate(metrics):
        raw = f"m{index}"
        if key in used_keys:
            raise validation_error(
                metric_source,
                f"{metric_source}: the result key {key!r} is used twice; set alias",
                "DUPLICATE_KEY",
            )
        used_keys.add(key)
        expression, output_type, value_spec = metric_expression(
            metric, model, metric_source, builder
        )
        merged = aggregated.merge(metric) if aggregated is not None else expression
        inner_select.append(f"{merged} AS {raw}")
        alias = f"c{len(columns)}"
        rendered = _render(raw, output_type, value_spec, "", "UTC", builder)
        outer_select.append(f"{rendered} AS {alias}")
        columns.append(OutputColumn(key, alias, output_type))
        order_targets[key] = raw

    source_sql, where, joined = (
        _source_and_where(
            request.filters,
            catalog,
            model,
            [*group_keys, *metric_fields],
            tenant_placeholder,
            time_zone,
            builder,
        )
        if aggregated is None
        else _aggregated_source_and_where(
            request.filters, catalog, model, aggregated, tenant_placeholder, time_zone, builder
        )
    )
    inner = f"SELECT {', '.join(inner_select)} FROM {source_sql} WHERE {' AND '.join(where)}"
    if group_keys:
        inner += f" GROUP BY {', '.join(f'k{i}' for i in range(len(group_keys)))}"

    uuid_keys = {f"k{i}" for i, spec in enumerate(group_keys) if spec.type is FieldType.UUID}
    order_by = _order(
        request.order, order_targets, [f"k{i}" for i in range(len(group_keys))], model, uuid_keys
    )
    limit, offset = _limit_offset(request, limits)
    sql = f"SELECT {', '.join(outer_select)} FROM ({inner})"
    if order_by:
        sql += f" ORDER BY {', '.join(order_by)}"
    sql += (
        f" LIMIT {builder.bind('UInt64', str(limit))} OFFSET {builder.bind('UInt64', str(offset))}"
    )
    settings = dict(BUCKET_SETTINGS) if interval else {}
    return CompiledQuery(
        sql,
        builder.parameters,
        tuple(columns),
        model,
        limit,
        settings,
        tenant=tenant,
        joined=joined,
        rollup=aggregated.name if aggregated is not None else "",
    )


def split_segment(filters: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The filters without the ``segment`` entry, and the segment's name ("" without one).

    ``"segment": "power_users"`` (or ``eq.power_users``) keeps the rows whose actor is in the
    tenant's segment of that name (``segment_condition``).
    """
    if SEGMENT_KEY not in filters:
        return dict(filters), ""
    rest = {key: value for key, value in filters.items() if key != SEGMENT_KEY}
    value = filters[SEGMENT_KEY]
    name = value.removeprefix("eq.")
    if not SEGMENT_NAME.fullmatch(name):
        raise validation_error(
            f"filters.{SEGMENT_KEY}",
            f"filters.{SEGMENT_KEY}: {value[:80]!r} is not a segment name such as power_users "
            "(or eq.<name>)",
            "INVALID_FILTER",
        )
    return rest, name


def segment_condition(
    catalog: Catalog,
    model: Model,
    name: str,
    builder: ParameterBuilder,
    tenant: str,
    *,
    actor: tuple[str, str] | None = None,
) -> tuple[str, Model]:
    """SQL keeping ``model``'s rows whose actor is in the tenant's segment ``name``.

    Also the segment's model (its read permission and freshness count for the query). The
    segment is read at query time from current data, in a subquery with its own tenant
    condition first. ``actor``: (the field holding a row's actor, what its values are keys of)
    when the caller has chosen it (a funnel step's); else the model's field holding the
    segment's actor keys. Raises a validation error on ``filters.segment`` for an unknown
    segment or a model holding none of the segment's actor keys.
    """
    source = f"filters.{SEGMENT_KEY}"
    segment = catalog.segments.get(name)
    if segment is None:
        raise validation_error(
            source,
            f"{source}: the tenant has no segment {name!r} (SegmentService.CreateSegment)",
            "UNKNOWN_SEGMENT",
        )
    if actor is None:
        field_name = holder_of(model, segment.actors, source)
    elif actor[1] == segment.actors:
        field_name = actor[0]
    else:
        raise validation_error(
            source,
            f"{source}: the segment's actors are keys of {segment.actors}, the funnel's of "
            f"{actor[1]}",
            "ACTOR_MISMATCH",
        )
    holder = column_sql(model.fields[field_name], model, builder.bind)
    members = segment.model
    where = where_conditions(segment.filters, members, builder, tenant, "UTC")
    member = column_sql(members.fields[segment.actor_field], members, builder.bind)
    tail = ""
    roles = members.events
    if segment.kind == "behavioral" and roles is not None:
        timestamp = column_sql(members.fields[roles.timestamp], members, builder.bind)
        seconds = builder.bind("Int64", str(segment.window_seconds))
        # After the guards: the range is what the sorting key can skip on. Closed at now: an
        # event dated later (a skewed client clock) is not "before the query runs".
        where[2:2] = [
            f"{timestamp} >= now64(6, 'UTC') - toIntervalSecond({seconds})",
            f"{timestamp} <= now64(6, 'UTC')",
        ]
        if segment.event:
            event = builder.bind("String", encode_text_parameter(segment.event))
            where.append(f"t.`{roles.event}` = {event}")
        tail = (
            f" GROUP BY {member} HAVING count() >= {builder.bind('UInt64', str(segment.min_count))}"
        )
    parsed = parse_filters(segment.filters)
    # A filter on a related model's soft-delete column shows its deleted rows, as in Query.
    table = from_clause(
        catalog,
        members,
        fields_read(members, [parsed]),
        tenant,
        guard_fields=mentioned_fields(parsed),
    )
    # Identifiers from the catalog, values bound.
    members_sql = f"SELECT {member} FROM {table} WHERE {' AND '.join(where)}{tail}"
    return f"{holder} IN ({members_sql})", members


def with_model(joined: Sequence[Model], extra: Model, model: Model) -> tuple[Model, ...]:
    """``joined`` and ``extra`` (each model once, never ``model`` itself)."""
    names = {m.qualified_name for m in joined} | {model.qualified_name}
    return (*joined, *([extra] if extra.qualified_name not in names else []))


def _source_and_where(  # noqa: PLR0917 (private, one call site)
    request_filters: Mapping[str, str],
    catalog: Catalog,
    model: Model,
    selected: list[FieldSpec],
    tenant: str,
    time_zone: str,
    builder: ParameterBuilder,
) -> tuple[str, list[str], tuple[Model, ...]]:
    """The FROM clause (with its joins), the WHERE conditions, and every other model read.

    ``selected``: the group keys' and metrics' fields. Null-rejecting filters on related fields
    are evaluated inside the related subquery, its join then INNER (``service/query/joins.py``).
    Every filter is first checked as the request names it, in the request's order, so errors
    are the same whether a filter moves or not. A segment filter becomes one condition last.
    """
    filters, segment = split_segment(request_filters)
    parsed = parse_filters(filters)
    filter_conditions(parsed, model, ParameterBuilder(), time_zone)
    kept, pushed = pushable_filters(model, parsed)
    where = where_conditions(filters, model, builder, tenant, time_zone, kept=kept)
    pushed_sql: dict[tuple[str, ...], list[str]] = {}
    for item in pushed:
        pushed_sql.setdefault(item.path, []).extend(
            filter_conditions([item.condition], item.target, builder, time_zone)
        )
    filter_names = mentioned_fields(parsed)
    filtered = {name: _field(model, name, "filters") for name in sorted(filter_names)}
    joined = [*selected, *(filtered[name] for name in sorted(mentioned_fields(kept)))]
    source = from_clause(
        catalog, model, joined, tenant, guard_fields=filter_names, pushed=pushed_sql
    )
    models = related_models(model, [*selected, *filtered.values()])
    if segment:
        condition, members = segment_condition(catalog, model, segment, builder, tenant)
        where.append(condition)
        models = with_model(models, members, model)
    return source, where, models


def _aggregated_source_and_where(  # noqa: PLR0917 (private, one call site)
    request_filters: Mapping[str, str],
    catalog: Catalog,
    model: Model,
    aggregated: AggregatedSource,
    tenant: str,
    time_zone: str,
    builder: ParameterBuilder,
) -> tuple[str, list[str], tuple[Model, ...]]:
    """The FROM source and WHERE conditions of a query a rollup answers (it joins nothing).

    The rollup holds live rows only, so no deleted-row guard; the filters are on its columns,
    which carry the fields' names.
    """
    source = aggregated.source(catalog, model, tenant, builder)
    where = [
        f"t.`{model.tenant_column}` = {tenant}",
        *filter_conditions(parse_filters(request_filters), model, builder, time_zone),
    ]
    return source, where, ()


def where_conditions(
    filters: Mapping[str, str],
    model: Model,
    builder: ParameterBuilder,
    tenant: str,
    time_zone: str,
    *,
    guard_fields: Collection[str] = (),
    kept: Sequence[Filter] | None = None,
) -> list[str]:
    """The WHERE conditions: the tenant first, the deleted-row guards, then the filters.

    The soft-delete guard is left out when the filters (or ``guard_fields``, fields other parts
    of a request filter on) name the soft-delete column: the caller then decides. ``kept``: the
    parsed filters to render, when some of ``filters`` are evaluated elsewhere (in a joined
    subquery); the guard still follows every filter of ``filters``.
    """
    where = [f"t.`{model.tenant_column}` = {tenant}", "t.`_is_deleted` = 0"]
    parsed_filters = parse_filters(filters)
    named = mentioned_fields(parsed_filters) | set(guard_fields)
    if model.soft_delete_column and model.soft_delete_column not in named:
        where.append(_not_soft_deleted(model))
    where.extend(
        filter_conditions(parsed_filters if kept is None else kept, model, builder, time_zone)
    )
    return where


def event_condition(  # noqa: PLR0917 (one condition's every input)
    event: str,
    parsed: Sequence[Filter],
    event_column: str,
    model: Model,
    builder: ParameterBuilder,
    time_zone: str,
) -> str:
    """SQL true for the events of name ``event`` (any when empty) that pass ``parsed``.

    What a funnel step or exclusion, or a retention event, selects: an event name and/or
    filters; empty when it names neither.
    """
    parts = filter_conditions(parsed, model, builder, time_zone)
    if event:
        name = builder.bind("String", encode_text_parameter(event))
        parts.insert(0, f"t.`{event_column}` = {name}")
    return " AND ".join(parts)


def filter_conditions(
    parsed: Sequence[Filter], model: Model, builder: ParameterBuilder, time_zone: str
) -> list[str]:
    """SQL of parsed filters, each parenthesised, to be joined with AND."""
    return [f"({_filter_sql(item, model, builder, time_zone)})" for item in parsed]


def _field(model: Model, name: str, source: str) -> FieldSpec:
    return resolve_field(model, name, source)


def _group_keys(request: QueryRequest, model: Model) -> list[FieldSpec]:
    if not request.group_by.strip():
        return []
    names = [part.strip() for part in request.group_by.split(",")]
    if len(names) > MAX_GROUP_KEYS:
        raise validation_error("groupBy", f"groupBy: at most {MAX_GROUP_KEYS} fields")
    keys: list[FieldSpec] = []
    for name in names:
        if not name:
            raise validation_error("groupBy", "groupBy: empty field name")
        spec = _field(model, name, "groupBy")
        if spec in keys:
            raise validation_error("groupBy", f"groupBy: {name!r} is listed twice")
        keys.append(spec)
    return keys


def _interval(request: QueryRequest, keys: list[FieldSpec]) -> str:
    interval = request.group_by_interval
    if not interval:
        return ""
    if interval not in INTERVALS:
        raise validation_error(
            "groupByInterval",
            f"groupByInterval: {interval[:40]!r} is not one of {', '.join(INTERVALS)}",
            "INVALID_INTERVAL",
        )
    temporal = [k for k in keys if k.type.is_temporal]
    if not temporal:
        raise validation_error(
            "groupByInterval",
            "groupByInterval: needs a timestamp or date field in groupBy",
            "INVALID_INTERVAL",
        )
    if interval in ("minute", "hour") and any(k.type is FieldType.DATE for k in temporal):
        raise validation_error(
            "groupByInterval",
            f"groupByInterval: {interval} is finer than a date field",
            "INVALID_INTERVAL",
        )
    return interval


def _metrics(request: QueryRequest, model: Model) -> list[tuple[MetricRequest, str, str]]:
    requested: list[tuple[MetricRequest, str]] = []
    if request.aggregate or request.field:
        requested.append((MetricRequest(request.aggregate or "count", request.field), "aggregate"))
    requested.extend((m, f"metrics[{i}]") for i, m in enumerate(request.metrics))
    if not requested:
        requested.append((MetricRequest("count"), "aggregate"))
    if len(requested) > MAX_METRICS:
        raise validation_error("metrics", f"metrics: at most {MAX_METRICS}")
    resolved: list[tuple[MetricRequest, str, str]] = []
    for metric, source in requested:
        if metric.alias:
            if not _ALIAS.fullmatch(metric.alias) or metric.alias == model.tenant_column:
                raise validation_error(
                    f"{source}.alias", f"{source}.alias: must match [A-Za-z_][A-Za-z0-9_]*"
                )
            key = metric.alias
        elif metric.aggregate == "count" and not metric.field:
            key = "count"
        else:
            key = f"{metric.aggregate}_{metric.field}"[:128]
        check_metric(metric, model, source)
        resolved.append((metric, key, source))
    return resolved


def check_metric(metric: MetricRequest, model: Model, source: str) -> None:
    """Raise a validation error naming ``source`` unless the aggregate applies to the field."""
    aggregate = metric.aggregate
    if aggregate not in SIMPLE_AGGREGATES and not _PERCENTILE.fullmatch(aggregate):
        aggregate_source = source if source == "aggregate" else f"{source}.aggregate"
        raise validation_error(
            aggregate_source,
            f"{aggregate_source}: unknown aggregate {aggregate[:40]!r}; use one of "
            f"{', '.join(SIMPLE_AGGREGATES)} or p1..p99",
            "UNKNOWN_AGGREGATE",
        )
    field_source = "field" if source == "aggregate" else f"{source}.field"
    if not metric.field:
        if aggregate != "count":
            raise validation_error(field_source, f"{field_source}: {aggregate} needs a field")
        return
    spec = _field(model, metric.field, field_source)
    numeric_only = aggregate in ("sum", "avg") or _PERCENTILE.fullmatch(aggregate)
    if numeric_only and not spec.type.is_numeric:
        raise validation_error(
            field_source,
            f"{field_source}: {aggregate} needs a numeric field, "
            f"{spec.name!r} is {spec.type.value}",
            "INVALID_AGGREGATE_FIELD",
        )
    if aggregate in ("min", "max") and (not spec.type.is_ordered or spec.type is FieldType.UUID):
        raise validation_error(
            field_source,
            f"{field_source}: {aggregate} needs an ordered field, "
            f"{spec.name!r} is {spec.type.value}",
            "INVALID_AGGREGATE_FIELD",
        )


def metric_expression(
    metric: MetricRequest, model: Model, source: str, builder: ParameterBuilder
) -> tuple[str, str, FieldSpec | None]:
    """The aggregate's SQL over rows ``t``, its output type, and the field it takes its type from.

    The field is set for min/max, whose values have the field's type.
    """
    aggregate = metric.aggregate
    if not metric.field:
        return "count()", "int", None
    spec = _field(model, metric.field, source)
    column = column_sql(spec, model, builder.bind)
    if aggregate == "count":
        return f"count({column})", "int", None
    if aggregate == "count_distinct":
        if spec.type is FieldType.FLOAT:
            column = f"({column} + 0.)"  # -0.0 and 0.0 are one value (see _group_expression)
        return f"uniqExact({column})", "int", None
    if aggregate == "sum":
        # The -OrNull form answers NULL over no rows, as SQL's sum does.
        return f"sumOrNull({exact_summand(spec, column)})", sum_type(spec), None
    if aggregate == "avg":
        return f"avg({exact_summand(spec, column)})", "float", None
    if aggregate in ("min", "max"):
        # Plain min/max give the type's default (0, 1970-01-01) over no rows; NULL is the truth.
        return f"{aggregate}OrNull({column})", value_type(spec), spec
    level = int(aggregate[1:]) / 100
    return f"quantileExactInclusive({level})(toFloat64({column}))", "float", None


#: Decimal precisions whose sums ClickHouse keeps in 38 digits: room for 10^19 rows.
_NARROW_DECIMAL = 19


def exact_summand(spec: FieldSpec, column: str) -> str:
    """``column`` in a type whose sum cannot wrap around.

    ClickHouse sums in the argument's width and wraps silently: Int64 at 2^63, Decimal128 at 38
    digits.
    """
    if spec.type is FieldType.INT:
        return f"toDecimal128({column}, 0)"
    if spec.type is FieldType.DECIMAL and spec.precision > _NARROW_DECIMAL:
        return f"toDecimal256({column}, {spec.scale})"
    return column


def sum_type(spec: FieldSpec) -> str:
    """The output type of an exact sum of ``spec``."""
    return {FieldType.INT: "int", FieldType.FLOAT: "float"}.get(spec.type, "decimal")


def value_type(spec: FieldSpec) -> str:
    """The output type of ``spec``'s values."""
    return {
        FieldType.INT: "int",
        FieldType.FLOAT: "float",
        FieldType.DECIMAL: "decimal",
        FieldType.BOOL: "bool",
        FieldType.TIMESTAMP: "timestamp",
        FieldType.DATE: "date",
    }.get(spec.type, "string")


def _group_expression(
    spec: FieldSpec, model: Model, interval: str, time_zone: str, builder: ParameterBuilder
) -> tuple[str, str]:
    column = column_sql(spec, model, builder.bind)
    if interval and spec.type is FieldType.TIMESTAMP:
        tz = builder.bind("String", time_zone)
        return timestamp_bucket_key(column, interval, tz), "timestamp"
    if interval and spec.type is FieldType.DATE:
        return date_bucket(column, interval), "date"
    if spec.type is FieldType.FLOAT:
        # -0.0 and 0.0 are one value in SQL but two group keys in ClickHouse, which hashes the
        # bits; adding zero turns -0.0 into 0.0 and leaves every other value as it is.
        return f"{column} + 0.", "float"
    return column, value_type(spec)


def group_expression(spec: FieldSpec, model: Model, builder: ParameterBuilder) -> tuple[str, str]:
    """The group key SQL of a field (no time bucket) and its output type."""
    return _group_expression(spec, model, "", "UTC", builder)


def render_value(
    raw: str, output_type: str, spec: FieldSpec | None, builder: ParameterBuilder
) -> str:
    """SQL writing a raw value (not a time bucket) in the JSON-ready form results carry."""
    return _render(raw, output_type, spec, "", "UTC", builder)


def _render(  # noqa: PLR0917 (private, called from two places with every argument)
    raw: str,
    output_type: str,
    spec: FieldSpec | None,
    interval: str,
    time_zone: str,
    builder: ParameterBuilder,
) -> str:
    """The outer query's expression that turns a raw value into its JSON-ready form."""
    if output_type == "timestamp":
        if not interval:
            return f"formatDateTime({raw}, '%Y-%m-%dT%H:%i:%S.%fZ', 'UTC')"
        if time_zone == "UTC":
            start = bucket_start(raw, interval, UTC)
            return f"formatDateTime({start}, '%Y-%m-%dT%H:%i:%SZ', 'UTC')"
        zone = builder.bind("String", time_zone)
        return render_local(bucket_start(raw, interval, zone), zone)
    if output_type == "date":
        return f"toString({raw})"
    if spec is not None and spec.type is FieldType.UUID:
        return f"toString({raw})"
    if output_type == "float":
        return f"if(isFinite({raw}), {raw}, NULL)"
    return raw


def _not_soft_deleted(model: Model) -> str:
    column = model.soft_delete_column
    spec = model.fields[column or ""]
    if spec.type is FieldType.BOOL:
        return f"NOT ifNull(t.`{column}`, false)"
    return f"t.`{column}` IS NULL"


def _filter_sql(item: Filter, model: Model, builder: ParameterBuilder, time_zone: str) -> str:
    if isinstance(item, Junction):
        joiner = " AND " if item.kind == "and" else " OR "
        body = joiner.join(
            f"({_filter_sql(child, model, builder, time_zone)})" for child in item.children
        )
        return f"NOT ({body})" if item.negated else body
    sql = _condition_sql(item, model, builder, time_zone)
    return f"NOT ({sql})" if item.negated else sql


_COMPARISON_SQL = {"eq": "=", "neq": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _condition_sql(item: Condition, model: Model, builder: ParameterBuilder, time_zone: str) -> str:
    spec = _field(model, item.field, item.source)
    column = column_sql(spec, model, builder.bind)
    operator = item.operator
    if operator == "is":
        value = item.values[0]
        if value == "null":
            return f"{column} IS NULL"
        if spec.type is not FieldType.BOOL:
            raise _operator_error(item, spec)
        return f"({column} IS NOT NULL AND {column} = {'true' if value == 'true' else 'false'})"
    if operator in ("like", "ilike"):
        if spec.type not in (FieldType.STRING, FieldType.ENUM):
            raise _operator_error(item, spec)
        # PostgREST's wildcard: every * is %, escaped or not.
        pattern = item.values[0].replace("*", "%")
        trailing = len(pattern) - len(pattern.rstrip("\\"))
        if trailing % 2:
            raise validation_error(
                item.source,
                f"{item.source}: a pattern cannot end in an unpaired backslash (escape it as \\\\)",
                "INVALID_FILTER",
            )
        if operator == "ilike":
            column, pattern = folded_sql(column), fold_case(pattern)
        placeholder = builder.bind("String", encode_text_parameter(like_pattern(pattern)))
        return f"{column} LIKE {placeholder}"
    if operator in ("gt", "gte", "lt", "lte") and (
        not spec.type.is_ordered or spec.type is FieldType.UUID
    ):
        raise _operator_error(item, spec)
    placeholders = [
        builder.bind(*typed_parameter(spec, value, item.source, time_zone)) for value in item.values
    ]
    if operator == "in" and spec.type is FieldType.DECIMAL:
        # IN converts its list to the column's type and overflows on a wider value; equalities
        # compare in the wider type each value is bound with.
        return "(" + " OR ".join(f"{column} = {p}" for p in placeholders) + ")"
    if operator == "in" and spec.type is FieldType.FLOAT:
        # IN looks values up by their bits, which tells -0.0 from 0.0 (values are bound as 0.0).
        return f"({column} + 0.) IN ({', '.join(placeholders)})"
    if operator == "in":
        return f"{column} IN ({', '.join(placeholders)})"
    return f"{column} {_COMPARISON_SQL[operator]} {placeholders[0]}"


def _operator_error(item: Condition, spec: FieldSpec) -> AnalyticsError:
    return validation_error(
        item.source,
        f"{item.source}: operator {item.operator} does not apply to {spec.type.value} "
        f"field {spec.name!r}",
        "INVALID_FILTER",
    )


def _order(
    text: str, targets: dict[str, str], group_raw: Sequence[str], model: Model, uuids: set[str]
) -> list[str]:
    """ORDER BY terms: the requested keys, then every group key as a tie-break for stable pages.

    As in PostgreSQL, NULLs come last in ascending and first in descending order unless a
    modifier says otherwise (ClickHouse puts them last both ways), and UUIDs order by their text
    (ClickHouse compares their two 64-bit halves low one first).
    """
    terms: list[str] = []
    used: set[str] = set()

    def term(raw: str, direction: str, nulls: str) -> str:
        return f"{f'toString({raw})' if raw in uuids else raw} {direction}{nulls}"

    if text.strip():
        for part in text.split(","):
            key, modifiers = _order_key(part.strip(), targets)
            if key == model.tenant_column and key not in targets:
                _field(model, key, "order")
            if key not in targets:
                raise validation_error(
                    "order",
                    f"order: {key[:60]!r} is neither a groupBy field nor a metric key "
                    f"(available: {', '.join(targets)})",
                    "UNKNOWN_FIELD",
                )
            direction, nulls = "ASC", ""
            for modifier in modifiers:
                if modifier in ("asc", "desc"):
                    direction = modifier.upper()
                elif modifier in ("nullsfirst", "nullslast"):
                    nulls = " NULLS FIRST" if modifier == "nullsfirst" else " NULLS LAST"
                else:
                    raise validation_error(
                        "order",
                        f"order: {modifier[:40]!r} is not asc, desc, nullsfirst or nullslast",
                        "INVALID_ORDER",
                    )
            if targets[key] in used:
                raise validation_error("order", f"order: {key!r} is listed twice", "INVALID_ORDER")
            used.add(targets[key])
            if not nulls and direction == "DESC":
                nulls = " NULLS FIRST"
            terms.append(term(targets[key], direction, nulls))
    terms.extend(term(raw, "ASC", "") for raw in group_raw if raw not in used)
    return terms


def _order_key(part: str, targets: Mapping[str, str]) -> tuple[str, list[str]]:
    """``key.modifier...`` -> (key, modifiers); keys may be dotted paths (``contact.country``).

    The longest leading run of segments that names a groupBy field or metric key is the key.
    """
    segments = part.split(".")
    for end in range(len(segments), 1, -1):
        key = ".".join(segments[:end])
        if key in targets:
            return key, segments[end:]
    return segments[0], segments[1:]


def _limit_offset(request: QueryRequest, limits: QueryLimits) -> tuple[int, int]:
    if request.limit < 0 or request.offset < 0:
        field_name = "limit" if request.limit < 0 else "offset"
        raise validation_error(field_name, f"{field_name}: must not be negative", "INVALID_VALUE")
    limit = request.limit or limits.default_limit
    if limit > limits.max_limit:
        raise validation_error(
            "limit",
            f"limit: {request.limit} is above the maximum {limits.max_limit}",
            "LIMIT_TOO_LARGE",
        )
    if request.offset > limits.max_offset:
        raise validation_error(
            "offset",
            f"offset: {request.offset} is above the maximum {limits.max_offset}",
            "OFFSET_TOO_LARGE",
        )
    return limit, request.offset
