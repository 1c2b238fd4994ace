"""RetentionService: the thin runner of retention, whatever the transport.

The flow is InsightRunner's: authorise, read the tenant's segments when named, compile (pure),
run the one query through the cache with freshness beside it, assemble (pure), audit.
"""

from __future__ import annotations

from service.auth import Principal
from service.insights.insight_runner import InsightOutcome, InsightRunner
from service.insights.retention import RetentionAnswer, assemble_retention, compile_retention
from service.insights.retention_request import RetentionRequest


class RetentionService(InsightRunner):
    """Runs Retention requests for authenticated principals."""

    async def run(
        self, principal: Principal, request: RetentionRequest, *, remaining: float | None, rpc: str
    ) -> InsightOutcome[RetentionAnswer]:
        """Compile and answer ``request``; AnalyticsError for anything a caller must hear."""
        return await self._run_insight(
            principal,
            request,
            remaining=remaining,
            rpc=rpc,
            compile_plan=lambda catalog, tenant, now: compile_retention(
                request, catalog, tenant, now
            ),
            queries=lambda plan: [plan.compiled],
            assemble=lambda plan, tables: assemble_retention(plan, tables[0]),
            rows=lambda answer: sum(len(table.cohorts) for table in answer.tables),
        )
