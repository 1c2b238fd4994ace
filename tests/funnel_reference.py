"""An independent evaluator of ordered funnels, from the definitions in service/insights/funnels.py.

``reference_funnel(request, rows, tenant, now, model)`` works in plain Python over the rows as
written (every version; the current ones picked as FINAL picks them) and shares nothing with the
compiler: each attempt is followed step by step over the actor's events, the candidates of a
step are every event satisfying the definition's four conditions, and the chosen one is their
minimum by (timestamp, event id text). Reused, because each has tests of its own: the date
bounds (``tests.trend_reference``'s range reading, on ``parse_date_bound``), the filter
evaluation and FINAL's choice of rows (``tests.trend_reference``).
"""

from __future__ import annotations

import datetime as dt
import statistics
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from service.catalog import Model
from service.insights.funnel_request import FunnelRequest
from tests.trend_reference import Row, _hashable, _predicate, _range, current_rows, field_value

DEFAULT_WINDOW = dt.timedelta(days=14)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


@dataclass(frozen=True)
class ReferenceStep:
    """One expected step."""

    label: str
    actors: int
    conversion_from_first: float
    conversion_from_previous: float
    drop_off: int
    median_seconds: float | None
    average_seconds: float | None


def window_of(text: str) -> dt.timedelta:
    if not text:
        return DEFAULT_WINDOW
    return dt.timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])


@dataclass(frozen=True)
class ReferenceBreakdown:
    """The expected steps of one breakdown value (``Other`` with ``is_other``)."""

    value: Any
    is_other: bool
    steps: list[ReferenceStep]


@dataclass(frozen=True)
class _Attempt:
    """One attempt: the events it used (by step for ordered funnels), its reach and gaps."""

    start: Row
    by_step: dict[int, Row]
    reached: int
    gaps: list[float]


def reference_funnel(
    request: FunnelRequest, rows: Iterable[Row], tenant: str, now: dt.datetime, model: Model
) -> list[ReferenceStep]:
    """The expected steps of a funnel without a breakdown."""
    assert not request.breakdown
    (only,) = reference_breakdowns(request, rows, tenant, now, model)
    return only.steps


def reference_breakdowns(
    request: FunnelRequest, rows: Iterable[Row], tenant: str, now: dt.datetime, model: Model
) -> list[ReferenceBreakdown]:
    """Each breakdown class's steps in the answer's order (one valued None without a breakdown)."""
    roles = model.events
    assert roles is not None
    zone_name = request.time_zone or "UTC"
    start, end = _range(request, now, zone_name, ZoneInfo(zone_name))  # type: ignore[arg-type]
    zone = ZoneInfo(zone_name)
    window = window_of(request.window)
    passes = _predicate(request.filters, model, zone)
    tests = [(step.event, _predicate(step.filters, model, zone)) for step in request.steps]
    exclusion_tests = [(x.event, _predicate(x.filters, model, zone)) for x in request.exclusions]
    count = len(request.steps)
    spans = [(x.from_step or 1, x.to_step or count) for x in request.exclusions]
    order = request.order or "ordered"
    attribution = request.breakdown_attribution or "first_touch"

    def test(kind: tuple[str, Any], row: Row) -> bool:
        event, predicate = kind
        return (not event or row[roles.event] == event) and bool(predicate(row))

    def key(row: Row) -> tuple[dt.datetime, str]:
        return (row[roles.timestamp], str(row[roles.event_id]))

    def value(row: Row | None) -> Any:
        return None if row is None else field_value(row, request.breakdown, model)

    groups: dict[Any, list[Row]] = {}
    for row in current_rows(rows, model):
        if (
            row[model.tenant_column] == tenant
            and row[roles.actor] is not None
            and start <= row[roles.timestamp] < end
            and passes(row)
        ):
            # With every value attributed, each (actor, value) is a funnel of its own.
            group = row[roles.actor]
            if request.breakdown and attribution == "all_events":
                group = (group, _hashable(value(row)))
            groups.setdefault(group, []).append(row)

    def ordered_attempt(first: Row, events: list[Row]) -> _Attempt:
        used = [first]
        limit = first[roles.timestamp] + window
        for k in range(1, count):
            previous = used[-1][roles.timestamp]
            candidates = [
                row
                for row in events
                if test(tests[k], row)
                and previous <= row[roles.timestamp] <= limit
                and all(row is not taken for taken in used)
                and (
                    order != "strict"
                    or not any(previous < x[roles.timestamp] < row[roles.timestamp] for x in events)
                )
            ]
            if not candidates:
                break
            used.append(min(candidates, key=key))
        reached = len(used)
        for index, (first_step, last_step) in enumerate(spans):
            if reached >= last_step and any(
                test(exclusion_tests[index], x)
                and used[first_step - 1][roles.timestamp]
                < x[roles.timestamp]
                < used[last_step - 1][roles.timestamp]
                for x in events
            ):
                reached = 0
        gaps = [
            (used[k][roles.timestamp] - used[k - 1][roles.timestamp]).total_seconds()
            for k in range(1, len(used))
        ]
        return _Attempt(first, dict(enumerate(used, 1)), reached, gaps)

    def unordered_attempt(first: Row, events: list[Row]) -> _Attempt:
        limit = first[roles.timestamp] + window
        own = min(k for k in range(count) if test(tests[k], first))
        filled = {own + 1: first}
        for k in range(count):
            if k == own:
                continue
            candidates = [
                row
                for row in events
                if test(tests[k], row)
                and first[roles.timestamp] <= row[roles.timestamp] <= limit
                and all(row is not taken for taken in filled.values())
            ]
            if candidates:
                filled[k + 1] = min(candidates, key=key)
        times = sorted(row[roles.timestamp] for row in filled.values())
        gaps = [(times[k] - times[k - 1]).total_seconds() for k in range(1, len(times))]
        return _Attempt(first, filled, len(filled), gaps)

    # Per group: its furthest step, the deciding attempt's gaps and breakdown value.
    actors: list[tuple[Any, int, list[float], Any, tuple[Any, ...]]] = []
    for group, events in groups.items():
        events.sort(key=key)
        attempts = []
        for first in events:
            if order == "unordered":
                if any(test(kind, first) for kind in tests):
                    attempts.append(unordered_attempt(first, events))
            elif test(tests[0], first):
                attempts.append(ordered_attempt(first, events))
        furthest = max((a.reached for a in attempts), default=0)
        if furthest == 0:
            continue
        deciding = min((a for a in attempts if a.reached == furthest), key=lambda a: key(a.start))
        if not request.breakdown:
            attributed: Any = None
        elif attribution in {"all_events", "first_touch"}:
            attributed = value(deciding.start)
        elif attribution == "last_touch":
            attributed = value(max(deciding.by_step.values(), key=key))
        else:
            attributed = value(deciding.by_step.get(request.breakdown_step))
        actor = group[0] if isinstance(group, tuple) else group
        decision = (-furthest, *key(deciding.start))
        actors.append((actor, furthest, deciding.gaps, attributed, decision))

    if not request.breakdown:
        return [ReferenceBreakdown(None, False, _steps(request, actors))]
    sizes: dict[Any, int] = {}
    shown: dict[Any, Any] = {}
    for _, _, _, attributed, _ in actors:
        sizes[_hashable(attributed)] = sizes.get(_hashable(attributed), 0) + 1
        shown.setdefault(_hashable(attributed), attributed)

    def rank(item: Any) -> tuple[Any, ...]:
        shown_value = shown[item]
        tie = str(shown_value) if isinstance(shown_value, uuid.UUID) else shown_value
        return (-sizes[item], shown_value is None, "" if shown_value is None else tie)

    ranked = sorted(sizes, key=rank)
    top = ranked[: request.breakdown_limit or 25]
    answer = [
        ReferenceBreakdown(
            shown[item],
            False,
            _steps(request, [a for a in actors if _hashable(a[3]) == item]),
        )
        for item in top
    ]
    rest = [a for a in actors if _hashable(a[3]) not in top]
    if rest:
        # An actor of several values outside the top counts once, as its best attempt there.
        best: dict[Any, tuple[Any, int, list[float], Any, tuple[Any, ...]]] = {}
        for item in rest:
            held = best.get(item[0])
            if held is None or item[4] < held[4]:
                best[item[0]] = item
        answer.append(ReferenceBreakdown("Other", True, _steps(request, list(best.values()))))
    return answer


def _steps(
    request: FunnelRequest, actors: list[tuple[Any, int, list[float], Any, tuple[Any, ...]]]
) -> list[ReferenceStep]:
    count = len(request.steps)
    reached = [0] * count
    deltas: list[list[float]] = [[] for _ in range(count)]
    for _, furthest, gaps, _, _ in actors:
        for k in range(furthest):
            reached[k] += 1
            if k:
                deltas[k].append(gaps[k - 1])
    steps: list[ReferenceStep] = []
    for k, step in enumerate(request.steps):
        label = step.label or step.event or f"step {k + 1}"
        starters = reached[0]
        previous = reached[k - 1] if k else reached[k]
        steps.append(
            ReferenceStep(
                label=label,
                actors=reached[k],
                conversion_from_first=reached[k] / starters if starters else 0.0,
                conversion_from_previous=reached[k] / previous if previous else 0.0,
                drop_off=reached[k] - reached[k + 1] if k + 1 < count else 0,
                median_seconds=statistics.median(deltas[k]) if deltas[k] else None,
                average_seconds=statistics.fmean(deltas[k]) if deltas[k] else None,
            )
        )
    return steps
