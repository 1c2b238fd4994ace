"""FunnelService: the thin runner of funnels and of their actor lists, whatever the transport.

``run`` is InsightRunner's flow (authorise, including each step's and related model's read
permission; segments; compile; the one query through the cache; assemble; audit). ``actors``
streams the engine's batches as they come, as ``QueryService.stream`` does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pyarrow as pa

from service.auth import Principal
from service.insights.funnel_request import FunnelActorsRequest, FunnelRequest
from service.insights.funnels import (
    FunnelAnswer,
    assemble_funnel,
    compile_funnel,
    compile_funnel_actors,
)
from service.insights.insight_runner import InsightOutcome, InsightRunner
from service.query.compiler import CompiledQuery, OutputColumn
from service.query_service import StreamMeta, authorise_reads, stream_answer


class FunnelService(InsightRunner):
    """Runs Funnel requests for authenticated principals."""

    async def run(
        self, principal: Principal, request: FunnelRequest, *, remaining: float | None, rpc: str
    ) -> InsightOutcome[FunnelAnswer]:
        """Compile and answer ``request``; AnalyticsError for anything a caller must hear."""
        return await self._run_insight(
            principal,
            request,
            remaining=remaining,
            rpc=rpc,
            compile_plan=lambda catalog, tenant, now: compile_funnel(request, catalog, tenant, now),
            queries=lambda plan: [plan.compiled],
            assemble=lambda plan, tables: assemble_funnel(plan, tables[0]),
            rows=lambda answer: len(answer.steps) + len(answer.breakdowns),
        )

    def actors(
        self,
        principal: Principal,
        request: FunnelActorsRequest,
        *,
        remaining: float | None,
        rpc: str,
        meta_sink: list[StreamMeta],
    ) -> AsyncGenerator[tuple[tuple[OutputColumn, ...], pa.RecordBatch]]:
        """Yield the actors' record batches as the engine produces them; meta after the last."""

        async def prepare() -> CompiledQuery:
            self._readable_model(principal, request.funnel.model)
            catalog = await self._catalog_for(principal.tenant, request.funnel.filters)
            compiled = compile_funnel_actors(request, catalog, principal.tenant, self._clock())
            authorise_reads(principal, compiled.joined)
            return compiled

        return stream_answer(
            self.backend,
            self.catalog.database,
            principal,
            request.funnel.model,
            prepare,
            timeout_seconds=self._budget(remaining),
            rpc=rpc,
            meta_sink=meta_sink,
            budgets=self.budgets,
        )
