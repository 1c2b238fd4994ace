"""Product events for the demo tenants: journeys, returning activity, seasonality and incidents.

Every actor is a live contact of its tenant (the actor field holds ``crm.contacts.id``) and signs
up once, no earlier than the contact was created. From there it walks the funnel of ``JOURNEY``
as far as it gets: each step at most once, after the step before, taken by a share
``STEP_RATES`` of those who reached the step before, after a lognormal time to convert. Actors
come back in later weeks for sessions (``session_started``, then page views and feature uses);
the chance that an actor is still around decays week over week, slowest for those who got
furthest in the funnel. Sign-ups follow the contacts' growth, and retained actors accumulate, so
activity grows over the period; sessions are rarer at weekends and follow office hours (UTC).
Two incidents sit in the first tenant's history for anomaly detection to find: ``DROP_DAYS``
and ``SPIKE_DAY``.

Everything is drawn with numpy over whole arrays (actors, weeks, sessions, events), never per
event in Python: 3.6 M events take a few seconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from service.catalog import Model
from service.demo.arrow_columns import (
    DAY,
    HOUR,
    SECOND,
    Array,
    category_array,
    decimal_array,
    timestamp_array,
    uuid_array,
)

EVENTS_PER_ROW = 3
"""Events generated per requested CDC row unless a count is given: 1.2 M rows, 3.6 M events."""

SIGNED_UP = "signed_up"
ACTIVATED = "activated"
INVITED_TEAMMATE = "invited_teammate"
PURCHASED = "purchased"
SESSION_STARTED = "session_started"
PAGE_VIEWED = "page_viewed"
FEATURE_USED = "feature_used"
JOURNEY: tuple[str, ...] = (SIGNED_UP, ACTIVATED, INVITED_TEAMMATE, PURCHASED)
"""The funnel, in order. Every actor has exactly one ``signed_up`` (unless lost in a drop)."""
EVENT_NAMES: tuple[str, ...] = (*JOURNEY, SESSION_STARTED, PAGE_VIEWED, FEATURE_USED)
STEP_RATES: tuple[float, ...] = (0.6, 0.35, 0.2)
"""Share of the actors at each funnel step that take the next one, if the period leaves time."""
PLATFORMS: tuple[str, ...] = ("web", "ios", "android")
PLANS: tuple[str, ...] = ("free", "pro", "enterprise")
"""An event's ``plan`` is the actor's plan at the time: free until it purchased pro or
enterprise (the ``purchased`` event carries the plan bought)."""

DROP_DAYS: tuple[dt.date, ...] = (dt.date(2026, 6, 9), dt.date(2026, 6, 10))
"""A tracking outage of the first tenant (``acme`` in the demo): on these UTC days, a Tuesday
and a Wednesday, only about ``DROP_KEPT`` of its events arrive. Lost sign-ups stay lost."""
DROP_KEPT = 0.3
SPIKE_DAY = dt.date(2026, 9, 16)
"""A launch campaign of the first tenant: on this UTC day, a Wednesday, it has about
``SPIKE_FACTOR`` times its usual events; the extra ones are page views and sessions of its
existing actors with ``utm_source`` = ``SPIKE_SOURCE``."""
SPIKE_FACTOR = 3
SPIKE_SOURCE = "product_hunt"

_WEEK = 7 * DAY
# Sign-up after the contact was created: most sign up on the spot (the sign-up creates the
# contact), the others are leads who come back days later.
_SIGN_UP_ON_THE_SPOT = 0.55
_SIGN_UP_SOON_MEAN = 15 * 60 * SECOND
_SIGN_UP_LATER_MEDIAN_HOURS = 48.0
# Time to convert from one step to the next: lognormal (median hours, sigma).
_STEP_DELAYS: tuple[tuple[float, float], ...] = ((18.0, 1.1), (60.0, 1.0), (120.0, 0.9))
# The chance of still being around one more week, by the furthest funnel step reached; an
# actor around in a week is active in it with _WEEK_ACTIVE (always in its sign-up week).
_WEEKLY_SURVIVAL = np.array([0.45, 0.8, 0.88, 0.95])
_WEEK_ACTIVE = 0.7
_SESSIONS_PER_ACTIVE_WEEK = 2.0
"""Nominal: decides how many contacts become actors; the actual rate is calibrated to the count."""
_PAGE_VIEWS_PER_SESSION = 2.2
_FEATURE_USES_PER_SESSION = 1.3
_EVENT_GAP_MEAN = 4 * 60 * SECOND
_EVENT_GAP_MAX = 3 * HOUR
# Monday first; product use dips less at weekends than sales work does.
_WEEKDAY_WEIGHTS = np.array([1.0, 1.05, 1.04, 1.0, 0.9, 0.42, 0.38])
_HOUR_OF_DAY = np.arange(24)
_HOUR_WEIGHTS = (
    0.12
    + np.exp(-(((_HOUR_OF_DAY - 10) / 3.0) ** 2))
    + 0.9 * np.exp(-(((_HOUR_OF_DAY - 16) / 3.0) ** 2))
)
_PLATFORM_WEIGHTS = (0.6, 0.22, 0.18)
_OWN_PLATFORM = 0.85
_PLATFORM_MISSING = 0.01
_COUNTRY_MISSING = 0.02
_ENTERPRISE_SHARE = 0.2
_SEAT_PRICE_CENTS = np.array([0, 2_900, 7_900])
_DISCOUNT_PERCENT = np.array([0, 10, 25])
_DISCOUNT_WEIGHTS = (0.75, 0.15, 0.1)
_ANNUAL_SHARE = 0.35
_ANNUAL_MONTHS = 10

_BILLING_PERIODS = ("monthly", "annual")
_UTM_SOURCES = ("google", "linkedin", "newsletter", "partner", "twitter", "podcast", SPIKE_SOURCE)
_UTM_SOURCE_WEIGHTS = (40, 18, 15, 12, 10, 5, 0)
_UTM_CAMPAIGNS = ("brand_search", "webinar", "retargeting", "launch_week", "black_friday")
_BROWSERS = ("chrome", "safari", "edge", "firefox")
_BROWSER_WEIGHTS = (64, 19, 10, 7)
_APP_VERSIONS = ("4.0", "4.1", "4.2", "4.3", "4.4", "4.5", "4.6")
# A few paths carry quotes, wildcard characters and non-ASCII, so that property filters must
# escape what they compare.
_PATHS = (
    "/dashboard",
    "/reports",
    "/reports/new",
    "/settings",
    "/settings/team",
    "/billing",
    "/integrations",
    "/docs/getting-started",
    "/pricing",
    '/search?q=o\'reilly%20"pro"',
    "/reports/q3_50%_growth",
    "/hilfe/über-uns",
)
_PATH_WEIGHTS = (30, 18, 8, 6, 4, 3, 5, 6, 5, 1, 1, 1)
_FEATURES = (
    "export_csv",
    "share_dashboard",
    "create_report",
    "set_alert",
    "api_key",
    "schedule_email",
)
_FEATURE_WEIGHTS = (20, 18, 25, 15, 7, 15)
_ROLES = ("member", "admin", "viewer")
_ROLE_WEIGHTS = (65, 15, 20)
_SPIKE_PAGE_VIEWS = 0.7

_EVENT_CODE = {name: code for code, name in enumerate(EVENT_NAMES)}
_PURCHASE_STEP = JOURNEY.index(PURCHASED)


@dataclass(frozen=True)
class ContactPool:
    """The contacts events may be about: live contact keys of every tenant, in parallel arrays."""

    tenant: Array
    """Position of the contact's tenant in the tenant list."""
    ids: Array
    created: Array
    """Creation time, microseconds since the epoch."""
    country: pa.Array
    """The contact's country (text)."""


def generate_events(
    model: Model,
    pool: ContactPool,
    *,
    tenants: Sequence[str],
    start: int,
    end: int,
    count: int,
    rng: np.random.Generator,
) -> dict[str, pa.Array]:
    """About ``count`` events (none without contacts) between ``start`` and ``end`` (microseconds).

    Returned by column name, in time order: the tenant column, the four role fields of
    ``model.events``, ``platform``, ``country``, ``plan``, ``revenue`` and the two property
    arrays. Which of them the model declares, and how, is the caller's business.
    """
    roles = model.events
    if roles is None:
        raise ValueError(f"{model.qualified_name} is not an event model")
    candidates = _journeys(pool, end, rng)
    actors = candidates.take(_choose_actors(candidates, count, rng))
    journey = _journey_events(actors)
    sessions, moments = _sessions(actors, count - len(journey.actor), end, rng)
    first_tenant = pool.tenant[actors.contact] == 0
    events = _with_incidents(
        _Events.concat([journey, _session_events(sessions, moments, end, rng)]),
        first_tenant,
        end,
        rng,
    )
    events = events.take(np.argsort(events.moment, kind="stable"))

    rows = len(events.actor)
    contact = actors.contact[events.actor]
    platform = _platforms(actors, events.actor, rng)
    purchase = actors.steps[events.actor, _PURCHASE_STEP]
    paid = (purchase >= 0) & (events.moment >= purchase)
    purchased = events.kind == _EVENT_CODE[PURCHASED]
    annual = rng.random(len(actors.contact)) < _ANNUAL_SHARE
    revenue = _revenue(actors, annual, rng)
    keys, values = _properties(
        events, platform, annual[events.actor], start=start, end=end, rng=rng
    )
    # Gathered as codes: taking millions of strings from the contacts' column is slower.
    countries = pool.country.dictionary_encode()
    country_code = pc.fill_null(countries.indices, 0).to_numpy()
    country_missing = countries.indices.is_null().to_numpy(zero_copy_only=False)[contact] | (
        rng.random(rows) < _COUNTRY_MISSING
    )
    return {
        model.tenant_column: category_array(tenants, pool.tenant[contact]),
        roles.event_id: uuid_array(rng, rows),
        roles.event: category_array(EVENT_NAMES, events.kind),
        roles.actor: pa.array(pool.ids[contact].astype(np.int64)),
        roles.timestamp: timestamp_array(events.moment),
        "platform": category_array(PLATFORMS, np.maximum(platform, 0), platform < 0),
        "country": category_array(
            countries.dictionary.to_pylist(), country_code[contact], country_missing
        ),
        "plan": category_array(PLANS, np.where(paid, actors.plan[events.actor], 0)),
        "revenue": decimal_array(revenue[events.actor], missing=~purchased),
        roles.key_column: keys,
        roles.value_column: values,
    }


def _day_number(day: dt.date) -> int:
    """Days since 1970-01-01: the day an event falls on is its microseconds // ``DAY``."""
    return (day - dt.date(1970, 1, 1)).days


@dataclass(frozen=True)
class _Actors:
    """Per actor: its contact (position in the pool) and how far it got, and when."""

    contact: Array
    steps: Array
    """(actors, 4): the moment of each funnel step, -1 where not reached."""
    plan: Array
    """The plan bought (position in PLANS), 0 if none."""
    weeks: Array
    """Weeks from the sign-up week on in which the actor is still around (at least 1)."""

    def take(self, index: Array) -> _Actors:
        return _Actors(self.contact[index], self.steps[index], self.plan[index], self.weeks[index])


@dataclass(frozen=True)
class _Events:
    """Events as parallel arrays: actor (position among the actors), moment, kind, campaign."""

    actor: Array
    moment: Array
    kind: Array
    campaign: Array

    def take(self, index: Array) -> _Events:
        return _Events(
            self.actor[index], self.moment[index], self.kind[index], self.campaign[index]
        )

    @staticmethod
    def concat(parts: Sequence[_Events]) -> _Events:
        return _Events(
            np.concatenate([p.actor for p in parts]),
            np.concatenate([p.moment for p in parts]),
            np.concatenate([p.kind for p in parts]),
            np.concatenate([p.campaign for p in parts]),
        )


def _journeys(pool: ContactPool, end: int, rng: np.random.Generator) -> _Actors:
    """Every contact's sign-up, funnel and lifetime; those who sign up after the period dropped."""
    count = len(pool.ids)
    later = rng.lognormal(np.log(_SIGN_UP_LATER_MEDIAN_HOURS), 1.3, count) * HOUR
    soon = rng.exponential(_SIGN_UP_SOON_MEAN, count)
    lag = np.where(rng.random(count) < _SIGN_UP_ON_THE_SPOT, soon, later).astype(np.int64)
    signed_up = pool.created + lag
    steps = np.full((count, len(JOURNEY)), -1, np.int64)
    steps[:, 0] = np.where(signed_up < end, signed_up, -1)
    for step, (rate, (median_hours, sigma)) in enumerate(
        zip(STEP_RATES, _STEP_DELAYS, strict=True), start=1
    ):
        before = steps[:, step - 1]
        delay = (rng.lognormal(np.log(median_hours), sigma, count) * HOUR).astype(np.int64)
        taken = (before >= 0) & (rng.random(count) < rate) & (before + delay < end)
        steps[:, step] = np.where(taken, before + delay, -1)
    bought = steps[:, _PURCHASE_STEP] >= 0
    plan = np.where(bought, 1 + (rng.random(count) < _ENTERPRISE_SHARE), 0)
    furthest = (steps >= 0).sum(axis=1) - 1
    survival = _WEEKLY_SURVIVAL[np.maximum(furthest, 0)]
    weeks_left = (end - (steps[:, 0] // DAY) * DAY - 1) // _WEEK + 1
    weeks = np.minimum(rng.geometric(1 - survival), weeks_left)
    actors = _Actors(np.arange(count), steps, plan, weeks)
    return actors.take(np.flatnonzero(steps[:, 0] >= 0))


def _choose_actors(candidates: _Actors, count: int, rng: np.random.Generator) -> Array:
    """Sorted positions of random candidates whose expected events add up to about ``count``.

    With too few candidates all of them act, and more sessions per week make up the count.
    """
    per_session = 1 + _PAGE_VIEWS_PER_SESSION + _FEATURE_USES_PER_SESSION
    active_weeks = 1 + (candidates.weeks - 1) * _WEEK_ACTIVE
    expected = (candidates.steps >= 0).sum(axis=1) + (
        active_weeks * _SESSIONS_PER_ACTIVE_WEEK * per_session
    )
    order = rng.permutation(len(candidates.contact))
    enough = np.searchsorted(np.cumsum(expected[order]), count) + 1 if count > 0 else 0
    return np.sort(order[:enough])


def _journey_events(actors: _Actors) -> _Events:
    moments = actors.steps.ravel()
    reached = moments >= 0
    steps = len(JOURNEY)
    return _Events(
        np.repeat(np.arange(len(actors.contact)), steps)[reached],
        moments[reached],
        np.tile(np.arange(steps), len(actors.contact))[reached],
        np.zeros(int(reached.sum()), bool),
    )


def _sessions(
    actors: _Actors, budget: int, end: int, rng: np.random.Generator
) -> tuple[Array, Array]:
    """Sessions (actor, start moment) whose events add up to about ``budget`` events.

    The actor is around in weeks 0 .. weeks-1 counted from its sign-up day and active in each
    with ``_WEEK_ACTIVE`` (always in week 0); the sessions per active week are Poisson with the
    mean that meets the budget.
    """
    actor = np.repeat(np.arange(len(actors.contact)), actors.weeks)
    week = np.arange(len(actor)) - np.repeat(np.cumsum(actors.weeks) - actors.weeks, actors.weeks)
    active = (week == 0) | (rng.random(len(actor)) < _WEEK_ACTIVE)
    actor, week = actor[active], week[active]
    per_session = 1 + _PAGE_VIEWS_PER_SESSION + _FEATURE_USES_PER_SESSION
    mean = max(budget, 0) / (len(actor) * per_session) if len(actor) else 0.0
    # At least one session in an active week, unless the budget is smaller than that.
    sessions = 1 + rng.poisson(mean - 1, len(actor)) if mean >= 1 else rng.poisson(mean, len(actor))
    actor, week = np.repeat(actor, sessions), np.repeat(week, sessions)
    signed_up = actors.steps[actor, 0]
    first_day = signed_up // DAY + 7 * week
    day = first_day + _weekday_weighted_offsets(first_day, rng)
    hour = rng.choice(24, size=len(actor), p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    moment = day * DAY + hour * HOUR + rng.integers(0, HOUR, len(actor))
    # A session drawn before the sign-up on the sign-up day is the one right after it.
    right_after = signed_up + rng.exponential(20 * 60 * SECOND, len(actor)).astype(np.int64)
    moment = np.where(moment < signed_up, right_after, moment)
    kept = moment < end
    return actor[kept], moment[kept]


def _weekday_weighted_offsets(first_day: Array, rng: np.random.Generator) -> Array:
    """For each week starting on ``first_day`` (days since the epoch), a day 0..6 into it."""
    # 1970-01-01 was a Thursday: shift so that 0 is Monday.
    first_weekday = (first_day + 3) % 7
    draw = rng.random(len(first_day))
    offsets = np.zeros(len(first_day), np.int64)
    for weekday in range(7):
        weights = _WEEKDAY_WEIGHTS[(weekday + np.arange(7)) % 7]
        cumulative = np.cumsum(weights) / weights.sum()
        members = first_weekday == weekday
        offsets[members] = np.minimum(np.searchsorted(cumulative, draw[members], side="right"), 6)
    return offsets


def _session_events(actor: Array, moment: Array, end: int, rng: np.random.Generator) -> _Events:
    """``session_started`` at each session's start, then its page views and feature uses."""
    sessions = len(actor)
    page_views = rng.poisson(_PAGE_VIEWS_PER_SESSION, sessions)
    feature_uses = rng.poisson(_FEATURE_USES_PER_SESSION, sessions)
    within = page_views + feature_uses
    session = np.repeat(np.arange(sessions), within)
    position = np.arange(len(session)) - np.repeat(np.cumsum(within) - within, within)
    kind = np.where(
        position < np.repeat(page_views, within),
        _EVENT_CODE[PAGE_VIEWED],
        _EVENT_CODE[FEATURE_USED],
    )
    gap = np.minimum(rng.exponential(_EVENT_GAP_MEAN, len(session)), _EVENT_GAP_MAX)
    later = moment[session] + SECOND + gap.astype(np.int64)
    kept = later < end
    return _Events(
        np.concatenate([actor, actor[session][kept]]),
        np.concatenate([moment, later[kept]]),
        np.concatenate([np.full(sessions, _EVENT_CODE[SESSION_STARTED]), kind[kept]]),
        np.zeros(sessions + int(kept.sum()), bool),
    )


def _with_incidents(
    events: _Events, first_tenant: Array, end: int, rng: np.random.Generator
) -> _Events:
    """The first tenant's events thinned on DROP_DAYS and multiplied on SPIKE_DAY."""
    day = events.moment // DAY
    affected = first_tenant[events.actor]
    drop_days = np.array([_day_number(d) for d in DROP_DAYS])
    lost = affected & np.isin(day, drop_days) & (rng.random(len(day)) >= DROP_KEPT)
    spike_day = _day_number(SPIKE_DAY)
    source = np.repeat(np.flatnonzero(affected & (day == spike_day)), SPIKE_FACTOR - 1)
    # Each extra event follows the one it copies on the same day, so it is after the sign-up.
    day_end = min((spike_day + 1) * DAY, end)
    room = (day_end - 1 - events.moment[source]).astype(np.float64)
    extra = _Events(
        events.actor[source],
        events.moment[source] + (rng.random(len(source)) * room).astype(np.int64),
        np.where(
            rng.random(len(source)) < _SPIKE_PAGE_VIEWS,
            _EVENT_CODE[PAGE_VIEWED],
            _EVENT_CODE[SESSION_STARTED],
        ),
        np.ones(len(source), bool),
    )
    return _Events.concat([events.take(np.flatnonzero(~lost)), extra])


def _platforms(actors: _Actors, actor: Array, rng: np.random.Generator) -> Array:
    """Mostly the actor's own platform, sometimes another one; -1 for an unknown client."""
    own = rng.choice(len(PLATFORMS), size=len(actors.contact), p=_PLATFORM_WEIGHTS)
    other = rng.integers(0, len(PLATFORMS), len(actor))
    platform = np.where(rng.random(len(actor)) < _OWN_PLATFORM, own[actor], other)
    unknown: Array = np.where(rng.random(len(actor)) < _PLATFORM_MISSING, -1, platform)
    return unknown


def _revenue(actors: _Actors, annual: Array, rng: np.random.Generator) -> Array:
    """Per actor, the cents its purchase brings: seats times the plan's price, less a discount."""
    count = len(actors.contact)
    enterprise = actors.plan == 2
    seats = np.where(enterprise, 9 + rng.geometric(0.05, count), rng.geometric(0.35, count))
    discount = _DISCOUNT_PERCENT[rng.choice(len(_DISCOUNT_PERCENT), count, p=_DISCOUNT_WEIGHTS)]
    months = np.where(annual, _ANNUAL_MONTHS, 1)
    # Exact: every price in cents is a multiple of 100 cents, so the percentage divides.
    units: Array = seats * _SEAT_PRICE_CENTS[actors.plan] * months * (100 - discount) // 100
    return units


def _properties(
    events: _Events,
    platform: Array,
    annual: Array,
    *,
    start: int,
    end: int,
    rng: np.random.Generator,
) -> tuple[pa.Array, pa.Array]:
    """The free-form properties as parallel key and value lists; some events have none.

    ``platform`` is a position in PLATFORMS, -1 if unknown (then there is no browser or app).
    """
    kind, rows = events.kind, len(events.kind)
    web = platform == 0
    code = {name: kind == number for name, number in _EVENT_CODE.items()}
    present: list[tuple[str, Array, Sequence[str], Array]] = []

    def add(key: str, mask: Array, values: Sequence[str], index: Array) -> None:
        present.append((key, mask, values, index))

    def draw(mask: Array, weights: Sequence[float]) -> Array:
        probabilities = np.asarray(weights, np.float64)
        return rng.choice(len(weights), int(mask.sum()), p=probabilities / probabilities.sum())

    source_odds = np.select(
        [code[SIGNED_UP], code[SESSION_STARTED], code[PAGE_VIEWED]], [0.65, 0.15, 0.1], 0.0
    )
    sourced = (rng.random(rows) < source_odds) | events.campaign
    sources = draw(sourced, _UTM_SOURCE_WEIGHTS)
    add(
        "utm_source",
        sourced,
        _UTM_SOURCES,
        np.where(events.campaign[sourced], len(_UTM_SOURCES) - 1, sources),
    )
    campaigned = code[SIGNED_UP] & sourced & (rng.random(rows) < 0.45)
    add("utm_campaign", campaigned, _UTM_CAMPAIGNS, draw(campaigned, [1] * len(_UTM_CAMPAIGNS)))
    browsed = web & ~code[ACTIVATED] & (rng.random(rows) < 0.95)
    add("browser", browsed, _BROWSERS, draw(browsed, _BROWSER_WEIGHTS))
    mobile = (platform > 0) & ~code[ACTIVATED]
    add("app_version", mobile, _APP_VERSIONS, _app_versions(events.moment[mobile], start, end, rng))
    add("path", code[PAGE_VIEWED], _PATHS, draw(code[PAGE_VIEWED], _PATH_WEIGHTS))
    add("feature", code[FEATURE_USED], _FEATURES, draw(code[FEATURE_USED], _FEATURE_WEIGHTS))
    add("role", code[INVITED_TEAMMATE], _ROLES, draw(code[INVITED_TEAMMATE], _ROLE_WEIGHTS))
    purchased = code[PURCHASED]
    add("billing_period", purchased, _BILLING_PERIODS, annual[purchased].astype(np.int64))

    # Each event's keys in the order added above: every key goes to the next free slot of the
    # events that have it, so no sort is needed.
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(np.sum([mask for _, mask, _, _ in present], axis=0), out=offsets[1:])
    key_codes = np.empty(offsets[-1], np.int32)
    value_codes = np.empty(offsets[-1], np.int32)
    free = offsets[:-1].copy()
    vocabulary: list[str] = []
    for number, (_, mask, values, index) in enumerate(present):
        positions = np.flatnonzero(mask)
        slots = free[positions]
        key_codes[slots] = number
        value_codes[slots] = len(vocabulary) + index
        free[positions] += 1
        vocabulary += values
    list_offsets = pa.array(offsets.astype(np.int32))
    return (
        pa.ListArray.from_arrays(
            list_offsets, category_array([key for key, _, _, _ in present], key_codes)
        ),
        pa.ListArray.from_arrays(list_offsets, category_array(vocabulary, value_codes)),
    )


def _app_versions(moment: Array, start: int, end: int, rng: np.random.Generator) -> Array:
    """A release every few weeks; most users are on the latest, some one or two behind."""
    latest = ((moment - start) * len(_APP_VERSIONS) // max(end - start, 1)).astype(np.int64)
    behind = rng.choice(3, size=len(moment), p=[0.6, 0.3, 0.1])
    versions: Array = np.clip(latest - behind, 0, len(_APP_VERSIONS) - 1)
    return versions
