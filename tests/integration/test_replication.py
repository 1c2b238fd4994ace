"""Replication on the real components: PostgreSQL -> Debezium -> Kafka -> cdc_worker -> ClickHouse.

A module-wide stack (PostgreSQL, Kafka, Kafka Connect with the Debezium connector registered from
deploy/debezium/connector.json), the CDC worker running in this process on the embedded engine,
and the gRPC service on the same engine. Every answer is compared with the same aggregate
computed by SQL in PostgreSQL. Tests use their own tenants; the truncate test runs last.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import json_format

from analytics.v1 import analytics_pb2, analytics_pb2_grpc, sync_pb2, sync_pb2_grpc
from cdc_worker.runner import run_worker
from cdc_worker.source_schema import source_schema_ddl
from local_stack import LocalStack, make_stack_directory
from local_stack._process import free_port
from service.api import convert
from service.api.server import RunningServer, start_server
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog
from service.schema import all_ddl
from service.settings import Settings
from tests.conftest import catalog_in_database, unique_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VISIBLE_WITHIN_SECONDS = 5.0


@dataclass
class Replication:
    stack: LocalStack
    pg: asyncpg.Pool
    catalog: Catalog
    settings: Settings
    server: RunningServer
    stub: analytics_pb2_grpc.AnalyticsServiceStub
    worker_stop: asyncio.Event
    worker: asyncio.Task[None]
    backend: EmbeddedBackend

    async def query(self, tenant: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        token = mint_token(self.settings, subject="t", tenant=tenant, permissions=["*.*.read"])
        response = await self.stub.Query(
            json_format.ParseDict(body, analytics_pb2.QueryRequest()),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        return convert.response_json(response)["data"]  # type: ignore[no-any-return]

    async def wait_for(
        self,
        tenant: str,
        body: dict[str, Any],
        expected: list[dict[str, Any]],
        within: float = VISIBLE_WITHIN_SECONDS,
    ) -> float:
        """Seconds until the Query answer equals ``expected``; fails after ``within``."""
        started = time.monotonic()
        answer: list[dict[str, Any]] = []
        while time.monotonic() - started < within:
            answer = await self.query(tenant, body)
            if answer == expected:
                return time.monotonic() - started
            await asyncio.sleep(0.02)
        pytest.fail(f"not visible within {within}s: {answer} != {expected}")


async def deal_stats(pool: asyncpg.Pool, tenant: str) -> list[dict[str, Any]]:
    """Ground truth from PostgreSQL itself: count and sum of live deals per stage."""
    rows = await pool.fetch(
        "SELECT stage, count(*) AS n, sum(amount) AS total FROM deals "
        "WHERE tenant_id = $1 AND deleted_at IS NULL GROUP BY stage ORDER BY stage",
        tenant,
    )
    return [{"stage": r["stage"], "sum_amount": _number(r["total"]), "count": r["n"]} for r in rows]


def _number(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() else float(value)


STATS_QUERY = {
    "model": "deals",
    "groupBy": "stage",
    "aggregate": "sum",
    "field": "amount",
    "metrics": [{"aggregate": "count"}],
    "order": "stage.asc",
}


async def insert_deal(
    pool: asyncpg.Pool, tenant: str, deal_id: int, stage: str, amount: str
) -> None:
    await pool.execute(
        "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, currency, "
        "probability, created_at, updated_at) VALUES ($1, $2, 1, 1, $3, $4, $5, 'EUR', 0.5, "
        "now(), now())",
        tenant,
        deal_id,
        f"deal {deal_id} 'quoted' \\ back",
        stage,
        Decimal(amount),
    )


@pytest.fixture(scope="module")
async def replication(
    catalog: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[Replication]:
    stack = LocalStack(make_stack_directory(), ["postgres", "kafka", "connect"])
    await stack.astart()
    try:
        pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=1, max_size=4)
        moved = catalog_in_database(catalog, unique_database("replication"))
        for statement in source_schema_ddl(moved):
            await pool.execute(statement)
        for statement in all_ddl(moved):
            await embedded_backend.command(statement)
        # Rows that exist before the connector starts must arrive through the snapshot.
        for deal_id in range(1, 6):
            await insert_deal(pool, "snapshot", deal_id, "lead" if deal_id % 2 else "won", "10.50")
        await asyncio.to_thread(stack.register_connector)
        settings = Settings(
            port=0,
            rest_port=0,
            kafka_bootstrap_servers=stack.kafka.bootstrap_servers,
            kafka_group_id=f"test-{uuid.uuid4().hex[:8]}",
            metrics_port=free_port(),
        )
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, moved, embedded_backend, stop))
        server = await start_server(settings, catalog=moved, backend=embedded_backend)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Replication(
                stack,
                pool,
                moved,
                settings,
                server,
                analytics_pb2_grpc.AnalyticsServiceStub(channel),
                stop,
                worker,
                embedded_backend,
            )
        stop.set()
        await asyncio.wait_for(worker, 30)
        await server.stop(1.0)
        await pool.close()
    finally:
        await stack.astop()
        stack.remove()


async def test_snapshot_rows_arrive(replication: Replication) -> None:
    expected = await deal_stats(replication.pg, "snapshot")
    assert expected == [
        {"stage": "lead", "sum_amount": 31.5, "count": 3},
        {"stage": "won", "sum_amount": 21, "count": 2},
    ]
    # The first answer waits for the connector's snapshot and for the worker to find the new
    # topics (topic metadata is refreshed every 5 s), not only for replication.
    await replication.wait_for("snapshot", STATS_QUERY, expected, within=60)


async def test_inserts_updates_and_deletes_are_reflected(replication: Replication) -> None:
    pool, tenant = replication.pg, "crud"
    for deal_id in range(100, 120):
        await insert_deal(pool, tenant, deal_id, "lead", f"{deal_id}.25")
    await replication.wait_for(tenant, STATS_QUERY, await deal_stats(pool, tenant))
    await pool.execute(
        "UPDATE deals SET stage = 'won', amount = amount * 2 WHERE tenant_id = $1 AND id < 105",
        tenant,
    )
    await pool.execute("DELETE FROM deals WHERE tenant_id = $1 AND id BETWEEN 110 AND 112", tenant)
    await pool.execute(
        "UPDATE deals SET deleted_at = now() WHERE tenant_id = $1 AND id = 115", tenant
    )
    expected = await deal_stats(pool, tenant)
    assert sum(row["count"] for row in expected) == 16
    await replication.wait_for(tenant, STATS_QUERY, expected)
    # The soft-deleted row is still there for a caller who asks for it.
    await replication.wait_for(
        tenant, {"model": "deals", "filters": {"deleted_at": "not.is.null"}}, [{"count": 1}]
    )


@pytest.mark.parametrize("identity", ["DEFAULT", "FULL"])
async def test_unchanged_toast_value_is_kept(replication: Replication, identity: str) -> None:
    """An update that leaves a TOASTed column alone must not overwrite its stored value.

    With REPLICA IDENTITY DEFAULT Debezium sends its unavailable-value placeholder for it.
    """
    pool, tenant = replication.pg, f"toast-{identity.lower()}"
    deal_id = 5000 if identity == "DEFAULT" else 5001
    big_title = secrets.token_hex(8000)  # 16 kB of random text: TOASTed, stored out of line
    await pool.execute(f"ALTER TABLE deals REPLICA IDENTITY {identity}")
    try:
        await insert_deal(pool, tenant, deal_id, "lead", "1.00")
        await pool.execute("UPDATE deals SET title = $1 WHERE id = $2", big_title, deal_id)
        longest = {"model": "deals", "aggregate": "max", "field": "title"}
        await replication.wait_for(tenant, longest, [{"max_title": big_title}])
        await pool.execute("UPDATE deals SET stage = 'won' WHERE id = $1", deal_id)
        await replication.wait_for(
            tenant, {"model": "deals", "groupBy": "stage"}, [{"stage": "won", "count": 1}]
        )
        assert await replication.query(tenant, longest) == [{"max_title": big_title}]
    finally:
        await pool.execute("ALTER TABLE deals REPLICA IDENTITY FULL")
    # What Debezium actually sent for the last update's title.
    sent = await _last_change(replication, "analytics.public.deals", deal_id)
    expected = "__debezium_unavailable_value" if identity == "DEFAULT" else big_title
    assert sent["after"]["title"] == expected


async def _last_change(replication: Replication, topic: str, key_id: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=replication.stack.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    found: dict[str, Any] = {}
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=2_000)
            if not batch:
                return found
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    event = json.loads(record.value)
                    if (event.get("after") or {}).get("id") == key_id:
                        found = event
    finally:
        await consumer.stop()


async def test_freshness_from_commit_to_query(replication: Replication) -> None:
    """Each committed insert is visible in Query well within the 5 s promise."""
    pool, tenant = replication.pg, "fresh"
    latencies = []
    for count in range(1, 41):
        await insert_deal(pool, tenant, 1000 + count, "lead", "1.00")
        latencies.append(await replication.wait_for(tenant, {"model": "deals"}, [{"count": count}]))
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"\nfreshness commit->visible: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    assert p99 < VISIBLE_WITHIN_SECONDS


async def test_last_sync_at_moves_for_quiet_tables(replication: Replication) -> None:
    """Heartbeats move lastSyncAt of a table nobody writes to (invoices)."""
    token = mint_token(replication.settings, subject="t", tenant="x", permissions=["*.*.read"])
    request = analytics_pb2.QueryRequest(model="invoices")
    metadata = (("authorization", f"Bearer {token}"),)
    first = (await replication.stub.Query(request, metadata=metadata)).meta.last_sync_at
    await asyncio.sleep(3)
    second = (await replication.stub.Query(request, metadata=metadata)).meta.last_sync_at
    assert second.ToDatetime() > first.ToDatetime()
    assert time.time() - second.ToSeconds() < 5


async def test_sync_status_and_metrics_report_each_table(replication: Replication) -> None:
    await insert_deal(replication.pg, "status", 4001, "won", "2.00")
    await replication.wait_for("status", {"model": "deals"}, [{"count": 1}])
    await asyncio.sleep(1.5)  # the worker reports its state about once a second
    token = mint_token(replication.settings, subject="t", tenant="x", permissions=["crm.*.read"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replication.server.port}") as channel:
        reply = await sync_pb2_grpc.SyncServiceStub(channel).GetSyncStatus(
            sync_pb2.GetSyncStatusRequest(), metadata=(("authorization", f"Bearer {token}"),)
        )
    tables = {t.model: t for t in reply.tables}
    assert set(tables) == {"crm.contacts", "crm.deals"}  # billing is not readable with crm.*
    deals = tables["crm.deals"]
    assert deals.source == "cdc"
    assert deals.state == sync_pb2.SYNC_STATE_STREAMING
    assert deals.events_applied > 0
    assert deals.lag_seconds < 5
    assert time.time() - deals.last_sync_at.ToSeconds() < 5
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{replication.settings.metrics_port}/metrics") as response,
    ):
        text = await response.text()
    assert response.status == 200
    events = re.search(r'^cdc_events_total\{table="crm_deals"\} (\d+)$', text, re.MULTILINE)
    assert events is not None
    assert int(events.group(1)) > 0
    assert re.search(r'^cdc_consumer_lag_events\{table="crm_deals"\} \d+$', text, re.MULTILINE)
    assert re.search(r'^cdc_last_sync_timestamp_seconds\{table="billing_invoices"\} ', text, re.M)


async def test_malformed_message_goes_to_the_dead_letter_topic(
    replication: Replication,
) -> None:
    bootstrap = replication.stack.kafka.bootstrap_servers
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            "analytics.public.deals", key=b'{"id": 1}', value=b'{"op": "c", "after": ['
        )
    finally:
        await producer.stop()
    # The stream goes on.
    await insert_deal(replication.pg, "after-dlq", 2001, "won", "5.00")
    await replication.wait_for("after-dlq", {"model": "deals"}, [{"count": 1}])
    consumer = AIOKafkaConsumer(
        replication.settings.dead_letter_topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
    finally:
        await consumer.stop()
    messages = [m for records in batch.values() for m in records]
    assert [m.value for m in messages] == [b'{"op": "c", "after": [']
    headers = dict(messages[0].headers)
    assert headers["source.topic"] == b"analytics.public.deals"
    assert b"JSON" in headers["reason"] or b"json" in headers["reason"]


async def test_truncate_empties_the_replica(replication: Replication) -> None:
    """Runs last: TRUNCATE removes every tenant's rows from the source table."""
    pool = replication.pg
    await replication.wait_for("snapshot", {"model": "deals"}, [{"count": 5}])
    await pool.execute("TRUNCATE deals")
    for tenant in ("snapshot", "crud", "fresh", "after-dlq"):
        await replication.wait_for(tenant, {"model": "deals"}, [{"count": 0}])
    await insert_deal(pool, "snapshot", 3001, "won", "1.00")
    await replication.wait_for("snapshot", {"model": "deals"}, [{"count": 1}])
