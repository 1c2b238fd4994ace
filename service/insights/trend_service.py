"""TrendService: the thin runner of trends, whatever the transport.

authorise (``{module}.{model}.read``) -> compile (pure) -> run the plan's queries side by side
within the time budget -> freshness -> assemble (pure) -> audit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from service import audit
from service.auth import Principal
from service.backends.base import AnalyticsBackend, QueryStats
from service.catalog import Catalog
from service.errors import AnalyticsError
from service.insights.trend_request import TrendRequest
from service.insights.trend_results import TrendAnswer, assemble_trend
from service.insights.trends import compile_trend
from service.query.compiler import resolve_model
from service.query_service import audit_failure, authorise_reads, caller_stats
from service.sync_status import with_freshness


@dataclass(frozen=True)
class TrendOutcome:
    """A trend's answer with its meta."""

    answer: TrendAnswer
    stats: QueryStats
    last_sync_at: dt.datetime | None


class TrendService:
    """Runs Trend requests for authenticated principals."""

    def __init__(
        self,
        catalog: Catalog,
        backend: AnalyticsBackend,
        *,
        timeout_seconds: float,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        """Run on ``backend`` with the query time budget from settings."""
        self.catalog = catalog
        self.backend = backend
        self._timeout = timeout_seconds
        self._clock = clock

    async def run(
        self, principal: Principal, request: TrendRequest, *, remaining: float | None, rpc: str
    ) -> TrendOutcome:
        """Compile and answer ``request``; AnalyticsError for anything a caller must hear."""
        started = time.perf_counter()
        model_name = request.model[:200]
        try:
            model = resolve_model(self.catalog, request.model)
            model_name = model.qualified_name
            authorise_reads(principal, [model])
            plan = compile_trend(request, self.catalog, principal.tenant, self._clock())
            tables = plan.queries[0].compiled.tables
            authorise_reads(principal, plan.queries[0].compiled.joined)
            budget = (
                self._timeout if remaining is None else max(min(self._timeout, remaining), 0.001)
            )
            results, last_sync = await with_freshness(
                self.backend,
                self.catalog.database,
                tables,
                asyncio.gather(
                    *(
                        self.backend.execute(
                            query.compiled, timeout_seconds=budget, query_id=uuid.uuid4().hex
                        )
                        for query in plan.queries
                    )
                ),
            )
        except AnalyticsError as error:
            audit_failure(principal, model_name, rpc, started, error)
            raise
        answer = assemble_trend(plan, [result.table for result in results])
        stats = QueryStats(
            rows_scanned=sum(r.stats.rows_scanned for r in results),
            elapsed_ms=max((r.stats.elapsed_ms for r in results), default=0.0),
        )
        audit.record_query(
            tenant=principal.tenant,
            subject=principal.subject,
            model=model_name,
            rpc=rpc,
            outcome="ok",
            duration_ms=(time.perf_counter() - started) * 1000,
            rows=sum(len(line.values) for line in answer.lines),
            rows_scanned=stats.rows_scanned,
        )
        return TrendOutcome(answer, caller_stats(stats), last_sync)
