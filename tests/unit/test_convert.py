from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.v1 import analytics_pb2
from service.api import convert
from service.backends.base import QueryStats
from service.query.compiler import OutputColumn


def test_request_json_form_is_the_design_one() -> None:
    body = {
        "model": "deals",
        "aggregate": "sum",
        "field": "amount",
        "groupBy": "created_at",
        "groupByInterval": "day",
        "filters": {"stage": "eq.closed_won", "deleted_at": "is.null"},
        "metrics": [{"aggregate": "count"}, {"aggregate": "avg", "field": "amount"}],
        "order": "created_at.asc",
        "limit": 100,
        "offset": 5,
        "timeZone": "Europe/Berlin",
    }
    message = json_format.ParseDict(body, analytics_pb2.QueryRequest())
    assert json_format.MessageToDict(message) == body
    request = convert.query_request(message)
    assert request.group_by_interval == "day"
    assert request.metrics[1].field == "amount"
    assert request.filters == {"stage": "eq.closed_won", "deleted_at": "is.null"}


def test_struct_rows_keep_numbers_exact() -> None:
    columns = (
        OutputColumn("count", "c0", "int"),
        OutputColumn("sum_amount", "c1", "decimal"),
        OutputColumn("avg", "c2", "float"),
        OutputColumn("stage", "c3", "string"),
    )
    table = pa.table(
        {
            "c0": pa.array([38000, 2**53 + 1, None], pa.int64()),
            "c1": pa.array(
                [Decimal("12.50"), Decimal("12345678901234567.89"), Decimal("0.10")],
                pa.decimal128(38, 2),
            ),
            "c2": pa.array([1.5, float("nan"), None], pa.float64()),
            "c3": pa.array(["won", "lost", None]),
        }
    )
    rows = convert.struct_rows(columns, table)
    response = analytics_pb2.QueryResponse(
        data=rows,
        meta=convert.query_meta(
            columns, QueryStats(48200, 17.4), dt.datetime(2026, 4, 15, 10, 29, 55, tzinfo=dt.UTC)
        ),
    )
    body = convert.response_json(response)
    assert body["data"] == [
        {"count": 38000, "sum_amount": 12.5, "avg": 1.5, "stage": "won"},
        {
            "count": str(2**53 + 1),
            "sum_amount": "12345678901234567.89",
            "avg": None,
            "stage": "lost",
        },
        {"count": None, "sum_amount": 0.1, "avg": None, "stage": None},
    ]
    assert body["meta"]["lastSyncAt"] == "2026-04-15T10:29:55Z"
    assert body["meta"]["rowsScanned"] == 48200
    assert body["meta"]["durationMs"] == 17
    assert list(body["data"][0]) == ["count", "sum_amount", "avg", "stage"]


def test_column_chunk_types_and_nulls_round_trip() -> None:
    columns = (
        OutputColumn("id", "c0", "int"),
        OutputColumn("amount", "c1", "decimal"),
        OutputColumn("ratio", "c2", "float"),
        OutputColumn("won", "c3", "bool"),
        OutputColumn("day", "c4", "timestamp"),
        OutputColumn("huge", "c5", "int"),
    )
    batch = pa.record_batch(
        {
            "c0": pa.array([1, None, -3], pa.int64()),
            "c1": pa.array(
                [Decimal("1.10"), None, Decimal("-99999999999999999.99")], pa.decimal128(20, 2)
            ),
            "c2": pa.array([0.25, 1e300, None]),
            "c3": pa.array([True, None, False]),
            "c4": pa.array(["2026-01-01T00:00:00Z", None, "2026-01-02T00:00:00Z"]),
            "c5": pa.array([2**64 - 1, 0, None], pa.uint64()),
        }
    )
    chunk = convert.column_chunk(columns, batch)
    wire = analytics_pb2.ColumnChunk.FromString(chunk.SerializeToString())
    assert wire.row_count == 3
    assert [c.WhichOneof("values") for c in wire.columns] == [
        "int64_values",
        "string_values",
        "double_values",
        "bool_values",
        "string_values",
        "string_values",
    ]
    assert convert.chunk_rows(wire) == [
        {
            "id": 1,
            "amount": "1.10",
            "ratio": 0.25,
            "won": True,
            "day": "2026-01-01T00:00:00Z",
            "huge": str(2**64 - 1),
        },
        {"id": None, "amount": None, "ratio": 1e300, "won": None, "day": None, "huge": "0"},
        {
            "id": -3,
            "amount": "-99999999999999999.99",
            "ratio": None,
            "won": False,
            "day": "2026-01-02T00:00:00Z",
            "huge": None,
        },
    ]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), precision=st.sampled_from([1, 2, 9, 10, 17, 18, 19, 38]))
def test_decimal_columns_are_exact_text_at_every_precision_and_scale(
    data: st.DataObject, precision: int
) -> None:
    """Up to precision 18 through decimal64, wider through decimal128: Python's text either way."""
    scale = data.draw(st.integers(0, precision))
    bound = 10**precision - 1
    unscaled = data.draw(
        st.lists(st.one_of(st.integers(-bound, bound), st.sampled_from([0, bound, -bound])))
    )
    values = [Decimal(f"{v}e-{scale}") for v in unscaled]  # exact: no context rounding
    batch = pa.record_batch({"c0": pa.array([*values, None], pa.decimal128(precision, scale))})
    chunk = convert.column_chunk((OutputColumn("amount", "c0", "decimal"),), batch)
    assert list(chunk.columns[0].string_values.values) == [format(v, "f") for v in values] + [""]
    assert list(chunk.columns[0].null_positions) == [len(values)]
