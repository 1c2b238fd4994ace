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
SYNC_STATE_UNSPECIFIED: SyncState
SYNC_STATE_STREAMING: SyncState
SYNC_STATE_LAGGING: SyncState
SYNC_STATE_ERROR: SyncState
SYNC_STATE_SNAPSHOT: SyncState
SYNC_STATE_STALE: SyncState

class GetSyncStatusRequest(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[str]] = ...) -> None: ...

class TableSyncStatus(_message.Message):
    __slots__ = ("model", "table", "source", "last_sync_at", "lag_seconds", "pending_events", "events_per_second", "events_applied", "state", "last_error", "reported_at")
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
    def __init__(self, model: _Optional[str] = ..., table: _Optional[str] = ..., source: _Optional[str] = ..., last_sync_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lag_seconds: _Optional[float] = ..., pending_events: _Optional[int] = ..., events_per_second: _Optional[float] = ..., events_applied: _Optional[int] = ..., state: _Optional[_Union[SyncState, str]] = ..., last_error: _Optional[str] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSyncStatusResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableSyncStatus]
    def __init__(self, tables: _Optional[_Iterable[_Union[TableSyncStatus, _Mapping]]] = ...) -> None: ...
