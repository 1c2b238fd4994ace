"""Mixed CDC load (issue 18 item 5): freshness and ingestion at >= 700 transactions/s per backend.

Per backend a stack of its own: PostgreSQL, Kafka and Kafka Connect with the Debezium connector
(``bench.restart.cdc_stack``), and ``analytics serve`` (the console script) in a process of its
own running the CDC worker beside the gRPC server, as a deployment on one engine does. Its engine
is either embedded (chDB on a data directory of its own) or the benchmarks' modern server over
HTTP (``bench/http_front.py``: the tests' HTTP front over chDB, in a process of its own). Debian's
ClickHouse 18.16 is not one of them: ``serve`` refuses a server older than 23.8 (the query
compiler's functions), so nothing there answers ``Query``.

The load: ``WRITERS`` connections together offer ``OFFERED_TRANSACTIONS_PER_SECOND`` transactions
on tenant ``load``, each a draw from ``MIX``: single-row inserts (a tenth of them with a title of
``TOASTED_TITLE_CHARS`` characters, which PostgreSQL stores out of line), multi-row transactions
(three inserts, an update and a delete), updates of amount and stage (``UNCHANGED_TOAST_SHARE``
of them on a row with a TOASTed title, which they leave unchanged), soft deletes (``deleted_at``
set) and hard deletes. The source table's replica identity is the ``(tenant_id, id)`` index, not
FULL: Debezium then sends its unavailable-value placeholder for an unchanged TOASTed title, and
the worker fills it from the stored row (``cdc_worker.worker.stored_rows``), the work of the issue's
chaos run. Meanwhile ``bench.freshness.probe_until`` commits a probe row on tenant ``probe`` at a
time and polls ``Query`` every 20 ms until it is visible, and ``bench.freshness.watch_topic``
notes each probe's way through Debezium and Kafka.

Ingestion: the change events the worker applied per second during the load (its ``/metrics``),
the CPU per event of the served process (and of the engine's process, over HTTP: both also
answer the probes' ``Query`` every 20 ms, so neither is the worker's alone), and, once the load
stops, the seconds until the replica equals PostgreSQL: live count, sum of amounts and the count of
TOASTed titles, all through ``Query`` (a placeholder written over a title would show there).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import secrets
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
from google.protobuf import json_format

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from bench import freshness, restart
from bench.http_front import FrontProcess, process_cpu_seconds
from bench.report import Figure, percentile, rate
from bench.served_process import ServedProcess
from local_stack import LocalStack
from local_stack._process import free_port
from service.api import convert
from service.auth import mint_token
from service.settings import Settings

TARGET_P99_SECONDS = 2.0
TARGET_TRANSACTIONS_PER_SECOND = 700
OFFERED_TRANSACTIONS_PER_SECOND = 750
WRITERS = 8
TENANT = "load"
PROBE_TENANT = "probe"
#: Share of each kind of transaction in the load.
MIX = {"insert": 0.35, "multi-row": 0.10, "update": 0.40, "soft delete": 0.08, "hard delete": 0.07}
TOASTED_SHARE_OF_INSERTS = 0.10
UNCHANGED_TOAST_SHARE = 0.15
TOASTED_TITLE_CHARS = 3_000
TOASTED_PREFIX = "toast:"
SEED_ROWS = 1_000
SEED_TOASTED_ROWS = 200
CAUGHT_UP_WITHIN_SECONDS = 60.0
BACKENDS = ("embedded", "http")
_LABELS = {"embedded": "embedded engine", "http": "HTTP backend (chDB front)"}

_INSERT = (
    "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, currency, "
    "probability, created_at, updated_at) "
    "SELECT $1, g, g % 1000, g % 17, $4 || g, 'lead', 100.25, 'EUR', 0.5, now(), now() "
    "FROM generate_series($2::bigint, $3::bigint) AS g"
)
_UPDATE = (
    "UPDATE deals SET amount = amount + 1, stage = $3, updated_at = now() "
    "WHERE tenant_id = $1 AND id = $2"
)
_SOFT_DELETE = (
    "UPDATE deals SET deleted_at = now(), updated_at = now() WHERE tenant_id = $1 AND id = $2"
)
_HARD_DELETE = "DELETE FROM deals WHERE tenant_id = $1 AND id = $2"
_STAGES = ("qualified", "proposal", "negotiation", "closed_won")
# Not FULL: with FULL, Debezium sends an unchanged TOASTed value in full and nothing is looked up.
# The index holds the tenant column, which a delete's `before` must carry (cdc_worker/decoder.py).
_IDENTITY = (
    "CREATE UNIQUE INDEX deals_tenant_key ON deals (tenant_id, id)",
    "ALTER TABLE deals REPLICA IDENTITY USING INDEX deals_tenant_key",
    # Out of line without compression, so that every long title is TOASTed whatever its text.
    "ALTER TABLE deals ALTER COLUMN title SET STORAGE EXTERNAL",
)
_TRUTH = (
    "SELECT count(*) AS n, coalesce(sum(amount), 0) AS total, "
    "count(*) FILTER (WHERE title LIKE 'toast:%') AS toasted "
    "FROM deals WHERE tenant_id = $1 AND deleted_at IS NULL"
)


@dataclasses.dataclass
class MixedLoad:
    """The writers' shared state: live ids to pick from, and what they committed."""

    normal: list[int] = dataclasses.field(default_factory=list)
    toasted: list[int] = dataclasses.field(default_factory=list)
    next_id: int = 1
    transactions: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    row_changes: int = 0
    updates: int = 0
    unchanged_toast_updates: int = 0
    seconds: float = 0.0

    def new_ids(self, count: int) -> tuple[int, int]:
        """The first and last of ``count`` fresh ids."""
        first = self.next_id
        self.next_id += count
        return first, self.next_id - 1

    def take(self, ids: list[int]) -> int | None:
        """Remove and return a random live id of ``ids`` (deleted rows are not picked again)."""
        if not ids:
            return None
        index = random.randrange(len(ids))
        ids[index], ids[-1] = ids[-1], ids[index]
        return ids.pop()

    def pick_for_update(self) -> int | None:
        """A live id to update: a TOASTed row for ``UNCHANGED_TOAST_SHARE`` of the updates."""
        toasted = self.toasted and random.random() < UNCHANGED_TOAST_SHARE
        ids = self.toasted if toasted else self.normal
        if not ids:
            return None
        self.updates += 1
        self.unchanged_toast_updates += bool(toasted)
        return ids[random.randrange(len(ids))]

    @property
    def transactions_per_second(self) -> float:
        """Committed transactions per second of load."""
        return sum(self.transactions.values()) / max(self.seconds, 1e-9)


def _title_prefix(toasted: bool) -> str:
    if toasted:
        return f"{TOASTED_PREFIX}{secrets.token_hex(TOASTED_TITLE_CHARS // 2)}:"
    return "deal "


async def _insert(connection: Any, load: MixedLoad, count: int, *, toasted: bool) -> None:
    first, last = load.new_ids(count)
    await connection.execute(_INSERT, TENANT, first, last, _title_prefix(toasted))
    (load.toasted if toasted else load.normal).extend(range(first, last + 1))
    load.row_changes += count


async def _update(connection: Any, load: MixedLoad) -> None:
    deal = load.pick_for_update()
    if deal is not None:
        await connection.execute(_UPDATE, TENANT, deal, random.choice(_STAGES))
        load.row_changes += 1


async def _delete(connection: Any, load: MixedLoad, statement: str) -> None:
    deal = load.take(load.normal)
    if deal is not None:
        await connection.execute(statement, TENANT, deal)
        load.row_changes += 1


async def _transaction(connection: Any, load: MixedLoad, kind: str) -> None:
    """One transaction of ``kind`` (a key of ``MIX``)."""
    if kind == "insert":
        await _insert(connection, load, 1, toasted=random.random() < TOASTED_SHARE_OF_INSERTS)
    elif kind == "update":
        await _update(connection, load)
    elif kind == "soft delete":
        await _delete(connection, load, _SOFT_DELETE)
    elif kind == "hard delete":
        await _delete(connection, load, _HARD_DELETE)
    else:
        async with connection.transaction():
            await _insert(connection, load, 3, toasted=False)
            await _update(connection, load)
            await _delete(connection, load, _HARD_DELETE)
    load.transactions[kind] += 1


async def _writer(pool: Any, load: MixedLoad, until: float) -> float:
    """One connection's share of the offered rate, on a fixed schedule (late ones catch up);
    when its last transaction ended (monotonic clock)."""
    interval = WRITERS / OFFERED_TRANSACTIONS_PER_SECOND
    kinds, weights = list(MIX), list(MIX.values())
    tick = time.monotonic() + random.random() * interval
    async with pool.acquire() as connection:
        while time.monotonic() < until:
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            await _transaction(connection, load, random.choices(kinds, weights)[0])
            tick += interval
    return time.monotonic()


async def _seed(pool: Any, load: MixedLoad) -> None:
    """Rows for the first updates and deletes to pick, TOASTed titles among them."""
    async with pool.acquire() as connection:
        await _insert(connection, load, SEED_ROWS, toasted=False)
        for _ in range(SEED_TOASTED_ROWS):
            await _insert(connection, load, 1, toasted=True)


@dataclasses.dataclass(frozen=True)
class _Caller:
    """A gRPC stub with one tenant's token."""

    stub: Any
    metadata: tuple[tuple[str, str], ...]

    async def data(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """``Query`` with the proto3 JSON ``body``; the answer's rows."""
        request = json_format.ParseDict(body, analytics_pb2.QueryRequest())
        response = await self.stub.Query(request, metadata=self.metadata)
        rows: list[dict[str, Any]] = convert.response_json(response)["data"]
        return rows


def _caller(channel: grpc.aio.Channel, tenant: str) -> _Caller:
    token = mint_token(Settings(), subject="bench", tenant=tenant, permissions=["crm.*.read"])
    stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
    return _Caller(stub, (("authorization", f"Bearer {token}"),))


async def _replica_state(caller: _Caller) -> tuple[int, Decimal, int]:
    """Live deals, their sum of amounts and TOASTed titles, as ``Query`` answers them."""
    totals = await caller.data(
        {
            "model": "deals",
            "aggregate": "sum",
            "field": "amount",
            "metrics": [{"aggregate": "count"}],
        }
    )
    toasted = await caller.data({"model": "deals", "filters": {"title": f"like.{TOASTED_PREFIX}*"}})
    total = totals[0]["sum_amount"] if totals else None
    return (
        int(totals[0]["count"]) if totals else 0,
        Decimal(str(total)) if total is not None else Decimal(0),
        int(toasted[0]["count"]) if toasted else 0,
    )


async def _wait_equal(pool: Any, caller: _Caller, within: float) -> float:
    """Seconds until the replica equals PostgreSQL for the load's tenant; fails after ``within``."""
    started = time.monotonic()
    truth = await pool.fetchrow(_TRUTH, TENANT)
    expected = (int(truth["n"]), Decimal(truth["total"]), int(truth["toasted"]))
    got: tuple[int, Decimal, int] = (0, Decimal(0), 0)
    while time.monotonic() - started < within:
        got = await _replica_state(caller)
        if got == expected:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise RuntimeError(f"replica (count, sum, toasted) {got} differs from PostgreSQL {expected}")


@dataclasses.dataclass
class _Counters:
    """The worker's counters and the processes' CPU at one moment."""

    events: float
    batches: float
    served_cpu: float
    engine_cpu: float


@dataclasses.dataclass(frozen=True)
class _Engine:
    """Where the served process writes: nowhere else (embedded) or a server at ``url``."""

    url: str | None = None
    pid: int | None = None

    def cpu_seconds(self) -> float:
        """CPU the engine's own process has used so far (0 when it is the served process)."""
        return process_cpu_seconds(self.pid) if self.pid is not None else 0.0


async def _counters(
    session: aiohttp.ClientSession, metrics_port: int, served: ServedProcess, engine: _Engine
) -> _Counters:
    events = await restart.metric(session, metrics_port, "cdc_batch_rows_sum")
    batches = await restart.metric(session, metrics_port, "cdc_batches_total")
    if events is None or batches is None:
        raise RuntimeError("the served process's worker metrics are not readable")
    return _Counters(
        events=events,
        batches=batches,
        served_cpu=process_cpu_seconds(served.process.pid),
        engine_cpu=engine.cpu_seconds(),
    )


async def _worker_ready(session: aiohttp.ClientSession, metrics_port: int) -> None:
    """Wait until the served worker consumes (its replica tables exist: ``Query`` can answer)."""
    deadline = time.monotonic() + 120
    while await restart.metric(session, metrics_port, "cdc_ready") != 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the served process's CDC worker did not start within 120 s")
        await asyncio.sleep(0.1)


async def _run_backend(backend: str, work: Path, seconds: float, *, judge: bool) -> list[Figure]:
    """The stack, the served worker on ``backend``, the seed, the load and the probes."""
    directory = work / f"mixed-{backend}"
    directory.mkdir(parents=True, exist_ok=True)
    database = f"bench_mixed_{uuid.uuid4().hex[:8]}"
    catalog_path = restart.catalog_file(directory, database)
    front: FrontProcess | None = None
    engine = _Engine()
    try:
        if backend == "http":
            front = await FrontProcess.start(directory / "front")
            engine = _Engine(front.url, front.process.pid)
        async with restart.cdc_stack(work) as stack:
            return await _with_stack(
                backend,
                stack=stack,
                directory=directory,
                catalog_path=catalog_path,
                engine=engine,
                seconds=seconds,
                judge=judge,
            )
    finally:
        if front is not None:
            await front.stop()


async def _with_stack(
    backend: str,
    *,
    stack: LocalStack,
    directory: Path,
    catalog_path: Path,
    engine: _Engine,
    seconds: float,
    judge: bool,
) -> list[Figure]:
    metrics_port = free_port()
    env = {
        "ANALYTICS_KAFKA_BOOTSTRAP_SERVERS": stack.kafka.bootstrap_servers,
        "ANALYTICS_KAFKA_GROUP_ID": f"bench-mixed-{uuid.uuid4().hex[:8]}",
        "ANALYTICS_METRICS_PORT": str(metrics_port),
        # The default REST port may be taken on a shared machine, and nothing here uses it.
        "ANALYTICS_REST_PORT": "off",
    }
    if engine.url is not None:
        env["ANALYTICS_CLICKHOUSE_URL"] = engine.url
    pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=WRITERS, max_size=WRITERS)
    probe_pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=1, max_size=1)
    served: ServedProcess | None = None
    stages = freshness.ProbeStages()
    stop = asyncio.Event()
    load = MixedLoad()
    try:
        for statement in _IDENTITY:
            await pool.execute(statement)
        served = await ServedProcess.start(
            directory / "engine",
            catalog_path,
            directory / "serve.log",
            extra_env=env,
            with_cdc_worker=True,
        )
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel,
            aiohttp.ClientSession() as session,
        ):
            prober, checker = _caller(channel, PROBE_TENANT), _caller(channel, TENANT)
            count_request = json_format.ParseDict({"model": "deals"}, analytics_pb2.QueryRequest())
            await _worker_ready(session, metrics_port)
            # The first change waits for the snapshot, topic creation and topic discovery.
            await probe_pool.execute(
                freshness.PROBE_INSERT, PROBE_TENANT, freshness.PROBE_IDS + 1, Decimal("1.00")
            )
            await freshness.wait_visible(prober.stub, prober.metadata, count_request, 1, within=120)
            await _seed(pool, load)
            await _wait_equal(pool, checker, CAUGHT_UP_WITHIN_SECONDS)
            watcher = asyncio.create_task(
                freshness.watch_topic(
                    stack.kafka.bootstrap_servers, "analytics.public.deals", stages, stop
                )
            )
            before = await _counters(session, metrics_port, served, engine)
            # The seed's rows stay to be picked; its transactions are not the load's.
            load = MixedLoad(normal=load.normal, toasted=load.toasted, next_id=load.next_id)
            started = time.monotonic()
            until = started + seconds
            writers = [asyncio.create_task(_writer(pool, load, until)) for _ in range(WRITERS)]
            try:
                latencies = await freshness.probe_until(
                    until, probe_pool, prober.stub, prober.metadata, count_request, stages=stages
                )
                ended = await asyncio.gather(*writers)
            finally:
                stop.set()
                await asyncio.wait_for(watcher, 10)
            # Until the last transaction, not the last probe (which may wait for its row longer).
            load.seconds = max(ended) - started
            after = await _counters(session, metrics_port, served, engine)
            drain = await _wait_equal(pool, checker, CAUGHT_UP_WITHIN_SECONDS)
    finally:
        if served is not None:
            await served.stop()
        await pool.close()
        await probe_pool.close()
    return _figures(
        backend,
        latencies=latencies,
        load=load,
        stages=stages,
        counters=(before, after),
        drain=drain,
        judge=judge,
    )


def _figures(
    backend: str,
    *,
    latencies: list[float],
    load: MixedLoad,
    stages: freshness.ProbeStages,
    counters: tuple[_Counters, _Counters],
    drain: float,
    judge: bool,
) -> list[Figure]:
    label = f"Mixed CDC load, {_LABELS[backend]}"
    before, after = counters
    events = after.events - before.events
    batches = after.batches - before.batches
    tx_rate = load.transactions_per_second
    p99 = percentile(latencies, 0.99)
    share = load.unchanged_toast_updates / max(load.updates, 1)
    mix = ", ".join(f"{kind} {count:,}" for kind, count in load.transactions.most_common())
    cpu = f"{(after.served_cpu - before.served_cpu) / max(events, 1) * 1e6:.0f} us"
    if backend == "http":
        cpu += f" + engine {(after.engine_cpu - before.engine_cpu) / max(events, 1) * 1e6:.0f} us"
    return [
        Figure(
            metric=f"{label}: commit -> visible in Query",
            a=freshness.p50_p99(latencies),
            b=(
                f"load {tx_rate:,.0f} tx/s ({load.row_changes / load.seconds:,.0f} row "
                f"changes/s) for {load.seconds:.0f} s"
            ),
            ratio=None,
            target=(
                f"p99 < {TARGET_P99_SECONDS:.0f} s, load >= {TARGET_TRANSACTIONS_PER_SECOND} tx/s"
            ),
            passed=(
                p99 < TARGET_P99_SECONDS and tx_rate >= TARGET_TRANSACTIONS_PER_SECOND
                if judge
                else None
            ),
            note=(
                f"{len(latencies)} probes; transactions: {mix}; {share:.0%} of "
                f"{load.updates:,} updates left a TOASTed title unchanged"
            ),
        ),
        *freshness.stage_figures(stages, label)[:-1],
        Figure(
            metric=f"{label}: worker ingestion during the load",
            a=rate(events / load.seconds, "events"),
            b=f"CPU per event: served process {cpu}",
            ratio=None,
            target="",
            passed=None,
            note=(
                f"{batches:,.0f} batches of {events / max(batches, 1):,.0f} events on average; "
                f"replica equal to PostgreSQL {drain:.1f} s after the load"
            ),
        ),
    ]


async def measure(
    work: Path, seconds: float, *, judge: bool = True, backends: tuple[str, ...] = BACKENDS
) -> list[Figure]:
    """Each backend in turn on a stack of its own: the load for ``seconds``; the figures.

    ``judge=False`` (smoke runs) reports the freshness rows without passing or failing them.
    """
    figures: list[Figure] = []
    for backend in backends:
        figures += await _run_backend(backend, work, seconds, judge=judge)
    return figures
