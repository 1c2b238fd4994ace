"""The events topic of trusted producers end to end (DESIGN.md 8.1; issue 14 item 2, issue 18).

Real components: a Kafka broker of the local stack (loopback ports) and the session's embedded
engine. Producers publish with aiokafka; what lands is read back with FINAL straight from the
event table, the dead letters from their topic, and the group's committed offsets with the admin
client, none of it through the code under test. Expected rows are the events the tests publish.

Proves: `analytics serve`'s server consumes the topic into the one sink (both message forms, an
event without id, a message published twice counted once); bad messages reach the dead-letter
topic with reason, field and source while nothing of them is written, and the valid events of a
batch with bad ones are; offsets move only after the write (an engine that cannot write yet:
retried, nothing committed; then written and committed; a restart re-writes nothing and loses
nothing); a full sink is waited out, never skipped; a consumer started with Kafka down waits,
counts the outage and consumes once Kafka is up.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from local_stack import make_stack_directory
from local_stack.kafka import KafkaBroker
from service.api.server import start_server
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog
from service.errors import AnalyticsError
from service.events.ingestion import EventIngestion
from service.events.metrics import SinkMetrics
from service.events.sink import EventSink
from service.events.topic_consumer import EventTopicConsumer
from service.events.validation import EventLimits
from service.schema import all_ddl
from service.settings import Settings
from tests.conftest import catalog_in_database, unique_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "product.events"
PARTITIONS = 2
WITHIN = 30.0


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def broker() -> AsyncIterator[KafkaBroker]:
    directory = make_stack_directory("event-topic-kafka-")
    kafka = KafkaBroker(directory / "kafka")
    await asyncio.to_thread(kafka.start)
    try:
        yield kafka
    finally:
        await asyncio.to_thread(kafka.stop)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
async def tables(embedded_backend: EmbeddedBackend, catalog: Catalog) -> AsyncIterator[Catalog]:
    """The shipped catalog's tables in a database of this module's own."""
    mine = catalog_in_database(catalog, unique_database("event_topic"))
    for statement in all_ddl(mine):
        await embedded_backend.command(statement)
    yield mine
    await embedded_backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")


@dataclass(frozen=True)
class Topics:
    """A test's own events topic, dead-letter topic and consumer group."""

    events: str
    dead_letters: str
    group: str


def new_topics() -> Topics:
    name = f"events-{uuid.uuid4().hex[:8]}"
    return Topics(name, f"{name}.dead-letter", f"group-{name}")


async def create_topics(bootstrap: str, topics: Topics) -> None:
    """The events topic with two partitions, the dead-letter topic with one."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topics.events, PARTITIONS, 1), NewTopic(topics.dead_letters, 1, 1)]
        )
    finally:
        await admin.close()


@pytest.fixture
async def topics(broker: KafkaBroker) -> Topics:
    made = new_topics()
    await create_topics(broker.bootstrap_servers, made)
    return made


def settings_for(bootstrap: str, topics: Topics, **overrides: Any) -> Settings:
    return Settings(
        kafka_bootstrap_servers=bootstrap,
        events_topic=topics.events,
        events_group_id=topics.group,
        events_dead_letter_topic=topics.dead_letters,
        event_flush_milliseconds=20,
        **overrides,
    )


@asynccontextmanager
async def consuming(
    settings: Settings,
    backend: EmbeddedBackend,
    catalog: Catalog,
    *,
    capacity: int = 10_000,
    flush_events: int = 1_000,
    flush_seconds: float = 0.02,
) -> AsyncIterator[EventTopicConsumer]:
    """A sink of its own and a consumer writing to it, as `serve` builds them; stopped after."""
    sink = EventSink(
        backend,
        catalog.database,
        flush_events=flush_events,
        flush_seconds=flush_seconds,
        capacity=capacity,
        metrics=SinkMetrics(),
    )
    ingestion = EventIngestion(catalog, sink, max_request_events=100, limits=EventLimits())
    sink.start()
    consumer = EventTopicConsumer(settings, ingestion, retry_max_seconds=0.5)
    consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()
        await sink.close()


# --- helpers -------------------------------------------------------------------------------------


def event(name: str, actor: int, **fields: Any) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "event": name,
        "actor": actor,
        "timestamp": "2026-03-01T10:00:00Z",
        **fields,
    }


def one(tenant: str, item: Any, model: str = MODEL) -> bytes:
    return json.dumps({"tenant": tenant, "model": model, "event": item}).encode()


def many(tenant: str, items: Sequence[Any], model: str = MODEL) -> bytes:
    return json.dumps({"tenant": tenant, "model": model, "events": list(items)}).encode()


async def publish(bootstrap: str, topic: str, values: Sequence[bytes], key: bytes = b"") -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key or None)
    finally:
        await producer.stop()


async def stored(backend: EmbeddedBackend, catalog: Catalog, tenant: str) -> dict[str, Any]:
    """The tenant's events after FINAL, by event id."""
    try:
        rows = await backend.query_rows(
            "SELECT toString(event_id) AS event_id, event, contact_id, timestamp, plan, revenue, "
            "properties_keys, properties_values "
            f"FROM `{catalog.database}`.product_events FINAL WHERE tenant_id = {{tenant:String}}",
            {"tenant": tenant},
        )
    except AnalyticsError:
        return {}  # the table is not there yet
    return {row["event_id"]: row for row in rows}


async def rows_without_final(backend: EmbeddedBackend, catalog: Catalog, tenant: str) -> int:
    rows = await backend.query_rows(
        f"SELECT count() AS n FROM `{catalog.database}`.product_events "
        "WHERE tenant_id = {tenant:String}",
        {"tenant": tenant},
    )
    return int(rows[0]["n"])


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    """The group's committed offsets by partition (read without joining the group)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items() if offset}


async def dead_letters(
    bootstrap: str, topic: str, count: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` dead letters (waiting for them), read from the topic's start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    letters: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        deadline = time.monotonic() + WITHIN
        while len(letters) < count:
            assert time.monotonic() < deadline, f"{len(letters)} of {count} dead letters"
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                letters += messages
    finally:
        await consumer.stop()
    return letters


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, within: float = WITHIN) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.1)


def sample(metrics: SinkMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def new_tenant() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


# --- tests ---------------------------------------------------------------------------------------


async def test_serve_consumes_the_topic_into_the_event_table(
    broker: KafkaBroker, topics: Topics, tables: Catalog, embedded_backend: EmbeddedBackend
) -> None:
    bootstrap = broker.bootstrap_servers
    settings = settings_for(bootstrap, topics, port=0, rest_port=None)
    tenant = new_tenant()
    signup = event("signup", 17, properties={"plan": "pro", "referrer": "ads"})
    login = event("login", 17)
    purchase = {key: value for key, value in event("purchase", 18).items() if key != "eventId"}
    purchase["properties"] = {"revenue": "19.90", "coupon": None, "items": [1, 2]}
    values = [one(tenant, signup), many(tenant, [login, purchase]), one(tenant, signup)]
    running = await start_server(settings, catalog=tables, backend=embedded_backend)
    try:
        consumer = running.event_topic
        assert consumer is not None
        await publish(bootstrap, topics.events, values, key=tenant.encode())

        async def landed() -> bool:
            return len(await stored(embedded_backend, tables, tenant)) == 3

        await wait_for(landed, "three events in the table")
        rows = await stored(embedded_backend, tables, tenant)
        assert rows[signup["eventId"]]["event"] == "signup"
        assert rows[signup["eventId"]]["contact_id"] == 17
        assert rows[signup["eventId"]]["plan"] == "pro"
        assert rows[signup["eventId"]]["properties_keys"] == ["referrer"]
        assert rows[login["eventId"]]["event"] == "login"
        (derived,) = rows.keys() - {signup["eventId"], login["eventId"]}
        assert uuid.UUID(derived).version == 5  # given an id its re-deliveries repeat
        assert rows[derived]["revenue"] == Decimal("19.90")
        assert dict(
            zip(rows[derived]["properties_keys"], rows[derived]["properties_values"], strict=True)
        ) == {"items": "[1,2]"}

        async def all_committed() -> bool:
            return await committed(bootstrap, topics.group) == await end_offsets(
                bootstrap, topics.events
            )

        await wait_for(all_committed, "every message committed")
        metrics = running.sink.metrics if running.sink else None
        assert metrics is not None
        assert sample(metrics, "analytics_event_topic_messages_total") == 3
        assert sample(metrics, "analytics_event_topic_ready") == 1
        assert b"analytics_event_topic_dead_letters" in metrics.exposition()
    finally:
        await running.stop(1.0)
    assert sample(metrics, "analytics_event_topic_ready") == 0


async def test_bad_messages_are_dead_lettered_with_their_reason(
    broker: KafkaBroker, topics: Topics, tables: Catalog, embedded_backend: EmbeddedBackend
) -> None:
    bootstrap = broker.bootstrap_servers
    good, bad = new_tenant(), new_tenant()
    first, second = event("signup", 1), event("login", 2)
    values = [
        b"{not json",
        json.dumps({"tenant": "", "model": MODEL, "event": event("x", 1)}).encode(),
        one(bad, event("x", 1), model="crm.deals"),
        one(bad, event("x", 1, timestamp="yesterday")),
        many(good, [first, {"event": "anonymous"}, second, "junk"]),
    ]
    # One partition: the offsets below are the order of publishing.
    await publish(bootstrap, topics.events, values, key=b"same-partition")
    async with consuming(settings_for(bootstrap, topics), embedded_backend, tables) as consumer:
        letters = await dead_letters(bootstrap, topics.dead_letters, 6)

        async def landed() -> bool:
            return len(await stored(embedded_backend, tables, good)) == 2

        await wait_for(landed, "the valid events of the mixed batch")
        metrics = consumer.metrics
        assert sample(metrics, "analytics_event_topic_dead_letters_total", cause="message") == 3
        assert sample(metrics, "analytics_event_topic_dead_letters_total", cause="event") == 3
    assert (await stored(embedded_backend, tables, good)).keys() == {
        first["eventId"],
        second["eventId"],
    }
    assert await stored(embedded_backend, tables, bad) == {}
    deals = await embedded_backend.query_rows(
        f"SELECT count() AS n FROM `{tables.database}`.crm_deals WHERE tenant_id = {{t:String}}",
        {"t": bad},
    )
    assert deals[0]["n"] == 0
    partition = letters[0].headers and dict(letters[0].headers)["source.partition"]
    by_place: dict[tuple[int, int | None], tuple[dict[str, bytes], bytes | None]] = {}
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["source.topic"] == topics.events.encode()
        assert headers["source.partition"] == partition
        index = int(headers["source.index"]) if "source.index" in headers else None
        by_place[int(headers["source.offset"]), index] = (headers, letter.value)
    assert by_place.keys() == {(0, None), (1, None), (2, None), (3, 0), (4, 1), (4, 3)}

    def said(place: tuple[int, int | None]) -> tuple[str, str]:
        headers = by_place[place][0]
        return headers["field"].decode(), headers["reason"].decode()

    assert said((0, None))[0] == ""
    assert "not valid JSON" in said((0, None))[1]
    assert said((1, None)) == ("tenant", "tenant: required, a string of 1 to 128 chars")
    assert said((2, None))[0] == "model"
    assert "crm.deals is replicated from PostgreSQL" in said((2, None))[1]
    assert said((3, 0))[0] == "event.timestamp"
    assert "not an RFC 3339 time" in said((3, 0))[1]
    assert said((4, 1)) == ("events[1].actor", "events[1].actor: required")
    assert said((4, 3)) == ("events[3]", "events[3]: an event must be a JSON object")
    # Whole messages and one-event messages as they came; a batch's event as a message alone.
    assert by_place[0, None][1] == values[0]
    assert by_place[3, 0][1] == values[3]
    assert json.loads(by_place[4, 1][1] or b"") == {
        "tenant": good,
        "model": MODEL,
        "event": {"event": "anonymous"},
    }
    assert letters[0].key == b"same-partition"
    assert sum((await committed(bootstrap, topics.group)).values()) == len(values)


async def test_offsets_move_only_after_the_write(
    broker: KafkaBroker, topics: Topics, catalog: Catalog, embedded_backend: EmbeddedBackend
) -> None:
    bootstrap = broker.bootstrap_servers
    settings = settings_for(bootstrap, topics)
    # The event table does not exist yet: every write fails until the test creates it.
    late = catalog_in_database(catalog, unique_database("event_topic_late"))
    tenant = new_tenant()
    before = [event("signup", n) for n in range(3)]
    after = [event("login", n) for n in range(2)]
    try:
        await publish(bootstrap, topics.events, [one(tenant, e) for e in before[:2]], key=b"a")
        await publish(bootstrap, topics.events, [one(tenant, before[2])], key=b"b")
        async with consuming(settings, embedded_backend, late) as consumer:
            metrics = consumer.metrics

            async def retried() -> bool:
                name = "analytics_event_topic_write_retries_total"
                return sample(metrics, name, reason="unavailable") >= 2

            await wait_for(retried, "failed writes retried")
            assert await committed(bootstrap, topics.group) == {}  # nothing past unwritten events
            for statement in all_ddl(late):
                await embedded_backend.command(statement)

            async def landed() -> bool:
                return len(await stored(embedded_backend, late, tenant)) == 3

            await wait_for(landed, "the events once the table exists")
            ends = await end_offsets(bootstrap, topics.events)

            async def all_committed() -> bool:
                return await committed(bootstrap, topics.group) == ends

            await wait_for(all_committed, "the offsets after the write")
        # A restart of the group: reads from the commit, so nothing is written twice.
        await publish(bootstrap, topics.events, [many(tenant, after)], key=b"a")
        async with consuming(settings, embedded_backend, late) as consumer:

            async def five() -> bool:
                return len(await stored(embedded_backend, late, tenant)) == 5

            await wait_for(five, "the events published while no consumer ran")
            ends = await end_offsets(bootstrap, topics.events)
            await wait_for(all_committed, "the new offsets committed")
            written = consumer.metrics.registry.get_sample_value(
                "analytics_events_written_total", {"model": MODEL}
            )
            assert written == len(after)
        assert set(await stored(embedded_backend, late, tenant)) == {
            e["eventId"] for e in before + after
        }
        assert await rows_without_final(embedded_backend, late, tenant) == 5
    finally:
        await embedded_backend.command(f"DROP DATABASE IF EXISTS `{late.database}`")


async def test_a_full_sink_is_waited_out_and_nothing_is_skipped(
    broker: KafkaBroker, topics: Topics, tables: Catalog, embedded_backend: EmbeddedBackend
) -> None:
    bootstrap = broker.bootstrap_servers
    tenant = new_tenant()
    events = [event("click", n) for n in range(24)]
    await publish(bootstrap, topics.events, [one(tenant, e) for e in events], key=b"k")
    settings = settings_for(bootstrap, topics)
    # Three events fill the sink, and it holds them 0.2 s: most submissions are refused at first.
    async with consuming(
        settings, embedded_backend, tables, capacity=3, flush_seconds=0.2
    ) as consumer:

        async def landed() -> bool:
            return len(await stored(embedded_backend, tables, tenant)) == len(events)

        await wait_for(landed, "every event despite the full sink")
        metrics = consumer.metrics
        name = "analytics_event_topic_write_retries_total"
        assert sample(metrics, name, reason="buffer_full") >= 1
        assert sample(metrics, "analytics_event_requests_refused_total", reason="buffer_full") >= 1
    assert set(await stored(embedded_backend, tables, tenant)) == {e["eventId"] for e in events}


async def test_a_consumer_started_while_kafka_is_down_waits_for_it(
    tables: Catalog, embedded_backend: EmbeddedBackend
) -> None:
    directory = make_stack_directory("event-topic-late-kafka-")
    kafka = KafkaBroker(directory / "kafka")
    bootstrap = kafka.bootstrap_servers
    topics = new_topics()
    tenant = new_tenant()
    signup = event("signup", 5)
    try:
        async with consuming(settings_for(bootstrap, topics), embedded_backend, tables) as consumer:
            await asyncio.sleep(3.0)
            metrics = consumer.metrics
            outages = "analytics_event_topic_dependency_outages_total"
            assert sample(metrics, outages, dependency="kafka") == 1  # once, not per retry
            assert sample(metrics, "analytics_event_topic_ready") == 0
            await asyncio.to_thread(kafka.start)
            await create_topics(bootstrap, topics)
            await publish(bootstrap, topics.events, [one(tenant, signup)])

            async def landed() -> bool:
                return signup["eventId"] in await stored(embedded_backend, tables, tenant)

            await wait_for(landed, "the event once Kafka is up")
            assert sample(metrics, "analytics_event_topic_ready") == 1
            assert sample(metrics, outages, dependency="kafka") == 1
    finally:
        await asyncio.to_thread(kafka.stop)
        shutil.rmtree(directory, ignore_errors=True)
