"""Compiled SQL with dotted paths: a tenant condition first in every subquery, values as
parameters only, and the relations of the demo catalog as documented."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.catalog import MAX_RELATION_HOPS
from service.errors import AnalyticsError
from service.insights.trend_request import TrendRequest, TrendSeries
from service.insights.trends import compile_trend
from service.query.compiler import compile_query
from service.query.request import MetricRequest, QueryRequest
from tests.relation_models import CATALOG
from tests.sql_shape import assert_tenant_first
from tests.strategies import hostile_text, quote_value


def _request(value: str) -> QueryRequest:
    return QueryRequest(
        model="deals",
        group_by="contact.country,contact.account.plan",
        metrics=(MetricRequest("sum", "amount"), MetricRequest("count_distinct", "contact.id")),
        filters={
            "contact.status": f"eq.{value}",
            "contact.account.region": f"in.({quote_value(value)},x)",
            "or": f"(stage.eq.{quote_value(value)},contact.country.neq.{quote_value(value)})",
        },
        order="contact.country.desc,sum_amount.asc",
    )


@given(value=hostile_text(), tenant=hostile_text().filter(bool))
def test_hostile_values_never_change_the_sql_and_every_read_is_fenced(
    value: str, tenant: str
) -> None:
    plain = compile_query(_request("plain"), CATALOG, "tenant")
    hostile = compile_query(_request(value), CATALOG, tenant)
    assert hostile.sql == plain.sql
    assert_tenant_first(hostile, tenant)
    # three reads (deals, contacts, accounts), each with FINAL and its own guards
    assert hostile.sql.count(" FINAL ") == 3
    assert hostile.sql.count("t.`_is_deleted` = 0") == 3
    assert "t.`deleted_at` IS NULL" in hostile.sql
    assert "NOT ifNull(t.`archived`, false)" in hostile.sql
    assert [m.qualified_name for m in hostile.joined] == ["sales.contacts", "sales.accounts"]


def test_a_trend_reads_every_related_model_behind_its_own_fence() -> None:
    request = TrendRequest(
        model="sales.events",
        series=(
            TrendSeries(aggregate="unique_actors", filters={"contact.status": "eq.active"}),
            TrendSeries(aggregate="count_distinct", field="contact.account.id"),
        ),
        date_from="2026-01-01",
        date_to="2026-02-01",
        breakdown="contact.account.plan",
        compare="previous",
        display="cumulative",
    )
    plan = compile_trend(request, CATALOG, "acme", dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    assert len(plan.queries) > 1
    for query in plan.queries:
        assert_tenant_first(query.compiled, "acme")
        assert query.compiled.tables == ("sales_events", "sales_contacts", "sales_accounts")


def test_only_the_relations_a_request_names_are_joined() -> None:
    assert compile_query(QueryRequest(model="deals", group_by="stage"), CATALOG, "a").joined == ()
    one = compile_query(
        QueryRequest(model="deals", filters={"contact.status": "eq.x"}), CATALOG, "a"
    )
    assert one.tables == ("sales_deals", "sales_contacts")
    assert "sales_accounts" not in one.sql


def test_a_path_may_follow_at_most_the_documented_number_of_relations() -> None:
    assert MAX_RELATION_HOPS == 2
    compile_query(QueryRequest(model="deals", group_by="contact.account.plan"), CATALOG, "a")


def test_the_date_field_of_a_trend_is_the_models_own() -> None:
    request = TrendRequest(model="deals", date_field="contact.deleted_at", date_from="-7d")
    with pytest.raises(AnalyticsError) as caught:
        compile_trend(request, CATALOG, "a", dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    assert caught.value.message.startswith("dateField: 'contact.deleted_at' is a related model")


def test_the_demo_catalog_relates_deals_invoices_and_events_to_contacts() -> None:
    from service.catalog import load_catalog
    from service.settings import DEFAULT_CATALOG

    demo = load_catalog(DEFAULT_CATALOG)
    for module, name, relation, field in (
        ("crm", "deals", "contact", "contact_id"),
        ("billing", "invoices", "customer", "customer_id"),
        ("product", "events", "contact", "contact_id"),
    ):
        found = demo.models[(module, name)].relations[relation]
        assert found.field == field
        assert found.target.qualified_name == "crm.contacts"
        assert found.target_key == "id"


@given(st.sampled_from(["contact.country", "contact.account.plan"]))
def test_order_takes_dotted_keys_with_modifiers(key: str) -> None:
    compiled = compile_query(
        QueryRequest(model="deals", group_by=key, order=f"{key}.desc.nullslast"), CATALOG, "a"
    )
    assert "ORDER BY k0 DESC NULLS LAST" in compiled.sql
