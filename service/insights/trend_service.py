"""TrendService: the thin runner of trends, whatever the transport.

The flow is InsightRunner's: authorise, read the tenant's segments when named, compile (pure),
run the plan's queries side by side through the cache with freshness beside them, assemble
(pure), audit. A trend a catalog rollup answers (``service.rollups.routing``) reads the
rollup's rows on a cache miss; its cache keys stay the base queries'.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from service.auth import Principal
from service.cache.execution import Equivalent
from service.catalog import Catalog
from service.insights.insight_runner import InsightOutcome, InsightRunner
from service.insights.trend_request import TrendRequest
from service.insights.trend_results import TrendAnswer, assemble_trend
from service.insights.trends import TrendPlan, compile_trend
from service.query.compiler import CompiledQuery
from service.rollups.routing import choose_trend_rollup


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
            route=lambda catalog, tenant, now, plan: self._rollup_equivalent(
                request, catalog, tenant, now, plan
            ),
        )

    def _rollup_equivalent(
        self,
        request: TrendRequest,
        catalog: Catalog,
        tenant: str,
        now: dt.datetime,
        plan: TrendPlan,
    ) -> Equivalent | None:
        """Each of the plan's queries compiled for the rollup that answers the trend, if any.

        Planned when the engine runs: a cache hit needs no planning.
        """
        keeper = self.rollups
        rollup = choose_trend_rollup(request, plan) if keeper is not None else None
        if keeper is None or rollup is None:
            return None
        base = [query.compiled.sql for query in plan.queries]

        async def equivalent(query: CompiledQuery) -> CompiledQuery:
            rollup_plan = await keeper.plan(plan.model, rollup)
            if rollup_plan is None:
                return query
            routed = compile_trend(request, catalog, tenant, now, aggregated=rollup_plan)
            compiled = routed.queries[base.index(query.sql)].compiled
            return dataclasses.replace(compiled, settings={**compiled.settings, **query.settings})

        return equivalent
