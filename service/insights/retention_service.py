"""RetentionService: the thin runner of retention, whatever the transport.

authorise (``{module}.{model}.read``, and each related model's) -> compile (pure) -> run the
one query within the time budget, freshness beside it -> assemble (pure) -> audit.
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
from service.insights.retention import RetentionAnswer, assemble_retention, compile_retention
from service.insights.retention_request import RetentionRequest
from service.query_service import audit_failure, authorise_reads, caller_stats


@dataclass(frozen=True)
class RetentionOutcome:
    """A retention answer with its meta."""

    answer: RetentionAnswer
    stats: QueryStats
    last_sync_at: dt.datetime | None


class RetentionService(InsightRunner):
    """Runs Retention requests for authenticated principals."""

    async def run(
        self, principal: Principal, request: RetentionRequest, *, remaining: float | None, rpc: str
    ) -> RetentionOutcome:
        """Compile and answer ``request``; AnalyticsError for anything a caller must hear."""
        started = time.perf_counter()
        model_name = request.model[:200]
        try:
            model_name = self._readable_model(principal, request.model).qualified_name
            catalog = await self._catalog_for(principal.tenant, request.filters)
            plan = compile_retention(request, catalog, principal.tenant, self._clock())
            authorise_reads(principal, plan.compiled.joined)
            answered = await self._answer(principal, [plan.compiled], remaining)
        except AnalyticsError as error:
            audit_failure(principal, model_name, rpc, started, error)
            raise
        result = answered.results[0]
        answer = assemble_retention(plan, result.table)
        rows = sum(len(table.cohorts) for table in answer.tables)
        self._audit_ok(principal, model_name, rpc, started, rows, answered.engine_rows_scanned)
        return RetentionOutcome(
            answer, served(caller_stats(result.stats), answered.cache_hit), answered.last_sync_at
        )
