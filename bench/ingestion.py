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
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
from aiokafka import AIOKafkaProducer

from bench.dataset import generate_base
from bench.report import Figure, at_least_rate, median, rate
from cdc_worker.worker import CdcWorker
from local_stack import LocalStack, make_stack_directory
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, load_catalog
from service.cli import freeze_startup_heap
from service.demo.generator import DELETED_COLUMN, DEMO_TENANTS, VERSION_COLUMN
from service.schema import all_ddl
from service.settings import DEFAULT_CATALOG, Settings

TARGET_EVENTS_PER_SECOND = 50_000
TOPIC_PREFIX = "analytics"
_FIRST_LSN = 10_000_000
_LSN_STEP = 200


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


async def measure(backend: EmbeddedBackend, events_count: int, rounds: int) -> list[Figure]:
    """Start Kafka, produce the events, then time the worker and the direct insert, alternating."""
    shipped = load_catalog(DEFAULT_CATALOG)
    suffix = uuid.uuid4().hex[:8]
    model = shipped.get("crm", "deals")
    if model is None:
        raise RuntimeError("the shipped catalog has no crm.deals")
    # About 0.88 events per current deal: generate enough current rows, keep the first N events.
    generated = await asyncio.to_thread(_generated_rows, events_count)
    rows = generated.slice(0, events_count)
    events = await asyncio.to_thread(lambda: list(change_events(rows)))
    expected = _live_keys(rows)

    worker_rates: list[float] = []
    direct_rates: list[float] = []
    batches = 0
    stack = LocalStack(make_stack_directory("bench-kafka-"), ["kafka"])
    await stack.astart()
    try:
        bootstrap = stack.kafka.bootstrap_servers
        topic = f"{TOPIC_PREFIX}.{model.source}"
        await _produce(bootstrap, topic, events)
        # As ``analytics worker`` and ``analytics serve`` do before they start their loops.
        freeze_startup_heap()
        for round_number in range(rounds):
            sides = ("A", "B") if round_number % 2 == 0 else ("B", "A")
            for side in sides:
                side_name = "ingest" if side == "A" else "direct"
                catalog = Catalog(f"bench_{side_name}_{suffix}_{round_number}", shipped.models)
                if side == "A":
                    worker_rate, batches = await _run_worker(
                        backend, catalog, bootstrap, events_count, expected
                    )
                    worker_rates.append(worker_rate)
                else:
                    direct_rates.append(await _insert_directly(backend, catalog, rows))
                await backend.command(f"DROP DATABASE `{catalog.database}` SYNC")
    finally:
        await stack.astop()
        stack.remove()

    worker_rate, direct_rate = median(worker_rates), median(direct_rates)
    spread = ", ".join(f"{r / 1e3:.1f}" for r in worker_rates)
    return [
        Figure(
            metric="CDC ingestion events/s (Kafka -> decode -> chDB)",
            a=rate(worker_rate, "events"),
            b=rate(direct_rate, "rows") + " (Arrow insert)",
            ratio=direct_rate / worker_rate,
            target=">= 50 k events/s",
            passed=at_least_rate(worker_rate, TARGET_EVENTS_PER_SECOND),
            note=(
                f"{events_count:,} events, {batches} batches, median of {rounds} rounds: {spread} k"
            ),
        )
    ]


def _generated_rows(events_count: int) -> pa.Table:
    current = max(1_000, int(events_count / 1.1))
    return generate_base(current, tenants=DEMO_TENANTS)


async def _run_worker(
    backend: EmbeddedBackend, catalog: Catalog, bootstrap: str, events_count: int, expected: int
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
    if rows[0]["n"] != expected:
        raise AssertionError(f"replica holds {rows[0]['n']} live deals, expected {expected}")
    timed = events_count - first_events
    if not first_at or timed <= 0 or done_at <= first_at:
        raise RuntimeError("too few events for more than one batch: raise the event count")
    return timed / (done_at - first_at), worker.metrics.batches


async def _insert_directly(backend: EmbeddedBackend, catalog: Catalog, rows: pa.Table) -> float:
    for statement in all_ddl(catalog):
        await backend.command(statement)
    batch = Settings().cdc_batch_max_rows
    started = time.perf_counter()
    for offset in range(0, rows.num_rows, batch):
        await backend.insert_arrow(catalog.database, "crm_deals", rows.slice(offset, batch))
    count: int = rows.num_rows
    return count / (time.perf_counter() - started)
