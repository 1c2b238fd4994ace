"""The embedded engine's answers against the independent reference evaluator.

A small demo dataset (every row version, soft deletes, tombstones, hostile strings) is loaded
once into its own database; every request is compiled, run on chDB and compared with what
``tests.reference`` computes from the dataset's current rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow.compute as pc
import pytest

from service.api import convert
from service.backends.base import QueryResult
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, FieldType, load_catalog
from service.demo.generator import (
    DELETED_COLUMN,
    DemoDataset,
    current_rows,
    generate_dataset,
)
from service.demo.loader import (
    dataset_fingerprint_loaded,
    ensure_demo_loaded,
    load_dataset,
)
from service.errors import AnalyticsError
from service.query.compiler import CompiledQuery, OutputColumn, compile_query
from service.query.request import MetricRequest, QueryRequest
from service.settings import DEFAULT_CATALOG
from tests.conftest import catalog_in_database, unique_database
from tests.reference import assert_results_equal, evaluate, result_dicts

pytestmark = pytest.mark.integration

SEED = 11
ROWS = 30_000
BATCH_ROWS = 3_000
TENANT = "acme"
CONTACTS, DEALS, INVOICES = "crm.contacts", "crm.deals", "billing.invoices"
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
INTERVALS = ("minute", "hour", "day", "week", "month", "quarter", "year")


@dataclass
class Loaded:
    backend: EmbeddedBackend
    catalog: Catalog
    dataset: DemoDataset
    current: dict[str, list[dict[str, Any]]]
    progress: list[tuple[str, int, int]]


@pytest.fixture(scope="module")
async def loaded(embedded_backend: EmbeddedBackend, catalog: Catalog) -> Loaded:
    dataset = generate_dataset(catalog, seed=SEED, rows=ROWS)
    test_catalog = catalog_in_database(catalog, unique_database("engine_results"))
    progress: list[tuple[str, int, int]] = []
    await load_dataset(
        embedded_backend,
        test_catalog,
        dataset,
        lambda *report: progress.append(report),
        batch_rows=BATCH_ROWS,
    )
    current = {name: current_rows(dataset, name) for name in dataset.tables}
    return Loaded(embedded_backend, test_catalog, dataset, current, progress)


def q(
    model: str,
    *,
    metrics: Iterable[tuple[str, ...]] = (),
    filters: Mapping[str, str] | None = None,
    **fields: Any,
) -> QueryRequest:
    """A request; metrics as (aggregate[, field[, alias]]) tuples."""
    return QueryRequest(
        model=model,
        metrics=tuple(MetricRequest(*metric) for metric in metrics),
        filters=dict(filters or {}),
        **fields,
    )


async def run(
    loaded: Loaded, request: QueryRequest, tenant: str = TENANT
) -> tuple[CompiledQuery, QueryResult]:
    compiled = compile_query(request, loaded.catalog, tenant)
    result = await loaded.backend.execute(
        compiled, timeout_seconds=30, query_id=f"test-{uuid.uuid4().hex}"
    )
    return compiled, result


async def check(
    loaded: Loaded, request: QueryRequest, tenant: str = TENANT
) -> list[dict[str, Any]]:
    """Run ``request`` and assert the engine's rows equal the reference's; return them."""
    compiled, result = await run(loaded, request, tenant)
    actual = result_dicts(result.table, compiled.columns)
    rows = loaded.current[compiled.model.qualified_name]
    expected = evaluate(request, compiled.model, tenant, rows)
    assert_results_equal(actual, expected, context=repr(request))
    return actual


# --- the requests ----------------------------------------------------------------------------

DESIGN_EXAMPLE = q(
    "deals",
    aggregate="sum",
    field="amount",
    group_by="created_at",
    group_by_interval="day",
    filters={
        "stage": "eq.closed_won",
        "created_at": "gte.2026-01-01T00:00:00Z",
        "deleted_at": "is.null",
    },
    metrics=[("count",), ("avg", "amount")],
    order="created_at.asc",
    limit=100,
)

# Per model: the field to group filter probes by and the metrics they report.
PROBES = {
    CONTACTS: ("status", [("count",), ("sum", "lifetime_value"), ("avg", "score")]),
    DEALS: ("stage", [("count",), ("sum", "amount"), ("max", "closed_at")]),
    INVOICES: ("status", [("count",), ("sum", "total"), ("min", "due_date")]),
}


def probe(model: str, filters: Mapping[str, str], time_zone: str = "") -> QueryRequest:
    group_by, metrics = PROBES[model]
    return q(model, group_by=group_by, metrics=metrics, filters=filters, time_zone=time_zone)


def aggregate_cases(catalog: Catalog) -> list[Any]:
    """Every aggregate on every field it applies to, ungrouped and grouped."""
    cases = []
    groups = {CONTACTS: "country", DEALS: "currency", INVOICES: "currency"}
    for model in catalog.replicated_models():
        for spec in model.fields.values():
            metrics: list[tuple[str, ...]] = [("count", spec.name), ("count_distinct", spec.name)]
            if spec.type.is_numeric:
                metrics += [("sum", spec.name), ("avg", spec.name)]
                metrics += [(f"p{level}", spec.name) for level in (1, 25, 50, 90, 99)]
            if spec.type.is_ordered and spec.type is not FieldType.UUID:
                metrics += [("min", spec.name), ("max", spec.name)]
            name = f"{model.name}.{spec.name}"
            cases.append(pytest.param(q(model.name, metrics=metrics), id=f"agg-{name}"))
            grouped = q(model.name, metrics=metrics, group_by=groups[model.qualified_name])
            cases.append(pytest.param(grouped, id=f"agg-{name}-grouped"))
    return cases


GROUPING_CASES = [
    pytest.param(q("deals"), id="bare-count"),
    pytest.param(q("deals", aggregate="count"), id="count-aggregate"),
    pytest.param(q("deals", field="title"), id="field-without-aggregate"),
    pytest.param(q("contacts", aggregate="avg", field="score", group_by="status"), id="avg"),
    pytest.param(
        q("deals", metrics=[("sum", "amount", "revenue"), ("count", "", "n")], group_by="stage"),
        id="aliases",
    ),
    pytest.param(q("deals", group_by="stage,currency"), id="two-keys"),
    pytest.param(
        q("contacts", group_by="country,status,is_subscribed", metrics=[("count",)]),
        id="three-keys-with-bool",
    ),
    pytest.param(q("contacts", group_by="lead_source"), id="nullable-key"),
    pytest.param(
        q("invoices", group_by="currency,status", metrics=[("sum", "total"), ("p50", "total")]),
        id="invoice-keys",
    ),
    pytest.param(
        q("deals", group_by="owner_id", metrics=[("p90", "amount"), ("p10", "probability")]),
        id="percentiles-small-groups",
    ),
    pytest.param(q("deals", group_by="probability", limit=10_000), id="float-key"),
    pytest.param(q("contacts", group_by="score", limit=10_000), id="nullable-float-key"),
    pytest.param(q("deals", group_by="expected_close_date", limit=10_000), id="date-key"),
    pytest.param(q("invoices", group_by="due_date", limit=10_000), id="non-null-date-key"),
    pytest.param(
        q("deals", group_by="closed_at", order="closed_at.desc", limit=50), id="timestamp-key"
    ),
    pytest.param(
        q("deals", group_by="closed_at", metrics=[("count",)], limit=10_000),
        id="timestamp-key-all",
    ),
    pytest.param(q("invoices", group_by="external_ref", limit=40), id="uuid-key-order"),
    pytest.param(
        q("contacts", group_by="email", limit=50, offset=100, metrics=[("count",)]),
        id="string-key-page",
    ),
    pytest.param(
        q(
            "contacts",
            group_by="email",
            # Inside an and/or list a value with a double quote must itself be quoted.
            filters={
                "or": r"""(email.like.*'*,email.like.*\\*,email.like."*\"*",email.like.*\%*)"""
            },
            limit=10_000,
        ),
        id="hostile-string-keys",
    ),
    pytest.param(q("deals", group_by="title", limit=10_000), id="all-titles"),
    pytest.param(
        q(
            "deals",
            group_by="created_at,stage",
            group_by_interval="month",
            time_zone="Europe/Berlin",
            order="count.desc",
        ),
        id="interval-with-second-key",
    ),
    pytest.param(
        q("deals", group_by="expected_close_date,created_at", group_by_interval="quarter"),
        id="interval-on-two-temporal-keys",
    ),
]

ORDER_CASES = [
    pytest.param(
        q(
            "deals",
            group_by="owner_id",
            metrics=[("sum", "amount")],
            order="sum_amount.desc",
            limit=5,
            offset=2,
        ),
        id="metric-desc-page",
    ),
    pytest.param(
        q("deals", group_by="stage,currency", order="count.desc,stage.asc", limit=7),
        id="two-order-keys",
    ),
    pytest.param(q("contacts", group_by="lead_source", order="lead_source.desc"), id="nulls-desc"),
    pytest.param(
        q("contacts", group_by="lead_source", order="lead_source.asc.nullsfirst"),
        id="nulls-first-asc",
    ),
    pytest.param(
        q("contacts", group_by="lead_source", order="lead_source.desc.nullsfirst"),
        id="nulls-first-desc",
    ),
    pytest.param(
        q("contacts", group_by="lead_source", order="lead_source.nullslast"), id="nulls-last"
    ),
    pytest.param(q("contacts", group_by="country", limit=3, offset=3), id="page"),
    pytest.param(q("contacts", group_by="country", limit=3, offset=500), id="page-past-end"),
    pytest.param(
        q("contacts", group_by="country", metrics=[("avg", "score")], order="avg_score.desc"),
        id="float-metric-desc",
    ),
    pytest.param(
        q("invoices", group_by="currency", metrics=[("min", "due_date")], order="min_due_date"),
        id="date-metric",
    ),
    pytest.param(
        q("contacts", group_by="score", order="score.desc", limit=20), id="float-key-desc"
    ),
    pytest.param(
        q("deals", group_by="closed_at", group_by_interval="month", order="closed_at.desc"),
        id="bucket-desc-null-last",
    ),
    pytest.param(
        q("deals", group_by="stage", metrics=[("max", "title")], order="max_title.desc"),
        id="string-metric-desc",
    ),
    pytest.param(
        q(
            "deals",
            group_by="currency",
            metrics=[("p50", "amount")],
            order="p50_amount.asc",
            limit=2,
        ),
        id="percentile-order",
    ),
]

INTERVAL_CASES = [
    pytest.param(
        q(
            model,
            group_by=field,
            group_by_interval=interval,
            time_zone=zone,
            metrics=[("count",), ("sum", amount)],
            limit=10_000,
        ),
        id=f"interval-{model}.{field}-{interval}-{zone}",
    )
    for model, field, amount in (
        ("deals", "created_at", "amount"),
        ("contacts", "updated_at", "lifetime_value"),
        ("invoices", "paid_at", "total"),
    )
    for interval in INTERVALS
    for zone in ZONES
] + [
    pytest.param(
        q(model, group_by=field, group_by_interval=interval, time_zone=zone, limit=10_000),
        id=f"interval-{model}.{field}-{interval}-{zone}",
    )
    for model, field in (("deals", "expected_close_date"), ("invoices", "due_date"))
    for interval in INTERVALS[2:]
    for zone in ("UTC", "America/New_York")
]

FILTERS: list[tuple[str, dict[str, str], str]] = [
    # enum
    (CONTACTS, {"status": "eq.active"}, ""),
    (CONTACTS, {"status": "neq.active"}, ""),
    (CONTACTS, {"status": "in.(lead,churned)"}, ""),
    (CONTACTS, {"status": "not.in.(lead,churned)"}, ""),
    (CONTACTS, {"status": "gt.inactive"}, ""),
    (CONTACTS, {"lead_source": "eq.web"}, ""),
    (CONTACTS, {"lead_source": "neq.web"}, ""),
    (CONTACTS, {"lead_source": "not.eq.web"}, ""),
    (CONTACTS, {"lead_source": "is.null"}, ""),
    (CONTACTS, {"lead_source": "not.is.null"}, ""),
    (CONTACTS, {"lead_source": "in.(web,ads)"}, ""),
    (CONTACTS, {"lead_source": "not.in.(web,ads)"}, ""),
    (CONTACTS, {"lead_source": "like.*e*"}, ""),
    (CONTACTS, {"lead_source": "not.ilike.*E*"}, ""),
    (CONTACTS, {"country": "like.D*"}, ""),
    (CONTACTS, {"country": "ilike.g%"}, ""),
    (CONTACTS, {"country": "like.U_"}, ""),
    (CONTACTS, {"country": "lte.DE"}, ""),
    # string, hostile patterns included
    (CONTACTS, {"email": "like.*'*"}, ""),
    (CONTACTS, {"email": 'like.*"*'}, ""),
    (CONTACTS, {"email": "like.*\\\\*"}, ""),
    (CONTACTS, {"email": "like.*\\slash*"}, ""),
    # A backslash before an ordinary character is a literal backslash (ClickHouse's rule).
    (CONTACTS, {"email": "like.*k\\slash*"}, ""),
    (CONTACTS, {"email": "ilike.*ZOË*"}, ""),
    (CONTACTS, {"email": "ilike.*@EXÄMPLE.DE"}, ""),
    (CONTACTS, {"email": "like.*\\%*"}, ""),
    (CONTACTS, {"email": "like.*\\_*"}, ""),
    (CONTACTS, {"email": "like.100%"}, ""),
    (CONTACTS, {"email": "like.*;*--*"}, ""),
    (CONTACTS, {"email": "like.____.*"}, ""),
    (CONTACTS, {"email": "ilike.A___.%"}, ""),
    (CONTACTS, {"email": "not.like.*@*.com"}, ""),
    (CONTACTS, {"email": "gt.x"}, ""),
    (CONTACTS, {"email": "lt.b"}, ""),
    (CONTACTS, {"email": "gte.zoë"}, ""),
    (DEALS, {"title": "like.*O'Reilly*"}, ""),
    (DEALS, {"title": 'like.*"Platinum"*'}, ""),
    (DEALS, {"title": "like.*\\Deals*"}, ""),
    (DEALS, {"title": "like.C:\\Deals*"}, ""),
    (DEALS, {"title": "like.*\\\\Deals\\\\*"}, ""),
    (DEALS, {"title": "ilike.*日本語*"}, ""),
    (DEALS, {"title": "ilike.*ÜBERWEISUNG*"}, ""),
    (DEALS, {"title": "like.50\\%*"}, ""),
    (DEALS, {"title": "like.50%*"}, ""),
    (DEALS, {"title": "like.*DROP TABLE*"}, ""),
    (DEALS, {"title": "like.*\t*"}, ""),
    (DEALS, {"title": "like.*\n*"}, ""),
    (DEALS, {"title": "like.*\u2013 Q4"}, ""),
    (DEALS, {"title": "ilike.%société%"}, ""),
    (DEALS, {"title": "like.*(renewal)"}, ""),
    (DEALS, {"title": "neq.Contoso \u2013 Team plan"}, ""),
    # int
    (CONTACTS, {"id": "gt.5000"}, ""),
    (CONTACTS, {"id": "in.(1,2,3,5000,5001)"}, ""),
    (CONTACTS, {"id": "not.lte.100"}, ""),
    (CONTACTS, {"and": "(id.gte.4242,id.lte.4260)"}, ""),
    (DEALS, {"owner_id": "in.(1001,1002)"}, ""),
    (DEALS, {"contact_id": "lte.100"}, ""),
    (INVOICES, {"customer_id": "gte.3000"}, ""),
    # decimal
    (CONTACTS, {"lifetime_value": "gt.1000"}, ""),
    (CONTACTS, {"lifetime_value": "gt.999.995"}, ""),
    (CONTACTS, {"lifetime_value": "lte.0"}, ""),
    (CONTACTS, {"lifetime_value": "eq.0.00"}, ""),
    (CONTACTS, {"lifetime_value": "neq.0"}, ""),
    (DEALS, {"amount": "gte.10000.00"}, ""),
    (DEALS, {"amount": "lt.500.005"}, ""),
    (INVOICES, {"total": "gt.1200.5"}, ""),
    # float
    (CONTACTS, {"score": "gt.50"}, ""),
    (CONTACTS, {"score": "not.gt.50"}, ""),
    (CONTACTS, {"score": "is.null"}, ""),
    (CONTACTS, {"score": "lte.20.5"}, ""),
    (CONTACTS, {"score": "eq.42"}, ""),
    (CONTACTS, {"score": "in.(42,50.5)"}, ""),
    (DEALS, {"probability": "eq.0.5"}, ""),
    (DEALS, {"probability": "gt.0.5"}, ""),
    (DEALS, {"probability": "in.(0,1)"}, ""),
    (DEALS, {"probability": "neq.1e0"}, ""),
    # bool
    (CONTACTS, {"is_subscribed": "eq.true"}, ""),
    (CONTACTS, {"is_subscribed": "neq.true"}, ""),
    (CONTACTS, {"is_subscribed": "is.false"}, ""),
    (CONTACTS, {"is_subscribed": "not.is.true"}, ""),
    (CONTACTS, {"is_subscribed": "in.(false)"}, ""),
    # timestamp
    (CONTACTS, {"created_at": "gte.2026-03-29T00:00:00Z"}, ""),
    (CONTACTS, {"created_at": "lt.2026-03-29T02:30:00+02:00"}, ""),
    (CONTACTS, {"created_at": "gte.2026-03-29T00:00:00"}, "Europe/Berlin"),
    (CONTACTS, {"created_at": "lt.2026-01-01"}, "America/New_York"),
    (CONTACTS, {"created_at": "gt.2026-10-25T02:30:00"}, "Europe/Berlin"),
    (CONTACTS, {"created_at": "gte.2026-06-01T00:00:00"}, "Pacific/Auckland"),
    (CONTACTS, {"created_at": "lt.2026-06-01T00:00:00"}, "Pacific/Kiritimati"),
    (CONTACTS, {"updated_at": "lte.2025-12-31T23:59:59.999999Z"}, ""),
    (DEALS, {"closed_at": "is.null"}, ""),
    (DEALS, {"closed_at": "not.is.null"}, ""),
    (DEALS, {"closed_at": "lt.2026-01-01T00:00:00Z"}, ""),
    (DEALS, {"closed_at": "not.lt.2026-01-01T00:00:00Z"}, ""),
    (INVOICES, {"paid_at": "gte.2026-10-01T00:00:00-04:00"}, ""),
    (INVOICES, {"paid_at": "neq.2026-10-01T00:00:00Z"}, ""),
    # date
    (DEALS, {"expected_close_date": "gte.2026-06-01"}, ""),
    (DEALS, {"expected_close_date": "is.null"}, ""),
    (DEALS, {"expected_close_date": "eq.2026-07-15"}, ""),
    (DEALS, {"expected_close_date": "in.(2026-07-15,2026-08-03)"}, ""),
    (DEALS, {"expected_close_date": "not.lt.2026-06-01"}, ""),
    (INVOICES, {"due_date": "lt.2026-01-01"}, ""),
    # uuid
    (INVOICES, {"external_ref": "neq.00000000-0000-4000-8000-000000000000"}, ""),
    (INVOICES, {"external_ref": "is.null"}, ""),
    (INVOICES, {"external_ref": "not.in.(00000000-0000-4000-8000-000000000000)"}, ""),
    # enum on invoices
    (INVOICES, {"status": "eq.paid"}, ""),
    (INVOICES, {"currency": "not.in.(USD,EUR)"}, ""),
    (INVOICES, {"paid_at": "is.null", "status": "neq.void"}, ""),
    # soft delete: hidden by default, visible once a filter names the column
    (CONTACTS, {}, ""),
    (CONTACTS, {"deleted_at": "not.is.null"}, ""),
    (CONTACTS, {"deleted_at": "is.null"}, ""),
    (DEALS, {"deleted_at": "gte.2026-06-01T00:00:00Z"}, ""),
    (DEALS, {"or": "(deleted_at.is.null,deleted_at.not.is.null)"}, ""),
    (DEALS, {"and": "(stage.eq.lead,or(deleted_at.is.null,amount.gt.0))"}, ""),
    # and / or / not
    (DEALS, {"or": "(stage.eq.closed_won,and(amount.gt.50000,currency.eq.EUR))"}, ""),
    (DEALS, {"not.and": "(stage.eq.lead,currency.eq.USD)"}, ""),
    (DEALS, {"or": "(closed_at.is.null,closed_at.gt.2026-06-01T00:00:00Z)"}, ""),
    (DEALS, {"and": "(amount.gte.1000,amount.lt.2000)", "stage": "neq.lead"}, ""),
    (
        DEALS,
        {"or": '(title.like."*O\'Reilly*",title.eq."a,b",title.like."*(renewal)")'},
        "",
    ),
    (DEALS, {"not.or": "(expected_close_date.is.null,expected_close_date.lt.2026-06-01)"}, ""),
    (
        DEALS,
        {
            "or": "(stage.in.(closed_won,closed_lost),not.and(probability.gte.0.5,"
            'currency.in.("EUR",GBP)))'
        },
        "",
    ),
    (DEALS, {"and": "(closed_at.not.is.null,or(amount.gt.100000,probability.eq.1))"}, ""),
    (DEALS, {"not.or": "(closed_at.lt.2026-03-01T00:00:00Z,closed_at.is.null)"}, ""),
    (CONTACTS, {"or": "(lead_source.neq.web,score.lt.30)"}, ""),
    (CONTACTS, {"not.or": "(lead_source.eq.web,score.gt.30)"}, ""),
    (CONTACTS, {"and": "(not.and(score.gt.10,score.lt.90),is_subscribed.is.true)"}, ""),
    (
        CONTACTS,
        {"or": "(created_at.lt.2026-03-29T03:00:00,created_at.gte.2026-10-25)"},
        "Europe/Berlin",
    ),
]
FILTER_CASES = [
    pytest.param(probe(model, filters, zone), id=f"{model}-{index}-{','.join(filters) or 'none'}")
    for index, (model, filters, zone) in enumerate(FILTERS)
]


async def test_design_example(loaded: Loaded) -> None:
    rows = await check(loaded, DESIGN_EXAMPLE)
    assert rows
    assert list(rows[0]) == ["created_at", "sum_amount", "count", "avg_amount"]


@pytest.mark.parametrize("tenant", ["acme", "globex", "initech", "umbrella", "hooli"])
async def test_design_example_every_tenant(loaded: Loaded, tenant: str) -> None:
    await check(loaded, DESIGN_EXAMPLE, tenant)
    await check(loaded, q("deals", group_by="stage", metrics=[("sum", "amount")]), tenant)


@pytest.mark.parametrize("request_", GROUPING_CASES + ORDER_CASES)
async def test_grouping_and_order(loaded: Loaded, request_: QueryRequest) -> None:
    await check(loaded, request_)


@pytest.mark.parametrize("request_", INTERVAL_CASES)
async def test_intervals(loaded: Loaded, request_: QueryRequest) -> None:
    await check(loaded, request_)


@pytest.mark.parametrize("request_", FILTER_CASES)
async def test_filters(loaded: Loaded, request_: QueryRequest) -> None:
    await check(loaded, request_)


@pytest.mark.parametrize("request_", aggregate_cases(load_catalog(DEFAULT_CATALOG)))
async def test_aggregates(loaded: Loaded, request_: QueryRequest) -> None:
    await check(loaded, request_)


EMPTY = {"id": "lt.0"}


@pytest.mark.parametrize(
    ("model", "metrics"),
    [
        pytest.param(
            "deals", [("count",), ("count", "title"), ("count_distinct", "stage")], id="counts"
        ),
        pytest.param(
            "deals", [("sum", "amount"), ("sum", "probability"), ("sum", "owner_id")], id="sums"
        ),
        pytest.param(
            "deals", [("avg", "amount"), ("p50", "amount"), ("p99", "probability")], id="avg-p"
        ),
        pytest.param(
            "deals", [("min", "closed_at"), ("max", "expected_close_date")], id="nullable-min"
        ),
        pytest.param(
            "deals",
            [("min", "amount"), ("max", "created_at"), ("min", "title"), ("max", "owner_id")],
            id="non-nullable-min-max",
        ),
        pytest.param(
            "contacts",
            [("sum", "score")],
            id="sum-of-nullable",
        ),
    ],
)
async def test_aggregates_over_no_rows(
    loaded: Loaded, model: str, metrics: list[tuple[str, ...]]
) -> None:
    rows = await check(loaded, q(model, metrics=metrics, filters=EMPTY))
    assert len(rows) == 1
    assert await check(loaded, q(model, metrics=metrics, filters=EMPTY, group_by="id")) == []


def _hostile(loaded: Loaded, model: str, field: str) -> list[str]:
    """The tenant's visible values of ``field`` with quotes, backslashes, wildcards, non-ASCII."""
    values = {
        row[field]
        for row in loaded.current[model]
        if row["tenant_id"] == TENANT and row["deleted_at"] is None
    }
    marks = ("'", '"', "\\", "%", "_", "*", "\t", "\n", "ä", "日")
    return sorted(value for value in values if any(mark in value for mark in marks))


@pytest.mark.parametrize(("model", "field"), [(CONTACTS, "email"), (DEALS, "title")])
async def test_hostile_values_round_trip(loaded: Loaded, model: str, field: str) -> None:
    values = _hostile(loaded, model, field)
    assert len(values) >= 6
    short = model.split(".")[1]
    for value in values:
        rows = await check(loaded, q(short, group_by=field, filters={field: f"eq.{value}"}))
        assert [row[field] for row in rows] == [value]
        await check(loaded, q(short, filters={field: f"neq.{value}"}))
        await check(loaded, q(short, filters={field: f"gte.{value}"}))
    quoted = ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    rows = await check(loaded, q(short, group_by=field, filters={field: f"in.({quoted})"}))
    assert sorted(row[field] for row in rows) == values


async def test_uuid_filters_take_any_spelling(loaded: Loaded) -> None:
    refs = [row["external_ref"] for row in loaded.current[INVOICES] if row["tenant_id"] == TENANT]
    for spelling in (refs[0], refs[1].upper(), refs[2].replace("-", ""), "{" + refs[3] + "}"):
        rows = await check(
            loaded,
            q("invoices", group_by="external_ref", filters={"external_ref": f"eq.{spelling}"}),
        )
        assert len(rows) == 1
    await check(loaded, q("invoices", filters={"external_ref": f"in.({refs[4]},{refs[5]})"}))
    await check(loaded, q("invoices", filters={"external_ref": f"not.eq.{refs[6]}"}))


async def test_exact_timestamp_filters(loaded: Loaded) -> None:
    moments = sorted(
        row["created_at"]
        for row in loaded.current[DEALS]
        if row["tenant_id"] == TENANT and row["deleted_at"] is None
    )[100:103]
    texts = [m.isoformat() for m in moments]
    for text in texts:
        for operator in ("eq", "gt", "lte"):
            await check(loaded, probe(DEALS, {"created_at": f"{operator}.{text}"}))
    await check(loaded, probe(DEALS, {"created_at": f"in.({texts[0]},{texts[2]})"}))
    # The same moments written as local times without an offset, read in the request's zone.
    zone = "America/New_York"
    for moment in moments:
        local = moment.astimezone(ZoneInfo(zone)).replace(tzinfo=None).isoformat()
        request = q("deals", filters={"created_at": f"eq.{local}"}, time_zone=zone)
        assert await check(loaded, request) == [{"count": 1}]


async def test_daylight_saving_buckets_carry_both_offsets(loaded: Loaded) -> None:
    rows = await check(
        loaded,
        q(
            "contacts",
            group_by="created_at",
            group_by_interval="day",
            time_zone="Europe/Berlin",
            limit=10_000,
        ),
    )
    offsets = {row["created_at"][-6:] for row in rows}
    assert offsets == {"+01:00", "+02:00"}
    spring = [r["created_at"] for r in rows if r["created_at"].startswith("2026-03-29")]
    assert spring == ["2026-03-29T00:00:00+01:00"]
    hours = await check(
        loaded,
        q(
            "contacts",
            group_by="created_at",
            group_by_interval="hour",
            time_zone="Europe/Berlin",
            filters={
                "created_at": "gte.2026-10-24T00:00:00Z",
                "and": "(created_at.lt.2026-10-26T00:00:00Z)",
            },
            limit=10_000,
        ),
    )
    assert any(row["created_at"].endswith("+02:00") for row in hours)
    assert any(row["created_at"].endswith("+01:00") for row in hours)


async def test_tenant_rows_never_leak(loaded: Loaded) -> None:
    for model, short in ((DEALS, "deals"), (INVOICES, "invoices")):
        # Naming deleted_at shows soft-deleted deals too: every current row of the tenant.
        request = q(
            short,
            group_by="id",
            limit=10_000,
            filters={"or": "(id.gt.0,deleted_at.is.null)"} if model == DEALS else {},
        )
        for tenant in ("acme", "hooli"):
            rows = await check(loaded, request, tenant)
            own = {row["id"] for row in loaded.current[model] if row["tenant_id"] == tenant}
            assert {row["id"] for row in rows} == own
    assert await check(loaded, q("deals", group_by="id"), "nobody") == []
    assert (await check(loaded, q("deals"), "nobody")) == [{"count": 0}]


async def test_final_and_tombstones_matter(loaded: Loaded) -> None:
    table = loaded.dataset.tables[DEALS]
    mine = table.filter(pc.equal(table.column("tenant_id"), TENANT))
    keys = len(set(mine.column("id").to_pylist()))
    tombstones = pc.sum(mine.column(DELETED_COLUMN)).as_py()
    assert mine.num_rows > keys, "the dataset must hold superseded versions"
    assert tombstones > 0, "the dataset must hold tombstones"

    expected = [row for row in loaded.current[DEALS] if row["tenant_id"] == TENANT]
    assert len(expected) < keys
    rows = await check(loaded, q("deals", filters={"or": "(deleted_at.is.null,id.gt.0)"}))
    assert rows == [{"count": len(expected)}]

    # Without FINAL the engine would count what is physically there: at least every key once,
    # tombstoned keys included, since only a cleanup merge ever drops a tombstone.
    raw = await loaded.backend.query_rows(
        f"SELECT count() AS n FROM `{loaded.catalog.database}`.`crm_deals` "
        "WHERE tenant_id = {tenant:String}",
        {"tenant": TENANT},
    )
    assert raw[0]["n"] >= keys > len(expected)

    # The stage of a superseded version must never show through.
    latest = {row["id"]: row["stage"] for row in expected}
    versions = mine.filter(pc.equal(mine.column(DELETED_COLUMN), 0)).to_pylist()
    changed = [v for v in versions if v["id"] in latest and v["stage"] != latest[v["id"]]]
    assert changed, "older versions must differ from the latest ones"
    await check(
        loaded, q("deals", group_by="stage", filters={"or": "(deleted_at.is.null,id.gt.0)"})
    )


async def test_rows_scanned_is_reported(loaded: Loaded) -> None:
    _, result = await run(loaded, DESIGN_EXAMPLE)
    assert result.stats.rows_scanned > 0


async def test_last_sync_at_is_the_newest_update(loaded: Loaded) -> None:
    for model in loaded.catalog.replicated_models():
        data = loaded.dataset.tables[model.qualified_name]
        newest = pc.max(data.column("updated_at")).as_py()
        moment = await loaded.backend.last_sync_at(loaded.catalog.database, model.table)
        assert moment == newest


async def test_events_load_with_their_properties_and_event_time(loaded: Loaded) -> None:
    model = loaded.catalog.models[("product", "events")]
    assert model.events is not None
    data = loaded.dataset.tables[model.qualified_name]
    assert data.num_rows > 0
    newest = pc.max(data.column(model.events.timestamp)).as_py()
    moment = await loaded.backend.last_sync_at(loaded.catalog.database, model.table)
    assert moment == newest
    mine = data.filter(pc.equal(data.column(model.tenant_column), TENANT))
    keys, values = model.events.key_column, model.events.value_column
    rows = await loaded.backend.query_rows(
        f"SELECT count() AS n, sum(length(`{keys}`)) AS pairs, "
        f"countIf(length(`{keys}`) != length(`{values}`)) AS ragged, "
        "uniqExact(event_id) AS ids "
        f"FROM `{loaded.catalog.database}`.`{model.table}` FINAL "
        "WHERE tenant_id = {tenant:String}",
        {"tenant": TENANT},
    )
    assert rows == [
        {
            "n": mine.num_rows,
            "pairs": pc.sum(pc.list_value_length(mine.column(keys))).as_py(),
            "ragged": 0,
            "ids": mine.num_rows,
        }
    ]


async def test_load_reports_progress_and_is_recorded(loaded: Loaded) -> None:
    for name, table in loaded.dataset.tables.items():
        reports = [report for report in loaded.progress if report[0] == name]
        assert len(reports) == -(-table.num_rows // BATCH_ROWS)
        assert reports[-1] == (name, table.num_rows, table.num_rows)
    backend, catalog = loaded.backend, loaded.catalog
    assert await dataset_fingerprint_loaded(backend, catalog, loaded.dataset.fingerprint)
    assert not await dataset_fingerprint_loaded(backend, catalog, "demo-other")
    elsewhere = catalog_in_database(catalog, unique_database("never_loaded"))
    assert not await dataset_fingerprint_loaded(backend, elsewhere, loaded.dataset.fingerprint)


async def test_ensure_demo_loaded_loads_once(
    embedded_backend: EmbeddedBackend, catalog: Catalog
) -> None:
    target = catalog_in_database(catalog, unique_database("demo_once"))
    assert await ensure_demo_loaded(embedded_backend, target, seed=3, rows=2_000)
    assert not await ensure_demo_loaded(embedded_backend, target, seed=3, rows=2_000)
    assert await ensure_demo_loaded(embedded_backend, target, seed=4, rows=1_000)
    compiled = compile_query(q("deals"), target, "acme")
    result = await embedded_backend.execute(compiled, timeout_seconds=30, query_id="once")
    dataset = generate_dataset(catalog, seed=4, rows=1_000)
    expected = [
        r
        for r in current_rows(dataset, DEALS)
        if r["tenant_id"] == "acme" and r["deleted_at"] is None
    ]
    assert result_dicts(result.table, compiled.columns) == [{"count": len(expected)}]


async def test_a_failed_query_does_not_spoil_the_next(loaded: Loaded) -> None:
    with pytest.raises(AnalyticsError):
        await loaded.backend.query_rows("SELECT throwIf(number = 1, 'boom') AS x FROM numbers(3)")
    # The pool hands out the most recently returned connection: the one that just failed.
    await check(loaded, q("deals", group_by="stage"))


def _numbers(count: int, *, fail_at: int | None = None) -> CompiledQuery:
    """Many engine blocks of ``number``; failing at ``fail_at`` if given."""
    value = "number" if fail_at is None else f"number + throwIf(number = {fail_at}, 'boom')"
    return CompiledQuery(
        sql=f"SELECT {value} AS c0 FROM numbers({count})",
        parameters={},
        columns=(OutputColumn("n", "c0", "int"),),
        model=load_catalog(DEFAULT_CATALOG).models[("crm", "deals")],
        settings={"max_block_size": "8192"},
        limit=count,
    )


@pytest.mark.parametrize("fail_at", [None, 100_000], ids=["running", "failing later"])
async def test_streams_left_early_return_clean_connections(
    loaded: Loaded, fail_at: int | None
) -> None:
    # The engine fetches one block ahead while the caller handles the current one: a caller
    # leaving after the first batch leaves that fetch in flight. Nothing of it may show in the
    # next answers on the pool's connections, and no query may be left running.
    for attempt in range(12):
        query = _numbers(5_000_000, fail_at=fail_at)
        async with loaded.backend.stream(query, timeout_seconds=30, query_id=f"l{attempt}") as s:
            async for batch in s:
                assert batch.column(0)[0].as_py() == 0
                break
        assert loaded.backend.active_queries == 0
        await check(loaded, q("deals", group_by="stage", metrics=[("count",)]))


async def test_a_stream_read_to_the_end_has_every_row_once(loaded: Loaded) -> None:
    query = _numbers(1_000_000)
    total = rows = 0
    async with loaded.backend.stream(query, timeout_seconds=30, query_id="whole") as stream:
        async for batch in stream:
            rows += batch.num_rows
            total += pc.sum(batch.column(0)).as_py()
    assert (rows, total) == (1_000_000, 1_000_000 * 999_999 // 2)


async def test_an_error_after_the_first_blocks_reaches_the_reader(loaded: Loaded) -> None:
    query = _numbers(1_000_000, fail_at=500_000)
    rows = 0

    async def read_all() -> None:
        nonlocal rows
        async with loaded.backend.stream(query, timeout_seconds=30, query_id="fails") as stream:
            async for batch in stream:
                rows += batch.num_rows

    with pytest.raises(AnalyticsError):
        await read_all()
    assert 0 < rows <= 500_000
    assert loaded.backend.active_queries == 0
    await check(loaded, q("deals", group_by="stage"))


async def test_a_unary_query_gathers_every_block_once(loaded: Loaded) -> None:
    result = await loaded.backend.execute(_numbers(1_000_000), timeout_seconds=30, query_id="all")
    assert result.table.num_rows == 1_000_000
    assert pc.sum(result.table.column(0)).as_py() == 1_000_000 * 999_999 // 2
    assert result.stats.rows_scanned == 1_000_000
    assert loaded.backend.active_queries == 0


async def test_rows_scanned_counts_the_rows_of_scalar_subqueries(loaded: Loaded) -> None:
    # A funnel's first pass and a breakdown's ranking run as scalar subqueries, before the
    # first block: their rows read count in the query's figure.
    query = dataclasses.replace(
        _numbers(100_000),
        sql="WITH (SELECT count() FROM numbers(3000000)) AS d SELECT number + d - d AS c0 "
        "FROM numbers(100000)",
    )
    result = await loaded.backend.execute(query, timeout_seconds=30, query_id="scalar")
    assert result.table.num_rows == 100_000
    assert result.stats.rows_scanned == 3_100_000


async def test_a_unary_query_failing_after_some_blocks_raises_and_cleans_up(
    loaded: Loaded,
) -> None:
    with pytest.raises(AnalyticsError):
        await loaded.backend.execute(
            _numbers(1_000_000, fail_at=500_000), timeout_seconds=30, query_id="fails"
        )
    assert loaded.backend.active_queries == 0
    await check(loaded, q("deals", group_by="stage"))


async def test_a_cancelled_unary_query_stops_the_engine_at_its_next_block(
    loaded: Loaded,
) -> None:
    # 1 000 blocks of 0.1 s: left to run, the engine timeout (30 s) would free the connection.
    # A cancel takes effect where the engine hands over a block (module docstring).
    endless = dataclasses.replace(
        _numbers(1),
        sql="SELECT sleepEachRow(0.001) + number AS c0 FROM numbers(100000)",
        settings={"max_block_size": "100"},
    )
    task = asyncio.create_task(
        loaded.backend.execute(endless, timeout_seconds=30, query_id="cancelled")
    )
    await asyncio.sleep(0.5)
    assert loaded.backend.active_queries == 1
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5
    assert loaded.backend.active_queries == 0
    await check(loaded, q("deals", group_by="stage"))


@pytest.mark.parametrize(("precision", "scale"), [(9, 7), (18, 2), (18, 10), (38, 20), (38, 0)])
async def test_streamed_decimals_are_plain_exact_digits(
    loaded: Loaded, precision: int, scale: int
) -> None:
    # Arrow would write small values of scales above 6 as 1E-7; the API promises digits.
    texts = ["0", "0.0000001", "-0.0000012", "5", "-123.4567", "1234567.1"]
    exact = [Decimal(t) for t in texts if Decimal(t) == round(Decimal(t), scale)]
    values = [v.quantize(Decimal(1).scaleb(-scale)) for v in exact]
    values = [v for v in values if len(v.as_tuple().digits) <= precision]
    listed = ", ".join(f"'{v}'" for v in values)
    query = CompiledQuery(
        sql=f"SELECT CAST(arrayJoin([{listed}]) AS Decimal({precision}, {scale})) AS c0",
        parameters={},
        columns=(OutputColumn("amount", "c0", "decimal"),),
        model=load_catalog(DEFAULT_CATALOG).models[("crm", "deals")],
        settings={},
        limit=len(values),
    )
    streamed: list[str] = []
    async with loaded.backend.stream(query, timeout_seconds=30, query_id="decimals") as stream:
        async for batch in stream:
            chunk = convert.column_chunk(query.columns, batch)
            streamed += chunk.columns[0].string_values.values
    assert streamed == [format(v, "f") for v in values]
