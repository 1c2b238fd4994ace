"""FunnelService: the thin runner of funnels, whatever the transport.

authorise (``{module}.{model}.read``, and each related model's) -> compile (pure) -> run the
one query within the time budget, freshness beside it -> assemble (pure) -> audit.
"""

from __future__ import annotations

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
from service.insights.funnel_request import FunnelRequest
from service.insights.funnels import FunnelAnswer, assemble_funnel, compile_funnel
from service.query.compiler import resolve_model
from service.query_service import audit_failure, authorise_reads, caller_stats
from service.sync_status import with_freshness


@dataclass(frozen=True)
class FunnelOutcome:
    """A funnel's answer with its meta."""

    answer: FunnelAnswer
    stats: QueryStats
    last_sync_at: dt.datetime | None


class FunnelService:
    """Runs Funnel requests for authenticated principals."""

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
        self, principal: Principal, request: FunnelRequest, *, remaining: float | None, rpc: str
    ) -> FunnelOutcome:
        """Compile and answer ``request``; AnalyticsError for anything a caller must hear."""
        started = time.perf_counter()
        model_name = request.model[:200]
        try:
            model = resolve_model(self.catalog, request.model)
            model_name = model.qualified_name
            authorise_reads(principal, [model])
            plan = compile_funnel(request, self.catalog, principal.tenant, self._clock())
            authorise_reads(principal, plan.compiled.joined)
            budget = (
                self._timeout if remaining is None else max(min(self._timeout, remaining), 0.001)
            )
            result, last_sync = await with_freshness(
                self.backend,
                self.catalog.database,
                plan.compiled.tables,
                self.backend.execute(
                    plan.compiled, timeout_seconds=budget, query_id=uuid.uuid4().hex
                ),
            )
        except AnalyticsError as error:
            audit_failure(principal, model_name, rpc, started, error)
            raise
        answer = assemble_funnel(plan, result.table)
        audit.record_query(
            tenant=principal.tenant,
            subject=principal.subject,
            model=model_name,
            rpc=rpc,
            outcome="ok",
            duration_ms=(time.perf_counter() - started) * 1000,
            rows=len(answer.steps),
            rows_scanned=result.stats.rows_scanned,
        )
        return FunnelOutcome(answer, caller_stats(result.stats), last_sync)
