"""TenantService: provision, deprovision and list tenants (admin only).

Every RPC requires exactly the ``analytics.admin`` permission. Wildcard grants such as ``*.*``
do not confer it: ``*`` segments exist for read permissions (``crm.*.read``), and an admin
right should never be granted by accident. The servicer only translates; the work is done by
``service.tenants.TenantProvisioner``.
"""

from __future__ import annotations

import datetime as dt
import time

from google.protobuf import timestamp_pb2

from analytics.v1 import tenant_pb2, tenant_pb2_grpc
from service import audit
from service.api.interceptors import Context, current_principal
from service.api.status import abort_with_error
from service.auth import ADMIN_PERMISSION, Principal
from service.budgets import BudgetLimits, BudgetOverride, Budgets
from service.errors import AnalyticsError, forbidden, validation_error
from service.tenants import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    TenantProvisioner,
    TenantRecord,
    decode_page_token,
    encode_page_token,
    enforcement_detail,
    validate_tenant_id,
)


def require_admin(principal: Principal) -> None:
    """Raise FORBIDDEN unless the principal was granted ``analytics.admin`` itself."""
    if ADMIN_PERMISSION not in principal.permissions:
        raise forbidden(
            f"managing tenants requires the {ADMIN_PERMISSION!r} permission", ADMIN_PERMISSION
        )


class TenantServicer(tenant_pb2_grpc.TenantServiceServicer):
    """ProvisionTenant, DeprovisionTenant and ListTenants over a TenantProvisioner."""

    def __init__(self, provisioner: TenantProvisioner, budgets: Budgets | None = None) -> None:
        """Serve ``provisioner``'s tenants; ``budgets``: where a new override takes effect."""
        self._provisioner = provisioner
        self._budgets = budgets or Budgets.unlimited()

    async def SetTenantBudget(  # noqa: N802 (the generated base class names it)
        self, request: tenant_pb2.SetTenantBudgetRequest, context: Context
    ) -> tenant_pb2.SetTenantBudgetResponse:
        """Set or clear the tenant's budget override."""
        started = time.perf_counter()
        principal = current_principal.get()
        try:
            require_admin(principal)
            tenant_id = validate_tenant_id(request.tenant_id, "tenantId")
            override = budget_from_message(request.budget) if request.HasField("budget") else None
            record = await self._provisioner.set_budget(tenant_id, override)
        except AnalyticsError as error:
            _audit(principal, "SetTenantBudget", started, error)
            await abort_with_error(context, error)
        _audit(principal, "SetTenantBudget", started)
        # This process applies it at once; the others at their next read of the overrides.
        self._budgets.forget_overrides()
        effective = (
            record.budget.apply(self._budgets.defaults)
            if record.budget is not None
            else self._budgets.defaults
        )
        return tenant_pb2.SetTenantBudgetResponse(
            tenant=self._message(record), effective=limits_message(effective)
        )

    async def ProvisionTenant(  # noqa: N802 (the generated base class names it)
        self, request: tenant_pb2.ProvisionTenantRequest, context: Context
    ) -> tenant_pb2.ProvisionTenantResponse:
        """Create or refresh the tenant (idempotent)."""
        started = time.perf_counter()
        principal = current_principal.get()
        try:
            require_admin(principal)
            tenant_id = validate_tenant_id(request.tenant_id, "tenantId")
            result = await self._provisioner.provision(tenant_id)
        except AnalyticsError as error:
            _audit(principal, "ProvisionTenant", started, error)
            await abort_with_error(context, error)
        _audit(principal, "ProvisionTenant", started)
        return tenant_pb2.ProvisionTenantResponse(
            tenant=self._message(result.record), created=result.created
        )

    async def DeprovisionTenant(  # noqa: N802 (the generated base class names it)
        self, request: tenant_pb2.DeprovisionTenantRequest, context: Context
    ) -> tenant_pb2.DeprovisionTenantResponse:
        """Remove the tenant; say whether it existed."""
        started = time.perf_counter()
        principal = current_principal.get()
        try:
            require_admin(principal)
            tenant_id = validate_tenant_id(request.tenant_id, "tenantId")
            removed = await self._provisioner.deprovision(tenant_id)
        except AnalyticsError as error:
            _audit(principal, "DeprovisionTenant", started, error)
            await abort_with_error(context, error)
        _audit(principal, "DeprovisionTenant", started)
        response = tenant_pb2.DeprovisionTenantResponse(existed=removed is not None)
        if removed is not None:
            response.tenant.CopyFrom(self._message(removed))
        return response

    async def ListTenants(  # noqa: N802 (the generated base class names it)
        self, request: tenant_pb2.ListTenantsRequest, context: Context
    ) -> tenant_pb2.ListTenantsResponse:
        """One page of tenants in order of id."""
        started = time.perf_counter()
        principal = current_principal.get()
        try:
            require_admin(principal)
            if request.page_size < 0:
                raise validation_error("pageSize", "pageSize must not be negative")
            size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            after = decode_page_token(request.page_token, "pageToken")
            page = await self._provisioner.list_tenants(limit=size, after=after)
        except AnalyticsError as error:
            _audit(principal, "ListTenants", started, error)
            await abort_with_error(context, error)
        _audit(principal, "ListTenants", started)
        return tenant_pb2.ListTenantsResponse(
            tenants=[self._message(record) for record in page.tenants],
            next_page_token=encode_page_token(page.next_after)
            if page.next_after is not None
            else "",
            engine_enforces_row_policies=self._provisioner.enforces_row_policies,
            engine_detail=self._provisioner.engine_detail,
        )

    def _message(self, record: TenantRecord) -> tenant_pb2.Tenant:
        message = tenant_pb2.Tenant(
            tenant_id=record.tenant_id,
            user_name=record.user_name,
            row_policies_enforced=record.row_policies_enforced,
            tables=list(record.tables),
            enforcement_detail=enforcement_detail(record, self._provisioner.backend_name),
        )
        message.created_at.CopyFrom(_timestamp(record.created_at))
        message.updated_at.CopyFrom(_timestamp(record.updated_at))
        if record.budget is not None:
            message.budget.CopyFrom(budget_message(record.budget))
        return message


_BUDGET_FIELDS = (
    "requests_per_second",
    "burst",
    "concurrent_queries",
    "rows_per_query",
    "seconds_per_query",
)


def budget_from_message(message: tenant_pb2.TenantBudget) -> BudgetOverride:
    """The override a ``TenantBudget`` sets (its unset fields keep the defaults)."""
    return BudgetOverride(
        requests_per_second=message.requests_per_second
        if message.HasField("requests_per_second")
        else None,
        burst=message.burst if message.HasField("burst") else None,
        concurrent_queries=message.concurrent_queries
        if message.HasField("concurrent_queries")
        else None,
        rows_per_query=message.rows_per_query if message.HasField("rows_per_query") else None,
        seconds_per_query=message.seconds_per_query
        if message.HasField("seconds_per_query")
        else None,
    )


def budget_message(override: BudgetOverride) -> tenant_pb2.TenantBudget:
    """``override`` as a ``TenantBudget`` (only the fields it sets)."""
    message = tenant_pb2.TenantBudget()
    for name in _BUDGET_FIELDS:
        value = getattr(override, name)
        if value is not None:
            setattr(message, name, value)
    return message


def limits_message(limits: BudgetLimits) -> tenant_pb2.TenantBudget:
    """Every limit of ``limits`` as a ``TenantBudget``."""
    return tenant_pb2.TenantBudget(**{name: getattr(limits, name) for name in _BUDGET_FIELDS})


def _audit(
    principal: Principal, rpc: str, started: float, error: AnalyticsError | None = None
) -> None:
    audit.record_query(
        tenant=principal.tenant,
        subject=principal.subject,
        model="",
        rpc=f"TenantService/{rpc}",
        outcome="ok" if error is None else error.kind.value,
        reason="" if error is None else error.reason,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def _timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(dt.UTC))
    return stamp
