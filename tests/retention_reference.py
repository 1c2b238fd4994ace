"""An independent evaluator of retention, from the definitions in service/insights/retention.py.

``reference_retention(request, rows, tenant, now, model)`` works in plain Python over the rows as
written (every version; the current ones picked as FINAL picks them) and shares nothing with the
compiler: periods are walked back one instant at a time (the period of the instant just before a
period's start), each actor's cohorts and returning periods are sets, and every count is the size
of a set. Reused, because each has tests of its own: the date bounds (``parse_date_bound``), the
bucket of an instant and its label, the filter evaluation and FINAL's choice of rows
(``tests.trend_reference``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from service.catalog import Model
from service.insights.date_range import parse_date_bound
from service.insights.retention_request import RetentionEvent, RetentionRequest
from tests.reference import pg_wall_clock
from tests.trend_reference import (
    Row,
    _bucket_key,
    _bucket_keys,
    _is_date,
    _label,
    _predicate,
    current_rows,
    field_value,
)

DEFAULT_INTERVALS = 8
DEFAULT_LIMIT = 25
OTHER = "Other"
MICROSECOND = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class ReferenceCohort:
    """One expected row of a cohort table."""

    start: str
    size: int
    counts: tuple[int | None, ...]
    percentages: tuple[float | None, ...]


@dataclass(frozen=True)
class ReferenceTable:
    """One expected table (per breakdown value)."""

    breakdown_value: Any
    is_other: bool
    cohorts: tuple[ReferenceCohort, ...]


def period_start(key: Any, zone: ZoneInfo) -> dt.datetime:
    """The first instant of the period whose key is ``key`` (UTC)."""
    if isinstance(key, dt.datetime):
        return key
    return pg_wall_clock(dt.datetime.combine(key, dt.time()), zone).astimezone(dt.UTC)


def range_end(date_to: str, now: dt.datetime, zone_name: str) -> dt.datetime:
    """The exclusive end of the range: now, the day after a date-only dateTo, or the instant."""
    if not date_to:
        return now.astimezone(dt.UTC)
    if _is_date(date_to):
        following = dt.date.fromisoformat(date_to) + dt.timedelta(days=1)
        return pg_wall_clock(dt.datetime.combine(following, dt.time()), ZoneInfo(zone_name))
    return parse_date_bound(date_to, "dateTo", now, zone_name)


def matcher(definition: RetentionEvent, model: Model, zone: ZoneInfo) -> Callable[[Row], bool]:
    """Whether a row is an event of ``definition``."""
    roles = model.events
    assert roles is not None
    passes = _predicate(definition.filters, model, zone)
    return lambda row: (
        (not definition.event or row[roles.event] == definition.event) and passes(row)
    )


def reference_retention(
    request: RetentionRequest, rows: Iterable[Row], tenant: str, now: dt.datetime, model: Model
) -> list[ReferenceTable]:
    roles = model.events
    assert roles is not None
    zone_name = request.time_zone or "UTC"
    zone = ZoneInfo(zone_name)
    period = request.period or "day"
    sunday = request.week_start == "sunday"
    intervals = request.intervals or DEFAULT_INTERVALS

    def key_of(moment: dt.datetime) -> Any:
        return _bucket_key(moment, period, zone, sunday)

    end = range_end(request.date_to, now, zone_name)
    if request.date_from:
        start = parse_date_bound(request.date_from, "dateFrom", now, zone_name)
        keys = _bucket_keys(start, end, period, zone, sunday, "dateFrom")
    else:
        keys = [key_of(end - MICROSECOND)]
        while len(keys) < intervals:
            keys.insert(0, key_of(period_start(keys[0], zone) - MICROSECOND))
    position = {key: index for index, key in enumerate(keys)}

    passes = _predicate(request.filters, model, zone)
    is_target = matcher(request.target, model, zone)
    returning = request.returning
    if not returning.event and not returning.filters:
        returning = request.target
    is_returning = matcher(returning, model, zone)
    by_actor: dict[Any, list[Row]] = {}
    for row in current_rows(rows, model):
        if row[model.tenant_column] == tenant and row[roles.actor] is not None and passes(row):
            by_actor.setdefault(row[roles.actor], []).append(row)

    def order(row: Row) -> tuple[dt.datetime, str]:
        return (row[roles.timestamp], str(row[roles.event_id]))

    # (cohort position, breakdown value) -> actors; (cohort, value, interval) -> actors.
    members: dict[tuple[int, Any], set[Any]] = {}
    returned: dict[tuple[int, Any, int], set[Any]] = {}
    for actor, events in by_actor.items():
        targets = sorted((row for row in events if is_target(row)), key=order)
        if not targets:
            continue
        if request.retention_type == "recurring":
            firsts: dict[int, Row] = {}
            for row in targets:
                index = position.get(key_of(row[roles.timestamp]))
                if index is not None:
                    firsts.setdefault(index, row)
        else:
            index = position.get(key_of(targets[0][roles.timestamp]))
            firsts = {} if index is None else {index: targets[0]}
        back = {
            position[key]
            for row in events
            if is_returning(row) and (key := key_of(row[roles.timestamp])) in position
        }
        for cohort, first in firsts.items():
            value = field_value(first, request.breakdown, model) if request.breakdown else None
            members.setdefault((cohort, value), set()).add(actor)
            for later in back:
                if 0 < later - cohort < intervals:
                    returned.setdefault((cohort, value, later - cohort), set()).add(actor)

    values = {value for _, value in members}
    totals = {
        value: sum(len(actors) for (_, v), actors in members.items() if v == value)
        for value in values
    }
    ranked = sorted(values, key=lambda v: (-totals[v], v is None, "" if v is None else v))
    limit = request.breakdown_limit or DEFAULT_LIMIT
    classes: list[tuple[Any, bool, list[Any]]] = [(v, False, [v]) for v in ranked[:limit]]
    if ranked[limit:]:
        classes.append((OTHER, True, ranked[limit:]))
    if not request.breakdown:
        classes = [(None, False, [None])]

    def count(cohort: int, members_of: list[Any], interval: int) -> int:
        if interval == 0:
            return sum(len(members.get((cohort, v), ())) for v in members_of)
        return sum(len(returned.get((cohort, v, interval), ())) for v in members_of)

    tables = []
    for shown, is_other, members_of in classes:
        cohorts = []
        for cohort, key in enumerate(keys):
            size = count(cohort, members_of, 0)
            counts: list[int | None] = []
            for interval in range(intervals):
                later = cohort + interval
                if later >= len(keys) or (
                    interval and period_start(keys[later], zone) > now.astimezone(dt.UTC)
                ):
                    counts.append(None)
                else:
                    counts.append(count(cohort, members_of, interval))
            percentages = tuple(
                None if c is None else (100.0 * c / size if size else 0.0) for c in counts
            )
            cohorts.append(
                ReferenceCohort(_label(key, zone, zone_name), size, tuple(counts), percentages)
            )
        tables.append(ReferenceTable(shown, is_other, tuple(cohorts)))
    return tables
