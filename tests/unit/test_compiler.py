"""Example-based tests of compile_query (service/query/compiler.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service.catalog import Catalog, parse_catalog
from service.errors import AnalyticsError, ErrorKind
from service.query.compiler import CompiledQuery, OutputColumn, QueryLimits, compile_query
from service.query.request import MetricRequest, QueryRequest
from tests.conftest import catalog_in_database

TENANT = "tenant_a"
TENANT_GUARD = "t.`tenant_id` = {p0:String} AND t.`_is_deleted` = 0"


def run(catalog: Catalog, **fields: Any) -> CompiledQuery:
    fields.setdefault("model", "deals")
    tenant = fields.pop("tenant", TENANT)
    limits = fields.pop("limits", None)
    return compile_query(QueryRequest(**fields), catalog, tenant, limits)


def error_of(catalog: Catalog, **fields: Any) -> AnalyticsError:
    with pytest.raises(AnalyticsError) as info:
        run(catalog, **fields)
    return info.value


def validation(catalog: Catalog, reason: str, violation: str, /, **fields: Any) -> AnalyticsError:
    error = error_of(catalog, **fields)
    assert error.kind is ErrorKind.VALIDATION, error
    assert error.reason == reason, error
    assert [v.field for v in error.violations] == [violation], error
    assert error.violations[0].description == error.message
    # The message starts with the request field it names.
    assert error.message.startswith(violation + ": "), error.message
    return error


def where_of(sql: str) -> str:
    inner = sql[sql.index(" WHERE ") + len(" WHERE ") :]
    for end in (" GROUP BY ", ") ORDER BY ", ") LIMIT "):
        if end in inner:
            return inner[: inner.index(end)]
    raise AssertionError(sql)


# --- the DESIGN.md section 5 example --------------------------------------------------------


DESIGN_EXAMPLE: dict[str, Any] = {
    "model": "deals",
    "aggregate": "sum",
    "field": "amount",
    "group_by": "created_at",
    "group_by_interval": "day",
    "filters": {
        "stage": "eq.closed_won",
        "created_at": "gte.2026-01-01T00:00:00Z",
        "deleted_at": "is.null",
    },
    "metrics": (MetricRequest("count"), MetricRequest("avg", "amount")),
    "order": "created_at.asc",
    "limit": 100,
}


def test_design_example_compiles(catalog: Catalog) -> None:
    compiled = run(catalog, **DESIGN_EXAMPLE)
    assert compiled.model is catalog.models[("crm", "deals")]
    assert compiled.limit == 100
    assert compiled.columns == (
        OutputColumn("created_at", "c0", "timestamp"),
        OutputColumn("sum_amount", "c1", "decimal"),
        OutputColumn("count", "c2", "int"),
        OutputColumn("avg_amount", "c3", "float"),
    )
    assert compiled.sql == (
        "SELECT formatDateTime(toDateTime64(k0, 6, 'UTC'), '%Y-%m-%dT%H:%i:%SZ', 'UTC') AS c0, "
        "m0 AS c1, m1 AS c2, if(isFinite(m2), m2, NULL) AS c3 FROM ("
        "SELECT toDate32(t.`created_at`, {p1:String}) AS k0, "
        "sumOrNull(t.`amount`) AS m0, "
        "count() AS m1, avg(t.`amount`) AS m2 "
        "FROM `analytics`.`crm_deals` AS t FINAL "
        "WHERE t.`tenant_id` = {p0:String} AND t.`_is_deleted` = 0 "
        "AND (t.`created_at` >= {p2:DateTime64(6, 'UTC')}) "
        "AND (t.`deleted_at` IS NULL) "
        "AND (t.`stage` = {p3:String}) "
        "GROUP BY k0) ORDER BY k0 ASC LIMIT {p4:UInt64} OFFSET {p5:UInt64}"
    )
    assert compiled.settings == {"enable_extended_results_for_datetime_functions": "1"}
    assert compiled.parameters == {
        "p0": TENANT,
        "p1": "UTC",
        "p2": "2026-01-01 00:00:00.000000",
        "p3": "closed_won",
        "p4": "100",
        "p5": "0",
    }


def test_design_example_with_qualified_model_name(catalog: Catalog) -> None:
    assert run(catalog, **{**DESIGN_EXAMPLE, "model": "crm.deals"}) == run(
        catalog, **DESIGN_EXAMPLE
    )


# --- guards that are always there -----------------------------------------------------------


@pytest.mark.parametrize("model", ["deals", "contacts", "invoices"])
@pytest.mark.parametrize(
    "filters",
    [{}, {"id": "gt.1"}, {"or": "(id.eq.1,id.eq.2)"}, {"not.or": "(id.eq.1,id.eq.2)"}],
)
def test_final_tenant_and_deleted_guards(
    catalog: Catalog, model: str, filters: dict[str, str]
) -> None:
    compiled = run(catalog, model=model, filters=filters, tenant="acme")
    table = catalog.find(model)[0].table
    assert f"FROM `analytics`.`{table}` AS t FINAL WHERE {TENANT_GUARD}" in compiled.sql
    assert compiled.parameters["p0"] == "acme"
    assert compiled.sql.count("{p0:String}") == 1


def test_tenant_is_encoded_as_a_parameter(catalog: Catalog) -> None:
    compiled = run(catalog, tenant="a'b\\c\n")
    assert compiled.parameters["p0"] == "a'b\\\\c\\n"
    assert "a'b" not in compiled.sql


def test_soft_delete_guard_by_default(catalog: Catalog) -> None:
    where = where_of(run(catalog, model="contacts").sql)
    assert where == f"{TENANT_GUARD} AND t.`deleted_at` IS NULL"
    where = where_of(run(catalog, model="contacts", filters={"status": "eq.active"}).sql)
    assert where == f"{TENANT_GUARD} AND t.`deleted_at` IS NULL AND (t.`status` = {{p1:String}})"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"deleted_at": "not.is.null"}, "(NOT (t.`deleted_at` IS NULL))"),
        ({"deleted_at": "is.null"}, "(t.`deleted_at` IS NULL)"),
        (
            {"deleted_at": "gte.2026-01-01"},
            "(t.`deleted_at` >= {p1:DateTime64(6, 'UTC')})",
        ),
        (
            {"or": "(deleted_at.is.null,id.eq.1)"},
            "((t.`deleted_at` IS NULL) OR (t.`id` = {p1:Int64}))",
        ),
        (
            {"and": "(id.gt.0,or(deleted_at.is.null,id.eq.1))"},
            "((t.`id` > {p1:Int64}) AND ((t.`deleted_at` IS NULL) OR (t.`id` = {p2:Int64})))",
        ),
    ],
)
def test_filtering_the_soft_delete_column_replaces_the_default(
    catalog: Catalog, filters: dict[str, str], expected: str
) -> None:
    where = where_of(run(catalog, model="contacts", filters=filters).sql)
    assert where == f"{TENANT_GUARD} AND {expected}"


def test_no_soft_delete_guard_without_a_soft_delete_column(catalog: Catalog) -> None:
    assert where_of(run(catalog, model="invoices").sql) == TENANT_GUARD


def test_grouping_by_the_soft_delete_column_keeps_the_default(catalog: Catalog) -> None:
    assert "t.`deleted_at` IS NULL" in where_of(run(catalog, group_by="deleted_at").sql)


# --- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "sql", "parameters"),
    [
        ({"stage": "eq.won"}, "(t.`stage` = {p1:String})", ["won"]),
        ({"stage": "neq.won"}, "(t.`stage` != {p1:String})", ["won"]),
        ({"amount": "gt.10.5"}, "(t.`amount` > {p1:Decimal(38, 2)})", ["10.5"]),
        ({"amount": "gte.10.005"}, "(t.`amount` >= {p1:Decimal(38, 3)})", ["10.005"]),
        ({"owner_id": "lt.7"}, "(t.`owner_id` < {p1:Int64})", ["7"]),
        ({"probability": "lte.0.5"}, "(t.`probability` <= {p1:Float64})", ["0.5"]),
        ({"title": "like.*big*"}, "(t.`title` LIKE {p1:String})", ["%big%"]),
        ({"title": r"like.C:\t*"}, "(t.`title` LIKE {p1:String})", ["C:t%"]),
        ({"title": r"like.100\%\_\\*"}, "(t.`title` LIKE {p1:String})", [r"100\\%\\_\\\\%"]),
        (
            {"stage": 'in.(won,"lost, sadly")'},
            "(t.`stage` IN ({p1:String}, {p2:String}))",
            ["won", "lost, sadly"],
        ),
        ({"stage": "not.in.(won)"}, "(NOT (t.`stage` IN ({p1:String})))", ["won"]),
        ({"closed_at": "is.null"}, "(t.`closed_at` IS NULL)", []),
        ({"closed_at": "not.is.null"}, "(NOT (t.`closed_at` IS NULL))", []),
        (
            {"expected_close_date": "lt.2026-06-30"},
            "(t.`expected_close_date` < {p1:Date32})",
            ["2026-06-30"],
        ),
        (
            {"or": "(stage.eq.won,and(amount.gt.1,amount.lt.5))"},
            "((t.`stage` = {p1:String}) OR ((t.`amount` > {p2:Decimal(38, 2)}) "
            "AND (t.`amount` < {p3:Decimal(38, 2)})))",
            ["won", "1", "5"],
        ),
        (
            {"not.and": "(stage.eq.won,amount.gt.1)"},
            "(NOT ((t.`stage` = {p1:String}) AND (t.`amount` > {p2:Decimal(38, 2)})))",
            ["won", "1"],
        ),
    ],
)
def test_filter_sql(
    catalog: Catalog, filters: dict[str, str], sql: str, parameters: list[str]
) -> None:
    compiled = run(catalog, filters=filters)
    assert where_of(compiled.sql) == f"{TENANT_GUARD} AND t.`deleted_at` IS NULL AND {sql}"
    bound = [compiled.parameters[f"p{i + 1}"] for i in range(len(parameters))]
    assert bound == parameters


def test_bool_filters(catalog: Catalog) -> None:
    where = where_of(run(catalog, model="contacts", filters={"is_subscribed": "is.true"}).sql)
    assert where.endswith("AND ((t.`is_subscribed` IS NOT NULL AND t.`is_subscribed` = true))")
    where = where_of(run(catalog, model="contacts", filters={"is_subscribed": "not.is.false"}).sql)
    assert where.endswith(
        "AND (NOT ((t.`is_subscribed` IS NOT NULL AND t.`is_subscribed` = false)))"
    )
    compiled = run(catalog, model="contacts", filters={"is_subscribed": "eq.true"})
    assert where_of(compiled.sql).endswith("AND (t.`is_subscribed` = {p1:Bool})")
    assert compiled.parameters["p1"] == "true"


def test_uuid_filter_is_canonical(catalog: Catalog) -> None:
    compiled = run(
        catalog, model="invoices", filters={"external_ref": "eq.12345678123456781234567812345678"}
    )
    assert "(t.`external_ref` = {p1:UUID})" in compiled.sql
    assert compiled.parameters["p1"] == "12345678-1234-5678-1234-567812345678"


def test_filters_are_ordered_by_key_and_each_parenthesised(catalog: Catalog) -> None:
    compiled = run(catalog, filters={"stage": "eq.a", "amount": "gt.1", "or": "(id.eq.1,id.eq.2)"})
    where = where_of(compiled.sql)
    assert where == (
        f"{TENANT_GUARD} AND t.`deleted_at` IS NULL AND (t.`amount` > {{p1:Decimal(38, 2)}}) "
        "AND ((t.`id` = {p2:Int64}) OR (t.`id` = {p3:Int64})) AND (t.`stage` = {p4:String})"
    )


def test_timestamp_filter_in_the_request_time_zone(catalog: Catalog) -> None:
    compiled = run(
        catalog, filters={"created_at": "gte.2026-01-01T00:00:00"}, time_zone="Europe/Paris"
    )
    assert compiled.parameters["p1"] == "2025-12-31 23:00:00.000000"


@pytest.mark.parametrize(
    "value",
    [
        "'; DROP TABLE crm_deals; --",
        "x' OR '1'='1",
        "{p0:String}",
        "*/ SELECT 1 /*",
        "a\\'b",
        "line\nbreak",
        "nul\0byte",
        "日本語",
    ],
)
def test_hostile_values_never_reach_the_sql(catalog: Catalog, value: str) -> None:
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    baseline = run(catalog, filters={"title": "eq.plain"}).sql
    compiled = run(catalog, filters={"title": f"eq.{quoted}"})
    assert compiled.sql == baseline
    assert compiled.parameters["p1"] != "plain"
    if value not in baseline:  # "{p0:String}" is also a real placeholder
        assert value not in compiled.sql


# --- grouping, metrics, order ----------------------------------------------------------------


def test_default_metric_is_count(catalog: Catalog) -> None:
    compiled = run(catalog)
    assert compiled.columns == (OutputColumn("count", "c0", "int"),)
    assert compiled.sql.startswith("SELECT m0 AS c0 FROM (SELECT count() AS m0 FROM ")
    assert "GROUP BY" not in compiled.sql
    assert "ORDER BY" not in compiled.sql
    assert compiled.limit == 1000


def test_bare_field_counts_that_field(catalog: Catalog) -> None:
    compiled = run(catalog, field="closed_at")
    assert compiled.columns == (OutputColumn("count_closed_at", "c0", "int"),)
    assert "count(t.`closed_at`) AS m0" in compiled.sql


@pytest.mark.parametrize(
    ("metric", "expression", "key", "output"),
    [
        (MetricRequest("count", "email"), "count(t.`email`)", "count_email", "int"),
        (
            MetricRequest("count_distinct", "email"),
            "uniqExact(t.`email`)",
            "count_distinct_email",
            "int",
        ),
        (
            MetricRequest("sum", "lifetime_value"),
            "sumOrNull(t.`lifetime_value`)",
            "sum_lifetime_value",
            "decimal",
        ),
        (MetricRequest("sum", "id"), "sumOrNull(toDecimal128(t.`id`, 0))", "sum_id", "int"),
        (MetricRequest("sum", "score"), "sumOrNull(t.`score`)", "sum_score", "float"),
        (MetricRequest("avg", "id"), "avg(toDecimal128(t.`id`, 0))", "avg_id", "float"),
        (
            MetricRequest("count_distinct", "score"),
            "uniqExact((t.`score` + 0.))",
            "count_distinct_score",
            "int",
        ),
        (
            MetricRequest("min", "created_at"),
            "minOrNull(t.`created_at`)",
            "min_created_at",
            "timestamp",
        ),
        (MetricRequest("max", "email"), "maxOrNull(t.`email`)", "max_email", "string"),
        (
            MetricRequest("p95", "score"),
            "quantileExactInclusive(0.95)(toFloat64(t.`score`))",
            "p95_score",
            "float",
        ),
        (
            MetricRequest("p1", "lifetime_value"),
            "quantileExactInclusive(0.01)(toFloat64(t.`lifetime_value`))",
            "p1_lifetime_value",
            "float",
        ),
        (MetricRequest("max", "id", alias="top"), "maxOrNull(t.`id`)", "top", "int"),
    ],
)
def test_metrics(
    catalog: Catalog, metric: MetricRequest, expression: str, key: str, output: str
) -> None:
    compiled = run(catalog, model="contacts", metrics=(metric,))
    assert f"SELECT {expression} AS m0 FROM " in compiled.sql
    assert compiled.columns == (OutputColumn(key, "c0", output),)


def test_rendering_of_outputs(catalog: Catalog) -> None:
    compiled = run(
        catalog,
        model="invoices",
        group_by="external_ref,due_date,paid_at",
        metrics=(MetricRequest("avg", "total"), MetricRequest("max", "issued_at")),
    )
    outer = compiled.sql[: compiled.sql.index(" FROM (")]
    assert outer == (
        "SELECT toString(k0) AS c0, toString(k1) AS c1, "
        "formatDateTime(k2, '%Y-%m-%dT%H:%i:%S.%fZ', 'UTC') AS c2, "
        "if(isFinite(m0), m0, NULL) AS c3, "
        "formatDateTime(m1, '%Y-%m-%dT%H:%i:%S.%fZ', 'UTC') AS c4"
    )
    assert [c.type for c in compiled.columns] == [
        "string",
        "date",
        "timestamp",
        "float",
        "timestamp",
    ]


def test_group_by_several_fields_orders_by_all_keys(catalog: Catalog) -> None:
    compiled = run(catalog, group_by="stage, currency", order="count.desc")
    assert "GROUP BY k0, k1)" in compiled.sql
    # descending without a modifier puts NULLs first, as PostgreSQL does
    assert " ORDER BY m0 DESC NULLS FIRST, k0 ASC, k1 ASC LIMIT " in compiled.sql
    assert [c.key for c in compiled.columns] == ["stage", "currency", "count"]


def test_order_modifiers(catalog: Catalog) -> None:
    compiled = run(
        catalog,
        group_by="stage,currency",
        metrics=(MetricRequest("sum", "amount", alias="total"),),
        order="currency.desc.nullsfirst,total.nullslast",
    )
    assert " ORDER BY k1 DESC NULLS FIRST, m0 ASC NULLS LAST, k0 ASC LIMIT " in compiled.sql


@pytest.mark.parametrize(
    ("interval", "expression"),
    [
        (
            "minute",
            "subtractSeconds(toStartOfSecond(t.`created_at`), "
            "toSecond(t.`created_at`, {p1:String}))",
        ),
        (
            "hour",
            "subtractSeconds(toStartOfSecond(t.`created_at`), "
            "toMinute(t.`created_at`, {p1:String}) * 60 + toSecond(t.`created_at`, {p1:String}))",
        ),
        ("day", "toDate32(t.`created_at`, {p1:String})"),
        ("week", "toMonday(t.`created_at`, {p1:String})"),
        ("month", "toStartOfMonth(t.`created_at`, {p1:String})"),
        ("quarter", "toStartOfQuarter(t.`created_at`, {p1:String})"),
        ("year", "toStartOfYear(t.`created_at`, {p1:String})"),
    ],
)
def test_timestamp_intervals(catalog: Catalog, interval: str, expression: str) -> None:
    compiled = run(catalog, group_by="created_at", group_by_interval=interval)
    assert f"SELECT {expression} AS k0, count() AS m0 FROM" in compiled.sql
    assert compiled.parameters["p1"] == "UTC"
    assert compiled.columns[0] == OutputColumn("created_at", "c0", "timestamp")
    # Bucketing must cover 1900-2299, not the 32-bit 1970-2106 of plain date functions.
    assert compiled.settings == {"enable_extended_results_for_datetime_functions": "1"}


def test_interval_in_another_time_zone_renders_the_offset(catalog: Catalog) -> None:
    compiled = run(
        catalog, group_by="created_at", group_by_interval="day", time_zone="America/New_York"
    )
    assert compiled.parameters["p1"] == "America/New_York"
    assert compiled.parameters["p2"] == "America/New_York"
    assert compiled.sql.startswith("SELECT concat(formatDateTime(toDateTime64(if(")
    assert "toDate32(t.`created_at`, {p1:String}) AS k0" in compiled.sql
    assert (
        "timeZoneOffset(toDateTime64((toInt64(toDate32(k0)) * 86400) + 86400, 0, {p2:String}))"
        in (compiled.sql)
    )


@pytest.mark.parametrize(
    ("interval", "expression"),
    [
        ("day", "t.`expected_close_date`"),
        ("week", "toMonday(t.`expected_close_date`)"),
        ("month", "toStartOfMonth(t.`expected_close_date`)"),
        ("quarter", "toStartOfQuarter(t.`expected_close_date`)"),
        ("year", "toStartOfYear(t.`expected_close_date`)"),
    ],
)
def test_date_intervals(catalog: Catalog, interval: str, expression: str) -> None:
    compiled = run(catalog, group_by="expected_close_date", group_by_interval=interval)
    assert f"SELECT {expression} AS k0" in compiled.sql
    assert compiled.columns[0] == OutputColumn("expected_close_date", "c0", "date")
    assert compiled.settings == {"enable_extended_results_for_datetime_functions": "1"}


def test_no_settings_without_an_interval(catalog: Catalog) -> None:
    assert run(catalog, group_by="created_at,expected_close_date").settings == {}


def test_limit_and_offset_are_parameters(catalog: Catalog) -> None:
    compiled = run(catalog, limit=10_000, offset=1_000_000)
    assert compiled.sql.endswith(" LIMIT {p1:UInt64} OFFSET {p2:UInt64}")
    assert compiled.parameters["p1"] == "10000"
    assert compiled.parameters["p2"] == "1000000"
    assert compiled.limit == 10_000
    custom = run(catalog, limits=QueryLimits(default_limit=5, max_limit=50))
    assert custom.limit == 5


def test_other_database(catalog: Catalog) -> None:
    compiled = compile_query(
        QueryRequest(model="deals"), catalog_in_database(catalog, "db_x"), TENANT
    )
    assert "FROM `db_x`.`crm_deals` AS t FINAL" in compiled.sql


# --- errors ----------------------------------------------------------------------------------


def test_empty_tenant_is_unauthorized(catalog: Catalog) -> None:
    for model in ("deals", "nope"):
        error = error_of(catalog, model=model, tenant="")
        assert error.kind is ErrorKind.UNAUTHORIZED
        assert error.reason == "NO_TENANT"


@pytest.mark.parametrize(
    "model", ["nope", "crm.nope", "billing.deals", "crm.", "Deals", "crm.deals.x"]
)
def test_unknown_model_is_not_found(catalog: Catalog, model: str) -> None:
    error = error_of(catalog, model=model)
    assert error.kind is ErrorKind.NOT_FOUND
    assert error.reason == "NOT_FOUND"
    assert error.metadata == {"model": model}


def test_missing_model(catalog: Catalog) -> None:
    validation(catalog, "REQUIRED", "model", model="")


def test_ambiguous_model() -> None:
    document = {
        "models": [
            {"module": "crm", "name": "deals", "fields": {"id": "int"}},
            {"module": "sales", "name": "deals", "fields": {"id": "int"}},
        ]
    }
    catalog = parse_catalog(document)
    error = validation(catalog, "AMBIGUOUS_MODEL", "model", model="deals")
    assert "crm.deals, sales.deals" in error.message
    assert run(catalog, model="sales.deals").model.module == "sales"


@pytest.mark.parametrize(
    "aggregate", ["median", "COUNT", "p0", "p100", "p05", "p", "sum ", "count_distinct()"]
)
def test_unknown_aggregate(catalog: Catalog, aggregate: str) -> None:
    validation(catalog, "UNKNOWN_AGGREGATE", "aggregate", aggregate=aggregate, field="amount")
    validation(
        catalog,
        "UNKNOWN_AGGREGATE",
        "metrics[1].aggregate",
        metrics=(MetricRequest("count"), MetricRequest(aggregate, "amount")),
    )


@pytest.mark.parametrize(
    "request_fields",
    [
        {"aggregate": "p50\n", "field": "amount"},
        {"metrics": (MetricRequest("p5\n", "amount"),)},
        {"metrics": (MetricRequest("count", alias="total\n"),)},
    ],
)
def test_trailing_newline_in_aggregate_or_alias_is_rejected(
    catalog: Catalog, request_fields: dict[str, Any]
) -> None:
    error = error_of(catalog, **request_fields)
    assert error.kind is ErrorKind.VALIDATION


@pytest.mark.parametrize(
    ("fields", "violation", "name"),
    [
        ({"group_by": "nope"}, "groupBy", "nope"),
        ({"group_by": "stage,nope"}, "groupBy", "nope"),
        ({"filters": {"nope": "eq.1"}}, "filters.nope", "nope"),
        ({"filters": {"or": "(stage.eq.a,nope.eq.1)"}}, "filters.or", "nope"),
        ({"filters": {"not.and": "(or(nope.is.null))"}}, "filters.not.and", "nope"),
        ({"aggregate": "sum", "field": "nope"}, "field", "nope"),
        ({"field": "nope"}, "field", "nope"),
        ({"metrics": (MetricRequest("max", "nope"),)}, "metrics[0].field", "nope"),
        (
            {"metrics": (MetricRequest("count"), MetricRequest("avg", "Amount"))},
            "metrics[1].field",
            "Amount",
        ),
        ({"filters": {"_version": "gt.1"}}, "filters._version", "_version"),
        ({"group_by": "_is_deleted"}, "groupBy", "_is_deleted"),
    ],
)
def test_unknown_field(catalog: Catalog, fields: dict[str, Any], violation: str, name: str) -> None:
    error = validation(catalog, "UNKNOWN_FIELD", violation, **fields)
    assert error.metadata == {"field": name, "model": "crm.deals"}


@pytest.mark.parametrize(
    "fields",
    [
        {"order": "nope"},
        {"order": "amount"},  # a field, but neither grouped nor a metric key
        {"order": "stage.asc,nope.desc"},
        {"order": "sum_amount"},  # the metric is not requested
    ],
)
def test_unknown_order_key(catalog: Catalog, fields: dict[str, Any]) -> None:
    validation(catalog, "UNKNOWN_FIELD", "order", group_by="stage", **fields)


@pytest.mark.parametrize(
    ("order", "reason"),
    [
        ("stage.up", "INVALID_ORDER"),
        ("stage.asc.desc.first", "INVALID_ORDER"),
        ("stage,stage.desc", "INVALID_ORDER"),
    ],
)
def test_invalid_order(catalog: Catalog, order: str, reason: str) -> None:
    validation(catalog, reason, "order", group_by="stage", order=order)


@pytest.mark.parametrize(
    "fields",
    [
        {"group_by": "created_at", "group_by_interval": "fortnight"},
        {"group_by": "created_at", "group_by_interval": "Day"},
        {"group_by_interval": "day"},
        {"group_by": "stage", "group_by_interval": "day"},
        {"group_by": "expected_close_date", "group_by_interval": "hour"},
        {"group_by": "created_at,expected_close_date", "group_by_interval": "minute"},
    ],
)
def test_invalid_interval(catalog: Catalog, fields: dict[str, Any]) -> None:
    validation(catalog, "INVALID_INTERVAL", "groupByInterval", **fields)


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"group_by": "tenant_id"}, "groupBy"),
        ({"group_by": "stage, tenant_id"}, "groupBy"),
        ({"filters": {"tenant_id": "eq.other"}}, "filters.tenant_id"),
        ({"filters": {"or": "(tenant_id.eq.other,id.gt.0)"}}, "filters.or"),
        ({"filters": {"not.and": "(and(tenant_id.neq.x))"}}, "filters.not.and"),
        ({"aggregate": "count_distinct", "field": "tenant_id"}, "field"),
        ({"metrics": (MetricRequest("min", "tenant_id"),)}, "metrics[0].field"),
    ],
)
def test_tenant_column_cannot_be_named(
    catalog: Catalog, fields: dict[str, Any], violation: str
) -> None:
    error = validation(catalog, "TENANT_COLUMN", violation, **fields)
    assert "tenant" in error.message


def test_tenant_column_cannot_be_ordered_by(catalog: Catalog) -> None:
    # order names result keys, and the tenant column is never one.
    error = error_of(catalog, group_by="stage", order="tenant_id")
    assert error.kind is ErrorKind.VALIDATION
    assert [v.field for v in error.violations] == ["order"]


@pytest.mark.parametrize(
    ("model", "metric", "violation"),
    [
        ("deals", {"aggregate": "sum", "field": "title"}, "field"),
        ("deals", {"aggregate": "avg", "field": "stage"}, "field"),
        ("deals", {"aggregate": "p95", "field": "created_at"}, "field"),
        ("contacts", {"aggregate": "sum", "field": "is_subscribed"}, "field"),
        ("invoices", {"aggregate": "min", "field": "external_ref"}, "field"),
        ("contacts", {"metrics": (MetricRequest("max", "is_subscribed"),)}, "metrics[0].field"),
        ("invoices", {"metrics": (MetricRequest("p50", "external_ref"),)}, "metrics[0].field"),
    ],
)
def test_invalid_aggregate_field(
    catalog: Catalog, model: str, metric: dict[str, Any], violation: str
) -> None:
    validation(catalog, "INVALID_AGGREGATE_FIELD", violation, model=model, **metric)


@pytest.mark.parametrize("aggregate", ["sum", "avg", "min", "max", "count_distinct", "p50"])
def test_aggregate_without_field(catalog: Catalog, aggregate: str) -> None:
    validation(catalog, "INVALID_ARGUMENT", "field", aggregate=aggregate)
    validation(catalog, "INVALID_ARGUMENT", "metrics[0].field", metrics=(MetricRequest(aggregate),))


def test_limit_too_large(catalog: Catalog) -> None:
    validation(catalog, "LIMIT_TOO_LARGE", "limit", limit=10_001)
    validation(catalog, "LIMIT_TOO_LARGE", "limit", limit=51, limits=QueryLimits(max_limit=50))
    assert run(catalog, limit=50, limits=QueryLimits(max_limit=50)).limit == 50


def test_offset_too_large(catalog: Catalog) -> None:
    validation(catalog, "OFFSET_TOO_LARGE", "offset", offset=1_000_001)


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"metrics": (MetricRequest("count"), MetricRequest("count"))}, "metrics[1]"),
        ({"aggregate": "count", "metrics": (MetricRequest("count"),)}, "metrics[0]"),
        ({"field": "amount", "metrics": (MetricRequest("count", "amount"),)}, "metrics[0]"),
        ({"group_by": "stage", "metrics": (MetricRequest("count", alias="stage"),)}, "metrics[0]"),
        (
            {
                "metrics": (
                    MetricRequest("sum", "amount"),
                    MetricRequest("count", alias="sum_amount"),
                )
            },
            "metrics[1]",
        ),
    ],
)
def test_duplicate_result_keys(catalog: Catalog, fields: dict[str, Any], violation: str) -> None:
    validation(catalog, "DUPLICATE_KEY", violation, **fields)


def test_alias_resolves_a_duplicate(catalog: Catalog) -> None:
    compiled = run(catalog, metrics=(MetricRequest("count"), MetricRequest("count", alias="n")))
    assert [c.key for c in compiled.columns] == ["count", "n"]


@pytest.mark.parametrize("alias", ["a-b", "1x", "a b", "é", "x" * 64, "a.b"])
def test_invalid_alias(catalog: Catalog, alias: str) -> None:
    validation(
        catalog,
        "INVALID_ARGUMENT",
        "metrics[0].alias",
        metrics=(MetricRequest("count", alias=alias),),
    )


@pytest.mark.parametrize(
    ("model", "filters", "violation"),
    [
        ("deals", {"id": "like.1*"}, "filters.id"),
        ("deals", {"amount": "ilike.1*"}, "filters.amount"),
        ("deals", {"created_at": "like.2026*"}, "filters.created_at"),
        ("contacts", {"is_subscribed": "gt.false"}, "filters.is_subscribed"),
        ("contacts", {"is_subscribed": "not.lte.true"}, "filters.is_subscribed"),
        (
            "invoices",
            {"external_ref": "gte.12345678123456781234567812345678"},
            "filters.external_ref",
        ),
        ("deals", {"stage": "is.true"}, "filters.stage"),
        ("deals", {"or": "(id.eq.1,amount.like.5)"}, "filters.or"),
    ],
)
def test_operator_not_applicable(
    catalog: Catalog, model: str, filters: dict[str, str], violation: str
) -> None:
    validation(catalog, "INVALID_FILTER", violation, model=model, filters=filters)


@pytest.mark.parametrize(
    ("filters", "violation"),
    [
        ({"id": "gt.abc"}, "filters.id"),
        ({"amount": "eq.1,5"}, "filters.amount"),
        ({"created_at": "gte.yesterday"}, "filters.created_at"),
        ({"probability": "lt.nan"}, "filters.probability"),
        ({"expected_close_date": "eq.2026-02-30"}, "filters.expected_close_date"),
        ({"id": "in.(1,x)"}, "filters.id"),
        ({"and": "(id.eq.1,or(owner_id.eq.one))"}, "filters.and"),
    ],
)
def test_invalid_values(catalog: Catalog, filters: dict[str, str], violation: str) -> None:
    validation(catalog, "INVALID_VALUE", violation, filters=filters)


@pytest.mark.parametrize("pattern", ["abc\\", "\\", "*\\", "a\\\\\\"])
def test_like_pattern_ending_in_an_unpaired_backslash(catalog: Catalog, pattern: str) -> None:
    quoted = '"' + pattern.replace("\\", "\\\\") + '"'
    validation(catalog, "INVALID_FILTER", "filters.title", filters={"title": f"like.{pattern}"})
    validation(catalog, "INVALID_FILTER", "filters.or", filters={"or": f"(title.ilike.{quoted})"})


@pytest.mark.parametrize("pattern", ["abc\\\\", "a\\\\%", "\\\\*x", "\\%"])
def test_like_pattern_with_escaped_backslashes(catalog: Catalog, pattern: str) -> None:
    """An escaped backslash, % or _ stays escaped: ClickHouse reads those escapes as PostgreSQL."""
    compiled = run(catalog, filters={"title": f"like.{pattern}"})
    assert compiled.parameters["p1"] == pattern.replace("*", "%").replace("\\", "\\\\")


def test_filter_grammar_errors_pass_through(catalog: Catalog) -> None:
    validation(catalog, "INVALID_FILTER", "filters.stage", filters={"stage": "not.not.eq.x"})


def test_group_by_errors(catalog: Catalog) -> None:
    validation(catalog, "INVALID_ARGUMENT", "groupBy", group_by="stage,stage")
    validation(catalog, "INVALID_ARGUMENT", "groupBy", group_by="stage,,currency")
    validation(catalog, "INVALID_ARGUMENT", "groupBy", group_by=",".join(["stage"] * 9))


def test_too_many_metrics(catalog: Catalog) -> None:
    metrics = tuple(MetricRequest("count", alias=f"m{i}") for i in range(33))
    validation(catalog, "INVALID_ARGUMENT", "metrics", metrics=metrics)
    assert len(run(catalog, metrics=metrics[:32]).columns) == 32


def test_time_zone_errors(catalog: Catalog) -> None:
    validation(catalog, "INVALID_TIME_ZONE", "timeZone", time_zone="Mars/Base")
    validation(catalog, "INVALID_ARGUMENT", "timeZone", time_zone="../etc/passwd")


def test_first_error_wins_in_a_fixed_order(catalog: Catalog) -> None:
    # unknown model before anything else; then groupBy, interval, metrics, filters, order, limit
    error = error_of(catalog, model="nope", group_by="nope", limit=10**9)
    assert error.kind is ErrorKind.NOT_FOUND
    error = error_of(catalog, group_by="nope", aggregate="median", filters={"x": "eq.1"})
    assert error.violations[0].field == "groupBy"
    error = error_of(catalog, aggregate="median", filters={"x": "eq.1"}, order="x")
    assert error.violations[0].field == "aggregate"
    error = error_of(catalog, filters={"x": "eq.1"}, order="x", limit=10**9)
    assert error.violations[0].field == "filters.x"


def test_no_request_text_in_sql(catalog: Catalog) -> None:
    compiled = run(catalog, **DESIGN_EXAMPLE)
    for text in ("closed_won", "2026-01-01", "created_at.asc", "100"):
        assert text not in compiled.sql
    assert re.fullmatch(r"[\x20-\x7e]*", compiled.sql)
