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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from service.catalog import Model
from service.insights.funnel_request import FunnelRequest
from tests.trend_reference import Row, _predicate, _range, current_rows

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


def reference_funnel(
    request: FunnelRequest, rows: Iterable[Row], tenant: str, now: dt.datetime, model: Model
) -> list[ReferenceStep]:
    roles = model.events
    assert roles is not None
    zone_name = request.time_zone or "UTC"
    start, end = _range(request, now, zone_name, ZoneInfo(zone_name))  # type: ignore[arg-type]
    zone = ZoneInfo(zone_name)
    window = window_of(request.window)
    passes = _predicate(request.filters, model, zone)
    step_tests = []
    for step in request.steps:
        test = _predicate(step.filters, model, zone)
        step_tests.append((step.event, test))

    def matches(row: Row, k: int) -> bool:
        event, test = step_tests[k]
        return (not event or row[roles.event] == event) and test(row)

    by_actor: dict[Any, list[Row]] = {}
    for row in current_rows(rows, model):
        if (
            row[model.tenant_column] == tenant
            and row[roles.actor] is not None
            and start <= row[roles.timestamp] < end
            and passes(row)
        ):
            by_actor.setdefault(row[roles.actor], []).append(row)

    count = len(request.steps)
    reached = [0] * count
    deltas: list[list[float]] = [[] for _ in range(count)]
    for events in by_actor.values():

        def order(row: Row) -> tuple[dt.datetime, str]:
            return (row[roles.timestamp], str(row[roles.event_id]))

        events.sort(key=order)
        best: tuple[int, list[dt.timedelta]] | None = None
        for first in events:
            if not matches(first, 0):
                continue
            used = [first]
            limit = first[roles.timestamp] + window
            for k in range(1, count):
                previous = used[-1][roles.timestamp]
                candidates = [
                    row
                    for row in events
                    if matches(row, k)
                    and previous <= row[roles.timestamp] <= limit
                    and all(row is not taken for taken in used)
                ]
                if not candidates:
                    break
                used.append(min(candidates, key=order))
            gaps = [
                used[k][roles.timestamp] - used[k - 1][roles.timestamp] for k in range(1, len(used))
            ]
            # The deciding attempt: the earliest reaching the furthest step (attempts are in order).
            if best is None or len(used) > best[0]:
                best = (len(used), gaps)
        if best is None:
            continue
        furthest, gaps = best
        for k in range(furthest):
            reached[k] += 1
            if k:
                deltas[k].append(gaps[k - 1].total_seconds())

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
