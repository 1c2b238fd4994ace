"""Product journeys for the insight benchmarks: N actors of one tenant, about M events.

Modelled on the demo's generator (``service.demo.events``), sized exactly: every actor signs up
once (sign-ups grow linearly over the period), then walks ``JOURNEY`` as far as it gets: each
step taken by a share ``STEP_RATES`` of those at the step before, after a lognormal time to
convert (``STEP_DELAYS``; the tails run past a 14-day window); some of those who invite a
teammate invite more later. Actors come back in the weeks after their sign-up for sessions
(``session_started``, then Poisson page views and feature uses); the chance of still being
around one more week grows with the furthest step reached; sessions per active week are
calibrated so that the events add up to about the requested count. Nothing is drawn per event
in Python. Timestamps are microseconds since the epoch (UTC), random to the microsecond, so no
two events of an actor share an instant in practice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.demo.events import (
    ACTIVATED,
    EVENT_NAMES,
    FEATURE_USED,
    INVITED_TEAMMATE,
    JOURNEY,
    PAGE_VIEWED,
    PURCHASED,
    SESSION_STARTED,
    SIGNED_UP,
    STEP_RATES,
)

__all__ = [
    "ACTIVATED",
    "EVENT_NAMES",
    "INVITED_TEAMMATE",
    "JOURNEY",
    "PURCHASED",
    "SIGNED_UP",
    "Journeys",
    "generate",
]

SECOND = 1_000_000
HOUR = 3600 * SECOND
DAY = 24 * HOUR
WEEK = 7 * DAY
STEP_DELAYS: tuple[tuple[float, float], ...] = ((18.0, 1.1), (60.0, 1.0), (120.0, 0.9))
"""Time to convert from each step to the next: lognormal (median hours, sigma), as the demo."""
MORE_INVITES = 0.3
"""Share of the actors who invited a teammate that invite more (1 to 3 more, days later)."""
WEEKLY_SURVIVAL = np.array([0.45, 0.8, 0.88, 0.95])
"""The chance of still being around one more week, by the furthest step reached."""
WEEK_ACTIVE = 0.7
PAGE_VIEWS_PER_SESSION = 2.2
FEATURE_USES_PER_SESSION = 1.3
EVENT_GAP_MEAN = 4 * 60 * SECOND
_CODE = {name: code for code, name in enumerate(EVENT_NAMES)}


@dataclass(frozen=True)
class Journeys:
    """The events of one tenant as parallel arrays, in no particular order."""

    actor: np.ndarray
    """The actor's id (1 .. actors, shuffled)."""
    moment: np.ndarray
    """Microseconds since the epoch."""
    kind: np.ndarray
    """Position in ``EVENT_NAMES``."""

    def __len__(self) -> int:
        """The number of events."""
        return len(self.actor)


def generate(
    rng: np.random.Generator, *, actors: int, events: int, start: int, end: int
) -> Journeys:
    """``actors`` journeys between ``start`` and ``end`` with about ``events`` events."""
    span = end - start
    # Linear growth of sign-ups: density proportional to the time since the start.
    signed_up = start + (np.sqrt(rng.random(actors)) * (span - HOUR)).astype(np.int64)
    steps = np.full((actors, len(JOURNEY)), -1, np.int64)
    steps[:, 0] = signed_up
    for step, (rate, (median_hours, sigma)) in enumerate(
        zip(STEP_RATES, STEP_DELAYS, strict=True), start=1
    ):
        before = steps[:, step - 1]
        delay = (rng.lognormal(np.log(median_hours), sigma, actors) * HOUR).astype(np.int64)
        taken = (before >= 0) & (rng.random(actors) < rate) & (before + delay + 1 < end)
        steps[:, step] = np.where(taken, before + delay + 1, -1)
    ids = rng.permutation(actors).astype(np.int64) + 1
    reached = steps >= 0
    journey_actor = np.repeat(np.arange(actors), len(JOURNEY)).reshape(actors, -1)[reached]
    journey_kind = np.tile(np.arange(len(JOURNEY)), actors).reshape(actors, -1)[reached]
    journey_moment = steps[reached]
    # More invitations, days after the first one.
    inviter = np.flatnonzero((steps[:, 2] >= 0) & (rng.random(actors) < MORE_INVITES))
    inviter = np.repeat(inviter, rng.integers(1, 4, len(inviter)))
    again = steps[inviter, 2] + (rng.exponential(3.0, len(inviter)) * DAY).astype(np.int64) + 1
    kept = again < end
    invite_kind = _CODE[INVITED_TEAMMATE]
    # Weeks around: geometric by the furthest step, within the period.
    furthest = reached.sum(axis=1) - 1
    weeks_left = (end - signed_up - 1) // WEEK + 1
    weeks = np.minimum(rng.geometric(1 - WEEKLY_SURVIVAL[furthest]), weeks_left)
    week_actor = np.repeat(np.arange(actors), weeks)
    week = np.arange(len(week_actor)) - np.repeat(np.cumsum(weeks) - weeks, weeks)
    active = (week == 0) | (rng.random(len(week_actor)) < WEEK_ACTIVE)
    week_actor, week = week_actor[active], week[active]
    budget = events - len(journey_actor) - int(kept.sum())
    session_actor, moment, session, inner, inner_kind = _sessions(
        rng, signed_up[week_actor] + week * WEEK, week_actor, budget, end
    )
    position_actor = np.concatenate(
        [journey_actor, inviter[kept], session_actor, session_actor[session]]
    )
    return Journeys(
        ids[position_actor],
        np.concatenate([journey_moment, again[kept], moment, inner]),
        np.concatenate(
            [
                journey_kind,
                np.full(int(kept.sum()), invite_kind),
                np.full(len(session_actor), _CODE[SESSION_STARTED]),
                inner_kind,
            ]
        ),
    )


def _sessions(
    rng: np.random.Generator, week_start: np.ndarray, week_actor: np.ndarray, budget: int, end: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sessions in the active weeks (each starting at ``week_start``) adding up to ``budget``.

    Returns the sessions' actors and start moments, and their inner events' sessions, moments
    and kinds.
    """
    per_session = 1 + PAGE_VIEWS_PER_SESSION + FEATURE_USES_PER_SESSION
    # The share of each active week inside the period: sessions drawn after its end are lost.
    share = float(np.clip((end - week_start) / WEEK, 0.0, 1.0).mean())
    mean = max(budget, 0) / (len(week_actor) * per_session * share)
    # At least one session in an active week, unless the budget is smaller than that.
    if mean >= 1:
        sessions = 1 + rng.poisson(mean - 1, len(week_actor))
    else:
        sessions = rng.poisson(mean, len(week_actor))
    session_actor = np.repeat(week_actor, sessions)
    moment = np.repeat(week_start, sessions) + rng.integers(0, WEEK, len(session_actor))
    in_period = moment < end
    session_actor, moment = session_actor[in_period], moment[in_period]
    page_views = rng.poisson(PAGE_VIEWS_PER_SESSION, len(session_actor))
    feature_uses = rng.poisson(FEATURE_USES_PER_SESSION, len(session_actor))
    within = page_views + feature_uses
    session = np.repeat(np.arange(len(session_actor)), within)
    position = np.arange(len(session)) - np.repeat(np.cumsum(within) - within, within)
    inner_kind = np.where(
        position < np.repeat(page_views, within), _CODE[PAGE_VIEWED], _CODE[FEATURE_USED]
    )
    # Each event of a session a gap after the one before it (at least a second).
    gap = SECOND + rng.exponential(EVENT_GAP_MEAN, len(session)).astype(np.int64)
    elapsed = np.cumsum(gap)
    first_of_session = np.repeat(np.cumsum(within) - within, within)
    inner = moment[session] + elapsed - np.concatenate([[0], elapsed])[first_of_session]
    inside = inner < end
    return session_actor, moment, session[inside], inner[inside], inner_kind[inside]


def code(name: str) -> int:
    """An event name's position in ``EVENT_NAMES``."""
    return _CODE[name]
