"""The one way a runner executes its compiled queries: through the cache when there is one.

``answer_queries`` replaces ``with_freshness(..., backend.execute(...))`` in every unary runner
(Query, Trend, Funnel, Retention, Lifecycle). With a cache it first reads the position of every
table the queries read, derives each query's key from it, and answers each query from the cache
or the engine; ``lastSyncAt`` is computed from the same positions. Without one it runs the
queries with the freshness lookup beside them, as before.

Why a hit cannot be stale: the positions are read before the query runs, so a stored answer
holds at least everything up to the position in its key. A later request reads the positions
again; if they are unchanged, no part was added or replaced in between (every write adds a part
with a new name, which changes the fingerprint) and no sync report moved, so the engine would
read exactly the rows the stored answer was computed from.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from service.backends.base import AnalyticsBackend, QueryResult, QueryStats
from service.cache.key import oldest_sync_at
from service.cache.result_cache import ResultCache
from service.query.compiler import CompiledQuery
from service.sync_status import with_freshness

Equivalent = Callable[[CompiledQuery], Awaitable[CompiledQuery]]
"""Given a compiled query, one that answers the same rows (possibly the query itself)."""


@dataclass
class ServedStats(QueryStats):
    """The engine's figures for an answer, and whether the result cache gave it.

    A hit reports the figures of the run that computed the answer, so that its meta equals a
    fresh answer's but for ``cacheHit``.
    """

    cache_hit: bool = False


def served(stats: QueryStats, cache_hit: bool) -> ServedStats:
    """``stats`` with the cache flag (what ``meta.cacheHit`` reports)."""
    return ServedStats(stats.rows_scanned, stats.elapsed_ms, cache_hit)


@dataclass(frozen=True)
class Answered:
    """The results of a runner's queries, in order, and their ``lastSyncAt``.

    ``hits``: whether each came from the cache.
    """

    results: list[QueryResult]
    last_sync_at: dt.datetime | None
    hits: list[bool]

    @property
    def cache_hit(self) -> bool:
        """Whether every answer came from the cache (what ``meta.cacheHit`` says)."""
        return all(self.hits)

    @property
    def engine_rows_scanned(self) -> int:
        """Rows the engine read for this request (the audit's figure): none for hits."""
        return sum(
            result.stats.rows_scanned
            for result, hit in zip(self.results, self.hits, strict=True)
            if not hit
        )


async def answer_queries(
    backend: AnalyticsBackend,
    database: str,
    tenant: str,
    queries: Sequence[CompiledQuery],
    *,
    timeout_seconds: float,
    cache: ResultCache | None,
    equivalent: Equivalent | None = None,
) -> Answered:
    """Answer ``queries`` of ``tenant`` (see the module docstring).

    ``equivalent``: what the engine runs for a query it must answer, a query known to give the
    same rows (a rollup's, ``service.rollups``). Keys stay those of ``queries``, so a hit needs
    no planning and an answer serves whichever way it was computed; its ``rollup`` says which.
    """
    tables = list(dict.fromkeys(table for query in queries for table in query.tables))

    def run(query: CompiledQuery) -> Callable[[], Awaitable[QueryResult]]:
        async def execute() -> QueryResult:
            ran = query if equivalent is None else await equivalent(query)
            result = await backend.execute(
                ran, timeout_seconds=timeout_seconds, query_id=uuid.uuid4().hex
            )
            result.rollup = ran.rollup
            return result

        return execute

    if cache is None:
        results, last_sync = await with_freshness(
            backend, database, tables, asyncio.gather(*(run(query)() for query in queries))
        )
        return Answered(list(results), last_sync, [False] * len(results))
    positions = await cache.positions(backend, database, tables)
    scope = f"{backend.name}:{database}"
    fetched = await asyncio.gather(
        *(
            cache.fetch(
                cache.key(tenant, scope, query, positions),
                run(query),
                budget_seconds=timeout_seconds,
            )
            for query in queries
        )
    )
    return Answered(
        [result for result, _ in fetched],
        oldest_sync_at(positions, tables),
        [hit for _, hit in fetched],
    )
