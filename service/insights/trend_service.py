"""TrendService: the thin runner of trends, whatever the transport.

authorise (``{module}.{model}.read``) -> compile (pure) -> run the plan's queries side by side
within the time budget -> freshness -> assemble (pure) -> audit.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from service.auth import Principal
from service.backends.base import QueryStats
from service.cache.execution import served
from service.errors import AnalyticsError
from service.insights.insight_runner import InsightRunner
from service.insights.trend_request import TrendRequest
from service.insights.trend_results import TrendAnswer, assemble_trend
from service.insights.trends import compile_trend
from service.query_service import audit_failure, authorise_reads, caller_stats


@dataclass(frozen=True)
class TrendOutcome:
    """A trend's answer with its meta."""

    answer: TrendAnswer
    stats: QueryStats
    last_sync_at: dt.datetime | None


class TrendService(InsightRunner):
    """Runs Trend requests for authenticated principals."""

    async def run(
        self, principal: Principal, request: TrendRequest, *, remaining: float | None, rpc: str
    ) -> TrendOutcome:
        """Compile and answer ``request``; AnalyticsError for anything a caller must hear."""
        started = time.perf_counter()
        model_name = request.model[:200]
        try:
            model_name = self._readable_model(principal, request.model).qualified_name
            catalog = await self._catalog_for(principal.tenant, request.filters)
            plan = compile_trend(request, catalog, principal.tenant, self._clock())
            authorise_reads(principal, plan.queries[0].compiled.joined)
            answered = await self._answer(
                principal, [query.compiled for query in plan.queries], remaining
            )
        except AnalyticsError as error:
            audit_failure(principal, model_name, rpc, started, error)
            raise
        results = answered.results
        answer = assemble_trend(plan, [result.table for result in results])
        stats = QueryStats(
            rows_scanned=sum(r.stats.rows_scanned for r in results),
            elapsed_ms=max((r.stats.elapsed_ms for r in results), default=0.0),
        )
        rows = sum(len(line.values) for line in answer.lines)
        self._audit_ok(principal, model_name, rpc, started, rows, answered.engine_rows_scanned)
        return TrendOutcome(
            answer, served(caller_stats(stats), answered.cache_hit), answered.last_sync_at
        )
