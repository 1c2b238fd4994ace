"""The budget's pure parts: token bucket, running counts, overrides, refusals and their mapping."""

from __future__ import annotations

import asyncio

import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from service.api.problem import problem_document
from service.api.status import error_status
from service.budgets import BudgetLimits, BudgetOverride, Budgets
from service.budgets.local import LocalCounters, TokenBucket
from service.catalog import Catalog
from service.errors import AnalyticsError, ErrorKind, query_timeout, rows_limit_exceeded
from service.query.compiler import CompiledQuery, QueryLimits, compile_query
from service.query.request import QueryRequest


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_grants_its_size_then_refills_at_the_rate() -> None:
    bucket = TokenBucket.full(rate=2.0, size=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)  # half a token came back
    assert bucket.take(0.5) == 0.0
    # Never more than its size, however long it waited.
    assert [bucket.take(1000.0) for _ in range(4)][-1] > 0


def test_local_counters_count_running_requests_per_tenant() -> None:
    counters = LocalCounters()
    assert counters.acquire("a", 2)
    assert counters.acquire("a", 2)
    assert not counters.acquire("a", 2)
    assert counters.acquire("b", 2)
    counters.release("a")
    assert counters.running("a") == 1
    assert counters.acquire("a", 2)


def test_override_replaces_only_what_it_sets_and_round_trips() -> None:
    defaults = BudgetLimits(10, 20, 4, 1000, 0)
    override = BudgetOverride(requests_per_second=100, rows_per_query=0)
    assert override.apply(defaults) == BudgetLimits(100, 20, 4, 0, 0)
    assert BudgetOverride.from_json(override.to_json()) == override
    assert BudgetOverride.from_json('{"burst": 3, "from_the_future": 1}') == BudgetOverride(burst=3)
    assert BudgetOverride().empty
    assert override.json_fields() == {"requestsPerSecond": 100, "rowsPerQuery": 0}
    with pytest.raises(AnalyticsError) as raised:
        BudgetOverride(concurrent_queries=-1)
    assert raised.value.violations[0].field == "budget.concurrentQueries"


def test_bucket_size_defaults_to_one_second_of_requests() -> None:
    assert BudgetLimits(requests_per_second=5).bucket_size == 5
    assert BudgetLimits(requests_per_second=0.2).bucket_size == 1
    assert BudgetLimits(requests_per_second=5, burst=9).bucket_size == 9


async def test_admit_refuses_over_rate_with_the_wait_and_counts_it() -> None:
    clock = Clock()
    budgets = Budgets(BudgetLimits(requests_per_second=1, burst=1), clock=clock)
    async with budgets.admit("t"):
        pass
    with pytest.raises(AnalyticsError) as raised:
        async with budgets.admit("t"):
            pass
    error = raised.value
    assert error.kind is ErrorKind.RESOURCE_EXHAUSTED
    assert error.reason == "BUDGET_REQUESTS_PER_SECOND"
    assert error.retry_after_seconds == pytest.approx(1.0)
    assert [(v.subject, v.limit) for v in error.quota_violations] == [
        ("tenant:t", "requests_per_second")
    ]
    assert budgets.metrics.refused.labels("t", "requests_per_second")._value.get() == 1
    clock.now += 1.0
    async with budgets.admit("t"):
        pass


async def test_admit_holds_a_running_slot_until_the_request_ends() -> None:
    budgets = Budgets(BudgetLimits(concurrent_queries=1))
    async with budgets.admit("t"):
        with pytest.raises(AnalyticsError) as raised:
            async with budgets.admit("t"):
                pass
        async with budgets.admit("other"):
            pass
    assert raised.value.quota_violations[0].limit == "concurrent_queries"
    assert raised.value.retry_after_seconds is not None
    async with budgets.admit("t"):
        pass


async def test_overrides_are_read_from_the_source_and_refreshed() -> None:
    class Source:
        def __init__(self) -> None:
            self.overrides = {"big": BudgetOverride(concurrent_queries=5)}
            self.reads = 0

        async def budget_overrides(self) -> dict[str, BudgetOverride]:
            self.reads += 1
            return dict(self.overrides)

    clock, source = Clock(), Source()
    budgets = Budgets(BudgetLimits(concurrent_queries=1), overrides=source, clock=clock)
    assert (await budgets.limits_for("big")).concurrent_queries == 5
    assert (await budgets.limits_for("small")).concurrent_queries == 1
    source.overrides = {}
    assert (await budgets.limits_for("big")).concurrent_queries == 5  # not read again yet
    assert source.reads == 1
    clock.now += 5.0
    # A refresh is read beside the requests: the one that starts it keeps the last overrides.
    assert (await budgets.limits_for("big")).concurrent_queries == 5
    await asyncio.sleep(0.01)
    assert (await budgets.limits_for("big")).concurrent_queries == 1
    budgets.forget_overrides()
    await budgets.limits_for("big")
    assert source.reads == 3


def _compiled(catalog: Catalog) -> CompiledQuery:
    return compile_query(
        QueryRequest(model="crm.deals"), catalog, "acme", QueryLimits(100, 1000, 1000)
    )


async def test_admission_bounds_queries_and_names_engine_stops(catalog: Catalog) -> None:
    budgets = Budgets(BudgetLimits(rows_per_query=1000, seconds_per_query=2.0))
    async with budgets.admit("t") as admission:
        bound = admission.bound(_compiled(catalog))
        assert bound.settings["max_rows_to_read"] == "1000"
        assert bound.settings["read_overflow_mode"] == "'throw'"
        assert admission.timeout(30.0) == 2.0
        assert admission.timeout(1.0) == 1.0  # the call's deadline is nearer
        rows = admission.translate(rows_limit_exceeded("Code: 158"), 30.0)
        assert (rows.reason, rows.retry_after_seconds) == ("BUDGET_ROWS_PER_QUERY", None)
        slow = admission.translate(query_timeout(2.0, "Code: 159"), 30.0)
        assert slow.quota_violations[0].limit == "seconds_per_query"
        # Stopped at the call's own time: the query timeout it always was.
        late = admission.translate(query_timeout(1.0, "Code: 159"), 1.0)
        assert late.reason == "QUERY_TIMEOUT"
    async with Budgets.unlimited().admit("t") as free:
        query = _compiled(catalog)
        assert free.bound(query) is query
        assert free.timeout(30.0) == 30.0


async def test_refusal_carries_quota_failure_and_retry_info_on_both_transports() -> None:
    budgets = Budgets(BudgetLimits(requests_per_second=4, burst=1))
    error = budgets.refusal("t", "requests_per_second", "at most 4 requests per second", 0.25)
    status = error_status(error)
    assert status.code.name == "RESOURCE_EXHAUSTED"
    decoded = status_pb2.Status()
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            decoded.ParseFromString(value)
    assert decoded.code == code_pb2.RESOURCE_EXHAUSTED
    kinds = {detail.type_url.rsplit(".", 1)[-1]: detail for detail in decoded.details}
    failure = error_details_pb2.QuotaFailure()
    kinds["QuotaFailure"].Unpack(failure)
    assert failure.violations[0].subject == "tenant:t"
    assert failure.violations[0].description.startswith("requests_per_second: ")
    retry = error_details_pb2.RetryInfo()
    kinds["RetryInfo"].Unpack(retry)
    assert retry.retry_delay.ToTimedelta().total_seconds() == 0.25
    document = problem_document(error, "trace")
    assert document["status"] == 429
    assert document["quotaViolations"] == [
        {
            "subject": "tenant:t",
            "limit": "requests_per_second",
            "description": "at most 4 requests per second",
        }
    ]
    assert document["retryAfterSeconds"] == 0.25


async def test_concurrent_first_requests_wait_for_one_read_and_failures_keep_the_last() -> None:
    class Source:
        def __init__(self) -> None:
            self.reads = 0
            self.fail = False

        async def budget_overrides(self) -> dict[str, BudgetOverride]:
            self.reads += 1
            await asyncio.sleep(0.01)
            if self.fail:
                raise OSError("engine gone")
            return {"big": BudgetOverride(concurrent_queries=5)}

    clock, source = Clock(), Source()
    budgets = Budgets(BudgetLimits(concurrent_queries=1), overrides=source, clock=clock)
    limits = await asyncio.gather(*(budgets.limits_for("big") for _ in range(5)))
    assert {each.concurrent_queries for each in limits} == {5}
    assert source.reads == 1
    source.fail = True
    budgets.forget_overrides()
    assert (await budgets.limits_for("big")).concurrent_queries == 5  # the last ones stay
    assert source.reads == 2
