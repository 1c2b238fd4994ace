"""compile_funnel without an engine: validation errors naming the field, hostile values that never
change the SQL nor reach it, the tenant condition first in every WHERE, and assemble_funnel."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.catalog import Catalog
from service.errors import AnalyticsError, ErrorKind
from service.insights.funnel_request import FunnelExclusion, FunnelRequest, FunnelStep
from service.insights.funnels import FunnelPlan, assemble_funnel, compile_funnel, parse_window
from tests.sql_shape import assert_tenant_first as assert_shared_tenant_first
from tests.strategies import HOSTILE_STRINGS

NOW = dt.datetime(2026, 4, 1, 12, tzinfo=dt.UTC)
TENANT = "acme"
TWO = (FunnelStep("signed_up"), FunnelStep("purchased"))
COMPILE_ONLY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def assert_tenant_first(plan: FunnelPlan, tenant: str) -> None:
    """Every WHERE of the funnel's query begins with the tenant condition."""
    assert_shared_tenant_first(plan.compiled, tenant)


def refusal(catalog: Catalog, request: FunnelRequest) -> tuple[str, str]:
    with pytest.raises(AnalyticsError) as caught:
        compile_funnel(request, catalog, TENANT, NOW)
    error = caught.value
    assert error.kind is ErrorKind.VALIDATION, error
    return error.violations[0].field, error.reason


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"steps": TWO[:1]}, "steps", "INVALID_STEP_COUNT"),
        ({"steps": ()}, "steps", "INVALID_STEP_COUNT"),
        ({"steps": TWO * 10 + TWO[:1]}, "steps", "INVALID_STEP_COUNT"),
        ({"window": "0d"}, "window", "INVALID_WINDOW"),
        ({"window": "-1h"}, "window", "INVALID_WINDOW"),
        ({"window": "366d"}, "window", "INVALID_WINDOW"),
        ({"window": "53w"}, "window", "INVALID_WINDOW"),
        ({"window": "14 days"}, "window", "INVALID_WINDOW"),
        ({"steps": (TWO[0], FunnelStep())}, "steps[1]", "EMPTY_STEP"),
        (
            {"steps": (TWO[0], FunnelStep("x", filters={"nope": "eq.1"}))},
            "steps[1].filters.nope",
            "UNKNOWN_FIELD",
        ),
        (
            {"steps": (FunnelStep("x", filters={"revenue": "eq.abc"}), TWO[1])},
            "steps[0].filters.revenue",
            "INVALID_VALUE",
        ),
        (
            {"steps": (TWO[0], FunnelStep("x", filters={"platform": "bogus"}))},
            "steps[1].filters.platform",
            "INVALID_FILTER",
        ),
        ({"filters": {"nope": "eq.1"}}, "filters.nope", "UNKNOWN_FIELD"),
        ({"steps": (TWO[0], FunnelStep("x", label="l" * 201))}, "steps[1].label", ""),
        ({"date_from": "tomorrow"}, "dateFrom", "INVALID_DATE"),
        ({"model": "crm.deals"}, "steps[0].event", "NOT_AN_EVENT_MODEL"),
        ({"order": "sorted"}, "order", "INVALID_ORDER"),
        (
            {"order": "unordered", "exclusions": (FunnelExclusion("x"),)},
            "exclusions",
            "INVALID_EXCLUSION",
        ),
        ({"exclusions": (FunnelExclusion("x"),) * 11}, "exclusions", "INVALID_EXCLUSION"),
        ({"exclusions": (FunnelExclusion(),)}, "exclusions[0]", "EMPTY_STEP"),
        (
            {"exclusions": (FunnelExclusion("x", from_step=2, to_step=2),)},
            "exclusions[0].fromStep",
            "INVALID_EXCLUSION",
        ),
        (
            {"exclusions": (FunnelExclusion("x", from_step=1, to_step=3),)},
            "exclusions[0].fromStep",
            "INVALID_EXCLUSION",
        ),
        (
            {"exclusions": (FunnelExclusion("x", filters={"nope": "eq.1"}),)},
            "exclusions[0].filters.nope",
            "UNKNOWN_FIELD",
        ),
        ({"breakdown": "nope"}, "breakdown", "UNKNOWN_FIELD"),
        ({"breakdown": "timestamp"}, "breakdown", "INVALID_BREAKDOWN"),
        (
            {"breakdown": "platform", "breakdown_attribution": "first"},
            "breakdownAttribution",
            "INVALID_VALUE",
        ),
        (
            {"breakdown": "platform", "breakdown_attribution": "step"},
            "breakdownStep",
            "INVALID_VALUE",
        ),
        (
            {"breakdown": "platform", "breakdown_attribution": "step", "breakdown_step": 3},
            "breakdownStep",
            "INVALID_VALUE",
        ),
        ({"breakdown": "platform", "breakdown_step": 1}, "breakdownStep", ""),
        ({"breakdown_limit": 5}, "breakdownLimit", ""),
        ({"breakdown_attribution": "last_touch"}, "breakdownAttribution", ""),
        ({"breakdown": "platform", "breakdown_limit": 1001}, "breakdownLimit", "INVALID_VALUE"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(
    catalog: Catalog, changes: dict[str, Any], field: str, reason: str
) -> None:
    request = FunnelRequest(**({"model": "product.events", "steps": TWO} | changes))
    got_field, got_reason = refusal(catalog, request)
    assert got_field == field
    if reason:
        assert got_reason == reason


def test_windows_up_to_a_year_are_accepted() -> None:
    assert parse_window("") == dt.timedelta(days=14)
    assert parse_window("365d") == dt.timedelta(days=365)
    assert parse_window("52w") == dt.timedelta(weeks=52)
    assert parse_window("1s") == dt.timedelta(seconds=1)


def test_twenty_steps_compile_with_the_tenant_first(catalog: Catalog) -> None:
    request = FunnelRequest(model="product.events", steps=TWO * 10)
    plan = compile_funnel(request, catalog, TENANT, NOW)
    assert_tenant_first(plan, TENANT)
    assert len(plan.labels) == 20


def test_related_filters_join_with_their_own_tenant_condition(catalog: Catalog) -> None:
    request = FunnelRequest(
        model="product.events",
        steps=(FunnelStep("signed_up", filters={"contact.country": "eq.DE"}), TWO[1]),
        filters={"contact.status": "neq.x"},
    )
    plan = compile_funnel(request, catalog, TENANT, NOW)
    assert_tenant_first(plan, TENANT)
    # The scan and its join's, in each of the ordered funnel's two passes.
    assert plan.compiled.sql.count(" WHERE ") == 4
    assert [m.qualified_name for m in plan.compiled.joined] == ["crm.contacts"]


@st.composite
def hostile_requests(draw: st.DrawFn) -> FunnelRequest:
    def text() -> str:
        return draw(st.sampled_from(HOSTILE_STRINGS)) + POISON

    return FunnelRequest(
        model="product.events",
        steps=(
            FunnelStep(text(), filters={"platform": f"eq.{text()}"}, label=text()),
            FunnelStep(text(), filters={f"properties.{text()}": f"like.{text()}"}),
            FunnelStep(text()),
        ),
        filters={"or": f"(plan.eq.{_quoted(text())},country.in.({_quoted(text())}))"},
        date_from=draw(st.sampled_from(("-7d", "2026-01-01", "2025-12-01T10:00:00Z"))),
        window=draw(st.sampled_from(("", "1h", "365d"))),
        order="strict",
        exclusions=(
            FunnelExclusion(text(), filters={f"properties.{text()}": f"eq.{text()}"}, to_step=2),
        ),
        breakdown=f"properties.{text()}",
        breakdown_limit=draw(st.integers(1, 1000)),
        breakdown_attribution="step",
        breakdown_step=2,
    )


POISON = "\u2603poison"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@COMPILE_ONLY
@given(first=hostile_requests(), second=hostile_requests(), tenant=st.sampled_from(HOSTILE_STRINGS))
def test_hostile_values_never_change_the_sql_nor_reach_it(
    catalog: Catalog, first: FunnelRequest, second: FunnelRequest, tenant: str
) -> None:
    plans = [compile_funnel(request, catalog, tenant or "t", NOW) for request in (first, second)]
    assert plans[0].compiled.sql == plans[1].compiled.sql
    for plan in plans:
        assert POISON not in plan.compiled.sql
        assert_tenant_first(plan, tenant or "t")


def test_assemble_figures(catalog: Catalog) -> None:
    request = FunnelRequest(
        model="product.events", steps=(*TWO, FunnelStep(filters={"platform": "eq.web"}))
    )
    plan = compile_funnel(request, catalog, TENANT, NOW)
    row = {"c0": 10, "c1": 4, "c2": 0, "s1": 4_000_000, "q1": 500_000.0, "s2": 0, "q2": None}
    table = pa.table({alias: [value] for alias, value in row.items()})
    answer = assemble_funnel(plan, table)
    got = [
        (
            s.label,
            s.actors,
            s.conversion_from_first,
            s.conversion_from_previous,
            s.drop_off,
            s.median_seconds,
            s.average_seconds,
        )
        for s in answer.steps
    ]
    assert got == [
        ("signed_up", 10, 1.0, 1.0, 6, None, None),
        ("purchased", 4, 0.4, 0.4, 4, 0.5, 1.0),
        ("step 3", 0, 0.0, 0.0, 0, None, None),
    ]
