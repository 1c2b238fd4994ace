import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TenantBudget(_message.Message):
    __slots__ = ("requests_per_second", "burst", "concurrent_queries", "rows_per_query", "seconds_per_query")
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_QUERIES_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    SECONDS_PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    requests_per_second: float
    burst: int
    concurrent_queries: int
    rows_per_query: int
    seconds_per_query: float
    def __init__(self, requests_per_second: _Optional[float] = ..., burst: _Optional[int] = ..., concurrent_queries: _Optional[int] = ..., rows_per_query: _Optional[int] = ..., seconds_per_query: _Optional[float] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("tenant_id", "user_name", "row_policies_enforced", "tables", "created_at", "updated_at", "enforcement_detail", "budget")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_NAME_FIELD_NUMBER: _ClassVar[int]
    ROW_POLICIES_ENFORCED_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_DETAIL_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_name: str
    row_policies_enforced: bool
    tables: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    enforcement_detail: str
    budget: TenantBudget
    def __init__(self, tenant_id: _Optional[str] = ..., user_name: _Optional[str] = ..., row_policies_enforced: _Optional[bool] = ..., tables: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., enforcement_detail: _Optional[str] = ..., budget: _Optional[_Union[TenantBudget, _Mapping]] = ...) -> None: ...

class SetTenantBudgetRequest(_message.Message):
    __slots__ = ("tenant_id", "budget")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    budget: TenantBudget
    def __init__(self, tenant_id: _Optional[str] = ..., budget: _Optional[_Union[TenantBudget, _Mapping]] = ...) -> None: ...

class SetTenantBudgetResponse(_message.Message):
    __slots__ = ("tenant", "effective")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    effective: TenantBudget
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ..., effective: _Optional[_Union[TenantBudget, _Mapping]] = ...) -> None: ...

class ProvisionTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ProvisionTenantResponse(_message.Message):
    __slots__ = ("tenant", "created")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    created: bool
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class DeprovisionTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class DeprovisionTenantResponse(_message.Message):
    __slots__ = ("existed", "tenant")
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    tenant: Tenant
    def __init__(self, existed: _Optional[bool] = ..., tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants", "next_page_token", "engine_enforces_row_policies", "engine_detail")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ENFORCES_ROW_POLICIES_FIELD_NUMBER: _ClassVar[int]
    ENGINE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    next_page_token: str
    engine_enforces_row_policies: bool
    engine_detail: str
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., engine_enforces_row_policies: _Optional[bool] = ..., engine_detail: _Optional[str] = ...) -> None: ...
