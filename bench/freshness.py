"""Freshness: time from a PostgreSQL commit to the change being visible in ``Query``.

The real stack: PostgreSQL, Kafka and Kafka Connect with the Debezium connector of
``deploy/debezium/connector.json``; the CDC worker and the gRPC server run in this process on the
embedded engine (as ``analytics serve`` with Kafka configured runs them). A writer keeps a steady
load of inserts and updates (1 500 rows/s in transactions of 150, every 100 ms) on one tenant while
a prober, on its own tenant, commits one row at a time, takes the time the commit returned, and
polls ``Query`` every 20 ms until the new count is visible. p50 and p99 over the probes.

Where the time goes: a second, read-only consumer of the deals topic notes for every probe event
when Debezium read it from the WAL (the envelope's ``ts_ms``), when it was produced (the Kafka
record's timestamp) and when a consumer received it; those points, measured from the commit
(wall clock, all on this machine), are reported as p50/p99 rows beside the total.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import time
import uuid
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
from aiokafka import AIOKafkaConsumer
from google.protobuf import json_format

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from bench.report import Figure, median, percentile
from cdc_worker.runner import run_worker
from cdc_worker.source_schema import source_schema_ddl
from local_stack import LocalStack, make_stack_directory
from service.api import convert
from service.api.server import start_server
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import load_catalog
from service.cli import freeze_startup_heap
from service.schema import all_ddl
from service.settings import DEFAULT_CATALOG, Settings

TARGET_P99_SECONDS = 1.0
LOOP_TICK_SECONDS = 0.01
STALL_SECONDS = 0.1
WRITE_INTERVAL_SECONDS = 0.1
POLL_SECONDS = 0.02
# deals.id alone is the source's primary key: the probes take ids far above the load's.
PROBE_IDS = 1_000_000_000
INSERTS_PER_WRITE = 100
UPDATES_PER_WRITE = 50
_INSERT = (
    "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, currency, "
    "probability, created_at, updated_at) "
    "SELECT $1, g, g % 1000, g % 17, 'deal ' || g, 'lead', 100.25, 'EUR', 0.5, now(), now() "
    "FROM generate_series($2::bigint, $3::bigint) AS g"
)
_UPDATE = (
    "UPDATE deals SET amount = amount + 1, stage = 'qualified', updated_at = now() "
    "WHERE tenant_id = $1 AND id BETWEEN $2 AND $3"
)
PROBE_INSERT = (
    "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, currency, "
    "probability, created_at, updated_at) VALUES ($1, $2, 1, 1, 'probe', 'won', $3, 'EUR', 1.0, "
    "now(), now())"
)


@dataclasses.dataclass
class ProbeStages:
    """Per probe id, wall-clock seconds: commit returned, read by Debezium, in Kafka, received."""

    committed: dict[int, float] = dataclasses.field(default_factory=dict)
    captured: dict[int, float] = dataclasses.field(default_factory=dict)
    produced: dict[int, float] = dataclasses.field(default_factory=dict)
    received: dict[int, float] = dataclasses.field(default_factory=dict)
    visible: dict[int, float] = dataclasses.field(default_factory=dict)


async def watch_topic(bootstrap: str, topic: str, stages: ProbeStages, stop: asyncio.Event) -> None:
    """Note when each probe event reached Debezium, Kafka and a consumer (no group, no commits)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=20
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for messages in batches.values():
                for message in messages:
                    if message.key is None or message.value is None:
                        continue
                    probe = int(json.loads(message.key)["id"]) - PROBE_IDS
                    if probe <= 0:
                        continue
                    stages.captured[probe] = json.loads(message.value)["ts_ms"] / 1000
                    stages.produced[probe] = message.timestamp / 1000
                    stages.received[probe] = now
    finally:
        await consumer.stop()


def stage_figures(stages: ProbeStages, label: str = "Freshness") -> list[Figure]:
    """p50/p99 of each point of a probe's way, from its commit; only probes seen at every point.

    ``label`` starts each row's metric (the part and backend the probes belong to).
    """
    probes = [
        p
        for p in stages.visible
        if p in stages.captured and p in stages.committed and p in stages.received
    ]
    if not probes:
        return []
    points = (
        ("read from the WAL by Debezium (envelope ts_ms)", stages.captured),
        ("produced to Kafka (record timestamp)", stages.produced),
        ("received by a Kafka consumer", stages.received),
        ("visible in Query", stages.visible),
    )
    figures = []
    for point, moments in points:
        delays = [moments[p] - stages.committed[p] for p in probes]
        figures.append(
            Figure(
                metric=f"{label}: commit -> {point}",
                a=p50_p99(delays),
                b="",
                ratio=None,
                target="",
                passed=None,
                note=f"{len(probes)} probes",
            )
        )
    return figures


def p50_p99(delays: list[float]) -> str:
    """The p50 and p99 of delays (seconds) as the table shows them."""
    return f"p50 {median(delays) * 1000:.0f} ms, p99 {percentile(delays, 0.99) * 1000:.0f} ms"


@dataclasses.dataclass
class _Stalls:
    """What held up this process's event loop (the worker, server, prober and watcher share it)."""

    loop_gaps: list[float] = dataclasses.field(default_factory=list)
    gc_pauses: list[float] = dataclasses.field(default_factory=list)
    _gc_started: float = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """``gc.callbacks`` hook: the length of every collection of the oldest generation."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    def figures(self) -> list[Figure]:
        """The longest loop stalls and full collections, beside the freshness rows."""
        gaps = sorted(self.loop_gaps, reverse=True)
        longest = ", ".join(f"{gap * 1000:.0f}" for gap in gaps[:5])
        over = sum(1 for gap in gaps if gap > STALL_SECONDS)
        pauses = max(self.gc_pauses, default=0.0) * 1000
        return [
            Figure(
                metric="Freshness: event-loop stalls of the benchmark process",
                a=f"longest {longest} ms" if gaps else "no samples",
                b=f"{over} over {STALL_SECONDS * 1000:.0f} ms",
                ratio=None,
                target="",
                passed=None,
                note=f"full collections: {len(self.gc_pauses)}, longest {pauses:.0f} ms",
            )
        ]


async def _watch_loop(stalls: _Stalls, until: float) -> None:
    """Sleep in short steps and note how late each wake-up is (a stall of the event loop)."""
    while time.monotonic() < until:
        asked = time.perf_counter()
        await asyncio.sleep(LOOP_TICK_SECONDS)
        stalls.loop_gaps.append(time.perf_counter() - asked - LOOP_TICK_SECONDS)


@dataclasses.dataclass
class _Load:
    rows: int = 0
    seconds: float = 0.0


async def _writer(pool: Any, until: float, load: _Load) -> None:
    """Inserts and updates on tenant ``load`` every 100 ms until ``until``."""
    started = time.monotonic()
    next_id = 1
    tick = started
    while time.monotonic() < until:
        first, last = next_id, next_id + INSERTS_PER_WRITE - 1
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute(_INSERT, "load", first, last)
            if first > UPDATES_PER_WRITE:
                low = max(1, first - 10 * INSERTS_PER_WRITE)
                await connection.execute(_UPDATE, "load", low, low + UPDATES_PER_WRITE - 1)
                load.rows += UPDATES_PER_WRITE
        load.rows += INSERTS_PER_WRITE
        next_id = last + 1
        tick += WRITE_INTERVAL_SECONDS
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
    load.seconds = time.monotonic() - started


async def _visible_count(stub: Any, metadata: Any, request: Any) -> int:
    response = await stub.Query(request, metadata=metadata)
    data = convert.response_json(response)["data"]
    return int(data[0]["count"]) if data else 0


async def wait_visible(stub: Any, metadata: Any, request: Any, count: int, within: float) -> float:
    """Poll until Query shows ``count`` rows; the moment it did (monotonic clock)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await _visible_count(stub, metadata, request) >= count:
            return time.monotonic()
        # Every poll is a whole Query in this process, beside the worker: polling faster than
        # this took CPU from the pipeline it measures.
        await asyncio.sleep(POLL_SECONDS)
    raise TimeoutError(f"{count} probe rows not visible within {within:.0f} s")


async def probe_until(
    until: float, pool: Any, stub: Any, metadata: Any, request: Any, *, stages: ProbeStages
) -> list[float]:
    """Commit probe rows one at a time until ``until``; each one's commit -> visible delay."""
    latencies: list[float] = []
    probe = 1
    while time.monotonic() < until:
        probe += 1
        await pool.execute(PROBE_INSERT, "probe", PROBE_IDS + probe, Decimal("1.00"))
        committed = time.monotonic()
        stages.committed[probe] = time.time()
        visible = await wait_visible(stub, metadata, request, probe, within=30)
        stages.visible[probe] = stages.committed[probe] + (visible - committed)
        latencies.append(visible - committed)
        await asyncio.sleep(0.05)
    return latencies


async def _under_load(
    seconds: float,
    pool: Any,
    stub: Any,
    metadata: Any,
    request: Any,
    *,
    stages: ProbeStages,
    stalls: _Stalls,
) -> tuple[list[float], _Load]:
    """The write load and the probes for ``seconds``, the event loop and collector watched."""
    load = _Load()
    until = time.monotonic() + seconds
    gc.callbacks.append(stalls.on_gc)
    loop_watch = asyncio.create_task(_watch_loop(stalls, until))
    writer = asyncio.create_task(_writer(pool, until, load))
    try:
        latencies = await probe_until(until, pool, stub, metadata, request, stages=stages)
        await writer
    finally:
        gc.callbacks.remove(stalls.on_gc)
        loop_watch.cancel()
    return latencies, load


async def measure(backend: EmbeddedBackend, seconds: float) -> list[Figure]:
    """Run the stack, the load and the probes for ``seconds``; p50 and p99 freshness."""
    catalog = dataclasses.replace(
        load_catalog(DEFAULT_CATALOG), database=f"bench_fresh_{uuid.uuid4().hex[:8]}"
    )
    stack = LocalStack(make_stack_directory("bench-fresh-"), ["postgres", "kafka", "connect"])
    await stack.astart()
    stop = asyncio.Event()
    stages = ProbeStages()
    stalls = _Stalls()
    watcher: asyncio.Task[None] | None = None
    model = catalog.get("crm", "deals")
    if model is None:
        raise RuntimeError("the shipped catalog has no crm.deals")
    model_source = model.source
    try:
        pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=2, max_size=4)
        for statement in source_schema_ddl(catalog):
            await pool.execute(statement)
        for statement in all_ddl(catalog):
            await backend.command(statement)
        await asyncio.to_thread(stack.register_connector)
        settings = Settings(
            port=0,
            kafka_bootstrap_servers=stack.kafka.bootstrap_servers,
            kafka_group_id=f"bench-{uuid.uuid4().hex[:8]}",
        )
        # As `analytics serve` does before its loops: otherwise every full collection walks
        # what the benchmark process holds from earlier benchmarks (measured: 120 ms stalls).
        freeze_startup_heap()
        worker = asyncio.create_task(run_worker(settings, catalog, backend, stop))
        server = await start_server(settings, catalog=catalog, backend=backend)
        token = mint_token(settings, subject="bench", tenant="probe", permissions=["crm.*.read"])
        metadata = (("authorization", f"Bearer {token}"),)
        request = json_format.ParseDict({"model": "deals"}, analytics_pb2.QueryRequest())
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
                # The first change waits for the snapshot, topic creation and topic discovery.
                await pool.execute(PROBE_INSERT, "probe", PROBE_IDS + 1, Decimal("1.00"))
                await wait_visible(stub, metadata, request, 1, within=120)
                watcher = asyncio.create_task(
                    watch_topic(
                        stack.kafka.bootstrap_servers, f"analytics.{model_source}", stages, stop
                    )
                )
                latencies, load = await _under_load(
                    seconds, pool, stub, metadata, request, stages=stages, stalls=stalls
                )
        finally:
            stop.set()
            if watcher is not None:
                await asyncio.wait_for(watcher, 10)
            await asyncio.wait_for(worker, 60)
            await server.stop(1.0)
            await pool.close()
    finally:
        await stack.astop()
        stack.remove()
    p99 = percentile(latencies, 0.99)
    write_rate = load.rows / max(load.seconds, 1e-9)
    return [
        Figure(
            metric="Freshness commit -> visible in Query",
            a=p50_p99(latencies),
            b=f"load {write_rate:,.0f} rows/s for {load.seconds:.0f} s",
            ratio=None,
            target="p99 < 1 s, load >= 1 k rows/s",
            passed=p99 < TARGET_P99_SECONDS and write_rate >= 1_000,
            note=f"{len(latencies)} probes",
        ),
        *stage_figures(stages),
        *stalls.figures(),
    ]
