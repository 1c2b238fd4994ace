import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(_message.Message):
    __slots__ = ("aggregate", "field", "alias")
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    aggregate: str
    field: str
    alias: str
    def __init__(self, aggregate: _Optional[str] = ..., field: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("model", "aggregate", "field", "metrics", "group_by", "group_by_interval", "filters", "order", "limit", "offset", "time_zone")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    model: str
    aggregate: str
    field: str
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    group_by: str
    group_by_interval: str
    filters: _containers.ScalarMap[str, str]
    order: str
    limit: int
    offset: int
    time_zone: str
    def __init__(self, model: _Optional[str] = ..., aggregate: _Optional[str] = ..., field: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., group_by: _Optional[str] = ..., group_by_interval: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., order: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., time_zone: _Optional[str] = ...) -> None: ...

class QueryMeta(_message.Message):
    __slots__ = ("last_sync_at", "rows_scanned", "duration_ms", "columns", "cache_hit", "rollup")
    LAST_SYNC_AT_FIELD_NUMBER: _ClassVar[int]
    ROWS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    ROLLUP_FIELD_NUMBER: _ClassVar[int]
    last_sync_at: _timestamp_pb2.Timestamp
    rows_scanned: float
    duration_ms: int
    columns: _containers.RepeatedCompositeFieldContainer[ColumnInfo]
    cache_hit: bool
    rollup: str
    def __init__(self, last_sync_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rows_scanned: _Optional[float] = ..., duration_ms: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[ColumnInfo, _Mapping]]] = ..., cache_hit: _Optional[bool] = ..., rollup: _Optional[str] = ...) -> None: ...

class ColumnInfo(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("data", "meta")
    DATA_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    data: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    meta: QueryMeta
    def __init__(self, data: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., meta: _Optional[_Union[QueryMeta, _Mapping]] = ...) -> None: ...

class StreamQueryRequest(_message.Message):
    __slots__ = ("model", "aggregate", "field", "metrics", "group_by", "group_by_interval", "filters", "order", "limit", "offset", "time_zone", "chunk_rows")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ROWS_FIELD_NUMBER: _ClassVar[int]
    model: str
    aggregate: str
    field: str
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    group_by: str
    group_by_interval: str
    filters: _containers.ScalarMap[str, str]
    order: str
    limit: int
    offset: int
    time_zone: str
    chunk_rows: int
    def __init__(self, model: _Optional[str] = ..., aggregate: _Optional[str] = ..., field: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., group_by: _Optional[str] = ..., group_by_interval: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., order: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., time_zone: _Optional[str] = ..., chunk_rows: _Optional[int] = ...) -> None: ...

class StreamQueryResponse(_message.Message):
    __slots__ = ("chunk", "meta")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    chunk: ColumnChunk
    meta: QueryMeta
    def __init__(self, chunk: _Optional[_Union[ColumnChunk, _Mapping]] = ..., meta: _Optional[_Union[QueryMeta, _Mapping]] = ...) -> None: ...

class ColumnChunk(_message.Message):
    __slots__ = ("row_count", "columns")
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    row_count: int
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    def __init__(self, row_count: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "int64_values", "double_values", "string_values", "bool_values", "null_positions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUES_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUES_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUES_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUES_FIELD_NUMBER: _ClassVar[int]
    NULL_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    int64_values: Int64Values
    double_values: DoubleValues
    string_values: StringValues
    bool_values: BoolValues
    null_positions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., int64_values: _Optional[_Union[Int64Values, _Mapping]] = ..., double_values: _Optional[_Union[DoubleValues, _Mapping]] = ..., string_values: _Optional[_Union[StringValues, _Mapping]] = ..., bool_values: _Optional[_Union[BoolValues, _Mapping]] = ..., null_positions: _Optional[_Iterable[int]] = ...) -> None: ...

class Int64Values(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class DoubleValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class StringValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class BoolValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bool]] = ...) -> None: ...

class TrendSeries(_message.Message):
    __slots__ = ("aggregate", "field", "filters", "label", "event")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    aggregate: str
    field: str
    filters: _containers.ScalarMap[str, str]
    label: str
    event: str
    def __init__(self, aggregate: _Optional[str] = ..., field: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., label: _Optional[str] = ..., event: _Optional[str] = ...) -> None: ...

class TrendRequest(_message.Message):
    __slots__ = ("model", "series", "date_from", "date_to", "interval", "time_zone", "week_start", "date_field", "filters", "breakdown", "breakdown_limit", "compare", "formula", "display", "rolling_window")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    DATE_FROM_FIELD_NUMBER: _ClassVar[int]
    DATE_TO_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    WEEK_START_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    COMPARE_FIELD_NUMBER: _ClassVar[int]
    FORMULA_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_FIELD_NUMBER: _ClassVar[int]
    ROLLING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    model: str
    series: _containers.RepeatedCompositeFieldContainer[TrendSeries]
    date_from: str
    date_to: str
    interval: str
    time_zone: str
    week_start: str
    date_field: str
    filters: _containers.ScalarMap[str, str]
    breakdown: str
    breakdown_limit: int
    compare: str
    formula: str
    display: str
    rolling_window: int
    def __init__(self, model: _Optional[str] = ..., series: _Optional[_Iterable[_Union[TrendSeries, _Mapping]]] = ..., date_from: _Optional[str] = ..., date_to: _Optional[str] = ..., interval: _Optional[str] = ..., time_zone: _Optional[str] = ..., week_start: _Optional[str] = ..., date_field: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., breakdown: _Optional[str] = ..., breakdown_limit: _Optional[int] = ..., compare: _Optional[str] = ..., formula: _Optional[str] = ..., display: _Optional[str] = ..., rolling_window: _Optional[int] = ...) -> None: ...

class TrendLine(_message.Message):
    __slots__ = ("series", "label", "breakdown_value", "is_other", "compare", "values", "type")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_VALUE_FIELD_NUMBER: _ClassVar[int]
    IS_OTHER_FIELD_NUMBER: _ClassVar[int]
    COMPARE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    series: str
    label: str
    breakdown_value: _struct_pb2.Value
    is_other: bool
    compare: bool
    values: _struct_pb2.ListValue
    type: str
    def __init__(self, series: _Optional[str] = ..., label: _Optional[str] = ..., breakdown_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., is_other: _Optional[bool] = ..., compare: _Optional[bool] = ..., values: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., type: _Optional[str] = ...) -> None: ...

class TrendResponse(_message.Message):
    __slots__ = ("buckets", "compare_buckets", "lines", "meta")
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    COMPARE_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedScalarFieldContainer[str]
    compare_buckets: _containers.RepeatedScalarFieldContainer[str]
    lines: _containers.RepeatedCompositeFieldContainer[TrendLine]
    meta: QueryMeta
    def __init__(self, buckets: _Optional[_Iterable[str]] = ..., compare_buckets: _Optional[_Iterable[str]] = ..., lines: _Optional[_Iterable[_Union[TrendLine, _Mapping]]] = ..., meta: _Optional[_Union[QueryMeta, _Mapping]] = ...) -> None: ...

class FunnelStep(_message.Message):
    __slots__ = ("event", "filters", "label", "model", "date_field", "actor")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    event: str
    filters: _containers.ScalarMap[str, str]
    label: str
    model: str
    date_field: str
    actor: str
    def __init__(self, event: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., label: _Optional[str] = ..., model: _Optional[str] = ..., date_field: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class FunnelRequest(_message.Message):
    __slots__ = ("model", "steps", "date_from", "date_to", "time_zone", "window", "filters", "order", "exclusions", "breakdown", "breakdown_limit", "breakdown_attribution", "breakdown_step")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    DATE_FROM_FIELD_NUMBER: _ClassVar[int]
    DATE_TO_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIONS_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_STEP_FIELD_NUMBER: _ClassVar[int]
    model: str
    steps: _containers.RepeatedCompositeFieldContainer[FunnelStep]
    date_from: str
    date_to: str
    time_zone: str
    window: str
    filters: _containers.ScalarMap[str, str]
    order: str
    exclusions: _containers.RepeatedCompositeFieldContainer[FunnelExclusion]
    breakdown: str
    breakdown_limit: int
    breakdown_attribution: str
    breakdown_step: int
    def __init__(self, model: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[FunnelStep, _Mapping]]] = ..., date_from: _Optional[str] = ..., date_to: _Optional[str] = ..., time_zone: _Optional[str] = ..., window: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., order: _Optional[str] = ..., exclusions: _Optional[_Iterable[_Union[FunnelExclusion, _Mapping]]] = ..., breakdown: _Optional[str] = ..., breakdown_limit: _Optional[int] = ..., breakdown_attribution: _Optional[str] = ..., breakdown_step: _Optional[int] = ...) -> None: ...

class FunnelActorsRequest(_message.Message):
    __slots__ = ("funnel", "step", "status", "chunk_rows", "limit", "offset")
    FUNNEL_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ROWS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    funnel: FunnelRequest
    step: int
    status: str
    chunk_rows: int
    limit: int
    offset: int
    def __init__(self, funnel: _Optional[_Union[FunnelRequest, _Mapping]] = ..., step: _Optional[int] = ..., status: _Optional[str] = ..., chunk_rows: _Optional[int] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class FunnelActorsResponse(_message.Message):
    __slots__ = ("chunk", "meta")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    chunk: ColumnChunk
    meta: QueryMeta
    def __init__(self, chunk: _Optional[_Union[ColumnChunk, _Mapping]] = ..., meta: _Optional[_Union[QueryMeta, _Mapping]] = ...) -> None: ...

class FunnelExclusion(_message.Message):
    __slots__ = ("event", "filters", "from_step", "to_step", "model", "date_field", "actor")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    TO_STEP_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    event: str
    filters: _containers.ScalarMap[str, str]
    from_step: int
    to_step: int
    model: str
    date_field: str
    actor: str
    def __init__(self, event: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., from_step: _Optional[int] = ..., to_step: _Optional[int] = ..., model: _Optional[str] = ..., date_field: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class FunnelStepResult(_message.Message):
    __slots__ = ("label", "actors", "conversion_from_first", "conversion_from_previous", "drop_off", "median_seconds", "average_seconds")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ACTORS_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_FROM_FIRST_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_FROM_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    DROP_OFF_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    label: str
    actors: int
    conversion_from_first: float
    conversion_from_previous: float
    drop_off: int
    median_seconds: float
    average_seconds: float
    def __init__(self, label: _Optional[str] = ..., actors: _Optional[int] = ..., conversion_from_first: _Optional[float] = ..., conversion_from_previous: _Optional[float] = ..., drop_off: _Optional[int] = ..., median_seconds: _Optional[float] = ..., average_seconds: _Optional[float] = ...) -> None: ...

class FunnelResponse(_message.Message):
    __slots__ = ("steps", "meta", "breakdowns")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWNS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[FunnelStepResult]
    meta: QueryMeta
    breakdowns: _containers.RepeatedCompositeFieldContainer[FunnelBreakdown]
    def __init__(self, steps: _Optional[_Iterable[_Union[FunnelStepResult, _Mapping]]] = ..., meta: _Optional[_Union[QueryMeta, _Mapping]] = ..., breakdowns: _Optional[_Iterable[_Union[FunnelBreakdown, _Mapping]]] = ...) -> None: ...

class FunnelBreakdown(_message.Message):
    __slots__ = ("value", "is_other", "steps")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    IS_OTHER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    value: _struct_pb2.Value
    is_other: bool
    steps: _containers.RepeatedCompositeFieldContainer[FunnelStepResult]
    def __init__(self, value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., is_other: _Optional[bool] = ..., steps: _Optional[_Iterable[_Union[FunnelStepResult, _Mapping]]] = ...) -> None: ...

class RetentionEvent(_message.Message):
    __slots__ = ("event", "filters")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    event: str
    filters: _containers.ScalarMap[str, str]
    def __init__(self, event: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RetentionRequest(_message.Message):
    __slots__ = ("model", "target", "returning", "period", "intervals", "retention_type", "date_from", "date_to", "time_zone", "week_start", "filters", "breakdown", "breakdown_limit")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RETURNING_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    INTERVALS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATE_FROM_FIELD_NUMBER: _ClassVar[int]
    DATE_TO_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    WEEK_START_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    target: RetentionEvent
    returning: RetentionEvent
    period: str
    intervals: int
    retention_type: str
    date_from: str
    date_to: str
    time_zone: str
    week_start: str
    filters: _containers.ScalarMap[str, str]
    breakdown: str
    breakdown_limit: int
    def __init__(self, model: _Optional[str] = ..., target: _Optional[_Union[RetentionEvent, _Mapping]] = ..., returning: _Optional[_Union[RetentionEvent, _Mapping]] = ..., period: _Optional[str] = ..., intervals: _Optional[int] = ..., retention_type: _Optional[str] = ..., date_from: _Optional[str] = ..., date_to: _Optional[str] = ..., time_zone: _Optional[str] = ..., week_start: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., breakdown: _Optional[str] = ..., breakdown_limit: _Optional[int] = ...) -> None: ...

class RetentionCohort(_message.Message):
    __slots__ = ("start", "size", "counts", "percentages")
    START_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGES_FIELD_NUMBER: _ClassVar[int]
    start: str
    size: int
    counts: _struct_pb2.ListValue
    percentages: _struct_pb2.ListValue
    def __init__(self, start: _Optional[str] = ..., size: _Optional[int] = ..., counts: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., percentages: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ...) -> None: ...

class RetentionTable(_message.Message):
    __slots__ = ("breakdown_value", "is_other", "cohorts")
    BREAKDOWN_VALUE_FIELD_NUMBER: _ClassVar[int]
    IS_OTHER_FIELD_NUMBER: _ClassVar[int]
    COHORTS_FIELD_NUMBER: _ClassVar[int]
    breakdown_value: _struct_pb2.Value
    is_other: bool
    cohorts: _containers.RepeatedCompositeFieldContainer[RetentionCohort]
    def __init__(self, breakdown_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., is_other: _Optional[bool] = ..., cohorts: _Optional[_Iterable[_Union[RetentionCohort, _Mapping]]] = ...) -> None: ...

class RetentionResponse(_message.Message):
    __slots__ = ("period", "intervals", "retention_type", "tables", "meta")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    INTERVALS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    period: str
    intervals: int
    retention_type: str
    tables: _containers.RepeatedCompositeFieldContainer[RetentionTable]
    meta: QueryMeta
    def __init__(self, period: _Optional[str] = ..., intervals: _Optional[int] = ..., retention_type: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[RetentionTable, _Mapping]]] = ..., meta: _Optional[_Union[QueryMeta, _Mapping]] = ...) -> None: ...

class LifecycleRequest(_message.Message):
    __slots__ = ("model", "event", "filters", "period", "date_from", "date_to", "time_zone", "week_start")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    DATE_FROM_FIELD_NUMBER: _ClassVar[int]
    DATE_TO_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    WEEK_START_FIELD_NUMBER: _ClassVar[int]
    model: str
    event: str
    filters: _containers.ScalarMap[str, str]
    period: str
    date_from: str
    date_to: str
    time_zone: str
    week_start: str
    def __init__(self, model: _Optional[str] = ..., event: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., period: _Optional[str] = ..., date_from: _Optional[str] = ..., date_to: _Optional[str] = ..., time_zone: _Optional[str] = ..., week_start: _Optional[str] = ...) -> None: ...

class LifecycleLine(_message.Message):
    __slots__ = ("status", "values")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    status: str
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, status: _Optional[str] = ..., values: _Optional[_Iterable[int]] = ...) -> None: ...

class LifecycleResponse(_message.Message):
    __slots__ = ("period", "buckets", "lines", "meta")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    period: str
    buckets: _containers.RepeatedScalarFieldContainer[str]
    lines: _containers.RepeatedCompositeFieldContainer[LifecycleLine]
    meta: QueryMeta
    def __init__(self, period: _Optional[str] = ..., buckets: _Optional[_Iterable[str]] = ..., lines: _Optional[_Iterable[_Union[LifecycleLine, _Mapping]]] = ..., meta: _Optional[_Union[QueryMeta, _Mapping]] = ...) -> None: ...
