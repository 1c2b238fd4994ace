"""TrendService: the thin runner of trends, whatever the transport.

The flow is InsightRunner's: authorise, read the tenant's segments when named, compile (pure),
run the plan's queries side by side through the cache with freshness beside them, assemble
(pure), audit.
"""

from __future__ import annotations

from service.auth import Principal
from service.insights.insight_runner import InsightOutcome, InsightRunner
from service.insights.trend_request import TrendRequest
from service.insights.trend_results import TrendAnswer, assemble_trend
from service.insights.trends import compile_trend


class TrendService(InsightRunner):
    """Runs Trend requests for authenticated principals."""

    async def run(
        self, principal: Principal, request: TrendRequest, *, remaining: float | None, rpc: str
    ) -> InsightOutcome[TrendAnswer]:
        """Compile and answer ``request``; AnalyticsError for anything a caller must hear."""
        return await self._run_insight(
            principal,
            request,
            remaining=remaining,
            rpc=rpc,
            compile_plan=lambda catalog, tenant, now: compile_trend(request, catalog, tenant, now),
            queries=lambda plan: [query.compiled for query in plan.queries],
            assemble=assemble_trend,
            rows=lambda answer: sum(len(line.values) for line in answer.lines),
        )
