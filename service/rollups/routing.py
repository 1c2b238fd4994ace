"""Which rollup can answer a query request exactly: a pure decision, made before compiling.

A rollup answers a request when every row-level thing the request asks is constant within a
rollup group, so that aggregating the groups' merged states equals aggregating the rows:

* group keys: the rollup's dimensions, or its time field bucketed at an interval its grain
  divides, in the rollup's time zone;
* filters: any condition on a dimension (it is a function of the stored value); on the time
  field only ``gte``/``lt`` at a bucket boundary and ``is.null`` (each true for all rows of a
  bucket or for none), under any ``and``/``or``/``not``; no segment, no related field;
* metrics: each one a declared measure (``count`` included), no percentile.

Anything else, or anything invalid, is left to the replica (``None``); the compiler reports the
errors, the same whether a rollup was chosen or not.

A trend (``choose_trend_rollup``, decided on its compiled plan) is answered the same way: its
buckets are time keys, its breakdown a group key, each series a measure (``unique_actors`` the
actor's ``count_distinct``) whose event name and filters are conditions, and each period's
bounds must fall on bucket boundaries. Cumulative and rolling trends are left to the replica.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from zoneinfo import ZoneInfo

from service.catalog import ROLLUP_GRAINS, FieldType, Model, Rollup, RollupMeasure
from service.errors import AnalyticsError
from service.insights.trend_request import TrendRequest
from service.insights.trends import TrendPlan, rollup_metric
from service.query.compiler import SEGMENT_KEY
from service.query.filters import Condition, Filter, parse_filters
from service.query.request import QueryRequest
from service.query.values import parse_timestamp

_MICROSECOND = dt.timedelta(microseconds=1)


def choose_rollup(request: QueryRequest, model: Model) -> Rollup | None:
    """The first of ``model``'s rollups that answers ``request`` exactly, if any."""
    if not model.rollups or SEGMENT_KEY in request.filters:
        return None
    try:
        filters = parse_filters(request.filters)
    except AnalyticsError:
        return None
    keys = (
        [name.strip() for name in request.group_by.split(",")] if request.group_by.strip() else []
    )
    measures = _measures(request)
    time_zone = request.time_zone or "UTC"
    for rollup in model.rollups:
        if _answers(rollup, model, keys, request.group_by_interval, filters, measures, time_zone):
            return rollup
    return None


def choose_trend_rollup(request: TrendRequest, plan: TrendPlan) -> Rollup | None:
    """The first of the plan's model's rollups that answers the trend exactly, if any."""
    model = plan.model
    filter_maps = [request.filters, *(item.filters for item in request.series)]
    if not model.rollups or plan.display or any(SEGMENT_KEY in f for f in filter_maps):
        return None
    if plan.date_field is None or plan.date_field.relation_path:
        return None
    try:
        filters = [item for filter_map in filter_maps for item in parse_filters(filter_map)]
    except AnalyticsError:
        return None
    keys = [plan.date_field.name]
    if plan.breakdown is not None:
        if plan.breakdown.relation_path or plan.breakdown.property_key is not None:
            return None
        keys.append(plan.breakdown.name)
    measures = [
        RollupMeasure(metric.aggregate, metric.field)
        for metric in (rollup_metric(series) for series in plan.series)
    ]
    events = any(item.event for item in request.series)
    time_zone = request.time_zone or "UTC"
    bounds = [moment for period in plan.periods for moment in period]
    for rollup in model.rollups:
        if events and (model.events is None or model.events.event not in rollup.dimensions):
            continue
        if plan.week_start != "monday" and plan.interval == "week" and rollup.grain == "week":
            continue
        if not all(_starts_bucket_at(moment, rollup) for moment in bounds):
            continue
        if _answers(rollup, model, keys, plan.interval, filters, measures, time_zone):
            return rollup
    return None


def _measures(request: QueryRequest) -> list[RollupMeasure]:
    """The measures the request's metrics need (an unknown aggregate needs one never declared)."""
    requested = [(m.aggregate, m.field) for m in request.metrics]
    if request.aggregate or request.field or not requested:
        requested.insert(0, (request.aggregate or "count", request.field))
    return [RollupMeasure(aggregate, field) for aggregate, field in requested]


def _answers(  # noqa: PLR0917 (one request, taken apart once by the caller)
    rollup: Rollup,
    model: Model,
    keys: Sequence[str],
    interval: str,
    filters: Sequence[Filter],
    measures: Sequence[RollupMeasure],
    time_zone: str,
) -> bool:
    if any(measure not in rollup.measures for measure in measures):
        return False
    uses_time = False
    for key in keys:
        if key == rollup.time_field and key:
            if interval not in ROLLUP_GRAINS[rollup.grain]:
                return False
            uses_time = True
        elif key not in rollup.dimensions:
            return False
    if interval and not uses_time:
        return False
    for condition in _leaves(filters):
        if condition.field in rollup.dimensions:
            continue
        if condition.field != rollup.time_field or not condition.field:
            return False
        if not _constant_per_bucket(condition, model, rollup, time_zone):
            return False
        uses_time = True
    return not uses_time or time_zone == rollup.time_zone


def _leaves(filters: Sequence[Filter]) -> Iterator[Condition]:
    for item in filters:
        if isinstance(item, Condition):
            yield item
        else:
            yield from _leaves(item.children)


def _constant_per_bucket(
    condition: Condition, model: Model, rollup: Rollup, time_zone: str
) -> bool:
    """Whether ``condition`` on the time field is true for every row of a bucket or for none."""
    if condition.operator == "is":
        return condition.values == ("null",)
    if condition.operator not in ("gte", "lt") or len(condition.values) != 1:
        return False
    text = condition.values[0]
    try:
        if model.fields[rollup.time_field].type is FieldType.DATE:
            return _starts_bucket(dt.date.fromisoformat(text), rollup.grain)
        moment = parse_timestamp(text, time_zone)
    except ValueError:
        return False
    return _starts_bucket_at(moment, rollup)


def _starts_bucket_at(moment: dt.datetime, rollup: Rollup) -> bool:
    """Whether the instant ``moment`` is the first of one of the rollup's buckets."""
    zone = ZoneInfo(rollup.time_zone)
    local = moment.astimezone(zone)
    if rollup.grain == "hour":
        return local.minute == local.second == local.microsecond == 0
    # The first instant of its local day: the instant before it is on another local date.
    first_of_day = (moment - _MICROSECOND).astimezone(zone).date() != local.date()
    return first_of_day and _starts_bucket(local.date(), rollup.grain)


def _starts_bucket(day: dt.date, grain: str) -> bool:
    """Whether ``day`` is the first day of a bucket of ``grain`` (day or longer)."""
    if grain == "week":
        return day.weekday() == 0
    if grain == "month":
        return day.day == 1
    return True
