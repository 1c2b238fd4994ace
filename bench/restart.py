"""Restart to first write (issue 18 items 2 and 5): a worker SIGKILLed and started again.

The real stack: PostgreSQL, Kafka and Kafka Connect with the Debezium connector of
``deploy/debezium/connector.json``; ``analytics worker`` in a process of its own (the console
script, as Kubernetes or systemd would run it) writing over HTTP to the benchmarks' modern
ClickHouse server (``bench/http_front.py``). A writer inserts a deal every 50 ms throughout, so
there is always something to write when a worker comes back.

Per round: SIGKILL the running worker, start it again 0.5 s later, and time from just before the
new process is spawned to its ``first batch written`` log line (logged once per process, after
the first batch holding change events was inserted *and* its offsets committed; the line is
read from the worker's stderr pipe as it is written). The same rounds with a stable
``ANALYTICS_KAFKA_GROUP_INSTANCE_ID`` (static membership) and without one (dynamic: the
coordinator waits for the killed member's session to expire before it rebalances). Where the
time goes comes from the worker's own log (ISO timestamps, same clock): the process's start
until ``cdc worker started`` (imports, catalog, replica DDL, Kafka clients), until
``partitions assigned`` (the group join), until the first write. Afterwards the replica's
count under FINAL is checked against PostgreSQL's.

The two-worker row: two static members share the group; one is SIGKILLed and restarted while
the other keeps writing. It reports the restarted one's time to its first write and the
longest pause between the survivor's writes (``cdc_batches_total`` read from its metrics port).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped, unused-ignore]

from bench.http_front import FrontProcess
from bench.report import Figure, median
from cdc_worker.source_schema import source_schema_ddl
from local_stack import LocalStack, make_stack_directory
from local_stack._process import free_port
from service.backends.http import HttpBackend
from service.catalog import load_catalog
from service.settings import DEFAULT_CATALOG

TARGET_SECONDS = 2.0
TENANT = "restart"
WRITE_INTERVAL_SECONDS = 0.05
RESTART_DELAY_SECONDS = 0.5
FIRST_WRITE_WITHIN_SECONDS = 90.0
PHASES = ("cdc worker started", "partitions assigned", "first batch written")
_INSERT = (
    "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, currency, "
    "probability, created_at, updated_at) VALUES ($1, $2, 1, 1, 'restart', 'lead', $3, 'EUR', "
    "0.5, now(), now())"
)


class WorkerProcess:
    """``analytics worker`` as a process of its own, its JSON log read as it is written."""

    def __init__(self, env: dict[str, str]) -> None:
        """Describe the worker; nothing runs before ``start()``."""
        self.env = {**os.environ, "ANALYTICS_LOG_FORMAT": "json", **env}
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        #: Per log event of the current process: when its line arrived (monotonic clock).
        self.arrived: dict[str, float] = {}
        #: Per log event of the current process: seconds from the spawn, by the line's timestamp.
        self.logged: dict[str, float] = {}
        self.spawned_at = 0.0
        self._spawned_wall = 0.0
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Spawn the worker (the console script beside this interpreter)."""
        self.arrived, self.logged = {}, {}
        self._spawned_wall = time.time()
        self.spawned_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("analytics")),
            "worker",
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.process.stderr is not None
        self._pump = asyncio.create_task(self._read(self.process.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            now = time.monotonic()
            text = line.decode(errors="replace").rstrip()
            self.lines.append(text)
            try:
                record = json.loads(text)
            except ValueError:
                continue
            event = record.get("event")
            if not isinstance(event, str) or event in self.arrived:
                continue
            self.arrived[event] = now
            stamp = record.get("timestamp")
            if isinstance(stamp, str):
                at = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                self.logged[event] = at - self._spawned_wall

    async def first_write(self, within: float = FIRST_WRITE_WITHIN_SECONDS) -> float:
        """Seconds from the spawn to the ``first batch written`` line; fails after ``within``."""
        deadline = time.monotonic() + within
        while "first batch written" not in self.arrived:
            if self.process is not None and self.process.returncode is not None:
                raise RuntimeError("the worker ended:\n" + "\n".join(self.lines[-20:]))
            if time.monotonic() > deadline:
                raise RuntimeError("no batch written:\n" + "\n".join(self.lines[-20:]))
            await asyncio.sleep(0.01)
        return self.arrived["first batch written"] - self.spawned_at

    async def kill(self) -> None:
        """SIGKILL, as the OOM killer or a node failure would."""
        await self._end(signal.SIGKILL)

    async def terminate(self) -> int:
        """SIGTERM and wait for a clean exit; the exit status."""
        return await self._end(signal.SIGTERM)

    async def _end(self, signum: int) -> int:
        if self.process is None:
            return 0
        if self.process.returncode is None:
            self.process.send_signal(signum)
        try:
            code = await asyncio.wait_for(self.process.wait(), 60)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        if self._pump is not None:
            await self._pump
        return code


def worker_env(
    bootstrap: str, clickhouse_url: str, catalog_path: Path, group: str, instance: str = ""
) -> dict[str, str]:
    """The worker's settings: its brokers, engine, catalog, group and (static) instance id."""
    env = {
        "ANALYTICS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ANALYTICS_CLICKHOUSE_URL": clickhouse_url,
        "ANALYTICS_CATALOG_PATH": str(catalog_path),
        "ANALYTICS_KAFKA_GROUP_ID": group,
    }
    if instance:
        env["ANALYTICS_KAFKA_GROUP_INSTANCE_ID"] = instance
    return env


def catalog_file(directory: Path, database: str) -> Path:
    """The shipped catalog with its replicas in ``database``."""
    text = DEFAULT_CATALOG.read_text()
    path = directory / "catalog.toml"
    path.write_text(re.sub(r'(?m)^database = ".*"$', f'database = "{database}"', text, count=1))
    return path


@contextlib.asynccontextmanager
async def cdc_stack(work: Path) -> AsyncIterator[LocalStack]:
    """PostgreSQL, Kafka and Connect with the connector registered on the catalog's tables."""
    stack = LocalStack(make_stack_directory("bench-restart-"), ["postgres", "kafka", "connect"])
    await stack.astart()
    try:
        pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=1, max_size=1)
        for statement in source_schema_ddl(load_catalog(DEFAULT_CATALOG)):
            await pool.execute(statement)
        await pool.close()
        await asyncio.to_thread(stack.register_connector)
        yield stack
    finally:
        await stack.astop()
        stack.remove()


async def _write(pool: asyncpg.Pool, first_id: int, stop: asyncio.Event) -> None:
    next_id = first_id
    while not stop.is_set():
        await pool.execute(_INSERT, TENANT, next_id, next_id % 1000 + 0.25)
        next_id += 1
        await asyncio.sleep(WRITE_INTERVAL_SECONDS)


async def _rounds(worker: WorkerProcess, rounds: int) -> tuple[list[float], list[dict[str, float]]]:
    """SIGKILL and restart ``rounds`` times; per restart the first write and the log's phases."""
    await worker.start()
    await worker.first_write()
    times: list[float] = []
    phases: list[dict[str, float]] = []
    for _ in range(rounds):
        await asyncio.sleep(2.0)  # running and committing, as a worker is when it dies
        await worker.kill()
        await asyncio.sleep(RESTART_DELAY_SECONDS)
        await worker.start()
        times.append(await worker.first_write())
        phases.append(dict(worker.logged))
    await worker.terminate()
    return times, phases


def _summary(times: list[float]) -> str:
    return f"p50 {median(times):.2f} s, max {max(times):.2f} s"


def _phase_note(phases: list[dict[str, float]]) -> str:
    parts = []
    for name in PHASES:
        seen = [p[name] for p in phases if name in p]
        if seen:
            parts.append(f"{name} at {median(seen):.2f} s")
    return "median from the spawn: " + ", ".join(parts)


async def metric(session: aiohttp.ClientSession, port: int, name: str) -> float | None:
    """A worker's metric ``name`` from its ``/metrics`` on ``port`` (None if unreadable)."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def _two_workers(env: dict[str, str], rounds: int) -> tuple[list[float], list[float]]:
    """Two static members; the second is SIGKILLed and restarted ``rounds`` times.

    Per round: the restarted one's time to its first write, and the longest time the survivor
    went without completing a batch, from the kill until 3 s after that first write.
    """
    port = free_port()
    survivor = WorkerProcess(
        {
            **env,
            "ANALYTICS_KAFKA_GROUP_INSTANCE_ID": "worker-a",
            "ANALYTICS_METRICS_PORT": str(port),
        }
    )
    victim = WorkerProcess({**env, "ANALYTICS_KAFKA_GROUP_INSTANCE_ID": "worker-b"})
    firsts: list[float] = []
    pauses: list[float] = []
    async with aiohttp.ClientSession() as session:
        try:
            await survivor.start()
            await survivor.first_write()
            await victim.start()
            await victim.first_write()
            await asyncio.sleep(3.0)  # the group settles with both members
            for _ in range(rounds):
                done = asyncio.Event()
                watcher = asyncio.create_task(_longest_pause(session, port, done))
                await asyncio.sleep(0.5)
                await victim.kill()
                await asyncio.sleep(RESTART_DELAY_SECONDS)
                await victim.start()
                try:
                    firsts.append(await victim.first_write())
                    await asyncio.sleep(3.0)
                finally:
                    done.set()
                    pauses.append(await watcher)
                await asyncio.sleep(2.0)
        finally:
            await victim.terminate()
            await survivor.terminate()
    return firsts, pauses


async def _longest_pause(session: aiohttp.ClientSession, port: int, done: asyncio.Event) -> float:
    """Poll the survivor's batch counter every 20 ms until ``done``; the longest gap between
    two increments (or since the last one)."""
    last_change, last_value, longest = time.monotonic(), None, 0.0
    while not done.is_set():
        value = await metric(session, port, "cdc_batches_total")
        now = time.monotonic()
        if value is not None and value != last_value:
            if last_value is not None:
                longest = max(longest, now - last_change)
            last_change, last_value = now, value
        await asyncio.sleep(0.02)
    return max(longest, time.monotonic() - last_change)


async def measure(work: Path, rounds: int, *, two_workers: bool = True) -> list[Figure]:
    """The restart figures: static and dynamic membership, and two workers sharing a group."""
    database = f"bench_restart_{uuid.uuid4().hex[:8]}"
    catalog_path = catalog_file(work, database)
    front = await FrontProcess.start(work / "restart-front")
    figures: list[Figure] = []
    try:
        async with cdc_stack(work) as stack:
            pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=1, max_size=2)
            stop = asyncio.Event()
            writer = asyncio.create_task(_write(pool, 1, stop))
            try:
                results: dict[str, tuple[list[float], list[dict[str, float]]]] = {}
                envs: dict[str, dict[str, str]] = {}
                for mode in ("static", "dynamic"):
                    envs[mode] = env = worker_env(
                        stack.kafka.bootstrap_servers,
                        front.url,
                        catalog_path,
                        group=f"restart-{mode}-{uuid.uuid4().hex[:6]}",
                        instance="worker-0" if mode == "static" else "",
                    )
                    results[mode] = await _rounds(WorkerProcess(env), rounds)
                two: tuple[list[float], list[float]] | None = None
                if two_workers:
                    env = worker_env(
                        stack.kafka.bootstrap_servers,
                        front.url,
                        catalog_path,
                        group=f"restart-two-{uuid.uuid4().hex[:6]}",
                    )
                    two = await _two_workers(env, max(3, rounds // 2))
            finally:
                stop.set()
                await writer
            # Nothing lost or doubled over all the kills: a worker catches up, then compare.
            final = WorkerProcess(envs["static"])
            await final.start()
            try:
                await _check_replica(pool, front.url, database)
            finally:
                await final.terminate()
                await pool.close()
    finally:
        await front.stop()
    static, dynamic = results["static"], results["dynamic"]
    figures.append(
        Figure(
            metric="Restart to first write, static membership",
            a=_summary(static[0]),
            b=f"dynamic: {_summary(dynamic[0])}",
            ratio=max(static[0]),
            target=f"< {TARGET_SECONDS:.0f} s (max)",
            passed=max(static[0]) < TARGET_SECONDS,
            note=f"{rounds} SIGKILL/restart rounds each; {_phase_note(static[1])}",
        )
    )
    figures.append(
        Figure(
            metric="Restart to first write, dynamic membership (before)",
            a=_summary(dynamic[0]),
            b="",
            ratio=None,
            target="",
            passed=None,
            note=f"{rounds} rounds; {_phase_note(dynamic[1])}",
        )
    )
    if two is not None:
        firsts, pauses = two
        figures.append(
            Figure(
                metric="Restart with two static workers: restarted one's first write / "
                "survivor's longest pause",
                a=_summary(firsts),
                b=f"survivor paused {_summary(pauses)}",
                ratio=None,
                target="",
                passed=None,
                note=f"{len(firsts)} rounds",
            )
        )
    return figures


async def _check_replica(pool: asyncpg.Pool, url: str, database: str) -> None:
    """The replica under FINAL holds exactly PostgreSQL's rows of the tenant (ids and amounts)."""
    deadline = time.monotonic() + 30
    sink = HttpBackend(url)
    try:
        while True:
            truth = await pool.fetchrow(
                "SELECT count(*) AS n, sum(amount) AS s FROM deals WHERE tenant_id = $1", TENANT
            )
            got: list[dict[str, Any]] = []
            with contextlib.suppress(Exception):
                got = await sink.query_rows(
                    f"SELECT count() AS n, sum(amount) AS s FROM `{database}`.crm_deals FINAL "  # noqa: S608
                    "WHERE tenant_id = {tenant:String} AND _is_deleted = 0",
                    {"tenant": TENANT},
                )
            if got and int(got[0]["n"]) == truth["n"] and got[0]["s"] == truth["s"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {got} differs from PostgreSQL {dict(truth)}")
            await asyncio.sleep(0.5)
    finally:
        await sink.close()
