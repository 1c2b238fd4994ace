"""The CDC worker waits out a ClickHouse or Kafka that is away when it starts (issue 18, item 1).

Real components: a Kafka broker of the local stack, the Debian ClickHouse server over HTTP, the
embedded engine. Each test starts the worker while one dependency is not running yet, checks that
the worker is still there after a few seconds (it used to exit with status 1 within a second),
that the outage is counted and the worker reports itself not ready, then starts the dependency
and waits for the change event it was given to reach the replica.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from cdc_worker.worker import CdcWorker, ReplicaSink
from local_stack import ClickHouseServer, make_stack_directory
from local_stack.kafka import KafkaBroker
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.catalog import Catalog
from service.errors import AnalyticsError
from service.settings import PROJECT_ROOT, Settings
from tests.conftest import catalog_in_database, unique_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: A Debezium snapshot read of one deal (tenant acme, id 501), as the connector writes it.
DEAL = json.loads(
    (PROJECT_ROOT / "tests/unit/debezium_messages/deals_read_schema.json").read_text()
)
AWAY_SECONDS = 4.0


@pytest.fixture(scope="module")
async def broker() -> AsyncIterator[KafkaBroker]:
    directory = make_stack_directory("outage-kafka-")
    kafka = KafkaBroker(directory / "kafka")
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka
    finally:
        await asyncio.to_thread(kafka.stop)
        shutil.rmtree(directory, ignore_errors=True)


async def publish_deal(bootstrap: str) -> None:
    """The deal's change event on its Debezium topic."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            DEAL["topic"], json.dumps(DEAL["value"]).encode(), key=json.dumps(DEAL["key"]).encode()
        )
    finally:
        await producer.stop()


async def replica_deals(sink: ReplicaSink, database: str) -> int:
    """Live deals in the replica (0 while the worker has not created it yet)."""
    try:
        rows = await sink.query_rows(f"SELECT count() AS n FROM `{database}`.`crm_deals` FINAL")
    except AnalyticsError:
        return 0
    return int(rows[0]["n"])


async def wait_for(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.2)


async def outage_then_recovery(
    worker: CdcWorker,
    dependency: str,
    bring_up: Callable[[], Awaitable[Any]],
    replicated: Callable[[], Awaitable[bool]],
) -> None:
    """Run ``worker`` with ``dependency`` away, bring it up, and wait for the deal to arrive."""
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(AWAY_SECONDS)
        assert not running.done(), f"the worker ended while {dependency} was away"
        assert worker.metrics.outages.get(dependency, 0) == 1  # once per outage, not per retry
        exposed = worker.metrics.render()
        assert "cdc_ready 0" in exposed
        assert f'cdc_dependency_outages_total{{dependency="{dependency}"}} 1' in exposed
        await bring_up()
        await wait_for(replicated, 90, "the deal in the replica")
        assert worker.metrics.ready
        assert "cdc_ready 1" in worker.metrics.render()
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)


async def test_clickhouse_away_at_start_is_waited_for(
    broker: KafkaBroker, catalog: Catalog
) -> None:
    clickhouse = ClickHouseServer(make_stack_directory("outage-clickhouse-"))
    sink = HttpBackend(clickhouse.http_url)
    mine = catalog_in_database(catalog, unique_database("ch_away"))
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_group_id=uuid.uuid4().hex,
        cdc_retry_max_seconds=1.0,
    )
    await publish_deal(broker.bootstrap_servers)

    async def replicated() -> bool:
        return await replica_deals(sink, mine.database) >= 1

    try:
        await outage_then_recovery(
            CdcWorker(settings, mine, sink),
            "clickhouse",
            lambda: asyncio.to_thread(clickhouse.start),
            replicated,
        )
    finally:
        await sink.close()
        await asyncio.to_thread(clickhouse.stop)
        shutil.rmtree(Path(clickhouse.directory), ignore_errors=True)


async def test_kafka_away_at_start_is_waited_for(
    embedded_backend: EmbeddedBackend, catalog: Catalog
) -> None:
    directory = make_stack_directory("outage-late-kafka-")
    kafka = KafkaBroker(directory / "kafka")
    mine = catalog_in_database(catalog, unique_database("kafka_away"))
    settings = Settings(
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        kafka_group_id=uuid.uuid4().hex,
        cdc_retry_max_seconds=1.0,
    )

    async def bring_up() -> None:
        await asyncio.to_thread(kafka.start)
        await publish_deal(kafka.bootstrap_servers)

    async def replicated() -> bool:
        return await replica_deals(embedded_backend, mine.database) >= 1

    try:
        await outage_then_recovery(
            CdcWorker(settings, mine, embedded_backend), "kafka", bring_up, replicated
        )
    finally:
        await embedded_backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")
        await asyncio.to_thread(kafka.stop)
        shutil.rmtree(directory, ignore_errors=True)
