"""compile_trend: a pure function (request, catalog, tenant, now) -> a plan of SQL queries.

A trend is one or more series (an aggregate over the rows each series' filters select) over the
zero-filled buckets of a date range. The plan holds the buckets (computed here, as the engine
cuts them) and the queries; ``service.insights.trend_results`` turns the queries' rows into the
answer. Every query reads the model with FINAL, the tenant condition first, the deleted-row
guards, ``date_field >= dateFrom AND date_field < dateTo`` (rows before ``dateFrom`` never count,
even inside the first bucket), the request's filters, and the series' own filters:

* **bucket values**: one scan computes every series with ``-If`` aggregates, grouped by the
  bucket key (and the breakdown class); the outer query turns the key into the bucket's index.
* **breakdown**: the top ``breakdownLimit`` values by the first series' value over the whole
  range (ties by the value, ascending) are kept; every other value is ``Other``. The ranking is
  a scalar subquery of the same shape, so each row's class is its value's rank (0: Other).
* **compare**: the same queries over the previous period (``previous``: the range moved back by
  as many intervals as it has buckets, so buckets align one to one) or a calendar offset
  (``-1y``); the ranking always reads the current range, so both periods break down alike.
* **cumulative / rolling** unique counts cannot be added up from bucket values: each such series
  gets a query of its own (an actor counts in a cumulative bucket from its first bucket on; in a
  rolling bucket if it appears in any of the window's buckets). Additive aggregates (count, sum,
  min, max, and avg through its sum and count) are accumulated from bucket values.

A trend a catalog rollup answers (``aggregated``) reads the rollup's rows instead, each series
merging its measure's states under its own conditions (``<function>MergeIf``); the buckets,
breakdown ranking and compare periods are the same SQL over the rollup's columns.

No text from the request reaches the SQL: identifiers come from the catalog, values (dates,
filter values, property keys, bucket keys, limits) are bound parameters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.errors import AnalyticsError, ErrorKind, validation_error
from service.insights.breakdowns import breakdown_field, breakdown_limit
from service.insights.buckets import (
    TREND_INTERVALS,
    WEEK_STARTS,
    Bucket,
    range_buckets,
)
from service.insights.date_range import (
    CalendarOffset,
    date_range,
    inclusive_date_to,
    parse_offset,
)
from service.insights.formula import Formula, parse_formula
from service.insights.periods import bound_instant
from service.insights.trend_request import TrendRequest, TrendSeries
from service.query.compiler import (
    AggregatedSource,
    CompiledQuery,
    OutputColumn,
    ParameterBuilder,
    check_metric,
    exact_summand,
    filter_conditions,
    group_expression,
    render_value,
    resolve_model,
    segment_condition,
    split_segment,
    sum_type,
    where_conditions,
    with_model,
)
from service.query.field_paths import column_sql, resolve_field
from service.query.filters import mentioned_fields, parse_filters
from service.query.joins import from_clause, related_models
from service.query.request import MetricRequest
from service.query.time_buckets import BUCKET_SETTINGS, timestamp_bucket_key
from service.query.values import encode_text_parameter, parse_time_zone

MAX_SERIES = 26
MAX_ROLLING_WINDOW = 1000
MAX_LABEL_CHARS = 200
TREND_AGGREGATES = ("count", "unique_actors", "count_distinct", "sum", "avg", "min", "max")
DISPLAYS = ("", "cumulative", "rolling")
_PERCENTILE = re.compile(r"^p([1-9][0-9]?)$")


@dataclass(frozen=True)
class SeriesPlan:
    """One validated series: its letter (A, B, ...), label, and how its values combine."""

    letter: str
    label: str
    aggregate: str
    field: FieldSpec | None
    output_type: str
    #: A unique count whose cumulative or rolling values need a query of their own.
    distinct: bool


@dataclass(frozen=True)
class TrendQuery:
    """One query of the plan: which period, what it computes, and the compiled SQL.

    ``period`` is ``current``, ``compare``, or ``both`` (one scan for both periods, each row
    tagged with ``period`` 0 or 1). ``kind`` is ``buckets`` (every series' bucket values; for
    avg also hidden sum and count columns), or ``distinct`` (the cumulative or rolling unique
    count of series ``series``). Rows carry: ``bucket`` (1-based index in its period; 0 never),
    then with a breakdown ``rank`` (0: Other) and ``value``, then the metric columns.
    """

    period: str
    kind: str
    series: int
    compiled: CompiledQuery


@dataclass(frozen=True)
class TrendPlan:
    """Everything the runner needs: queries to run, buckets to fill, how to combine."""

    model: Model
    series: tuple[SeriesPlan, ...]
    buckets: tuple[Bucket, ...]
    compare_buckets: tuple[Bucket, ...]
    queries: tuple[TrendQuery, ...]
    breakdown: FieldSpec | None
    breakdown_type: str
    formula: Formula | None
    display: str
    window: int
    date_from: dt.datetime
    date_to: dt.datetime
    time_zone: str
    interval: str = "day"
    week_start: str = "monday"
    date_field: FieldSpec | None = None
    periods: tuple[tuple[dt.datetime, dt.datetime], ...] = ()
    """Each period's [start, end): the current one, then the compare one if any."""


@dataclass(frozen=True)
class _Range:
    start: dt.datetime
    end: dt.datetime
    buckets: tuple[Bucket, ...]


def compile_trend(
    request: TrendRequest,
    catalog: Catalog,
    tenant: str,
    now: dt.datetime,
    *,
    aggregated: AggregatedSource | None = None,
) -> TrendPlan:
    """Validate ``request`` against the catalog and compile it for ``tenant`` at time ``now``.

    Raises AnalyticsError: NOT_FOUND for an unknown model, VALIDATION naming the request field.
    ``aggregated``: a rollup the router found able to answer the plan's queries exactly
    (``service.rollups.routing.choose_trend_rollup``); they then read its rows, merging the
    series' states in each bucket, under the same buckets, filters and breakdown.
    """
    if not tenant:
        raise AnalyticsError(ErrorKind.UNAUTHORIZED, "no tenant in the token", "NO_TENANT")
    model = resolve_model(catalog, request.model)
    filters, segment = split_segment(request.filters)
    request = dataclasses.replace(request, filters=filters)
    time_zone = parse_time_zone(request.time_zone)
    interval = request.interval or "day"
    if interval not in TREND_INTERVALS:
        raise validation_error(
            "interval",
            f"interval: {interval[:40]!r} is not one of {', '.join(TREND_INTERVALS)}",
            "INVALID_INTERVAL",
        )
    week_start = request.week_start or "monday"
    if week_start not in WEEK_STARTS:
        raise validation_error(
            "weekStart", f"weekStart: {week_start[:20]!r} is not monday or sunday", "INVALID_VALUE"
        )
    date_field = _date_field(request, model)
    series = _series(request, model)
    display, window = _display(request, series)
    breakdown, breakdown_type = _breakdown(request, model)
    limit = breakdown_limit(request.breakdown_limit, request.breakdown)
    formula = parse_formula(request.formula, len(series)) if request.formula.strip() else None
    start, end = date_range(request.date_from, inclusive_date_to(request.date_to), now, time_zone)
    current = _Range(start, end, tuple(range_buckets(start, end, interval, time_zone, week_start)))
    compare = _compare_range(request.compare, current, interval, time_zone, week_start)
    filter_names = frozenset(
        name
        for filters in (request.filters, *(item.filters for item in request.series))
        for name in mentioned_fields(parse_filters(filters))
    )
    used = [
        *(plan.field for plan in series if plan.field is not None),
        *([breakdown] if breakdown is not None else []),
        *(resolve_field(model, name, "filters") for name in sorted(filter_names)),
    ]
    context = _Context(
        catalog,
        model,
        tenant,
        time_zone,
        interval,
        week_start,
        date_field,
        request,
        series,
        tuple(used),
        filter_names,
        segment,
        aggregated,
    )
    if aggregated is not None and (display or segment):
        raise ValueError("a rollup answers no cumulative, rolling or segment trend")
    periods = [current] if compare is None else [current, compare]
    queries = [
        TrendQuery(
            "current" if compare is None else "both",
            "buckets",
            -1,
            context.bucket_query(periods, current, breakdown, limit),
        )
    ]
    for period, period_range in (("current", current), ("compare", compare)):
        if period_range is None:
            continue
        if display:
            queries.extend(
                TrendQuery(
                    period,
                    "distinct",
                    index,
                    context.distinct_query(
                        index, period_range, current, breakdown, limit, display, window
                    ),
                )
                for index, plan in enumerate(series)
                if plan.distinct
            )
    return TrendPlan(
        model=model,
        series=tuple(series),
        buckets=current.buckets,
        compare_buckets=compare.buckets if compare is not None else (),
        queries=tuple(queries),
        breakdown=breakdown,
        breakdown_type=breakdown_type,
        formula=formula,
        display=display,
        window=window,
        date_from=start,
        date_to=end,
        time_zone=time_zone,
        interval=interval,
        week_start=week_start,
        date_field=date_field,
        periods=tuple((period.start, period.end) for period in periods),
    )


def _date_field(request: TrendRequest, model: Model) -> FieldSpec:
    name = request.date_field
    if not name:
        if model.events is not None:
            name = model.events.timestamp
        elif "created_at" in model.fields:
            name = "created_at"
        else:
            raise validation_error(
                "dateField",
                f"dateField: required for {model.qualified_name} (a timestamp field that dates "
                "each row)",
                "REQUIRED",
            )
    spec = resolve_field(model, name, "dateField")
    if spec.relation_path:
        raise validation_error(
            "dateField",
            f"dateField: {name[:60]!r} is a related model's field; a trend dates each row of "
            f"{model.qualified_name} by a timestamp of its own",
            "INVALID_DATE_FIELD",
        )
    if spec.type is not FieldType.TIMESTAMP or spec.property_key is not None:
        raise validation_error(
            "dateField", f"dateField: {name[:60]!r} is not a timestamp field", "INVALID_DATE_FIELD"
        )
    return spec


def _series(request: TrendRequest, model: Model) -> list[SeriesPlan]:
    requested = request.series or (TrendSeries(),)
    if len(requested) > MAX_SERIES:
        raise validation_error("series", f"series: at most {MAX_SERIES}", "TOO_MANY_SERIES")
    plans: list[SeriesPlan] = []
    for index, item in enumerate(requested):
        source = f"series[{index}]"
        letter = chr(ord("A") + index)
        aggregate = item.aggregate or "count"
        field: FieldSpec | None = None
        if aggregate == "unique_actors":
            if model.events is None:
                raise validation_error(
                    f"{source}.aggregate",
                    f"{source}.aggregate: unique_actors needs an event model; use count_distinct "
                    f"with a field on {model.qualified_name}",
                    "INVALID_AGGREGATE",
                )
            if item.field:
                raise validation_error(
                    f"{source}.field", f"{source}.field: unique_actors counts the actor; no field"
                )
            field = model.fields[model.events.actor]
        elif aggregate in TREND_AGGREGATES or _PERCENTILE.fullmatch(aggregate):
            check_metric(MetricRequest(aggregate, item.field), model, source)
            if aggregate in ("min", "max") and item.field:
                spec = resolve_field(model, item.field, f"{source}.field")
                if not spec.type.is_numeric:
                    raise validation_error(
                        f"{source}.field",
                        f"{source}.field: {aggregate} in a trend needs a numeric field",
                        "INVALID_AGGREGATE_FIELD",
                    )
            if item.field:
                field = resolve_field(model, item.field, f"{source}.field")
        else:
            raise validation_error(
                f"{source}.aggregate",
                f"{source}.aggregate: unknown aggregate {aggregate[:40]!r}; use one of "
                f"{', '.join(TREND_AGGREGATES)} or p1..p99",
                "UNKNOWN_AGGREGATE",
            )
        if item.event and model.events is None:
            raise validation_error(
                f"{source}.event", f"{source}.event: only event models have event names"
            )
        if len(item.label) > MAX_LABEL_CHARS:
            raise validation_error(
                f"{source}.label", f"{source}.label: at most {MAX_LABEL_CHARS} characters"
            )
        parse_filters(item.filters)  # grammar errors name the series' own filters first
        plans.append(
            SeriesPlan(
                letter=letter,
                label=item.label or _default_label(aggregate, item),
                aggregate=aggregate,
                field=field,
                output_type=_output_type(aggregate, field),
                distinct=aggregate in ("unique_actors", "count_distinct"),
            )
        )
    return plans


def _default_label(aggregate: str, item: TrendSeries) -> str:
    of_event = f" of {item.event}" if item.event else ""
    if aggregate == "count":
        return item.event or "count"
    if aggregate == "unique_actors":
        return f"unique actors{of_event}"
    return f"{aggregate}({item.field}){of_event}"


def _output_type(aggregate: str, field: FieldSpec | None) -> str:
    if aggregate in ("count", "unique_actors", "count_distinct"):
        return "int"
    if aggregate == "sum" and field is not None:
        return sum_type(field)
    if aggregate in ("min", "max") and field is not None:
        return {FieldType.INT: "int", FieldType.DECIMAL: "decimal"}.get(field.type, "float")
    return "float"


def _display(request: TrendRequest, series: Sequence[SeriesPlan]) -> tuple[str, int]:
    display = request.display
    if display not in DISPLAYS:
        raise validation_error(
            "display",
            f"display: {display[:40]!r} is not cumulative or rolling (or empty)",
            "INVALID_VALUE",
        )
    window = request.rolling_window
    if display == "rolling":
        if not 1 <= window <= MAX_ROLLING_WINDOW:
            raise validation_error(
                "rollingWindow",
                f"rollingWindow: rolling needs a window of 1 to {MAX_ROLLING_WINDOW} buckets",
                "INVALID_VALUE",
            )
    elif window:
        raise validation_error(
            "rollingWindow", "rollingWindow: only with display rolling", "INVALID_VALUE"
        )
    if display:
        for index, plan in enumerate(series):
            if _PERCENTILE.fullmatch(plan.aggregate):
                raise validation_error(
                    f"series[{index}].aggregate",
                    f"series[{index}].aggregate: a percentile cannot be made {display} from "
                    "bucket values; choose count, sum, avg, min, max or a unique count",
                    "INVALID_AGGREGATE",
                )
    return display, window


def _breakdown(request: TrendRequest, model: Model) -> tuple[FieldSpec | None, str]:
    spec = breakdown_field(model, request.breakdown)
    return spec, _value_type(spec, model) if spec is not None else ""


def _compare_range(
    text: str, current: _Range, interval: str, time_zone: str, week_start: str
) -> _Range | None:
    if not text:
        return None
    zone = ZoneInfo(time_zone)
    if text == "previous":
        count = len(current.buckets)
        start = _shift_buckets(current.start, interval, -count, zone)
        end = _shift_buckets(current.end, interval, -count, zone)
    else:
        offset = parse_offset(text, "compare")
        start = _shift(offset, current.start, zone)
        end = _shift(offset, current.end, zone)
    buckets = range_buckets(start, end, interval, time_zone, week_start, source="compare")
    return _Range(start, end, tuple(buckets))


def _shift(offset: CalendarOffset, moment: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    return offset.shift(moment.astimezone(zone)).astimezone(dt.UTC)


def _shift_buckets(moment: dt.datetime, interval: str, count: int, zone: ZoneInfo) -> dt.datetime:
    """``moment`` moved by ``count`` intervals: elapsed for minutes and hours, else calendar."""
    if interval in ("minute", "hour"):
        step = dt.timedelta(minutes=1) if interval == "minute" else dt.timedelta(hours=1)
        return moment + count * step
    unit = {"day": "d", "week": "w", "month": "m", "quarter": "q", "year": "y"}[interval]
    return _shift(parse_offset(f"-{abs(count)}{unit}", "compare"), moment, zone)


@dataclass(frozen=True)
class _Context:
    """What every query of one request shares."""

    catalog: Catalog
    model: Model
    tenant: str
    time_zone: str
    interval: str
    week_start: str
    date_field: FieldSpec
    request: TrendRequest
    series: Sequence[SeriesPlan]
    fields: tuple[FieldSpec, ...]
    """Every field the request reads (related ones make the joins)."""
    filter_names: frozenset[str]
    segment: str = ""
    """The tenant's segment the request's filters name ("" for none)."""
    aggregated: AggregatedSource | None = None
    """The rollup the queries read instead of the model's rows (``compile_trend``)."""

    def _table(self, builder: ParameterBuilder) -> str:
        tenant = builder.bind("String", encode_text_parameter(self.tenant))
        if self.aggregated is not None:
            return self.aggregated.source(self.catalog, self.model, tenant, builder)
        return from_clause(
            self.catalog, self.model, self.fields, tenant, guard_fields=self.filter_names
        )

    def _where(
        self,
        builder: ParameterBuilder,
        period: _Range | Sequence[_Range],
        conditions: Sequence[str],
    ) -> list[str]:
        """Tenant first, guards, the date range(s), the request's filters, then ``conditions``."""
        tenant = builder.bind("String", encode_text_parameter(self.tenant))
        ranges = [period] if isinstance(period, _Range) else list(period)
        # Parenthesised as a whole: the conditions are joined with AND, which binds tighter.
        within = "(" + " OR ".join(f"({self._within(builder, r)})" for r in ranges) + ")"
        if self.aggregated is not None:
            # A rollup holds live rows only: no deleted-row guard.
            filters = parse_filters(self.request.filters)
            return [
                f"t.`{self.model.tenant_column}` = {tenant}",
                within,
                *filter_conditions(filters, self.model, builder, self.time_zone),
                *conditions,
            ]
        guard_fields = {
            name
            for item in self.request.series
            for name in mentioned_fields(parse_filters(item.filters))
        }
        where = where_conditions(
            self.request.filters,
            self.model,
            builder,
            tenant,
            self.time_zone,
            guard_fields=guard_fields,
        )
        where[2:2] = [within]
        if self.segment:
            where.append(
                segment_condition(self.catalog, self.model, self.segment, builder, tenant)[0]
            )
        where.extend(conditions)
        return where

    def _joined(self) -> tuple[Model, ...]:
        """The other models the queries read: related ones, and the segment's."""
        if self.aggregated is not None:
            return ()
        joined = related_models(self.model, self.fields)
        if self.segment and self.segment in self.catalog.segments:
            joined = with_model(joined, self.catalog.segments[self.segment].model, self.model)
        return joined

    def _period_tag(self, builder: ParameterBuilder, periods: Sequence[_Range]) -> str:
        """SQL tagging a row with its period (0 current, 1 compare) for a two-period scan.

        Disjoint periods (``previous``, or an offset at least the range's length) take one
        comparison; overlapping ones count a row in each period it falls in (arrayJoin).
        """
        current, compare = periods
        first = self._within(builder, current)
        if compare.end <= current.start or current.end <= compare.start:
            return f"if({first}, 0, 1)"
        second = self._within(builder, compare)
        return f"arrayJoin(multiIf(({first}) AND ({second}), [0, 1], {first}, [0], [1]))"

    def _within(self, builder: ParameterBuilder, period: _Range) -> str:
        """Whether a row's date field is in ``period`` (half-open)."""
        column = column_sql(self.date_field, self.model, builder.bind)
        return (
            f"{column} >= {bound_instant(builder, period.start)} AND "
            f"{column} < {bound_instant(builder, period.end)}"
        )

    def _series_condition(self, index: int, builder: ParameterBuilder) -> str:
        item = self.request.series[index] if self.request.series else TrendSeries()
        parts = filter_conditions(parse_filters(item.filters), self.model, builder, self.time_zone)
        if item.event and self.model.events is not None:
            name = builder.bind("String", encode_text_parameter(item.event))
            parts.insert(0, f"t.`{self.model.events.event}` = {name}")
        return " AND ".join(parts) if parts else "1"

    def _bucket_key(self, builder: ParameterBuilder) -> str:
        column = column_sql(self.date_field, self.model, builder.bind)
        zone = builder.bind("String", self.time_zone)
        if self.interval == "week" and self.week_start == "sunday":
            return f"toStartOfWeek({column}, 0, {zone})"
        return timestamp_bucket_key(column, self.interval, zone)

    def _keys(self, builder: ParameterBuilder, buckets: Sequence[Bucket]) -> str:
        """The bound array of bucket keys, in the key's own type."""
        if self.interval in ("minute", "hour"):
            texts = ", ".join(
                f"'{bucket.start.astimezone(dt.UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}'"
                for bucket in buckets
            )
            return builder.bind("Array(DateTime64(6, 'UTC'))", f"[{texts}]")
        texts = ", ".join(f"'{bucket.key.isoformat()}'" for bucket in buckets)
        return builder.bind("Array(Date32)", f"[{texts}]")

    def _key_lookup(self, keys: str, key: str) -> str:
        if self.interval in ("minute", "hour"):
            return f"indexOf({keys}, toDateTime64({key}, 6, 'UTC'))"
        return f"indexOf({keys}, toDate32({key}))"

    def _metric(self, plan: SeriesPlan, condition: str, builder: ParameterBuilder) -> str:
        return "".join(self._aggregate(plan, condition, builder))

    def _aggregate(
        self, plan: SeriesPlan, condition: str, builder: ParameterBuilder
    ) -> tuple[str, str, str]:
        """A series' aggregate as (function name, parameters, arguments).

        Split so that it can also be taken as a partial state (``<name>State``) and finished
        later (``<name>Merge``).
        """
        if self.aggregated is not None:
            function, column = self.aggregated.states(rollup_metric(plan))
            return f"{function}MergeIf", "", f"({column}, {condition})"
        field = plan.field
        if plan.aggregate == "count" and field is None:
            return "countIf", "", f"({condition})"
        if field is None:
            raise ValueError(f"series {plan.letter}: {plan.aggregate} without a field")
        column = column_sql(field, self.model, builder.bind)
        if plan.aggregate == "count":
            return "countIf", "", f"({column} IS NOT NULL AND {condition})"
        if plan.distinct:
            if field.type is FieldType.FLOAT:
                column = f"({column} + 0.)"
            return "uniqExactIf", "", f"({column}, {condition})"
        if plan.aggregate == "sum":
            return "sumIf", "", f"({exact_summand(field, column)}, {condition})"
        if plan.aggregate == "avg":
            return "avgIf", "", f"({exact_summand(field, column)}, {condition})"
        if plan.aggregate in ("min", "max"):
            return f"{plan.aggregate}If", "", f"(toNullable({column}), {condition})"
        level = int(plan.aggregate[1:]) / 100
        return "quantileExactInclusiveIf", f"({level})", f"(toFloat64({column}), {condition})"

    def _ranking(
        self, builder: ParameterBuilder, current: _Range, breakdown: FieldSpec, limit: int
    ) -> tuple[str, str]:
        """(WITH clause binding ``top``, the breakdown value SQL) for the first series' top."""
        value, _ = group_expression(breakdown, self.model, builder)
        condition = self._series_condition(0, builder)
        where = self._where(builder, current, [f"({condition})"])
        metric = self._metric(self.series[0], "1", builder)
        if self.series[0].aggregate == "sum":
            # A sum over no values is 0 in the lines (README: sums are 0 where empty), so it
            # ranks as 0 too: the engine's NULL would put it after negative sums.
            metric = f"ifNull({metric}, 0)"
        limit_placeholder = builder.bind("UInt64", str(limit))
        # Ties go to the smaller value as Query orders values: a UUID by its text (the engine
        # compares UUIDs by their halves swapped, which is not the order the README promises).
        tie = "toString(b)" if breakdown.type is FieldType.UUID else "b"
        top = (
            "(SELECT groupArray(tuple(b)) FROM (SELECT "
            f"{value} AS b, {metric} AS v FROM {self._table(builder)} WHERE {' AND '.join(where)} "
            f"GROUP BY b ORDER BY v DESC NULLS LAST, {tie} ASC NULLS LAST "
            f"LIMIT {limit_placeholder}))"
        )
        return f"WITH {top} AS top ", value

    def bucket_query(
        self,
        periods: Sequence[_Range],
        current: _Range,
        breakdown: FieldSpec | None,
        limit: int,
    ) -> CompiledQuery:
        """Every series' value per bucket (and breakdown class) of each period, in one scan.

        With two periods (compare) a row is counted once in each period it falls in (the
        ranges overlap when the offset is shorter than the range): ``period`` says which.
        """
        builder = ParameterBuilder()
        prefix, value = ("", "")
        if breakdown is not None:
            prefix, value = self._ranking(builder, current, breakdown, limit)
        conditions = [self._series_condition(i, builder) for i in range(len(self.series))]
        inner_select = [f"{self._bucket_key(builder)} AS k0"]
        group = ["k0"]
        outer: list[tuple[str, str, str]] = []
        lookups = [self._key_lookup(self._keys(builder, p.buckets), "k0") for p in periods]
        if len(periods) == 1:
            outer.append((lookups[0], "bucket", "int"))
        else:
            inner_select.append(f"{self._period_tag(builder, periods)} AS pd")
            group.append("pd")
            outer.append((f"if(pd = 0, {lookups[0]}, {lookups[1]})", "bucket", "int"))
            outer.append(("pd", "period", "int"))
        # With a breakdown the scan groups by the raw value and only its groups are classed
        # (top N or Other) afterwards, merging partial aggregate states: classing every row
        # (an array lookup each) cost the scan about as much as reading it.
        aggregates: list[tuple[str, tuple[str, str, str]]] = []
        for index, plan in enumerate(self.series):
            condition = f"({conditions[index]})"
            aggregates.append((f"m{index}", self._aggregate(plan, condition, builder)))
            outer.append(
                (
                    render_value(f"m{index}", plan.output_type, None, builder),
                    f"m{index}",
                    plan.output_type,
                )
            )
            if plan.aggregate == "avg" and self.request.display and plan.field is not None:
                # A cumulative or rolling average is the sum over the count of its buckets.
                column = column_sql(plan.field, self.model, builder.bind)
                summand = exact_summand(plan.field, column)
                aggregates.append((f"s{index}", ("sumIf", "", f"({summand}, {condition})")))
                aggregates.append(
                    (f"n{index}", ("countIf", "", f"({column} IS NOT NULL AND {condition})"))
                )
                outer.append((f"s{index}", f"s{index}", sum_type(plan.field)))
                outer.append((f"n{index}", f"n{index}", "int"))
        any_series = " OR ".join(f"({c})" for c in conditions) if "1" not in conditions else ""
        where = self._where(
            builder, _read_ranges(periods), [f"({any_series})"] if any_series else []
        )
        table = self._table(builder)
        if breakdown is None:
            inner_select += [f"{n}{p}{a} AS {alias}" for alias, (n, p, a) in aggregates]
            inner = (
                f"SELECT {', '.join(inner_select)} FROM {table} "
                f"WHERE {' AND '.join(where)} GROUP BY {', '.join(group)}"
            )
            return self._compiled(builder, outer, inner)
        inner_select.append(f"{value} AS b")
        inner_select += [f"{n}State{p}{a} AS {alias}" for alias, (n, p, a) in aggregates]
        inner = (
            f"SELECT {', '.join(inner_select)} FROM {table} "
            f"WHERE {' AND '.join(where)} GROUP BY {', '.join([*group, 'b'])}"
        )
        classed = [
            *group,
            "indexOf(top, tuple(b)) AS k1",
            "if(k1 = 0, NULL, b) AS k2",
            *(f"{n}Merge{p}({alias}) AS {alias}" for alias, (n, p, _) in aggregates),
        ]
        middle = (
            f"{prefix}SELECT {', '.join(classed)} FROM ({inner}) "
            f"GROUP BY {', '.join([*group, 'k1', 'k2'])}"
        )
        value_type = _value_type(breakdown, self.model)
        outer[len(periods) : len(periods)] = [
            ("k1", "rank", "int"),
            (render_value("k2", value_type, breakdown, builder), "value", value_type),
        ]
        return self._compiled(builder, outer, middle)

    def distinct_query(  # noqa: PLR0917 (one query's every input)
        self,
        index: int,
        period: _Range,
        current: _Range,
        breakdown: FieldSpec | None,
        limit: int,
        display: str,
        window: int,
    ) -> CompiledQuery:
        """Cumulative or rolling unique count of series ``index`` per bucket of ``period``."""
        builder = ParameterBuilder()
        plan = self.series[index]
        prefix, value = ("", "")
        if breakdown is not None:
            prefix, value = self._ranking(builder, current, breakdown, limit)
        if plan.field is None:
            raise ValueError(f"series {plan.letter}: a unique count without a field")
        counted = column_sql(plan.field, self.model, builder.bind)
        if plan.field.type is FieldType.FLOAT:
            counted = f"({counted} + 0.)"
        condition = self._series_condition(index, builder)
        where = self._where(builder, period, [f"({condition})", f"{counted} IS NOT NULL"])
        classes = ""
        class_keys = ""
        outer: list[tuple[str, str, str]] = []
        if breakdown is not None:
            classes = f", indexOf(top, tuple({value})) AS k1, if(k1 = 0, NULL, {value}) AS k2"
            class_keys = ", k1, k2"
        keys = self._keys(builder, period.buckets)
        key = self._bucket_key(builder)
        table = self._table(builder)
        if display == "cumulative":
            inner = (
                f"{prefix}SELECT {counted} AS a{classes}, min({key}) AS k0 FROM {table} "
                f"WHERE {' AND '.join(where)} GROUP BY a{class_keys}"
            )
            bucket = self._key_lookup(keys, "k0")
            source = f"(SELECT k0{class_keys}, count() AS m FROM ({inner}) GROUP BY k0{class_keys})"
            outer.append((bucket, "bucket", "int"))
            metric = "m"
        else:
            inner = (
                f"{prefix}SELECT {counted} AS a{classes}, {key} AS k0 FROM {table} "
                f"WHERE {' AND '.join(where)} GROUP BY a{class_keys}, k0"
            )
            spread = (
                f"SELECT a{class_keys}, {self._key_lookup(keys, 'k0')} + s AS i FROM ({inner}) "
                f"ARRAY JOIN range({builder.bind('UInt64', str(window))}) AS s"
            )
            # HAVING, not WHERE: every WHERE of a plan reads the table and starts with the
            # tenant condition, which an audit (and tests/integration/test_trends.py) can check.
            source = (
                f"(SELECT i{class_keys}, uniqExact(a) AS m FROM ({spread}) "
                f"GROUP BY i{class_keys} "
                f"HAVING i <= {builder.bind('UInt64', str(len(period.buckets)))})"
            )
            outer.append(("i", "bucket", "int"))
            metric = "m"
        if breakdown is not None:
            value_type = _value_type(breakdown, self.model)
            outer.append(("k1", "rank", "int"))
            outer.append((render_value("k2", value_type, breakdown, builder), "value", value_type))
        outer.append((f"toInt64({metric})", f"m{index}", "int"))
        return self._compiled(builder, outer, source, wrap=False)

    def _compiled(
        self,
        builder: ParameterBuilder,
        outer: Sequence[tuple[str, str, str]],
        source: str,
        *,
        wrap: bool = True,
    ) -> CompiledQuery:
        columns = tuple(
            OutputColumn(key, f"c{position}", output_type)
            for position, (_, key, output_type) in enumerate(outer)
        )
        select = ", ".join(f"{sql} AS c{position}" for position, (sql, _, _) in enumerate(outer))
        body = f"({source})" if wrap else source
        sql = f"SELECT {select} FROM {body}"
        return CompiledQuery(
            sql,
            builder.parameters,
            columns,
            self.model,
            limit=0,
            # No transform_null_in: it would make a filter's NULL NOT IN (...) true, where SQL
            # (and Query) leave the row out; indexOf finds a NULL breakdown value without it.
            settings=dict(BUCKET_SETTINGS),
            tenant=self.tenant,
            joined=self._joined(),
            rollup=self.aggregated.name if self.aggregated is not None else "",
        )


def rollup_metric(plan: SeriesPlan) -> MetricRequest:
    """The rollup measure a series' values merge from: ``unique_actors`` counts the actor."""
    field = plan.field.name if plan.field is not None else ""
    if plan.aggregate == "unique_actors":
        return MetricRequest("count_distinct", field)
    return MetricRequest(plan.aggregate, field)


def _read_ranges(periods: Sequence[_Range]) -> list[_Range]:
    """The ranges a scan of ``periods`` reads: adjacent or overlapping ones as one range."""
    ordered = sorted(periods, key=lambda p: p.start)
    merged = [ordered[0]]
    for period in ordered[1:]:
        last = merged[-1]
        if period.start <= last.end:
            merged[-1] = _Range(last.start, max(last.end, period.end), ())
        else:
            merged.append(period)
    return merged


def _value_type(spec: FieldSpec, model: Model) -> str:
    """The output type of a breakdown field's values (a scratch builder: nothing is bound)."""
    return group_expression(spec, model, ParameterBuilder())[1]
