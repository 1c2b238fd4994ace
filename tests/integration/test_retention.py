"""Retention on the embedded engine, against the independent evaluator of
tests/retention_reference.py.

Each hypothesis example writes a random history (tests/actor_events.py: two tenants, one
hostile, events around a change of offset, re-sent and erased events, first-ever events long
before the range) and asks a random retention (period, intervals, first_time or recurring, week
start, time zone, range with and without dateFrom, ``now`` inside the range so that some
intervals are not yet observable, filters, breakdown with a limit that makes ``Other``); the
answer must be what the reference computes, and every WHERE of its query starts with the
tenant condition.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from service.auth import Principal
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, Model
from service.errors import AnalyticsError, ErrorKind
from service.insights.date_range import parse_date_bound
from service.insights.retention import RetentionAnswer, assemble_retention, compile_retention
from service.insights.retention_request import RetentionEvent, RetentionRequest
from service.insights.retention_service import RetentionService
from service.schema import all_ddl
from tests.actor_events import ANCHORS, HOSTILE, history, write
from tests.conftest import catalog_in_database, unique_database
from tests.retention_reference import ReferenceTable, range_end, reference_retention
from tests.sql_shape import assert_tenant_first

pytestmark = pytest.mark.integration

ENGINE = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DEFINITIONS = (
    RetentionEvent(),
    RetentionEvent("signed_up"),
    RetentionEvent("viewed"),
    RetentionEvent("viewed", {"platform": "eq.web"}),
    RetentionEvent(filters={"properties.ref": f"eq.{HOSTILE}"}),
)


class Histories:
    """The database of the examples (tables made once; each example its own tenants)."""

    def __init__(self, backend: EmbeddedBackend, catalog: Catalog) -> None:
        self.backend = backend
        self.catalog = catalog

    def __repr__(self) -> str:
        return f"Histories({self.catalog.database})"

    @property
    def model(self) -> Model:
        return self.catalog.models[("product", "events")]


@pytest.fixture(scope="module")
async def histories(embedded_backend: EmbeddedBackend, catalog: Catalog) -> Histories:
    mine = catalog_in_database(catalog, unique_database("retention"))
    for statement in all_ddl(mine):
        await embedded_backend.command(statement)
    return Histories(embedded_backend, mine)


@st.composite
def cases(draw: st.DrawFn) -> tuple[RetentionRequest, list[dict[str, Any]], str, dt.datetime]:
    zone = draw(st.sampled_from(tuple(ANCHORS)))
    period = draw(st.sampled_from(("hour", "day", "week", "month")))
    # A seeded generator, not st.randoms(): its shrunk draws (all zeros) make degenerate histories.
    rng = random.Random(draw(st.integers(0, 2**32)))
    past = history(
        rng, zone, period, draw(st.integers(30, 120)), actors=draw(st.sampled_from((3, 10)))
    )
    at = past.anchor
    now = at + draw(st.integers(0, 20)) * past.step
    date_to = draw(st.sampled_from(("", "now", (at + 10 * past.step).isoformat(), "-1d", "date")))
    if date_to == "date":
        date_to = (at + 5 * past.step).date().isoformat()
    date_from = draw(st.sampled_from(("", "", (at - 12 * past.step).isoformat())))
    target = draw(st.sampled_from(DEFINITIONS[1:]))
    breakdown = draw(st.sampled_from(("", "", "platform", "properties.ref")))
    request = RetentionRequest(
        model="product.events",
        target=target,
        returning=draw(st.sampled_from(DEFINITIONS)),
        period=period,
        intervals=draw(st.sampled_from((0, 1, 3, 10))),
        retention_type=draw(st.sampled_from(("", "first_time", "recurring"))),
        date_from=date_from,
        date_to=date_to,
        time_zone=zone,
        week_start=draw(st.sampled_from(("", "sunday"))),
        filters=draw(st.sampled_from(({}, {}, {"platform": "neq.ios"}, {"event": "neq.viewed"}))),
        breakdown=breakdown,
        breakdown_limit=draw(st.sampled_from((0, 1))) if breakdown else 0,
    )
    return request, past.rows, past.tenant, now


def assert_same(answer: RetentionAnswer, expected: list[ReferenceTable], context: Any) -> None:
    got = [(t.breakdown_value, t.is_other) for t in answer.tables]
    assert got == [(t.breakdown_value, t.is_other) for t in expected], context
    for mine, theirs in zip(answer.tables, expected, strict=True):
        assert len(mine.cohorts) == len(theirs.cohorts), context
        for a, b in zip(mine.cohorts, theirs.cohorts, strict=True):
            assert (a.start, a.size, a.counts) == (b.start, b.size, b.counts), (context, a, b)
            for x, y in zip(a.percentages, b.percentages, strict=True):
                assert (x is None) == (y is None), (context, a, b)
                assert x is None or y is None or math.isclose(x, y), (context, a, b)


async def run(
    histories: Histories, request: RetentionRequest, tenant: str, now: dt.datetime
) -> RetentionAnswer:
    plan = compile_retention(request, histories.catalog, tenant, now)
    assert_tenant_first(plan.compiled, tenant)
    result = await histories.backend.execute(
        plan.compiled, timeout_seconds=60, query_id=uuid.uuid4().hex
    )
    return assemble_retention(plan, result.table)


@ENGINE
@given(case=cases())
async def test_random_histories_equal_the_reference(histories: Histories, case: Any) -> None:
    request, rows, tenant, now = case
    note(f"request={request!r} now={now!r} tenant={tenant!r}")
    note(f"rows={rows!r}")
    await write(histories.backend, histories.catalog, histories.model, rows)
    if request.date_from and parse_date_bound(
        request.date_from, "dateFrom", now, request.time_zone or "UTC"
    ) >= range_end(request.date_to, now, request.time_zone or "UTC"):
        with pytest.raises(AnalyticsError) as caught:
            compile_retention(request, histories.catalog, tenant, now)
        assert caught.value.violations[0].field == "dateFrom"
        return
    answer = await run(histories, request, tenant, now)
    expected = reference_retention(request, rows, tenant, now, histories.model)
    assert_same(answer, expected, request)


async def test_a_cohort_table_by_hand(histories: Histories) -> None:
    """Four actors over four days, worked out by hand, first_time and recurring."""
    tenant = "by-hand"
    base: dict[str, Any] = {
        "tenant_id": tenant,
        "country": None,
        "plan": None,
        "revenue": None,
        "properties_keys": [],
        "properties_values": [],
        "_version": 1,
        "_is_deleted": 0,
    }
    noon = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    events = [
        # Actor 1: first-ever signup on 1 March, back on 2 and 4 March.
        (1, 0, "signed_up", "web"),
        (1, 1, "viewed", "web"),
        (1, 3, "viewed", "web"),
        # Actor 2: signs up on 2 March (twice: recurring cohorts 2 and 3 March), back on 3.
        (2, 1, "signed_up", "ios"),
        (2, 2, "signed_up", "ios"),
        (2, 2, "viewed", "ios"),
        # Actor 3: signed up long before: in no first_time cohort; recurring on 3 March.
        (3, -30, "signed_up", "web"),
        (3, 2, "signed_up", "web"),
    ]
    rows = [
        base
        | {
            "contact_id": actor,
            "event": name,
            "timestamp": noon + dt.timedelta(days=day),
            "platform": platform,
            "event_id": str(uuid.UUID(int=index + 1)),
        }
        for index, (actor, day, name, platform) in enumerate(events)
    ]
    model = histories.model
    await write(histories.backend, histories.catalog, model, rows)
    now = dt.datetime(2026, 3, 4, 18, tzinfo=dt.UTC)
    request = RetentionRequest(
        model="product.events",
        target=RetentionEvent("signed_up"),
        returning=RetentionEvent("viewed"),
        intervals=4,
        date_to="2026-03-04",
    )
    first_time = await run(histories, request, tenant, now)
    assert [(c.start, c.size, c.counts) for c in first_time.tables[0].cohorts] == [
        ("2026-03-01T00:00:00Z", 1, (1, 1, 0, 1)),
        ("2026-03-02T00:00:00Z", 1, (1, 1, 0, None)),
        ("2026-03-03T00:00:00Z", 0, (0, 0, None, None)),
        ("2026-03-04T00:00:00Z", 0, (0, None, None, None)),
    ]
    assert first_time.tables[0].cohorts[0].percentages == (100.0, 100.0, 0.0, 100.0)
    recurring = await run(
        histories, RetentionRequest(**{**vars(request), "retention_type": "recurring"}), tenant, now
    )
    assert [c.counts for c in recurring.tables[0].cohorts] == [
        (1, 1, 0, 1),
        (1, 1, 0, None),
        (2, 0, None, None),
        (0, None, None, None),
    ]
    by_platform = await run(
        histories,
        RetentionRequest(
            **{**vars(request), "retention_type": "recurring", "breakdown": "platform"}
        ),
        tenant,
        now,
    )
    assert [(t.breakdown_value, [c.size for c in t.cohorts]) for t in by_platform.tables] == [
        ("ios", [0, 1, 1, 0]),  # a tie (2 actors each) goes to the smaller value
        ("web", [1, 0, 1, 0]),
    ]
    for answer, kind in ((first_time, ""), (recurring, "recurring")):
        expected = reference_retention(
            RetentionRequest(**{**vars(request), "retention_type": kind}), rows, tenant, now, model
        )
        assert_same(answer, expected, kind)


@pytest.mark.parametrize("kind", ["first_time", "recurring"])
@pytest.mark.parametrize("breakdown", ["platform", "properties.ref"])
async def test_a_first_target_event_without_the_breakdown_field_counts_under_null(
    histories: Histories, breakdown: str, kind: str
) -> None:
    """The value is the first target event's even when it has none (found by a review against
    PostHog's scenarios: argMin skipped the null and took the day's next signup's value)."""
    tenant = f"null-first-{breakdown}-{kind}"
    base: dict[str, Any] = {
        "tenant_id": tenant,
        "event": "signed_up",
        "country": None,
        "plan": None,
        "revenue": None,
        "_version": 1,
        "_is_deleted": 0,
    }
    morning = dt.datetime(2026, 3, 2, 8, tzinfo=dt.UTC)
    events = [(1, 0, None, None), (1, 1, "web", "ads"), (2, 0, "ios", "mail")]
    rows = [
        base
        | {
            "contact_id": actor,
            "timestamp": morning + dt.timedelta(hours=hour),
            "platform": platform,
            "properties_keys": ["ref"] if ref else [],
            "properties_values": [ref] if ref else [],
            "event_id": str(uuid.UUID(int=index + 1)),
        }
        for index, (actor, hour, platform, ref) in enumerate(events)
    ]
    await write(histories.backend, histories.catalog, histories.model, rows)
    now = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
    request = RetentionRequest(
        model="product.events",
        target=RetentionEvent("signed_up"),
        intervals=1,
        date_to="2026-03-02",
        breakdown=breakdown,
        retention_type=kind,
    )
    answer = await run(histories, request, tenant, now)
    second = "ios" if breakdown == "platform" else "mail"
    assert [(t.breakdown_value, [c.size for c in t.cohorts]) for t in answer.tables] == [
        (second, [1]),
        (None, [1]),
    ]
    assert_same(answer, reference_retention(request, rows, tenant, now, histories.model), kind)


async def test_the_runner_answers_with_meta_and_checks_every_read(histories: Histories) -> None:
    """RetentionService: the answer of the by-hand data with meta; a related model's read
    permission is required when a filter or the breakdown reaches it."""
    now = dt.datetime(2026, 3, 4, 18, tzinfo=dt.UTC)
    service = RetentionService(
        histories.catalog, histories.backend, timeout_seconds=60, clock=lambda: now
    )
    reader = Principal("tester", "runner", frozenset({"product.events.read"}))
    base: dict[str, Any] = {
        "tenant_id": "runner",
        "platform": None,
        "country": None,
        "plan": None,
        "revenue": None,
        "properties_keys": [],
        "properties_values": [],
        "_version": 1,
        "_is_deleted": 0,
        "event": "signed_up",
    }
    rows = [
        base
        | {
            "contact_id": actor,
            "timestamp": dt.datetime(2026, 3, day, 9, tzinfo=dt.UTC),
            "event_id": str(uuid.UUID(int=1000 + index)),
        }
        for index, (actor, day) in enumerate([(1, 2), (1, 3), (2, 3)])
    ]
    await write(histories.backend, histories.catalog, histories.model, rows)
    request = RetentionRequest(
        model="events", target=RetentionEvent("signed_up"), intervals=2, date_to="2026-03-03"
    )
    outcome = await service.run(reader, request, remaining=None, rpc="Retention")
    assert [(c.start, c.size, c.counts) for c in outcome.answer.tables[0].cohorts] == [
        ("2026-03-02T00:00:00Z", 1, (1, 1)),
        ("2026-03-03T00:00:00Z", 1, (1, None)),
    ]
    assert outcome.stats.rows_scanned >= 3
    with pytest.raises(AnalyticsError) as caught:
        await service.run(
            reader,
            RetentionRequest(**{**vars(request), "breakdown": "contact.status"}),
            remaining=None,
            rpc="Retention",
        )
    assert caught.value.kind is ErrorKind.FORBIDDEN
