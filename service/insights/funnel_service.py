"""FunnelService: the thin runner of funnels and of their actor lists, whatever the transport.

authorise (``{module}.{model}.read``, and each step's and related model's) -> compile (pure) ->
run the one query within the time budget, freshness beside it -> assemble (pure) -> audit.
``actors`` streams the engine's batches as they come, as ``QueryService.stream`` does.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import pyarrow as pa

from service import audit
from service.auth import Principal
from service.backends.base import QueryStats
from service.cache.execution import served
from service.errors import AnalyticsError
from service.insights.funnel_request import FunnelActorsRequest, FunnelRequest
from service.insights.funnels import (
    FunnelAnswer,
    assemble_funnel,
    compile_funnel,
    compile_funnel_actors,
)
from service.insights.insight_runner import InsightRunner
from service.query.compiler import OutputColumn
from service.query_service import StreamMeta, audit_failure, authorise_reads, caller_stats
from service.sync_status import oldest_sync


@dataclass(frozen=True)
class FunnelOutcome:
    """A funnel's answer with its meta."""

    answer: FunnelAnswer
    stats: QueryStats
    last_sync_at: dt.datetime | None


class FunnelService(InsightRunner):
    """Runs Funnel requests for authenticated principals."""

    async def run(
        self, principal: Principal, request: FunnelRequest, *, remaining: float | None, rpc: str
    ) -> FunnelOutcome:
        """Compile and answer ``request``; AnalyticsError for anything a caller must hear."""
        started = time.perf_counter()
        model_name = request.model[:200]
        try:
            model_name = self._readable_model(principal, request.model).qualified_name
            catalog = await self._catalog_for(principal.tenant, request.filters)
            plan = compile_funnel(request, catalog, principal.tenant, self._clock())
            authorise_reads(principal, plan.compiled.joined)
            answered = await self._answer(principal, [plan.compiled], remaining)
        except AnalyticsError as error:
            audit_failure(principal, model_name, rpc, started, error)
            raise
        result = answered.results[0]
        answer = assemble_funnel(plan, result.table)
        self._audit_ok(
            principal, model_name, rpc, started, len(answer.steps), answered.engine_rows_scanned
        )
        return FunnelOutcome(
            answer, served(caller_stats(result.stats), answered.cache_hit), answered.last_sync_at
        )

    async def actors(
        self,
        principal: Principal,
        request: FunnelActorsRequest,
        *,
        remaining: float | None,
        rpc: str,
        meta_sink: list[StreamMeta],
    ) -> AsyncGenerator[tuple[tuple[OutputColumn, ...], pa.RecordBatch]]:
        """Yield the actors' record batches as the engine produces them; meta after the last.

        Leaving the iteration early (client cancel, deadline) closes the engine's stream.
        """
        started = time.perf_counter()
        model_name = request.funnel.model[:200]
        rows = 0
        stats = QueryStats()
        outcome = "cancelled"
        try:
            model_name = self._readable_model(principal, request.funnel.model).qualified_name
            catalog = await self._catalog_for(principal.tenant, request.funnel.filters)
            compiled = compile_funnel_actors(request, catalog, principal.tenant, self._clock())
            authorise_reads(principal, compiled.joined)
            async with self.backend.stream(
                compiled, timeout_seconds=self._budget(remaining), query_id=uuid.uuid4().hex
            ) as stream:
                async for batch in stream:
                    rows += batch.num_rows
                    yield compiled.columns, batch
                stats = stream.stats
            last_sync = await oldest_sync(self.backend, self.catalog.database, compiled.tables)
            meta_sink.append(StreamMeta(compiled.columns, caller_stats(stats), last_sync))
            outcome = "ok"
        except AnalyticsError as error:
            outcome = "failed"
            audit_failure(principal, model_name, rpc, started, error, rows=rows)
            raise
        finally:
            if outcome != "failed":
                audit.record_query(
                    tenant=principal.tenant,
                    subject=principal.subject,
                    model=model_name,
                    rpc=rpc,
                    outcome=outcome,
                    duration_ms=(time.perf_counter() - started) * 1000,
                    rows=rows,
                    rows_scanned=stats.rows_scanned,
                )
