"""Replication under faults: the worker killed with SIGKILL mid-stream, ClickHouse away for a while.

Ground truth is PostgreSQL: after the fault and recovery, every aggregate the service answers
equals the same aggregate computed by SQL in PostgreSQL, exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from google.protobuf import json_format

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from bench.restart import WorkerProcess, catalog_file, worker_env
from cdc_worker.source_schema import source_schema_ddl
from cdc_worker.worker import CdcWorker, ReplicaSink
from local_stack import ClickHouseServer, LocalStack, make_stack_directory
from service.api import convert
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.catalog import Catalog
from service.errors import AnalyticsError
from service.settings import PROJECT_ROOT, Settings
from tests.conftest import catalog_in_database, unique_database
from tests.integration.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TENANTS = ("acme", "globex", "initech")


@pytest.fixture(scope="module")
async def stack(catalog: Catalog) -> AsyncIterator[LocalStack]:
    started = LocalStack(make_stack_directory(), ["postgres", "kafka", "connect"])
    await started.astart()
    try:
        pool = await asyncpg.create_pool(started.postgres.dsn, min_size=1, max_size=2)
        for statement in source_schema_ddl(catalog):
            await pool.execute(statement)
        await pool.close()
        await asyncio.to_thread(started.register_connector)
        yield started
    finally:
        await started.astop()
        started.remove()


async def pg_truth(pool: asyncpg.Pool, tenant: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT stage, count(*) AS n, sum(amount) AS total, max(probability) AS top FROM deals "
        "WHERE tenant_id = $1 AND deleted_at IS NULL GROUP BY stage ORDER BY stage",
        tenant,
    )
    return [_stats_row(r) for r in rows]


def _stats_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One stage's figures in the service's result keys (from PostgreSQL or ClickHouse rows)."""
    return {
        "stage": row["stage"],
        "sum_amount": _number(row["total"]),
        "count": row["n"],
        "max_probability": row["top"],
    }


def _number(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() else float(value)


TRUTH_QUERY = {
    "model": "deals",
    "groupBy": "stage",
    "aggregate": "sum",
    "field": "amount",
    "metrics": [{"aggregate": "count"}, {"aggregate": "max", "field": "probability"}],
    "order": "stage.asc",
}


async def write_load(pool: asyncpg.Pool, seconds: float, first_id: int) -> int:
    """Inserts, updates, soft and hard deletes for ``seconds``; returns operations done."""
    rng = random.Random(first_id)
    next_id = first_id
    live: list[int] = []
    operations = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        action = rng.random()
        if action < 0.55 or len(live) < 20:
            await pool.execute(
                "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, "
                "currency, probability, created_at, updated_at) VALUES ($1, $2, 1, 1, 't', $3, "
                "$4, 'EUR', $5, now(), now())",
                rng.choice(TENANTS),
                next_id,
                rng.choice(["lead", "won", "lost"]),
                Decimal(rng.randint(100, 999_999)) / 100,
                rng.random(),
            )
            live.append(next_id)
            next_id += 1
        elif action < 0.85:
            await pool.execute(
                "UPDATE deals SET stage = $2, amount = amount + 1.01, probability = $3 "
                "WHERE id = $1",
                rng.choice(live),
                rng.choice(["lead", "won", "lost"]),
                rng.random(),
            )
        elif action < 0.93:
            await pool.execute(
                "UPDATE deals SET deleted_at = now() WHERE id = $1", rng.choice(live)
            )
        else:
            await pool.execute(
                "DELETE FROM deals WHERE id = $1", live.pop(rng.randrange(len(live)))
            )
        operations += 1
    return operations


class ServeProcess:
    """``analytics serve`` with the CDC worker in-process on the embedded engine."""

    def __init__(self, data_dir: Path, bootstrap: str, group: str) -> None:
        self.env = {
            **os.environ,
            "ANALYTICS_DATA_DIR": str(data_dir),
            "ANALYTICS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ANALYTICS_KAFKA_GROUP_ID": group,
            "ANALYTICS_LOG_FORMAT": "json",
            "ANALYTICS_REST_PORT": "0",
        }
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.lines: list[str] = []
        self.first_write_at: list[float] = []
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cdc_worker.cli",
            "serve",
            "--port",
            "0",
            env=self.env,
            cwd=PROJECT_ROOT,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert self.process.stderr is not None
        while True:
            line = (await asyncio.wait_for(self.process.stderr.readline(), 60)).decode()
            assert line, "\n".join(self.lines[-20:])
            self.lines.append(line.rstrip())
            if '"serving"' in line:
                self.port = int(json.loads(line)["address"].rsplit(":", 1)[1])
                break
        self._pump = asyncio.create_task(self._read(self.process.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode().rstrip())
            if '"first batch written"' in self.lines[-1]:
                self.first_write_at.append(time.monotonic())

    async def first_write(self, *, after: float, within: float) -> float:
        """Seconds from ``after`` to the worker's first written batch since then."""
        deadline = time.monotonic() + within
        while not any(at >= after for at in self.first_write_at):
            assert time.monotonic() < deadline, "no batch written:\n" + "\n".join(self.lines[-20:])
            await asyncio.sleep(0.05)
        return min(at for at in self.first_write_at if at >= after) - after

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        if self._pump is not None:
            await self._pump

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 60)
        if self._pump is not None:
            await self._pump
        return code

    async def query(self, tenant: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        token = mint_token(Settings(), subject="t", tenant=tenant, permissions=["*.*.read"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            response = await analytics_pb2_grpc.AnalyticsServiceStub(channel).Query(
                json_format_request(body), metadata=(("authorization", f"Bearer {token}"),)
            )
        return convert.response_json(response)["data"]  # type: ignore[no-any-return]


def json_format_request(body: dict[str, Any]) -> analytics_pb2.QueryRequest:
    return json_format.ParseDict(body, analytics_pb2.QueryRequest())


async def converge(serve: ServeProcess, pool: asyncpg.Pool, within: float) -> None:
    await until_equal(pool, lambda tenant: serve.query(tenant, TRUTH_QUERY), within)


async def until_equal(
    pool: asyncpg.Pool,
    answer: Callable[[str], Awaitable[list[dict[str, Any]]]],
    within: float,
    running: asyncio.Task[None] | None = None,
) -> None:
    """Wait until ``answer`` gives PostgreSQL's figures for every tenant; fail after ``within``
    seconds, or as soon as the worker task ``running`` (if given) has stopped."""
    deadline = time.monotonic() + within
    mismatch: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert running is None or not running.done(), "the worker stopped"
        mismatch = {}
        for tenant in TENANTS:
            truth = await pg_truth(pool, tenant)
            got = await answer(tenant)
            if got != truth:
                mismatch[tenant] = (got, truth)
        if not mismatch:
            return
        await asyncio.sleep(0.5)
    pytest.fail(f"the replica did not converge to PostgreSQL: {mismatch}")


@pytest.mark.parametrize("membership", ["dynamic", "static"])
async def test_worker_killed_mid_stream_loses_and_doubles_nothing(
    stack: LocalStack, tmp_path: Path, membership: str
) -> None:
    """SIGKILL under writes, then a restart on the same data and group: nothing lost or doubled.

    With static membership (a stable ANALYTICS_KAFKA_GROUP_INSTANCE_ID) the restarted worker
    takes its partitions back without waiting for the killed member's session to expire; the
    time from the restart to its first write is printed (the bench's figure, not asserted here).
    """
    pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=1, max_size=2)
    serve = ServeProcess(tmp_path / "engine", stack.kafka.bootstrap_servers, uuid.uuid4().hex)
    if membership == "static":
        serve.env["ANALYTICS_KAFKA_GROUP_INSTANCE_ID"] = "worker-0"
    first_id = 1 if membership == "dynamic" else 100_000
    try:
        await serve.start()
        load = asyncio.create_task(write_load(pool, seconds=8, first_id=first_id))
        await asyncio.sleep(3)
        await serve.kill()
        killed_at = time.monotonic()
        await asyncio.sleep(1)
        restarted_at = time.monotonic()
        await serve.start()  # same data directory, same consumer group: resumes from its commits
        down_for = time.monotonic() - killed_at
        first_write = await serve.first_write(after=restarted_at, within=60)
        operations = await load
        await converge(serve, pool, within=30)
        live = 0
        for tenant in TENANTS:
            live += sum(row["count"] for row in await pg_truth(pool, tenant))
        print(
            f"\nkill-and-restart ({membership} membership): {operations} PostgreSQL writes, "
            f"worker SIGKILLed after 3 s and back after {down_for:.1f} s, writing again "
            f"{first_write:.1f} s after its restart; "
            f"{live} live deals "
            "equal in PostgreSQL and the service for every tenant and stage"
        )
        assert operations > 200
        assert await serve.terminate() == 0
    finally:
        if serve.process is not None and serve.process.returncode is None:
            await serve.kill()
        await pool.close()


CH_TRUTH_SQL = (
    "SELECT stage, count() AS n, sum(amount) AS total, max(probability) AS top "
    "FROM {database}.crm_deals FINAL "
    "WHERE tenant_id = {{tenant:String}} AND _is_deleted = 0 AND deleted_at IS NULL "
    "GROUP BY stage ORDER BY stage"
)


async def server_truth(sink: ReplicaSink, database: str, tenant: str) -> list[dict[str, Any]]:
    rows = await sink.query_rows(CH_TRUTH_SQL.format(database=database), {"tenant": tenant})
    return [_stats_row(r) for r in rows]


async def test_clickhouse_server_away_under_writes_loses_nothing(
    stack: LocalStack, catalog: Catalog
) -> None:
    """The worker writes to the ClickHouse server over HTTP; the server goes away for a while
    under writes and comes back; every change arrives, none twice."""
    clickhouse = ClickHouseServer(make_stack_directory())
    await asyncio.to_thread(clickhouse.start)
    sink = HttpBackend(clickhouse.http_url)
    pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=1, max_size=2)
    settings = Settings(
        kafka_bootstrap_servers=stack.kafka.bootstrap_servers,
        kafka_group_id=uuid.uuid4().hex,
        cdc_retry_max_seconds=1.0,
    )
    stop = asyncio.Event()
    worker = CdcWorker(settings, catalog, sink)
    running = asyncio.create_task(worker.run(stop))
    try:
        load = asyncio.create_task(write_load(pool, seconds=20, first_id=500_000))
        await asyncio.sleep(3)
        # Away for 4 s while the writes go on. Stopped hard (SIGKILL a second after SIGTERM):
        # a graceful stop waits for the queries in flight, and a worker writing one batch while
        # it decodes the next always has one, so the server could outlast the load.
        await asyncio.to_thread(clickhouse.stop, 1.0)
        await asyncio.sleep(4.0)
        await asyncio.to_thread(clickhouse.start)
        operations = await load
        await until_equal(
            pool, lambda tenant: server_truth(sink, catalog.database, tenant), within=60
        )
        # Writes failed during the outage (retried with back-off, nothing committed meanwhile).
        assert worker.metrics.write_errors > 0, "the outage was not seen by the worker"
        assert operations > 200
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
        await sink.close()
        await pool.close()
        await asyncio.to_thread(clickhouse.stop)


async def test_rebalances_under_writes_lose_nothing_and_stop_no_worker(
    stack: LocalStack, catalog: Catalog, embedded_backend: EmbeddedBackend
) -> None:
    """A second worker joins the group and leaves again under writes: each time the group
    rebalances, a batch written but not yet committed may lose its partitions. The first worker
    keeps going (the batch replays, FINAL collapses it) and the replica ends equal."""
    mine = catalog_in_database(catalog, unique_database("rebalance"))
    pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=1, max_size=2)
    settings = Settings(
        kafka_bootstrap_servers=stack.kafka.bootstrap_servers, kafka_group_id=uuid.uuid4().hex
    )
    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    first = CdcWorker(settings, mine, embedded_backend)
    running = asyncio.create_task(first.run(first_stop))
    second: asyncio.Task[None] | None = None
    try:
        load = asyncio.create_task(write_load(pool, seconds=12, first_id=900_000))
        await asyncio.sleep(3)
        second = asyncio.create_task(CdcWorker(settings, mine, embedded_backend).run(second_stop))
        await asyncio.sleep(4)
        second_stop.set()
        await asyncio.wait_for(second, 60)
        operations = await load
        await until_equal(
            pool,
            lambda tenant: server_truth(embedded_backend, mine.database, tenant),
            within=60,
            running=running,
        )
        assert operations > 200
        print(
            f"\nrebalances: {operations} PostgreSQL writes, a second worker in the group for 4 s; "
            f"{first.metrics.uncommitted_batches} written batches replayed after a rebalance"
        )
    finally:
        first_stop.set()
        second_stop.set()
        await asyncio.wait_for(running, 60)
        if second is not None:
            await asyncio.wait_for(second, 60)
        await embedded_backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")
        await pool.close()


RESTART_TENANT = "restarts"


async def _restart_truth(pool: asyncpg.Pool) -> list[tuple[int, str, Decimal]]:
    rows = await pool.fetch(
        "SELECT id, stage, amount FROM deals WHERE tenant_id = $1 ORDER BY id", RESTART_TENANT
    )
    return [(int(r["id"]), r["stage"], Decimal(r["amount"])) for r in rows]


async def _restart_replica(sink: HttpBackend, database: str) -> list[tuple[int, str, Decimal]]:
    try:
        rows = await sink.query_rows(
            f"SELECT id, stage, amount FROM `{database}`.crm_deals FINAL "
            "WHERE tenant_id = {tenant:String} AND _is_deleted = 0 ORDER BY id",
            {"tenant": RESTART_TENANT},
        )
    except AnalyticsError:
        return []  # the worker has not created the table yet
    return [(int(r["id"]), r["stage"], Decimal(str(r["amount"]))) for r in rows]


async def _replica_equals_postgres(pool: asyncpg.Pool, sink: HttpBackend, database: str) -> None:
    deadline = time.monotonic() + 60
    while (truth := await _restart_truth(pool)) != (got := await _restart_replica(sink, database)):
        assert time.monotonic() < deadline, f"replica {got[-5:]} != PostgreSQL {truth[-5:]}"
        await asyncio.sleep(0.3)
    # Nothing doubled: one row per key under FINAL, and no key PostgreSQL lacks.
    assert len({row[0] for row in got}) == len(got)


async def _insert_restart_deals(pool: asyncpg.Pool, ids: range) -> None:
    await pool.executemany(
        "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, currency, "
        "probability, created_at, updated_at) VALUES ($1, $2, 1, 1, 't', 'lead', $3, 'EUR', 0.5, "
        "now(), now())",
        [(RESTART_TENANT, i, Decimal(i % 997) + Decimal("0.25")) for i in ids],
    )


async def test_worker_process_sigkilled_and_restarted_with_an_instance_id(
    stack: LocalStack, server: Server, backend: HttpBackend, tmp_path: Path
) -> None:
    """``analytics worker`` (a process of its own, static membership, the ClickHouse server over
    HTTP) SIGKILLed after it replicated, rows written meanwhile, started again: every row
    arrives with its values, none twice. Correctness only: the time to the first write is the
    bench's (``scripts/bench --only restart``)."""
    database = unique_database("restart")
    env = worker_env(
        stack.kafka.bootstrap_servers,
        server.url,
        catalog_file(tmp_path, database),
        group=uuid.uuid4().hex,
        instance="worker-0",
    )
    worker = WorkerProcess(env)
    pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=1, max_size=2)
    first = 3_000_000
    try:
        await _insert_restart_deals(pool, range(first, first + 50))
        await worker.start()
        await worker.first_write(within=60)
        await _replica_equals_postgres(pool, backend, database)
        await worker.kill()
        # While it is down: new rows, changed rows, a deleted row.
        await _insert_restart_deals(pool, range(first + 50, first + 120))
        await pool.execute(
            "UPDATE deals SET stage = 'won', amount = amount + 1.5 WHERE tenant_id = $1 "
            "AND id < $2",
            RESTART_TENANT,
            first + 10,
        )
        await pool.execute("DELETE FROM deals WHERE id = $1", first + 20)
        await worker.start()
        await worker.first_write(within=60)
        await _replica_equals_postgres(pool, backend, database)
        truth = await _restart_truth(pool)
        assert len(truth) == 119
        assert sum(1 for row in truth if row[1] == "won") == 10
        assert await worker.terminate() == 0
    finally:
        await worker.kill()
        await pool.close()
        await backend.command(f"DROP DATABASE IF EXISTS `{database}`")
