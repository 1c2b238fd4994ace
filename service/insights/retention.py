"""compile_retention: (request, catalog, tenant, now) -> one query; assemble_retention: the tables.

Definitions (one event model; the contract the README copies):

* **rows**: the model's current events of the tenant (FINAL, not deleted) whose actor is not
  null and which pass the request's ``filters``. The *target* events are those rows with the
  target's event name (if given) that pass the target's filters (at least one of the two is
  required); the *returning* events likewise with the returning definition, which is the target
  one when it names neither an event nor filters.
* **periods**: ``hour``, ``day`` (default), ``week`` or ``month``, cut as trends cut buckets in
  ``timeZone`` (local hours at the instant's own offset, local midnights, weeks from Monday or,
  with ``weekStart: sunday``, from Sunday). The *last period* holds the range's last instant:
  ``dateTo`` is exclusive as everywhere (a date-only ``dateTo`` includes its day; no ``dateTo``
  means now). Without ``dateFrom`` the cohorts are the ``intervals`` periods ending with the last
  one (PostHog's default); with ``dateFrom`` they are every period from the one holding
  ``dateFrom`` to the last one (at most 1 000). Periods count whole: events after ``dateTo``
  inside the last period, or before ``dateFrom`` inside the first, take part.
* **cohorts**, ``first_time`` (default): an actor belongs to the cohort of the period of its
  first-ever target event, over all the tenant's history (not only the range; ties by event id
  text); an actor whose first target event lies outside the cohorts belongs to none.
  ``recurring``: an actor belongs to the cohort of every period in which it did a target event.
* **the table**: ``intervals`` columns (8 by default, 1 to 64). Interval 0 is the cohort's
  period and counts the cohort's size (as in PostHog, whether or not the actor also did a
  returning event then); interval ``k >= 1`` counts the cohort's actors who did a returning event
  in the ``k``-th period after the cohort's. Interval ``k >= 1`` is null (not yet observable)
  when its period comes after the last period or starts after ``now``. ``percentages``: each
  count as a percentage of the cohort's size (0.0 for an empty cohort; null where the count is
  null). Every cohort is listed, zero-filled.
* **breakdown**: a field of the model (or a related one, or ``properties.<key>``), not a
  timestamp. An actor's value in a cohort is the field's value on the first target event of the
  cohort's period (by timestamp, then event id text; for ``first_time`` its first-ever target
  event). A table per value: the values ranked by their actors over all cohorts (the sum of the
  cohort sizes, highest first; ties by the value ascending, null last; null is a value of its
  own), the top ``breakdownLimit`` (default 25, at most 1 000) with a table each, the rest
  merged into ``Other`` (last). Each actor counts in one table per cohort, so ``Other``'s counts
  are sums. No actor in any cohort: no table.

The engine does it in one query: per actor and period, whether it holds a target and a returning
event, its first target event's time (and breakdown value), and the period's position in a bound
array of the cohorts' bucket keys (0 outside them); per actor its cohorts and returning periods;
one row per (actor, cohort, interval) through ``arrayJoin``; counts per (cohort, interval,
value); the values ranked with window functions. Only functions of ClickHouse 23.8. Reads: the
range for ``recurring``; for ``first_time`` the target events of all history before its end.

No text from the request reaches the SQL: identifiers come from the catalog, values (dates,
bucket keys, event names, filter values, counts) are bound parameters; the SQL depends only on
the request's shape.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.errors import AnalyticsError, ErrorKind, validation_error
from service.insights.breakdowns import MAX_BREAKDOWN_LIMIT, breakdown_field, breakdown_limit
from service.insights.buckets import Bucket, range_buckets
from service.insights.date_range import (
    DATE_TO_FIELD,
    date_range,
    inclusive_date_to,
    parse_date_bound,
)
from service.insights.periods import (
    bound_instant,
    event_roles,
    parse_period,
    parse_week_start,
    period_end,
    period_holding,
    period_index_sql,
    period_key_sql,
    period_keys,
    periods_back,
)
from service.insights.retention_request import RetentionEvent, RetentionRequest
from service.query.compiler import (
    CompiledQuery,
    OutputColumn,
    ParameterBuilder,
    event_condition,
    filter_conditions,
    group_expression,
    render_value,
    resolve_model,
    segment_condition,
    split_segment,
    where_conditions,
    with_model,
)
from service.query.field_paths import column_sql, fields_read
from service.query.filters import Filter, mentioned_fields, parse_filters
from service.query.joins import from_clause, related_models
from service.query.time_buckets import BUCKET_SETTINGS
from service.query.values import encode_text_parameter, parse_time_zone

RETENTION_TYPES = ("first_time", "recurring")
DEFAULT_INTERVALS = 8
MAX_INTERVALS = 64
MAX_COHORTS = 1000
OTHER = "Other"
FINAL_WITHIN_PARTITIONS = {"do_not_merge_across_partitions_select_final": "1"}
"""FINAL merges versions within each partition only. Safe for every table ``service.schema``
creates: each partition key is a function of sort-key columns (an event table's month is in its
key; a replica's id range or tenant bucket is of its key), so versions of a row never sit in two
partitions. The engine does not decide it for event tables by itself (their partition key is an
expression of the timestamp, not a key column): on 13 M events in 7 monthly partitions the FINAL
scan of a retention took 0.32 s with it, 0.56 s without (bench/README.md, Funnel, retention)."""
_MICROSECOND = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class RetentionPlan:
    """The validated request and its one query (run by a backend like any CompiledQuery)."""

    model: Model
    period: str
    intervals: int
    retention_type: str
    cohorts: tuple[Bucket, ...]
    #: Per cohort, how many of its intervals are observable (1 to ``intervals``).
    observable: tuple[int, ...]
    breakdown: FieldSpec | None
    time_zone: str
    compiled: CompiledQuery


@dataclass(frozen=True)
class RetentionCohort:
    """One row of the table; see the module docstring for each figure's definition."""

    start: str
    """The cohort period's first instant, ISO 8601 with its offset (``Z`` in UTC)."""
    size: int
    counts: tuple[int | None, ...]
    percentages: tuple[float | None, ...]


@dataclass(frozen=True)
class RetentionTable:
    """The cohort table of one breakdown value (the only one without a breakdown)."""

    breakdown_value: Any
    is_other: bool
    cohorts: tuple[RetentionCohort, ...]


@dataclass(frozen=True)
class RetentionAnswer:
    """The tables: one without a breakdown; with one, per value in rank order, ``Other`` last."""

    period: str
    intervals: int
    retention_type: str
    tables: tuple[RetentionTable, ...]


def compile_retention(
    request: RetentionRequest, catalog: Catalog, tenant: str, now: dt.datetime
) -> RetentionPlan:
    """Validate ``request`` against the catalog and compile it for ``tenant`` at time ``now``.

    Raises AnalyticsError: NOT_FOUND for an unknown model, VALIDATION naming the request field.
    """
    if not tenant:
        raise AnalyticsError(ErrorKind.UNAUTHORIZED, "no tenant in the token", "NO_TENANT")
    model = resolve_model(catalog, request.model)
    plain, segment = split_segment(request.filters)
    request = dataclasses.replace(request, filters=plain)
    event_roles(model, "retention")
    time_zone = parse_time_zone(request.time_zone)
    period = parse_period(request.period)
    week_start = parse_week_start(request.week_start)
    intervals = _intervals(request.intervals)
    retention_type = request.retention_type or "first_time"
    if retention_type not in RETENTION_TYPES:
        raise validation_error(
            "retentionType",
            f"retentionType: {retention_type[:40]!r} is not first_time or recurring",
            "INVALID_VALUE",
        )
    target = _event_definition(request.target, "target")
    returning, returning_source = request.returning, "returning"
    if not returning.event and not returning.filters:
        returning, returning_source = target, "target"
    breakdown = breakdown_field(model, request.breakdown)
    limit = breakdown_limit(request.breakdown_limit, request.breakdown)
    cohorts = _cohorts(request, now, time_zone, period, week_start, intervals)
    observable = tuple(
        min(intervals, len(cohorts) - index, *_before_now(cohorts[index:], now))
        for index in range(len(cohorts))
    )
    # Every filter is checked (and its fields resolved) as the request names it, in order.
    filters = _Filters(
        parse_filters(request.filters),
        (target, parse_filters(target.filters, "target.filters")),
        (returning, parse_filters(returning.filters, f"{returning_source}.filters")),
    )
    scratch = ParameterBuilder()
    for parsed in (filters.request, filters.target[1], filters.returning[1]):
        filter_conditions(parsed, model, scratch, time_zone)
    shape = _Shape(
        catalog,
        model,
        tenant,
        time_zone,
        period,
        week_start,
        retention_type,
        tuple(cohorts),
        period_end(cohorts[-1], period, time_zone, week_start),
        breakdown,
        segment,
    )
    compiled = _compile(shape, request, filters, intervals, limit)
    return RetentionPlan(
        model=model,
        period=period,
        intervals=intervals,
        retention_type=retention_type,
        cohorts=tuple(cohorts),
        observable=observable,
        breakdown=breakdown,
        time_zone=time_zone,
        compiled=compiled,
    )


@dataclass(frozen=True)
class _Filters:
    """The parsed filters: the request's, and each event definition's with its own."""

    request: list[Filter]
    target: tuple[RetentionEvent, list[Filter]]
    returning: tuple[RetentionEvent, list[Filter]]


@dataclass(frozen=True)
class _Shape:
    """The validated request's parts the SQL is built from."""

    catalog: Catalog
    model: Model
    tenant: str
    time_zone: str
    period: str
    week_start: str
    retention_type: str
    cohorts: tuple[Bucket, ...]
    end: dt.datetime
    breakdown: FieldSpec | None
    segment: str = ""
    """The tenant's segment the request's filters name ("" for none)."""


def _compile(
    shape: _Shape, request: RetentionRequest, filters: _Filters, intervals: int, limit: int
) -> CompiledQuery:
    model = shape.model
    roles = event_roles(model, "retention")
    event_filter_names = mentioned_fields(filters.target[1]) | mentioned_fields(
        filters.returning[1]
    )
    used = fields_read(model, [filters.request, filters.target[1], filters.returning[1]])
    if shape.breakdown is not None:
        used.append(shape.breakdown)
    builder = ParameterBuilder()
    tenant = builder.bind("String", encode_text_parameter(shape.tenant))
    where = where_conditions(
        request.filters, model, builder, tenant, shape.time_zone, guard_fields=event_filter_names
    )
    timestamp_spec = model.fields[roles.timestamp]
    timestamp = column_sql(timestamp_spec, model, builder.bind)
    actor_spec = model.fields[roles.actor]
    actor = column_sql(actor_spec, model, builder.bind)
    target = event_condition(
        filters.target[0].event, filters.target[1], roles.event, model, builder, shape.time_zone
    )
    returning = event_condition(
        filters.returning[0].event,
        filters.returning[1],
        roles.event,
        model,
        builder,
        shape.time_zone,
    )
    start = f"{timestamp} >= {bound_instant(builder, shape.cohorts[0].start)}"
    # After the guards, before the filters: the range is what the sorting key can skip on.
    # First-time cohorts read the target events of all history (an actor's first one).
    bounds = [f"{timestamp} < {bound_instant(builder, shape.end)}"]
    if shape.retention_type == "recurring":
        bounds.insert(0, start)
        relevant = f"(({target}) OR ({returning}))"
    else:
        relevant = f"(({target}) OR (({returning}) AND {start}))"
    where[2:2] = bounds
    nullable = ((actor_spec, actor), (timestamp_spec, timestamp))
    where += [*(f"{sql} IS NOT NULL" for spec, sql in nullable if spec.nullable), relevant]
    joined = _segment_kept(shape, used, builder, tenant, where)

    zone = builder.bind("String", shape.time_zone)
    keys = period_keys(builder, shape.period, shape.cohorts)
    key = period_key_sql(timestamp, shape.period, shape.week_start, zone)
    event_id = column_sql(model.fields[roles.event_id], model, builder.bind)
    micros = f"toUnixTimestamp64Micro({timestamp})"
    per_period = [
        f"{actor} AS a0",
        f"{key} AS k0",
        f"countIf({target}) > 0 AS t0",
        f"countIf({returning}) > 0 AS r0",
        f"minIf({micros}, {target}) AS f0",
    ]
    if shape.breakdown is not None:
        value, _ = group_expression(shape.breakdown, model, builder)
        first = f"tuple({micros}, toString({event_id}))"
        # In a tuple: argMin skips rows whose value is NULL, and a first event without the
        # field must give null, not the next event's value.
        per_period.append(f"argMinIf(tuple({value}), {first}, {target}).1 AS b0")
    table = from_clause(shape.catalog, model, used, tenant, guard_fields=event_filter_names)
    # Identifiers from the catalog, values bound: nothing of the request's text is in the SQL.
    broken_down = shape.breakdown is not None
    grouped = (
        f"SELECT {', '.join(per_period)} FROM {table} "  # noqa: S608
        f"WHERE {' AND '.join(where)} GROUP BY a0, k0"
    )
    # Each (actor, period) group finds its period's position, not each row: the lookup cost
    # about half as much as the scan.
    level_periods = (
        f"SELECT a0, {period_index_sql(keys, 'k0', shape.period)} AS i0, t0, r0, f0"  # noqa: S608
        f"{', b0' if broken_down else ''} FROM ({grouped})"
    )
    sql = _table_sql(
        level_periods, shape.retention_type, broken_down, builder.bind("Int64", str(intervals))
    )
    columns = [
        OutputColumn("cohort", "c0", "int"),
        OutputColumn("interval", "c1", "int"),
        OutputColumn("actors", "c2", "int"),
    ]
    if shape.breakdown is not None:
        # Ties go to the smaller value as trends order them: a UUID by its text.
        tie = "toString(b1)" if shape.breakdown.type is FieldType.UUID else "b1"
        ranked = _ranked_sql(sql, builder.bind("UInt64", str(limit)), tie)
        value_type = group_expression(shape.breakdown, model, ParameterBuilder())[1]
        rendered = render_value("b2", value_type, shape.breakdown, builder)
        sql = f"SELECT c0, c1, n2 AS c2, r2 AS c3, {rendered} AS c4 FROM ({ranked})"  # noqa: S608
        columns += [OutputColumn("rank", "c3", "int"), OutputColumn("value", "c4", value_type)]
    return CompiledQuery(
        sql,
        builder.parameters,
        tuple(columns),
        model,
        limit=0,
        settings={**BUCKET_SETTINGS, **FINAL_WITHIN_PARTITIONS},
        tenant=shape.tenant,
        joined=joined,
    )


def _segment_kept(
    shape: _Shape, used: list[FieldSpec], builder: ParameterBuilder, tenant: str, where: list[str]
) -> tuple[Model, ...]:
    """The models read besides the event model; with a segment, its condition added to ``where``."""
    joined = related_models(shape.model, used)
    if shape.segment:
        kept, members = segment_condition(
            shape.catalog, shape.model, shape.segment, builder, tenant
        )
        where.append(kept)
        joined = with_model(joined, members, shape.model)
    return joined


def assemble_retention(plan: RetentionPlan, table: pa.Table) -> RetentionAnswer:
    """The answer from the rows of the plan's query (cohort, interval, actors[, rank, value])."""
    columns = {c.alias: table.column(c.alias).to_pylist() for c in plan.compiled.columns}
    ranked = plan.breakdown is not None
    counts: dict[tuple[int, Any], dict[tuple[int, int], int]] = {}
    for row in range(table.num_rows):
        rank = int(columns["c3"][row]) if ranked else 1
        value = columns["c4"][row] if ranked and rank else None
        cells = counts.setdefault((rank, value), {})
        cells[int(columns["c0"][row]), int(columns["c1"][row])] = int(columns["c2"][row])
    if not ranked:
        counts.setdefault((1, None), {})
    tables = [
        RetentionTable(
            breakdown_value=OTHER if rank == 0 else value,
            is_other=rank == 0,
            cohorts=tuple(_cohort_rows(plan, cells)),
        )
        for (rank, value), cells in sorted(counts.items(), key=lambda item: _order(item[0][0]))
    ]
    return RetentionAnswer(plan.period, plan.intervals, plan.retention_type, tuple(tables))


def _cohort_rows(plan: RetentionPlan, cells: dict[tuple[int, int], int]) -> list[RetentionCohort]:
    rows = []
    for position, bucket in enumerate(plan.cohorts, start=1):
        size = cells.get((position, 0), 0)
        counts: list[int | None] = [
            cells.get((position, k), 0) if k < plan.observable[position - 1] else None
            for k in range(plan.intervals)
        ]
        percentages = [
            None if count is None else (100.0 * count / size if size else 0.0) for count in counts
        ]
        rows.append(RetentionCohort(bucket.label(), size, tuple(counts), tuple(percentages)))
    return rows


def _order(rank: int) -> int:
    """Tables in rank order, Other (rank 0) last."""
    return rank if rank else MAX_BREAKDOWN_LIMIT + 1


def _table_sql(per_period: str, retention_type: str, broken_down: bool, intervals: str) -> str:
    """The cohort table's rows: c0 cohort position, c1 interval, c2 actors[, b1 value].

    ``per_period``'s rows: a0 actor, i0 period position, t0/r0 whether it holds a target /
    returning event, f0 its first target event's microsecond, b0 that event's breakdown value.
    """
    cohort_item = "tuple(i0, b0)" if broken_down else "i0"
    if retention_type == "first_time":
        # The period of the first target event of all history; position 0 (before the first
        # cohort) is no cohort.
        first = f"[argMinIf({cohort_item}, f0, t0)]"
        cohorts = f"arrayFilter(x -> {_position('x', broken_down)} > 0, {first})"
    else:
        cohorts = f"groupArrayIf({cohort_item}, t0 AND i0 > 0)"
    per_actor = (
        f"SELECT a0, {cohorts} AS cs, groupArrayIf(i0, r0 AND i0 > 0) AS rp "  # noqa: S608
        f"FROM ({per_period}) GROUP BY a0"
    )
    value = ", x0.2 AS b1" if broken_down else ""
    position = _position("x0", broken_down)
    per_cohort = (
        f"SELECT arrayJoin(cs) AS x0, toInt64({position}) AS h1{value}, rp "  # noqa: S608
        f"FROM ({per_actor})"
    )
    later = (
        f"arrayMap(x -> toInt64(x) - h1, arrayFilter(x -> toInt64(x) > h1 "
        f"AND toInt64(x) < h1 + {intervals}, rp))"
    )
    keep = ", b1" if broken_down else ""
    per_interval = (
        f"SELECT h1{keep}, arrayJoin(arrayConcat([toInt64(0)], {later})) AS k1 "  # noqa: S608
        f"FROM ({per_cohort})"
    )
    # Aliases and placeholders only.
    return (
        f"SELECT h1 AS c0, k1 AS c1, toInt64(count()) AS c2{keep} "  # noqa: S608
        f"FROM ({per_interval}) GROUP BY c0, c1{keep}"
    )


def _ranked_sql(counted: str, limit: str, tie: str) -> str:
    """``counted``'s breakdown values ranked by their actors over all cohorts.

    The sum of the cohort sizes ranks them; the top ``limit`` keep their rank (r2 >= 1), the
    rest are merged (rank 0).
    """
    sized = (
        "SELECT c0, c1, c2, b1, sum(if(c1 = 0, c2, 0)) OVER (PARTITION BY b1) AS s1 "  # noqa: S608
        f"FROM ({counted})"
    )
    ranked = (
        "SELECT c0, c1, c2, b1, "  # noqa: S608
        f"dense_rank() OVER (ORDER BY s1 DESC, {tie} ASC NULLS LAST) AS r1 FROM ({sized})"
    )
    return (
        f"SELECT c0, c1, toInt64(sum(c2)) AS n2, if(r1 <= {limit}, r1, 0) AS r2, "  # noqa: S608
        f"if(r2 = 0, NULL, any(b1)) AS b2 FROM ({ranked}) GROUP BY c0, c1, r2"
    )


def _position(item: str, broken_down: bool) -> str:
    return f"{item}.1" if broken_down else item


def _intervals(value: int) -> int:
    intervals = value or DEFAULT_INTERVALS
    if not 1 <= intervals <= MAX_INTERVALS:
        raise validation_error(
            "intervals",
            f"intervals: between 1 and {MAX_INTERVALS}, got {value}",
            "INVALID_VALUE",
        )
    return intervals


def _event_definition(definition: RetentionEvent, source: str) -> RetentionEvent:
    if not definition.event and not definition.filters:
        raise validation_error(
            source, f"{source}: an event name, filters, or both", "EMPTY_EVENT_DEFINITION"
        )
    return definition


def _cohorts(  # noqa: PLR0917 (the request's every date input)
    request: RetentionRequest,
    now: dt.datetime,
    time_zone: str,
    period: str,
    week_start: str,
    intervals: int,
) -> list[Bucket]:
    date_to = inclusive_date_to(request.date_to)
    if request.date_from:
        start, end = date_range(request.date_from, date_to, now, time_zone)
        cohorts = range_buckets(start, end, period, time_zone, week_start, source="dateFrom")
        if len(cohorts) > MAX_COHORTS:
            raise validation_error(
                "dateFrom",
                f"dateFrom: the range has {len(cohorts)} {period} cohorts; at most {MAX_COHORTS}",
                "TOO_MANY_COHORTS",
            )
        return cohorts
    end = parse_date_bound(date_to, DATE_TO_FIELD, now, time_zone) if date_to else now
    last = period_holding(end - _MICROSECOND, period, time_zone, week_start)
    return periods_back(last, intervals, period, time_zone, week_start)


def _before_now(cohorts: Sequence[Bucket], now: dt.datetime) -> list[int]:
    """How many of ``cohorts`` (from the first) start at or before ``now``; none if all do."""
    for index, bucket in enumerate(cohorts):
        if bucket.start.astimezone(dt.UTC) > now:
            return [max(index, 1)]
    return []
