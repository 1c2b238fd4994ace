"""Smoke test of the local stack: every real component starts, answers, and stops for good.

Starts PostgreSQL, Kafka (KRaft), Kafka Connect with Debezium, ClickHouse server and Redis in a
temporary directory, then checks each through its own client: asyncpg, aiokafka, the Connect
REST API (registering deploy/debezium/connector.json unchanged and watching a row's change
event arrive), aiohttp against ClickHouse's HTTP interface, and a raw RESP PING to Redis.
Afterwards no process of the stack may be left.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from aiokafka import (  # type: ignore[import-untyped, unused-ignore]
    AIOKafkaConsumer,
    AIOKafkaProducer,
)
from aiokafka.admin import (  # type: ignore[import-untyped, unused-ignore]
    AIOKafkaAdminClient,
    NewTopic,
)

from local_stack import (
    ALL_COMPONENTS,
    LocalStack,
    load_connector_config,
    make_stack_directory,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Kafka and Connect share two cores with everything else: be patient, but bounded.
EVENT_TIMEOUT = 90.0


def process_gone(pid: int) -> bool:
    """Read /proc directly: no process, or only a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in {"Z", "X"}


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and not process_gone(int(entry.name)):
            found.append(int(entry.name))
    return found


async def consume_until(
    bootstrap: str, topic: str, predicate: Any, wait_seconds: float = EVENT_TIMEOUT
) -> Any:
    """Read ``topic`` from the beginning until a record satisfies ``predicate``; return it."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=500,
    )
    await consumer.start()
    seen = []
    try:
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    seen.append(record)
                    if predicate(record):
                        return record
    finally:
        await consumer.stop()
    pytest.fail(f"no matching record on {topic} within {wait_seconds:.0f} s; saw {len(seen)}")


async def test_whole_stack_starts_answers_and_stops() -> None:
    directory = make_stack_directory("local-stack-test-")
    stack = LocalStack(directory, timeout=180)
    pids: dict[str, int] = {}
    try:
        await stack.astart()
        pids = stack.pids()
        assert set(pids) == set(ALL_COMPONENTS)

        await check_postgres(stack)
        await check_kafka(stack)
        await check_connect_and_debezium(stack)
        await check_clickhouse(stack)
        await check_redis(stack)
    finally:
        await stack.astop()
        await asyncio.to_thread(stack.remove)

    assert pids
    for name, pid in pids.items():
        assert process_gone(pid), f"{name} (pid {pid}) still running after stop()"
    assert processes_mentioning(str(directory)) == []


async def check_postgres(stack: LocalStack) -> None:
    conn = await asyncpg.connect(stack.postgres.dsn)
    try:
        assert await conn.fetchval("SHOW wal_level") == "logical"
        assert int(await conn.fetchval("SHOW max_replication_slots")) >= 4
        assert await conn.fetchval(
            "SELECT rolreplication FROM pg_roles WHERE rolname = $1", stack.postgres.user
        )
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
    finally:
        await conn.close()


async def check_kafka(stack: LocalStack) -> None:
    bootstrap = stack.kafka.bootstrap_servers
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k1")
    finally:
        await producer.stop()
    record = await consume_until(bootstrap, topic, lambda r: r.key == b"k1", wait_seconds=30)
    assert record.value == b"hello"


async def check_connect_and_debezium(stack: LocalStack) -> None:
    connect = stack.connect
    plugins = await asyncio.to_thread(connect.plugins)
    assert "io.debezium.connector.postgresql.PostgresConnector" in {p["class"] for p in plugins}

    config = load_connector_config()  # deploy/debezium/connector.json, unchanged
    table = config.config["table.include.list"].split(",")[0].split(".", 1)[1]
    conn = await asyncpg.connect(stack.postgres.dsn)
    try:
        await conn.execute(
            f"CREATE TABLE public.{table} (id bigint PRIMARY KEY, name text,"
            " amount numeric(12, 2), created_at timestamp(6), seen_at timestamptz, born date)"
        )
        await conn.execute(
            f"INSERT INTO public.{table} VALUES"
            " (1, 'snapshot', 10.50, '2026-01-02 03:04:05.123456', now(), '2026-01-02')"
        )
        await asyncio.to_thread(stack.register_connector, config)
        await conn.execute(
            f"INSERT INTO public.{table} VALUES"
            " (2, 'streamed', 1234567890.12, '2026-03-04 05:06:07.5', now(), '2000-02-29')"
        )
    finally:
        await conn.close()

    bootstrap = stack.kafka.bootstrap_servers

    def is_row(row_id: int, op: str) -> Any:
        def match(record: Any) -> bool:
            if record.value is None:
                return False
            event = json.loads(record.value)
            return event.get("op") == op and (event.get("after") or {}).get("id") == row_id

        return match

    topic = config.topic_for(table)
    snapshot = json.loads((await consume_until(bootstrap, topic, is_row(1, "r"))).value)
    streamed_record = await consume_until(bootstrap, topic, is_row(2, "c"))
    streamed = json.loads(streamed_record.value)
    # The choices of connector.json, as a consumer sees them (schemaless JSON, full envelope).
    assert json.loads(streamed_record.key) == {"id": 2}
    assert streamed["after"]["amount"] == "1234567890.12"  # decimal.handling.mode=string
    # time.precision.mode=isostring: ISO-8601 text in UTC, as many fraction digits as needed;
    # DATE values carry a "Z" too ("2000-02-29Z").
    created_at = dt.datetime.fromisoformat(streamed["after"]["created_at"])
    assert created_at == dt.datetime(2026, 3, 4, 5, 6, 7, 500000, tzinfo=dt.UTC)
    assert streamed["after"]["born"].removesuffix("Z") == "2000-02-29"
    assert streamed["after"]["seen_at"].endswith("Z")  # timestamptz: ZonedTimestamp in UTC
    assert streamed["source"]["table"] == table
    assert isinstance(streamed["source"]["lsn"], int)
    assert snapshot["after"]["amount"] == "10.50"
    assert snapshot["source"]["snapshot"] in {"true", "last", "first", "first_in_data_collection"}

    heartbeat = await consume_until(bootstrap, config.heartbeat_topic, lambda r: True)
    assert "ts_ms" in json.loads(heartbeat.value)
    # The heartbeat action query's logical messages are excluded: no "<prefix>.message" topic.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = set(await admin.list_topics())
    finally:
        await admin.close()
    assert f"{config.topic_prefix}.message" not in topics
    assert topic in topics


async def check_clickhouse(stack: LocalStack) -> None:
    clickhouse = stack.clickhouse
    params = {"query": "SELECT version()"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(clickhouse.http_url, params=params) as resp,
    ):
        assert resp.status == 200
        assert (await resp.text()).strip().split(".")[0].isdigit()

    # Down "for a while" and back on the same port with the same data.
    await asyncio.to_thread(
        clickhouse.query, "CREATE TABLE default.survives (x UInt8) ENGINE = MergeTree ORDER BY x"
    )
    await asyncio.to_thread(clickhouse.query, "INSERT INTO default.survives VALUES (7)")
    port = clickhouse.http_port
    await asyncio.to_thread(clickhouse.stop)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(clickhouse.http_url + "/ping")
    await asyncio.to_thread(clickhouse.start)
    assert clickhouse.http_port == port
    count = await asyncio.to_thread(clickhouse.query, "SELECT sum(x) FROM default.survives")
    assert count.strip() == "7"


async def check_redis(stack: LocalStack) -> None:
    reader, writer = await asyncio.open_connection(stack.redis.host, stack.redis.port)
    try:
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 5) == b"+PONG\r\n"
        writer.write(b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$4\r\nsave\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(1024), 5)
        assert reply == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"  # no RDB snapshots
    finally:
        writer.close()
        await writer.wait_closed()
