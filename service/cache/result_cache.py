"""ResultCache: answers by key, with single flight, over one store.

``fetch(key, run)``: the stored answer if there is one; else ``run()`` once for every identical
request in flight (in this process through a shared task, across processes through the store's
claim), and the answer stored. A store that fails never fails the query: it is answered
uncached, and the store logs and counts the failure.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from service.backends.base import AnalyticsBackend, QueryResult
from service.cache.key import TablePosition, cache_key
from service.cache.metrics import CacheMetrics
from service.cache.positions import PositionReader
from service.cache.stores import CacheStore, StoreUnavailableError, table_bytes
from service.query.compiler import CompiledQuery

#: How long a claim outlives the query budget (a process that died holding one frees it then).
_CLAIM_MARGIN_SECONDS = 1.0
#: First and longest pause between two looks at an answer another process computes.
_POLL_FIRST = 0.002
_POLL_LONGEST = 0.05


@dataclass
class _Flight:
    """One key being answered in this process, and how many callers wait for it."""

    task: asyncio.Task[tuple[QueryResult, bool]]
    waiters: int = 0


@dataclass
class ResultCache:
    """See the module docstring. ``max_entry_bytes``: larger answers are not stored."""

    store: CacheStore
    metrics: CacheMetrics
    max_entry_bytes: int
    reader: PositionReader = field(default_factory=PositionReader)
    _flights: dict[str, _Flight] = field(default_factory=dict)

    def key(
        self, tenant: str, scope: str, query: CompiledQuery, positions: Mapping[str, TablePosition]
    ) -> str | None:
        """``service.cache.key.cache_key``; None (and counted) when it must not be cached."""
        found = cache_key(tenant, scope, query, positions)
        if found is None:
            self.metrics.requests.labels("uncacheable").inc()
        return found

    async def positions(
        self, backend: AnalyticsBackend, database: str, tables: Sequence[str]
    ) -> dict[str, TablePosition]:
        """The tables' positions, read now (timed in the metrics)."""
        started = time.perf_counter()
        try:
            return await self.reader.read(backend, database, tables)
        finally:
            self.metrics.position_seconds.observe(time.perf_counter() - started)

    async def fetch(
        self,
        key: str | None,
        run: Callable[[], Awaitable[QueryResult]],
        *,
        budget_seconds: float,
    ) -> tuple[QueryResult, bool]:
        """The answer under ``key`` and whether it came from the cache (stored or shared).

        ``run`` computes it; ``budget_seconds`` bounds the wait for another process computing
        the same key. A hit carries the engine's figures of the run that computed it.
        """
        if key is None:
            return await run(), False
        flight = self._flights.get(key)
        leads = flight is None
        if flight is None:
            flight = _Flight(asyncio.create_task(self._answer(key, run, budget_seconds)))
            self._flights[key] = flight
            flight.task.add_done_callback(functools.partial(self._landed, key, flight))
        flight.waiters += 1
        try:
            result, hit = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if not flight.waiters:
                # Nobody waits any more: stop the query (the engine kills it) instead of
                # letting it run to fill the cache.
                flight.task.cancel()
            raise
        flight.waiters -= 1
        if leads:
            return result, hit
        self.metrics.requests.labels("shared").inc()
        return result, True

    async def close(self) -> None:
        """Cancel what is in flight and close the store."""
        for flight in list(self._flights.values()):
            flight.task.cancel()
        await asyncio.gather(*(f.task for f in self._flights.values()), return_exceptions=True)
        await self.store.close()

    def _landed(self, key: str, flight: _Flight, _task: object) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if flight.task.cancelled():
            return
        # Retrieved here so that a failure nobody awaits any more is not reported as lost.
        flight.task.exception()

    async def _answer(
        self, key: str, run: Callable[[], Awaitable[QueryResult]], budget_seconds: float
    ) -> tuple[QueryResult, bool]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_seconds
        pause = _POLL_FIRST
        try:
            while True:
                stored = await self.store.get(key)
                if stored is not None:
                    self.metrics.requests.labels("hit").inc()
                    return stored, True
                token = await self.store.claim(key, budget_seconds + _CLAIM_MARGIN_SECONDS)
                if token is not None:
                    break
                # Another process runs this query: wait for its answer, within the budget.
                if loop.time() + pause >= deadline:
                    self.metrics.requests.labels("miss").inc()
                    return await run(), False
                await asyncio.sleep(pause)
                pause = min(pause * 2, _POLL_LONGEST)
        except StoreUnavailableError:
            self.metrics.requests.labels("unavailable").inc()
            return await run(), False
        try:
            result = await run()
            self.metrics.requests.labels("miss").inc()
            await self._keep(key, result)
        finally:
            await self.store.release(key, token)
        return result, False

    async def _keep(self, key: str, result: QueryResult) -> None:
        if table_bytes(result.table) > self.max_entry_bytes:
            self.metrics.too_large.inc()
            return
        try:
            await self.store.put(key, result)
        except StoreUnavailableError:
            # Answered anyway; the store has logged and counted its failure.
            return
