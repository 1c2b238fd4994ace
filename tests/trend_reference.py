"""An independent evaluator of trends, written from README "Trends", to check the engine's answers.

``reference_trend(request, rows, tenant, now, model)`` computes the answer in plain Python over
the rows as they were written (every version of every row; the current ones are picked here as
FINAL picks them). It shares nothing with ``service/insights/trends.py``, ``trend_results.py`` or
``buckets.py``: buckets are found by brute force (the bucket of every instant of the range on a
15-minute grid, finer than any modern change of offset, or a 1-minute grid for minutes) and each
value is the aggregate over the rows it covers, recomputed from the rows for cumulative and
rolling displays rather than accumulated from bucket values.

Reused, because each has tests of its own:

* ``service.insights.date_range.parse_date_bound`` reads one bound (ISO date, ISO date-time, naive
  or with an offset, ``now``, ``-<n><unit>``); ``tests/unit/test_date_range.py`` checks it. What
  the README adds on top (a date-only ``dateTo`` includes its day, defaults, start before end) is
  written here.
* ``service.insights.formula.parse_formula`` and ``Formula.evaluate`` (the grammar and its Decimal
  arithmetic; ``tests/unit/test_formula.py``).
* the filter grammar evaluation and ``pg_wall_clock`` / ``pg_date_trunc`` of ``tests/reference.py``
  (test-side references, checked against PostgreSQL by ``tests/integration/test_pg_parity.py``).

Definitions (README "Trends"), as implemented here:

* rows: the current version of each row (highest ``_version`` per tenant and primary key or event
  id), not ``_is_deleted``, of the tenant, with a date in ``[start, end)``, matching the request's
  filters; soft-deleted rows left out unless some filter of the request names the column; a
  series keeps the rows matching its own filters and event name;
* buckets: every bucket (PostgreSQL's ``date_trunc``; Sunday weeks on request) holding an instant
  of the range, at most 5 000 (``TOO_MANY_BUCKETS`` on ``interval``, or ``compare``);
* aggregates skip nulls; an empty bucket is 0 for count, unique counts and sums, null otherwise;
* breakdown: values found among the first series' rows of the current range, ranked by that
  series' value over the whole range (highest first, null last; ties by the value ascending,
  strings by code point, UUIDs by their text, null last); the top ``breakdownLimit`` get lines
  and every other value is ``Other``, which has lines when some row counted by a series (in
  either period) has such a value;
* compare: ``previous`` moves both bounds back by as many intervals as there are buckets (elapsed
  minutes and hours, calendar days, weeks and months on local wall time), an offset moves them by
  its amount (hours elapsed, the rest on the calendar, clamped at month ends);
* cumulative: a bucket's value is the aggregate over the rows from the range's start to the
  bucket's end; rolling N: over the rows of the bucket and the N-1 before it;
* formula: per bucket on the displayed values, as Decimals (floats by their shortest repr).
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

from service.catalog import FieldSpec, FieldType, Model
from service.insights.date_range import parse_date_bound
from service.insights.formula import Formula, parse_formula
from service.insights.trend_request import TrendRequest, TrendSeries
from tests.reference import _parse_entry, pg_date_trunc, pg_wall_clock

Row = Mapping[str, Any]
MAX_BUCKETS = 5000
DEFAULT_LIMIT = 25
OTHER = "Other"
_ZERO_FILLED = ("count", "unique_actors", "count_distinct", "sum")
_OFFSET = re.compile(r"-([0-9]+)([hdwmqy])")
_MONTHS = {"m": 1, "q": 3, "y": 12}
#: The class key of the Other line (a sentinel: a breakdown value may be the text "Other").
_OTHER_CLASS = object()


class Rejected(Exception):  # noqa: N818 (the expected outcome, not a failure of the reference)
    """The request must be refused: a validation error on ``field`` with ``reason``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ReferenceLine:
    """One expected line of the answer."""

    series: str
    label: str
    breakdown_value: Any
    is_other: bool
    compare: bool
    values: list[Any]
    output_type: str


@dataclass(frozen=True)
class _Period:
    name: str
    start: dt.datetime
    end: dt.datetime
    keys: list[Any]


def current_rows(rows: Iterable[Row], model: Model) -> list[Row]:
    """The rows FINAL shows: the highest ``_version`` per (tenant, key), unless it is deleted.

    An event model's key is the event id and the UTC day of the event time (README, "Product
    events": a re-send on another day is another event).
    """
    latest: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        if model.events is not None:
            day = row[model.events.timestamp].astimezone(dt.UTC).date()
            key = (row[model.tenant_column], day, row[model.events.event_id])
        else:
            key = (row[model.tenant_column], *(row[name] for name in model.primary_key))
        held = latest.get(key)
        if held is None or row["_version"] > held["_version"]:
            latest[key] = row
    return [row for row in latest.values() if not row["_is_deleted"]]


def field_value(row: Row, name: str, model: Model) -> Any:
    """A declared field's value, or ``properties.<key>``'s (null when the event lacks the key)."""
    if name in model.fields:
        return row[name]
    if model.events is None:
        raise KeyError(name)
    prefix = f"{model.events.properties}."
    if not name.startswith(prefix):
        raise KeyError(name)
    wanted = name[len(prefix) :]
    keys = row[model.events.key_column]
    values = row[model.events.value_column]
    for key, value in zip(keys, values, strict=True):
        if key == wanted:
            return value
    return None


def output_type(aggregate: str, spec: FieldSpec | None) -> str:
    """The type of a series' values: exact integers for counts, the field's type where it keeps
    it (sum of an int is an int, of a decimal a decimal; min and max), else float."""
    if aggregate in ("count", "unique_actors", "count_distinct"):
        return "int"
    if aggregate in ("sum", "min", "max") and spec is not None:
        return {FieldType.INT: "int", FieldType.DECIMAL: "decimal"}.get(spec.type, "float")
    return "float"


def default_label(series: TrendSeries) -> str:
    """README: the event name for a count (else ``count``), ``unique actors``, or
    ``<aggregate>(<field>)``, the latter two followed by `` of <event>`` when there is one."""
    aggregate = series.aggregate or "count"
    suffix = f" of {series.event}" if series.event else ""
    if aggregate == "count":
        return series.event or "count"
    if aggregate == "unique_actors":
        return f"unique actors{suffix}"
    return f"{aggregate}({series.field}){suffix}"


def reference_trend(
    request: TrendRequest, rows: Iterable[Row], tenant: str, now: dt.datetime, model: Model
) -> tuple[list[str], list[str], list[ReferenceLine]]:
    """(buckets, compare buckets, lines) the service must answer; ``Rejected`` if it must not.

    The request must otherwise be valid (the tests check validation separately): only range and
    bucket-count errors are recognised here.
    """
    zone_name = request.time_zone or "UTC"
    zone = ZoneInfo(zone_name)
    interval = request.interval or "day"
    sunday = request.week_start == "sunday"
    start, end = _range(request, now, zone_name, zone)
    keys = _bucket_keys(start, end, interval, zone, sunday, "interval")
    periods = [_Period("current", start, end, keys)]
    if request.compare:
        compare_start, compare_end = compare_range(
            request.compare, start, end, len(keys), interval, zone
        )
        periods.append(
            _Period(
                "compare",
                compare_start,
                compare_end,
                _bucket_keys(compare_start, compare_end, interval, zone, sunday, "compare"),
            )
        )

    series = list(request.series) or [TrendSeries()]
    date_name = request.date_field or (
        model.events.timestamp if model.events is not None else "created_at"
    )
    selected = _selected_rows(request, series, rows, tenant, model, zone)
    series_tests = [_series_test(item, model, zone) for item in series]
    specs = [_series_spec(item, model) for item in series]

    breakdown = request.breakdown
    rank: dict[Any, int] = {}

    def class_of(row: Row) -> Any:
        value = _hashable(field_value(row, breakdown, model))
        return value if value in rank else _OTHER_CLASS

    classes: list[tuple[Any, Any]] = [(None, None)]  # (class key, breakdown value)
    if breakdown:
        ranked = _ranking(
            [row for row in selected if start <= row[date_name] < end and series_tests[0](row)],
            breakdown,
            series[0],
            specs[0],
            model,
        )
        top = ranked[: request.breakdown_limit or DEFAULT_LIMIT]
        rank = {_hashable(value): index for index, value in enumerate(top)}
        classes = [(_hashable(value), value) for value in top]
        if any(
            class_of(row) is _OTHER_CLASS and any(test(row) for test in series_tests)
            for period in periods
            for row in selected
            if period.start <= row[date_name] < period.end
        ):
            classes.append((_OTHER_CLASS, OTHER))

    formula = parse_formula(request.formula, len(series)) if request.formula else None
    lines: list[ReferenceLine] = []
    for period in periods:
        index_of = {key: position for position, key in enumerate(period.keys)}
        in_period = [row for row in selected if period.start <= row[date_name] < period.end]
        for class_key, shown in classes:
            by_bucket: list[list[Row]] = [[] for _ in period.keys]
            for row in in_period:
                if breakdown and class_of(row) != class_key:
                    continue
                key = _bucket_key(row[date_name], interval, zone, sunday)
                by_bucket[index_of[key]].append(row)
            is_other = class_key is _OTHER_CLASS
            displayed: list[list[Any]] = []
            for position, item in enumerate(series):
                counted = [
                    [row for row in bucket if series_tests[position](row)] for bucket in by_bucket
                ]
                values = _displayed(
                    counted, item, specs[position], model, request.display, request.rolling_window
                )
                displayed.append(values)
                lines.append(
                    ReferenceLine(
                        chr(ord("A") + position),
                        item.label or default_label(item),
                        shown,
                        is_other,
                        period.name == "compare",
                        values,
                        output_type(item.aggregate or "count", specs[position]),
                    )
                )
            if formula is not None:
                lines.append(
                    ReferenceLine(
                        "formula",
                        formula.render(),
                        shown,
                        is_other,
                        period.name == "compare",
                        _formula_values(formula, displayed),
                        "float",
                    )
                )
    labels = [_label(key, zone, zone_name) for key in keys]
    compare_labels = (
        [_label(key, zone, zone_name) for key in periods[1].keys] if len(periods) > 1 else []
    )
    return labels, compare_labels, lines


# --- the range and its buckets ------------------------------------------------------------------


def _range(
    request: TrendRequest, now: dt.datetime, zone_name: str, zone: ZoneInfo
) -> tuple[dt.datetime, dt.datetime]:
    text = request.date_to
    if not text:
        end = now.astimezone(dt.UTC)
    elif _is_date(text):
        # A date-only dateTo includes that day: the range ends where the next day starts.
        following = dt.date.fromisoformat(text) + dt.timedelta(days=1)
        end = pg_wall_clock(dt.datetime.combine(following, dt.time()), zone).astimezone(dt.UTC)
    else:
        end = parse_date_bound(text, "dateTo", now, zone_name)
    start = parse_date_bound(request.date_from or "-7d", "dateFrom", now, zone_name)
    if start >= end:
        raise Rejected("dateFrom", "INVALID_DATE_RANGE")
    return start, end


def _is_date(text: str) -> bool:
    """Whether a bound is an ISO date without a time (either ISO spelling of one)."""
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _bucket_key(moment: dt.datetime, interval: str, zone: ZoneInfo, sunday: bool) -> Any:
    """The bucket ``moment`` is in: a UTC instant for minutes and hours, a local date else."""
    if interval in ("minute", "hour"):
        return pg_date_trunc(interval, moment, zone)
    day = moment.astimezone(zone).date()
    if interval == "day":
        return day
    if interval == "week":
        return day - dt.timedelta(days=(day.weekday() + 1) % 7 if sunday else day.weekday())
    if interval == "month":
        return dt.date(day.year, day.month, 1)
    if interval == "quarter":
        return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    return dt.date(day.year, 1, 1)


def _bucket_keys(
    start: dt.datetime, end: dt.datetime, interval: str, zone: ZoneInfo, sunday: bool, source: str
) -> list[Any]:
    """Every bucket holding an instant of ``[start, end)``: a bucket's first instant in the range
    is ``start`` or a boundary, and boundaries lie on whole minutes (quarter hours but for
    minute buckets) in every zone the tests use."""
    step = dt.timedelta(minutes=1 if interval == "minute" else 15)
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    keys = {_bucket_key(start, interval, zone, sunday)}
    moment = epoch + ((start - epoch) // step + 1) * step
    while moment < end:
        keys.add(_bucket_key(moment, interval, zone, sunday))
        if len(keys) > MAX_BUCKETS:
            raise Rejected(source, "TOO_MANY_BUCKETS")
        moment += step
    return sorted(keys)


def _label(key: Any, zone: ZoneInfo, zone_name: str) -> str:
    start = (
        key
        if isinstance(key, dt.datetime)
        else pg_wall_clock(dt.datetime.combine(key, dt.time()), zone)
    )
    if zone_name == "UTC":
        return start.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return start.astimezone(zone).isoformat(timespec="seconds")


def compare_range(
    text: str, start: dt.datetime, end: dt.datetime, buckets: int, interval: str, zone: ZoneInfo
) -> tuple[dt.datetime, dt.datetime]:
    if text == "previous":
        amount, unit = (
            buckets,
            {
                "minute": "minute",
                "hour": "h",
                "day": "d",
                "week": "w",
                "month": "m",
                "quarter": "q",
                "year": "y",
            }[interval],
        )
    else:
        match = _OFFSET.fullmatch(text)
        if match is None:
            raise ValueError(f"not an offset the tests generate: {text!r}")
        amount, unit = int(match.group(1)), match.group(2)
    return _back(start, amount, unit, zone), _back(end, amount, unit, zone)


def _back(moment: dt.datetime, amount: int, unit: str, zone: ZoneInfo) -> dt.datetime:
    """``moment`` moved back: minutes and hours elapsed, other units on the local calendar."""
    if unit == "minute":
        return moment - dt.timedelta(minutes=amount)
    if unit == "h":
        return moment - dt.timedelta(hours=amount)
    wall = moment.astimezone(zone).replace(tzinfo=None)
    if unit in ("d", "w"):
        wall -= dt.timedelta(days=amount * (7 if unit == "w" else 1))
    else:
        months = wall.year * 12 + wall.month - 1 - amount * _MONTHS[unit]
        year, month = months // 12, months % 12 + 1
        wall = wall.replace(
            year=year, month=month, day=min(wall.day, calendar.monthrange(year, month)[1])
        )
    return pg_wall_clock(wall, zone).astimezone(dt.UTC)


# --- rows ---------------------------------------------------------------------------------------


def _predicate(filters: Mapping[str, str], model: Model, zone: ZoneInfo) -> Callable[[Row], bool]:
    """SQL's three-valued filters over declared fields and ``properties.<key>`` (true rows only)."""
    nodes = [_parse_entry(key, value) for key, value in filters.items()]
    names: set[str] = set().union(*(node.fields() for node in nodes))
    extra = {
        name: FieldSpec(name, FieldType.STRING, nullable=True) for name in names - set(model.fields)
    }
    viewed = replace(model, fields={**model.fields, **extra})
    tests = [node.bind(viewed, zone) for node in nodes]
    if not extra:
        return lambda row: all(test(row) is True for test in tests)

    def predicate(row: Row) -> bool:
        view = {**row, **{name: field_value(row, name, model) for name in extra}}
        return all(test(view) is True for test in tests)

    return predicate


def _mentioned(filters: Mapping[str, str]) -> set[str]:
    return set().union(*(_parse_entry(key, value).fields() for key, value in filters.items()))


def _selected_rows(
    request: TrendRequest,
    series: Sequence[TrendSeries],
    rows: Iterable[Row],
    tenant: str,
    model: Model,
    zone: ZoneInfo,
) -> list[Row]:
    """The tenant's current rows that pass the request's filters (and the soft-delete rule)."""
    named = _mentioned(request.filters).union(*(_mentioned(item.filters) for item in series))
    soft = model.soft_delete_column
    hide = soft is not None and soft not in named
    date_name = request.date_field or (
        model.events.timestamp if model.events is not None else "created_at"
    )
    passes = _predicate(request.filters, model, zone)
    return [
        row
        for row in current_rows(rows, model)
        if row[model.tenant_column] == tenant
        and row[date_name] is not None
        and not (hide and row[soft or ""] is not None)
        and passes(row)
    ]


def _series_test(item: TrendSeries, model: Model, zone: ZoneInfo) -> Callable[[Row], bool]:
    passes = _predicate(item.filters, model, zone)
    if not item.event:
        return passes
    event_name = model.events.event if model.events is not None else ""
    return lambda row: row[event_name] == item.event and passes(row)


def _series_spec(item: TrendSeries, model: Model) -> FieldSpec | None:
    if (item.aggregate or "count") == "unique_actors":
        return model.fields[model.events.actor] if model.events is not None else None
    if not item.field:
        return None
    return model.fields.get(item.field) or FieldSpec(item.field, FieldType.STRING, nullable=True)


def _hashable(value: Any) -> Any:
    """Breakdown values as dictionary keys (one key for 1.5 and 1.50, as in SQL)."""
    if isinstance(value, Decimal):
        return ("decimal", value.normalize() if value else Decimal(0))
    return value


# --- aggregates ---------------------------------------------------------------------------------


def aggregate(item: TrendSeries, spec: FieldSpec | None, rows: Sequence[Row], model: Model) -> Any:
    """The series' value over ``rows`` (nulls skipped; no rows: 0 for counts and sums)."""
    kind = item.aggregate or "count"
    if spec is None:
        return len(rows)
    present = [v for v in (field_value(row, spec.name, model) for row in rows) if v is not None]
    if kind == "count":
        return len(present)
    if kind in ("unique_actors", "count_distinct"):
        return len({_hashable(v) for v in present})
    if kind == "sum":
        if spec.type is FieldType.FLOAT:
            return math.fsum(present)
        return sum(present, Decimal(0) if spec.type is FieldType.DECIMAL else 0)
    if not present:
        return None
    if kind == "min":
        return min(present)
    if kind == "max":
        return max(present)
    if kind == "avg":
        with localcontext() as context:
            context.prec = 60
            total = sum((Decimal(v) for v in present), Decimal(0))
            return float(total / len(present))
    ordered = sorted(float(v) for v in present)
    position = int(kind[1:]) / 100 * (len(ordered) - 1)
    lower = math.floor(position)
    if lower + 1 >= len(ordered):
        return ordered[-1]
    return ordered[lower] + (position - lower) * (ordered[lower + 1] - ordered[lower])


def _ranking(
    rows: Sequence[Row], breakdown: str, item: TrendSeries, spec: FieldSpec | None, model: Model
) -> list[Any]:
    groups: dict[Any, list[Row]] = {}
    values: dict[Any, Any] = {}
    for row in rows:
        value = field_value(row, breakdown, model)
        groups.setdefault(_hashable(value), []).append(row)
        values.setdefault(_hashable(value), value)

    def order(key: Any) -> tuple[Any, ...]:
        metric = aggregate(item, spec, groups[key], model)
        value = values[key]
        return (
            metric is None,
            0 if metric is None else -metric,
            value is None,
            "" if value is None else value,
        )

    return [values[key] for key in sorted(groups, key=order)]


def _displayed(
    buckets: Sequence[Sequence[Row]],
    item: TrendSeries,
    spec: FieldSpec | None,
    model: Model,
    display: str,
    window: int,
) -> list[Any]:
    """Each bucket's value: its own rows, every row up to it (cumulative), or its window's."""
    cache: dict[tuple[int, ...], Any] = {}
    values: list[Any] = []
    for position in range(len(buckets)):
        if display == "cumulative":
            first = 0
        elif display == "rolling":
            first = max(0, position - window + 1)
        else:
            first = position
        covered = tuple(i for i in range(first, position + 1) if buckets[i])
        if covered not in cache:
            cache[covered] = aggregate(item, spec, [r for i in covered for r in buckets[i]], model)
        values.append(cache[covered])
    return values


def _formula_values(formula: Formula, displayed: Sequence[Sequence[Any]]) -> list[Any]:
    results: list[Any] = []
    for bucket in zip(*displayed, strict=True):
        operands = [_decimal(value) for value in bucket]
        result = formula.evaluate(operands)
        results.append(None if result is None else float(result))
    return results


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)
