"""assemble_trend: the rows of a trend plan's queries -> zero-filled lines (pure, no I/O).

Each line is one series (or the formula) for one breakdown class in one period, with a value for
every bucket. Buckets without rows read 0 for counts, unique counts and sums, and null for
averages, minimums, maximums and percentiles (there is no value to show). Breakdown classes come
in rank order, ``Other`` last; a class seen in only one period is zero-filled in the other.

``cumulative``: a bucket's value covers the range's start to the bucket's end (running sums;
running minimum and maximum; the average of every row so far; unique actors counted once from
their first bucket on). ``rolling`` with window N: the bucket and the N-1 before it, never
reaching before ``dateFrom``. The formula is evaluated bucket by bucket on the displayed values
of its series, per breakdown class and period; a bucket where an operand is null or a divisor is
zero has no value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from service.insights.formula import evaluate_series
from service.insights.trends import SeriesPlan, TrendPlan

_ZERO_FILLED = ("count", "unique_actors", "count_distinct", "sum")
OTHER = "Other"


@dataclass(frozen=True)
class TrendLine:
    """One line of the answer."""

    series: str
    """The series letter (``A``...), or ``formula``."""
    label: str
    breakdown_value: Any
    is_other: bool
    compare: bool
    values: list[Any]
    output_type: str


@dataclass(frozen=True)
class TrendAnswer:
    """Bucket labels of both periods, and every line."""

    buckets: list[str]
    compare_buckets: list[str]
    lines: list[TrendLine]


@dataclass(frozen=True)
class _Class:
    rank: int
    value: Any

    @property
    def order(self) -> tuple[int, int]:
        return (1, 0) if self.rank == 0 else (0, self.rank)


_Values = dict[_Class, dict[str, list[Any]]]


def assemble_trend(plan: TrendPlan, tables: Sequence[pa.Table]) -> TrendAnswer:
    """The answer from ``tables``, one per query of ``plan.queries`` in the same order."""
    periods: dict[str, _Values] = {}
    for query, whole in zip(plan.queries, tables, strict=True):
        keys = {column.alias: column.key for column in query.compiled.columns}
        named = whole.rename_columns([keys[n] for n in whole.column_names])
        for period, table in _periods(query.period, named):
            size = len(plan.buckets if period == "current" else plan.compare_buckets)
            _collect(periods.setdefault(period, {}), table, size, query.kind)
    classes = sorted({c for values in periods.values() for c in values}, key=lambda c: c.order)
    if plan.breakdown is None and not classes:
        classes = [_Class(1, None)]
    lines: list[TrendLine] = []
    for period in ("current", "compare"):
        if period not in periods:
            continue
        size = len(plan.buckets if period == "current" else plan.compare_buckets)
        for item in classes:
            found = periods[period].get(item, {})
            displayed = [
                _display(plan, index, s, found, size) for index, s in enumerate(plan.series)
            ]
            lines.extend(
                TrendLine(
                    s.letter,
                    s.label,
                    OTHER if item.rank == 0 else item.value,
                    item.rank == 0,
                    period == "compare",
                    values,
                    s.output_type,
                )
                for s, values in zip(plan.series, displayed, strict=True)
            )
            if plan.formula is not None:
                operands = [[_decimal(v) for v in values] for values in displayed]
                results = evaluate_series(plan.formula, operands)
                lines.append(
                    TrendLine(
                        "formula",
                        plan.formula.render(),
                        OTHER if item.rank == 0 else item.value,
                        item.rank == 0,
                        period == "compare",
                        [None if r is None else float(r) for r in results],
                        "float",
                    )
                )
    return TrendAnswer(
        [b.label() for b in plan.buckets], [b.label() for b in plan.compare_buckets], lines
    )


def _periods(period: str, table: pa.Table) -> list[tuple[str, pa.Table]]:
    """The rows of each period: a query over both periods tags each row with ``period``."""
    if period != "both":
        return [(period, table)]
    tags = table.column("period")
    rest = table.drop_columns(["period"])
    return [
        (name, rest.filter(pc.equal(tags, tag))) for tag, name in ((0, "current"), (1, "compare"))
    ]


def _collect(target: _Values, table: pa.Table, size: int, kind: str) -> None:
    """Rows of one query into ``target[class][column][bucket]``; ``kind`` tags unique columns."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    metric_names = [n for n in columns if n not in ("bucket", "rank", "value")]
    for row in range(table.num_rows):
        bucket = columns["bucket"][row]
        if not 1 <= bucket <= size:
            continue
        rank = columns["rank"][row] if "rank" in columns else 1
        value = columns["value"][row] if "value" in columns and rank else None
        cells = target.setdefault(_Class(rank, value), {})
        for name in metric_names:
            key = f"{name}:{kind}" if kind == "distinct" else name
            cells.setdefault(key, [None] * size)[bucket - 1] = columns[name][row]


def _display(
    plan: TrendPlan, index: int, series: SeriesPlan, found: Mapping[str, list[Any]], size: int
) -> list[Any]:
    """The values shown for one series of one class and period."""
    empty: list[Any] = [None] * size
    if plan.display and series.distinct:
        counts = _filled(found.get(f"m{index}:distinct", empty), 0)
        return _running(counts, _add) if plan.display == "cumulative" else counts
    zero: Any = 0 if series.output_type == "int" else Decimal(0)
    if series.output_type == "float":
        zero = 0.0
    base = found.get(f"m{index}", empty)
    values = _filled(base, zero) if series.aggregate in _ZERO_FILLED else list(base)
    if not plan.display:
        return values
    if series.aggregate == "avg":
        sums = _filled(found.get(f"s{index}", empty), 0)
        counts = _filled(found.get(f"n{index}", empty), 0)
        return _averages(sums, counts, plan.display, plan.window)
    combine = {"min": _least, "max": _greatest}.get(series.aggregate, _add)
    if plan.display == "cumulative":
        return _running(values, combine)
    return _windowed(values, combine, plan.window)


def _filled(values: Sequence[Any], zero: Any) -> list[Any]:
    return [zero if v is None else v for v in values]


def _add(left: Any, right: Any) -> Any:
    if left is None:
        return right
    if right is None:
        return left
    return left + right


def _least(left: Any, right: Any) -> Any:
    if left is None or right is None:
        return right if left is None else left
    return min(left, right)


def _greatest(left: Any, right: Any) -> Any:
    if left is None or right is None:
        return right if left is None else left
    return max(left, right)


def _running(values: Sequence[Any], combine: Callable[[Any, Any], Any]) -> list[Any]:
    result: list[Any] = []
    total: Any = None
    for value in values:
        total = combine(total, value)
        result.append(total)
    return result


def _windowed(values: Sequence[Any], combine: Callable[[Any, Any], Any], window: int) -> list[Any]:
    result: list[Any] = []
    for end in range(len(values)):
        total: Any = None
        for value in values[max(0, end - window + 1) : end + 1]:
            total = combine(total, value)
        result.append(total)
    return result


def _averages(sums: Sequence[Any], counts: Sequence[int], display: str, window: int) -> list[Any]:
    if display == "cumulative":
        totals, numbers = _running(sums, _add), _running(counts, _add)
    else:
        totals, numbers = _windowed(sums, _add, window), _windowed(counts, _add, window)
    averages: list[Any] = []
    for total, number in zip(totals, numbers, strict=True):
        exact = _decimal(total)
        averages.append(float(exact / number) if number and exact is not None else None)
    return averages


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value)) if value == value else None  # noqa: PLR0124 (NaN check)
    return Decimal(value)
