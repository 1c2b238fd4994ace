"""Translation between the protobuf API and the domain: requests in, Arrow results out.

Protobuf Struct numbers are doubles, so values that a double cannot carry exactly (integers
beyond 2^53, decimals with more than 15 significant digits) are sent as exact decimal strings.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import struct_pb2, timestamp_pb2

from analytics.v1 import analytics_pb2
from service.backends.base import QueryStats
from service.cache.execution import ServedStats
from service.insights.funnel_request import (
    FunnelActorsRequest,
    FunnelExclusion,
    FunnelRequest,
    FunnelStep,
)
from service.insights.funnels import FunnelAnswer, FunnelStepResult
from service.insights.lifecycle import LifecycleAnswer
from service.insights.lifecycle_request import LifecycleRequest
from service.insights.retention import RetentionAnswer
from service.insights.retention_request import RetentionEvent, RetentionRequest
from service.insights.trend_request import TrendRequest, TrendSeries
from service.insights.trend_results import TrendAnswer
from service.query.compiler import OutputColumn
from service.query.request import MetricRequest, QueryRequest

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

_EXACT_INT = 2**53
_INT64_MAX = 2**63 - 1
_MAX_EXACT_DIGITS = 15
_DECIMAL64_DIGITS = 18
_PLAIN_SCALE = 6


def query_request(
    message: analytics_pb2.QueryRequest | analytics_pb2.StreamQueryRequest,
) -> QueryRequest:
    """The domain request of either RPC's request message."""
    return QueryRequest(
        model=message.model,
        aggregate=message.aggregate,
        field=message.field,
        metrics=tuple(MetricRequest(m.aggregate, m.field, m.alias) for m in message.metrics),
        group_by=message.group_by,
        group_by_interval=message.group_by_interval,
        filters=dict(message.filters),
        order=message.order,
        limit=message.limit,
        offset=message.offset,
        time_zone=message.time_zone,
    )


def query_meta(
    columns: Sequence[OutputColumn],
    stats: QueryStats,
    last_sync_at: dt.datetime | None,
    *,
    rollup: str = "",
) -> analytics_pb2.QueryMeta:
    """The meta message: freshness, the engine's figures, the column list, cache hit or not."""
    meta = analytics_pb2.QueryMeta(
        rollup=rollup,
        rows_scanned=float(stats.rows_scanned),
        duration_ms=max(round(stats.elapsed_ms), 0),
        cache_hit=isinstance(stats, ServedStats) and stats.cache_hit,
        columns=[analytics_pb2.ColumnInfo(name=c.key, type=c.type) for c in columns],
    )
    if last_sync_at is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(last_sync_at.astimezone(dt.UTC))
        meta.last_sync_at.CopyFrom(stamp)
    return meta


def struct_rows(columns: Sequence[OutputColumn], table: pa.Table) -> list[struct_pb2.Struct]:
    """Every row of an Arrow result as a Struct keyed by the result keys."""
    values = [
        [_json_value(column.type, v) for v in table.column(column.alias).to_pylist()]
        if column.alias in table.column_names
        else [None] * table.num_rows
        for column in columns
    ]
    keys = [column.key for column in columns]
    rows: list[struct_pb2.Struct] = []
    for row_values in zip(*values, strict=True):
        row = struct_pb2.Struct()
        row.update(dict(zip(keys, row_values, strict=True)))
        rows.append(row)
    return rows


def _json_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "int":
        # Sums of integer fields arrive as Decimal(38, 0).
        number = int(value)
        return number if abs(number) <= _EXACT_INT else str(number)
    if kind == "decimal":
        digits = value.as_tuple().digits
        return float(value) if len(digits) <= _MAX_EXACT_DIGITS else format(value, "f")
    if kind == "float":
        return value if math.isfinite(value) else None
    return value


def column_chunk(
    columns: Sequence[OutputColumn],
    batch: pa.RecordBatch,
    into: analytics_pb2.ColumnChunk | None = None,
) -> analytics_pb2.ColumnChunk:
    """One record batch as a columnar chunk of packed arrays (filled into ``into`` if given).

    Filling the chunk of a response in place spares the copy that passing a finished chunk to
    the response's constructor makes (a fifth of the streaming encode time).
    """
    chunk = analytics_pb2.ColumnChunk() if into is None else into
    chunk.row_count = batch.num_rows
    for column in columns:
        array = batch.column(column.alias)
        out = chunk.columns.add(name=column.key)
        if array.null_count:
            out.null_positions.extend(
                np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)).tolist()
            )
        _fill(out, column.type, array)
    return chunk


def _fill(out: analytics_pb2.Column, kind: str, array: pa.Array) -> None:
    # Casts and fill_null only where they change something: on the streaming hot path each
    # costs a pass over the chunk (bench/README.md, profiling notes).
    if kind == "int" and not _beyond_int64(array):
        values = _filled(_as(array, pa.int64()), 0)
        out.int64_values.values.extend(values.to_numpy(zero_copy_only=False).tolist())
    elif kind == "float":
        values = _filled(_as(array, pa.float64()), 0.0)
        out.double_values.values.extend(values.to_numpy(zero_copy_only=False).tolist())
    elif kind == "bool":
        values = _filled(array, False)
        out.bool_values.values.extend(values.to_numpy(zero_copy_only=False).tolist())
    else:
        text = _decimal_text(array) if pa.types.is_decimal(array.type) else _as(array, pa.string())
        out.string_values.values.extend(_filled(text, "").to_pylist())


def _decimal_text(array: pa.Array) -> pa.Array:
    """Each decimal as plain exact digits (``0.0000001``, never ``1E-7``)."""
    kind = array.type
    narrow = array
    if pa.types.is_decimal128(kind) and kind.precision <= _DECIMAL64_DIGITS:
        # Arrow formats a decimal64 a third faster than the same values as decimal128, and
        # ClickHouse's Decimal(P <= 18) arrives as decimal128.
        narrow = array.cast(pa.decimal64(kind.precision, kind.scale))
    text = narrow.cast(pa.string())
    if kind.scale <= _PLAIN_SCALE:
        return text
    # Arrow writes the exponent form where the exponent would be below -6 (Java's rule).
    exponent_form = pc.fill_null(pc.match_substring(text, "E"), False)
    if not pc.any(exponent_form).as_py():
        return text
    plain = [format(value, "f") for value in array.filter(exponent_form).to_pylist()]
    return pc.replace_with_mask(text, exponent_form, pa.array(plain, pa.string()))


def _as(array: pa.Array, target: pa.DataType) -> pa.Array:
    return array if array.type == target else array.cast(target)


def _filled(array: pa.Array, value: Any) -> pa.Array:
    return array.fill_null(value) if array.null_count else array


def _beyond_int64(array: pa.Array) -> bool:
    """Whether an integer column (UInt64, or Decimal(38, 0) for sums) has a value past int64."""
    integral = pa.types.is_uint64(array.type) or pa.types.is_decimal(array.type)
    if not integral or array.null_count == len(array):
        return False
    bounds = pc.min_max(array).as_py()
    return bool(bounds["max"] > _INT64_MAX or bounds["min"] < -_INT64_MAX - 1)


def response_json(response: analytics_pb2.QueryResponse) -> dict[str, Any]:
    """The response's proto3 JSON form, integral numbers written as integers.

    DESIGN.md section 5 shows counts as 38000, not 38000.0.
    """
    order = [c.name for c in response.meta.columns]
    data = []
    for row in response.data:
        values = _struct_dict(row)
        keys = [k for k in order if k in values] + [k for k in values if k not in order]
        data.append({k: _plain_number(values[k]) for k in keys})
    meta: dict[str, Any] = {
        "lastSyncAt": (
            response.meta.last_sync_at.ToJsonString()
            if response.meta.HasField("last_sync_at")
            else None
        ),
        "rowsScanned": int(response.meta.rows_scanned),
        "durationMs": response.meta.duration_ms,
        "columns": [{"name": c.name, "type": c.type} for c in response.meta.columns],
        "cacheHit": response.meta.cache_hit,
    }
    if response.meta.rollup:
        meta["rollup"] = response.meta.rollup
    return {"data": data, "meta": meta}


def chunk_rows(chunk: analytics_pb2.ColumnChunk) -> list[dict[str, Any]]:
    """The rows of a columnar chunk as dicts (NULL positions become None)."""
    columns: list[tuple[str, list[Any]]] = []
    for column in chunk.columns:
        which = column.WhichOneof("values")
        values: list[Any] = list(getattr(column, which).values) if which else []
        for position in column.null_positions:
            values[position] = None
        columns.append((column.name, values))
    return [{name: values[i] for name, values in columns} for i in range(chunk.row_count)]


def _struct_dict(row: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _value(row.fields[key]) for key in row.fields}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _plain_number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_INT:
        return int(value)
    return value


def trend_request(message: analytics_pb2.TrendRequest) -> TrendRequest:
    """The domain request of a Trend message."""
    return TrendRequest(
        model=message.model,
        series=tuple(
            TrendSeries(s.aggregate, s.field, dict(s.filters), s.label, s.event)
            for s in message.series
        ),
        date_from=message.date_from,
        date_to=message.date_to,
        interval=message.interval,
        time_zone=message.time_zone,
        week_start=message.week_start,
        date_field=message.date_field,
        filters=dict(message.filters),
        breakdown=message.breakdown,
        breakdown_limit=message.breakdown_limit,
        compare=message.compare,
        formula=message.formula,
        display=message.display,
        rolling_window=message.rolling_window,
    )


def trend_response(
    answer: TrendAnswer,
    stats: QueryStats,
    last_sync_at: dt.datetime | None,
    *,
    breakdown: bool,
    rollup: str = "",
) -> analytics_pb2.TrendResponse:
    """The Trend response message; values exact as in Query (strings past a double's reach).

    ``rollup``: the catalog rollup that answered, if one did.
    """
    response = analytics_pb2.TrendResponse(
        buckets=answer.buckets,
        compare_buckets=answer.compare_buckets,
        meta=query_meta((), stats, last_sync_at, rollup=rollup),
    )
    for line in answer.lines:
        out = response.lines.add(
            series=line.series,
            label=line.label,
            is_other=line.is_other,
            compare=line.compare,
            type=line.output_type,
        )
        if breakdown:
            out.breakdown_value.CopyFrom(_protobuf_value(_breakdown_json(line.breakdown_value)))
        out.values.extend([_json_value(line.output_type, v) for v in line.values])
    return response


def trend_json(response: analytics_pb2.TrendResponse) -> dict[str, Any]:
    """The Trend response's JSON form, integral numbers written as integers."""
    lines = []
    for line in response.lines:
        item: dict[str, Any] = {
            "series": line.series,
            "label": line.label,
            "values": [_plain_number(_value(v)) for v in line.values.values],
            "type": line.type,
        }
        if line.HasField("breakdown_value"):
            item["breakdownValue"] = _plain_number(_value(line.breakdown_value))
            item["isOther"] = line.is_other
        if line.compare:
            item["compare"] = True
        lines.append(item)
    document: dict[str, Any] = {"buckets": list(response.buckets), "lines": lines}
    if response.compare_buckets:
        document["compareBuckets"] = list(response.compare_buckets)
    document["meta"] = _insight_meta_json(response.meta)
    return document


def _insight_meta_json(meta: analytics_pb2.QueryMeta) -> dict[str, Any]:
    """An insight's meta as JSON (no columns).

    Freshness, the engine's figures, cache hit, and the rollup that answered if one did.
    """
    document: dict[str, Any] = {
        "lastSyncAt": meta.last_sync_at.ToJsonString() if meta.HasField("last_sync_at") else None,
        "rowsScanned": int(meta.rows_scanned),
        "durationMs": meta.duration_ms,
        "cacheHit": meta.cache_hit,
    }
    if meta.rollup:
        document["rollup"] = meta.rollup
    return document


def funnel_request(message: analytics_pb2.FunnelRequest) -> FunnelRequest:
    """The domain request of a Funnel message."""
    return FunnelRequest(
        model=message.model,
        steps=tuple(
            FunnelStep(s.event, dict(s.filters), s.label, s.model, s.date_field, s.actor)
            for s in message.steps
        ),
        date_from=message.date_from,
        date_to=message.date_to,
        time_zone=message.time_zone,
        window=message.window,
        filters=dict(message.filters),
        order=message.order,
        exclusions=tuple(
            FunnelExclusion(
                x.event, dict(x.filters), x.from_step, x.to_step, x.model, x.date_field, x.actor
            )
            for x in message.exclusions
        ),
        breakdown=message.breakdown,
        breakdown_limit=message.breakdown_limit,
        breakdown_attribution=message.breakdown_attribution,
        breakdown_step=message.breakdown_step,
    )


def funnel_actors_request(message: analytics_pb2.FunnelActorsRequest) -> FunnelActorsRequest:
    """The domain request of a FunnelActors message."""
    return FunnelActorsRequest(
        funnel=funnel_request(message.funnel),
        step=message.step,
        status=message.status,
        limit=message.limit,
        offset=message.offset,
    )


def funnel_response(
    answer: FunnelAnswer, stats: QueryStats, last_sync_at: dt.datetime | None
) -> analytics_pb2.FunnelResponse:
    """The Funnel response message."""
    response = analytics_pb2.FunnelResponse(meta=query_meta((), stats, last_sync_at))
    _funnel_steps(answer.steps, response.steps)
    for item in answer.breakdowns:
        out = response.breakdowns.add(is_other=item.is_other)
        out.value.CopyFrom(_protobuf_value(_breakdown_json(item.value)))
        _funnel_steps(item.steps, out.steps)
    return response


def _funnel_steps(
    steps: Sequence[FunnelStepResult],
    into: RepeatedCompositeFieldContainer[analytics_pb2.FunnelStepResult],
) -> None:
    for step in steps:
        out = into.add(
            label=step.label,
            actors=step.actors,
            conversion_from_first=step.conversion_from_first,
            conversion_from_previous=step.conversion_from_previous,
            drop_off=step.drop_off,
        )
        if step.median_seconds is not None:
            out.median_seconds = step.median_seconds
        if step.average_seconds is not None:
            out.average_seconds = step.average_seconds


def funnel_json(response: analytics_pb2.FunnelResponse) -> dict[str, Any]:
    """The Funnel response's JSON form (counts as integers, absent times as null)."""
    body: dict[str, Any] = {"steps": [_funnel_step_json(step) for step in response.steps]}
    if response.breakdowns:
        body["breakdowns"] = [
            {
                "value": _plain_number(_value(item.value)),
                "isOther": item.is_other,
                "steps": [_funnel_step_json(step) for step in item.steps],
            }
            for item in response.breakdowns
        ]
    body["meta"] = _insight_meta_json(response.meta)
    return body


def _funnel_step_json(step: analytics_pb2.FunnelStepResult) -> dict[str, Any]:
    return {
        "label": step.label,
        "actors": int(step.actors),
        "conversionFromFirst": step.conversion_from_first,
        "conversionFromPrevious": step.conversion_from_previous,
        "dropOff": int(step.drop_off),
        "medianSeconds": step.median_seconds if step.HasField("median_seconds") else None,
        "averageSeconds": step.average_seconds if step.HasField("average_seconds") else None,
    }


def _breakdown_json(value: Any) -> Any:
    """A breakdown value as JSON: exact numbers as Query writes them, other values as text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return _json_value("int", value)
    if isinstance(value, float):
        return _json_value("float", value)
    if isinstance(value, Decimal):
        return _json_value("decimal", value)
    return str(value)


def _protobuf_value(value: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, (int, float)):
        out.number_value = value
    else:
        out.string_value = str(value)
    return out


def retention_request(message: analytics_pb2.RetentionRequest) -> RetentionRequest:
    """The domain request of a Retention message."""
    return RetentionRequest(
        model=message.model,
        target=RetentionEvent(message.target.event, dict(message.target.filters)),
        returning=RetentionEvent(message.returning.event, dict(message.returning.filters)),
        period=message.period,
        intervals=message.intervals,
        retention_type=message.retention_type,
        date_from=message.date_from,
        date_to=message.date_to,
        time_zone=message.time_zone,
        week_start=message.week_start,
        filters=dict(message.filters),
        breakdown=message.breakdown,
        breakdown_limit=message.breakdown_limit,
    )


def retention_response(
    answer: RetentionAnswer,
    stats: QueryStats,
    last_sync_at: dt.datetime | None,
    *,
    breakdown: bool,
) -> analytics_pb2.RetentionResponse:
    """The Retention response message (a breakdown value on each table with a breakdown)."""
    response = analytics_pb2.RetentionResponse(
        period=answer.period,
        intervals=answer.intervals,
        retention_type=answer.retention_type,
        meta=query_meta((), stats, last_sync_at),
    )
    for table in answer.tables:
        out = response.tables.add(is_other=table.is_other)
        if breakdown:
            out.breakdown_value.CopyFrom(_protobuf_value(_breakdown_json(table.breakdown_value)))
        for cohort in table.cohorts:
            row = out.cohorts.add(start=cohort.start, size=cohort.size)
            row.counts.extend(list(cohort.counts))
            row.percentages.extend(list(cohort.percentages))
    return response


def retention_json(response: analytics_pb2.RetentionResponse) -> dict[str, Any]:
    """The Retention response's JSON form (counts as integers, absent intervals as null)."""
    tables = []
    for table in response.tables:
        item: dict[str, Any] = {}
        if table.HasField("breakdown_value"):
            item["breakdownValue"] = _plain_number(_value(table.breakdown_value))
            item["isOther"] = table.is_other
        item["cohorts"] = [
            {
                "start": cohort.start,
                "size": int(cohort.size),
                "counts": [_plain_number(_value(v)) for v in cohort.counts.values],
                "percentages": [_value(v) for v in cohort.percentages.values],
            }
            for cohort in table.cohorts
        ]
        tables.append(item)
    return {
        "period": response.period,
        "intervals": response.intervals,
        "retentionType": response.retention_type,
        "tables": tables,
        "meta": _insight_meta_json(response.meta),
    }


def lifecycle_request(message: analytics_pb2.LifecycleRequest) -> LifecycleRequest:
    """The domain request of a Lifecycle message."""
    return LifecycleRequest(
        model=message.model,
        event=message.event,
        filters=dict(message.filters),
        period=message.period,
        date_from=message.date_from,
        date_to=message.date_to,
        time_zone=message.time_zone,
        week_start=message.week_start,
    )


def lifecycle_response(
    answer: LifecycleAnswer, stats: QueryStats, last_sync_at: dt.datetime | None
) -> analytics_pb2.LifecycleResponse:
    """The Lifecycle response message."""
    response = analytics_pb2.LifecycleResponse(
        period=answer.period,
        buckets=list(answer.buckets),
        meta=query_meta((), stats, last_sync_at),
    )
    for line in answer.lines:
        response.lines.add(status=line.status, values=list(line.values))
    return response


def lifecycle_json(response: analytics_pb2.LifecycleResponse) -> dict[str, Any]:
    """The Lifecycle response's JSON form."""
    return {
        "period": response.period,
        "buckets": list(response.buckets),
        "lines": [
            {"status": line.status, "values": [int(v) for v in line.values]}
            for line in response.lines
        ],
        "meta": _insight_meta_json(response.meta),
    }
