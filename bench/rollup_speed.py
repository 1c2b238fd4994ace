"""Rollups: dashboard queries answered by a rollup through gRPC, against the base table.

The data: the trend benchmark's events (``bench.trend_speed.load_events``: N events of the
benchmark tenant, a tenth of that for each of three others), in the shipped catalog, whose
rollups ``events_daily`` (event, platform, plan by day; count and revenue) and
``events_by_country_monthly`` (event, country by month) are built here with
``RollupKeeper.build`` (timed). ``analytics serve`` then runs on a copy of the
data directory with the result cache off and the refresher off (nothing changes), and each of
the dashboard's Query requests below is timed through gRPC (A: every answer must name the
rollup in ``meta.rollup``) against the same request compiled for the base table and run on the
raw engine in this process (B). Before timing, every request's rollup answer is checked equal
to the base table's on the raw engine.

A last row writes one event into the newest month after the build, so that its partition is
stale and read from the replica inside the rollup query (the freshness rule of README
"Rollups"), and times the routed queries on the raw engine again.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from analytics.v1 import analytics_pb2
from bench import trend_speed
from bench.report import Figure, median, milliseconds, percentile
from bench.served_process import ServedProcess, copy_data
from bench.shipped_catalog import shipped_catalog_text
from service.api.convert import query_request
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, load_catalog
from service.query.compiler import compile_query
from service.rollups.keeper import RollupKeeper
from service.rollups.routing import choose_rollup
from service.settings import Settings

DATABASE = "bench_rollup"
"""The benchmark's database (written out in the one INSERT below too)."""
TENANT = trend_speed.TENANT
MODEL = "product.events"
ROLLUPS = ("events_daily", "events_by_country_monthly")
TARGET_MS = 20.0
#: The dashboard's Query requests (proto3 JSON), each one the rollup can answer.
QUERIES: tuple[dict[str, Any], ...] = (
    {"model": MODEL},
    {"model": MODEL, "groupBy": "event"},
    {"model": MODEL, "groupBy": "country", "order": "count.desc", "limit": 10},
    {
        "model": MODEL,
        "groupBy": "event,country",
        "filters": {"timestamp": "gte.2026-10-01"},
        "order": "count.desc",
        "limit": 20,
    },
    {"model": MODEL, "groupBy": "platform", "filters": {"event": "eq.upgraded"}},
    {
        "model": MODEL,
        "groupBy": "timestamp",
        "groupByInterval": "month",
        "filters": {"event": "eq.purchase"},
    },
    {
        "model": MODEL,
        "groupBy": "timestamp",
        "groupByInterval": "day",
        "filters": {"timestamp": "gte.2026-11-01", "and": "(timestamp.lt.2026-12-01)"},
    },
    {
        "model": MODEL,
        "groupBy": "event,timestamp",
        "groupByInterval": "week",
        "filters": {"timestamp": "gte.2026-09-07"},
    },
    {"model": MODEL, "aggregate": "sum", "field": "revenue", "groupBy": "plan"},
)


def catalog_text() -> str:
    """The shipped catalog in this benchmark's database."""
    return shipped_catalog_text(DATABASE)


async def measure(
    backend: EmbeddedBackend, work: Path, *, events_count: int, runs: int, judge: bool
) -> list[Figure]:
    """Load, build, serve, time; see the module docstring."""
    catalog_path = work / "rollup_catalog.toml"
    catalog_path.write_text(catalog_text(), encoding="utf-8")
    catalog = load_catalog(catalog_path)
    await trend_speed.load_events(backend, catalog, events_count)
    keeper = RollupKeeper(catalog, backend)
    await keeper.prepare()
    began = time.perf_counter()
    await keeper.build(ROLLUPS)
    build_seconds = time.perf_counter() - began
    statuses = [s for s in await keeper.status() if s.name in ROLLUPS]
    partitions = sum(s.partitions for s in statuses)
    rollup_rows = sum(s.rows for s in statuses)
    await _check_equal(backend, catalog, keeper)
    base = await _base_latencies(backend, catalog, runs)
    served_dir = work / "rollup_served"
    await asyncio.to_thread(copy_data, work / "raw", served_dir)
    try:
        served = await _served_latencies(served_dir, catalog_path, work, runs)
    finally:
        await asyncio.to_thread(shutil.rmtree, served_dir, True)
    stale = await _stale_latencies(backend, catalog, keeper, runs)
    await backend.command(f"DROP DATABASE `{DATABASE}` SYNC")
    label = trend_speed._label(events_count)
    note = (
        f"{len(QUERIES)} Query requests x {runs} runs, each answer equal to the base table's; "
        f"rollups {rollup_rows:,} rows in {partitions} partitions"
    )
    return [
        Figure(
            metric=f"Rollup-served dashboard queries through gRPC, per query, {label}",
            a=_latencies(served) + " (rollup, gRPC)",
            b=_latencies(base) + " (base table, raw engine)",
            ratio=median(served) / median(base),
            target=f"p95 < {TARGET_MS:g} ms",
            passed=percentile(served, 0.95) * 1000 < TARGET_MS if judge else None,
            note=note,
        ),
        Figure(
            metric=f"Rollup-served, newest month's partition stale (read live), {label}",
            a=_latencies(stale) + " (rollup + live partition, raw engine)",
            b=_latencies(base) + " (base table, raw engine)",
            ratio=median(stale) / median(base),
            target="informative",
            passed=None,
            note="one event written after the build",
        ),
        Figure(
            metric=f"Rollup build, {label}",
            a=f"{build_seconds:.1f} s",
            b=f"{partitions} partitions, {rollup_rows:,} rollup rows",
            ratio=None,
            target="informative",
            passed=None,
            note=f"RollupKeeper.build of {', '.join(ROLLUPS)}, every partition stale",
        ),
    ]


def _requests() -> list[Any]:
    return [query_request(json_format.ParseDict(q, analytics_pb2.QueryRequest())) for q in QUERIES]


async def _check_equal(backend: EmbeddedBackend, catalog: Catalog, keeper: RollupKeeper) -> None:
    """Every query routed, and its rollup answer equal to the base table's."""
    model = catalog.models[("product", "events")]
    for number, request in enumerate(_requests()):
        rollup = choose_rollup(request, model)
        plan = await keeper.plan(model, rollup) if rollup else None
        if plan is None or plan.stale:
            raise RuntimeError(f"query {number} is not answered by a current rollup")
        base = compile_query(request, catalog, TENANT)
        routed = compile_query(request, catalog, TENANT, aggregated=plan)
        expected = await backend.execute(base, timeout_seconds=300, query_id=uuid.uuid4().hex)
        got = await backend.execute(routed, timeout_seconds=300, query_id=uuid.uuid4().hex)
        if got.table.to_pylist() != expected.table.to_pylist():
            raise RuntimeError(f"query {number}: the rollup answered differently")


async def _base_latencies(backend: EmbeddedBackend, catalog: Catalog, runs: int) -> list[float]:
    compiled = [compile_query(r, catalog, TENANT) for r in _requests()]
    return await _timed(backend, compiled, runs)


async def _timed(backend: EmbeddedBackend, compiled: Sequence[Any], runs: int) -> list[float]:
    samples = []
    for query in compiled:
        await backend.execute(query, timeout_seconds=300, query_id=uuid.uuid4().hex)
        for _ in range(runs):
            began = time.perf_counter()
            await backend.execute(query, timeout_seconds=300, query_id=uuid.uuid4().hex)
            samples.append(time.perf_counter() - began)
    return samples


async def _served_latencies(
    served_dir: Path, catalog_path: Path, work: Path, runs: int
) -> list[float]:
    env = {"ANALYTICS_RESULT_CACHE": "false", "ANALYTICS_ROLLUP_REFRESH_SECONDS": "0"}
    served = await ServedProcess.start(served_dir, catalog_path, work / "serve_rollup.log", env)
    token = mint_token(Settings(), subject="bench", tenant=TENANT, permissions=[f"{MODEL}.read"])
    metadata = (("authorization", f"Bearer {token}"),)
    samples = []
    try:
        for number, body in enumerate(QUERIES):
            request = json_format.ParseDict(body, analytics_pb2.QueryRequest())
            answer = await served.stub.Query(request, metadata=metadata, timeout=120)
            if answer.meta.rollup not in ROLLUPS:
                raise RuntimeError(f"query {number} was not answered by a rollup")
            for _ in range(runs):
                began = time.perf_counter()
                await served.stub.Query(request, metadata=metadata, timeout=120)
                samples.append(time.perf_counter() - began)
    finally:
        await served.stop()
    return samples


async def _stale_latencies(
    backend: EmbeddedBackend, catalog: Catalog, keeper: RollupKeeper, runs: int
) -> list[float]:
    """The routed queries once the newest month's partition changed after the build."""
    await backend.command(
        "INSERT INTO `bench_rollup`.`product_events` (tenant_id, event_id, event, contact_id, "
        "`timestamp`, _version) VALUES ({tenant:String}, generateUUIDv4(), 'page_viewed', 7, "
        "'2026-11-30 12:00:00', 1)",
        {"tenant": TENANT},
    )
    model = catalog.models[("product", "events")]
    compiled = []
    for request in _requests():
        rollup = choose_rollup(request, model)
        plan = await keeper.plan(model, rollup) if rollup else None
        if plan is None or len(plan.stale) != 1:
            raise RuntimeError("expected exactly one stale partition")
        compiled.append(compile_query(request, catalog, TENANT, aggregated=plan))
    return await _timed(backend, compiled, runs)


def _latencies(samples: Sequence[float]) -> str:
    return f"p50 {milliseconds(median(samples))}, p95 {milliseconds(percentile(samples, 0.95))}"
