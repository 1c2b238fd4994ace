"""Lifecycle on the embedded engine, against the independent evaluator of
tests/lifecycle_reference.py.

Each hypothesis example writes a random history (tests/actor_events.py: two tenants, one
hostile, events around a change of offset, re-sent and erased events, first-ever events long
before the range) and asks a random lifecycle (period, week start, time zone, range, event name,
filters); the answer must be what the reference computes, and every WHERE of its query starts
with the tenant condition.
"""

from __future__ import annotations

import datetime as dt
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
from service.insights.lifecycle import LifecycleAnswer, assemble_lifecycle, compile_lifecycle
from service.insights.lifecycle_request import LifecycleRequest
from service.insights.lifecycle_service import LifecycleService
from service.schema import all_ddl
from tests.actor_events import ANCHORS, HOSTILE, history, write
from tests.conftest import catalog_in_database, unique_database
from tests.lifecycle_reference import reference_lifecycle
from tests.sql_shape import assert_tenant_first
from tests.trend_reference import Rejected

pytestmark = pytest.mark.integration

ENGINE = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
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
    mine = catalog_in_database(catalog, unique_database("lifecycle"))
    for statement in all_ddl(mine):
        await embedded_backend.command(statement)
    return Histories(embedded_backend, mine)


@st.composite
def cases(draw: st.DrawFn) -> tuple[LifecycleRequest, list[dict[str, Any]], str, dt.datetime]:
    zone = draw(st.sampled_from(tuple(ANCHORS)))
    period = draw(st.sampled_from(("hour", "day", "week", "month")))
    # A seeded generator, not st.randoms(): its shrunk draws (all zeros) make degenerate histories.
    rng = random.Random(draw(st.integers(0, 2**32)))
    past = history(
        rng, zone, period, draw(st.integers(30, 120)), actors=draw(st.sampled_from((3, 10)))
    )
    at = past.anchor
    now = at + draw(st.integers(0, 20)) * past.step
    date_from = (at - draw(st.integers(1, 14)) * past.step).isoformat()
    date_to = draw(st.sampled_from(("", (at + 8 * past.step).isoformat(), "date")))
    if date_to == "date":
        date_to = (at + 5 * past.step).date().isoformat()
    request = LifecycleRequest(
        model="product.events",
        event=draw(st.sampled_from(("", "", "viewed", "signed_up"))),
        filters=draw(
            st.sampled_from(({}, {}, {"platform": "neq.ios"}, {"properties.ref": f"neq.{HOSTILE}"}))
        ),
        period=period,
        date_from=date_from,
        date_to=date_to,
        time_zone=zone,
        week_start=draw(st.sampled_from(("", "sunday"))),
    )
    return request, past.rows, past.tenant, now


async def run(
    histories: Histories, request: LifecycleRequest, tenant: str, now: dt.datetime
) -> LifecycleAnswer:
    plan = compile_lifecycle(request, histories.catalog, tenant, now)
    assert_tenant_first(plan.compiled, tenant)
    result = await histories.backend.execute(
        plan.compiled, timeout_seconds=60, query_id=uuid.uuid4().hex
    )
    return assemble_lifecycle(plan, result.table)


def lines_of(answer: LifecycleAnswer) -> dict[str, list[int]]:
    return {line.status: list(line.values) for line in answer.lines}


@ENGINE
@given(case=cases())
async def test_random_histories_equal_the_reference(histories: Histories, case: Any) -> None:
    request, rows, tenant, now = case
    note(f"request={request!r} now={now!r} tenant={tenant!r}")
    note(f"rows={rows!r}")
    await write(histories.backend, histories.catalog, histories.model, rows)
    try:
        buckets, lines = reference_lifecycle(request, rows, tenant, now, histories.model)
    except Rejected as rejected:
        refused = rejected.field
    else:
        refused = ""
    if refused:
        with pytest.raises(AnalyticsError) as caught:
            compile_lifecycle(request, histories.catalog, tenant, now)
        assert caught.value.violations[0].field == refused
        return
    answer = await run(histories, request, tenant, now)
    assert list(answer.buckets) == buckets, request
    assert lines_of(answer) == lines, request


async def test_statuses_by_hand(histories: Histories) -> None:
    """Four actors over four days (and the day before), worked out by hand."""
    tenant = "by-hand"
    base: dict[str, Any] = {
        "tenant_id": tenant,
        "event": "viewed",
        "platform": None,
        "country": None,
        "plan": None,
        "revenue": None,
        "properties_keys": [],
        "properties_values": [],
        "_version": 1,
        "_is_deleted": 0,
    }
    noon = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    active = [(1, 0), (1, 1), (1, 3), (2, 1), (2, 2), (3, -10), (3, 2), (4, -1)]
    rows = [
        base
        | {
            "contact_id": actor,
            "timestamp": noon + dt.timedelta(days=day),
            "event_id": str(uuid.UUID(int=index + 1)),
        }
        for index, (actor, day) in enumerate(active)
    ]
    await write(histories.backend, histories.catalog, histories.model, rows)
    request = LifecycleRequest(
        model="product.events", event="viewed", date_from="2026-03-01", date_to="2026-03-04"
    )
    now = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
    answer = await run(histories, request, tenant, now)
    assert answer.buckets == (
        "2026-03-01T00:00:00Z",
        "2026-03-02T00:00:00Z",
        "2026-03-03T00:00:00Z",
        "2026-03-04T00:00:00Z",
    )
    assert lines_of(answer) == {
        "new": [1, 1, 0, 0],  # actor 1 on the 1st, actor 2 on the 2nd
        "returning": [0, 1, 1, 0],  # actor 1 on the 2nd, actor 2 on the 3rd
        "resurrecting": [0, 0, 1, 1],  # actor 3 (first seen in February), actor 1 on the 4th
        "dormant": [-1, 0, -1, -2],  # actor 4 (active the day before the range), 1, then 2 and 3
    }
    assert lines_of(answer) == reference_lifecycle(request, rows, tenant, now, histories.model)[1]


async def test_the_runner_answers_and_checks_every_read(histories: Histories) -> None:
    """LifecycleService: an answer for a reader of the model; a filter on a related model needs
    that model's read permission too."""
    now = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
    service = LifecycleService(
        histories.catalog, histories.backend, timeout_seconds=60, clock=lambda: now
    )
    reader = Principal("tester", "nobody-here", frozenset({"product.events.read"}))
    request = LifecycleRequest(model="events", date_from="2026-03-01", date_to="2026-03-02")
    outcome = await service.run(reader, request, remaining=None, rpc="Lifecycle")
    assert outcome.answer.buckets == ("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z")
    assert all(line.values == (0, 0) for line in outcome.answer.lines)
    with pytest.raises(AnalyticsError) as caught:
        await service.run(
            reader,
            LifecycleRequest(**{**vars(request), "filters": {"contact.country": "eq.DE"}}),
            remaining=None,
            rpc="Lifecycle",
        )
    assert caught.value.kind is ErrorKind.FORBIDDEN
