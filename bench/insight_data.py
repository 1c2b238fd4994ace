"""The data of the insight benchmarks (funnel, retention, lifecycle): journeys in chDB.

The benchmark tenant's events come from ``bench.journeys`` (``ACTORS`` actors, about ``EVENTS``
events over the ``WEEKS`` weeks from ``DATA_FROM``); three other tenants hold a tenth of that
each, so that the tenant condition has rows to skip. 1 % of the benchmark tenant's events are
sent twice (a delivery retry: the same id and content, a later version), so that reading them
once takes FINAL. Inserted as Arrow straight into the shipped event model's table (no sink: the
figures are about reading), a million rows an insert; then every month but the newest two is
merged into one part and merges are stopped, as the trend benchmark leaves its table
(``bench.trend_speed``), so that the served process gets a copy of the same parts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from bench import journeys
from bench.event_ingest import COUNTRIES
from bench.shipped_catalog import shipped_catalog_text
from bench.trend_speed import uuid_texts
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog
from service.schema import all_ddl

DATABASE = "bench_insights"
TENANT = "bench"
OTHER_TENANTS = ("bench-other-1", "bench-other-2", "bench-other-3")
OTHER_SHARE = 0.1
DATA_FROM = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
"""A Monday: the weeks of the data are whole Monday weeks."""
WEEKS = 26
DATA_TO = DATA_FROM + dt.timedelta(weeks=WEEKS)
RESENT = 0.01
CHUNK_EVENTS = 1_000_000
_PLATFORMS = ("web", "ios", "android")
_PLANS = ("free", "pro")


@dataclass(frozen=True)
class Loaded:
    """The benchmark tenant's events as generated (the ground truth) and the table's layout."""

    events: journeys.Journeys
    layout: str
    seconds: float


def catalog_text() -> str:
    """The shipped catalog in the benchmark's database."""
    return shipped_catalog_text(DATABASE)


def micros(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware instant."""
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _texts(choices: tuple[str, ...] | list[str], codes: np.ndarray) -> pa.Array:
    return pa.array(choices, pa.string()).take(pa.array(codes))


def _rows(
    rng: np.random.Generator, tenant: str, events: journeys.Journeys, index: np.ndarray
) -> pa.Table:
    """The event table's Arrow rows of ``events[index]``; per-actor platform and country."""
    count = len(index)
    actor = events.actor[index]
    platform = actor % len(_PLATFORMS)
    country = (actor * 13) % len(COUNTRIES)
    plan = (events.kind[index] == journeys.code(journeys.PURCHASED)).astype(np.int64)
    empty = pa.array(np.zeros(count + 1, dtype=np.int32))
    no_text = pa.array([], pa.string())
    return pa.table(
        {
            "tenant_id": _texts([tenant], np.zeros(count, dtype=np.int32)),
            "event_id": uuid_texts(rng, count),
            "event": _texts(list(journeys.EVENT_NAMES), events.kind[index]),
            "contact_id": pa.array(actor),
            "timestamp": pa.array(events.moment[index], pa.timestamp("us", tz="UTC")),
            "platform": _texts(_PLATFORMS, platform),
            "country": _texts(COUNTRIES, country),
            "plan": _texts(_PLANS, plan),
            "properties_keys": pa.ListArray.from_arrays(empty, no_text),
            "properties_values": pa.ListArray.from_arrays(empty, no_text),
            "_version": pa.array(np.ones(count, dtype=np.uint64)),
        }
    )


def _resent(rng: np.random.Generator, rows: pa.Table) -> pa.Table:
    chosen = np.flatnonzero(rng.random(rows.num_rows) < RESENT)
    again = rows.take(pa.array(chosen))
    index = again.schema.get_field_index("_version")
    return again.set_column(index, "_version", pa.array(np.full(len(chosen), 2, dtype=np.uint64)))


async def load(
    backend: EmbeddedBackend, catalog: Catalog, *, actors: int, events: int, seed: int = 16
) -> Loaded:
    """Create the tables, insert every tenant's events, merge; the benchmark tenant's events."""
    started = asyncio.get_running_loop().time()
    for statement in all_ddl(catalog):
        await backend.command(statement)
    rng = np.random.default_rng(seed)
    start, end = micros(DATA_FROM), micros(DATA_TO)
    plan = [(TENANT, actors, events)] + [
        (tenant, max(int(actors * OTHER_SHARE), 1), max(int(events * OTHER_SHARE), 1))
        for tenant in OTHER_TENANTS
    ]
    truth: journeys.Journeys | None = None
    for tenant, tenant_actors, tenant_events in plan:
        generated = await asyncio.to_thread(
            journeys.generate, rng, actors=tenant_actors, events=tenant_events, start=start, end=end
        )
        if tenant == TENANT:
            truth = generated
        order = rng.permutation(len(generated))
        for offset in range(0, len(order), CHUNK_EVENTS):
            index = order[offset : offset + CHUNK_EVENTS]
            rows = await asyncio.to_thread(_rows, rng, tenant, generated, index)
            await backend.insert_arrow(catalog.database, "product_events", rows)
            if tenant == TENANT:
                await backend.insert_arrow(catalog.database, "product_events", _resent(rng, rows))
    if truth is None:
        raise RuntimeError("no benchmark tenant in the plan")
    layout = await _settle(backend, catalog)
    return Loaded(truth, layout, asyncio.get_running_loop().time() - started)


async def _settle(backend: EmbeddedBackend, catalog: Catalog) -> str:
    """Merge every month but the newest two, stop merges; the table's layout as text."""
    table = f"`{catalog.database}`.`product_events`"
    partitions = await backend.query_rows(
        "SELECT DISTINCT partition_id AS id FROM system.parts WHERE database = {db:String} "
        "AND table = 'product_events' AND active ORDER BY id",
        {"db": catalog.database},
    )
    for row in partitions[:-2]:
        await backend.command(f"OPTIMIZE TABLE {table} PARTITION ID '{row['id']}' FINAL")
    await backend.command(f"SYSTEM STOP MERGES {table}")
    for _ in range(600):
        running = await backend.query_rows(
            "SELECT count() AS n FROM system.merges WHERE database = {db:String}",
            {"db": catalog.database},
        )
        if not running[0]["n"]:
            break
        await asyncio.sleep(0.1)
    parts = await backend.query_rows(
        "SELECT count() AS parts, uniqExact(partition_id) AS partitions, sum(rows) AS rows "
        "FROM system.parts WHERE database = {db:String} AND table = 'product_events' AND active",
        {"db": catalog.database},
    )
    found = parts[0]
    return (
        f"{int(found['rows']):,} rows of 4 tenants in {found['parts']} parts, "
        f"{found['partitions']} partitions"
    )
