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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from service.catalog import Catalog, Model
from service.insights.funnel_request import FunnelRequest
from tests.trend_reference import (
    Row,
    _hashable,
    _mentioned,
    _predicate,
    _range,
    current_rows,
    field_value,
)

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
    furthest: dict[Any, int] = field(default_factory=dict)
    """Each counted actor's furthest step (without a breakdown)."""


@dataclass(frozen=True)
class _Attempt:
    """One attempt: the events it used (by step for ordered funnels), its reach and gaps."""

    start: Row
    by_step: dict[int, Row]
    reached: int
    gaps: list[float]


def reference_actors(
    request: FunnelRequest, rows: Iterable[Row], tenant: str, now: dt.datetime, model: Model
) -> dict[Any, int]:
    """Each actor the funnel counts, with its furthest step."""
    (only,) = reference_breakdowns(request, rows, tenant, now, model)
    return only.furthest


def reference_funnel(
    request: FunnelRequest, rows: Iterable[Row], tenant: str, now: dt.datetime, model: Model
) -> list[ReferenceStep]:
    """The expected steps of a funnel without a breakdown."""
    assert not request.breakdown
    (only,) = reference_breakdowns(request, rows, tenant, now, model)
    return only.steps


def reference_breakdowns(
    request: FunnelRequest,
    rows: Iterable[Row],
    tenant: str,
    now: dt.datetime,
    model: Model,
    catalog: Catalog | None = None,
    tables: Mapping[str, Iterable[Row]] | None = None,
) -> list[ReferenceBreakdown]:
    """Each breakdown class's steps in the answer's order (one valued None without a breakdown).

    ``rows``: the request model's rows; ``tables``: other models' rows by qualified name, for
    steps on other models (resolved in ``catalog``).
    """
    zone_name = request.time_zone or "UTC"
    start, end = _range(request, now, zone_name, ZoneInfo(zone_name))  # type: ignore[arg-type]
    zone = ZoneInfo(zone_name)
    window = window_of(request.window)
    everything = {**(tables or {}), model.qualified_name: rows}
    count = len(request.steps)
    spans = [(x.from_step or 1, x.to_step or count) for x in request.exclusions]
    order = request.order or "ordered"
    attribution = request.breakdown_attribution or "first_touch"

    def origin(name: str, date_field: str, actor: str) -> tuple[Model, str, str]:
        found = model if not name else (catalog.find(name) if catalog else [])[0]
        roles = found.events
        date = date_field or (roles.timestamp if roles else "")
        if actor in found.relations:
            return found, date, found.relations[actor].field
        return found, date, actor or (roles.actor if roles else found.primary_key[0])

    origins = [origin(s.model, s.date_field, s.actor) for s in request.steps]
    exclusion_origins = [origin(x.model, x.date_field, x.actor) for x in request.exclusions]
    tests = [
        (origins[k], s.event, _predicate(s.filters, origins[k][0], zone))
        for k, s in enumerate(request.steps)
    ]
    exclusion_tests = [
        (exclusion_origins[k], x.event, _predicate(x.filters, exclusion_origins[k][0], zone))
        for k, x in enumerate(request.exclusions)
    ]
    sources: dict[tuple[str, str, str], list[Mapping[str, str]]] = {}
    for (found, date, actor), filters in (
        *zip(origins, (s.filters for s in request.steps), strict=True),
        *zip(exclusion_origins, (x.filters for x in request.exclusions), strict=True),
    ):
        sources.setdefault((found.qualified_name, date, actor), []).append(filters)

    def test(kind: tuple[tuple[Model, str, str], str, Any], event: Row) -> bool:
        (found, date, actor), name, predicate = kind
        row = event["_row"]
        return (
            event["_source"] == (found.qualified_name, date, actor)
            and (not name or (found.events is not None and row[found.events.event] == name))
            and bool(predicate(row))
        )

    def key(event: Row) -> tuple[dt.datetime, str]:
        return (event["_ts"], event["_id"])

    def value(event: Row | None) -> Any:
        if event is None or event["_model"] != model.qualified_name:
            return None
        return field_value(event["_row"], request.breakdown, model)

    groups: dict[Any, list[Row]] = {}
    for (name, date, actor), filter_maps in sources.items():
        found = (
            model if name == model.qualified_name else (catalog.find(name) if catalog else [])[0]
        )
        on_request_model = name == model.qualified_name
        named = set().union(*(_mentioned(f) for f in filter_maps))
        if on_request_model:
            named |= _mentioned(request.filters)
        soft = found.soft_delete_column
        passes = _predicate(request.filters if on_request_model else {}, found, zone)
        roles = found.events
        for row in current_rows(everything.get(name, ()), found):
            if (
                row[found.tenant_column] != tenant
                or row[actor] is None
                or row[date] is None
                or not start <= row[date] < end
                or (soft is not None and soft not in named and row[soft] is not None)
                or not passes(row)
            ):
                continue
            if roles is not None and date == roles.timestamp:
                event_id = str(row[roles.event_id])
            else:
                event_id = f"{name}.{date}/{row[found.primary_key[0]]}"
            event = {
                "_actor": row[actor],
                "_ts": row[date],
                "_id": event_id,
                "_source": (name, date, actor),
                "_model": name,
                "_row": row,
            }
            # With every value attributed, each (actor, value) is a funnel of its own.
            group: Any = row[actor]
            if request.breakdown and attribution == "all_events":
                group = (group, _hashable(value(event)))
            groups.setdefault(group, []).append(event)

    def ordered_attempt(first: Row, events: list[Row]) -> _Attempt:
        used = [first]
        limit = first["_ts"] + window
        for k in range(1, count):
            previous = used[-1]["_ts"]
            candidates = [
                row
                for row in events
                if test(tests[k], row)
                and previous <= row["_ts"] <= limit
                and all(row is not taken for taken in used)
                and (order != "strict" or not any(previous < x["_ts"] < row["_ts"] for x in events))
            ]
            if not candidates:
                break
            used.append(min(candidates, key=key))
        reached = len(used)
        for index, (first_step, last_step) in enumerate(spans):
            if reached >= last_step and any(
                test(exclusion_tests[index], x)
                and used[first_step - 1]["_ts"] < x["_ts"] < used[last_step - 1]["_ts"]
                for x in events
            ):
                reached = 0
        gaps = [(used[k]["_ts"] - used[k - 1]["_ts"]).total_seconds() for k in range(1, len(used))]
        return _Attempt(first, dict(enumerate(used, 1)), reached, gaps)

    def unordered_attempt(first: Row, events: list[Row]) -> _Attempt:
        limit = first["_ts"] + window
        own = min(k for k in range(count) if test(tests[k], first))
        filled = {own + 1: first}
        for k in range(count):
            if k == own:
                continue
            candidates = [
                row
                for row in events
                if test(tests[k], row)
                and first["_ts"] <= row["_ts"] <= limit
                and all(row is not taken for taken in filled.values())
            ]
            if candidates:
                filled[k + 1] = min(candidates, key=key)
        times = sorted(row["_ts"] for row in filled.values())
        gaps = [(times[k] - times[k - 1]).total_seconds() for k in range(1, len(times))]
        return _Attempt(first, filled, len(filled), gaps)

    # Per group: its furthest step, the deciding attempt's gaps and breakdown value.
    actors: list[tuple[Any, int, list[float], Any, tuple[Any, ...]]] = []
    for events in groups.values():
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
        actor = events[0]["_actor"]
        decision = (-furthest, *key(deciding.start))
        actors.append((actor, furthest, deciding.gaps, attributed, decision))

    if not request.breakdown:
        reach = {actor: reached for actor, reached, _, _, _ in actors}
        return [ReferenceBreakdown(None, False, _steps(request, actors), reach)]
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
