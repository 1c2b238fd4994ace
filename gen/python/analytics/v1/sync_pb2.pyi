import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SyncState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC_STATE_UNSPECIFIED: _ClassVar[SyncState]
    SYNC_STATE_STREAMING: _ClassVar[SyncState]
    SYNC_STATE_LAGGING: _ClassVar[SyncState]
    SYNC_STATE_ERROR: _ClassVar[SyncState]
    SYNC_STATE_SNAPSHOT: _ClassVar[SyncState]
    SYNC_STATE_STALE: _ClassVar[SyncState]
    SYNC_STATE_IDLE: _ClassVar[SyncState]

class BackfillState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKFILL_STATE_UNSPECIFIED: _ClassVar[BackfillState]
    BACKFILL_STATE_RUNNING: _ClassVar[BackfillState]
    BACKFILL_STATE_DONE: _ClassVar[BackfillState]
    BACKFILL_STATE_CANCELLED: _ClassVar[BackfillState]
    BACKFILL_STATE_FAILED: _ClassVar[BackfillState]
SYNC_STATE_UNSPECIFIED: SyncState
SYNC_STATE_STREAMING: SyncState
SYNC_STATE_LAGGING: SyncState
SYNC_STATE_ERROR: SyncState
SYNC_STATE_SNAPSHOT: SyncState
SYNC_STATE_STALE: SyncState
SYNC_STATE_IDLE: SyncState
BACKFILL_STATE_UNSPECIFIED: BackfillState
BACKFILL_STATE_RUNNING: BackfillState
BACKFILL_STATE_DONE: BackfillState
BACKFILL_STATE_CANCELLED: BackfillState
BACKFILL_STATE_FAILED: BackfillState

class GetSyncStatusRequest(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[str]] = ...) -> None: ...

class TableSyncStatus(_message.Message):
    __slots__ = ("model", "table", "source", "last_sync_at", "lag_seconds", "pending_events", "events_per_second", "events_applied", "state", "last_error", "reported_at", "rows", "backfill_rows_copied", "backfill_rows_total")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNC_AT_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PENDING_EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    EVENTS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_ROWS_COPIED_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_ROWS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    model: str
    table: str
    source: str
    last_sync_at: _timestamp_pb2.Timestamp
    lag_seconds: float
    pending_events: int
    events_per_second: float
    events_applied: int
    state: SyncState
    last_error: str
    reported_at: _timestamp_pb2.Timestamp
    rows: int
    backfill_rows_copied: int
    backfill_rows_total: int
    def __init__(self, model: _Optional[str] = ..., table: _Optional[str] = ..., source: _Optional[str] = ..., last_sync_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lag_seconds: _Optional[float] = ..., pending_events: _Optional[int] = ..., events_per_second: _Optional[float] = ..., events_applied: _Optional[int] = ..., state: _Optional[_Union[SyncState, str]] = ..., last_error: _Optional[str] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rows: _Optional[int] = ..., backfill_rows_copied: _Optional[int] = ..., backfill_rows_total: _Optional[int] = ...) -> None: ...

class GetSyncStatusResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableSyncStatus]
    def __init__(self, tables: _Optional[_Iterable[_Union[TableSyncStatus, _Mapping]]] = ...) -> None: ...

class WatchSyncStatusRequest(_message.Message):
    __slots__ = ("models", "interval_seconds")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    interval_seconds: float
    def __init__(self, models: _Optional[_Iterable[str]] = ..., interval_seconds: _Optional[float] = ...) -> None: ...

class WatchSyncStatusResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableSyncStatus]
    def __init__(self, tables: _Optional[_Iterable[_Union[TableSyncStatus, _Mapping]]] = ...) -> None: ...

class StartBackfillRequest(_message.Message):
    __slots__ = ("model", "parallelism", "resume", "batch_rows")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    model: str
    parallelism: int
    resume: bool
    batch_rows: int
    def __init__(self, model: _Optional[str] = ..., parallelism: _Optional[int] = ..., resume: _Optional[bool] = ..., batch_rows: _Optional[int] = ...) -> None: ...

class StartBackfillResponse(_message.Message):
    __slots__ = ("model", "backfill_id", "rows_copied", "rows_total", "rows_per_second", "percent", "eta_seconds", "state", "resumed", "ranges_done", "ranges_total", "rows_removed", "error")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_COPIED_FIELD_NUMBER: _ClassVar[int]
    ROWS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    RANGES_DONE_FIELD_NUMBER: _ClassVar[int]
    RANGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROWS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    model: str
    backfill_id: str
    rows_copied: int
    rows_total: int
    rows_per_second: float
    percent: float
    eta_seconds: float
    state: BackfillState
    resumed: bool
    ranges_done: int
    ranges_total: int
    rows_removed: int
    error: str
    def __init__(self, model: _Optional[str] = ..., backfill_id: _Optional[str] = ..., rows_copied: _Optional[int] = ..., rows_total: _Optional[int] = ..., rows_per_second: _Optional[float] = ..., percent: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., state: _Optional[_Union[BackfillState, str]] = ..., resumed: _Optional[bool] = ..., ranges_done: _Optional[int] = ..., ranges_total: _Optional[int] = ..., rows_removed: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...
