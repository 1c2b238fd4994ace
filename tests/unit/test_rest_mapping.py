"""The REST transport's pure parts: problem documents, body parsing, module scoping, OpenAPI."""

from __future__ import annotations

import pytest

from analytics.v1 import analytics_pb2
from service.api.openapi import COLUMN_TYPES, openapi_document
from service.api.problem import PROBLEM_TYPE_BASE, http_status, problem_document
from service.api.rest_app import parse_query_body, scope_to_module
from service.catalog import Catalog
from service.errors import AnalyticsError, ErrorKind, unknown_field
from service.query.request import QueryRequest


def test_every_error_kind_has_a_status_and_a_problem_type() -> None:
    for kind in ErrorKind:
        document = problem_document(AnalyticsError(kind, "m", "R"), "t" * 32)
        assert document["status"] == http_status(kind)
        assert document["type"] == PROBLEM_TYPE_BASE + kind.value
        assert document["title"]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (ErrorKind.NOT_FOUND, 404),
        (ErrorKind.VALIDATION, 400),
        (ErrorKind.FORBIDDEN, 403),
        (ErrorKind.UNAUTHORIZED, 401),
        (ErrorKind.TIMEOUT, 504),
        (ErrorKind.UNAVAILABLE, 503),
    ],
)
def test_design_table_statuses(kind: ErrorKind, status: int) -> None:
    assert http_status(kind) == status


def test_problem_names_the_field_and_reason() -> None:
    document = problem_document(unknown_field("groupBy", "colour", "crm.deals"), "a" * 32)
    assert document == {
        "type": "https://analytics.internal/problems/validation-error",
        "title": "Invalid request",
        "status": 400,
        "detail": "groupBy: unknown field 'colour' in model 'crm.deals'",
        "code": "UNKNOWN_FIELD",
        "field": "groupBy",
        "violations": [
            {
                "field": "groupBy",
                "description": "groupBy: unknown field 'colour' in model 'crm.deals'",
            }
        ],
        "metadata": {"field": "colour", "model": "crm.deals"},
        "traceId": "a" * 32,
    }


def test_body_is_the_grpc_request_message() -> None:
    body = (
        b'{"model": "deals", "groupBy": "stage", "metrics": [{"aggregate": "count"}], "limit": 5}'
    )
    assert parse_query_body("application/json", body) == analytics_pb2.QueryRequest(
        model="deals",
        group_by="stage",
        metrics=[analytics_pb2.Metric(aggregate="count")],
        limit=5,
    )


def test_openapi_request_schema_has_the_proto_json_names() -> None:
    document = openapi_document(Catalog("analytics", {}))
    schemas = document["components"]["schemas"]
    request_fields = {f.json_name for f in analytics_pb2.QueryRequest.DESCRIPTOR.fields}
    metric_fields = {f.json_name for f in analytics_pb2.Metric.DESCRIPTOR.fields}
    meta_fields = {f.json_name for f in analytics_pb2.QueryMeta.DESCRIPTOR.fields}
    assert set(schemas["QueryRequest"]["properties"]) == request_fields
    assert set(schemas["Metric"]["properties"]) == metric_fields
    assert set(schemas["QueryMeta"]["properties"]) == meta_fields
    column_type = schemas["QueryMeta"]["properties"]["columns"]["items"]["properties"]["type"]
    assert column_type["enum"] == list(COLUMN_TYPES)


@pytest.mark.parametrize(
    ("module", "model", "scoped"),
    [
        ("crm", "deals", "crm.deals"),
        ("crm", "crm.deals", "crm.deals"),
        ("billing", "invoices", "billing.invoices"),
        ("crm", "", ""),
    ],
)
def test_module_scoping(catalog: Catalog, module: str, model: str, scoped: str) -> None:
    assert scope_to_module(QueryRequest(model=model), module, catalog).model == scoped


@pytest.mark.parametrize(
    ("module", "model"),
    [
        ("billing", "deals"),
        ("billing", "crm.deals"),
        ("nope", "deals"),
        ("crm", "crm.deals.extra"),
        ("crm", "invoices"),
    ],
)
def test_models_outside_the_module_are_not_found(catalog: Catalog, module: str, model: str) -> None:
    with pytest.raises(AnalyticsError) as caught:
        scope_to_module(QueryRequest(model=model), module, catalog)
    assert caught.value.kind is ErrorKind.NOT_FOUND
