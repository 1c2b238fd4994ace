"""The three benchmark queries (count, group-by, daily series) and their exact expected answers."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pyarrow as pa
from google.protobuf import json_format

from analytics.v1 import analytics_pb2
from bench.dataset import TENANT, GroundTruth
from service.api import convert
from service.catalog import Catalog, Model
from service.query.compiler import CompiledQuery, QueryLimits, compile_query
from service.settings import Settings

QUERIES: Mapping[str, Mapping[str, Any]] = {
    "count": {},
    "group-by": {
        "groupBy": "stage",
        "aggregate": "sum",
        "field": "amount",
        "metrics": [{"aggregate": "count"}],
        "order": "stage.asc",
    },
    "daily": {
        "groupBy": "created_at",
        "groupByInterval": "day",
        "aggregate": "count",
        "metrics": [{"aggregate": "sum", "field": "amount"}],
        "limit": 1000,
    },
}
_MAX_EXACT_DIGITS = 15


def request(model: Model, name: str) -> analytics_pb2.QueryRequest:
    """The Query request of benchmark query ``name`` on ``model``."""
    body = {"model": model.qualified_name, **QUERIES[name]}
    return json_format.ParseDict(body, analytics_pb2.QueryRequest())


def compiled(catalog: Catalog, model: Model, name: str) -> CompiledQuery:
    """What the service compiles for that request, with the served process's default limits."""
    settings = Settings()
    limits = QueryLimits(settings.default_limit, settings.max_limit, settings.max_offset)
    return compile_query(convert.query_request(request(model, name)), catalog, TENANT, limits)


def expected(truth: GroundTruth, name: str) -> list[dict[str, Any]]:
    """The exact answer rows, keyed like the API's result keys, in the API's order."""
    if name == "count":
        return [{"count": truth.count}]
    if name == "group-by":
        return [
            {"stage": stage, "sum_amount": total, "count": count}
            for stage, (count, total) in sorted(truth.by_stage.items())
        ]
    return [
        {"created_at": f"{day.isoformat()}T00:00:00Z", "count": count, "sum_amount": total}
        for day, (count, total) in sorted(truth.by_day.items())
    ]


def engine_rows(query: CompiledQuery, table: pa.Table) -> list[dict[str, Any]]:
    """The raw engine's answer, keyed by result key."""
    return [
        {column.key: row[column.alias] for column in query.columns} for row in table.to_pylist()
    ]


def api_form(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exact rows as the API's JSON carries them: decimals as numbers while a double is exact."""

    def value(item: Any) -> Any:
        if isinstance(item, Decimal):
            digits = len(item.as_tuple().digits)
            number = float(item) if digits <= _MAX_EXACT_DIGITS else format(item, "f")
            return int(number) if isinstance(number, float) and number.is_integer() else number
        return item

    return [{key: value(item) for key, item in row.items()} for row in rows]


def check(what: str, answer: list[dict[str, Any]], truth: list[dict[str, Any]]) -> None:
    """Raise if an answer differs from the ground truth, naming the first difference."""
    if answer == truth:
        return
    if len(answer) != len(truth):
        raise AssertionError(f"{what}: {len(answer)} rows, expected {len(truth)}")
    for got, want in zip(answer, truth, strict=True):
        if got != want:
            raise AssertionError(f"{what}: got {got}, expected {want}")
