"""Ordered funnels on the embedded engine, against the independent evaluator of
tests/funnel_reference.py.

Each hypothesis example writes the journeys of a fresh pair of tenants (one with a hostile id)
sharing actor ids, on a time grid of half windows so that steps fall exactly on the window's
bound and a microsecond past it, many events share an instant, event names repeat across steps
and an event may match several steps; some events are re-sent (same id and day, a later version
with another name or time, or an older version written late) and some erased. The funnel (2 to 6
random steps, a random window, range and filters) must answer what the reference computes, and
every WHERE of its query starts with the tenant condition.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
import random
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, Model
from service.insights.funnel_request import (
    FunnelActorsRequest,
    FunnelExclusion,
    FunnelRequest,
    FunnelStep,
)
from service.insights.funnels import (
    ATTRIBUTIONS,
    FunnelAnswer,
    FunnelStepResult,
    assemble_funnel,
    compile_funnel,
    compile_funnel_actors,
)
from service.schema import all_ddl
from tests.conftest import catalog_in_database, unique_database
from tests.funnel_reference import (
    ReferenceBreakdown,
    ReferenceStep,
    reference_actors,
    reference_breakdowns,
    reference_funnel,
    window_of,
)
from tests.sql_shape import assert_tenant_first as assert_query_tenant_first
from tests.sql_shape import event_arrow
from tests.unit.test_funnels import assert_tenant_first

pytestmark = pytest.mark.integration

ENGINE = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
UTC = dt.UTC
T0 = dt.datetime(2026, 3, 10, 11, 0, tzinfo=UTC)
NOW = dt.datetime(2026, 4, 1, tzinfo=UTC)
HOSTILE = "x' OR '1'='1"
NAMES = ("signed_up", "activated", "purchased")
PLATFORMS = ("web", "ios", None)
WINDOWS = ("90s", "10m", "1h", "1d")
STEP_FILTERS: tuple[dict[str, str], ...] = (
    {},
    {"platform": "eq.web"},
    {"platform": "in.(web,ios)"},
    {"properties.ref": "eq.x' OR '1'='1"},
)
_examples = itertools.count()


class Journeys:
    """The database of the funnel examples (tables made once; each example its own tenants)."""

    def __init__(self, backend: EmbeddedBackend, catalog: Catalog) -> None:
        self.backend = backend
        self.catalog = catalog

    def __repr__(self) -> str:
        return f"Journeys({self.catalog.database})"

    @property
    def model(self) -> Model:
        return self.catalog.models[("product", "events")]


@pytest.fixture(scope="module")
async def journeys(embedded_backend: EmbeddedBackend, catalog: Catalog) -> Journeys:
    mine = catalog_in_database(catalog, unique_database("funnels"))
    for statement in all_ddl(mine):
        await embedded_backend.command(statement)
    return Journeys(embedded_backend, mine)


@st.composite
def cases(draw: st.DrawFn) -> tuple[FunnelRequest, list[dict[str, Any]], str]:
    serial = next(_examples)
    tenant, other = f"acme-{serial}", f"{HOSTILE}-{serial}"
    window_text = draw(st.sampled_from(WINDOWS))
    half = window_of(window_text) / 2
    rng = draw(st.randoms(use_true_random=False))
    count = draw(st.integers(1, 30))
    rows: list[dict[str, Any]] = []
    version = itertools.count(1)
    step_count = draw(st.integers(2, 6))
    steps = []
    for _ in range(step_count):
        event = draw(st.sampled_from(("", *NAMES, *NAMES)))
        filters = draw(st.sampled_from(STEP_FILTERS[1:] if not event else STEP_FILTERS))
        label = draw(st.sampled_from(("", "", "Step ' label")))
        steps.append(FunnelStep(event=event, filters=filters, label=label))

    def moment() -> dt.datetime:
        return (
            T0
            + rng.randint(0, 4) * half
            + rng.choice((0, 0, 0, 1, -1)) * dt.timedelta(microseconds=1)
        )

    for _ in range(count):
        keys = ["ref"] if rng.random() < 0.3 else []
        row: dict[str, Any] = {
            "tenant_id": tenant if rng.random() < 0.75 else other,
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "event": rng.choice(NAMES),
            "contact_id": rng.randint(1, 3),
            "timestamp": moment(),
            "platform": rng.choice(PLATFORMS),
            "country": None,
            "plan": None,
            "revenue": None,
            "properties_keys": keys,
            "properties_values": [rng.choice((HOSTILE, "other"))] * len(keys),
            "_version": next(version) * 10,
            "_is_deleted": 0,
        }
        rows.append(row)
        fate = rng.random()
        if fate < 0.12:  # re-sent later: another name, or another instant of the same day
            changed: dict[str, Any] = {"event": rng.choice(NAMES)}
            later = moment()
            if later.date() == row["timestamp"].date():
                changed["timestamp"] = later
            rows.append(row | changed | {"_version": next(version) * 10})
        elif fate < 0.18:  # an older version written after the current one
            rows.append(row | {"event": rng.choice(NAMES), "_version": row["_version"] - 5})
        elif fate < 0.24:  # erased
            rows.append(row | {"_is_deleted": 1, "_version": next(version) * 10})
        elif fate < 0.5 and rows:  # a second event at the same instant as an earlier one
            twin = rng.choice(rows)
            rows.append(
                row
                | {
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "event": rng.choice(NAMES),
                    "contact_id": twin["contact_id"],
                    "timestamp": twin["timestamp"],
                    "_version": next(version) * 10,
                }
            )
    # Journeys through the steps (each event matches its step's every filter), at steps of a
    # quarter window or less, so that most funnels go past their first step.
    for _ in range(draw(st.integers(1, 4))):
        at = moment()
        actor = rng.randint(1, 3)
        for step in steps[: rng.randint(2, step_count)]:
            at += rng.choice((0, 1, 1, 2)) * half / 2
            rows.append(
                {
                    "tenant_id": tenant,
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "event": step.event or rng.choice(NAMES),
                    "contact_id": actor,
                    "timestamp": at,
                    "platform": "web",
                    "country": None,
                    "plan": None,
                    "revenue": None,
                    "properties_keys": ["ref"],
                    "properties_values": [HOSTILE],
                    "_version": next(version) * 10,
                    "_is_deleted": 0,
                }
            )
    date_from = draw(
        st.sampled_from(("2026-03-01", (T0 + half).isoformat(), (T0 + half * 2).isoformat()))
    )
    date_to = draw(st.sampled_from(("2026-03-31", (T0 + half * 5).isoformat(), "now")))
    filters = draw(st.sampled_from(({}, {}, {"platform": "neq.ios"}, {"event": "neq.purchased"})))
    window = draw(st.sampled_from((window_text, window_text, "")))
    order = draw(st.sampled_from(("", "ordered", "strict", "unordered")))
    exclusions: list[FunnelExclusion] = []
    if order != "unordered":
        for _ in range(draw(st.integers(0, 2))):
            event = draw(st.sampled_from(("", *NAMES)))
            first = draw(st.integers(0, step_count - 1))
            last = draw(st.integers(first + 1, step_count)) if first else 0
            exclusions.append(
                FunnelExclusion(
                    event=event,
                    filters=draw(st.sampled_from(STEP_FILTERS[1:] if not event else STEP_FILTERS)),
                    from_step=first,
                    to_step=last,
                )
            )
    breakdown = draw(st.sampled_from(("", "", "platform", "properties.ref")))
    attribution = draw(st.sampled_from(ATTRIBUTIONS)) if breakdown else ""
    request = FunnelRequest(
        model="product.events",
        steps=tuple(steps),
        date_from=date_from,
        date_to=date_to,
        time_zone=draw(st.sampled_from(("", "Europe/Berlin"))),
        window=window,
        filters=filters,
        order=order,
        exclusions=tuple(exclusions),
        breakdown=breakdown,
        breakdown_limit=draw(st.sampled_from((0, 1, 2))) if breakdown else 0,
        breakdown_attribution=attribution,
        breakdown_step=draw(st.integers(1, step_count)) if attribution == "step" else 0,
    )
    return request, rows, tenant


def assert_same_breakdowns(
    answer: FunnelAnswer, expected: list[ReferenceBreakdown], context: Any
) -> None:
    """Each breakdown class (value, Other flag and steps) as the reference has it, in order."""
    assert not answer.steps, context
    got = [(b.value, b.is_other) for b in answer.breakdowns]
    assert got == [(b.value, b.is_other) for b in expected], context
    for mine, theirs in zip(answer.breakdowns, expected, strict=True):
        assert_same(mine.steps, theirs.steps, (context, mine.value))


def assert_same(
    answer: Sequence[FunnelStepResult], expected: list[ReferenceStep], context: Any
) -> None:
    assert len(answer) == len(expected), context
    for got, want in zip(answer, expected, strict=True):
        where = (context, got, want)
        assert (got.label, got.actors, got.drop_off) == (
            want.label,
            want.actors,
            want.drop_off,
        ), where
        for name in (
            "conversion_from_first",
            "conversion_from_previous",
            "median_seconds",
            "average_seconds",
        ):
            mine, theirs = getattr(got, name), getattr(want, name)
            if theirs is None:
                assert mine is None, (name, where)
            else:
                assert mine is not None, (name, where)
                assert math.isclose(mine, theirs, rel_tol=1e-9, abs_tol=1e-9), (name, where)


async def run(journeys: Journeys, request: FunnelRequest, tenant: str) -> FunnelAnswer:
    plan = compile_funnel(request, journeys.catalog, tenant, NOW)
    assert_tenant_first(plan, tenant)
    result = await journeys.backend.execute(
        plan.compiled, timeout_seconds=60, query_id=uuid.uuid4().hex
    )
    return assemble_funnel(plan, result.table)


@ENGINE
@given(case=cases())
async def test_random_journeys_equal_the_reference(journeys: Journeys, case: Any) -> None:
    request, rows, tenant = case
    note(f"request={request!r}")
    note(f"rows={rows!r}")
    shuffled = random.Random(len(rows)).sample(rows, len(rows))
    # Two inserts, so that versions of one event may sit in different parts.
    for part in (shuffled[::2], shuffled[1::2]):
        if part:
            await journeys.backend.insert_arrow(
                journeys.catalog.database, journeys.model.table, event_arrow(journeys.model, part)
            )
    answer = await run(journeys, request, tenant)
    if request.breakdown:
        breakdowns = reference_breakdowns(request, rows, tenant, NOW, journeys.model)
        assert_same_breakdowns(answer, breakdowns, request)
    else:
        expected = reference_funnel(request, rows, tenant, NOW, journeys.model)
        assert_same(answer.steps, expected, request)
        # The actors at a step (or dropped off there), as the reference counts them.
        furthest = reference_actors(request, rows, tenant, NOW, journeys.model)
        step = len(request.steps) // 2 + 1
        for status in ("reached", "dropped"):
            compiled = compile_funnel_actors(
                FunnelActorsRequest(request, step, status), journeys.catalog, tenant, NOW
            )
            assert_query_tenant_first(compiled, tenant)
            result = await journeys.backend.execute(
                compiled, timeout_seconds=60, query_id=uuid.uuid4().hex
            )
            got = list(
                zip(result.table["c0"].to_pylist(), result.table["c1"].to_pylist(), strict=True)
            )
            want = sorted(
                (actor, reached)
                for actor, reached in furthest.items()
                if (reached >= step if status == "reached" else reached == step)
            )
            assert got == want, (status, step)


async def test_the_window_bound_ties_and_repeated_steps_by_hand(journeys: Journeys) -> None:
    """One actor, worked out by hand: the bound is inclusive, ties advance in step order."""
    tenant = "by-hand"
    base: dict[str, Any] = {
        "tenant_id": tenant,
        "country": None,
        "plan": None,
        "revenue": None,
        "platform": None,
        "properties_keys": [],
        "properties_values": [],
        "_version": 1,
        "_is_deleted": 0,
    }
    micro = dt.timedelta(microseconds=1)
    hour = dt.timedelta(hours=1)
    events = [
        # Actor 1: a, then a again at the same instant (a repeated step needs another event),
        # then b exactly at the bound: reaches step 3 with gaps 0 s and 3600 s.
        (1, "a", T0, "ffffffff-0000-0000-0000-000000000000"),
        (1, "a", T0, "00000000-0000-0000-0000-000000000001"),
        (1, "b", T0 + hour, "00000000-0000-0000-0000-000000000002"),
        # Actor 2: b one microsecond past the bound: stops at step 2.
        (2, "a", T0, "00000000-0000-0000-0000-000000000003"),
        (2, "a", T0 + micro, "00000000-0000-0000-0000-000000000004"),
        (2, "b", T0 + hour + micro, "00000000-0000-0000-0000-000000000005"),
        # Actor 3: one a only: step 1.
        (3, "a", T0, "00000000-0000-0000-0000-000000000006"),
    ]
    rows = [
        base | {"contact_id": actor, "event": name, "timestamp": at, "event_id": event_id}
        for actor, name, at, event_id in events
    ]
    model = journeys.model
    await journeys.backend.insert_arrow(
        journeys.catalog.database, model.table, event_arrow(model, rows)
    )
    request = FunnelRequest(
        model="product.events",
        steps=(FunnelStep("a"), FunnelStep("a"), FunnelStep("b", label="bought")),
        date_from="2026-03-01",
        date_to="2026-03-31",
        window="1h",
    )
    answer = await run(journeys, request, tenant)
    got = [
        (s.label, s.actors, s.drop_off, s.median_seconds, s.average_seconds) for s in answer.steps
    ]
    assert got == [
        ("a", 3, 1, None, None),
        ("a", 2, 1, 0.0 + 0.0000005, 0.0000005),
        ("bought", 1, 0, 3600.0, 3600.0),
    ]
    assert [s.conversion_from_first for s in answer.steps] == [1.0, 2 / 3, 1 / 3]
    assert [s.conversion_from_previous for s in answer.steps] == [1.0, 2 / 3, 0.5]
    assert reference_funnel(request, rows, tenant, NOW, model) == [
        ReferenceStep(s.label, s.actors, *astuple_rest(s)) for s in answer.steps
    ]


def astuple_rest(step: Any) -> tuple[Any, ...]:
    return (
        step.conversion_from_first,
        step.conversion_from_previous,
        step.drop_off,
        step.median_seconds,
        step.average_seconds,
    )


async def test_orders_and_exclusions_by_hand(journeys: Journeys) -> None:
    """Two actors, worked out by hand: what strict, unordered and an exclusion change."""
    tenant = "orders-by-hand"
    minute = dt.timedelta(minutes=1)
    events = [
        # Actor 1: a, then x, then b.
        (1, "a", T0, "web"),
        (1, "x", T0 + minute, "web"),
        (1, "b", T0 + 2 * minute, "ios"),
        # Actor 2: b before a.
        (2, "b", T0, "ios"),
        (2, "a", T0 + minute, "web"),
    ]
    rows: list[dict[str, Any]] = [
        {
            "tenant_id": tenant,
            "event_id": str(uuid.UUID(int=number + 1)),
            "event": name,
            "contact_id": actor,
            "timestamp": at,
            "platform": platform,
            "country": None,
            "plan": None,
            "revenue": None,
            "properties_keys": [],
            "properties_values": [],
            "_version": 1,
            "_is_deleted": 0,
        }
        for number, (actor, name, at, platform) in enumerate(events)
    ]
    model = journeys.model
    await journeys.backend.insert_arrow(
        journeys.catalog.database, model.table, event_arrow(model, rows)
    )
    base = FunnelRequest(
        model="product.events",
        steps=(FunnelStep("a"), FunnelStep("b")),
        date_from="2026-03-01",
        date_to="2026-03-31",
        window="1h",
    )

    async def figures(request: FunnelRequest) -> list[tuple[int, float | None]]:
        answer = await run(journeys, request, tenant)
        return [(s.actors, s.median_seconds) for s in answer.steps]

    assert await figures(base) == [(2, None), (1, 120.0)]
    # x comes between actor 1's a and b; actor 2 has no b after its a.
    assert await figures(dataclasses.replace(base, order="strict")) == [(2, None), (0, None)]
    # Actor 2's b and a count in any order: 120 s and 60 s from the first event to the second.
    assert await figures(dataclasses.replace(base, order="unordered")) == [(2, None), (2, 90.0)]
    # Actor 1's only attempt is void: it counts nowhere, not even at step 1.
    excluded = dataclasses.replace(base, exclusions=(FunnelExclusion("x"),))
    assert await figures(excluded) == [(1, None), (0, None)]
    # Last touch: actor 1's b (ios) decides its value; actor 2 reached a (web) only.
    answer = await run(
        journeys,
        dataclasses.replace(base, breakdown="platform", breakdown_attribution="last_touch"),
        tenant,
    )
    assert [(b.value, [s.actors for s in b.steps]) for b in answer.breakdowns] == [
        ("ios", [1, 1]),
        ("web", [1, 0]),
    ]
    for request in (base, excluded, dataclasses.replace(base, order="unordered")):
        assert reference_funnel(request, rows, tenant, NOW, model) == [
            ReferenceStep(s.label, s.actors, *astuple_rest(s))
            for s in (await run(journeys, request, tenant)).steps
        ]
