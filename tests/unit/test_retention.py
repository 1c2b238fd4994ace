"""compile_retention and compile_lifecycle without an engine: validation errors naming the field,
hostile values that never change the SQL nor reach it, the tenant condition first in every WHERE,
the cohorts and buckets a range makes, and the assembly of rows into answers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.catalog import Catalog
from service.errors import AnalyticsError, ErrorKind
from service.insights.lifecycle import assemble_lifecycle, compile_lifecycle
from service.insights.lifecycle_request import LifecycleRequest
from service.insights.retention import assemble_retention, compile_retention
from service.insights.retention_request import RetentionEvent, RetentionRequest
from tests.sql_shape import assert_tenant_first
from tests.strategies import HOSTILE_STRINGS

NOW = dt.datetime(2026, 4, 1, 12, tzinfo=dt.UTC)
TENANT = "acme"
SIGNED_UP = RetentionEvent("signed_up")
POISON = "\u2603poison"
COMPILE_ONLY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def refusal(compile_it: Any, catalog: Catalog, request: Any) -> tuple[str, str]:
    with pytest.raises(AnalyticsError) as caught:
        compile_it(request, catalog, TENANT, NOW)
    error = caught.value
    assert error.kind is ErrorKind.VALIDATION, error
    return error.violations[0].field, error.reason


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"target": RetentionEvent()}, "target", "EMPTY_EVENT_DEFINITION"),
        ({"period": "year"}, "period", "INVALID_PERIOD"),
        ({"period": "minute"}, "period", "INVALID_PERIOD"),
        ({"intervals": 65}, "intervals", "INVALID_VALUE"),
        ({"intervals": -1}, "intervals", "INVALID_VALUE"),
        ({"retention_type": "birth"}, "retentionType", "INVALID_VALUE"),
        ({"week_start": "friday"}, "weekStart", "INVALID_VALUE"),
        ({"time_zone": "Mars/Olympus"}, "timeZone", ""),
        ({"date_to": "tomorrow"}, "dateTo", "INVALID_DATE"),
        ({"date_from": "2026-05-01"}, "dateFrom", "INVALID_DATE_RANGE"),
        ({"date_from": "2020-01-01", "period": "day"}, "dateFrom", "TOO_MANY_COHORTS"),
        ({"breakdown": "timestamp"}, "breakdown", "INVALID_BREAKDOWN"),
        ({"breakdown": "nope"}, "breakdown", "UNKNOWN_FIELD"),
        ({"breakdown_limit": 3}, "breakdownLimit", ""),
        ({"breakdown": "platform", "breakdown_limit": 1001}, "breakdownLimit", "INVALID_VALUE"),
        ({"filters": {"nope": "eq.1"}}, "filters.nope", "UNKNOWN_FIELD"),
        (
            {"target": RetentionEvent("x", {"revenue": "eq.abc"})},
            "target.filters.revenue",
            "INVALID_VALUE",
        ),
        (
            {"returning": RetentionEvent(filters={"platform": "bogus"})},
            "returning.filters.platform",
            "INVALID_FILTER",
        ),
        ({"model": "crm.deals"}, "model", "NOT_AN_EVENT_MODEL"),
    ],
)
def test_bad_retention_requests_are_refused_naming_the_field(
    catalog: Catalog, changes: dict[str, Any], field: str, reason: str
) -> None:
    base: dict[str, Any] = {"model": "product.events", "target": SIGNED_UP}
    request = RetentionRequest(**(base | changes))
    got_field, got_reason = refusal(compile_retention, catalog, request)
    assert got_field == field
    if reason:
        assert got_reason == reason


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"period": "quarter"}, "period", "INVALID_PERIOD"),
        ({"week_start": "x"}, "weekStart", "INVALID_VALUE"),
        ({"date_from": "2026-05-01"}, "dateFrom", "INVALID_DATE_RANGE"),
        ({"date_from": "2000-01-01", "period": "hour"}, "dateFrom", "INVALID_DATE_RANGE"),
        ({"date_from": "2025-01-01", "period": "hour"}, "period", "TOO_MANY_BUCKETS"),
        ({"filters": {"nope": "eq.1"}}, "filters.nope", "UNKNOWN_FIELD"),
        ({"model": "crm.deals"}, "model", "NOT_AN_EVENT_MODEL"),
    ],
)
def test_bad_lifecycle_requests_are_refused_naming_the_field(
    catalog: Catalog, changes: dict[str, Any], field: str, reason: str
) -> None:
    request = LifecycleRequest(**({"model": "product.events"} | changes))
    got_field, got_reason = refusal(compile_lifecycle, catalog, request)
    assert got_field == field
    if reason:
        assert got_reason == reason


def test_cohorts_count_back_from_the_period_holding_date_to(catalog: Catalog) -> None:
    request = RetentionRequest(
        model="product.events",
        target=SIGNED_UP,
        period="week",
        intervals=3,
        date_to="2026-03-29",  # a Sunday: its week starts on Monday 23 March
        time_zone="Europe/Berlin",
    )
    plan = compile_retention(request, catalog, TENANT, NOW)
    assert [c.label() for c in plan.cohorts] == [
        "2026-03-09T00:00:00+01:00",
        "2026-03-16T00:00:00+01:00",
        "2026-03-23T00:00:00+01:00",
    ]
    sunday = compile_retention(
        RetentionRequest(**{**vars(request), "week_start": "sunday"}), catalog, TENANT, NOW
    )
    assert sunday.cohorts[-1].label() == "2026-03-29T00:00:00+01:00"  # the change is at 02:00
    assert sunday.observable == (3, 2, 1)
    # From dateFrom: every period from the one holding it; now cuts what is observable.
    ranged = compile_retention(
        RetentionRequest(
            model="product.events",
            target=SIGNED_UP,
            period="day",
            intervals=4,
            date_from="2026-03-30T12:00:00Z",
            date_to="2026-04-04",
        ),
        catalog,
        TENANT,
        NOW,
    )
    assert ranged.cohorts[0].label() == "2026-03-30T00:00:00Z"
    assert len(ranged.cohorts) == 6
    # 1 April (now) is observable; 2 April onwards starts after now.
    assert ranged.observable == (3, 2, 1, 1, 1, 1)


@st.composite
def hostile_retention(draw: st.DrawFn) -> RetentionRequest:
    def text() -> str:
        return draw(st.sampled_from(HOSTILE_STRINGS)) + POISON

    return RetentionRequest(
        model="product.events",
        target=RetentionEvent(text(), {"platform": f"eq.{text()}"}),
        returning=RetentionEvent(text(), {f"properties.{text()}": f"like.{text()}"}),
        filters={"plan": f"neq.{text()}"},
        breakdown=f"properties.{text()}",
        breakdown_limit=draw(st.integers(1, 1000)),
        intervals=draw(st.integers(1, 64)),
        date_to=draw(st.sampled_from(("", "-3d", "2026-01-01", "2025-12-01T10:00:00Z"))),
        period=draw(st.sampled_from(("hour", "day", "week", "month"))),
        time_zone=draw(st.sampled_from(("", "Europe/Berlin", "Australia/Lord_Howe"))),
        week_start=draw(st.sampled_from(("", "sunday"))),
    )


@COMPILE_ONLY
@given(
    first=hostile_retention(),
    second=hostile_retention(),
    tenant=st.sampled_from(HOSTILE_STRINGS),
    recurring=st.booleans(),
)
def test_hostile_retention_values_never_change_the_sql_nor_reach_it(
    catalog: Catalog,
    first: RetentionRequest,
    second: RetentionRequest,
    tenant: str,
    recurring: bool,
) -> None:
    kind = "recurring" if recurring else "first_time"
    plans = [
        compile_retention(
            RetentionRequest(**{**vars(request), "retention_type": kind}),
            catalog,
            tenant or "t",
            NOW,
        )
        for request in (first, second)
    ]
    # Only the period (and a Sunday week) picks other SQL: the bucket key's function.
    if (first.period, first.week_start) == (second.period, second.week_start):
        assert plans[0].compiled.sql == plans[1].compiled.sql
    for plan in plans:
        assert POISON not in plan.compiled.sql
        assert_tenant_first(plan.compiled, tenant or "t")


@COMPILE_ONLY
@given(
    event=st.sampled_from(HOSTILE_STRINGS),
    value=st.sampled_from(HOSTILE_STRINGS),
    tenant=st.sampled_from(HOSTILE_STRINGS),
    date_from=st.sampled_from(("-3d", "-1w", "2026-03-01", "2026-03-01T10:00:00Z")),
)
def test_hostile_lifecycle_values_never_change_the_sql_nor_reach_it(
    catalog: Catalog, event: str, value: str, tenant: str, date_from: str
) -> None:
    def plan_for(name: str, text: str) -> Any:
        request = LifecycleRequest(
            model="product.events",
            event=name + POISON,
            filters={"platform": f"neq.{text}{POISON}", "contact.country": f"eq.{text}{POISON}"},
            date_from=date_from,
            time_zone="America/New_York",
        )
        return compile_lifecycle(request, catalog, tenant or "t", NOW)

    plans = [plan_for(event, value), plan_for("x", "y")]
    assert plans[0].compiled.sql == plans[1].compiled.sql
    for plan in plans:
        assert POISON not in plan.compiled.sql
        assert_tenant_first(plan.compiled, tenant or "t")
        assert [m.qualified_name for m in plan.compiled.joined] == ["crm.contacts"]


def test_related_fields_join_with_their_own_tenant_condition(catalog: Catalog) -> None:
    request = RetentionRequest(
        model="product.events",
        target=RetentionEvent("signed_up", {"contact.country": "eq.DE"}),
        breakdown="contact.status",
    )
    plan = compile_retention(request, catalog, TENANT, NOW)
    assert_tenant_first(plan.compiled, TENANT)
    assert plan.compiled.sql.count(" WHERE ") == 2
    assert [m.qualified_name for m in plan.compiled.joined] == ["crm.contacts"]


def test_assemble_retention_ranks_fills_and_nulls(catalog: Catalog) -> None:
    request = RetentionRequest(
        model="product.events",
        target=SIGNED_UP,
        intervals=3,
        date_to="2026-03-03",
        breakdown="platform",
        breakdown_limit=1,
    )
    plan = compile_retention(request, catalog, TENANT, NOW)
    rows = [  # (cohort, interval, actors, rank, value)
        (1, 0, 4, 1, "web"),
        (1, 2, 1, 1, "web"),
        (2, 0, 2, 0, None),
        (2, 1, 1, 0, None),
    ]
    table = pa.table({f"c{i}": [row[i] for row in rows] for i in range(5)})
    answer = assemble_retention(plan, table)
    got = [
        (t.breakdown_value, t.is_other, [(c.size, c.counts, c.percentages) for c in t.cohorts])
        for t in answer.tables
    ]
    assert got == [
        (
            "web",
            False,
            [
                (4, (4, 0, 1), (100.0, 0.0, 25.0)),
                (0, (0, 0, None), (0.0, 0.0, None)),
                (0, (0, None, None), (0.0, None, None)),
            ],
        ),
        (
            "Other",
            True,
            [
                (0, (0, 0, 0), (0.0, 0.0, 0.0)),
                (2, (2, 1, None), (100.0, 50.0, None)),
                (0, (0, None, None), (0.0, None, None)),
            ],
        ),
    ]


def test_assemble_lifecycle_zero_fills_and_negates_dormant(catalog: Catalog) -> None:
    request = LifecycleRequest(model="product.events", date_from="2026-03-01", date_to="2026-03-03")
    plan = compile_lifecycle(request, catalog, TENANT, NOW)
    rows = [(1, 1, 3), (2, 4, 2), (3, 2, 1)]  # (bucket, status, actors)
    table = pa.table({f"c{i}": [row[i] for row in rows] for i in range(3)})
    answer = assemble_lifecycle(plan, table)
    assert answer.buckets == (
        "2026-03-01T00:00:00Z",
        "2026-03-02T00:00:00Z",
        "2026-03-03T00:00:00Z",
    )
    assert {line.status: line.values for line in answer.lines} == {
        "new": (3, 0, 0),
        "returning": (0, 0, 1),
        "resurrecting": (0, 0, 0),
        "dormant": (0, -2, 0),
    }
