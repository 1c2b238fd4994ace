"""An independent evaluator of the analytics query contract, to check the engine's answers.

It reads the request itself (the PostgREST filter grammar included) and computes the result in
plain Python over the rows a correct engine must see (``service.demo.generator.current_rows``).
It shares nothing with the compiler but the request and catalog types, so a mistake in one is not
hidden by the same mistake in the other.

Semantics (the service's contract):

* rows of the tenant only; rows whose soft-delete column is set are left out unless a filter
  mentions that column (at any depth of and/or);
* filters combine with SQL three-valued logic: a comparison with NULL is unknown, ``not.`` of
  unknown is unknown, only true rows are kept; ``is.null``/``is.true``/``is.false`` are never
  unknown;
* a top-level filter value is literal, quotes included; inside ``in.(...)`` and and/or trees
  double quotes delimit a value and a backslash in them escapes the next character (PostgREST);
* ``like``/``ilike`` take ``*`` and ``%`` for any run and ``_`` for one character; a backslash
  makes the next character literal, whatever it is (PostgreSQL); ``ilike`` lowers text and
  pattern character by character with the simple Unicode mapping (PostgreSQL in a UTF-8 locale);
* a timestamp without an offset is local time in the request's zone; in a DST gap it takes the
  offset before the gap, in an overlap the later occurrence (PostgreSQL's ``AT TIME ZONE``);
* aggregates skip NULLs; over no values count is 0, everything else NULL (SQL); sums are exact;
  percentiles interpolate linearly (numpy's default, PostgreSQL's ``percentile_cont``);
* -0.0 and 0.0 are one value;
* ``groupByInterval`` truncates as PostgreSQL's ``date_trunc(unit, ts, zone)``: minutes and
  hours cut the local time and keep the instant's offset, days and longer start at local
  midnight (in a gap the offset before it, in an overlap the later one); weeks start on Monday;
  fractions of a second floor; buckets render as ISO 8601 with ``Z`` in UTC and the exact
  numeric offset elsewhere, dates as ``YYYY-MM-DD``, other timestamps with microseconds and ``Z``;
* order by the requested keys, then every group key ascending; NULLs last ascending and first
  descending unless ``nullsfirst``/``nullslast`` says otherwise (PostgreSQL); strings by code
  point (PostgreSQL's C collation), UUIDs by their text, everything else by value; then offset
  and limit.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from service.catalog import FieldSpec, FieldType, Model
from service.query.compiler import OutputColumn
from service.query.request import MetricRequest, QueryRequest

Row = Mapping[str, Any]
Truth = bool | None  # None is SQL's unknown
DEFAULT_LIMIT = 1000
_JUNCTIONS = ("and", "or")
_UNITS = ("minute", "hour", "day", "week", "month", "quarter", "year")


def evaluate(
    request: QueryRequest,
    model: Model,
    tenant: str,
    rows: Iterable[Row],
    *,
    default_limit: int = DEFAULT_LIMIT,
) -> list[dict[str, Any]]:
    """The result rows the service must return for ``request`` by ``tenant`` over ``rows``."""
    zone_name = request.time_zone or "UTC"
    zone = ZoneInfo(zone_name)
    conditions = [_parse_entry(key, value) for key, value in request.filters.items()]
    mentioned = set().union(*(node.fields() for node in conditions))
    predicates = [node.bind(model, zone) for node in conditions]
    soft = model.soft_delete_column
    hide_soft_deleted = soft is not None and soft not in mentioned

    selected = [
        row
        for row in rows
        if row[model.tenant_column] == tenant
        and not (hide_soft_deleted and _is_soft_deleted(row[soft or ""]))
        and all(predicate(row) is True for predicate in predicates)
    ]

    keys = [name.strip() for name in request.group_by.split(",")] if request.group_by else []
    specs = [model.fields[name] for name in keys]
    interval = request.group_by_interval
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in selected:
        bucket = tuple(_bucket(row[spec.name], spec, interval, zone) for spec in specs)
        groups.setdefault(bucket, []).append(row)
    if not keys:
        groups = {(): selected}

    metrics = metric_requests(request)
    entries: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for bucket, members in groups.items():
        raw: dict[str, Any] = {}
        shown: dict[str, Any] = {}
        for spec, value in zip(specs, bucket, strict=True):
            raw[spec.name] = _sortable(value, spec)
            shown[spec.name] = _render_key(value, spec, interval, zone_name)
        for key, metric in metrics:
            spec_or_none = model.fields.get(metric.field)
            value = _aggregate(metric, spec_or_none, members)
            raw[key] = value
            shown[key] = _render_value(value, spec_or_none, metric.aggregate)
        entries.append((raw, shown))

    for name, descending, nulls_first in reversed(_order_terms(request.order, keys)):
        entries.sort(key=_sort_key(name, descending, nulls_first), reverse=descending)
    limit = request.limit or default_limit
    return [shown for _, shown in entries[request.offset : request.offset + limit]]


def metric_requests(request: QueryRequest) -> list[tuple[str, MetricRequest]]:
    """The request's metrics with their result keys, in result order."""
    requested: list[MetricRequest] = []
    if request.aggregate or request.field:
        requested.append(MetricRequest(request.aggregate or "count", request.field))
    requested.extend(request.metrics)
    if not requested:
        requested.append(MetricRequest("count"))
    keyed = []
    for metric in requested:
        if metric.alias:
            key = metric.alias
        elif metric.aggregate == "count" and not metric.field:
            key = "count"
        else:
            key = f"{metric.aggregate}_{metric.field}"
        keyed.append((key, metric))
    return keyed


def result_dicts(table: pa.Table, columns: Sequence[OutputColumn]) -> list[dict[str, Any]]:
    """An engine result as the service's rows: dicts keyed by the result keys."""
    values = {
        column.key: [
            # integer sums are Decimal(38, 0) in the engine: integers all the same
            int(v) if column.type == "int" and isinstance(v, Decimal) else v
            for v in table.column(column.alias).to_pylist()
        ]
        for column in columns
    }
    return [
        {column.key: values[column.key][index] for column in columns}
        for index in range(table.num_rows)
    ]


def values_equal(actual: Any, expected: Any, *, rel_tol: float = 1e-9) -> bool:
    """Equality for result values: floats within ``rel_tol``, everything else exact and typed."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(expected, float) or isinstance(actual, float):
        return (
            isinstance(actual, float)
            and isinstance(expected, float)
            and math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=1e-12)
        )
    if type(actual) is not type(expected):
        return False
    return bool(actual == expected)


def assert_results_equal(
    actual: Sequence[Mapping[str, Any]],
    expected: Sequence[Mapping[str, Any]],
    *,
    rel_tol: float = 1e-9,
    context: str = "",
) -> None:
    """Assert two results match row by row and key by key, naming the first difference."""
    prefix = f"{context}: " if context else ""
    if len(actual) != len(expected):
        raise AssertionError(
            f"{prefix}{len(actual)} rows, expected {len(expected)}\n"
            f"actual[:5]={list(actual[:5])}\nexpected[:5]={list(expected[:5])}"
        )
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        if list(got) != list(want):
            raise AssertionError(f"{prefix}row {index}: keys {list(got)}, expected {list(want)}")
        for key, value in want.items():
            if not values_equal(got[key], value, rel_tol=rel_tol):
                raise AssertionError(
                    f"{prefix}row {index}, {key!r}: {got[key]!r}, expected {value!r}\n"
                    f"actual row={dict(got)}\nexpected row={dict(want)}"
                )


# --- filters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Condition:
    field: str
    operator: str
    operands: tuple[str, ...]
    negated: bool

    def fields(self) -> set[str]:
        return {self.field}

    def bind(self, model: Model, zone: ZoneInfo) -> Callable[[Row], Truth]:
        spec = model.fields[self.field]
        test = self._test(spec, zone)
        name, negated = spec.name, self.negated

        def predicate(row: Row) -> Truth:
            outcome = test(row[name])
            return outcome if outcome is None or not negated else not outcome

        return predicate

    def _test(self, spec: FieldSpec, zone: ZoneInfo) -> Callable[[Any], Truth]:
        operator = self.operator
        if operator == "is":
            wanted = self.operands[0]
            if wanted == "null":
                return lambda value: value is None
            return lambda value: value is (wanted == "true")
        if operator in ("like", "ilike"):
            folded = operator == "ilike"
            pattern = _like_pattern(self.operands[0], ignore_case=folded)
            return lambda value: (
                None
                if value is None
                else bool(pattern.fullmatch(simple_lower(value) if folded else value))
            )
        operands = [_typed(spec, text, zone) for text in self.operands]
        if operator == "in":
            allowed = set(operands)
            return lambda value: None if value is None else value in allowed
        compare = _COMPARE[operator]
        operand = operands[0]
        return lambda value: None if value is None else compare(value, operand)


@dataclass(frozen=True)
class _Junction:
    kind: str
    children: tuple[_Condition | _Junction, ...]
    negated: bool

    def fields(self) -> set[str]:
        return set().union(*(child.fields() for child in self.children))

    def bind(self, model: Model, zone: ZoneInfo) -> Callable[[Row], Truth]:
        parts = [child.bind(model, zone) for child in self.children]
        combine = _all_of if self.kind == "and" else _any_of
        negated = self.negated

        def predicate(row: Row) -> Truth:
            outcome = combine([part(row) for part in parts])
            return outcome if outcome is None or not negated else not outcome

        return predicate


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: bool(a == b),
    "neq": lambda a, b: bool(a != b),
    "gt": lambda a, b: bool(a > b),
    "gte": lambda a, b: bool(a >= b),
    "lt": lambda a, b: bool(a < b),
    "lte": lambda a, b: bool(a <= b),
}


def _all_of(outcomes: list[Truth]) -> Truth:
    if any(outcome is False for outcome in outcomes):
        return False
    return None if any(outcome is None for outcome in outcomes) else True


def _any_of(outcomes: list[Truth]) -> Truth:
    if any(outcome is True for outcome in outcomes):
        return True
    return None if any(outcome is None for outcome in outcomes) else False


def _parse_entry(key: str, value: str) -> _Condition | _Junction:
    negated = key.startswith("not.")
    kind = key[4:] if negated else key
    if kind in _JUNCTIONS:
        return _parse_junction(kind, value, negated)
    return _parse_condition(key, value, in_tree=False)


def _parse_condition(field: str, expression: str, *, in_tree: bool) -> _Condition:
    negated = expression.startswith("not.")
    operator, _, operand = expression[4 if negated else 0 :].partition(".")
    if operator == "in":
        operands = tuple(_unquote(item) for item in _split(operand))
    else:
        operands = (_unquote(operand) if in_tree else operand,)
    return _Condition(field, operator, operands, negated)


def _parse_junction(kind: str, text: str, negated: bool) -> _Junction:
    children: list[_Condition | _Junction] = []
    for item in _split(text):
        item_negated = item.startswith("not.")
        body = item[4:] if item_negated else item
        head = body.split("(", 1)[0]
        if head in _JUNCTIONS and body.startswith(f"{head}("):
            children.append(_parse_junction(head, body[len(head) :], item_negated))
        else:
            field, _, expression = item.partition(".")
            children.append(_parse_condition(field, expression, in_tree=True))
    return _Junction(kind, tuple(children), negated)


def _split(text: str) -> list[str]:
    """``(a,"b,c",or(d,e))`` -> its top-level items, quotes kept (they are removed per value)."""
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError(f"not a parenthesised list: {text!r}")
    items: list[str] = []
    current = ""
    depth = 0
    quoted = False
    characters = iter(text[1:-1])
    for character in characters:
        if quoted and character == "\\":
            current += character + next(characters, "")
            continue
        if character == '"':
            quoted = not quoted
        elif not quoted and character == "(":
            depth += 1
        elif not quoted and character == ")":
            depth -= 1
        elif not quoted and depth == 0 and character == ",":
            items.append(current)
            current = ""
            continue
        current += character
    items.append(current)
    return items


def _unquote(text: str) -> str:
    """A ``"..."`` value without its quotes, backslash escapes resolved; anything else as is."""
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return text
    return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.DOTALL)


def simple_lower(text: str) -> str:
    """Each character by its simple Unicode lowercase (glibc's ``towlower``, PostgreSQL's
    ``lower`` in a UTF-8 locale): U+0130 is a plain i, and no character becomes two."""
    return "".join(
        "i" if c == "\u0130" else (c.lower() if len(c.lower()) == 1 else c) for c in text
    )


def _like_pattern(text: str, *, ignore_case: bool) -> re.Pattern[str]:
    pattern = text.replace("*", "%")
    if ignore_case:
        pattern = simple_lower(pattern)
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        character = pattern[index]
        if character == "\\" and index + 1 < len(pattern):
            parts.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        if character == "%":
            parts.append(".*")
        elif character == "_":
            parts.append(".")
        else:
            parts.append(re.escape(character))
        index += 1
    return re.compile("".join(parts), re.DOTALL)


def _typed(spec: FieldSpec, text: str, zone: ZoneInfo) -> Any:
    kind = spec.type
    if kind is FieldType.UUID:
        return str(uuid.UUID(text))
    if kind is FieldType.INT:
        return int(text)
    if kind is FieldType.FLOAT:
        return float(text)
    if kind is FieldType.DECIMAL:
        return Decimal(text)
    if kind is FieldType.BOOL:
        return {"true": True, "false": False}[text]
    if kind is FieldType.TIMESTAMP:
        moment = dt.datetime.fromisoformat(text)
        # Compared as UTC instants: Python's equality across zones is unreliable for local
        # times that occur twice.
        return (moment if moment.tzinfo else pg_wall_clock(moment, zone)).astimezone(dt.UTC)
    if kind is FieldType.DATE:
        return dt.date.fromisoformat(text)
    return text


def pg_wall_clock(naive: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """A local time as PostgreSQL places it (``timestamp AT TIME ZONE``): a skipped one with the
    offset before the gap, a repeated one at its later occurrence."""
    first, second = (naive.replace(tzinfo=zone, fold=fold) for fold in (0, 1))
    if first.utcoffset() == second.utcoffset():
        return first
    round_trips = [
        moment
        for moment in (first, second)
        if moment.astimezone(dt.UTC).astimezone(zone).replace(tzinfo=None) == naive
    ]
    if round_trips:  # an overlap (both) or an odd zone (one): the later instant that exists
        return max(round_trips, key=lambda moment: moment.astimezone(dt.UTC))
    # a gap: Python's fold=0 reads a skipped time with the offset before it, as PostgreSQL does
    return first


def pg_date_trunc(unit: str, moment: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """PostgreSQL's ``date_trunc(unit, moment, zone)`` as a UTC instant: minutes and hours cut
    the local time and keep the instant's offset, longer units start at local midnight."""
    local = moment.astimezone(zone)
    if unit in ("minute", "hour"):
        cut = dt.timedelta(
            minutes=local.minute if unit == "hour" else 0,
            seconds=local.second,
            microseconds=local.microsecond,
        )
        return (moment - cut).astimezone(dt.UTC)
    day = _truncate_date(local.date(), unit)
    return pg_wall_clock(dt.datetime.combine(day, dt.time()), zone).astimezone(dt.UTC)


def _is_soft_deleted(value: Any) -> bool:
    # A bool column marks deletion with true, a timestamp column with any value.
    return value is True if isinstance(value, bool) else value is not None


# --- grouping, aggregation, rendering --------------------------------------------------------


def _bucket(value: Any, spec: FieldSpec, interval: str, zone: ZoneInfo) -> Any:
    """The bucket's start; for timestamps as a UTC instant, because Python deems two local times
    equal when they differ only in ``fold`` (the repeated hour when clocks go back)."""
    if value is None or not interval:
        return value
    if spec.type is FieldType.TIMESTAMP:
        return pg_date_trunc(interval, value, zone)
    if spec.type is FieldType.DATE:
        return _truncate_date(value, interval)
    return value


def _truncate_date(day: dt.date, interval: str) -> dt.date:
    if interval == "day":
        return day
    if interval == "week":
        return day - dt.timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    if interval == "quarter":
        return day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
    if interval == "year":
        return day.replace(month=1, day=1)
    raise ValueError(f"unknown interval {interval!r} (one of {_UNITS})")


def _aggregate(metric: MetricRequest, spec: FieldSpec | None, members: list[Row]) -> Any:
    if spec is None:
        return len(members)
    values = [row[spec.name] for row in members if row[spec.name] is not None]
    aggregate = metric.aggregate
    if aggregate == "count":
        return len(values)
    if aggregate == "count_distinct":
        return len(set(values))
    if aggregate == "sum":
        return _exact_sum(values, spec) if values else None
    if aggregate in ("min", "max"):
        if not values:
            return None
        return min(values) if aggregate == "min" else max(values)
    if not values:
        return None
    if aggregate == "avg":
        total = _exact_sum(values, spec)
        return float(total / len(values)) if spec.type is FieldType.DECIMAL else total / len(values)
    return _percentile(sorted(float(value) for value in values), int(aggregate[1:]) / 100)


def _exact_sum(values: list[Any], spec: FieldSpec) -> Any:
    if spec.type is FieldType.DECIMAL:
        return sum(values, Decimal(0))
    if spec.type is FieldType.FLOAT:
        return math.fsum(values)
    return sum(values)


def _percentile(ordered: list[float], level: float) -> float:
    position = level * (len(ordered) - 1)
    lower = math.floor(position)
    if lower + 1 >= len(ordered):
        return ordered[-1]
    return ordered[lower] + (position - lower) * (ordered[lower + 1] - ordered[lower])


def _render_key(value: Any, spec: FieldSpec, interval: str, zone_name: str) -> Any:
    if value is None:
        return None
    if spec.type is FieldType.TIMESTAMP and interval:
        if zone_name == "UTC":
            return value.strftime("%Y-%m-%dT%H:%M:%SZ")
        return value.astimezone(ZoneInfo(zone_name)).isoformat(timespec="seconds")
    return _render_value(value, spec, "")


def _render_value(value: Any, spec: FieldSpec | None, aggregate: str) -> Any:
    if value is None or spec is None or aggregate not in ("", "min", "max"):
        return value
    if spec.type is FieldType.TIMESTAMP:
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if spec.type is FieldType.DATE:
        return value.isoformat()
    return value


def _sortable(value: Any, spec: FieldSpec) -> Any:
    # UUIDs are held as their canonical text, which is how they order.
    return value


def _order_terms(text: str, keys: Sequence[str]) -> list[tuple[str, bool, bool]]:
    """(key, descending, nulls first) for the requested order, then the remaining group keys."""
    terms: list[tuple[str, bool, bool]] = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, *modifiers = part.split(".")
        descending = "desc" in modifiers
        nulls_first = "nullsfirst" in modifiers or (descending and "nullslast" not in modifiers)
        terms.append((name, descending, nulls_first))
    named = {name for name, _, _ in terms}
    terms += [(key, False, False) for key in keys if key not in named]
    return terms


def _sort_key(
    name: str, descending: bool, nulls_first: bool
) -> Callable[[tuple[dict[str, Any], dict[str, Any]]], tuple[Any, ...]]:
    # Sorting in reverse flips where NULLs land, so their rank depends on the direction too.
    nulls_high = descending == nulls_first

    def key(entry: tuple[dict[str, Any], dict[str, Any]]) -> tuple[Any, ...]:
        value = entry[0][name]
        if value is None:
            return (1,) if nulls_high else (0,)
        return (0, value) if nulls_high else (1, value)

    return key
