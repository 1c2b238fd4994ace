"""Per-tenant budgets on the embedded engine and a real Redis (README "Budgets").

Checks: a tenant over its requests per second gets RESOURCE_EXHAUSTED with RetryInfo and a
QuotaFailure naming the limit (gRPC) and 429 with Retry-After and problem+json (REST); the
concurrency limit; a scan stopped by the engine at a tiny rows budget, naming the limit (Query,
StreamQuery, Trend); a per-tenant override (TenantService.SetTenantBudget) raises one tenant's
limit while another stays at the default; a flooding tenant never gets its neighbour refused;
two service instances share a tenant's bucket through Redis, and with Redis stopped each
enforces the budget alone without failing a request; refusals in the metrics and the audit log.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import grpc
import pytest
import structlog
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from analytics.v1 import analytics_pb2, analytics_pb2_grpc, tenant_pb2, tenant_pb2_grpc
from local_stack import LocalStack, make_stack_directory
from service.api import convert
from service.api.problem import PROBLEM_CONTENT_TYPE
from service.api.server import RunningServer, start_server
from service.auth import ADMIN_PERMISSION, mint_token
from service.backends.base import AnalyticsBackend, QueryResult
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog
from service.query.compiler import CompiledQuery
from service.schema import all_ddl
from service.settings import Settings
from tests.api_rows import load_deals
from tests.conftest import catalog_in_database, unique_database

pytestmark = pytest.mark.integration

PERMISSIONS = ("crm.deals.read", "crm.contacts.read", "product.events.read")
DEALS_BY_STAGE = {"model": "crm.deals", "groupBy": "stage", "order": "stage.asc"}
TREND = {
    "model": "crm.deals",
    "series": [{"aggregate": "count"}],
    "dateFrom": "2026-01-01",
    "dateTo": "2026-03-01",
    "interval": "month",
}
#: The defaults of the module's servers: small, so that tests reach them in a few calls.
RATE = 2.0
BURST = 4
CONCURRENT = 2


class GatedBackend:
    """The session's engine, with queries that wait for a gate while it is closed."""

    def __init__(self, inner: AnalyticsBackend) -> None:
        self._inner = inner
        self.gate: asyncio.Event | None = None
        self.waiting = 0

    async def execute(
        self, query: CompiledQuery, *, timeout_seconds: float, query_id: str
    ) -> QueryResult:
        if self.gate is not None:
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        return await self._inner.execute(query, timeout_seconds=timeout_seconds, query_id=query_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def budget_settings(**extra: Any) -> Settings:
    return Settings(
        port=0,
        rest_port=0,
        query_timeout_seconds=30,
        result_cache=False,
        budget_requests_per_second=RATE,
        budget_burst=BURST,
        budget_concurrent_queries=CONCURRENT,
        **extra,
    )


@pytest.fixture(scope="module")
async def tables(catalog: Catalog, embedded_backend: EmbeddedBackend) -> AsyncIterator[Catalog]:
    mine = catalog_in_database(catalog, unique_database("budgets"))
    for statement in all_ddl(mine):
        await embedded_backend.command(statement)
    await load_deals(embedded_backend, mine)
    yield mine
    await embedded_backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return budget_settings()


@pytest.fixture(scope="module")
def engine(embedded_backend: EmbeddedBackend) -> GatedBackend:
    return GatedBackend(embedded_backend)


@pytest.fixture(scope="module")
async def server(
    settings: Settings, tables: Catalog, engine: GatedBackend
) -> AsyncIterator[RunningServer]:
    running = await start_server(settings, catalog=tables, backend=cast(Any, engine))
    yield running
    await running.stop(1.0)


def fresh_tenant(name: str) -> str:
    """A tenant no other test used (its bucket is full)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def auth(settings: Settings, tenant: str, *permissions: str) -> tuple[tuple[str, str]]:
    token = mint_token(
        settings, subject="tester", tenant=tenant, permissions=permissions or PERMISSIONS
    )
    return (("authorization", f"Bearer {token}"),)


async def query(
    server: RunningServer, settings: Settings, tenant: str, body: dict[str, Any] = DEALS_BY_STAGE
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        request = json_format.ParseDict(body, analytics_pb2.QueryRequest())
        return convert.response_json(await stub.Query(request, metadata=auth(settings, tenant)))


async def outcome(coro: Any) -> str:
    """``ok``, or the refusal's limit (``requests_per_second``, ...); anything else fails."""
    try:
        await coro
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return quota(error)[1]
    return "ok"


def details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    found: dict[str, Any] = {}
    for detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return found


def quota(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    """The QuotaFailure's (subject, limit name)."""
    failure = details(error)["QuotaFailure"]
    (violation,) = failure.violations
    return violation.subject, violation.description.split(":", 1)[0]


async def set_budget(
    server: RunningServer, settings: Settings, tenant: str, budget: dict[str, Any] | None
) -> tenant_pb2.SetTenantBudgetResponse:
    admin = auth(settings, "ops", ADMIN_PERMISSION)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = tenant_pb2_grpc.TenantServiceStub(channel)
        await stub.ProvisionTenant(
            tenant_pb2.ProvisionTenantRequest(tenant_id=tenant), metadata=admin
        )
        request = tenant_pb2.SetTenantBudgetRequest(tenant_id=tenant)
        if budget is not None:
            request.budget.CopyFrom(json_format.ParseDict(budget, tenant_pb2.TenantBudget()))
        return cast(
            tenant_pb2.SetTenantBudgetResponse,
            await stub.SetTenantBudget(request, metadata=admin),
        )


async def metrics(server: RunningServer) -> str:
    url = f"http://127.0.0.1:{server.rest_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        return await reply.text()


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- requests per second ---------------------------------------------------------------------


async def test_over_rate_is_resource_exhausted_with_retry_info_and_quota_failure(
    server: RunningServer, settings: Settings
) -> None:
    tenant = "acme"  # has deals (rows scanned); no other test uses it
    with structlog.testing.capture_logs() as logs:
        for _ in range(BURST):
            await query(server, settings, tenant)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await query(server, settings, tenant)
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details(error)
    assert quota(error) == (f"tenant:{tenant}", "requests_per_second")
    delay = found["RetryInfo"].retry_delay.ToTimedelta().total_seconds()
    assert 0 < delay <= 1 / RATE + 0.05
    assert found["ErrorInfo"].reason == "BUDGET_REQUESTS_PER_SECOND"
    assert found["ErrorInfo"].metadata["limit"] == "requests_per_second"
    refusals = [
        e
        for e in logs
        if e.get("audit") and e["tenant"] == tenant and e["outcome"] == "too-many-requests"
    ]
    assert [(e["reason"], e["rpc"]) for e in refusals] == [
        ("BUDGET_REQUESTS_PER_SECOND", "Query")
    ], refusals
    # The bucket refills at the rate: after the delay the tenant is served again.
    await asyncio.sleep(delay + 0.05)
    await query(server, settings, tenant)
    text = await metrics(server)
    labels = f'limit="requests_per_second",tenant="{tenant}"'
    assert sample(text, f"analytics_budget_refused_total{{{labels}}}") == 1
    assert sample(text, f'analytics_budget_admitted_total{{tenant="{tenant}"}}') == BURST + 1
    assert sample(text, f'analytics_budget_rows_scanned_total{{tenant="{tenant}"}}') > 0


async def test_rest_over_rate_is_429_with_retry_after_and_problem_json(
    server: RunningServer, settings: Settings
) -> None:
    tenant = fresh_tenant("rest")
    token = mint_token(settings, subject="tester", tenant=tenant, permissions=PERMISSIONS)
    url = f"http://127.0.0.1:{server.rest_port}/v1/data/crm/analytics"
    headers = {"Authorization": f"Bearer {token}"}
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(BURST + 1):
            async with http.post(url, json={"model": "crm.deals"}, headers=headers) as reply:
                statuses.append(reply.status)
                last = (
                    reply.content_type,
                    dict(reply.headers),
                    await reply.json(content_type=None),
                )
    assert statuses == [200] * BURST + [429]
    content_type, reply_headers, document = last
    assert content_type == PROBLEM_CONTENT_TYPE
    assert reply_headers["Retry-After"] == "1"
    assert document["status"] == 429
    assert document["code"] == "BUDGET_REQUESTS_PER_SECOND"
    assert document["type"].endswith("/too-many-requests")
    assert 0 < document["retryAfterSeconds"] <= 1 / RATE + 0.05
    assert [(v["subject"], v["limit"]) for v in document["quotaViolations"]] == [
        (f"tenant:{tenant}", "requests_per_second")
    ]


async def test_insight_over_rate_is_refused_too(server: RunningServer, settings: Settings) -> None:
    tenant = fresh_tenant("trend")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        request = json_format.ParseDict(TREND, analytics_pb2.TrendRequest())
        results = [
            await outcome(stub.Trend(request, metadata=auth(settings, tenant)))
            for _ in range(BURST + 1)
        ]
    assert results == ["ok"] * BURST + ["requests_per_second"]


# --- concurrency -----------------------------------------------------------------------------


async def test_concurrency_limit(
    server: RunningServer, settings: Settings, engine: GatedBackend
) -> None:
    tenant = fresh_tenant("concurrent")
    engine.gate = asyncio.Event()
    try:
        running = [
            asyncio.create_task(query(server, settings, tenant, {**DEALS_BY_STAGE, "limit": n}))
            for n in range(1, CONCURRENT + 1)
        ]
        for _ in range(200):
            if engine.waiting >= CONCURRENT:
                break
            await asyncio.sleep(0.01)
        assert engine.waiting == CONCURRENT
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await query(server, settings, tenant)
        # Another tenant is not held back by this one's running queries.
        other = asyncio.create_task(query(server, settings, fresh_tenant("bystander")))
        for _ in range(200):
            if engine.waiting > CONCURRENT:
                break
            await asyncio.sleep(0.01)
        assert engine.waiting == CONCURRENT + 1
    finally:
        engine.gate.set()
        engine.gate = None
    await asyncio.gather(*running, other)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert quota(raised.value) == (f"tenant:{tenant}", "concurrent_queries")
    assert details(raised.value)["RetryInfo"].retry_delay.ToTimedelta().total_seconds() > 0
    # The slots are given back when the queries end.
    await query(server, settings, tenant)


# --- rows scanned: stopped in the engine -----------------------------------------------------


async def test_runaway_scan_is_stopped_by_the_engine_naming_the_limit(
    server: RunningServer, settings: Settings
) -> None:
    tenant = "globex"  # has a deal: its scan reads rows; no other test uses it
    response = await set_budget(server, settings, tenant, {"rowsPerQuery": 1})
    assert response.tenant.budget.rows_per_query == 1
    assert response.effective.rows_per_query == 1
    assert response.effective.requests_per_second == RATE  # the rest stays at the default
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await query(server, settings, tenant)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            stream = json_format.ParseDict(DEALS_BY_STAGE, analytics_pb2.StreamQueryRequest())
            streamed = await outcome(
                _drain(stub.StreamQuery(stream, metadata=auth(settings, tenant)))
            )
            trend = json_format.ParseDict(TREND, analytics_pb2.TrendRequest())
            trended = await outcome(stub.Trend(trend, metadata=auth(settings, tenant)))
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert quota(error) == (f"tenant:{tenant}", "rows_per_query")
    found = details(error)
    assert found["ErrorInfo"].reason == "BUDGET_ROWS_PER_QUERY"
    assert "RetryInfo" not in found  # the same query would be stopped again
    assert (streamed, trended) == ("rows_per_query", "rows_per_query")
    reasons = [
        (e["rpc"], e["reason"]) for e in logs if e.get("audit") and e.get("tenant") == tenant
    ]
    assert sorted(reasons) == [
        ("Query", "BUDGET_ROWS_PER_QUERY"),
        ("StreamQuery", "BUDGET_ROWS_PER_QUERY"),
        ("Trend", "BUDGET_ROWS_PER_QUERY"),
    ]
    text = await metrics(server)
    labels = f'limit="rows_per_query",tenant="{tenant}"'
    assert sample(text, f"analytics_budget_refused_total{{{labels}}}") == 3
    # Cleared, the default (billions of rows) applies and the same query answers.
    cleared = await set_budget(server, settings, tenant, None)
    assert not cleared.tenant.HasField("budget")
    assert len((await query(server, settings, tenant))["data"]) >= 1


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


# --- overrides and neighbours ----------------------------------------------------------------


async def test_override_raises_one_tenant_while_another_stays_at_the_default(
    server: RunningServer, settings: Settings
) -> None:
    big, small = fresh_tenant("big"), fresh_tenant("small")
    await set_budget(server, settings, big, {"requestsPerSecond": 100, "burst": 3 * BURST})
    results = {
        tenant: [await outcome(query(server, settings, tenant)) for _ in range(2 * BURST)]
        for tenant in (big, small)
    }
    assert results[big] == ["ok"] * (2 * BURST)
    assert results[small][:BURST] == ["ok"] * BURST
    assert set(results[small][BURST:]) == {"requests_per_second"}
    admin = auth(settings, "ops", ADMIN_PERMISSION)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = tenant_pb2_grpc.TenantServiceStub(channel)
        listed = await stub.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=admin)
        by_id = {t.tenant_id: t for t in listed.tenants}
        assert by_id[big].budget.requests_per_second == 100
        # Admin only, like the rest of TenantService.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.SetTenantBudget(
                tenant_pb2.SetTenantBudgetRequest(tenant_id=small),
                metadata=auth(settings, small),
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.SetTenantBudget(
                tenant_pb2.SetTenantBudgetRequest(tenant_id=fresh_tenant("nobody")),
                metadata=admin,
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_flooding_tenant_never_gets_its_neighbour_refused(
    server: RunningServer, settings: Settings
) -> None:
    flooder, quiet = fresh_tenant("flood"), fresh_tenant("quiet")
    stop = asyncio.Event()

    async def flood() -> list[str]:
        seen = []
        while not stop.is_set():
            batch = [outcome(query(server, settings, flooder)) for _ in range(CONCURRENT + 2)]
            seen += await asyncio.gather(*batch)
        return seen

    flooding = asyncio.create_task(flood())
    quiet_results = []
    for _ in range(BURST):
        quiet_results.append(await outcome(query(server, settings, quiet)))
        await asyncio.sleep(0.05)
    stop.set()
    flood_results = await flooding
    assert quiet_results == ["ok"] * BURST
    assert "ok" in flood_results
    assert set(flood_results) - {"ok"} <= {"requests_per_second", "concurrent_queries"}
    assert len(set(flood_results) - {"ok"}) >= 1


# --- Redis: shared by service instances, down -> local -----------------------------------------


@pytest.fixture(scope="module")
async def redis_stack() -> AsyncIterator[LocalStack]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run scripts/install-stack")
    stack = LocalStack(make_stack_directory("budget-redis-"), ["redis"])
    await stack.astart()
    try:
        yield stack
    finally:
        await stack.astop()
        stack.remove()


@pytest.fixture(scope="module")
async def redis_servers(
    redis_stack: LocalStack, tables: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[list[RunningServer]]:
    """Two service instances with their own budgets objects, on one Redis and one engine."""
    settings = budget_settings(redis_url=redis_stack.redis.url)
    servers = [await start_server(settings, catalog=tables, backend=embedded_backend) for _ in "ab"]
    yield servers
    for running in servers:
        await running.stop(1.0)


async def test_redis_bucket_is_shared_by_two_service_instances(
    redis_servers: list[RunningServer], settings: Settings
) -> None:
    one, two = redis_servers
    assert one.budgets is not two.budgets
    tenant = fresh_tenant("shared")
    half = BURST // 2
    first = [await outcome(query(one, settings, tenant)) for _ in range(half)]
    second = [await outcome(query(two, settings, tenant)) for _ in range(BURST - half + 1)]
    assert first + second == ["ok"] * BURST + ["requests_per_second"]
    # The other instance's bucket is the same one: it is empty there too.
    assert await outcome(query(one, settings, tenant)) == "requests_per_second"


async def test_redis_concurrency_is_shared_by_two_service_instances(
    redis_servers: list[RunningServer], settings: Settings, tables: Catalog
) -> None:
    one, two = redis_servers
    tenant = fresh_tenant("slots")
    budgets = [server.budgets for server in redis_servers]
    assert all(b is not None for b in budgets)
    async with budgets[0].admit(tenant), budgets[1].admit(tenant):  # type: ignore[union-attr]
        # Both slots are held, one per instance: the next request is refused in either.
        assert await outcome(query(one, settings, tenant)) == "concurrent_queries"
        assert await outcome(query(two, settings, tenant)) == "concurrent_queries"
    # Four tokens taken (two admissions, two refused calls): one more comes at the rate.
    await asyncio.sleep(1 / RATE + 0.05)
    assert await outcome(query(two, settings, tenant)) == "ok"


async def test_redis_down_enforces_locally_and_never_fails_a_request(
    redis_servers: list[RunningServer], redis_stack: LocalStack, settings: Settings
) -> None:
    one, _ = redis_servers
    tenant = fresh_tenant("outage")
    await asyncio.to_thread(redis_stack.redis.stop)
    try:
        with structlog.testing.capture_logs() as logs:
            results = [await outcome(query(one, settings, tenant)) for _ in range(BURST + 1)]
        # Enforced with the instance's own bucket: the burst passes, the next is refused.
        assert results == ["ok"] * BURST + ["requests_per_second"]
        warnings = [e for e in logs if e["event"].startswith("budget store unavailable")]
        assert len(warnings) == 1, logs  # once per outage
        text = await metrics(one)
        assert sample(text, 'analytics_budget_store_up{store="redis"}') == 0
        assert sample(text, 'analytics_budget_store_errors_total{operation="take"}') >= 1
    finally:
        await asyncio.to_thread(redis_stack.redis.start)
    await asyncio.sleep(1.1)
    with structlog.testing.capture_logs() as logs:
        assert await outcome(query(one, settings, fresh_tenant("back"))) == "ok"
    assert any(e["event"].startswith("budget store available again") for e in logs)
    assert sample(await metrics(one), 'analytics_budget_store_up{store="redis"}') == 1
