"""Noisy neighbour: one tenant flooding at its full budget while N tenants run the dashboard.

One served process (result cache on, the shipped defaults for every budget) over the cache
benchmark's events (bench/cache_speed.py: its data, its dashboard of 12 queries). The flooding
tenant (the one holding most events) gets a small budget through
``TenantService.SetTenantBudget``, then keeps ``FLOOD_CALLERS`` callers sending group-bys over all
its events, each a new key (a miss, so the engine runs it); a refused caller waits the RetryInfo
delay, so the tenant runs at exactly its budget. The N dashboard tenants (each with a warm cache,
as a refreshed dashboard has) refresh together, each its 12 queries in turn:

* alone: no flood;
* with the flood, within its budget: their p95 against alone is the figure (target <= 1.5x);
* with the flood unbounded (its override lifts every limit): what the budget protects from.

N is 20 where the machine allows; the three benchmark tenants other than the flooder hold data
(10 % of the flooder's events each), the rest none (their dashboards are hits all the same).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from analytics.v1 import analytics_pb2, tenant_pb2, tenant_pb2_grpc
from bench import cache_speed, trend_speed
from bench.report import Figure, median, milliseconds, percentile
from bench.served_process import ServedProcess, copy_data
from service.auth import ADMIN_PERMISSION, mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import load_catalog
from service.schema import SYNC_STATE_TABLE, sync_state_table
from service.settings import Settings

FLOODER = trend_speed.TENANT
RATIO_TARGET = 1.5
FLOOD_CALLERS = 8
#: The flooder's budget: two heavy queries per second, one at a time (this machine has 2 cores).
FLOOD_BUDGET = {"requestsPerSecond": 2.0, "burst": 2, "concurrentQueries": 1}
UNBOUNDED = {"requestsPerSecond": 0.0, "burst": 0, "concurrentQueries": 0}


@dataclasses.dataclass
class Flood:
    """What the flooder got: answers and refusals."""

    answered: int = 0
    refused: int = 0
    seconds: float = 0.0


def _metadata(tenant: str, *permissions: str) -> tuple[tuple[str, str]]:
    token = mint_token(Settings(), subject="bench", tenant=tenant, permissions=list(permissions))
    return (("authorization", f"Bearer {token}"),)


def dashboard_tenants(count: int) -> list[str]:
    """The benchmark tenants with data first, then tenants of no data."""
    with_data = list(trend_speed.OTHER_TENANTS)
    return (with_data + [f"dashboard-{n:02d}" for n in range(count)])[:count]


async def _refresh(served: ServedProcess, tenant: str) -> list[float]:
    metadata = _metadata(tenant, "product.events.read")
    latencies = []
    for rpc, message, body in cache_speed.DASHBOARD:
        request = json_format.ParseDict(body, message())
        began = time.perf_counter()
        await getattr(served.stub, rpc)(request, metadata=metadata, timeout=120)
        latencies.append(time.perf_counter() - began)
    return latencies


async def _dashboards(served: ServedProcess, tenants: list[str], rounds: int) -> list[float]:
    """``rounds`` refreshes of every tenant's dashboard, all tenants at once each round."""
    samples: list[float] = []
    for _ in range(rounds):
        for latencies in await asyncio.gather(*(_refresh(served, t) for t in tenants)):
            samples += latencies
    return samples


async def _flood(served: ServedProcess, stop: asyncio.Event, flood: Flood) -> None:
    metadata = _metadata(FLOODER, "product.events.read")
    started = time.perf_counter()
    counter = 0

    async def caller() -> None:
        nonlocal counter
        while not stop.is_set():
            counter += 1
            # A new limit each time: a new key, so the engine runs it (a miss).
            body = {"model": cache_speed.MODEL, "groupBy": "contact_id", "limit": counter}
            request = json_format.ParseDict(body, analytics_pb2.QueryRequest())
            try:
                await served.stub.Query(request, metadata=metadata, timeout=120)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                flood.refused += 1
                await asyncio.sleep(_retry_delay(error))
            else:
                flood.answered += 1

    await asyncio.gather(*(caller() for _ in range(FLOOD_CALLERS)))
    flood.seconds = time.perf_counter() - started


def _retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(cast(grpc.Call, error))
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return 0.1


async def _with_flood(
    served: ServedProcess, tenants: list[str], rounds: int
) -> tuple[list[float], Flood]:
    stop, flood = asyncio.Event(), Flood()
    flooding = asyncio.create_task(_flood(served, stop, flood))
    await asyncio.sleep(1.0)  # the flood under way
    try:
        samples = await _dashboards(served, tenants, rounds)
    finally:
        stop.set()
        await flooding
    return samples, flood


async def _set_budget(served: ServedProcess, budget: dict[str, Any]) -> None:
    admin = _metadata("ops", ADMIN_PERMISSION)
    stub = tenant_pb2_grpc.TenantServiceStub(served.channel)
    await stub.ProvisionTenant(tenant_pb2.ProvisionTenantRequest(tenant_id=FLOODER), metadata=admin)
    request = tenant_pb2.SetTenantBudgetRequest(tenant_id=FLOODER)
    request.budget.CopyFrom(json_format.ParseDict(budget, tenant_pb2.TenantBudget()))
    await stub.SetTenantBudget(request, metadata=admin)


async def measure(
    backend: EmbeddedBackend,
    work: Path,
    *,
    events_count: int,
    tenants_count: int,
    rounds: int,
    judge: bool,
) -> list[Figure]:
    """Load, serve, time the dashboards alone and beside the flood; see the module docstring."""
    catalog_path = work / "budget_catalog.toml"
    catalog_path.write_text(cache_speed.catalog_text(), encoding="utf-8")
    catalog = load_catalog(catalog_path)
    await trend_speed.load_events(backend, catalog, events_count)
    report = {
        "table_name": cache_speed.TABLE,
        "source": "events",
        "last_sync_at": dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
        "updated_at": dt.datetime.now(dt.UTC),
        "state": "streaming",
    }
    await backend.insert_arrow(cache_speed.DATABASE, SYNC_STATE_TABLE, sync_state_table([report]))
    served_dir = work / "budget_served"
    await asyncio.to_thread(copy_data, work / "raw", served_dir)
    tenants = dashboard_tenants(tenants_count)
    env = {"ANALYTICS_RESULT_CACHE": "true"}
    served = await ServedProcess.start(served_dir, catalog_path, work / "serve_budget.log", env)
    try:
        await _set_budget(served, FLOOD_BUDGET)
        await _dashboards(served, tenants, 1)  # every dashboard's cache filled
        alone = await _dashboards(served, tenants, rounds)
        bounded, flood = await _with_flood(served, tenants, rounds)
        await _set_budget(served, UNBOUNDED)
        unbounded, free_flood = await _with_flood(served, tenants, rounds)
    finally:
        await served.stop()
        await asyncio.to_thread(shutil.rmtree, served_dir, True)
        await backend.command(f"DROP DATABASE `{cache_speed.DATABASE}` SYNC")
    label = trend_speed._label(events_count)
    ratio = percentile(bounded, 0.95) / percentile(alone, 0.95)
    rate = flood.answered / flood.seconds if flood.seconds else 0.0
    free_rate = free_flood.answered / free_flood.seconds if free_flood.seconds else 0.0
    budget = (
        f"{FLOOD_BUDGET['requestsPerSecond']:g} req/s, {FLOOD_BUDGET['concurrentQueries']} at once"
    )
    return [
        Figure(
            metric=f"Noisy neighbour: {len(tenants)} tenants' dashboards beside 1 tenant flooding "
            f"at its budget ({budget}), p95 per query, {label} ({rounds} refreshes of "
            f"{len(cache_speed.DASHBOARD)} queries each, warm cache; flooder {FLOOD_CALLERS} "
            f"callers, {flood.answered} answered ({rate:.1f}/s), {flood.refused} refused; "
            f"{min(len(tenants), len(trend_speed.OTHER_TENANTS))} dashboard tenants hold data)",
            a=_latencies(bounded) + " (with flood)",
            b=_latencies(alone) + " (alone)",
            ratio=ratio,
            target=f"p95 <= {RATIO_TARGET:g}x alone",
            passed=ratio <= RATIO_TARGET if judge else None,
            note="",
        ),
        Figure(
            metric=f"Noisy neighbour without a budget (the flooder's limits lifted), {label} "
            f"({free_flood.answered} answered, {free_rate:.1f}/s)",
            a=_latencies(unbounded) + " (with flood)",
            b=_latencies(alone) + " (alone)",
            ratio=percentile(unbounded, 0.95) / percentile(alone, 0.95),
            target="informative",
            passed=None,
            note="",
        ),
    ]


def _latencies(samples: list[float]) -> str:
    return f"p50 {milliseconds(median(samples))}, p95 {milliseconds(percentile(samples, 0.95))}"
