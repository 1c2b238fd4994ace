"""Ingestion: events/s the CDC worker consumes from Kafka, decodes and writes into chDB.

N Debezium change events (JSON without schemas, ``decimal.handling.mode=string``,
``time.precision.mode=isostring``: what ``deploy/debezium/connector.json`` produces) are made from
generated deals of the demo tenants in CDC order (a create for the first version of a key, updates
for later ones, a delete for a tombstone) and produced into a real Kafka broker's
``analytics.public.deals`` topic before the clock starts. A is ``CdcWorker`` consuming them into
the embedded engine, timed from its first written batch to the batch that completes the N events
(the consumer group join before that is not ingestion); the replica is then checked against the
expected live keys. B inserts the same rows as Arrow batches of the worker's batch size directly.
Both run several rounds, alternating which goes first, each round into a database of its own that
is dropped after it (A with a new consumer group that reads the topic from its start); the
figures are the medians, since one five-second sample is at the mercy of a shared machine.

Before the rounds, the decoding alone: thread CPU time per event of ``ColumnarDecoder`` over the
same events in the slices the worker decodes, and of the per-record ``DebeziumDecoder`` on a
sample, best of the rounds (CPU time of the one thread, so other processes of a shared machine
disturb it far less than the rates; issue 18 item 4).

The same rounds then run on the HTTP backend: the worker's ``HttpBackend`` writing to the
benchmarks' modern server (``bench/http_front.py``, the tests' HTTP front over chDB in a process
of its own), and B the same Arrow rows inserted directly through that backend (issue 18 item 5).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from aiokafka import AIOKafkaProducer

from bench.dataset import generate_base
from bench.http_front import FrontProcess
from bench.report import Figure, at_least_rate, median, rate
from cdc_worker.columnar_decoder import ColumnarDecoder
from cdc_worker.decoder import DebeziumDecoder
from cdc_worker.worker import CdcWorker, ReplicaSink
from local_stack import LocalStack, make_stack_directory
from service.backends.dialect import backend_dialect
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.catalog import Catalog, load_catalog
from service.cli import freeze_startup_heap
from service.demo.generator import DELETED_COLUMN, DEMO_TENANTS, VERSION_COLUMN
from service.schema import all_ddl
from service.settings import DEFAULT_CATALOG, Settings

# Issue 18 item 4: what the ClickHouse Kafka engine reaches by parsing in C++.
TARGET_EVENTS_PER_SECOND = 100_000
TOPIC_PREFIX = "analytics"
_FIRST_LSN = 10_000_000
_LSN_STEP = 200
# The slice the worker decodes at a time (cdc_worker/worker.py, _DECODE_SLICE).
_DECODE_LIST = 1_000
_PER_RECORD_SAMPLE = 20_000


def change_events(rows: pa.Table) -> Iterator[tuple[bytes, bytes, bool]]:
    """(key, value, is_delete) per row version, as Debezium writes them, in the table's order."""
    columns = {name: rows.column(name).to_pylist() for name in rows.column_names}
    seen: set[tuple[str, int]] = set()
    last_commit: int | None = None
    value_columns = [c for c in rows.column_names if c not in (VERSION_COLUMN, DELETED_COLUMN)]
    for index in range(rows.num_rows):
        lsn = _FIRST_LSN + index * _LSN_STEP
        image = {name: _debezium_value(columns[name][index]) for name in value_columns}
        key = (image["tenant_id"], image["id"])
        deleted = bool(columns[DELETED_COLUMN][index])
        op = "d" if deleted else ("u" if key in seen else "c")
        seen.add(key)
        commit_ms = int(columns["updated_at"][index].timestamp() * 1000)
        event = {
            "before": image if op == "d" else None,
            "after": None if op == "d" else image,
            "source": {
                "version": "3.7.0.Final",
                "connector": "postgresql",
                "name": TOPIC_PREFIX,
                "ts_ms": commit_ms,
                "snapshot": "false",
                "db": "analytics",
                "sequence": json.dumps(
                    [str(last_commit) if last_commit else None, str(lsn)], separators=(",", ":")
                ),
                "schema": "public",
                "table": "deals",
                "txId": 1000 + index,
                "lsn": lsn,
                "xmin": None,
            },
            "transaction": None,
            "op": op,
            "ts_ms": commit_ms + 3,
        }
        last_commit = lsn + _LSN_STEP // 2
        yield (
            json.dumps({"id": image["id"]}).encode(),
            json.dumps(event, ensure_ascii=False).encode(),
            deleted,
        )


def _debezium_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return f"{value.isoformat()}Z"
    return value


def _live_keys(rows: pa.Table) -> int:
    """Keys whose last version is not a tombstone (the replica's row count under FINAL)."""
    ids = rows.column("id").to_numpy()
    tenants = np.asarray(rows.column("tenant_id").to_pylist(), dtype=object)
    deleted = rows.column(DELETED_COLUMN).to_numpy()
    last: dict[tuple[Any, int], bool] = {}
    for tenant, key, gone in zip(tenants, ids, deleted, strict=True):
        last[(tenant, int(key))] = bool(gone)
    return sum(1 for gone in last.values() if not gone)


async def _produce(bootstrap: str, topic: str, events: list[tuple[bytes, bytes, bool]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1_048_576, acks=1
    )
    await producer.start()
    try:
        pending = []
        for key, value, _ in events:
            pending.append(await producer.send(topic, value=value, key=key))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def measure(
    backend: EmbeddedBackend, events_count: int, rounds: int, work: Path | None = None
) -> list[Figure]:
    """The decoding's CPU cost alone; then start Kafka, produce the events, and time the worker
    and the direct insert, alternating.

    With ``work`` (scratch space for the HTTP front's engine) the same rounds run over HTTP too.
    """
    shipped = load_catalog(DEFAULT_CATALOG)
    model = shipped.get("crm", "deals")
    if model is None:
        raise RuntimeError("the shipped catalog has no crm.deals")
    # About 0.88 events per current deal: generate enough current rows, keep the first N events.
    generated = await asyncio.to_thread(_generated_rows, events_count)
    rows = generated.slice(0, events_count)
    events = await asyncio.to_thread(lambda: list(change_events(rows)))
    plan = _Plan(shipped, rows, events_count, _live_keys(rows), rounds)
    decoding = decode_cost(shipped, f"{TOPIC_PREFIX}.{model.source}", events, rounds)
    over_http: _Rounds | None = None
    stack = LocalStack(make_stack_directory("bench-kafka-"), ["kafka"])
    await stack.astart()
    try:
        bootstrap = stack.kafka.bootstrap_servers
        await _produce(bootstrap, f"{TOPIC_PREFIX}.{model.source}", events)
        # As ``analytics worker`` and ``analytics serve`` do before they start their loops.
        freeze_startup_heap()
        embedded = await _alternate(backend, bootstrap, plan)
        if work is not None:
            front = await FrontProcess.start(work / "ingest-front")
            sink = HttpBackend(front.url, pool_size=2)
            try:
                over_http = await _alternate(sink, bootstrap, plan)
            finally:
                await sink.close()
                await front.stop()
    finally:
        await stack.astop()
        stack.remove()
    figures = [
        embedded.figure("CDC ingestion events/s (Kafka -> decode -> chDB)", plan, target=True),
        decoding,
    ]
    if over_http is not None:
        figures.append(
            over_http.figure(
                "CDC ingestion events/s over HTTP (Kafka -> decode -> HttpBackend -> chDB front)",
                plan,
                target=False,
            )
        )
    return figures


def decode_cost(
    catalog: Catalog, topic: str, events: list[tuple[bytes, bytes, bool]], rounds: int
) -> Figure:
    """Thread CPU per event of the column-wise decoder (A) and of the per-record one (B).

    Raises RuntimeError if a list does not decode wholly column-wise: the figure (and the rates
    of the rounds) are meant to measure that path.
    """
    decoder = DebeziumDecoder(catalog, topic_prefix=TOPIC_PREFIX)
    columnar = ColumnarDecoder(decoder)
    records = [(key, value) for key, value, _ in events]
    lists = [records[i : i + _DECODE_LIST] for i in range(0, len(records), _DECODE_LIST)]
    sample = records[:_PER_RECORD_SAMPLE]
    columnar_costs: list[float] = []
    single_costs: list[float] = []
    for _ in range(rounds):
        started = time.thread_time()
        for records_list in lists:
            if columnar.decode(topic, records_list).every_row is None:
                raise RuntimeError("a bench event left the column-wise decoding path")
        columnar_costs.append((time.thread_time() - started) / len(records))
        started = time.thread_time()
        for key, value in sample:
            decoder.decode(topic, key, value)
        single_costs.append((time.thread_time() - started) / len(sample))
    columnar_cost, single_cost = min(columnar_costs), min(single_costs)
    return Figure(
        metric="CDC decoding CPU per event (column-wise vs per record)",
        a=f"{columnar_cost * 1e6:.2f} us/event",
        b=f"{single_cost * 1e6:.1f} us/event (per record)",
        ratio=single_cost / columnar_cost,
        target="",
        passed=None,
        note=(
            f"thread CPU, best of {rounds} rounds; {len(records):,} events in lists of "
            f"{_DECODE_LIST:,}, per record on {len(sample):,}"
        ),
    )


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What every round ingests: the catalog, the rows behind the events, the expected count."""

    shipped: Catalog
    rows: pa.Table
    events_count: int
    expected: int
    rounds: int


@dataclasses.dataclass
class _Rounds:
    """Per round the worker's and the direct insert's rate; the worker's batches."""

    worker_rates: list[float] = dataclasses.field(default_factory=list)
    direct_rates: list[float] = dataclasses.field(default_factory=list)
    batches: int = 0

    def figure(self, metric: str, plan: _Plan, *, target: bool) -> Figure:
        """The medians; judged against ``TARGET_EVENTS_PER_SECOND`` when ``target``."""
        worker_rate, direct_rate = median(self.worker_rates), median(self.direct_rates)
        spread = ", ".join(f"{r / 1e3:.1f}" for r in self.worker_rates)
        return Figure(
            metric=metric,
            a=rate(worker_rate, "events"),
            b=rate(direct_rate, "rows") + " (Arrow insert)",
            ratio=direct_rate / worker_rate,
            target=f">= {TARGET_EVENTS_PER_SECOND // 1000} k events/s" if target else "",
            passed=at_least_rate(worker_rate, TARGET_EVENTS_PER_SECOND) if target else None,
            note=(
                f"{plan.events_count:,} events, {self.batches} batches, median of {plan.rounds} "
                f"rounds: {spread} k"
            ),
        )


async def _alternate(sink: ReplicaSink, bootstrap: str, plan: _Plan) -> _Rounds:
    """The worker (A) and the direct insert (B) into ``sink``, alternating which goes first."""
    measured = _Rounds()
    suffix = uuid.uuid4().hex[:8]
    for round_number in range(plan.rounds):
        sides = ("A", "B") if round_number % 2 == 0 else ("B", "A")
        for side in sides:
            side_name = "ingest" if side == "A" else "direct"
            catalog = Catalog(f"bench_{side_name}_{suffix}_{round_number}", plan.shipped.models)
            if side == "A":
                worker_rate, measured.batches = await _run_worker(
                    sink, catalog, bootstrap, plan.events_count, plan.expected
                )
                measured.worker_rates.append(worker_rate)
            else:
                measured.direct_rates.append(await _insert_directly(sink, catalog, plan.rows))
            await sink.command(f"DROP DATABASE `{catalog.database}` SYNC")
    return measured


def _generated_rows(events_count: int) -> pa.Table:
    current = max(1_000, int(events_count / 1.1))
    return generate_base(current, tenants=DEMO_TENANTS)


async def _run_worker(
    backend: ReplicaSink, catalog: Catalog, bootstrap: str, events_count: int, expected: int
) -> tuple[float, int]:
    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        kafka_group_id=f"bench-{uuid.uuid4().hex[:8]}",
        kafka_topic_prefix=TOPIC_PREFIX,
    )
    worker = CdcWorker(settings, catalog, backend)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    first_at = 0.0
    first_events = 0
    deadline = time.monotonic() + 600
    try:
        while worker.metrics.batch_rows_total < events_count:
            if task.done() or time.monotonic() > deadline:
                raise RuntimeError("the CDC worker stopped or stalled before writing every event")
            if not first_at and worker.metrics.batch_rows_total:
                first_at, first_events = time.perf_counter(), worker.metrics.batch_rows_total
            await asyncio.sleep(0.002)
        done_at = time.perf_counter()
    finally:
        stop.set()
        await task
    rows = await backend.query_rows(
        f"SELECT count() AS n FROM `{catalog.database}`.`crm_deals` FINAL "  # noqa: S608
        "WHERE _is_deleted = 0"
    )
    # int(): a server's JSON may quote 64-bit integers.
    if int(rows[0]["n"]) != expected:
        raise AssertionError(f"replica holds {rows[0]['n']} live deals, expected {expected}")
    timed = events_count - first_events
    if not first_at or timed <= 0 or done_at <= first_at:
        raise RuntimeError("too few events for more than one batch: raise the event count")
    return timed / (done_at - first_at), worker.metrics.batches


async def _insert_directly(backend: ReplicaSink, catalog: Catalog, rows: pa.Table) -> float:
    for statement in all_ddl(catalog, dialect=await backend_dialect(backend)):
        await backend.command(statement)
    batch = Settings().cdc_batch_max_rows
    started = time.perf_counter()
    for offset in range(0, rows.num_rows, batch):
        await backend.insert_arrow(catalog.database, "crm_deals", rows.slice(offset, batch))
    count: int = rows.num_rows
    return count / (time.perf_counter() - started)
