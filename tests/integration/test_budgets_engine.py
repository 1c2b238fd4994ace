"""The engine's own budget limits on both backends: the embedded chDB and a ClickHouse server.

A query bounded by a tenant's ``rows_per_query`` (``max_rows_to_read``, ``read_overflow_mode``)
is stopped by the engine and reported as that limit; one bounded by ``seconds_per_query``
(``max_execution_time``) is stopped there and reported as that limit, while the same stop at
the call's own time stays the query timeout. The server is the one ``conftest`` starts (the
Debian 18.16 package here, or ``LOCAL_STACK_CLICKHOUSE_URL``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.backends.base import AnalyticsBackend
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.budgets import BudgetLimits, Budgets
from service.catalog import Catalog
from service.errors import AnalyticsError, ErrorKind
from service.query.compiler import CompiledQuery, OutputColumn

pytestmark = pytest.mark.integration

#: Reads ten million rows: far past a rows budget of a thousand. (``system.numbers``: 18.16
#: counts the rows of ``numbers(N)`` against no limit; replica tables are MergeTree, which it does.)
BIG_SCAN = "SELECT count() AS n FROM (SELECT number FROM system.numbers LIMIT 10000000)"
#: Runs for seconds (a row at a time, 10 ms each), unless stopped.
SLOW = "SELECT sum(sleepEachRow(0.01)) AS n FROM numbers(1000) SETTINGS max_block_size = 1"


def scan(catalog: Catalog, sql: str) -> CompiledQuery:
    model = catalog.models[("crm", "deals")]
    return CompiledQuery(sql, {}, (OutputColumn("n", "n", "integer"),), model, 0, {})


@pytest.fixture(params=["embedded", "server"])
async def engine(
    request: pytest.FixtureRequest, embedded_backend: EmbeddedBackend
) -> AsyncIterator[AnalyticsBackend]:
    if request.param == "embedded":
        yield embedded_backend
        return
    server = request.getfixturevalue("server")
    http = HttpBackend(server.url, pool_size=2)
    try:
        yield http
    finally:
        await http.close()


async def run(
    engine: AnalyticsBackend, catalog: Catalog, sql: str, limits: BudgetLimits, call: float
) -> AnalyticsError:
    async with Budgets(limits).admit("t") as admission:
        with pytest.raises(AnalyticsError) as raised:
            await engine.execute(
                admission.bound(scan(catalog, sql)),
                timeout_seconds=admission.timeout(call),
                query_id="budget-test",
            )
        return admission.translate(raised.value, call)


async def test_rows_budget_stops_the_scan_in_the_engine(
    engine: AnalyticsBackend, catalog: Catalog
) -> None:
    error = await run(engine, catalog, BIG_SCAN, BudgetLimits(rows_per_query=1000), 30.0)
    assert error.kind is ErrorKind.RESOURCE_EXHAUSTED
    assert error.reason == "BUDGET_ROWS_PER_QUERY"
    assert [v.limit for v in error.quota_violations] == ["rows_per_query"]
    # Without the budget the same scan answers.
    async with Budgets.unlimited().admit("t") as admission:
        result = await engine.execute(
            admission.bound(scan(catalog, BIG_SCAN)), timeout_seconds=30, query_id="budget-ok"
        )
    assert result.table.column(0).to_pylist() == [10_000_000]


async def test_time_budget_stops_the_query_in_the_engine(
    engine: AnalyticsBackend, catalog: Catalog
) -> None:
    error = await run(engine, catalog, SLOW, BudgetLimits(seconds_per_query=1.0), 30.0)
    assert error.kind is ErrorKind.RESOURCE_EXHAUSTED
    assert [v.limit for v in error.quota_violations] == ["seconds_per_query"]
    # The call's own time is the nearer one: the query timeout, as always.
    late = await run(engine, catalog, SLOW, BudgetLimits(seconds_per_query=5.0), 1.0)
    assert late.kind is ErrorKind.TIMEOUT
