"""LifecycleService: the thin runner of lifecycle, whatever the transport.

The flow is InsightRunner's: authorise, read the tenant's segments when named, compile (pure),
run the one query through the cache with freshness beside it, assemble (pure), audit.
"""

from __future__ import annotations

from service.auth import Principal
from service.insights.insight_runner import InsightOutcome, InsightRunner
from service.insights.lifecycle import LifecycleAnswer, assemble_lifecycle, compile_lifecycle
from service.insights.lifecycle_request import LifecycleRequest


class LifecycleService(InsightRunner):
    """Runs Lifecycle requests for authenticated principals."""

    async def run(
        self, principal: Principal, request: LifecycleRequest, *, remaining: float | None, rpc: str
    ) -> InsightOutcome[LifecycleAnswer]:
        """Compile and answer ``request``; AnalyticsError for anything a caller must hear."""
        return await self._run_insight(
            principal,
            request,
            remaining=remaining,
            rpc=rpc,
            compile_plan=lambda catalog, tenant, now: compile_lifecycle(
                request, catalog, tenant, now
            ),
            queries=lambda plan: [plan.compiled],
            assemble=lambda plan, tables: assemble_lifecycle(plan, tables[0]),
            rows=lambda answer: len(answer.buckets) * len(answer.lines),
        )
