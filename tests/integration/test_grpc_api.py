"""The gRPC API end to end: a real grpc.aio server on a free port, on every backend.

The module runs once per backend of ``api_backend`` (tests/conftest.py): the embedded engine,
``HttpBackend`` through the HTTP front over the same engine, and the installed ClickHouse server
(skipped there, naming what it lacks for the compiler's SQL).

Covers every error row of DESIGN.md section 5, health, reflection (through grpcurl), trace ids,
StreamQuery chunking and deadlines. Data is a handful of hand-written rows whose answers are
computed here by hand, independently of the compiler.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from service.api import convert
from service.api.server import RunningServer, start_server
from service.auth import mint_token
from service.catalog import Catalog
from service.settings import PROJECT_ROOT, Settings
from tests.api_rows import DESIGN_EXAMPLE, load_deals, load_slow_contacts
from tests.conftest import ApiBackend, catalog_in_database, unique_database
from tests.grpc_errors import error_details

pytestmark = pytest.mark.integration

GRPCURL = PROJECT_ROOT / ".cache" / "tools" / "bin" / "grpcurl"


@pytest.fixture(scope="module")
async def api_catalog(api_backend: ApiBackend, catalog: Catalog) -> Catalog:
    moved = catalog_in_database(catalog, unique_database("grpc_api"))
    await load_deals(api_backend.writer, moved)
    return moved


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(port=0, rest_port=0, query_timeout_seconds=30)


@pytest.fixture(scope="module")
async def server(
    settings: Settings, api_catalog: Catalog, api_backend: ApiBackend
) -> AsyncIterator[RunningServer]:
    running = await start_server(settings, catalog=api_catalog, backend=api_backend.backend)
    yield running
    await running.stop(1.0)


@pytest.fixture(scope="module")
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.aio.Channel) -> analytics_pb2_grpc.AnalyticsServiceStub:
    return analytics_pb2_grpc.AnalyticsServiceStub(channel)


def auth(
    settings: Settings, tenant: str = "acme", permissions: tuple[str, ...] = ("crm.deals.read",)
):
    token = mint_token(settings, subject="tester", tenant=tenant, permissions=permissions)
    return (("authorization", f"Bearer {token}"),)


def request_from(body: dict[str, object]) -> analytics_pb2.QueryRequest:
    return json_format.ParseDict(body, analytics_pb2.QueryRequest())


async def test_design_example_returns_exact_numbers(stub, settings) -> None:
    response = await stub.Query(request_from(DESIGN_EXAMPLE), metadata=auth(settings))
    body = convert.response_json(response)
    assert body["data"] == [
        {
            "created_at": "2026-01-02T00:00:00Z",
            "sum_amount": 300.75,
            "count": 2,
            "avg_amount": 150.375,
        },
        {"created_at": "2026-01-03T00:00:00Z", "sum_amount": 50, "count": 1, "avg_amount": 50.0},
    ]
    assert body["meta"]["lastSyncAt"] == "2026-04-15T10:29:55Z"
    assert body["meta"]["rowsScanned"] > 0
    assert isinstance(body["meta"]["durationMs"], int)


async def test_group_by_in_time_zone_moves_rows_across_days(stub, settings) -> None:
    body = dict(DESIGN_EXAMPLE, timeZone="Asia/Tokyo", metrics=[], aggregate="count", field="")
    response = await stub.Query(request_from(body), metadata=auth(settings))
    rows = convert.response_json(response)["data"]
    # 2026-01-02 23:30 UTC is 2026-01-03 08:30 in Tokyo (UTC+9).
    assert rows == [
        {"created_at": "2026-01-02T00:00:00+09:00", "count": 1},
        {"created_at": "2026-01-03T00:00:00+09:00", "count": 2},
    ]


async def test_soft_deleted_rows_are_excluded_unless_filtered(stub, settings) -> None:
    plain = await stub.Query(request_from({"model": "deals"}), metadata=auth(settings))
    # ids 1, 2, 3, 4 and 7; 5 is soft-deleted and 6 has a tombstone.
    assert convert.response_json(plain)["data"] == [{"count": 5}]
    deleted = await stub.Query(
        request_from({"model": "crm.deals", "filters": {"deleted_at": "not.is.null"}}),
        metadata=auth(settings),
    )
    assert convert.response_json(deleted)["data"] == [{"count": 1}]


async def grpcurl(*args: str) -> tuple[int, str, str]:
    """Run grpcurl without blocking the event loop the server under test runs on."""
    if not GRPCURL.exists():
        pytest.fail(f"grpcurl is not installed at {GRPCURL}; run scripts/test to install it")
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_grpcurl_reflection_and_query(server: RunningServer, settings) -> None:
    address = f"127.0.0.1:{server.port}"
    code, listed, _ = await grpcurl("-plaintext", address, "list")
    assert code == 0
    assert "analytics.v1.AnalyticsService" in listed.split()
    assert "grpc.health.v1.Health" in listed.split()
    code, described, _ = await grpcurl(
        "-plaintext", address, "describe", "analytics.v1.QueryRequest"
    )
    assert code == 0
    assert "group_by_interval" in described
    token = auth(settings)[0][1]
    code, out, err = await grpcurl(
        "-plaintext",
        "-H",
        f"authorization: {token}",
        "-d",
        json.dumps(DESIGN_EXAMPLE),
        address,
        "analytics.v1.AnalyticsService/Query",
    )
    assert code == 0, err
    body = json.loads(out)
    assert body["data"][0] == {
        "created_at": "2026-01-02T00:00:00Z",
        "sum_amount": 300.75,
        "count": 2,
        "avg_amount": 150.375,
    }
    assert body["meta"]["lastSyncAt"] == "2026-04-15T10:29:55Z"
    code, _, err = await grpcurl(
        "-plaintext", "-d", "{}", address, "analytics.v1.AnalyticsService/Query"
    )
    assert code != 0
    assert "Unauthenticated" in err
    code, out, _ = await grpcurl("-plaintext", address, "grpc.health.v1.Health/Check")
    assert code == 0
    assert json.loads(out) == {"status": "SERVING"}


async def test_health_needs_no_token(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "analytics.v1.AnalyticsService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_filter_values_longer_than_a_url_are_answered(stub, settings) -> None:
    """About 600 KB of filter values: more than servers take in a URL, where the HTTP backend
    sends parameters; it sends them as literals in the body instead."""
    long_values = ",".join(f'"{"x" * 600}{i}"' for i in range(999))
    body: dict[str, object] = {"model": "deals", "filters": {"title": f"in.({long_values},deal 1)"}}
    response = await stub.Query(request_from(body), metadata=auth(settings))
    assert json_format.MessageToDict(response)["data"] == [{"count": 1}]


async def test_health_says_how_tenants_are_isolated(channel: grpc.aio.Channel) -> None:
    """Neither chDB nor the front's engine enforces row policies, and health says so."""
    health = health_pb2_grpc.HealthStub(channel)
    call = health.Check(health_pb2.HealthCheckRequest())
    headers = dict(await call.initial_metadata())
    assert (await call).status == health_pb2.HealthCheckResponse.SERVING
    isolation = headers["x-tenant-isolation"]
    assert "cannot enforce per-tenant row policies" in isolation
    assert "tenant filter is the only isolation layer" in isolation
    async for update in health.Watch(health_pb2.HealthCheckRequest()):
        assert update.status == health_pb2.HealthCheckResponse.SERVING
        break


@pytest.mark.parametrize(
    ("body", "code", "reason", "fields"),
    [
        ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "NOT_FOUND", []),
        (
            {"model": "deals", "aggregate": "median"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_AGGREGATE",
            ["aggregate"],
        ),
        (
            {"model": "deals", "filters": {"stage": "equals.won"}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FILTER",
            ["filters.stage"],
        ),
        (
            {"model": "deals", "filters": {"amount": "gt.lots"}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_VALUE",
            ["filters.amount"],
        ),
        (
            {"model": "deals", "groupBy": "created_at", "groupByInterval": "fortnight"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_INTERVAL",
            ["groupByInterval"],
        ),
        (
            {"model": "deals", "groupBy": "colour"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_FIELD",
            ["groupBy"],
        ),
        (
            {"model": "deals", "filters": {"colour": "eq.red"}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_FIELD",
            ["filters.colour"],
        ),
        (
            {"model": "deals", "aggregate": "sum", "field": "colour"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_FIELD",
            ["field"],
        ),
        (
            {"model": "deals", "metrics": [{"aggregate": "max", "field": "colour"}]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_FIELD",
            ["metrics[0].field"],
        ),
        (
            {"model": "deals", "filters": {"tenant_id": "eq.globex"}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "TENANT_COLUMN",
            ["filters.tenant_id"],
        ),
        (
            {"model": "deals", "timeZone": "Mars/Olympus"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_TIME_ZONE",
            ["timeZone"],
        ),
        (
            {"model": "deals", "limit": 10_001},
            grpc.StatusCode.INVALID_ARGUMENT,
            "LIMIT_TOO_LARGE",
            ["limit"],
        ),
    ],
)
async def test_error_rows(stub, settings, body, code, reason, fields) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Query(request_from(body), metadata=auth(settings))
    assert caught.value.code() == code
    info, violations = error_details(caught.value)
    assert info.reason == reason
    assert info.domain == "analytics.v1"
    assert violations == fields
    expected_type = {
        grpc.StatusCode.NOT_FOUND: "not-found",
        grpc.StatusCode.INVALID_ARGUMENT: "validation-error",
    }[code]
    assert info.metadata["type"] == expected_type


async def test_missing_permission_is_denied(stub, settings) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Query(
            request_from({"model": "deals"}),
            metadata=auth(settings, permissions=("crm.contacts.read", "billing.*.read")),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info, _ = error_details(caught.value)
    assert info.metadata["permission"] == "crm.deals.read"
    assert info.metadata["type"] == "forbidden"


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer not-a-jwt"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (
            (
                "authorization",
                "Bearer "
                + mint_token(
                    Settings(jwt_secret="another-secret-that-is-long-enough-for-hs256"),
                    subject="x",
                    tenant="acme",
                    permissions=["crm.deals.read"],
                ),
            ),
        ),
        (
            (
                "authorization",
                "Bearer "
                + mint_token(
                    Settings(),
                    subject="x",
                    tenant="acme",
                    permissions=["crm.deals.read"],
                    ttl=dt.timedelta(hours=-1),
                ),
            ),
        ),
    ],
    ids=["missing", "garbage", "not-bearer", "wrong-key", "expired"],
)
async def test_unauthenticated(stub, metadata) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Query(request_from({"model": "deals"}), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info, _ = error_details(caught.value)
    assert info.metadata["type"] == "unauthorized"


async def test_tenant_comes_from_the_token(stub, settings) -> None:
    response = await stub.Query(
        request_from({"model": "deals", "aggregate": "sum", "field": "amount"}),
        metadata=auth(settings, tenant="globex"),
    )
    assert convert.response_json(response)["data"] == [{"sum_amount": 123456}]
    nobody = await stub.Query(
        request_from({"model": "deals"}), metadata=auth(settings, tenant="x' OR '1'='1")
    )
    assert convert.response_json(nobody)["data"] == [{"count": 0}]


async def test_trace_id_is_returned_and_taken_from_traceparent(stub, settings) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    call = stub.Query(
        request_from({"model": "deals"}),
        metadata=(*auth(settings), ("traceparent", f"00-{trace}-00f067aa0ba902b7-01")),
    )
    await call
    assert dict(await call.initial_metadata())["x-trace-id"] == trace
    other = stub.Query(request_from({"model": "deals"}), metadata=auth(settings))
    await other
    generated = dict(await other.initial_metadata())["x-trace-id"]
    assert len(generated) == 32
    assert generated != trace


async def test_stream_query_sends_chunks_then_meta_once(stub, settings) -> None:
    request = json_format.ParseDict(
        {
            "model": "deals",
            "groupBy": "id",
            "aggregate": "sum",
            "field": "amount",
            "filters": {"deleted_at": "is.null"},
            "chunkRows": 2,
        },
        analytics_pb2.StreamQueryRequest(),
    )
    messages = [m async for m in stub.StreamQuery(request, metadata=auth(settings))]
    assert [m.WhichOneof("payload") for m in messages] == ["chunk", "chunk", "chunk", "meta"]
    chunks, metas = messages[:-1], messages[-1:]
    assert [c.chunk.row_count for c in chunks] == [2, 2, 1]
    rows = [row for c in chunks for row in convert.chunk_rows(c.chunk)]
    assert rows == [
        {"id": 1, "sum_amount": "100.50"},
        {"id": 2, "sum_amount": "200.25"},
        {"id": 3, "sum_amount": "50.00"},
        {"id": 4, "sum_amount": "9999.00"},
        {"id": 7, "sum_amount": "1.00"},
    ]
    assert sum(Decimal(r["sum_amount"]) for r in rows) == Decimal("10350.75")
    assert metas[0].meta.rows_scanned > 0
    assert [c.name for c in metas[0].meta.columns] == ["id", "sum_amount"]


async def test_stream_query_errors_use_the_same_statuses(stub, settings) -> None:
    request = analytics_pb2.StreamQueryRequest(model="deals", group_by="colour")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.StreamQuery(request, metadata=auth(settings)):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = error_details(caught.value)
    assert (info.reason, fields) == ("UNKNOWN_FIELD", ["groupBy"])


@pytest.fixture(scope="module")
async def slow_tenant(api_catalog: Catalog, api_backend: ApiBackend) -> str:
    """3 M contacts of tenant 'slow': enough work to outlast a tiny time budget."""
    return await load_slow_contacts(api_backend.writer, api_catalog, 3_000_000)


async def test_engine_timeout_is_deadline_exceeded(
    api_catalog: Catalog, api_backend: ApiBackend, slow_tenant: str
) -> None:
    """A query over the server's time budget ends with DEADLINE_EXCEEDED and frees the engine."""
    tight = Settings(port=0, rest_port=0, query_timeout_seconds=0.005)
    running = await start_server(tight, catalog=api_catalog, backend=api_backend.backend)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            request = request_from(
                {
                    "model": "contacts",
                    "aggregate": "count_distinct",
                    "field": "email",
                    "metrics": [{"aggregate": "p99", "field": "lifetime_value"}],
                }
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(
                    request, metadata=auth(tight, tenant=slow_tenant, permissions=("crm.*.read",))
                )
    finally:
        await running.stop(1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info, _ = error_details(caught.value)
    assert info.metadata["type"] == "gateway-timeout"
    assert "TIMEOUT_EXCEEDED" in info.metadata["engine_message"]
    assert api_backend.active() == 0


async def test_client_deadline_stops_the_engine_query(
    stub, settings, api_backend: ApiBackend, slow_tenant: str
) -> None:
    """The call's remaining time becomes the engine's max_execution_time."""
    request = request_from(
        {
            "model": "contacts",
            "aggregate": "count_distinct",
            "field": "email",
            "groupBy": "created_at",
            "groupByInterval": "minute",
            "limit": 10,
        }
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Query(
            request,
            metadata=auth(settings, tenant=slow_tenant, permissions=("crm.*.read",)),
            timeout=0.02,
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(100):
        if api_backend.active() == 0:
            break
        await asyncio.sleep(0.05)
    assert api_backend.active() == 0


async def test_closed_engine_is_unavailable(
    api_catalog: Catalog, settings: Settings, api_backend: ApiBackend
) -> None:
    backend, cut_off = await api_backend.breakable()
    running = await start_server(settings, catalog=api_catalog, backend=backend)
    try:
        await cut_off()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Query(request_from({"model": "deals"}), metadata=auth(settings))
    finally:
        await running.stop(1.0)
        await backend.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info, _ = error_details(caught.value)
    assert info.metadata["type"] == "unavailable"
    # Cutting one backend off leaves the engine to the others.
    await api_backend.backend.ping()
