"""The event sink end to end (DESIGN.md 8.1): events in over gRPC and REST, out of the engine.

Servers of start_server on the session's embedded engine, and `analytics serve` processes on a
data directory of their own. What lands is read back with FINAL straight from the table (not
through the code under test) and through the Query RPC; expected answers are computed here from
the events the tests send.

Proves: a stream's batches land typed (declared properties in their columns, the rest in the map)
and answer count, count_distinct, an exact decimal sum, group-by and filters on `properties.<key>`;
`meta.lastSyncAt` follows acknowledgements; a re-sent event counts once (the latest send of the day
wins), and the same id on another day is another event; bad events are rejected one by one (index
across the stream, field, reason) while the good ones are written, and a request of only bad events
is INVALID_ARGUMENT / 400 naming each; every request-level error on both transports; a full buffer
answers RESOURCE_EXHAUSTED / 429 with a retry delay and writes nothing of the refused request;
shutdown writes what the sink holds and answers its callers; an engine failure acknowledges
nothing; kill -9 of `analytics serve` loses no acknowledged event and a re-send after it counts
once, SIGTERM answers the requests in flight; `/metrics` counts what happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import aiohttp
import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from analytics.v1 import analytics_pb2, analytics_pb2_grpc, events_pb2, events_pb2_grpc
from service.api import convert
from service.api.problem import PROBLEM_TYPE_BASE
from service.api.server import RunningServer, start_server
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, load_catalog
from service.errors import AnalyticsError, ErrorKind
from service.events.validation import EventLimits, RawEvent, validate_events
from service.schema import all_ddl
from service.settings import DEFAULT_CATALOG, PROJECT_ROOT, Settings
from tests.conftest import catalog_in_database, unique_database
from tests.grpc_errors import error_details
from tests.served import start_serve

pytestmark = pytest.mark.integration

MODEL = "product.events"
PROBLEM = "application/problem+json"
MAX_REQUEST_EVENTS = 20
BODY_LIMIT = 64 * 1024
# The sink records sync state at most this often (EventSink's default).
SYNC_INTERVAL = dt.timedelta(seconds=1)
# An acknowledgement's way from the sink to the client, after its flush was recorded.
ACK_LATENCY = dt.timedelta(milliseconds=100)
# Declared in the catalog as typed properties; any other key goes to the map.
DECLARED = ("platform", "country", "plan", "revenue", "trial")
READ_WRITE = ("product.events.write", "product.events.read")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def events_catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """The deploy catalog plus a declared bool property (`trial`), in a database of its own.

    The shipped event model declares no bool property; one is added so that the bool check of
    declared properties ("yes" is not a bool) is exercised on the real table.
    """
    text = DEFAULT_CATALOG.read_text(encoding="utf-8")
    revenue = 'revenue = "decimal(18,2)?"\n'
    assert text.count(revenue) == 1
    path = tmp_path_factory.mktemp("event_catalog") / "catalog.toml"
    path.write_text(text.replace(revenue, revenue + 'trial = "bool?"\n'), encoding="utf-8")
    catalog = load_catalog(path)
    return dataclasses.replace(catalog, database=f"event_sink_{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="module")
async def tables(embedded_backend: EmbeddedBackend, events_catalog: Catalog) -> Catalog:
    for statement in all_ddl(events_catalog):
        await embedded_backend.command(statement)
    return events_catalog


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(
        port=0,
        rest_port=0,
        event_flush_milliseconds=20,
        event_max_request_events=MAX_REQUEST_EVENTS,
        max_message_bytes=BODY_LIMIT,
    )


@pytest.fixture(scope="module")
async def server(
    settings: Settings, tables: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[RunningServer]:
    running = await start_server(settings, catalog=tables, backend=embedded_backend)
    yield running
    await running.stop(1.0)


@pytest.fixture(scope="module")
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def tenant() -> str:
    """A tenant of the test's own: counts in the shared table are the test's alone."""
    return f"t_{uuid.uuid4().hex[:12]}"


# --- helpers ----------------------------------------------------------------------------------


def token(tenant: str, permissions: Sequence[str] = READ_WRITE) -> str:
    return mint_token(Settings(), subject="tester", tenant=tenant, permissions=permissions)


def grpc_auth(tenant: str, permissions: Sequence[str] = READ_WRITE) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token(tenant, permissions)}"),)


def rest_auth(tenant: str, permissions: Sequence[str] = READ_WRITE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, permissions)}"}


def event(
    name: str = "page_view",
    actor: str = "1",
    timestamp: str = "2026-11-02T10:00:00Z",
    event_id: str | None = None,
    **properties: str,
) -> events_pb2.Event:
    return events_pb2.Event(
        event_id=str(uuid.uuid4()) if event_id is None else event_id,
        event=name,
        actor=actor,
        timestamp=timestamp,
        properties=properties,
    )


async def ingest(
    channel: grpc.aio.Channel,
    metadata: Any,
    batches: Sequence[Sequence[events_pb2.Event]],
    models: Sequence[str] | None = None,
) -> events_pb2.IngestResponse:
    """One Ingest stream sending ``batches`` in order (each naming ``models[i]``, else MODEL)."""

    async def requests() -> AsyncIterator[events_pb2.IngestRequest]:
        for number, batch in enumerate(batches):
            model = models[number] if models is not None else MODEL
            yield events_pb2.IngestRequest(model=model, events=batch)

    stub = events_pb2_grpc.EventServiceStub(channel)
    return cast(events_pb2.IngestResponse, await stub.Ingest(requests(), metadata=metadata))


async def refused(coroutine: Any) -> grpc.aio.AioRpcError:
    """The error a call that must fail ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coroutine
    return caught.value


async def query(channel: grpc.aio.Channel, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    request = json_format.ParseDict({"model": MODEL, **body}, analytics_pb2.QueryRequest())
    stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
    return convert.response_json(await stub.Query(request, metadata=grpc_auth(tenant)))


async def stored(backend: EmbeddedBackend, catalog: Catalog, tenant: str) -> dict[str, Any]:
    """The tenant's rows as the engine keeps them after FINAL, by event id (not via Query)."""
    rows = await backend.query_rows(
        "SELECT toString(event_id) AS event_id, event, contact_id, timestamp, platform, plan, "
        "revenue, trial, properties_keys, properties_values "
        f"FROM `{catalog.database}`.product_events FINAL WHERE tenant_id = {{tenant:String}}",
        {"tenant": tenant},
    )
    for row in rows:
        row["pairs"] = list(zip(row["properties_keys"], row["properties_values"], strict=True))
    return {row["event_id"]: row for row in rows}


async def post_events(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    content_type: str = "application/json",
    path: str = "product/events",
) -> tuple[int, str, dict[str, Any], Any]:
    """POST a body to the events endpoint: status, content type, JSON body, headers."""
    async with http.post(
        f"{url}/v1/events/{path}", data=body, headers={**headers, "Content-Type": content_type}
    ) as reply:
        return reply.status, reply.content_type, await reply.json(content_type=None), reply.headers


def json_body(items: Sequence[Any]) -> bytes:
    return json.dumps(items).encode()


def as_json(message: events_pb2.Event) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def assert_problem(
    reply: tuple[int, str, dict[str, Any], Any], status: int, suffix: str, code: str
) -> dict[str, Any]:
    got_status, content_type, document, _ = reply
    assert (got_status, content_type) == (status, PROBLEM), document
    assert document["type"] == PROBLEM_TYPE_BASE + suffix
    assert (document["status"], document["code"]) == (status, code), document
    return document


def rejections(response: events_pb2.IngestResponse) -> list[tuple[int, str]]:
    return [(r.index, r.field) for r in response.rejected]


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    raise AssertionError("no RetryInfo in the status details")


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, str], float]:
    """Every sample of GET /metrics by (name, labels as k=v,k=v)."""
    async with http.get(f"{url}/metrics") as reply:
        assert reply.status == 200
        assert reply.content_type == "text/plain"
        text = await reply.text()
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name, labels] = sample.value
    return samples


async def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds}s for {what}"
        await asyncio.sleep(0.01)


def rest_url(running: RunningServer) -> str:
    assert running.rest_port
    return f"http://127.0.0.1:{running.rest_port}"


def utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# --- a stream lands typed and answers queries --------------------------------------------------


async def test_ingest_stream_lands_typed_and_answers_queries(
    server, channel, tenant, tables, embedded_backend
) -> None:
    # 2^53 + 1 and 0.20 are not exact in a double: only exact decimal arithmetic gives the sum.
    batches = [
        [
            event("signed_up", "1", "2026-11-02T12:00:00+02:00", platform="web", plan="pro",
                  revenue="10.10", utm_source="google", button="cta"),
            event("page_view", "1", "2026-11-02T10:05:00.123456Z", platform="web",
                  utm_source="google"),
            event("page_view", "2", platform="ios", utm_source="bing"),
        ],
        [
            event("purchase", "2", platform="ios", plan="pro", revenue="0.20",
                  utm_source="googleads"),
            event("page_view", "3", platform="android", trial="false"),
        ],
        [
            event("purchase", "3", revenue="9007199254740993.01", country="DE"),
            event("signed_up", "4", platform="web", trial="true", utm_source="Google"),
        ],
    ]  # fmt: skip
    sent = [e for batch in batches for e in batch]
    response = await ingest(channel, grpc_auth(tenant), batches)
    acknowledged = dt.datetime.now(dt.UTC)
    assert (response.accepted, list(response.rejected)) == (len(sent), [])

    # Ground truth from what was sent.
    utm = Counter(e.properties.get("utm_source") for e in sent)
    revenue = sum(Decimal(e.properties["revenue"]) for e in sent if "revenue" in e.properties)
    assert revenue == Decimal("9007199254741003.31")

    counted = await query(channel, tenant, {"aggregate": "count"})
    assert counted["data"] == [{"count": len(sent)}]
    # Sync state is recorded at most once per interval: right after an acknowledgement it may
    # still be the previous record, at most one interval old, but never unset.
    last_sync = dt.datetime.fromisoformat(counted["meta"]["lastSyncAt"])
    assert acknowledged - SYNC_INTERVAL - ACK_LATENCY <= last_sync <= acknowledged
    actors = await query(channel, tenant, {"aggregate": "count_distinct", "field": "contact_id"})
    assert list(actors["data"][0].values()) == [len({e.actor for e in sent})]
    total = await query(channel, tenant, {"aggregate": "sum", "field": "revenue"})
    assert [Decimal(str(v)) for v in total["data"][0].values()] == [revenue]
    assert list(total["data"][0].values()) == [str(revenue)]  # exact text, not a double

    grouped = await query(
        channel, tenant, {"groupBy": "properties.utm_source", "order": "count.desc", "limit": 100}
    )
    assert {row["properties.utm_source"]: row["count"] for row in grouped["data"]} == dict(utm)
    filters = {
        "eq.google": utm["google"],
        "in.(google,bing)": utm["google"] + utm["bing"],
        "is.null": utm[None],
        "like.google%": utm["google"] + utm["googleads"],  # LIKE is case-sensitive: not Google
        "not.is.null": len(sent) - utm[None],
    }
    for condition, expected in filters.items():
        answer = await query(channel, tenant, {"filters": {"properties.utm_source": condition}})
        assert answer["data"] == [{"count": expected}], condition
    purchases = await query(channel, tenant, {"filters": {"event": "eq.purchase"}})
    assert purchases["data"] == [{"count": sum(e.event == "purchase" for e in sent)}]
    by_plan = await query(
        channel, tenant, {"groupBy": "plan", "filters": {"properties.button": "eq.cta"}}
    )
    assert by_plan["data"] == [{"plan": "pro", "count": 1}]

    # Declared properties in their typed columns, only the others in the map.
    rows = await stored(embedded_backend, tables, tenant)
    assert set(rows) == {e.event_id for e in sent}
    for sent_event in sent:
        row = rows[sent_event.event_id]
        props = dict(sent_event.properties)
        assert row["event"] == sent_event.event
        assert row["contact_id"] == int(sent_event.actor)
        assert utc(row["timestamp"]) == dt.datetime.fromisoformat(sent_event.timestamp)
        assert row["platform"] == props.get("platform")
        assert row["plan"] == props.get("plan")
        assert row["revenue"] == (Decimal(props["revenue"]) if "revenue" in props else None)
        assert row["trial"] == ({"true": True, "false": False}[props["trial"]]
                                if "trial" in props else None)  # fmt: skip
        free = {k: v for k, v in props.items() if k not in DECLARED}
        assert dict(row["pairs"]) == free
        assert len(row["pairs"]) == len(free)


async def test_last_sync_at_trails_the_latest_acknowledgement_by_at_most_the_interval(
    tables, embedded_backend, tenant
) -> None:
    running = await start_server(
        Settings(port=0, rest_port=0, event_flush_milliseconds=10),
        catalog=tables,
        backend=embedded_backend,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            # A new sink records its first flush at once; the second flush's record is owed
            # until one interval after the first, when the idle sink writes it.
            sent = dt.datetime.now(dt.UTC)
            await ingest(channel, grpc_auth(tenant), [[event()]])
            first = time.monotonic()
            acknowledged = dt.datetime.now(dt.UTC)
            # Recorded before the caller was answered, not some moment later.
            answer = await query(channel, tenant, {"aggregate": "count"})
            last_sync = dt.datetime.fromisoformat(answer["meta"]["lastSyncAt"])
            assert sent <= last_sync <= acknowledged
            await ingest(channel, grpc_auth(tenant), [[event()]])
            # Half an interval after that idle record: this flush's record is owed in turn.
            await asyncio.sleep(first + 1.5 * SYNC_INTERVAL.total_seconds() - time.monotonic())
            await ingest(channel, grpc_auth(tenant), [[event()]])
            acknowledged = dt.datetime.now(dt.UTC)
            answer = await query(channel, tenant, {"aggregate": "count"})
    finally:
        await running.stop(1.0)
    assert answer["data"] == [{"count": 3}]
    # The idle record says "every event acknowledged until now is visible", which is what
    # keeps lastSyncAt within one interval of the latest acknowledgement.
    last_sync = dt.datetime.fromisoformat(answer["meta"]["lastSyncAt"])
    assert acknowledged - SYNC_INTERVAL - ACK_LATENCY <= last_sync <= acknowledged


# --- idempotency ------------------------------------------------------------------------------


async def test_a_resent_event_counts_once(
    server, channel, tenant, tables, embedded_backend
) -> None:
    batch = [event("page_view", str(actor), "2026-01-15T08:00:00Z") for actor in range(1, 6)]
    first = await ingest(channel, grpc_auth(tenant), [batch])
    again = await ingest(channel, grpc_auth(tenant), [batch])
    # The response counts what was written each time; queries count each event id once.
    assert (first.accepted, again.accepted) == (5, 5)
    # The same day, another time and properties: the latest send wins.
    later = event(
        "page_view", "1", "2026-01-15T21:30:00Z", event_id=batch[0].event_id, resent="yes"
    )
    assert (await ingest(channel, grpc_auth(tenant), [[later]])).accepted == 1

    answer = await query(
        channel, tenant, {"metrics": [{"aggregate": "count"},
                                      {"aggregate": "count_distinct", "field": "event_id"}]}
    )  # fmt: skip
    assert list(answer["data"][0].values()) == [5, 5]
    resent = await query(channel, tenant, {"groupBy": "properties.resent", "order": "count.asc"})
    assert resent["data"] == [
        {"properties.resent": "yes", "count": 1},
        {"properties.resent": None, "count": 4},
    ]
    rows = await stored(embedded_backend, tables, tenant)
    assert utc(rows[batch[0].event_id]["timestamp"]) == dt.datetime(
        2026, 1, 15, 21, 30, tzinfo=dt.UTC
    )

    # Another day is another event (README: the day is part of the key).
    moved = event("page_view", "2", "2026-03-02T09:00:00Z", event_id=batch[1].event_id)
    assert (await ingest(channel, grpc_auth(tenant), [[moved]])).accepted == 1
    march = await query(channel, tenant, {"filters": {"timestamp": "gte.2026-03-01T00:00:00Z"}})
    assert march["data"] == [{"count": 1}]
    total = await query(channel, tenant, {})
    assert total["data"] == [{"count": 6}]


# --- bad events are rejected one by one --------------------------------------------------------


async def test_bad_events_are_rejected_by_index_while_good_ones_are_written(
    server, channel, tenant, tables, embedded_backend
) -> None:
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
    good = [event(actor="1"), event(actor="2"), event(actor="3"), event(actor="4", revenue="1.230")]
    batches = [
        [good[0], event(actor=""), good[1], event(actor="abc")],
        [
            event(event_id="not-a-uuid"),
            event(timestamp="2026-11-02T10:00:00"),
            event(timestamp=future),
            good[2],
        ],
        [
            event(revenue="abc"),
            event(revenue="1.234"),
            event(trial="yes"),
            event(**{"k" * 201: "v"}),
            good[3],
        ],
    ]
    response = await ingest(channel, grpc_auth(tenant), batches)
    assert response.accepted == len(good)
    expected = [
        (1, "actor", "required"),
        (3, "actor", "not an integer"),
        (4, "eventId", "not a UUID"),
        (5, "timestamp", "needs an offset"),
        (6, "timestamp", "after the server's clock"),
        (8, "properties.revenue", "not a decimal"),
        (9, "properties.revenue", "more than 2 decimal places"),
        (10, "properties.trial", "not true or false"),
        (11, "properties", "1 to 200"),
    ]
    assert rejections(response) == [(index, field) for index, field, _ in expected]
    for rejection, (_, _, reason) in zip(response.rejected, expected, strict=True):
        assert reason in rejection.reason, rejection

    rows = await stored(embedded_backend, tables, tenant)
    assert set(rows) == {e.event_id for e in good}
    # 1.230 has three places but fits two exactly: accepted, stored as 1.23.
    assert rows[good[3].event_id]["revenue"] == Decimal("1.23")


async def test_a_request_of_only_bad_events_is_invalid_argument(
    server, channel, http, tenant, tables, embedded_backend
) -> None:
    error = await refused(
        ingest(
            channel,
            grpc_auth(tenant),
            [[event(actor="")], [event(timestamp="yesterday"), event(event_id="x")]],
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = error_details(error)
    assert info.reason == "INVALID_EVENTS"
    assert fields == ["events[0].actor", "events[1].timestamp", "events[2].eventId"]

    body = json_body([as_json(event(actor="x")), {"event": "a", "actor": "1", "timestamp": "soon"}])
    document = assert_problem(
        await post_events(http, rest_url(server), body, rest_auth(tenant)),
        400,
        "validation-error",
        "INVALID_EVENTS",
    )
    assert [v["field"] for v in document["violations"]] == [
        "events[0].actor",
        "events[1].timestamp",
    ]
    assert await stored(embedded_backend, tables, tenant) == {}


async def test_rest_takes_forgiving_json_and_ndjson_with_broken_lines(
    server, http, tenant, tables, embedded_backend
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    body = json_body(
        [
            {
                "eventId": ids[0],
                "event": "purchase",
                "actor": 5,
                "timestamp": "2026-11-03T10:00:00Z",
                "properties": {
                    "revenue": 12.5,
                    "trial": True,
                    "utm_source": "x",
                    "depth": 3,
                    "tags": ["a", "b"],
                    "gone": None,
                },
            },
            {"event_id": ids[1], "event": "page_view", "actor": "6"},
            42,
            {"eventId": ids[2], "event": "page_view", "actor": True},
        ]
    )
    status, _, answer, _ = await post_events(http, rest_url(server), body, rest_auth(tenant))
    assert status == 200, answer
    assert answer["accepted"] == 2
    assert [(r["index"], r["field"]) for r in answer["rejected"]] == [(2, ""), (3, "actor")]

    lines = [
        json.dumps({"eventId": ids[3], "event": "a", "actor": "7"}),
        '{"eventId": "broken", "event": ',
        json.dumps({"event": "b", "actor": "8", "colour": "red"}),
        json.dumps({"event": "c", "actor": "nine"}),
        json.dumps({"event": "d", "actor": "10", "timestamp": "2026-11-03T11:00:00Z"}),
    ]
    status, _, answer, _ = await post_events(
        http,
        rest_url(server),
        "\n".join(lines).encode(),
        rest_auth(tenant),
        content_type="application/x-ndjson",
    )
    assert status == 200, answer
    assert answer["accepted"] == 2
    assert [(r["index"], r["field"]) for r in answer["rejected"]] == [
        (1, ""),
        (2, "colour"),
        (3, "actor"),
    ]
    assert "line 2 is not valid JSON" in answer["rejected"][0]["reason"]

    rows = await stored(embedded_backend, tables, tenant)
    assert sorted(row["contact_id"] for row in rows.values()) == [5, 6, 7, 10]
    first = rows[ids[0]]
    assert (first["revenue"], first["trial"]) == (Decimal("12.50"), True)
    assert dict(first["pairs"]) == {"utm_source": "x", "depth": "3", "tags": '["a","b"]'}
    # No timestamp: the server's clock at ingestion.
    assert utc(rows[ids[1]]["timestamp"]) > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


# --- request-level errors --------------------------------------------------------------------


async def test_a_fresh_service_creates_its_event_tables(
    settings: Settings, events_catalog: Catalog, embedded_backend: EmbeddedBackend
) -> None:
    """No table made beforehand: the service creates the event models' tables at start."""
    fresh = catalog_in_database(events_catalog, unique_database("fresh_events"))
    running = await start_server(settings, catalog=fresh, backend=embedded_backend)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as opened:
            tenant = f"t_{uuid.uuid4().hex[:12]}"
            sent = event()
            answer = await ingest(opened, grpc_auth(tenant), [[sent]])
            assert answer.accepted == 1
            assert set(await stored(embedded_backend, fresh, tenant)) == {sent.event_id}
    finally:
        await running.stop(1.0)
        await embedded_backend.command(f"DROP DATABASE IF EXISTS `{fresh.database}`")


async def test_request_errors_on_grpc(server, channel, tenant, tables, embedded_backend) -> None:
    one = [[event()]]
    cases: list[tuple[Any, grpc.StatusCode, str]] = [
        (ingest(channel, grpc_auth(tenant), one, ["product.nope"]), grpc.StatusCode.NOT_FOUND,
         "NOT_FOUND"),
        (ingest(channel, grpc_auth(tenant), one, ["crm.deals"]), grpc.StatusCode.INVALID_ARGUMENT,
         "NOT_AN_EVENT_MODEL"),
        (ingest(channel, grpc_auth(tenant, ["product.events.read"]), one),
         grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
        (ingest(channel, grpc_auth(tenant, ["*.*.read"]), one),
         grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
        (ingest(channel, (), one), grpc.StatusCode.UNAUTHENTICATED, ""),
        (ingest(channel, grpc_auth(tenant), [[event() for _ in range(MAX_REQUEST_EVENTS + 1)]]),
         grpc.StatusCode.INVALID_ARGUMENT, "TOO_MANY_EVENTS"),
    ]  # fmt: skip
    for call, code, reason in cases:
        error = await refused(call)
        assert error.code() == code, (code, error.details())
        if reason:
            assert error_details(error)[0].reason == reason
    assert await stored(embedded_backend, tables, tenant) == {}

    # Every batch of a stream names one model. The batches before the fault went to the sink
    # as they arrived and are written (a retry of the whole stream is safe: ids count once).
    first = [event(), event()]
    error = await refused(
        ingest(channel, grpc_auth(tenant), [first, [event()]], [MODEL, "crm.deals"])
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(error)[0].reason == "MODEL_CHANGED"
    await wait_for(lambda: server.sink.buffered == 0, 5, "the sink to write what it holds")
    assert set(await stored(embedded_backend, tables, tenant)) == {e.event_id for e in first}

    # A message protobuf cannot read (a string that is not UTF-8, which no stub would send) is
    # the caller's error with details, not UNKNOWN with a Python class in it.
    raw = events_pb2.IngestRequest(model=MODEL, events=[event(name="XXXX")]).SerializeToString()
    send_raw = channel.stream_unary(
        "/analytics.v1.EventService/Ingest",
        request_serializer=lambda data: data,
        response_deserializer=events_pb2.IngestResponse.FromString,
    )

    async def broken() -> AsyncIterator[bytes]:
        yield raw.replace(b"XXXX", b"\xff\xfe\xfd\xfc")

    error = await refused(send_raw(broken(), metadata=grpc_auth(tenant)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error_details(error)[0].reason == "INVALID_MESSAGE"


async def test_request_errors_on_rest(server, http, tenant, tables, embedded_backend) -> None:
    url = rest_url(server)
    body = json_body([as_json(event())])
    assert_problem(
        await post_events(http, url, body, rest_auth(tenant), path="product/nope"),
        404, "not-found", "NOT_FOUND",
    )  # fmt: skip
    document = assert_problem(
        await post_events(http, url, body, rest_auth(tenant), path="crm/deals"),
        400, "validation-error", "NOT_AN_EVENT_MODEL",
    )  # fmt: skip
    assert document["field"] == "model"
    assert_problem(
        await post_events(http, url, body, rest_auth(tenant, ["product.events.read"])),
        403, "forbidden", "PERMISSION_DENIED",
    )  # fmt: skip
    assert_problem(await post_events(http, url, body, {}), 401, "unauthorized", "UNAUTHENTICATED")
    too_many = json_body([as_json(event()) for _ in range(MAX_REQUEST_EVENTS + 1)])
    assert_problem(
        await post_events(http, url, too_many, rest_auth(tenant)),
        400, "validation-error", "TOO_MANY_EVENTS",
    )  # fmt: skip
    huge = json_body([as_json(event(blob="x" * 4000)) for _ in range(BODY_LIMIT // 4000 + 1)])
    assert len(huge) > BODY_LIMIT
    assert_problem(
        await post_events(http, url, huge, rest_auth(tenant)),
        413, "request-entity-too-large", "REQUEST_ENTITY_TOO_LARGE",
    )  # fmt: skip
    document = assert_problem(
        await post_events(http, url, body, rest_auth(tenant), content_type="text/plain"),
        400, "validation-error", "INVALID_BODY",
    )  # fmt: skip
    assert document["field"] == "Content-Type"
    for broken in (b"[{", b'{"event": "a", "actor": "1"}', b"\xff\xfe"):
        document = assert_problem(
            await post_events(http, url, broken, rest_auth(tenant)),
            400, "validation-error", "INVALID_BODY",
        )  # fmt: skip
        assert document["field"] == "body", broken
    assert await stored(embedded_backend, tables, tenant) == {}


# --- back-pressure ---------------------------------------------------------------------------


async def test_a_full_buffer_answers_resource_exhausted_and_writes_nothing_of_it(
    tables, embedded_backend, http, tenant
) -> None:
    # The first request is held for the flush interval, so the buffer is full while it waits.
    tight = Settings(
        port=0,
        rest_port=0,
        event_buffer_events=10,
        event_flush_events=1_000,
        event_flush_milliseconds=1_500,
    )
    running = await start_server(tight, catalog=tables, backend=embedded_backend)
    url = rest_url(running)
    sink = running.sink
    assert sink is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            held = [event(actor=str(n)) for n in range(6)]
            started = time.monotonic()
            first = asyncio.create_task(ingest(channel, grpc_auth(tenant), [held]))
            await wait_for(lambda: sink.buffered == 6, 5, "the first request to be held")
            assert (await scrape(http, url))["analytics_event_sink_buffered_events", ""] == 6

            overflow = [event("refused", str(n)) for n in range(6)]
            error = await refused(ingest(channel, grpc_auth(tenant), [overflow]))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_details(error)[0].reason == "EVENT_BUFFER_FULL"
            assert 0 < retry_delay(error) <= 10

            reply = await post_events(
                http, url, json_body([as_json(e) for e in overflow]), rest_auth(tenant)
            )
            document = assert_problem(reply, 429, "too-many-requests", "EVENT_BUFFER_FULL")
            assert int(reply[3]["Retry-After"]) >= 1
            assert document["retryAfterSeconds"] > 0

            response = await first
            assert time.monotonic() - started >= 1.4  # it was held, not written at once
            assert (response.accepted, list(response.rejected)) == (6, [])
        metrics = await scrape(http, url)
        assert metrics["analytics_event_requests_refused_total", "reason=buffer_full"] == 2
        assert metrics["analytics_event_sink_capacity_events", ""] == 10
        assert metrics["analytics_event_sink_buffered_events", ""] == 0
    finally:
        await running.stop(1.0)
    # Only the first request's events; nothing of the refused one.
    assert set(await stored(embedded_backend, tables, tenant)) == {e.event_id for e in held}


# --- shutdown --------------------------------------------------------------------------------


async def test_stop_writes_what_the_sink_holds_and_answers_its_callers(
    tables, embedded_backend, http, tenant
) -> None:
    slow = Settings(port=0, rest_port=0, event_flush_milliseconds=30_000)
    running = await start_server(slow, catalog=tables, backend=embedded_backend)
    url = rest_url(running)
    sink = running.sink
    assert sink is not None
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            streamed = [[event(actor="1"), event(actor="2"), event(actor="3")], [event(actor="4")]]
            posted = [event(actor="5"), event(actor="6")]
            grpc_call = asyncio.create_task(ingest(channel, grpc_auth(tenant), streamed))
            rest_call = asyncio.create_task(
                post_events(http, url, json_body([as_json(e) for e in posted]), rest_auth(tenant))
            )
            await wait_for(lambda: sink.buffered == 6, 5, "both requests to be held")
            assert not grpc_call.done()
            assert not rest_call.done()

            began = time.monotonic()
            await running.stop(5.0)
            stopped = True
            response = await grpc_call
            status, _, answer, _ = await rest_call
            assert time.monotonic() - began < 5  # written on stop, not after the 30 s interval
            assert (response.accepted, list(response.rejected)) == (4, [])
            assert (status, answer) == (200, {"accepted": 2, "rejected": []})

            # The sink refuses from now on; the server no longer answers at all.
            events_model = next(m for m in tables.event_models() if m.qualified_name == MODEL)
            columns, _ = validate_events(
                events_model,
                tenant,
                [RawEvent(event="late", actor="9")],
                now=dt.datetime.now(dt.UTC),
                limits=EventLimits(),
            )
            with pytest.raises(AnalyticsError) as closing:
                sink.submit(columns)
            assert closing.value.kind is ErrorKind.UNAVAILABLE
            late = await refused(ingest(channel, grpc_auth(tenant), [[event("late")]]))
            assert late.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if not stopped:
            await running.stop(1.0)
    sent = [e for batch in streamed for e in batch] + posted
    assert set(await stored(embedded_backend, tables, tenant)) == {e.event_id for e in sent}


# --- engine failure --------------------------------------------------------------------------


async def test_an_engine_failure_acknowledges_nothing(
    tables, embedded_backend, engine_dir, http, tenant
) -> None:
    # A backend of its own on the session's engine, closed once the server runs: every insert
    # of the sink then fails as on an engine that went away.
    doomed = EmbeddedBackend(engine_dir, pool_size=1)
    running = await start_server(
        Settings(port=0, rest_port=0, event_flush_milliseconds=20), catalog=tables, backend=doomed
    )
    url = rest_url(running)
    try:
        await doomed.close()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            error = await refused(ingest(channel, grpc_auth(tenant), [[event(), event()]]))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_details(error)[0].reason == "ENGINE_UNAVAILABLE"
        assert_problem(
            await post_events(http, url, json_body([as_json(event())]), rest_auth(tenant)),
            503, "unavailable", "ENGINE_UNAVAILABLE",
        )  # fmt: skip
        metrics = await scrape(http, url)
        assert metrics["analytics_event_sink_flush_failures_total", ""] == 2
        assert ("analytics_events_written_total", f"model={MODEL}") not in metrics
        assert metrics["analytics_event_sink_buffered_events", ""] == 0
    finally:
        await running.stop(1.0)
    assert await stored(embedded_backend, tables, tenant) == {}


async def test_a_missing_table_acknowledges_nothing(
    catalog, embedded_backend, http, tenant
) -> None:
    # The service made the event table at start; it is dropped under it (by an operator).
    missing = dataclasses.replace(catalog, database=f"no_events_{uuid.uuid4().hex[:10]}")
    for statement in all_ddl(missing):
        await embedded_backend.command(statement)
    running = await start_server(
        Settings(port=0, rest_port=0, event_flush_milliseconds=20),
        catalog=missing,
        backend=embedded_backend,
    )
    await embedded_backend.command(f"DROP TABLE `{missing.database}`.`product_events` SYNC")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            error = await refused(ingest(channel, grpc_auth(tenant), [[event()]]))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        metrics = await scrape(http, rest_url(running))
        assert metrics["analytics_event_sink_flush_failures_total", ""] == 1
        assert ("analytics_events_written_total", f"model={MODEL}") not in metrics
    finally:
        await running.stop(1.0)


# --- metrics ---------------------------------------------------------------------------------


async def test_metrics_count_what_happened(server, channel, http, tenant, settings) -> None:
    url = rest_url(server)
    before = await scrape(http, url)
    response = await ingest(
        channel,
        grpc_auth(tenant),
        [[*(event() for _ in range(5)), event(actor=""), event(actor="x"), event(revenue="?")]],
    )
    assert response.accepted == 5
    # Unreadable items of a body are refused too; a free-form key never becomes a label.
    status, _, answer, _ = await post_events(
        http, url,
        json_body([as_json(event()), as_json(event()), as_json(event(trial="1")), 42,
                   {"event": "a", "actor": "1", "colour": "red"},
                   as_json(event(**{f"free_{uuid.uuid4().hex}": "v" * 9000}))]),
        rest_auth(tenant),
    )  # fmt: skip
    assert (status, answer["accepted"]) == (200, 2)
    after = await scrape(http, url)

    def delta(name: str, labels: str = "") -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert delta("analytics_events_written_total", f"model={MODEL}") == 7
    rejected = "analytics_events_rejected_total"
    assert delta(rejected, f"field=actor,model={MODEL}") == 2
    assert delta(rejected, f"field=properties.revenue,model={MODEL}") == 1
    assert delta(rejected, f"field=properties.trial,model={MODEL}") == 1
    assert delta(rejected, f"field=json,model={MODEL}") == 2
    assert delta(rejected, f"field=properties,model={MODEL}") == 1
    labels = {labels for name, labels in after if name == rejected}
    assert not [label for label in labels if "free_" in label or "colour" in label]
    # Two requests one after the other: two flushes of 5 and 2 events.
    assert delta("analytics_event_sink_flush_events_count") == 2
    assert delta("analytics_event_sink_flush_events_sum") == 7
    assert delta("analytics_event_sink_flush_events_bucket", "le=1.0") == 0
    assert delta("analytics_event_sink_flush_events_bucket", "le=10.0") == 2
    assert delta("analytics_event_sink_flush_seconds_count") == 2
    assert delta("analytics_event_sink_acknowledge_seconds_count") == 2
    assert delta("analytics_event_sink_flush_failures_total") == 0
    assert after["analytics_event_sink_buffered_events", ""] == 0
    assert after["analytics_event_sink_capacity_events", ""] == settings.event_buffer_events


# --- a real `analytics serve`: kill -9 and SIGTERM ---------------------------------------------

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
BATCH_EVENTS = 25
CLIENTS = 4


@dataclasses.dataclass
class Sent:
    """Every batch a client sent (one Ingest call each) and which were acknowledged."""

    batches: dict[str, list[events_pb2.Event]] = dataclasses.field(default_factory=dict)
    acknowledged: set[str] = dataclasses.field(default_factory=set)

    def batch(self, name: str, number: int) -> list[events_pb2.Event]:
        # One month: a batch is one part of one partition, written whole or not at all.
        events = [
            event("tick", str(number % 7 + 1), f"2026-11-20T08:{n:02d}:00Z", batch=name)
            for n in range(BATCH_EVENTS)
        ]
        self.batches[name] = events
        return events


async def served_counts(port: int, tenant: str) -> tuple[dict[str, int], int, int]:
    """Events per batch, count and count_distinct(event_id), through the Query RPC."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        grouped = await query(channel, tenant, {"groupBy": "properties.batch", "limit": 10_000})
        totals = await query(
            channel, tenant, {"metrics": [{"aggregate": "count"},
                                          {"aggregate": "count_distinct", "field": "event_id"}]}
        )  # fmt: skip
    count, distinct = totals["data"][0].values()
    return {row["properties.batch"]: row["count"] for row in grouped["data"]}, count, distinct


async def test_analytics_serve_loses_no_acknowledged_event_on_kill_or_sigterm(
    tmp_path: Path, http
) -> None:
    env = {**os.environ, "ANALYTICS_DATA_DIR": str(tmp_path), "ANALYTICS_REST_PORT": "0"}
    prepare = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PREPARE, str(tmp_path), str(DEFAULT_CATALOG), env=env,
        cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert await asyncio.wait_for(prepare.wait(), 120) == 0
    tenant = f"t_{uuid.uuid4().hex[:12]}"
    sent = Sent()

    # 1. Several clients ingest concurrently; SIGKILL while their calls are in flight.
    served = await start_serve(env)
    killed = asyncio.Event()
    failures: list[grpc.StatusCode] = []

    async def client(number: int, channel: grpc.aio.Channel) -> None:
        batch = 0
        while not killed.is_set():
            name = f"c{number}-{batch}"
            batch += 1
            try:
                await ingest(channel, grpc_auth(tenant), [sent.batch(name, batch)])
            except grpc.aio.AioRpcError as error:
                failures.append(error.code())
                return
            sent.acknowledged.add(name)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            clients = [asyncio.create_task(client(n, channel)) for n in range(CLIENTS)]
            await wait_for(lambda: len(sent.acknowledged) >= 12, 30, "a dozen acknowledged batches")
            served.process.send_signal(signal.SIGKILL)
            killed.set()
            await asyncio.gather(*clients)
        assert await served.process.wait() == -signal.SIGKILL
    finally:
        await served.stop()
    # Calls in flight when the process died were not answered OK; only they are unacknowledged.
    assert failures
    assert set(failures) == {grpc.StatusCode.UNAVAILABLE}
    unacknowledged = [name for name in sent.batches if name not in sent.acknowledged]
    assert len(unacknowledged) == len(failures)

    # 2. Restarted on the same data: every acknowledged event is there, and each batch is
    # whole or absent (one flush is one insert). The sink now holds events for 10 s, so the
    # re-sent batches are in flight when SIGTERM comes.
    env_slow = {**env, "ANALYTICS_EVENT_FLUSH_MILLISECONDS": "10000"}
    served = await start_serve(env_slow)
    try:
        per_batch, count, distinct = await served_counts(served.port, tenant)
        assert set(per_batch) >= sent.acknowledged
        assert set(per_batch.values()) == {BATCH_EVENTS}
        assert count == distinct == BATCH_EVENTS * len(per_batch)

        rest = served.serving["rest_address"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            for n in range(2):
                sent.batch(f"term-{n}", n)
            resends = [
                asyncio.create_task(ingest(channel, grpc_auth(tenant), [sent.batches[name]]))
                for name in [*unacknowledged, "term-0", "term-1"]
            ]
            in_flight = BATCH_EVENTS * len(resends)
            deadline = time.monotonic() + 10
            while (await scrape(http, rest))["analytics_event_sink_buffered_events", ""] != (
                in_flight
            ):
                assert time.monotonic() < deadline, "the re-sent batches were never held"
                await asyncio.sleep(0.05)
            assert not any(task.done() for task in resends)
            began = time.monotonic()
            served.process.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*resends)
            assert time.monotonic() - began < 8  # answered on SIGTERM, not after the 10 s
        assert [a.accepted for a in answers] == [BATCH_EVENTS] * len(resends)
        assert await asyncio.wait_for(served.process.wait(), 30) == 0
    finally:
        await served.stop()

    # 3. After the graceful stop: every batch ever sent is whole, and the ones written twice
    # (written before the kill but never acknowledged, then re-sent) count once.
    served = await start_serve(env)
    try:
        per_batch, count, distinct = await served_counts(served.port, tenant)
    finally:
        await served.stop()
    ids = {e.event_id for events in sent.batches.values() for e in events}
    assert per_batch == dict.fromkeys(sent.batches, BATCH_EVENTS)
    assert count == distinct == len(ids) == BATCH_EVENTS * len(sent.batches)
