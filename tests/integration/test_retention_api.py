"""AnalyticsService.Retention and Lifecycle, and their REST paths, on the embedded engine.

The semantics are tested against reference evaluators in test_retention.py and
test_lifecycle.py; this module checks the transports on a small history worked out by hand,
the other tenant's copies never counting, and the errors (gRPC details and problem+json naming
the field).
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
from service.api import convert
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
DAY = dt.timedelta(days=1)
MARCH_2 = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)
#: (actor, days after March 2): actor 1 every day, actor 2 on the 2nd and the 4th, actor 3 on
#: the 3rd. The other tenant's actors are active every day of the week and must never count.
ACTIVITY = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 2), (3, 1)]
RETENTION = {
    "model": "product.events",
    "target": {"event": "active"},
    "period": "day",
    "intervals": 3,
    "dateTo": "2026-03-04",
}
LIFECYCLE = {
    "model": "product.events",
    "event": "active",
    "period": "day",
    "dateFrom": "2026-03-02",
    "dateTo": "2026-03-04",
}
#: Cohorts of the 2nd (actors 1, 2), the 3rd (actor 3: actor 1 is in the 2nd's, first time)
#: and the 4th (nobody new); intervals of periods after the 4th are null.
EXPECTED_COHORTS = [
    {"size": 2, "counts": [2, 1, 2], "percentages": [100.0, 50.0, 100.0]},
    {"size": 1, "counts": [1, 0, None], "percentages": [100.0, 0.0, None]},
    {"size": 0, "counts": [0, None, None], "percentages": [0.0, None, None]},
]
#: The 2nd: actors 1 and 2 new; the 3rd: 1 returning, 3 new, 2 dormant; the 4th: 1 returning,
#: 2 resurrecting, 3 dormant.
EXPECTED_LINES = [
    {"status": "new", "values": [2, 1, 0]},
    {"status": "returning", "values": [0, 1, 1]},
    {"status": "resurrecting", "values": [0, 0, 1]},
    {"status": "dormant", "values": [0, -1, -1]},
]


def _rows(tenant: str) -> list[Row]:
    activity = ACTIVITY if tenant == ACME else [(a, d) for a in (1, 2, 3) for d in range(-3, 5)]
    return [
        Row(
            tenant,
            {
                "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{actor}/{days}")),
                "event": "active",
                "contact_id": actor,
                "timestamp": MARCH_2 + days * DAY,
                "platform": "web" if actor == 1 else None,
                "country": None,
                "plan": None,
                "revenue": None,
            },
            1,
            0,
        )
        for actor, days in activity
    ]


@pytest_asyncio.fixture(scope="module")
async def catalog_with_events(
    catalog: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[Catalog]:
    mine = catalog_in_database(catalog, unique_database("retention_api"))
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


def _metadata(settings: Settings, *permissions: str) -> tuple[tuple[str, str], ...]:
    token = mint_token(settings, subject="tester", tenant=ACME, permissions=permissions)
    return (("authorization", f"Bearer {token}"),)


def _cohorts(document: dict[str, Any]) -> list[dict[str, Any]]:
    (table,) = document["tables"]
    return [{k: c[k] for k in ("size", "counts", "percentages")} for c in table["cohorts"]]


async def test_grpc_retention_and_lifecycle_count_the_tenants_actors(
    server: RunningServer, settings: Settings
) -> None:
    metadata = _metadata(settings, "product.events.read")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        retention = await stub.Retention(
            json_format.ParseDict(RETENTION, analytics_pb2.RetentionRequest()), metadata=metadata
        )
        lifecycle = await stub.Lifecycle(
            json_format.ParseDict(LIFECYCLE, analytics_pb2.LifecycleRequest()), metadata=metadata
        )
    document = convert.retention_json(retention)
    assert _cohorts(document) == EXPECTED_COHORTS, document
    assert [c["start"][:10] for c in document["tables"][0]["cohorts"]] == [
        "2026-03-02",
        "2026-03-03",
        "2026-03-04",
    ]
    assert (document["period"], document["intervals"], document["retentionType"]) == (
        "day",
        3,
        "first_time",
    )
    lines = convert.lifecycle_json(lifecycle)
    assert lines["lines"] == EXPECTED_LINES, lines
    assert [b[:10] for b in lines["buckets"]] == ["2026-03-02", "2026-03-03", "2026-03-04"]


async def test_grpc_errors_name_the_field(server: RunningServer, settings: Settings) -> None:
    metadata = _metadata(settings, "product.events.read")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        for body, field in (
            ({**RETENTION, "period": "fortnight"}, "period"),
            ({**RETENTION, "intervals": 65}, "intervals"),
            ({**RETENTION, "retentionType": "sometimes"}, "retentionType"),
            ({**RETENTION, "target": {}}, "target"),
            ({**RETENTION, "breakdown": "nope"}, "breakdown"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Retention(
                    json_format.ParseDict(body, analytics_pb2.RetentionRequest()),
                    metadata=metadata,
                )
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, body
            assert error_details(caught.value)[1] == [field], body
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Lifecycle(
                json_format.ParseDict(
                    {**LIFECYCLE, "weekStart": "friday"}, analytics_pb2.LifecycleRequest()
                ),
                metadata=metadata,
            )
        assert error_details(caught.value)[1] == ["weekStart"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Lifecycle(
                json_format.ParseDict(LIFECYCLE, analytics_pb2.LifecycleRequest()),
                metadata=_metadata(settings, "crm.deals.read"),
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_rest_answers_json_and_problem_documents(
    server: RunningServer, settings: Settings
) -> None:
    headers = dict(_metadata(settings, "product.events.read"))
    headers = {"Authorization": headers["authorization"]}
    base = f"http://127.0.0.1:{server.rest_port}/v1/data/product"
    async with aiohttp.ClientSession() as http:
        body = {**RETENTION, "model": "events", "breakdown": "platform"}
        async with http.post(f"{base}/retention", json=body, headers=headers) as reply:
            document = await reply.json()
            assert reply.status == 200, document
        # Actor 1 (web) and actors 2 and 3 (no platform): null is a value of its own, and
        # ranks first with more cohort actors.
        assert [(t["breakdownValue"], t["isOther"]) for t in document["tables"]] == [
            (None, False),
            ("web", False),
        ], document
        async with http.post(f"{base}/lifecycle", json=LIFECYCLE, headers=headers) as reply:
            document = await reply.json()
            assert reply.status == 200, document
        assert document["lines"] == EXPECTED_LINES
        assert set(document["meta"]) == {"lastSyncAt", "rowsScanned", "durationMs", "cacheHit"}
        for path, bad, field in (
            ("retention", {**RETENTION, "period": "x"}, "period"),
            ("lifecycle", {**LIFECYCLE, "dateFrom": "soon"}, "dateFrom"),
        ):
            async with http.post(f"{base}/{path}", json=bad, headers=headers) as reply:
                problem = await reply.json(content_type=None)
                assert (reply.status, reply.content_type) == (400, "application/problem+json")
                assert problem["field"] == field, problem
