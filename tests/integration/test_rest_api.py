"""The REST endpoint end to end: the server of start_server (gRPC and REST in one process) on
free loopback ports over the embedded engine.

Covers DESIGN.md's example (the same answer as gRPC's Query), every error row of DESIGN.md
section 5 as problem+json, the body's own faults, module scoping, trace ids, a client that hangs
up, the served OpenAPI document checked by schemathesis, and `analytics serve` serving both.
Data is a handful of hand-written rows whose answers are computed here by hand.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import hypothesis
import hypothesis.strategies as st
import pytest
import schemathesis
from google.protobuf import json_format
from multidict import CIMultiDictProxy
from schemathesis import checks
from schemathesis.core.result import Ok

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from service.api import convert
from service.api.problem import PROBLEM_TYPE_BASE
from service.api.server import RunningServer, start_server
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog
from service.settings import PROJECT_ROOT, Settings
from tests.api_rows import DESIGN_EXAMPLE, load_deals, load_slow_contacts
from tests.conftest import catalog_in_database, unique_database
from tests.served import start_serve

pytestmark = pytest.mark.integration

DESIGN_ROWS = [
    {"created_at": "2026-01-02T00:00:00Z", "sum_amount": 300.75, "count": 2, "avg_amount": 150.375},
    {"created_at": "2026-01-03T00:00:00Z", "sum_amount": 50, "count": 1, "avg_amount": 50},
]
PROBLEM = "application/problem+json"

SLOW_ROWS = 3_000_000


@pytest.fixture(scope="module")
async def rest_catalog(embedded_backend: EmbeddedBackend, catalog: Catalog) -> Catalog:
    moved = catalog_in_database(catalog, unique_database("rest_api"))
    await load_deals(embedded_backend, moved)
    await load_slow_contacts(embedded_backend, moved, SLOW_ROWS)
    return moved


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(port=0, rest_port=0, query_timeout_seconds=30)


@pytest.fixture(scope="module")
async def server(
    settings: Settings, rest_catalog: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[RunningServer]:
    running = await start_server(settings, catalog=rest_catalog, backend=embedded_backend)
    yield running
    await running.stop(1.0)


@pytest.fixture(scope="module")
def base_url(server: RunningServer) -> str:
    assert server.rest_port
    return f"http://127.0.0.1:{server.rest_port}"


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def token(
    settings: Settings, tenant: str = "acme", permissions: tuple[str, ...] = ("crm.deals.read",)
) -> str:
    return mint_token(settings, subject="tester", tenant=tenant, permissions=permissions)


def bearer(settings: Settings, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(settings, **kwargs)}"}


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: object,
    headers: dict[str, str],
    module: str = "crm",
) -> tuple[int, str, dict[str, Any], CIMultiDictProxy[str]]:
    """POST a JSON body to a module's endpoint: status, content type, JSON body, headers."""
    async with http.post(f"{url}/v1/data/{module}/analytics", json=body, headers=headers) as reply:
        return reply.status, reply.content_type, await reply.json(content_type=None), reply.headers


def assert_problem(
    status: int, content_type: str, document: dict[str, Any], expected: tuple[int, str, str]
) -> None:
    """A problem+json document of the given status, type suffix and code (RFC 9457 members)."""
    want_status, suffix, code = expected
    assert (status, content_type) == (want_status, PROBLEM), document
    assert document["type"] == PROBLEM_TYPE_BASE + suffix
    assert document["status"] == want_status
    assert document["code"] == code
    assert document["title"]
    assert document["detail"]
    assert len(document["traceId"]) == 32


async def test_design_example_matches_grpc(http, base_url, server, settings) -> None:
    status, content_type, body, headers = await post(
        http, base_url, DESIGN_EXAMPLE, bearer(settings)
    )
    assert (status, content_type) == (200, "application/json")
    assert body["data"] == DESIGN_ROWS
    # Integral values are JSON integers, as grpcurl prints them.
    assert isinstance(body["data"][0]["count"], int)
    assert body["meta"]["lastSyncAt"] == "2026-04-15T10:29:55Z"
    assert isinstance(body["meta"]["rowsScanned"], int)
    assert body["meta"]["rowsScanned"] > 0
    assert isinstance(body["meta"]["durationMs"], int)
    assert len(headers["x-trace-id"]) == 32
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        reply = await stub.Query(
            json_format.ParseDict(DESIGN_EXAMPLE, analytics_pb2.QueryRequest()),
            metadata=(("authorization", f"Bearer {token(settings)}"),),
        )
    over_grpc = convert.response_json(reply)
    assert body["data"] == over_grpc["data"]
    for key in ("lastSyncAt", "rowsScanned", "columns"):
        assert body["meta"][key] == over_grpc["meta"][key]
    assert [c["name"] for c in body["meta"]["columns"]] == [
        "created_at",
        "sum_amount",
        "count",
        "avg_amount",
    ]


async def test_proto_field_names_and_string_integers_are_accepted(http, base_url, settings) -> None:
    """What grpcurl takes, REST takes: proto3 JSON allows field names and integers as strings."""
    body = {**DESIGN_EXAMPLE, "limit": "100"}
    body["group_by"] = body.pop("groupBy")
    body["group_by_interval"] = body.pop("groupByInterval")
    status, _, reply, _ = await post(http, base_url, body, bearer(settings))
    assert status == 200, reply
    assert reply["data"] == DESIGN_ROWS


async def test_module_scopes_the_model(http, base_url, settings) -> None:
    everything = bearer(settings, permissions=("*.*.read",))
    status, _, body, _ = await post(http, base_url, {"model": "crm.deals"}, everything)
    # ids 1, 2, 3, 4 and 7: 5 is soft-deleted, 6 tombstoned, 8 another tenant's.
    assert (status, body["data"]) == (200, [{"count": 5}])
    status, _, body, _ = await post(
        http, base_url, {"model": "invoices"}, everything, module="billing"
    )
    assert (status, body["data"]) == (200, [{"count": 0}])
    for module, model in [("billing", "deals"), ("billing", "crm.deals"), ("nope", "deals")]:
        status, content_type, body, _ = await post(
            http, base_url, {"model": model}, everything, module=module
        )
        assert_problem(status, content_type, body, (404, "not-found", "NOT_FOUND"))
        assert module in body["detail"]


@pytest.mark.parametrize(
    ("body", "expected", "field"),
    [
        ({"model": "nope"}, (404, "not-found", "NOT_FOUND"), None),
        (
            {"model": "deals", "aggregate": "median"},
            (400, "validation-error", "UNKNOWN_AGGREGATE"),
            "aggregate",
        ),
        (
            {"model": "deals", "filters": {"stage": "equals.won"}},
            (400, "validation-error", "INVALID_FILTER"),
            "filters.stage",
        ),
        (
            {"model": "deals", "filters": {"amount": "gt.lots"}},
            (400, "validation-error", "INVALID_VALUE"),
            "filters.amount",
        ),
        (
            {"model": "deals", "groupBy": "created_at", "groupByInterval": "fortnight"},
            (400, "validation-error", "INVALID_INTERVAL"),
            "groupByInterval",
        ),
        (
            {"model": "deals", "groupBy": "colour"},
            (400, "validation-error", "UNKNOWN_FIELD"),
            "groupBy",
        ),
        (
            {"model": "deals", "filters": {"colour": "eq.red"}},
            (400, "validation-error", "UNKNOWN_FIELD"),
            "filters.colour",
        ),
        (
            {"model": "deals", "aggregate": "sum", "field": "colour"},
            (400, "validation-error", "UNKNOWN_FIELD"),
            "field",
        ),
        (
            {"model": "deals", "metrics": [{"aggregate": "max", "field": "colour"}]},
            (400, "validation-error", "UNKNOWN_FIELD"),
            "metrics[0].field",
        ),
        (
            {"model": "deals", "filters": {"tenant_id": "eq.globex"}},
            (400, "validation-error", "TENANT_COLUMN"),
            "filters.tenant_id",
        ),
        (
            {"model": "deals", "limit": 10_001},
            (400, "validation-error", "LIMIT_TOO_LARGE"),
            "limit",
        ),
        ({}, (400, "validation-error", "REQUIRED"), "model"),
    ],
)
async def test_error_rows(http, base_url, settings, body, expected, field) -> None:
    status, content_type, document, headers = await post(http, base_url, body, bearer(settings))
    assert_problem(status, content_type, document, expected)
    assert document.get("field") == field
    if field is not None:
        assert document["violations"][0]["field"] == field
    assert document["traceId"] == headers["x-trace-id"]


async def test_missing_permission_is_forbidden(http, base_url, settings) -> None:
    status, content_type, document, _ = await post(
        http,
        base_url,
        {"model": "deals"},
        bearer(settings, permissions=("crm.contacts.read", "billing.*.read")),
    )
    assert_problem(status, content_type, document, (403, "forbidden", "PERMISSION_DENIED"))
    assert document["metadata"]["permission"] == "crm.deals.read"


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="analytics"'),
        ({"Authorization": "Bearer not-a-jwt"}, 'Bearer realm="analytics", error="invalid_token"'),
        (
            {"Authorization": "Basic dXNlcjpwYXNz"},
            'Bearer realm="analytics", error="invalid_token"',
        ),
        (
            {
                "Authorization": "Bearer "
                + mint_token(
                    Settings(jwt_secret="another-secret-that-is-long-enough-for-hs256"),
                    subject="x",
                    tenant="acme",
                    permissions=["crm.deals.read"],
                )
            },
            'Bearer realm="analytics", error="invalid_token"',
        ),
        (
            {
                "Authorization": "Bearer "
                + mint_token(
                    Settings(),
                    subject="x",
                    tenant="acme",
                    permissions=["crm.deals.read"],
                    ttl=dt.timedelta(hours=-1),
                )
            },
            'Bearer realm="analytics", error="invalid_token"',
        ),
    ],
    ids=["missing", "garbage", "not-bearer", "wrong-key", "expired"],
)
async def test_unauthorized(http, base_url, headers, challenge) -> None:
    status, content_type, document, reply_headers = await post(
        http, base_url, {"model": "deals"}, headers
    )
    assert_problem(status, content_type, document, (401, "unauthorized", "UNAUTHENTICATED"))
    assert reply_headers["WWW-Authenticate"] == challenge


async def test_unauthorized_before_the_body_is_read(http, base_url) -> None:
    async with http.post(f"{base_url}/v1/data/crm/analytics", data=b"{not json") as reply:
        assert reply.status == 401
        assert reply.content_type == PROBLEM


@pytest.mark.parametrize(
    ("data", "content_type", "code", "field", "detail"),
    [
        (b'{"model": "deals"', "application/json", "INVALID_JSON", "body", "not valid JSON"),
        (b"", "application/json", "INVALID_JSON", "body", "not valid JSON"),
        (b"\xff\xfe", "application/json", "INVALID_JSON", "body", "UTF-8"),
        (b"[1, 2]", "application/json", "INVALID_JSON", "body", "JSON object"),
        (
            b'{"model": "deals"}',
            "text/plain",
            "UNSUPPORTED_CONTENT_TYPE",
            "Content-Type",
            "text/plain",
        ),
        (b'{"model": "deals"}', "", "UNSUPPORTED_CONTENT_TYPE", "Content-Type", "application/json"),
        (
            b'{"model": "deals", "colour": 1}',
            "application/json",
            "UNKNOWN_PROPERTY",
            "colour",
            "groupBy",
        ),
        (b'{"model": "a", "model": "b"}', "application/json", "INVALID_JSON", "body", "twice"),
        (
            b'{"groupBy": "a", "group_by": "b"}',
            "application/json",
            "INVALID_JSON",
            "group_by",
            "twice",
        ),
        (b'{"model": "deals", "limit": 1.5}', "application/json", "INVALID_TYPE", "limit", "1.5"),
        (b'{"model": "deals", "limit": -1}', "application/json", "INVALID_TYPE", "limit", "range"),
        (b'{"model": 7}', "application/json", "INVALID_TYPE", "model", "model"),
        (
            b'{"filters": {"stage": 1}}',
            "application/json",
            "INVALID_TYPE",
            "filters.stage",
            "string",
        ),
        (b'{"filters": ["a"]}', "application/json", "INVALID_TYPE", "filters", "dict"),
        (
            b'{"metrics": [{"aggregate": "count", "bar": 1}]}',
            "application/json",
            "UNKNOWN_PROPERTY",
            "metrics[0].bar",
            "alias",
        ),
        (b'{"metrics": [null]}', "application/json", "INVALID_JSON", "metrics[0]", "Metric"),
        (b"[" * 100_000, "application/json", "INVALID_JSON", "body", "not valid JSON"),
    ],
    ids=[
        "truncated",
        "empty",
        "not-utf8",
        "array",
        "text-plain",
        "no-content-type",
        "unknown-property",
        "duplicate-key",
        "both-names",
        "float-limit",
        "negative-limit",
        "number-model",
        "number-filter",
        "filters-list",
        "unknown-metric-property",
        "null-metric",
        "deep-nesting",
    ],
)
async def test_bad_bodies_are_validation_errors(
    http, base_url, settings, data, content_type, code, field, detail
) -> None:
    headers = bearer(settings)
    if content_type:
        headers["Content-Type"] = content_type
    async with http.post(
        f"{base_url}/v1/data/crm/analytics",
        data=data,
        headers=headers,
        skip_auto_headers=["Content-Type"],
    ) as reply:
        document = await reply.json(content_type=None)
        assert_problem(reply.status, reply.content_type, document, (400, "validation-error", code))
    assert document["field"] == field
    assert detail in document["detail"]


async def test_http_level_failures_are_problems(http, base_url, settings) -> None:
    async with http.get(f"{base_url}/v1/data/crm/analytics", headers=bearer(settings)) as reply:
        document = await reply.json(content_type=None)
        assert_problem(
            reply.status,
            reply.content_type,
            document,
            (405, "method-not-allowed", "METHOD_NOT_ALLOWED"),
        )
        assert reply.headers["Allow"] == "POST"
    async with http.post(f"{base_url}/v2/nothing", json={}) as reply:
        document = await reply.json(content_type=None)
        assert_problem(reply.status, reply.content_type, document, (404, "not-found", "NOT_FOUND"))


async def test_trace_id_is_taken_from_traceparent(http, base_url, settings) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {**bearer(settings), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    _, _, _, reply_headers = await post(http, base_url, {"model": "deals"}, headers)
    assert reply_headers["x-trace-id"] == trace
    _, _, document, reply_headers = await post(
        http, base_url, {"model": "nope"}, {**headers, "traceparent": "garbage"}
    )
    assert reply_headers["x-trace-id"] == document["traceId"] != trace


async def test_tenant_comes_from_the_token(http, base_url, settings) -> None:
    body = {"model": "deals", "aggregate": "sum", "field": "amount"}
    _, _, reply, _ = await post(http, base_url, body, bearer(settings, tenant="globex"))
    assert reply["data"] == [{"sum_amount": 123456}]


@pytest.fixture(scope="module")
async def tight_server(
    rest_catalog: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[tuple[Settings, str]]:
    """A server with a 5 ms query budget and a 4 KiB message limit."""
    tight = Settings(port=0, rest_port=0, query_timeout_seconds=0.005, max_message_bytes=4096)
    running = await start_server(tight, catalog=rest_catalog, backend=embedded_backend)
    yield tight, f"http://127.0.0.1:{running.rest_port}"
    await running.stop(1.0)


SLOW_QUERY = {
    "model": "contacts",
    "aggregate": "count_distinct",
    "field": "email",
    "metrics": [{"aggregate": "p99", "field": "lifetime_value"}],
}


async def test_engine_timeout_is_gateway_timeout(
    http, tight_server, embedded_backend: EmbeddedBackend
) -> None:
    tight, url = tight_server
    status, content_type, document, _ = await post(
        http, url, SLOW_QUERY, bearer(tight, tenant="slow", permissions=("crm.*.read",))
    )
    assert_problem(status, content_type, document, (504, "gateway-timeout", "QUERY_TIMEOUT"))
    assert "TIMEOUT_EXCEEDED" in document["metadata"]["engine_message"]
    assert embedded_backend.active_queries == 0


async def test_body_over_the_message_limit_is_refused(http, tight_server) -> None:
    tight, url = tight_server
    body = {"model": "deals", "filters": {"title": "eq." + "x" * 5000}}
    status, content_type, document, _ = await post(http, url, body, bearer(tight))
    assert_problem(
        status,
        content_type,
        document,
        (413, "request-entity-too-large", "REQUEST_ENTITY_TOO_LARGE"),
    )


async def test_closed_engine_is_unavailable(
    http, engine_dir: Path, rest_catalog: Catalog, settings: Settings, embedded_backend
) -> None:
    backend = EmbeddedBackend(engine_dir, pool_size=1)
    running = await start_server(settings, catalog=rest_catalog, backend=backend)
    try:
        await backend.close()
        status, content_type, document, _ = await post(
            http, f"http://127.0.0.1:{running.rest_port}", {"model": "deals"}, bearer(settings)
        )
    finally:
        await running.stop(1.0)
    assert_problem(status, content_type, document, (503, "unavailable", "ENGINE_UNAVAILABLE"))
    await embedded_backend.ping()


async def test_client_hanging_up_stops_the_engine_query(
    http, base_url, settings, embedded_backend: EmbeddedBackend
) -> None:
    """The handler is cancelled with the connection, and with it the engine's query."""
    body = {**SLOW_QUERY, "groupBy": "created_at", "groupByInterval": "minute", "limit": 10}
    headers = bearer(settings, tenant="slow", permissions=("crm.*.read",))
    call = asyncio.create_task(post(http, base_url, body, headers))
    for _ in range(200):
        if embedded_backend.active_queries:
            break
        await asyncio.sleep(0.005)
    # The query, and maybe still the freshness lookup that runs beside it.
    assert embedded_backend.active_queries >= 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The engine stops at the end of its current block: measured here, within 0.01 s of the
    # hang-up on an idle machine, up to 2 s on a busy one (a full run takes 0.4 to 3.5 s).
    for _ in range(1000):
        if not embedded_backend.active_queries:
            break
        await asyncio.sleep(0.005)
    assert embedded_backend.active_queries == 0


async def test_stop_lets_in_flight_requests_finish(
    http, rest_catalog: Catalog, settings: Settings, embedded_backend: EmbeddedBackend
) -> None:
    """stop(grace) refuses new connections at once but answers the requests already running."""
    running = await start_server(settings, catalog=rest_catalog, backend=embedded_backend)
    url = f"http://127.0.0.1:{running.rest_port}"
    body = {**SLOW_QUERY, "groupBy": "created_at", "groupByInterval": "minute", "limit": 10}
    headers = bearer(settings, tenant="slow", permissions=("crm.*.read",))
    call = asyncio.create_task(post(http, url, body, headers))
    for _ in range(200):
        if embedded_backend.active_queries:
            break
        await asyncio.sleep(0.005)
    stopping = asyncio.create_task(running.stop(30.0))
    await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(fresh, url, {"model": "deals"}, bearer(settings))
    status, _, reply, _ = await call
    await stopping
    assert status == 200
    assert len(reply["data"]) == 10


async def test_openapi_document_is_served_without_a_token(http, base_url) -> None:
    async with http.get(f"{base_url}/v1/openapi.json") as reply:
        assert reply.status == 200
        document = await reply.json()
    assert document["openapi"].startswith("3.1")
    operation = document["paths"]["/v1/data/{module}/analytics"]["post"]
    assert operation["security"] == [{"bearerAuth": []}]
    assert {"200", "400", "401", "403", "404", "503", "504"} <= set(operation["responses"])
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


SCHEMATHESIS_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def _aims(catalog: Catalog) -> st.SearchStrategy[dict[str, str] | None]:
    """Nothing, or a real module and model with some real field names and aggregates.

    Purely generated bodies almost never name a model, so they would stop at not-found; aimed
    ones reach the compiler and the engine with generated filters, orders and limits.
    """
    models = sorted(catalog.models.values(), key=lambda m: m.qualified_name)
    aggregates = ["count", "sum", "avg", "min", "max", "count_distinct", "p50", "p95"]

    def aimed(model: Any) -> st.SearchStrategy[dict[str, str]]:
        names = sorted(model.fields)
        return st.fixed_dictionaries(
            {"module": st.just(model.module), "model": st.just(model.name)},
            optional={
                "groupBy": st.sampled_from(names),
                "field": st.sampled_from(names),
                "aggregate": st.sampled_from(aggregates),
                "groupByInterval": st.sampled_from(["day", "month", "week"]),
                "order": st.sampled_from(["count.desc", *[f"{n}.asc" for n in names]]),
            },
        )

    return st.none() | st.sampled_from(models).flatmap(aimed)


def _aim(case: schemathesis.Case[Any], aim: dict[str, str] | None) -> schemathesis.Case[Any]:
    if aim is not None and isinstance(case.body, dict):
        case.path_parameters = {**(case.path_parameters or {}), "module": aim["module"]}
        case.body = {**case.body, **{k: v for k, v in aim.items() if k != "module"}}
    return case


def _schemathesis_run(
    base_url: str, catalog: Catalog, authorization: str, max_examples: int
) -> dict[str, int]:
    """Property-test the served document's query operation, positive and negative data.

    (Schemathesis leaves out the operation serving the document itself; a test above checks it.)
    Returns the calls made per status code. Runs in a worker thread: the server under test
    serves from this test's event loop.
    """
    schema = schemathesis.openapi.from_url(f"{base_url}/v1/openapi.json")
    statuses: dict[str, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            strategy = st.tuples(operation.as_strategy(mode), _aims(catalog)).map(
                lambda pair: _aim(*pair)
            )

            @hypothesis.settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            @hypothesis.given(case=strategy)
            def check(case: schemathesis.Case[Any]) -> None:
                response = case.call_and_validate(
                    base_url=base_url,
                    headers={"Authorization": authorization},
                    checks=SCHEMATHESIS_CHECKS,
                )
                key = f"{case.method} {response.status_code}"
                statuses[key] = statuses.get(key, 0) + 1

            check()
    return statuses


async def test_schemathesis_against_the_served_document(base_url, rest_catalog, settings) -> None:
    authorization = f"Bearer {token(settings, permissions=('*.*.read',))}"
    statuses = await asyncio.to_thread(
        _schemathesis_run, base_url, rest_catalog, authorization, 150
    )
    print("schemathesis calls per status:", statuses)
    # The aimed cases reach the engine: some succeed, many fail validation.
    assert statuses.get("POST 200", 0) > 0
    assert statuses.get("POST 400", 0) > 0
    # 150 positive and 150 negative cases (hypothesis may stop early on a small space).
    assert sum(statuses.values()) >= 250


PREPARE = """
import asyncio, sys
from pathlib import Path
from service.backends.embedded import EmbeddedBackend
from service.catalog import load_catalog
from service.schema import all_ddl

async def main() -> None:
    backend = EmbeddedBackend(Path(sys.argv[1]))
    for statement in all_ddl(load_catalog(Path(sys.argv[2]))):
        await backend.command(statement)
    await backend.close()

asyncio.run(main())
"""


async def test_analytics_serve_serves_grpc_and_rest(tmp_path: Path, http) -> None:
    """One command, one process: `analytics serve` logs both addresses and answers on both."""
    catalog_path = PROJECT_ROOT / "deploy" / "catalog.toml"
    env = {
        **os.environ,
        "ANALYTICS_DATA_DIR": str(tmp_path),
        "ANALYTICS_REST_PORT": "0",
    }
    prepare = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PREPARE, str(tmp_path), str(catalog_path), env=env, cwd=PROJECT_ROOT
    )
    assert await asyncio.wait_for(prepare.wait(), 120) == 0
    served = await start_serve(env)
    process = served.process
    serving = served.serving
    try:
        grpc_port = int(serving["address"].rsplit(":", 1)[1])
        rest_url = serving["rest_address"]
        settings = Settings()
        status, _, body, _ = await post(http, rest_url, {"model": "deals"}, bearer(settings))
        assert (status, body["data"]) == (200, [{"count": 0}])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            reply = await stub.Query(
                analytics_pb2.QueryRequest(model="deals"),
                metadata=(("authorization", f"Bearer {token(settings)}"),),
            )
        assert convert.response_json(reply)["data"] == [{"count": 0}]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(http, rest_url, {"model": "deals"}, bearer(settings))
    finally:
        await served.stop()
