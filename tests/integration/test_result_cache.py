"""The result cache on the embedded engine and a real Redis (README "Result cache").

The service runs on a wrapper of the session's engine that counts the statements it executes,
so "the engine ran it" is counted, not inferred from timings. Checks: a hit after a miss answers
the same rows with ``cacheHit`` (Query, Trend, Funnel, Retention, Lifecycle; gRPC and REST); an
event flush, an insert no sync report followed yet, and a CDC sync report each make the next
identical request a miss with the new data; tenants never share entries; identical concurrent
misses run once; the byte bound drops the least recently used entry; a never-synced table and a
volatile statement are not cached; Redis is shared by two service instances (a hit in one for
the other's miss, one run for concurrent misses in both); a Redis stopped mid-test leaves the
service answering uncached, saying so in its log and metrics, and the cache comes back with it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import grpc
import pytest
import structlog
from google.protobuf import json_format

from analytics.v1 import analytics_pb2, analytics_pb2_grpc, events_pb2, events_pb2_grpc
from local_stack import LocalStack, make_stack_directory
from service.api import convert
from service.api.server import RunningServer, start_server
from service.auth import Principal, mint_token
from service.backends.base import AnalyticsBackend, QueryResult
from service.backends.embedded import EmbeddedBackend
from service.cache import CacheMetrics, ResultCache
from service.cache.positions import PositionReader
from service.cache.stores import LocalStore, table_bytes
from service.catalog import Catalog
from service.query.compiler import CompiledQuery, QueryLimits
from service.query.request import QueryRequest
from service.query_service import QueryService
from service.schema import SYNC_STATE_TABLE, all_ddl, sync_state_table
from service.settings import Settings
from tests.api_rows import load_deals
from tests.conftest import catalog_in_database, unique_database
from tests.integration.test_compiler_on_engine import Row, insert_statement

pytestmark = pytest.mark.integration

ACME = "acme"
GLOBEX = "globex"
PERMISSIONS = ("crm.deals.read", "crm.contacts.read", "product.events.read", "product.events.write")
DAY = dt.timedelta(days=1)
START = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
#: (actor, event, day after START) of each tenant's events.
ACTIVITY = [
    (1, "signed_up", 0),
    (1, "active", 0),
    (1, "active", 1),
    (2, "signed_up", 0),
    (2, "active", 2),
    (3, "signed_up", 1),
    (3, "active", 1),
    (3, "active", 2),
]
EVENTS_SYNCED_AT = dt.datetime(2026, 4, 1, 12, tzinfo=dt.UTC)

DEALS_BY_STAGE = {"model": "crm.deals", "groupBy": "stage", "order": "stage.asc"}
EVENT_COUNT = {"model": "product.events", "filters": {"event": "eq.late"}}
TREND = {
    "model": "product.events",
    "series": [{"event": "active"}, {"event": "signed_up", "aggregate": "unique_actors"}],
    "dateFrom": "2026-03-01",
    "dateTo": "2026-03-07",
    "interval": "day",
}
FUNNEL = {
    "model": "product.events",
    "steps": [{"event": "signed_up"}, {"event": "active"}],
    "dateFrom": "2026-03-01",
    "dateTo": "2026-03-31",
}
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
    "dateTo": "2026-03-05",
}


class CountingBackend:
    """The engine, counting each statement ``execute`` runs; ``gate`` holds them while clear."""

    def __init__(self, inner: AnalyticsBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.enforces_row_policies = inner.enforces_row_policies
        self.executed: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def execute(
        self, query: CompiledQuery, *, timeout_seconds: float, query_id: str
    ) -> QueryResult:
        self.executed[query.sql] += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return await self.inner.execute(query, timeout_seconds=timeout_seconds, query_id=query_id)

    @property
    def runs(self) -> int:
        return sum(self.executed.values())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# --- fixtures -------------------------------------------------------------------------------------


def _event_rows(tenant: str, offset: int = 0) -> list[Row]:
    rows = []
    for number, (actor, name, day) in enumerate(ACTIVITY):
        values = {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{number + offset}")),
            "event": name,
            "contact_id": actor + offset,
            "timestamp": START + day * DAY,
            "platform": None,
            "country": None,
            "plan": None,
            "revenue": None,
        }
        rows.append(Row(tenant, values, 1, 0))
    return rows


async def report_sync(
    backend: AnalyticsBackend, catalog: Catalog, table: str, at: dt.datetime, source: str = "cdc"
) -> None:
    """A sync-state report, as the CDC worker or the event sink writes one."""
    row = {
        "table_name": table,
        "source": source,
        "last_sync_at": at,
        "updated_at": dt.datetime.now(dt.UTC),
        "state": "streaming",
    }
    await backend.insert_arrow(catalog.database, SYNC_STATE_TABLE, sync_state_table([row]))


@pytest.fixture(scope="module")
async def tables(catalog: Catalog, embedded_backend: EmbeddedBackend) -> AsyncIterator[Catalog]:
    mine = catalog_in_database(catalog, unique_database("result_cache"))
    for statement in all_ddl(mine):
        await embedded_backend.command(statement)
    await load_deals(embedded_backend, mine)
    events = mine.models[("product", "events")]
    for tenant in (ACME, GLOBEX):
        await embedded_backend.command(insert_statement(mine, events, _event_rows(tenant)))
    await report_sync(embedded_backend, mine, events.table, EVENTS_SYNCED_AT, source="events")
    yield mine
    await embedded_backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")


@pytest.fixture(scope="module")
def engine(embedded_backend: EmbeddedBackend) -> CountingBackend:
    return CountingBackend(embedded_backend)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(port=0, rest_port=0, query_timeout_seconds=30, event_flush_milliseconds=10)


@pytest.fixture(scope="module")
async def server(
    settings: Settings, tables: Catalog, engine: CountingBackend
) -> AsyncIterator[RunningServer]:
    running = await start_server(settings, catalog=tables, backend=engine)
    yield running
    await running.stop(1.0)


@pytest.fixture(scope="module")
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.aio.Channel) -> analytics_pb2_grpc.AnalyticsServiceStub:
    return analytics_pb2_grpc.AnalyticsServiceStub(channel)


def auth(settings: Settings, tenant: str = ACME) -> tuple[tuple[str, str]]:
    token = mint_token(settings, subject="tester", tenant=tenant, permissions=PERMISSIONS)
    return (("authorization", f"Bearer {token}"),)


async def query(
    stub: analytics_pb2_grpc.AnalyticsServiceStub,
    settings: Settings,
    body: dict[str, Any],
    tenant: str = ACME,
) -> dict[str, Any]:
    request = json_format.ParseDict(body, analytics_pb2.QueryRequest())
    return convert.response_json(await stub.Query(request, metadata=auth(settings, tenant)))


# --- hits and misses --------------------------------------------------------------------------


async def test_query_hit_after_miss_answers_the_same_rows(
    stub, settings, engine: CountingBackend
) -> None:
    runs = engine.runs
    first = await query(stub, settings, DEALS_BY_STAGE)
    second = await query(stub, settings, DEALS_BY_STAGE)
    assert engine.runs == runs + 1
    assert (
        first["data"]
        == second["data"]
        == [
            {"stage": "closed_lost", "count": 1},
            {"stage": "closed_won", "count": 4},
        ]
    )
    assert (first["meta"]["cacheHit"], second["meta"]["cacheHit"]) == (False, True)
    assert first["meta"]["lastSyncAt"] == second["meta"]["lastSyncAt"] == "2026-04-15T10:29:55Z"
    # The meta is the computed answer's, but for cacheHit.
    assert {k: v for k, v in first["meta"].items() if k != "cacheHit"} == {
        k: v for k, v in second["meta"].items() if k != "cacheHit"
    }
    assert first["meta"]["rowsScanned"] > 0


async def test_rest_meta_says_cache_hit(server: RunningServer, settings, engine) -> None:
    token = auth(settings)[0][1]
    body = {**DEALS_BY_STAGE, "model": "deals", "filters": {"stage": "eq.closed_won"}}
    url = f"http://127.0.0.1:{server.rest_port}/v1/data/crm/analytics"
    documents = []
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(url, json=body, headers={"Authorization": token}) as reply:
                assert reply.status == 200
                documents.append(await reply.json())
    assert [d["meta"]["cacheHit"] for d in documents] == [False, True]
    assert documents[0]["data"] == documents[1]["data"] == [{"stage": "closed_won", "count": 4}]


@pytest.mark.parametrize(
    ("rpc", "message", "body"),
    [
        ("Trend", analytics_pb2.TrendRequest, TREND),
        ("Funnel", analytics_pb2.FunnelRequest, FUNNEL),
        ("Retention", analytics_pb2.RetentionRequest, RETENTION),
        ("Lifecycle", analytics_pb2.LifecycleRequest, LIFECYCLE),
    ],
)
async def test_insights_hit_after_miss(stub, settings, engine, rpc, message, body) -> None:
    call = getattr(stub, rpc)
    runs = engine.runs
    first = await call(json_format.ParseDict(body, message()), metadata=auth(settings))
    middle = engine.runs
    second = await call(json_format.ParseDict(body, message()), metadata=auth(settings))
    assert middle > runs
    assert engine.runs == middle
    assert (first.meta.cache_hit, second.meta.cache_hit) == (False, True)
    assert first.meta.last_sync_at == second.meta.last_sync_at
    assert first.meta.last_sync_at.ToDatetime(dt.UTC) == EVENTS_SYNCED_AT
    first.ClearField("meta")
    second.ClearField("meta")
    assert first == second
    assert first.ByteSize() > 0


async def test_trend_with_several_series_runs_each_once(stub, settings, engine) -> None:
    # Cumulative unique actors: a query for the buckets, one per period for the distinct actors.
    body = {**TREND, "dateTo": "2026-03-06", "compare": "previous", "display": "cumulative"}
    runs = engine.runs
    request = json_format.ParseDict(body, analytics_pb2.TrendRequest())
    first = await stub.Trend(request, metadata=auth(settings))
    planned = engine.runs - runs
    assert planned == 3
    second = await stub.Trend(request, metadata=auth(settings))
    assert engine.runs - runs == planned
    assert second.meta.cache_hit
    assert list(first.lines) == list(second.lines)


# --- freshness: every change of the data changes the key ----------------------------------


async def test_event_flush_makes_the_next_request_a_miss(
    stub, channel, settings, engine, tables: Catalog
) -> None:
    before = await query(stub, settings, EVENT_COUNT)
    again = await query(stub, settings, EVENT_COUNT)
    assert again["meta"]["cacheHit"]
    events = [
        events_pb2.Event(
            event_id=str(uuid.uuid4()),
            event="late",
            actor="9",
            timestamp="2026-03-03T10:00:00Z",
        )
        for _ in range(3)
    ]

    async def batches() -> AsyncIterator[events_pb2.IngestRequest]:
        yield events_pb2.IngestRequest(model="product.events", events=events)

    ingest = events_pb2_grpc.EventServiceStub(channel).Ingest
    await ingest(batches(), metadata=auth(settings))
    # Acknowledged: written. The next identical request must see the events.
    after = await query(stub, settings, EVENT_COUNT)
    assert not after["meta"]["cacheHit"]
    assert after["data"] == [{"count": before["data"][0]["count"] + 3}]
    assert (await query(stub, settings, EVENT_COUNT))["meta"]["cacheHit"]


async def test_insert_before_any_sync_report_still_changes_the_key(
    stub, settings, embedded_backend: EmbeddedBackend, tables: Catalog
) -> None:
    """The sink reports lastSyncAt at most once a second; its flushes in between are new data.

    Written here without any report: lastSyncAt stays where it was, the answer still changes.
    """
    sync_at = (await query(stub, settings, EVENT_COUNT))["meta"]["lastSyncAt"]
    assert (await query(stub, settings, EVENT_COUNT))["meta"]["cacheHit"]
    count = (await query(stub, settings, EVENT_COUNT))["data"][0]["count"]
    events = tables.models[("product", "events")]
    late = _event_rows(ACME, offset=1000)[:2]
    for row in late:
        row.values["event"] = "late"
    await embedded_backend.command(insert_statement(tables, events, late))
    after = await query(stub, settings, EVENT_COUNT)
    assert not after["meta"]["cacheHit"]
    assert after["data"] == [{"count": count + 2}]
    assert after["meta"]["lastSyncAt"] == sync_at


async def test_cdc_sync_report_with_new_rows_is_a_miss_with_the_new_data(
    stub, settings, embedded_backend: EmbeddedBackend, tables: Catalog
) -> None:
    body = {"model": "crm.deals", "aggregate": "sum", "field": "amount", "groupBy": "stage"}
    first = await query(stub, settings, body)
    assert (await query(stub, settings, body))["meta"]["cacheHit"]
    # What the CDC worker does: write a new version of a row, then report how far it got.
    await embedded_backend.command(
        f"INSERT INTO `{tables.database}`.crm_deals (tenant_id, id, contact_id, owner_id, title, "
        "stage, amount, currency, probability, created_at, updated_at, _version, _is_deleted) "
        "VALUES ('acme', 3, 1, 1, 'deal 3', 'closed_lost', 50.00, 'EUR', 0.5, "
        "'2026-01-03 08:00:00', '2026-05-01 00:00:00', 9, 0)"
    )
    moved = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    await report_sync(embedded_backend, tables, "crm_deals", moved)
    after = await query(stub, settings, body)
    assert not after["meta"]["cacheHit"]
    assert after["meta"]["lastSyncAt"] == "2026-05-01T00:00:00Z"
    amounts = {row["stage"]: row["sum_amount"] for row in after["data"]}
    old = {row["stage"]: row["sum_amount"] for row in first["data"]}
    assert amounts["closed_won"] == pytest.approx(old["closed_won"] - 50)
    assert amounts["closed_lost"] == pytest.approx(old["closed_lost"] + 50)
    # A report alone (no new rows) moves lastSyncAt: the answer is the same, its meta is not.
    await report_sync(embedded_backend, tables, "crm_deals", moved + DAY)
    reported = await query(stub, settings, body)
    assert not reported["meta"]["cacheHit"]
    assert reported["data"] == after["data"]
    assert reported["meta"]["lastSyncAt"] == "2026-05-02T00:00:00Z"
    assert (await query(stub, settings, body))["meta"]["cacheHit"]


async def test_sync_reports_are_read_again_only_when_they_change(
    server: RunningServer, stub, settings, embedded_backend: EmbeddedBackend, tables: Catalog
) -> None:
    """Positions cost one parts listing a request; the reports come from memory until the
    sync-state table's own parts change (a report was written)."""
    assert server.cache is not None
    reader = server.cache.reader
    await query(stub, settings, DEALS_BY_STAGE)
    reads = reader.report_reads
    for _ in range(3):
        await query(stub, settings, DEALS_BY_STAGE)
    assert reader.report_reads == reads
    await report_sync(embedded_backend, tables, "crm_deals", dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    answer = await query(stub, settings, DEALS_BY_STAGE)
    assert reader.report_reads == reads + 1
    assert not answer["meta"]["cacheHit"]
    assert answer["meta"]["lastSyncAt"] == "2026-06-01T00:00:00Z"


async def test_hits_list_no_parts_until_a_write_ends(
    server: RunningServer, stub, settings, engine_dir: Path, tables: Catalog
) -> None:
    """On the embedded engine every write passes through this process's backends: while none
    ended, a hit reads nothing from the engine; a write through another backend on the same
    directory (as the CDC worker's or the event sink's) makes the next request list again."""
    assert server.cache is not None
    reader = server.cache.reader
    count = (await query(stub, settings, EVENT_COUNT))["data"][0]["count"]
    listings = reader.listings
    for _ in range(3):
        assert (await query(stub, settings, EVENT_COUNT))["meta"]["cacheHit"]
    assert reader.listings == listings
    other = EmbeddedBackend(engine_dir, pool_size=1)
    try:
        late = _event_rows(ACME, offset=2000)[:1]
        late[0].values["event"] = "late"
        await other.command(insert_statement(tables, tables.models[("product", "events")], late))
    finally:
        await other.close()
    after = await query(stub, settings, EVENT_COUNT)
    assert reader.listings == listings + 1
    assert not after["meta"]["cacheHit"]
    assert after["data"] == [{"count": count + 1}]


async def test_a_backend_with_other_writers_lists_the_parts_every_time(
    embedded_backend: EmbeddedBackend, tables: Catalog
) -> None:
    """A server has other clients: its positions are read on every request."""

    class ServerLike:
        """Reads through the engine, but is no sole writer (no write generation)."""

        name = "server-like"

        async def query_rows(
            self, sql: str, parameters: dict[str, str] | None = None
        ) -> list[dict[str, Any]]:
            return await embedded_backend.query_rows(sql, parameters)

    reader = PositionReader()
    backend = cast(AnalyticsBackend, ServerLike())
    first = await reader.read(backend, tables.database, ["crm_deals"])
    second = await reader.read(backend, tables.database, ["crm_deals"])
    assert reader.listings == 2
    assert first == second


async def test_tenants_never_share_entries(stub, settings, engine) -> None:
    body = {"model": "product.events", "groupBy": "event", "order": "event.asc"}
    runs = engine.runs
    acme = await query(stub, settings, body, ACME)
    globex = await query(stub, settings, body, GLOBEX)
    # The same statement shape, the tenant a parameter: two entries, two runs.
    assert engine.runs == runs + 2
    assert not globex["meta"]["cacheHit"]
    globex_again = await query(stub, settings, body, GLOBEX)
    acme_again = await query(stub, settings, body, ACME)
    assert engine.runs == runs + 2
    assert acme_again["meta"]["cacheHit"]
    assert globex_again["meta"]["cacheHit"]
    assert acme_again["data"] == acme["data"]
    assert globex_again["data"] == globex["data"]
    assert next(r for r in globex["data"] if r["event"] == "active")["count"] == 5
    assert acme["data"] != globex["data"]  # acme has late events of its own


async def test_concurrent_identical_misses_run_once(stub, settings, engine) -> None:
    body = {"model": "crm.deals", "aggregate": "max", "field": "amount", "groupBy": "currency"}
    before = dict(engine.executed)
    engine.started.clear()
    engine.gate = asyncio.Event()
    try:
        calls = [asyncio.create_task(query(stub, settings, body)) for _ in range(8)]
        await asyncio.wait_for(engine.started.wait(), 10)
        await asyncio.sleep(0.2)  # every call has arrived and waits for the one in flight
    finally:
        engine.gate.set()
        engine.gate = None
    answers = await asyncio.gather(*calls)
    new = {sql: n - before.get(sql, 0) for sql, n in engine.executed.items()}
    assert sorted(n for n in new.values() if n) == [1]
    assert len({str(a["data"]) for a in answers}) == 1
    assert sorted(a["meta"]["cacheHit"] for a in answers) == [False] + [True] * 7


async def test_never_synced_table_is_not_cached(stub, settings, engine) -> None:
    body = {"model": "crm.contacts"}
    runs = engine.runs
    first = await query(stub, settings, body)
    second = await query(stub, settings, body)
    assert engine.runs == runs + 2
    assert first["meta"]["lastSyncAt"] is None
    assert not first["meta"]["cacheHit"]
    assert not second["meta"]["cacheHit"]


async def test_cache_metrics_are_served(server: RunningServer) -> None:
    url = f"http://127.0.0.1:{server.rest_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        text = await reply.text()
    hits = _sample(text, 'analytics_result_cache_requests_total{outcome="hit"}')
    assert hits >= 1
    assert _sample(text, 'analytics_result_cache_requests_total{outcome="uncacheable"}') >= 2
    assert _sample(text, "analytics_result_cache_bytes") > 0


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics:\n{text}")


# --- the byte bound ----------------------------------------------------------------------------


def _queries(
    catalog: Catalog, cache: ResultCache | None, backend: AnalyticsBackend
) -> QueryService:
    return QueryService(
        catalog,
        backend,
        limits=QueryLimits(),
        stream_limits=QueryLimits(),
        timeout_seconds=30,
        cache=cache,
    )


async def test_byte_bound_drops_the_least_recently_used(
    tables: Catalog, embedded_backend: EmbeddedBackend
) -> None:
    principal = Principal("tester", ACME, frozenset(PERMISSIONS))
    requests = {
        stage: QueryRequest(model="crm.deals", filters={"stage": f"eq.{stage}"})
        for stage in ("closed_won", "closed_lost", "open")
    }
    probe = _queries(tables, None, embedded_backend)
    sizes = {}
    for name, request in requests.items():
        outcome = await probe.run(principal, request, remaining=None, rpc="Query")
        sizes[name] = table_bytes(outcome.table) + 64 + 512  # key and bookkeeping
    metrics = CacheMetrics()
    store = LocalStore(sizes["closed_won"] + sizes["closed_lost"] + 100, metrics)
    counting = CountingBackend(embedded_backend)
    queries = _queries(tables, ResultCache(store, metrics, 1 << 20), counting)

    async def hit(name: str) -> bool:
        outcome = await queries.run(principal, requests[name], remaining=None, rpc="Query")
        return bool(getattr(outcome.stats, "cache_hit", False))

    assert not await hit("closed_won")
    assert not await hit("closed_lost")
    assert await hit("closed_won")  # now the most recently used
    assert len(store) == 2
    assert not await hit("open")  # over the bound: closed_lost, least recently used, goes
    assert len(store) == 2
    assert store.bytes <= store.max_bytes
    assert await hit("closed_won")
    assert await hit("open")
    assert not await hit("closed_lost")
    assert counting.runs == 4


# --- Redis ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def redis_stack() -> AsyncIterator[LocalStack]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run scripts/install-stack")
    stack = LocalStack(make_stack_directory("cache-redis-"), ["redis"])
    await stack.astart()
    try:
        yield stack
    finally:
        await stack.astop()
        stack.remove()


@pytest.fixture(scope="module")
async def redis_servers(
    redis_stack: LocalStack, tables: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[tuple[CountingBackend, list[RunningServer]]]:
    """Two service instances, each with its own cache object, on one Redis and one engine."""
    engine = CountingBackend(embedded_backend)
    settings = Settings(
        port=0, rest_port=0, query_timeout_seconds=30, redis_url=redis_stack.redis.url
    )
    servers = [await start_server(settings, catalog=tables, backend=engine) for _ in range(2)]
    yield engine, servers
    for running in servers:
        await running.stop(1.0)


async def _over(server: RunningServer, settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        return await query(analytics_pb2_grpc.AnalyticsServiceStub(opened), settings, body)


async def test_redis_is_shared_by_two_service_instances(redis_servers, settings) -> None:
    engine, (one, two) = redis_servers
    body = {"model": "crm.deals", "aggregate": "min", "field": "amount", "groupBy": "stage"}
    first = await _over(one, settings, body)
    second = await _over(two, settings, body)
    assert engine.runs == 1
    assert (first["meta"]["cacheHit"], second["meta"]["cacheHit"]) == (False, True)
    assert first["data"] == second["data"]
    assert one.cache is not None
    assert one.cache is not two.cache


async def test_concurrent_misses_in_two_instances_run_once(redis_servers, settings) -> None:
    engine, servers = redis_servers
    body = {"model": "crm.deals", "aggregate": "avg", "field": "amount", "groupBy": "currency"}
    runs = engine.runs
    engine.started.clear()
    engine.gate = asyncio.Event()
    try:
        calls = [
            asyncio.create_task(_over(servers[number % 2], settings, body)) for number in range(6)
        ]
        await asyncio.wait_for(engine.started.wait(), 10)
        await asyncio.sleep(0.3)
    finally:
        engine.gate.set()
        engine.gate = None
    answers = await asyncio.gather(*calls)
    assert engine.runs == runs + 1
    assert len({str(a["data"]) for a in answers}) == 1
    assert sorted(a["meta"]["cacheHit"] for a in answers) == [False] + [True] * 5


async def test_redis_down_answers_uncached_and_says_so(
    redis_servers, redis_stack: LocalStack, settings
) -> None:
    engine, (one, _) = redis_servers
    body = {"model": "crm.deals", "aggregate": "sum", "field": "probability"}
    expected = (await _over(one, settings, body))["data"]
    assert (await _over(one, settings, body))["meta"]["cacheHit"]
    await asyncio.to_thread(redis_stack.redis.stop)
    try:
        runs = engine.runs
        with structlog.testing.capture_logs() as logs:
            answers = [await _over(one, settings, body) for _ in range(3)]
        assert [a["data"] for a in answers] == [expected] * 3
        assert not any(a["meta"]["cacheHit"] for a in answers)
        assert engine.runs == runs + 3
        warnings = [e for e in logs if e["event"].startswith("result cache store unavailable")]
        assert len(warnings) == 1, logs  # once per outage, not once per query
        assert warnings[0]["log_level"] == "warning"
        text = await _metrics(one)
        assert _sample(text, 'analytics_result_cache_store_up{store="redis"}') == 0
        assert _sample(text, 'analytics_result_cache_requests_total{outcome="unavailable"}') >= 3
        errors = 'analytics_result_cache_store_errors_total{operation="get",store="redis"}'
        assert _sample(text, errors) >= 1
    finally:
        await asyncio.to_thread(redis_stack.redis.start)
    # Back: after the pause the store is tried again, answers are stored and found.
    await asyncio.sleep(1.1)
    with structlog.testing.capture_logs() as logs:
        assert not (await _over(one, settings, body))["meta"]["cacheHit"]
    assert any(e["event"] == "result cache store available again" for e in logs)
    again = await _over(one, settings, body)
    assert again["meta"]["cacheHit"]
    assert again["data"] == expected
    assert _sample(await _metrics(one), 'analytics_result_cache_store_up{store="redis"}') == 1


async def _metrics(server: RunningServer) -> str:
    url = f"http://127.0.0.1:{server.rest_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        return await reply.text()
