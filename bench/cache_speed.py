"""Result cache: a dashboard of 12 queries through gRPC, warm cache against the engine.

The data: the trend benchmark's events (``bench.trend_speed.load_events``: N events of the
benchmark tenant, a tenth of that for each of three others, the older months merged), and a
sync-state report for the table, as the event sink writes one. ``analytics serve`` runs in its
own process on a copy of the data directory (every partition merged to one part first, so that
no background merge changes the parts while hits are timed), four times on the same copy:

* **uncached** (``ANALYTICS_RESULT_CACHE=false``): the engine answers every query;
* **in-process cache** (the default): one refresh fills the cache, then refreshes are timed
  (every answer a hit);
* **Redis** (``ANALYTICS_REDIS_URL``, a redis-server started here): the same;
* **misses**: in-process again, each refresh preceded by one event of another tenant ingested
  through the same process (every answer a miss: the table's parts changed, so every key did).

A refresh runs the 12 queries one after the other (counts, group-bys, daily, weekly and monthly
trends, unique actors, one funnel), each timed from the client's call to its decoded answer.
Every answer is checked equal to the uncached one (meta aside) and its ``cacheHit`` to be what
the side expects. The listing of the table's position (its active parts; its sync report comes
from memory) is timed on its own on the benchmark's engine: what every request pays on a
server, and on the embedded engine the first request after a write (hits read nothing from the
engine there while no write ends: ``service.cache.positions``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.message import Message

from analytics.v1 import analytics_pb2, events_pb2, events_pb2_grpc
from bench import trend_speed
from bench.report import Figure, median, milliseconds, percentile
from bench.served_process import ServedProcess, copy_data
from bench.shipped_catalog import shipped_catalog_text
from local_stack import LocalStack, make_stack_directory
from service.auth import mint_token
from service.backends.base import AnalyticsBackend
from service.backends.embedded import EmbeddedBackend
from service.cache.positions import PositionReader
from service.catalog import load_catalog
from service.schema import SYNC_STATE_TABLE, sync_state_table
from service.settings import Settings

DATABASE = "bench_cache"
TENANT = trend_speed.TENANT
WRITER = trend_speed.OTHER_TENANTS[0]
HIT_TARGET_MS = 5.0
REDIS_TARGET_MS = 10.0
MODEL = "product.events"
TABLE = "product_events"
#: The dashboard: (RPC, request message type, request as proto3 JSON). Every range is fixed
#: (a range ending ``now`` would name a new instant, and so a new key, at every refresh).
DASHBOARD: tuple[tuple[str, type[Message], dict[str, Any]], ...] = (
    ("Query", analytics_pb2.QueryRequest, {"model": MODEL}),
    ("Query", analytics_pb2.QueryRequest, {"model": MODEL, "groupBy": "event"}),
    (
        "Query",
        analytics_pb2.QueryRequest,
        {"model": MODEL, "groupBy": "country", "order": "count.desc", "limit": 10},
    ),
    (
        "Query",
        analytics_pb2.QueryRequest,
        {"model": MODEL, "aggregate": "count_distinct", "field": "contact_id"},
    ),
    (
        "Query",
        analytics_pb2.QueryRequest,
        {"model": MODEL, "groupBy": "platform", "filters": {"event": "eq.upgraded"}},
    ),
    (
        "Query",
        analytics_pb2.QueryRequest,
        {
            "model": MODEL,
            "groupBy": "timestamp",
            "groupByInterval": "month",
            "filters": {"event": "eq.purchase"},
        },
    ),
    (
        "Trend",
        analytics_pb2.TrendRequest,
        {
            "model": MODEL,
            "series": [{"event": "page_viewed"}],
            "dateFrom": "2026-11-01",
            "dateTo": "2026-11-30",
        },
    ),
    (
        "Trend",
        analytics_pb2.TrendRequest,
        {
            "model": MODEL,
            "series": [{"aggregate": "unique_actors"}],
            "dateFrom": "2026-11-01",
            "dateTo": "2026-11-30",
        },
    ),
    (
        "Trend",
        analytics_pb2.TrendRequest,
        {
            "model": MODEL,
            "series": [{"event": "signed_up"}],
            "dateFrom": "2026-06-01",
            "dateTo": "2026-11-30",
            "interval": "month",
        },
    ),
    (
        "Trend",
        analytics_pb2.TrendRequest,
        {
            "model": MODEL,
            "series": [{"event": "feature_used"}],
            "dateFrom": "2026-09-07",
            "dateTo": "2026-11-29",
            "interval": "week",
            "breakdown": "platform",
        },
    ),
    (
        "Trend",
        analytics_pb2.TrendRequest,
        {
            "model": MODEL,
            "series": [{"event": "activated"}, {"event": "signed_up"}],
            "formula": "A / B * 100",
            "dateFrom": "2026-06-01",
            "dateTo": "2026-11-30",
            "interval": "month",
        },
    ),
    (
        "Funnel",
        analytics_pb2.FunnelRequest,
        {
            "model": MODEL,
            "steps": [{"event": "signed_up"}, {"event": "activated"}, {"event": "upgraded"}],
            "dateFrom": "2026-10-01",
            "dateTo": "2026-10-31",
        },
    ),
)


def catalog_text() -> str:
    """The shipped catalog in this benchmark's database."""
    return shipped_catalog_text(DATABASE)


def _metadata(tenant: str, *permissions: str) -> tuple[tuple[str, str]]:
    token = mint_token(Settings(), subject="bench", tenant=tenant, permissions=list(permissions))
    return (("authorization", f"Bearer {token}"),)


READ = _metadata(TENANT, "product.events.read")
WRITE = _metadata(WRITER, "product.events.write")


async def _refresh(served: ServedProcess) -> list[tuple[float, Message]]:
    """One dashboard refresh: each query's latency and answer."""
    answers = []
    for rpc, message, body in DASHBOARD:
        request = json_format.ParseDict(body, message())
        began = time.perf_counter()
        answer = await getattr(served.stub, rpc)(request, metadata=READ, timeout=120)
        answers.append((time.perf_counter() - began, answer))
    return answers


def _checked(
    answers: Sequence[tuple[float, Message]], truth: Sequence[Message], hit: bool | None, side: str
) -> list[float]:
    """The latencies, once every answer equals the uncached one and says the expected hit."""
    for number, ((_, answer), expected) in enumerate(zip(answers, truth, strict=True)):
        meta = answer.meta  # type: ignore[attr-defined]
        if hit is not None and meta.cache_hit != hit:
            raise RuntimeError(f"{side}: query {number} cacheHit {meta.cache_hit}, not {hit}")
        if _without_meta(answer) != _without_meta(expected):
            raise RuntimeError(f"{side}: query {number} answered differently from the engine")
    return [seconds for seconds, _ in answers]


def _without_meta(answer: Message) -> Message:
    copy = type(answer)()
    copy.CopyFrom(answer)
    copy.ClearField("meta")
    return copy


async def _ingest_one(served: ServedProcess) -> None:
    """One event of another tenant, acknowledged (written): the table's parts change."""
    event = events_pb2.Event(
        event_id=str(uuid.uuid4()),
        event="page_viewed",
        actor="7",
        timestamp="2026-11-15T12:00:00Z",
    )

    async def batches() -> Any:
        yield events_pb2.IngestRequest(model=MODEL, events=[event])

    await events_pb2_grpc.EventServiceStub(served.channel).Ingest(batches(), metadata=WRITE)


class _ListingEveryTime:
    """The engine as a server's backend is seen: with other writers, so listed every time."""

    name = "listing"

    def __init__(self, backend: EmbeddedBackend) -> None:
        self._backend = backend

    async def query_rows(
        self, sql: str, parameters: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return await self._backend.query_rows(sql, parameters)


async def _positions_cost(backend: EmbeddedBackend, rounds: int) -> list[float]:
    samples = []
    reader = PositionReader()
    listing = cast(AnalyticsBackend, _ListingEveryTime(backend))
    for _ in range(rounds):
        began = time.perf_counter()
        await reader.read(listing, DATABASE, [TABLE])
        samples.append(time.perf_counter() - began)
    if reader.listings != rounds:
        raise AssertionError(f"{reader.listings} listings in {rounds} reads")
    return samples


async def measure(
    backend: EmbeddedBackend, work: Path, *, events_count: int, refreshes: int, judge: bool
) -> list[Figure]:
    """Load, serve three ways, time the refreshes; see the module docstring."""
    catalog_path = work / "cache_catalog.toml"
    catalog_path.write_text(catalog_text(), encoding="utf-8")
    catalog = load_catalog(catalog_path)
    started = time.perf_counter()
    await trend_speed.load_events(backend, catalog, events_count)
    await _merged(backend)
    report = {
        "table_name": TABLE,
        "source": "events",
        "last_sync_at": dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
        "updated_at": dt.datetime.now(dt.UTC),
        "state": "streaming",
    }
    await backend.insert_arrow(DATABASE, SYNC_STATE_TABLE, sync_state_table([report]))
    loaded = time.perf_counter() - started
    positions = await _positions_cost(backend, max(200, refreshes * 12))
    served_dir = work / "cache_served"
    await asyncio.to_thread(copy_data, work / "raw", served_dir)
    redis: LocalStack | None = None
    try:
        uncached, truth = await _uncached(served_dir, catalog_path, work, refreshes)
        cached = {"ANALYTICS_RESULT_CACHE": "true"}
        hits = await _warm(served_dir, catalog_path, work, refreshes, truth, "memory", cached)
        redis_hits: list[float] = []
        if shutil.which("redis-server") is not None:
            redis = LocalStack(make_stack_directory("bench-cache-"), ["redis"])
            await redis.astart()
            env = {**cached, "ANALYTICS_REDIS_URL": redis.redis.url}
            redis_hits = await _warm(served_dir, catalog_path, work, refreshes, truth, "redis", env)
        misses = await _misses(served_dir, catalog_path, work, refreshes, truth)
    finally:
        if redis is not None:
            await redis.astop()
            redis.remove()
        await asyncio.to_thread(shutil.rmtree, served_dir, True)
        await backend.command(f"DROP DATABASE `{DATABASE}` SYNC")
    label = trend_speed._label(events_count)
    runs = f"{refreshes} refreshes of {len(DASHBOARD)} queries"
    note = f"{runs}, answers equal to the uncached ones; loaded in {loaded:.0f} s"
    figures = [
        Figure(
            metric=f"Dashboard refresh, warm in-process cache, per query, {label}",
            a=_latencies(hits) + " (hits)",
            b=_latencies(uncached) + " (uncached)",
            ratio=median(hits) / median(uncached),
            target=f"p95 < {HIT_TARGET_MS:g} ms",
            passed=percentile(hits, 0.95) * 1000 < HIT_TARGET_MS if judge else None,
            note=note,
        ),
        Figure(
            metric=f"Dashboard refresh after new data (every query a miss), {label}",
            a=_latencies(misses) + " (misses)",
            b=_latencies(uncached) + " (uncached)",
            ratio=median(misses) / median(uncached),
            target="informative",
            passed=None,
            note=f"{runs}, one event of another tenant ingested before each",
        ),
        Figure(
            metric="Positions listing (on a server every request; embedded, after a write)",
            a=_latencies(positions),
            b=f"p50 {milliseconds(median(uncached))} (uncached query)",
            ratio=median(positions) / median(uncached),
            target="informative",
            passed=None,
            note=f"{len(positions)} reads, one table",
        ),
    ]
    if redis_hits:
        figures.insert(
            1,
            Figure(
                metric=f"Dashboard refresh, warm Redis cache, per query, {label}",
                a=_latencies(redis_hits) + " (hits)",
                b=_latencies(uncached) + " (uncached)",
                ratio=median(redis_hits) / median(uncached),
                target=f"p95 < {REDIS_TARGET_MS:g} ms",
                passed=percentile(redis_hits, 0.95) * 1000 < REDIS_TARGET_MS if judge else None,
                note=f"{runs}, redis-server on loopback",
            ),
        )
    return figures


async def _uncached(
    served_dir: Path, catalog_path: Path, work: Path, refreshes: int
) -> tuple[list[float], list[Message]]:
    """Refreshes with the cache off, after one to warm the engine; its answers are the truth."""
    log = work / "serve_cache_uncached.log"
    env = {"ANALYTICS_RESULT_CACHE": "false"}
    served = await ServedProcess.start(served_dir, catalog_path, log, env)
    try:
        answers = [answer for _, answer in await _refresh(served)]
        samples: list[float] = []
        for _ in range(refreshes):
            samples += _checked(await _refresh(served), answers, False, "uncached")
        return samples, answers
    finally:
        await served.stop()


async def _warm(  # noqa: PLR0917 (private, two call sites)
    served_dir: Path,
    catalog_path: Path,
    work: Path,
    refreshes: int,
    truth: Sequence[Message],
    name: str,
    env: dict[str, str],
) -> list[float]:
    """Refreshes of a warm cache (one refresh fills it first): every answer a hit."""
    log = work / f"serve_cache_{name}.log"
    served = await ServedProcess.start(served_dir, catalog_path, log, env)
    try:
        _checked(await _refresh(served), truth, None, f"{name} fill")
        hits: list[float] = []
        for _ in range(refreshes):
            hits += _checked(await _refresh(served), truth, True, f"{name} hits")
        return hits
    finally:
        await served.stop()


async def _misses(
    served_dir: Path, catalog_path: Path, work: Path, refreshes: int, truth: Sequence[Message]
) -> list[float]:
    """Refreshes each after an ingested event: every answer a miss."""
    log = work / "serve_cache_misses.log"
    served = await ServedProcess.start(
        served_dir, catalog_path, log, {"ANALYTICS_RESULT_CACHE": "true"}
    )
    try:
        _checked(await _refresh(served), truth, None, "misses fill")
        misses: list[float] = []
        for _ in range(refreshes):
            await _ingest_one(served)
            misses += _checked(await _refresh(served), truth, False, "misses")
        return misses
    finally:
        await served.stop()


async def _merged(backend: EmbeddedBackend) -> None:
    """Every partition as one part, and no merge running: the parts stay as they are."""
    table = f"`{DATABASE}`.`{TABLE}`"
    await backend.command(f"SYSTEM START MERGES {table}")
    partitions = await backend.query_rows(
        "SELECT partition_id AS id FROM system.parts WHERE database = {db:String} "
        "AND table = {t:String} AND active GROUP BY partition_id HAVING count() > 1",
        {"db": DATABASE, "t": TABLE},
    )
    for row in partitions:
        await backend.command(f"OPTIMIZE TABLE {table} PARTITION ID '{row['id']}' FINAL")
    await backend.command(f"SYSTEM STOP MERGES {table}")


def _latencies(samples: Sequence[float]) -> str:
    return f"p50 {milliseconds(median(samples))}, p95 {milliseconds(percentile(samples, 0.95))}"
