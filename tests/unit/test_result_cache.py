"""The result cache's pure parts: the key, the in-process store, Arrow round trips, single flight.

The engine and Redis are exercised in tests/integration/test_result_cache.py; here the runs are
coroutines that count themselves, so the single-flight and cancellation rules are exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from service.backends.base import QueryResult, QueryStats
from service.cache import CacheMetrics, ResultCache, build_result_cache
from service.cache.key import TablePosition, cache_key, oldest_sync_at, volatile
from service.cache.stores import (
    ENTRY_OVERHEAD_BYTES,
    LocalStore,
    RedisStore,
    StoreUnavailableError,
    decode_entry,
    decode_table,
    encode_entry,
    encode_table,
    table_bytes,
)
from service.errors import AnalyticsError, ErrorKind
from service.query.compiler import compile_query
from service.query.request import QueryRequest
from service.settings import Settings
from tests.strategies import CATALOG

AT = dt.datetime(2026, 4, 1, 12, tzinfo=dt.UTC)
SCOPE = "chdb:analytics"


def _compiled(tenant: str = "acme", **changes: Any):
    request = dataclasses.replace(QueryRequest(model="crm.deals", group_by="stage"), **changes)
    return compile_query(request, CATALOG, tenant)


def _positions(**changes: Any) -> dict[str, TablePosition]:
    position = dataclasses.replace(TablePosition("crm_deals", AT, 3, 12345), **changes)
    return {"crm_deals": position}


# --- the key ----------------------------------------------------------------------------------


def test_key_is_stable_and_names_every_input() -> None:
    query = _compiled()
    key = cache_key("acme", SCOPE, query, _positions())
    assert key is not None
    assert key == cache_key("acme", SCOPE, _compiled(), _positions())
    assert len(key) == 64
    others = {
        "tenant": cache_key("globex", SCOPE, _compiled("globex"), _positions()),
        "tenant only": cache_key("globex", SCOPE, query, _positions()),
        "scope": cache_key("acme", "chdb:other", query, _positions()),
        "parameters": cache_key(
            "acme", SCOPE, _compiled(filters={"stage": "eq.won"}), _positions()
        ),
        "settings": cache_key(
            "acme", SCOPE, dataclasses.replace(query, settings={"x": "1"}), _positions()
        ),
        "sql": cache_key("acme", SCOPE, _compiled(group_by="currency"), _positions()),
        "lastSyncAt": cache_key(
            "acme", SCOPE, query, _positions(last_sync_at=AT + dt.timedelta(microseconds=1))
        ),
        "parts": cache_key("acme", SCOPE, query, _positions(parts=4)),
        "fingerprint": cache_key("acme", SCOPE, query, _positions(fingerprint=12346)),
    }
    assert None not in others.values()
    assert len({key, *others.values()}) == len(others) + 1


def test_tenant_parameter_alone_changes_the_key() -> None:
    """Same SQL shape for two tenants: the tenant is a bound parameter, and in the key itself."""
    acme, globex = _compiled("acme"), _compiled("globex")
    assert acme.sql == globex.sql
    assert acme.parameters != globex.parameters
    assert cache_key("acme", SCOPE, acme, _positions()) != cache_key(
        "globex", SCOPE, globex, _positions()
    )


def test_unsynced_or_unknown_table_is_not_cached() -> None:
    query = _compiled()
    assert cache_key("acme", SCOPE, query, _positions(last_sync_at=None)) is None
    assert cache_key("acme", SCOPE, query, {}) is None


def test_joined_table_positions_count() -> None:
    query = _compiled(group_by="contact.country")
    assert set(query.tables) == {"crm_deals", "crm_contacts"}
    both = {
        **_positions(),
        "crm_contacts": TablePosition("crm_contacts", AT, 1, 7),
    }
    key = cache_key("acme", SCOPE, query, both)
    assert key is not None
    moved = {**both, "crm_contacts": TablePosition("crm_contacts", AT, 2, 8)}
    assert cache_key("acme", SCOPE, query, moved) != key
    assert cache_key("acme", SCOPE, query, _positions()) is None  # contacts' position missing
    assert oldest_sync_at(both, query.tables) == AT
    later = {
        **both,
        "crm_contacts": TablePosition("crm_contacts", AT + dt.timedelta(hours=1), 1, 7),
    }
    assert oldest_sync_at(later, query.tables) == AT
    assert (
        oldest_sync_at(
            {**both, "crm_contacts": TablePosition("crm_contacts", None, 0, 0)}, query.tables
        )
        is None
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count() FROM t WHERE ts >= now64(6, 'UTC') - toIntervalSecond({p1:Int64})",
        "SELECT now() AS x",
        "SELECT today()",
        "SELECT rand() % 10",
        "SELECT generateUUIDv4()",
    ],
)
def test_volatile_sql_is_not_cached(sql: str) -> None:
    assert volatile(sql)
    query = dataclasses.replace(_compiled(), sql=sql)
    assert cache_key("acme", SCOPE, query, _positions()) is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT `_version`, toTimeZone(ts, 'UTC') AS known_now FROM t",
        "SELECT count() AS randomness, max(`version`) FROM t",
    ],
)
def test_names_that_merely_contain_volatile_words_are_cached(sql: str) -> None:
    assert not volatile(sql)


def test_compiled_queries_of_the_catalog_are_not_volatile() -> None:
    assert not volatile(_compiled().sql)
    assert not volatile(_compiled(group_by="contact.country", group_by_interval="").sql)


# --- Arrow round trips and the in-process store --------------------------------------------


def _table(rows: int = 3) -> pa.Table:
    return pa.table(
        {
            "n": pa.array(range(rows), pa.int64()),
            "amount": pa.array([Decimal("1.25")] * rows, pa.decimal128(18, 2)),
            "at": pa.array([AT] * rows, pa.timestamp("us", tz="UTC")),
            "label": pa.array(["x", None, "日本"][:rows] + ["y"] * max(rows - 3, 0)),
        }
    )


def _answer(table: pa.Table) -> QueryResult:
    return QueryResult(table, QueryStats(rows_scanned=8192, elapsed_ms=1.5))


def test_arrow_round_trip_keeps_types_and_values() -> None:
    table = _table()
    back = decode_table(encode_table(table))
    assert back.schema == table.schema
    assert back.equals(table)
    empty = pa.table({"count": pa.array([], pa.null())})
    assert decode_table(encode_table(empty)).equals(empty)
    entry = decode_entry(encode_entry(_answer(table)))
    assert entry.table.equals(table)
    assert entry.stats == QueryStats(rows_scanned=8192, elapsed_ms=1.5)
    assert entry.rollup == ""
    # The rollup that computed an answer travels with it (a hit's meta.rollup).
    routed = decode_entry(encode_entry(QueryResult(table, entry.stats, "deals_daily")))
    assert routed.rollup == "deals_daily"
    assert routed.table.equals(table)


async def test_local_store_drops_least_recently_used_by_bytes() -> None:
    tables = {name: _table(rows) for name, rows in (("a", 100), ("b", 100), ("c", 100))}
    size = table_bytes(tables["a"]) + 1 + ENTRY_OVERHEAD_BYTES
    metrics = CacheMetrics()
    store = LocalStore(2 * size + 10, metrics)
    await store.put("a", _answer(tables["a"]))
    await store.put("b", _answer(tables["b"]))
    stored = await store.get("a")  # a is now the most recently used
    assert stored is not None
    assert stored.table is tables["a"]
    await store.put("c", _answer(tables["c"]))
    assert "b" not in store
    assert "a" in store
    assert "c" in store
    assert store.bytes == 2 * size <= store.max_bytes
    assert metrics.evictions._value.get() == 1
    assert metrics.stored_bytes._value.get() == store.bytes


async def test_local_store_skips_an_entry_larger_than_the_bound() -> None:
    metrics = CacheMetrics()
    store = LocalStore(100, metrics)
    await store.put("a", _answer(_table(100)))
    assert len(store) == 0
    assert metrics.too_large._value.get() == 1


# --- single flight ------------------------------------------------------------------------------


class Runs:
    """A query that counts its runs and waits for ``release``."""

    def __init__(self, fail: bool = False) -> None:
        self.count = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = 0
        self.fail = fail

    async def __call__(self) -> QueryResult:
        self.count += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            raise AnalyticsError(ErrorKind.TIMEOUT, "too slow", "QUERY_TIMEOUT")
        return QueryResult(_table(), QueryStats(rows_scanned=10, elapsed_ms=3.0))


def _cache(max_bytes: int = 1 << 20) -> ResultCache:
    metrics = CacheMetrics()
    return ResultCache(LocalStore(max_bytes, metrics), metrics, max_bytes)


async def test_identical_misses_run_once_and_later_calls_hit() -> None:
    cache = _cache()
    run = Runs()
    calls = [asyncio.create_task(cache.fetch("k", run, budget_seconds=5)) for _ in range(10)]
    await run.started.wait()
    await asyncio.sleep(0)
    run.release.set()
    answers = await asyncio.gather(*calls)
    assert run.count == 1
    assert sorted(hit for _, hit in answers) == [False] + [True] * 9
    leader = next(result for result, hit in answers if not hit)
    assert leader.stats.rows_scanned == 10
    # Every answer carries the figures of the one run (meta equal to a fresh answer's).
    assert all(r.stats == leader.stats for r, _ in answers)
    assert all(r.table.equals(leader.table) for r, _ in answers)
    result, hit = await cache.fetch("k", run, budget_seconds=5)
    assert hit
    assert run.count == 1
    assert result.stats == leader.stats
    assert cache.metrics.requests.labels("shared")._value.get() == 9
    assert cache.metrics.requests.labels("hit")._value.get() == 1


async def test_no_key_runs_every_time() -> None:
    cache = _cache()
    run = Runs()
    run.release.set()
    for _ in range(3):
        _, hit = await cache.fetch(None, run, budget_seconds=5)
        assert not hit
    assert run.count == 3


async def test_leader_cancelled_leaves_the_followers_their_answer() -> None:
    cache = _cache()
    run = Runs()
    leader = asyncio.create_task(cache.fetch("k", run, budget_seconds=5))
    await run.started.wait()
    follower = asyncio.create_task(cache.fetch("k", run, budget_seconds=5))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    run.release.set()
    result, hit = await follower
    assert hit
    assert result.table.equals(_table())
    assert run.cancelled == 0


async def test_every_caller_gone_stops_the_query() -> None:
    cache = _cache()
    run = Runs()
    calls = [asyncio.create_task(cache.fetch("k", run, budget_seconds=5)) for _ in range(3)]
    await run.started.wait()
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(0)
    assert run.cancelled == 1
    assert not cache._flights
    run.release.set()
    _, hit = await cache.fetch("k", run, budget_seconds=5)
    assert not hit  # nothing was stored
    assert run.count == 2


async def test_a_failure_reaches_every_waiter_and_is_not_stored() -> None:
    cache = _cache()
    run = Runs(fail=True)
    calls = [asyncio.create_task(cache.fetch("k", run, budget_seconds=5)) for _ in range(3)]
    await run.started.wait()
    run.release.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, AnalyticsError) for o in outcomes)
    assert run.count == 1
    run.fail = False
    _, hit = await cache.fetch("k", run, budget_seconds=5)
    assert not hit
    assert run.count == 2


async def test_answers_over_the_entry_bound_are_not_stored() -> None:
    metrics = CacheMetrics()
    cache = ResultCache(LocalStore(1 << 20, metrics), metrics, max_entry_bytes=10)
    run = Runs()
    run.release.set()
    await cache.fetch("k", run, budget_seconds=5)
    _, hit = await cache.fetch("k", run, budget_seconds=5)
    assert not hit
    assert metrics.too_large._value.get() == 2


class BrokenStore(LocalStore):
    """A store whose every operation fails, as Redis does while it is down."""

    async def get(self, key: str) -> QueryResult | None:
        raise StoreUnavailableError("down")


async def test_unavailable_store_answers_uncached() -> None:
    metrics = CacheMetrics()
    cache = ResultCache(BrokenStore(1 << 20, metrics), metrics, 1 << 20)
    run = Runs()
    run.release.set()
    for _ in range(2):
        result, hit = await cache.fetch("k", run, budget_seconds=5)
        assert not hit
        assert result.stats.rows_scanned == 10
    assert metrics.requests.labels("unavailable")._value.get() == 2


# --- settings ---------------------------------------------------------------------------------


def test_settings_choose_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYTICS_REDIS_URL", "")
    settings = Settings()
    assert settings.redis_url is None
    cache = build_result_cache(settings)
    assert cache is not None
    assert isinstance(cache.store, LocalStore)
    assert cache.store.max_bytes == settings.result_cache_bytes
    monkeypatch.setenv("ANALYTICS_REDIS_URL", "redis://127.0.0.1:1/0")
    cache = build_result_cache(Settings())
    assert cache is not None
    assert isinstance(cache.store, RedisStore)
    assert build_result_cache(Settings(result_cache=False)) is None
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(redis_url="http://127.0.0.1:1")
