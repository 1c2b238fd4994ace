"""AnalyticsService.Funnel and ``POST /v1/data/{module}/funnels`` on the embedded engine.

The funnel's semantics are tested against a reference evaluator in test_funnels.py; this module
checks the transports: a small journey set answered by hand, over gRPC and REST, and their
errors (gRPC details and problem+json naming the field).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from service.api.server import RunningServer, start_server
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog
from service.schema import all_ddl
from service.settings import Settings
from tests.conftest import catalog_in_database, unique_database
from tests.grpc_errors import error_details
from tests.integration.test_compiler_on_engine import Row, insert_statement

pytestmark = pytest.mark.integration

ACME = "acme"
OTHER = "globex"
START = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
#: (actor, event, time after START): actor 1 goes all the way (1 h, then 1 h), actor 2 reaches
#: step 2 after 2 h, actor 3 only signs up, actor 4 never starts. Drop-off counts the actors
#: whose furthest step it is (README "Funnels"). The other tenant's copies of
#: the same actors go all the way and must never count.
JOURNEYS = [
    (1, "signed_up", 0 * HOUR),
    (1, "activated", 1 * HOUR),
    (1, "purchased", 2 * HOUR),
    (2, "signed_up", 0 * HOUR),
    (2, "activated", 2 * HOUR),
    (3, "signed_up", 5 * HOUR),
    (4, "activated", 1 * HOUR),
]
STEPS = [{"event": "signed_up"}, {"event": "activated"}, {"event": "purchased", "label": "paid"}]
REQUEST = {
    "model": "product.events",
    "steps": STEPS,
    "dateFrom": "2026-03-01",
    "dateTo": "2026-03-31",
}
EXPECTED_STEPS = [
    {
        "label": "signed_up",
        "actors": 3,
        "conversionFromFirst": 1.0,
        "conversionFromPrevious": 1.0,
        "dropOff": 1,
        "medianSeconds": None,
        "averageSeconds": None,
    },
    {
        "label": "activated",
        "actors": 2,
        "conversionFromFirst": 2 / 3,
        "conversionFromPrevious": 2 / 3,
        "dropOff": 1,
        "medianSeconds": 5400.0,
        "averageSeconds": 5400.0,
    },
    {
        "label": "paid",
        "actors": 1,
        "conversionFromFirst": 1 / 3,
        "conversionFromPrevious": 0.5,
        "dropOff": 0,
        "medianSeconds": 3600.0,
        "averageSeconds": 3600.0,
    },
]


def _rows(tenant: str) -> list[Row]:
    rows = []
    journeys = (
        JOURNEYS if tenant == ACME else [(a, e, t) for a in (1, 2, 3) for _, e, t in JOURNEYS[:3]]
    )
    for number, (actor, event, after) in enumerate(journeys):
        values = {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{number}/{actor}")),
            "event": event,
            "contact_id": actor,
            "timestamp": START + after,
            "platform": "web" if actor == 1 else None,
            "country": None,
            "plan": None,
            "revenue": None,
        }
        rows.append(Row(tenant, values, 1, 0))
    return rows


@pytest_asyncio.fixture(scope="module")
async def catalog_with_events(
    catalog: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[Catalog]:
    mine = catalog_in_database(catalog, unique_database("funnel_api"))
    for statement in all_ddl(mine):
        await embedded_backend.command(statement)
    model = mine.models[("product", "events")]
    for tenant in (ACME, OTHER):
        await embedded_backend.command(insert_statement(mine, model, _rows(tenant)))
    yield mine
    await embedded_backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(port=0, rest_port=0, query_timeout_seconds=30)


@pytest_asyncio.fixture(scope="module")
async def server(
    settings: Settings, catalog_with_events: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[RunningServer]:
    running = await start_server(settings, catalog=catalog_with_events, backend=embedded_backend)
    yield running
    await running.stop(1.0)


def _token(settings: Settings, *permissions: str) -> str:
    return mint_token(settings, subject="tester", tenant=ACME, permissions=permissions)


def _document(response: analytics_pb2.FunnelResponse) -> list[dict[str, Any]]:
    return [
        {
            "label": step.label,
            "actors": step.actors,
            "conversionFromFirst": step.conversion_from_first,
            "conversionFromPrevious": step.conversion_from_previous,
            "dropOff": step.drop_off,
            "medianSeconds": step.median_seconds if step.HasField("median_seconds") else None,
            "averageSeconds": step.average_seconds if step.HasField("average_seconds") else None,
        }
        for step in response.steps
    ]


def _same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    return len(got) == len(want) and all(
        g.keys() == w.keys()
        and all(g[k] == pytest.approx(w[k]) if isinstance(w[k], float) else g[k] == w[k] for k in w)
        for g, w in zip(got, want, strict=True)
    )


async def test_grpc_funnel_counts_the_tenants_actors_per_step(
    server: RunningServer, settings: Settings
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        request = json_format.ParseDict(REQUEST, analytics_pb2.FunnelRequest())
        metadata = (("authorization", f"Bearer {_token(settings, 'product.events.read')}"),)
        response = await stub.Funnel(request, metadata=metadata)
    assert _same(_document(response), EXPECTED_STEPS), _document(response)


async def test_grpc_funnel_errors_name_the_field(server: RunningServer, settings: Settings) -> None:
    cases = [
        ({**REQUEST, "steps": STEPS[:1]}, grpc.StatusCode.INVALID_ARGUMENT, "steps"),
        ({**REQUEST, "window": "0d"}, grpc.StatusCode.INVALID_ARGUMENT, "window"),
        ({**REQUEST, "window": "2 weeks"}, grpc.StatusCode.INVALID_ARGUMENT, "window"),
        (
            {**REQUEST, "exclusions": [{"event": "x", "fromStep": 3, "toStep": 2}]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "exclusions[0].fromStep",
        ),
        ({**REQUEST, "order": "any"}, grpc.StatusCode.INVALID_ARGUMENT, "order"),
        ({**REQUEST, "window": "400d"}, grpc.StatusCode.INVALID_ARGUMENT, "window"),
        ({**REQUEST, "steps": STEPS * 7}, grpc.StatusCode.INVALID_ARGUMENT, "steps"),
        (
            {**REQUEST, "steps": [STEPS[0], {"model": "crm.nothing"}]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "steps[1].model",
        ),
        (
            {**REQUEST, "steps": [STEPS[0], {"model": "crm.deals", "dateField": "created_at"}]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "steps[1].actor",
        ),
        (
            {**REQUEST, "steps": [STEPS[0], {"model": "crm.deals", "actor": "contact"}]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "steps[1].dateField",
        ),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        metadata = (("authorization", f"Bearer {_token(settings, 'product.events.read')}"),)
        for body, code, field in cases:
            request = json_format.ParseDict(body, analytics_pb2.FunnelRequest())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Funnel(request, metadata=metadata)
            assert caught.value.code() is code, body
            _, fields = error_details(caught.value)
            assert fields == [field], body
        denied = (("authorization", f"Bearer {_token(settings, 'crm.deals.read')}"),)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Funnel(
                json_format.ParseDict(REQUEST, analytics_pb2.FunnelRequest()), metadata=denied
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def _post(
    server: RunningServer, settings: Settings, module: str, body: dict[str, Any], *permissions: str
) -> tuple[int, str, dict[str, Any]]:
    url = f"http://127.0.0.1:{server.rest_port}/v1/data/{module}/funnels"
    headers = {"Authorization": f"Bearer {_token(settings, *permissions)}"}
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as reply:
        return reply.status, reply.content_type, await reply.json(content_type=None)


async def test_rest_funnel_answers_json_and_problem_documents(
    server: RunningServer, settings: Settings
) -> None:
    status, content_type, document = await _post(
        server, settings, "product", REQUEST, "product.events.read"
    )
    assert (status, content_type) == (200, "application/json"), document
    assert _same(document["steps"], EXPECTED_STEPS), document
    assert set(document["meta"]) == {"lastSyncAt", "rowsScanned", "durationMs", "cacheHit"}
    status, content_type, problem = await _post(
        server, settings, "product", {**REQUEST, "window": "-1d"}, "product.events.read"
    )
    assert (status, content_type) == (400, "application/problem+json"), problem
    assert problem["field"] == "window"
    for body, field in (
        ({**REQUEST, "steps": STEPS[:1]}, "steps"),
        ({**REQUEST, "window": "0d"}, "window"),
        ({**REQUEST, "steps": [STEPS[0], {"model": "crm.nothing"}]}, "steps[1].model"),
        (
            {**REQUEST, "steps": [STEPS[0], {"model": "crm.deals", "dateField": "created_at"}]},
            "steps[1].actor",
        ),
        ({**REQUEST, "exclusions": [{"event": "x", "toStep": 4}]}, "exclusions[0].fromStep"),
    ):
        status, content_type, problem = await _post(
            server, settings, "product", body, "product.events.read"
        )
        assert (status, content_type, problem["field"]) == (
            400,
            "application/problem+json",
            field,
        ), problem
    status, _, problem = await _post(
        server, settings, "product", {**REQUEST, "model": "nothing"}, "product.events.read"
    )
    assert status == 404, problem
    status, _, problem = await _post(server, settings, "product", REQUEST, "crm.deals.read")
    assert (status, problem["code"]) == (403, "PERMISSION_DENIED"), problem


async def test_rest_funnel_breakdowns_and_options(
    server: RunningServer, settings: Settings
) -> None:
    """Per-value steps (top values by actors at step 1, then Other) and the order options."""
    body = {**REQUEST, "breakdown": "platform", "breakdownLimit": 1}
    status, _, document = await _post(server, settings, "product", body, "product.events.read")
    assert status == 200, document
    assert document["steps"] == []
    got = [
        (b["value"], b["isOther"], [s["actors"] for s in b["steps"]])
        for b in document["breakdowns"]
    ]
    # Actors 2 and 3 have no platform (two actors at step 1): the top value; actor 1's web is
    # outside a top of one.
    assert got == [(None, False, [2, 1, 0]), ("Other", True, [1, 1, 1])], document
    body = {
        **REQUEST,
        "order": "strict",
        "exclusions": [{"event": "activated", "fromStep": 1, "toStep": 3}],
    }
    status, _, document = await _post(server, settings, "product", body, "product.events.read")
    assert status == 200, document
    # Actor 1's only attempt has `activated` between signing up and paying: it counts nowhere.
    assert [s["actors"] for s in document["steps"]] == [2, 1, 0], document


async def test_a_step_on_another_model_needs_its_read_permission(
    server: RunningServer, settings: Settings
) -> None:
    body = {
        **REQUEST,
        "steps": [
            STEPS[0],
            {"model": "crm.deals", "dateField": "created_at", "actor": "contact"},
        ],
    }
    status, _, problem = await _post(server, settings, "product", body, "product.events.read")
    assert (status, problem["code"]) == (403, "PERMISSION_DENIED"), problem
    assert "crm.deals" in problem["detail"], problem
    status, _, document = await _post(
        server, settings, "product", body, "product.events.read", "crm.deals.read"
    )
    assert status == 200, document
    assert [s["actors"] for s in document["steps"]] == [3, 0], document


async def test_grpc_funnel_actors_stream_the_tenants_actors(
    server: RunningServer, settings: Settings
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        metadata = (("authorization", f"Bearer {_token(settings, 'product.events.read')}"),)
        funnel = json_format.ParseDict(REQUEST, analytics_pb2.FunnelRequest())

        async def actors(**options: Any) -> tuple[list[tuple[int, int]], list[str]]:
            request = analytics_pb2.FunnelActorsRequest(funnel=funnel, chunk_rows=1, **options)
            found: list[tuple[int, int]] = []
            metas = []
            async for message in stub.FunnelActors(request, metadata=metadata):
                if message.HasField("meta"):
                    metas.append([c.name for c in message.meta.columns])
                    continue
                columns = message.chunk.columns
                assert message.chunk.row_count == 1
                found.append((columns[0].int64_values.values[0], columns[1].int64_values.values[0]))
            return found, metas[0]

        # Actor 1 goes all the way, actor 2 stops at step 2, actor 3 at step 1 (README).
        assert await actors(step=2) == ([(1, 3), (2, 2)], ["actor", "furthestStep"])
        assert (await actors(step=1, status="dropped"))[0] == [(3, 1)]
        assert (await actors(step=1, limit=1, offset=1))[0] == [(2, 2)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await actors(step=4)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(caught.value)[1] == ["step"]


async def test_rest_funnel_actors_answer_rows(server: RunningServer, settings: Settings) -> None:
    url = f"http://127.0.0.1:{server.rest_port}/v1/data/product/funnels/actors"
    headers = {"Authorization": f"Bearer {_token(settings, 'product.events.read')}"}
    body = {"funnel": {**REQUEST, "model": "events"}, "step": 2, "status": "dropped"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers=headers) as reply:
            document = await reply.json()
            assert reply.status == 200, document
        assert document["data"] == [{"actor": 2, "furthestStep": 2}], document
        for bad, field in (
            ({**body, "status": "left"}, "status"),
            ({**body, "limit": 100_001}, "limit"),
            ({**body, "funnel": {**REQUEST, "breakdown": "platform"}}, "funnel.breakdown"),
        ):
            async with http.post(url, json=bad, headers=headers) as reply:
                problem = await reply.json(content_type=None)
                assert (reply.status, problem["field"]) == (400, field), problem
