"""The insight benchmarks' ground truth, from the generated events alone (numpy, no engine).

Written from the definitions in ``service.insights.funnels``, ``retention`` and ``lifecycle``
for the shapes the benchmark asks and the data ``bench.journeys`` makes: every actor has one
``signed_up`` (checked), its journey steps in order, and no two events of an actor at the same
microsecond (checked), so rows need no tie-break by id.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from bench import journeys

StepFigures = tuple[int, float | None, float | None]
"""Per step: actors, median and average seconds from the previous step (None at step 1)."""

_MICROS = 1_000_000
_KEY_BITS = 44
_KEY_ROOM = 15 * 86_400 * _MICROS
"""A key plus a window up to this long stays within the actor's keys (1 M actors, 26 weeks)."""


@dataclass(frozen=True)
class Events:
    """One tenant's events restricted to a range, with per-actor indexing."""

    actor: np.ndarray
    moment: np.ndarray
    kind: np.ndarray
    actors: int


def in_range(events: journeys.Journeys, start: int, end: int) -> Events:
    """The events with ``start <= moment < end``; actors are numbered 1..max."""
    kept = (events.moment >= start) & (events.moment < end)
    return Events(
        events.actor[kept], events.moment[kept], events.kind[kept], int(events.actor.max())
    )


def _figures(furthest: np.ndarray, deltas: list[np.ndarray], steps: int) -> list[StepFigures]:
    out: list[StepFigures] = [(int((furthest >= 1).sum()), None, None)]
    for k in range(2, steps + 1):
        reached = furthest >= k
        values = deltas[k - 2][reached]
        if not len(values):
            out.append((0, None, None))
            continue
        out.append(
            (
                int(reached.sum()),
                float(np.median(values.astype(np.float64))) / _MICROS,
                int(values.sum()) / len(values) / _MICROS,
            )
        )
    return out


def _first_step(events: Events, kinds: tuple[int, ...]) -> np.ndarray:
    """Per actor, the time of its step-1 event (-1 if none); checks there is at most one."""
    first = events.kind == kinds[0]
    counts = np.bincount(events.actor[first], minlength=events.actors + 1)
    if counts.max(initial=0) > 1:
        raise AssertionError("the truth assumes at most one step-1 event per actor")
    start = np.full(events.actors + 1, -1, np.int64)
    start[events.actor[first]] = events.moment[first]
    return start


def ordered(
    events: Events, kinds: tuple[int, ...], window: int, exclusion: tuple[int, int, int] | None
) -> list[StepFigures]:
    """An ordered funnel (one attempt per actor: one step-1 event each).

    ``exclusion``: (kind, from step, to step) voiding an attempt with such an event strictly
    between its rows of those steps.
    """
    start = _first_step(events, kinds)
    times = [start]
    limit = np.where(start >= 0, start + window, -1)
    for kind in kinds[1:]:
        previous = times[-1]
        rows = np.flatnonzero(events.kind == kind)
        actor = events.actor[rows]
        moment = events.moment[rows]
        fits = (previous[actor] >= 0) & (moment >= previous[actor]) & (moment <= limit[actor])
        found = np.full(events.actors + 1, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(found, actor[fits], moment[fits])
        times.append(np.where(found == np.iinfo(np.int64).max, -1, found))
    furthest: np.ndarray = np.sum([(t >= 0).astype(np.int64) for t in times], axis=0)
    if exclusion is not None:
        kind, first, last = exclusion
        keys = _keys(events, events.kind == kind)
        actor = np.arange(events.actors + 1)
        reached = times[last - 1] >= 0
        low = _key(actor, times[first - 1], events) + 1
        high = _key(actor, times[last - 1], events)
        between = np.searchsorted(keys, high, "left") - np.searchsorted(keys, low, "left")
        furthest = np.where(reached & (between > 0), 0, furthest)
    deltas = [np.where(times[k] >= 0, times[k] - times[k - 1], 0) for k in range(1, len(kinds))]
    return _figures(furthest[1:], [d[1:] for d in deltas], len(kinds))


def strict(events: Events, kinds: tuple[int, ...], window: int) -> list[StepFigures]:
    """A strict funnel: each step the actor's very next event (no two at one instant)."""
    order = np.lexsort((events.moment, events.actor))
    actor, moment, kind = events.actor[order], events.moment[order], events.kind[order]
    same = np.flatnonzero((actor[1:] == actor[:-1]) & (moment[1:] == moment[:-1]))
    if len(same):
        raise AssertionError("the truth assumes no two events of an actor at one instant")
    starts = np.flatnonzero(kind == kinds[0])
    furthest = np.zeros(events.actors + 1, np.int64)
    deltas = [np.zeros(events.actors + 1, np.int64) for _ in kinds[1:]]
    furthest[actor[starts]] = 1
    alive = starts
    for k, step_kind in enumerate(kinds[1:], start=1):
        following = alive + k
        inside = following < len(actor)
        alive, following = alive[inside], following[inside]
        fits = (
            (actor[following] == actor[alive])
            & (kind[following] == step_kind)
            & (moment[following] <= moment[alive] + window)
        )
        alive, following = alive[fits], following[fits]
        furthest[actor[alive]] = k + 1
        deltas[k - 1][actor[alive]] = moment[following] - moment[following - 1]
    return _figures(furthest[1:], [d[1:] for d in deltas], len(kinds))


def unordered(events: Events, kinds: tuple[int, ...], window: int) -> list[StepFigures]:
    """An unordered funnel: every step event starts an attempt (one event per kind fills)."""
    if window > _KEY_ROOM:
        raise AssertionError("the truth's keys hold windows up to 15 days")
    per_kind = [_keys(events, events.kind == kind) for kind in kinds]
    rows = np.flatnonzero(np.isin(events.kind, kinds))
    actor, moment = events.actor[rows], events.moment[rows]
    start_keys = _key(actor, moment, events)
    filled = []
    for keys in per_kind:
        at = np.searchsorted(keys, start_keys, "left")
        found = np.where(at < len(keys), keys[np.minimum(at, len(keys) - 1)], 0)
        hit = (at < len(keys)) & (found <= start_keys + np.uint64(window))
        filled.append(np.where(hit, (found & np.uint64((1 << _KEY_BITS) - 1)).astype(np.int64), -1))
    reach: np.ndarray = np.sum([(f >= 0).astype(np.int64) for f in filled], axis=0)
    # The deciding attempt: the earliest start of the actor reaching its furthest step.
    order = np.lexsort((moment, -reach, actor))
    first = order[np.r_[True, actor[order][1:] != actor[order][:-1]]]
    furthest = np.zeros(events.actors + 1, np.int64)
    furthest[actor[first]] = reach[first]
    chosen = np.sort(np.stack([f[first] for f in filled], axis=1), axis=1)
    deltas = [np.zeros(events.actors + 1, np.int64) for _ in kinds[1:]]
    steps = len(kinds)
    for k in range(2, steps + 1):
        # Filled times sorted with the unfilled (-1) first: the k-th filled is at steps - r + k.
        count = reach[first]
        low = steps - count + k - 2
        high = steps - count + k - 1
        valid = count >= k
        rows_ok = np.flatnonzero(valid)
        deltas[k - 2][actor[first][rows_ok]] = (
            chosen[rows_ok, high[rows_ok]] - chosen[rows_ok, low[rows_ok]]
        )
    return _figures(furthest[1:], [d[1:] for d in deltas], steps)


def _keys(events: Events, chosen: np.ndarray) -> np.ndarray:
    return np.sort(_key(events.actor[chosen], events.moment[chosen], events))


def _key(actor: np.ndarray, moment: np.ndarray, events: Events) -> np.ndarray:
    """(actor, time) as one sortable unsigned key: the actor above ``_KEY_BITS`` bits."""
    base = int(events.moment.min()) if len(events.moment) else 0
    relative = np.maximum(moment - base, 0).astype(np.uint64)
    if int(relative.max(initial=0)) + _KEY_ROOM >= 1 << _KEY_BITS:
        raise AssertionError("the data spans too long for the truth's keys")
    keys: np.ndarray = (actor.astype(np.uint64) << np.uint64(_KEY_BITS)) | relative
    return keys


def week_index(moment: np.ndarray, first_monday: dt.date) -> np.ndarray:
    """Whole UTC Monday weeks since ``first_monday`` (negative before it)."""
    day = moment // (86_400 * _MICROS)
    epoch_day = (first_monday - dt.date(1970, 1, 1)).days
    weeks: np.ndarray = (day - epoch_day) // 7
    return weeks


def retention(
    events: journeys.Journeys,
    *,
    target: int,
    returning: int,
    first_cohort: dt.date,
    cohorts: int,
    intervals: int,
    end: int,
) -> list[tuple[int, list[int | None]]]:
    """first_time weekly retention: per cohort its size and counts (None: not observable)."""
    before = events.moment < end
    targets = before & (events.kind == target)
    actor = events.actor[targets]
    first = np.full(int(events.actor.max()) + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, actor, events.moment[targets])
    cohort = np.where(
        first == np.iinfo(np.int64).max, -1, week_index(np.maximum(first, 0), first_cohort)
    )
    back = before & (events.kind == returning)
    pairs = np.unique(
        np.stack([events.actor[back], week_index(events.moment[back], first_cohort)], axis=1),
        axis=0,
    )
    offset = pairs[:, 1] - cohort[pairs[:, 0]]
    in_cohort = (cohort[pairs[:, 0]] >= 0) & (cohort[pairs[:, 0]] < cohorts)
    table = []
    sizes = np.bincount(cohort[cohort >= 0], minlength=cohorts)
    for index in range(cohorts):
        counts: list[int | None] = [int(sizes[index])]
        for k in range(1, intervals):
            if k >= min(intervals, cohorts - index):
                counts.append(None)
                continue
            counts.append(int(((cohort[pairs[:, 0]] == index) & (offset == k) & in_cohort).sum()))
        table.append((int(sizes[index]), counts))
    return table


def lifecycle(
    events: journeys.Journeys, *, first_week: dt.date, weeks: int, end: int
) -> dict[str, list[int]]:
    """Weekly lifecycle (any event): new, returning, resurrecting, dormant (negative) per week."""
    before = events.moment < end
    week = week_index(events.moment[before], first_week)
    actor = events.actor[before]
    first = np.full(int(events.actor.max()) + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, actor, week)
    keys = np.unique(actor * 4096 + (week + 1024))
    pair_actor, pair_week = keys // 4096, keys % 4096 - 1024

    def has(wanted: np.ndarray) -> np.ndarray:
        at = np.searchsorted(keys, wanted)
        found: np.ndarray = (at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == wanted)
        return found

    inside = (pair_week >= 0) & (pair_week < weeks)
    previous = has(keys - 1)
    new = inside & (first[pair_actor] == pair_week)
    returning = inside & ~new & previous
    resurrecting = inside & ~new & ~previous
    dormant = (pair_week >= -1) & (pair_week + 1 < weeks) & ~has(keys + 1)
    lines = {
        "new": np.bincount(pair_week[new], minlength=weeks),
        "returning": np.bincount(pair_week[returning], minlength=weeks),
        "resurrecting": np.bincount(pair_week[resurrecting], minlength=weeks),
        "dormant": -np.bincount(pair_week[dormant] + 1, minlength=weeks),
    }
    return {name: [int(v) for v in values[:weeks]] for name, values in lines.items()}
