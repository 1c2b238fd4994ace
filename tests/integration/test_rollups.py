"""Rollups on the embedded engine (README "Rollups").

The property: random requests on a replica under random CDC churn (inserts, updates, hard and
soft deletes, undeletes, replays of versions already written, with rollup builds at random points
between them, so that some partitions are current and some stale) answer the same rows whether
the router sends them to a rollup or the compiler reads the replica. Requests a rollup cannot
answer exactly (an unaligned time bound, a finer interval, another time zone, a field or measure
it lacks) must not be routed. Beside it: the gRPC path names the rollup in ``meta`` and caches
its answer, the CLI builds with progress and reports status, and a partition rewritten after a
build is read from the replica until rebuilt.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from service.api import convert
from service.api.server import start_server
from service.auth import mint_token
from service.backends.base import AnalyticsBackend
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.catalog import Catalog, parse_catalog
from service.insights.trend_request import TrendRequest, TrendSeries
from service.insights.trend_results import assemble_trend
from service.insights.trends import compile_trend
from service.query.compiler import compile_query
from service.query.request import MetricRequest, QueryRequest
from service.rollups.keeper import RollupKeeper
from service.rollups.routing import choose_rollup, choose_trend_rollup
from service.schema import KEYS_PER_PARTITION, all_ddl
from service.settings import Settings
from tests.chdb_http import ChdbOverHttp
from tests.conftest import unique_database
from tests.integration.test_compiler_on_engine import Row, insert_statement
from tests.integration.test_result_cache import report_sync
from tests.sql_shape import assert_tenant_first

pytestmark = pytest.mark.integration

#: The ``analytics`` command of the environment the tests run in.
ANALYTICS = str(Path(sys.executable).parent / "analytics")

ACME = "acme"
OTHER = "o'ther\\ten\tant"
REGIONS = ("north", "south", "east", "we'st")
START = dt.datetime(2026, 3, 20, tzinfo=dt.UTC)
MEASURES = [
    "count",
    "sum(amount)",
    "min(amount)",
    "max(amount)",
    "avg(amount)",
    "count_distinct(owner)",
    "count(score)",
    "max(placed_at)",
]


def rollup_catalog(database: str) -> Catalog:
    """Orders with a daily UTC rollup and a monthly Berlin one (DST within the data)."""
    return parse_catalog(
        {
            "database": database,
            "models": [
                {
                    "module": "shop",
                    "name": "orders",
                    "primary_key": ["id"],
                    "soft_delete_column": "deleted_at",
                    "fields": {
                        "id": "int",
                        "region": "enum",
                        "owner": "int?",
                        "paid": "bool",
                        "amount": "decimal(18,2)",
                        "score": "float?",
                        "placed_at": "timestamp",
                        "deleted_at": "timestamp?",
                    },
                    "rollups": [
                        {
                            "name": "orders_daily",
                            "dimensions": ["region", "owner", "paid"],
                            "time_field": "placed_at",
                            "grain": "day",
                            "measures": MEASURES,
                        },
                        {
                            "name": "orders_berlin_monthly",
                            "dimensions": ["region"],
                            "time_field": "placed_at",
                            "grain": "month",
                            "time_zone": "Europe/Berlin",
                            "measures": ["count", "sum(amount)"],
                        },
                    ],
                }
            ],
        }
    )


class Replica:
    """One database holding the orders replica, written version by version like CDC does."""

    def __init__(self, backend: AnalyticsBackend, catalog: Catalog) -> None:
        self.backend = backend
        self.catalog = catalog
        self.model = catalog.models[("shop", "orders")]
        self.keeper = RollupKeeper(catalog, backend)
        self.version = 0
        #: The last version written per (tenant, id): what replays re-send.
        self.latest: dict[tuple[str, int], Row] = {}

    async def write(self, rows: list[Row]) -> None:
        if rows:
            await self.backend.command(insert_statement(self.catalog, self.model, rows))

    def next_version(self) -> int:
        self.version += 1
        return self.version


@pytest.fixture(scope="module")
async def replica(embedded_backend: EmbeddedBackend) -> AsyncIterator[Replica]:
    catalog = rollup_catalog(unique_database("rollups"))
    for statement in all_ddl(catalog):
        await embedded_backend.command(statement)
    replica = Replica(embedded_backend, catalog)
    await replica.keeper.prepare()
    assert replica.keeper.enabled
    yield replica
    await embedded_backend.command(f"DROP DATABASE IF EXISTS `{catalog.database}`")


def order_values(rng: random.Random, key: int) -> dict[str, Any]:
    return {
        "id": key,
        "region": rng.choice(REGIONS),
        "owner": None if rng.random() < 0.2 else rng.randint(1, 6),
        "paid": rng.random() < 0.5,
        "amount": Decimal(rng.randint(-(10**6), 10**8)).scaleb(-2),
        "score": None if rng.random() < 0.3 else rng.choice([0.5, -0.0, 0.0, 2.25, 1e300]),
        "placed_at": START
        + dt.timedelta(hours=rng.randint(0, 24 * 50), microseconds=rng.choice([0, 1, 999_999])),
        "deleted_at": None,
    }


def churn(replica: Replica, rng: random.Random, count: int) -> list[Row]:
    """``count`` random changes: what a CDC stream of the source table would write."""
    rows = []
    for _ in range(count):
        tenant = ACME if rng.random() < 0.75 else OTHER
        known = [key for (t, key) in replica.latest if t == tenant]
        action = rng.choice(["insert", "insert", "update", "update", "delete", "soft", "replay"])
        if action == "insert" or not known:
            # Keys across four replica partitions, so that builds leave some stale.
            key = rng.randrange(4) * KEYS_PER_PARTITION + rng.randrange(10**5)
            row = Row(tenant, order_values(rng, key), replica.next_version(), 0)
        else:
            key = rng.choice(known)
            previous = replica.latest[(tenant, key)]
            if action == "replay":
                rows.append(previous)
                continue
            values = dict(previous.values)
            if action == "update":
                changed = order_values(rng, key)
                for name in rng.sample(sorted(changed), 3):
                    if name != "id":
                        values[name] = changed[name]
                values["deleted_at"] = None if rng.random() < 0.5 else values["deleted_at"]
            elif action == "soft":
                values["deleted_at"] = START + dt.timedelta(days=60)
            row = Row(tenant, values, replica.next_version(), int(action == "delete"))
        replica.latest[(tenant, key)] = row
        rows.append(row)
    return rows


def bound(rng: random.Random, aligned: bool, monthly: bool) -> str:
    """A day's first instant (a month's, mostly, if ``monthly``) or an hour within a day."""
    day = START + dt.timedelta(days=rng.randint(-2, 52))
    if rng.random() < (0.9 if monthly else 0.2):
        day = day.replace(day=1)
    if aligned:
        return day.date().isoformat()
    return (day + dt.timedelta(hours=rng.choice([1, 13]))).isoformat()


@st.composite
def requests(draw: st.DrawFn) -> QueryRequest:
    """Query requests on the orders, most of them answerable by a rollup."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    # A quarter of them shaped for the monthly Berlin rollup (its one dimension and measures).
    monthly = rng.random() < 0.25
    dimensions = ["region"] if monthly else ["region", "owner", "paid"]
    keys = rng.sample(dimensions, rng.randint(0, min(2, len(dimensions))))
    interval = ""
    if rng.random() < 0.6:
        keys.append("placed_at")
        choices = ["month", "quarter", "year"] if monthly else ["day", "week", "month", "hour"]
        interval = rng.choice(choices)
    rng.shuffle(keys)
    filters: dict[str, str] = {}
    if rng.random() < 0.5:
        filters["region"] = rng.choice(
            ["eq.north", "neq.south", 'in.(north,"we\'st")', "like.*th", "not.eq.east"]
        )
    if rng.random() < 0.3 and not monthly:
        filters["owner"] = rng.choice(["is.null", "not.is.null", "gt.3", "in.(1,2)"])
    if rng.random() < 0.2 and not monthly:
        filters["paid"] = rng.choice(["eq.true", "is.false"])
    if rng.random() < 0.5:
        filters["placed_at"] = f"gte.{bound(rng, rng.random() < 0.85, monthly)}"
    if rng.random() < 0.3:
        filters["and"] = (
            f"(placed_at.lt.{bound(rng, rng.random() < 0.85, monthly)},region.neq.east)"
        )
    if rng.random() < 0.1 and not monthly:
        filters["or"] = "(owner.eq.2,placed_at.is.null)"
    measures = ["count", "sum(amount)"] if monthly else MEASURES
    chosen = rng.sample(measures, rng.randint(1, 2 if monthly else 4))
    if rng.random() < 0.05:
        chosen.append("p90(amount)")  # no rollup keeps percentiles
    metrics = []
    for text in chosen:
        aggregate, _, rest = text.partition("(")
        metrics.append(MetricRequest(aggregate, rest.rstrip(")")))
    time_zone = "Europe/Berlin" if monthly else rng.choice(["", "", "UTC", "", "", "Europe/Berlin"])
    return QueryRequest(
        model="shop.orders",
        metrics=tuple(metrics),
        group_by=",".join(keys),
        group_by_interval=interval,
        filters=filters,
        order=",".join(f"{k}.asc" for k in keys),
        limit=10_000,
        time_zone=time_zone,
    )


async def answer(replica: Replica, request: QueryRequest, tenant: str) -> tuple[Any, str]:
    """The request's rows as routed (and the rollup used), after checking the base's rows."""
    rollup = choose_rollup(request, replica.model)
    plan = await replica.keeper.plan(replica.model, rollup) if rollup else None
    base = compile_query(request, replica.catalog, tenant)
    routed = compile_query(request, replica.catalog, tenant, aggregated=plan)
    assert_tenant_first(routed, tenant)
    expected = await replica.backend.execute(base, timeout_seconds=60, query_id=uuid.uuid4().hex)
    got = await replica.backend.execute(routed, timeout_seconds=60, query_id=uuid.uuid4().hex)
    assert got.table.to_pylist() == expected.table.to_pylist(), (routed.sql, base.sql)
    ROUTED.append((rollup.name if rollup else "", len(plan.stale) if plan else -1))
    return got.table.to_pylist(), routed.rollup


#: Per request of the tests: (the rollup chosen or "", stale partitions read live or -1 when
#: no partition was current, so the replica answered).
ROUTED: list[tuple[str, int]] = []


#: The property tests' settings: derandomized, as each example writes to one shared replica.
PROPERTY = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


async def churn_and_build(replica: Replica, rng: random.Random, rounds: int) -> None:
    """Rounds of churn, most followed by a build, and maybe a few changes after the last one:
    some partitions current, some read live, some never built."""
    for _ in range(rounds):
        await replica.write(churn(replica, rng, rng.randint(5, 60)))
        if rng.random() < 0.7:
            await replica.keeper.build()
    if rng.random() < 0.5:
        await replica.write(churn(replica, rng, rng.randint(1, 3)))


@settings(PROPERTY, max_examples=30)
@given(seed=st.integers(0, 2**32), batch=st.lists(requests(), min_size=6, max_size=6))
async def test_random_requests_under_churn_equal_the_base_table(
    replica: Replica, seed: int, batch: list[QueryRequest]
) -> None:
    rng = random.Random(seed)
    await churn_and_build(replica, rng, rng.randint(1, 3))
    for request in batch:
        note(repr(request))
        await answer(replica, request, rng.choice([ACME, ACME, OTHER]))


def test_the_property_routed_most_requests_to_a_rollup() -> None:
    """The property above is not vacuous: most requests were routed, to both rollups, with
    all partitions current, with some read live, and with none built yet."""
    assert ROUTED, "run with the property test"
    chosen = [name for name, _ in ROUTED]
    assert chosen.count("") < len(chosen) / 2
    assert {"orders_daily", "orders_berlin_monthly"} <= set(chosen)
    stale = [count for name, count in ROUTED if name]
    assert 0 in stale
    assert any(count > 0 for count in stale)
    assert -1 in stale


#: The instant relative trend dates are read against (the data's days are around START).
NOW = START + dt.timedelta(days=70)


@st.composite
def trend_requests(draw: st.DrawFn) -> TrendRequest:
    """Trend requests on the orders, most of them answerable by a rollup."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    monthly = rng.random() < 0.25
    measures = ["count", "sum(amount)"] if monthly else [*MEASURES[:6], "count(score)"]
    series = []
    for _ in range(rng.randint(1, 3)):
        aggregate, _, rest = rng.choice(measures).partition("(")
        filters: dict[str, str] = {}
        if rng.random() < 0.4:
            filters["region"] = rng.choice(["eq.north", 'in.(south,"we\'st")', "not.eq.east"])
        if rng.random() < 0.2 and not monthly:
            filters["owner"] = rng.choice(["is.null", "gt.3"])
        if rng.random() < 0.02:
            filters["id"] = "gt.5"  # not a dimension: the replica answers
        series.append(TrendSeries(aggregate, rest.rstrip(")"), filters))
    if rng.random() < 0.05:
        series.append(TrendSeries("p90", "amount"))  # no rollup keeps percentiles
    first = START + dt.timedelta(days=rng.randint(-2, 40))
    last = first + dt.timedelta(days=rng.randint(0, 30))
    if monthly or rng.random() < 0.2:
        first = first.replace(day=1)
    if monthly and rng.random() < 0.9:
        # The last day of a month: the range is whole months, as the monthly rollup needs.
        ahead = last.replace(day=28) + dt.timedelta(days=4)
        last = ahead.replace(day=1) - dt.timedelta(days=1)
    date_from = first.date().isoformat()
    if rng.random() < 0.05:
        date_from = (first + dt.timedelta(hours=5)).isoformat()  # not a bucket's start
    choices = (
        ["month", "quarter", "year"]
        if monthly
        else ["day", "day", "day", "week", "week", "month", "month", "hour"]
    )
    breakdown = ""
    if rng.random() < 0.4:
        breakdown = "region" if monthly else rng.choice(["region", "owner", "paid"] * 3 + ["score"])
    request_filters: dict[str, str] = {}
    if rng.random() < 0.3:
        request_filters["region"] = rng.choice(["neq.south", "like.*th"])
    return TrendRequest(
        model="shop.orders",
        series=tuple(series),
        date_from=date_from,
        date_to=last.date().isoformat(),
        interval=rng.choice(choices),
        time_zone="Europe/Berlin"
        if monthly
        else rng.choice(["", "", "UTC", "UTC", "", "Europe/Berlin"]),
        week_start=rng.choice(["", "sunday"]),
        date_field="placed_at",
        filters=request_filters,
        breakdown=breakdown,
        breakdown_limit=rng.choice([0, 1, 2]) if breakdown else 0,
        compare=rng.choice(["", "", "previous", "-1m"]),
        display="cumulative" if rng.random() < 0.05 else "",
    )


async def trend_answer(replica: Replica, request: TrendRequest, tenant: str) -> str:
    """The trend as routed equals the replica's; the rollup it was routed to ("" for none)."""
    base = compile_trend(request, replica.catalog, tenant, NOW)
    rollup = choose_trend_rollup(request, base)
    plan = await replica.keeper.plan(replica.model, rollup) if rollup else None
    routed = compile_trend(request, replica.catalog, tenant, NOW, aggregated=plan) if plan else base
    tables = []
    for plans in (base, routed):
        results = []
        for query in plans.queries:
            assert_tenant_first(query.compiled, tenant)
            result = await replica.backend.execute(
                query.compiled, timeout_seconds=60, query_id=uuid.uuid4().hex
            )
            results.append(result.table)
        tables.append(results)
    expected = assemble_trend(base, tables[0])
    got = assemble_trend(routed, tables[1])
    assert got == expected, [q.compiled.sql for q in routed.queries]
    name = rollup.name if rollup and plan else ""
    assert all(q.compiled.rollup == name for q in routed.queries)
    TRENDS_ROUTED.append((rollup.name if rollup else "", name))
    return name


#: Per trend of the tests: (the rollup chosen or "", the rollup that answered or "": none
#: answers before a build made a partition current).
TRENDS_ROUTED: list[tuple[str, str]] = []


@settings(PROPERTY, max_examples=20)
@given(seed=st.integers(0, 2**32), batch=st.lists(trend_requests(), min_size=6, max_size=6))
async def test_random_trends_under_churn_equal_the_base_table(
    replica: Replica, seed: int, batch: list[TrendRequest]
) -> None:
    rng = random.Random(seed)
    await churn_and_build(replica, rng, 1)
    for request in batch:
        note(repr(request))
        await trend_answer(replica, request, rng.choice([ACME, ACME, OTHER]))


def test_the_trend_property_routed_most_trends_to_a_rollup() -> None:
    """The trend property is not vacuous: most trends went to a rollup, both rollups served."""
    assert TRENDS_ROUTED, "run with the trend property test"
    chosen = [name for name, _ in TRENDS_ROUTED]
    assert chosen.count("") < len(chosen) / 2
    assert {"orders_daily", "orders_berlin_monthly"} <= {name for _, name in TRENDS_ROUTED}


def request_of(**fields: Any) -> QueryRequest:
    base = {"model": "shop.orders", "metrics": (MetricRequest("count"),)}
    return QueryRequest(**{**base, **fields})


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"group_by": "region"}, "orders_daily"),
        ({"group_by": "placed_at", "group_by_interval": "month"}, "orders_daily"),
        (
            {"group_by": "placed_at", "group_by_interval": "month", "time_zone": "Europe/Berlin"},
            "orders_berlin_monthly",
        ),
        ({"group_by": "region", "time_zone": "Asia/Kolkata"}, "orders_daily"),
        ({"filters": {"placed_at": "gte.2026-04-01"}}, "orders_daily"),
        # Not exact at the rollup's grain, zone, fields or measures: the replica answers.
        ({"group_by": "placed_at", "group_by_interval": "hour"}, None),
        ({"group_by": "placed_at"}, None),
        ({"filters": {"placed_at": "gte.2026-04-01T06:00:00"}}, None),
        ({"filters": {"placed_at": "gt.2026-04-01"}}, None),
        ({"filters": {"placed_at": "eq.2026-04-01"}}, None),
        ({"filters": {"placed_at": "gte.2026-04-01"}, "time_zone": "Asia/Kolkata"}, None),
        ({"filters": {"deleted_at": "not.is.null"}}, None),
        ({"filters": {"segment": "power_users"}}, None),
        ({"group_by": "score"}, None),
        ({"metrics": (MetricRequest("sum", "score"),)}, None),
        ({"metrics": (MetricRequest("p50", "amount"),)}, None),
        ({"filters": {"and": "(region.eq.north,id.gt.3)"}}, None),
    ],
)
def test_routing_decisions(
    replica: Replica, request_fields: dict[str, Any], expected: str | None
) -> None:
    chosen = choose_rollup(request_of(**request_fields), replica.model)
    assert (chosen.name if chosen else None) == expected


async def test_a_change_after_a_build_is_read_from_the_replica_until_rebuilt(
    replica: Replica,
) -> None:
    rng = random.Random(5)
    await replica.write(churn(replica, rng, 50))
    await replica.keeper.build()
    request = request_of(group_by="region", order="region.asc", limit=100)
    before, used = await answer(replica, request, ACME)
    assert used == "orders_daily"
    plan = await replica.keeper.plan(replica.model, replica.model.rollups[0])
    assert plan is not None
    assert not plan.stale
    # No write since: planned again from memory, without reading the engine's parts.
    listed = replica.keeper.listings
    assert await replica.keeper.plan(replica.model, replica.model.rollups[0]) == plan
    assert replica.keeper.listings == listed
    # One new row in the first partition (a key churn never writes): that partition alone is
    # stale, and read from the replica.
    row = Row(ACME, order_values(rng, 500_000), replica.next_version(), 0)
    row.values["region"] = "north"
    row.values["deleted_at"] = None
    await replica.write([row])
    replica.latest[(ACME, 500_000)] = row
    plan = await replica.keeper.plan(replica.model, replica.model.rollups[0])
    assert plan is not None
    assert plan.stale == ("0",)
    after, used = await answer(replica, request, ACME)
    assert used == "orders_daily"
    counts_before = {r["c0"]: r["c1"] for r in before}
    counts_after = {r["c0"]: r["c1"] for r in after}
    assert counts_after["north"] == counts_before.get("north", 0) + 1
    rebuilt = await replica.keeper.build(["orders_daily"])
    assert rebuilt == {"orders_daily": 1}
    plan = await replica.keeper.plan(replica.model, replica.model.rollups[0])
    assert plan is not None
    assert not plan.stale
    assert (await answer(replica, request, ACME))[0] == after
    statuses = {s.name: s for s in await replica.keeper.status()}
    assert statuses["orders_daily"].current == statuses["orders_daily"].partitions
    assert statuses["orders_daily"].rows > 0


async def test_grpc_names_the_rollup_and_caches_its_answer(
    replica: Replica, tmp_path: Path
) -> None:
    await replica.write(churn(replica, random.Random(13), 40))
    await replica.keeper.build()
    # A synced table: the result cache keeps answers of tables with a sync report only.
    await report_sync(replica.backend, replica.catalog, replica.model.table, START)
    settings = Settings(
        port=0, rest_port=None, data_dir=tmp_path / "unused", rollup_refresh_seconds=0.2
    )
    running = await start_server(settings, catalog=replica.catalog, backend=replica.backend)
    try:
        token = mint_token(settings, subject="t", tenant=ACME, permissions=("shop.orders.read",))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            message = json_format.ParseDict(
                {
                    "model": "shop.orders",
                    "aggregate": "sum",
                    "field": "amount",
                    "groupBy": "region,placed_at",
                    "groupByInterval": "month",
                    "order": "region.asc,placed_at.asc",
                },
                analytics_pb2.QueryRequest(),
            )
            metadata = (("authorization", f"Bearer {token}"),)
            first = await stub.Query(message, metadata=metadata)
            second = await stub.Query(message, metadata=metadata)
            assert first.meta.rollup == "orders_daily"
            assert second.meta.rollup == "orders_daily"
            assert second.meta.cache_hit
            assert list(first.data) == list(second.data)
            base = compile_query(
                QueryRequest(
                    model="shop.orders",
                    aggregate="sum",
                    field="amount",
                    group_by="region,placed_at",
                    group_by_interval="month",
                    order="region.asc,placed_at.asc",
                ),
                replica.catalog,
                ACME,
            )
            rows = await replica.backend.execute(base, timeout_seconds=60, query_id="b")
            assert len(first.data) == rows.table.num_rows
            # A write makes a partition stale; the refresher rebuilds it without any call.
            rng = random.Random(11)
            await replica.write(churn(replica, rng, 3))
            keeper_plan = None
            for _ in range(100):
                await asyncio.sleep(0.1)
                keeper_plan = await replica.keeper.plan(replica.model, replica.model.rollups[0])
                if keeper_plan is not None and not keeper_plan.stale:
                    break
            assert keeper_plan is not None
            assert not keeper_plan.stale
            # A request no rollup answers says so by leaving meta.rollup empty.
            raw = json_format.ParseDict(
                {"model": "shop.orders", "groupBy": "placed_at"}, analytics_pb2.QueryRequest()
            )
            assert (await stub.Query(raw, metadata=metadata)).meta.rollup == ""
            # StreamQuery is routed too: the same rows, and the last message names the rollup.
            streamed = [m async for m in stub.StreamQuery(message, metadata=metadata)]
            assert streamed[-1].meta.rollup == "orders_daily"
            now = await replica.backend.execute(base, timeout_seconds=60, query_id="c")
            assert sum(m.chunk.row_count for m in streamed[:-1]) == now.table.num_rows
            # And Trend: the rollup answers, a hit says which, REST's JSON carries it too.
            trend = json_format.ParseDict(
                {
                    "model": "shop.orders",
                    "series": [{"aggregate": "sum", "field": "amount"}, {"aggregate": "count"}],
                    "dateFrom": "2026-03-01",
                    "dateTo": "2026-05-31",
                    "interval": "month",
                    "dateField": "placed_at",
                    "breakdown": "region",
                },
                analytics_pb2.TrendRequest(),
            )
            routed = await stub.Trend(trend, metadata=metadata)
            again = await stub.Trend(trend, metadata=metadata)
            assert routed.meta.rollup == again.meta.rollup == "orders_daily"
            assert again.meta.cache_hit
            assert convert.trend_json(again)["meta"]["rollup"] == "orders_daily"
            expected = await trend_answer(replica, convert.trend_request(trend), ACME)
            assert expected == "orders_daily"
            assert list(routed.lines) == list(again.lines)
            plain = analytics_pb2.TrendRequest()
            plain.CopyFrom(trend)
            plain.interval = "hour"
            assert (await stub.Trend(plain, metadata=metadata)).meta.rollup == ""
    finally:
        await running.stop(0)


def test_cli_builds_with_progress_and_reports_status(tmp_path: Path) -> None:
    """``analytics rollups build|status`` on an engine of its own (a data directory per process:
    the CLI runs in a subprocess)."""
    catalog_file = tmp_path / "catalog.toml"
    catalog_file.write_text(CLI_CATALOG)
    script = (
        "import asyncio, pathlib, sys\n"
        "from service.backends.embedded import EmbeddedBackend\n"
        "from service.catalog import load_catalog\n"
        "from service.schema import all_ddl\n"
        "async def load():\n"
        f"    catalog = load_catalog(pathlib.Path({str(catalog_file)!r}))\n"
        f"    backend = EmbeddedBackend(pathlib.Path({str(tmp_path / 'data')!r}))\n"
        "    for s in all_ddl(catalog): await backend.command(s)\n"
        '    await backend.command("INSERT INTO clidb.crm_deals (tenant_id, id, stage, amount, '
        "created_at, _version, _is_deleted) SELECT 'acme', number * 300000, 'won', number, "
        'now64(), 1, 0 FROM numbers(10)")\n'
        "    await backend.close()\n"
        "asyncio.run(load())\n"
    )
    run([sys.executable, "-c", script])
    common = ["--data-dir", str(tmp_path / "data"), "--catalog", str(catalog_file)]
    built = run([ANALYTICS, "rollups", "build", *common])
    report = json.loads(built.stdout)
    assert report["partitionsBuilt"] == {"deals_by_stage": 3}
    assert "3/3 partitions" in built.stderr
    status = run([ANALYTICS, "rollups", "status", *common])
    [rollup] = json.loads(status.stdout)["rollups"]
    assert rollup["name"] == "deals_by_stage"
    assert rollup["partitions"] == rollup["current"] == 3
    unknown = run([ANALYTICS, "rollups", "build", "nope", *common], check=False)
    assert unknown.returncode == 2
    assert "no rollup nope" in unknown.stderr


def run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command of this environment, its output captured."""
    return subprocess.run(  # noqa: S603 (the test's own commands)
        command, check=check, timeout=120, capture_output=True, text=True
    )


CLI_CATALOG = """
database = "clidb"

[[models]]
module = "crm"
name = "deals"
primary_key = ["id"]

[models.fields]
id = "int"
stage = "enum"
amount = "decimal(18,2)"
created_at = "timestamp"

[[models.rollups]]
name = "deals_by_stage"
dimensions = ["stage"]
time_field = "created_at"
grain = "day"
measures = ["count", "sum(amount)"]
"""


async def test_over_http_the_rollup_answers_as_the_base_table(
    embedded_backend: EmbeddedBackend, chdb_front: ChdbOverHttp
) -> None:
    """The keeper's statements (DDL typed by ``EMPTY AS SELECT``, builds with bound parameters,
    partition drops) through the HTTP backend, on a modern engine behind ClickHouse's HTTP
    protocol."""
    http = HttpBackend(chdb_front.url, pool_size=2)
    catalog = rollup_catalog(unique_database("rollups_http"))
    try:
        for statement in all_ddl(catalog):
            await http.command(statement)
        replica = Replica(http, catalog)
        await replica.keeper.prepare()
        assert replica.keeper.enabled
        rng = random.Random(3)
        await replica.write(churn(replica, rng, 80))
        assert await replica.keeper.build() == {"orders_daily": 4, "orders_berlin_monthly": 4}
        await replica.write(churn(replica, rng, 2))
        request = request_of(
            group_by="region,placed_at",
            group_by_interval="month",
            metrics=(MetricRequest("count"), MetricRequest("sum", "amount")),
            order="region.asc,placed_at.asc",
            limit=1000,
        )
        rows, used = await answer(replica, request, ACME)
        assert used == "orders_daily"
        assert rows
    finally:
        await http.command(f"DROP DATABASE IF EXISTS `{catalog.database}`")
        await http.close()


async def test_a_rollup_waits_for_its_models_table(embedded_backend: EmbeddedBackend) -> None:
    """The service never creates a replica: a rollup of a model whose table the writers have
    not made yet stays off (the base path answers) until a build finds the table."""
    catalog = rollup_catalog(unique_database("rollups_wait"))
    keeper = RollupKeeper(catalog, embedded_backend)
    try:
        await keeper.prepare()
        model = catalog.models[("shop", "orders")]
        assert keeper.enabled
        assert await keeper.plan(model, model.rollups[0]) is None
        assert await keeper.build() == {}
        tables = await embedded_backend.query_rows(
            "SELECT name FROM system.tables WHERE database = {d:String}",
            {"d": catalog.database},
        )
        assert model.table not in {row["name"] for row in tables}
        for statement in all_ddl(catalog):
            await embedded_backend.command(statement)
        replica = Replica(embedded_backend, catalog)
        await replica.write(churn(replica, random.Random(1), 10))
        assert set(await keeper.build()) == {"orders_daily", "orders_berlin_monthly"}
        assert await keeper.plan(model, model.rollups[0]) is not None
    finally:
        await embedded_backend.command(f"DROP DATABASE IF EXISTS `{catalog.database}`")


async def test_a_recreated_replica_is_not_served_from_the_old_generation(
    embedded_backend: EmbeddedBackend,
) -> None:
    """Dropped and re-created (as a backfill into a new layout does), a replica's block
    numbers start again: the same partition written once reads the same block and data version
    as before. The rollup must read it live, not serve the old table's generation."""
    catalog = rollup_catalog(unique_database("rollups_recreate"))
    try:
        for statement in all_ddl(catalog):
            await embedded_backend.command(statement)
        replica = Replica(embedded_backend, catalog)
        await replica.keeper.prepare()
        model = replica.model
        old = Row(ACME, order_values(random.Random(1), 5), 1, 0)
        old.values["region"] = "north"
        await replica.write([old])
        await replica.keeper.build(["orders_daily"])
        before = await replica.keeper.plan(model, model.rollups[0])
        assert before is not None
        assert not before.stale
        table = f"`{catalog.database}`.`{model.table}`"
        await embedded_backend.command(f"DROP TABLE {table} SYNC")
        for statement in all_ddl(catalog):
            await embedded_backend.command(statement)
        new = Row(ACME, order_values(random.Random(2), 5), 1, 0)
        new.values["region"] = "south"
        await replica.write([new])
        assert await replica.keeper.plan(model, model.rollups[0]) is None
        request = request_of(group_by="region", order="region.asc", limit=10)
        rows, _ = await answer(replica, request, ACME)
        assert rows == [{"c0": "south", "c1": 1}]
    finally:
        await embedded_backend.command(f"DROP DATABASE IF EXISTS `{catalog.database}`")
