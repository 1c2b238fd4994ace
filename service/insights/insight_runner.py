"""InsightRunner: what every insight's runner shares (Trend, Funnel, Retention, Lifecycle).

The catalog, the engine, the query time budget and the clock that relative dates are read
against, and one flow (``_run_insight``): the model's read permission checked before compiling,
the tenant's segments read when named, compile (pure), the read permission of every other model
the queries read, the one execution path (``_answer``: the result cache, freshness), assemble
(pure), and the audit record, a failure's or the success's.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import pyarrow as pa

from service import audit
from service.auth import Principal
from service.backends.base import AnalyticsBackend, QueryStats
from service.budgets import Budgets
from service.cache.execution import Answered, Equivalent, answer_queries, served
from service.catalog import Catalog, Model
from service.errors import AnalyticsError
from service.query.compiler import CompiledQuery, resolve_model
from service.query_service import audit_failure, authorise_reads, caller_stats

if TYPE_CHECKING:
    from service.cache.result_cache import ResultCache
    from service.rollups.keeper import RollupKeeper
    from service.segments.segment_service import SegmentService


Answer = TypeVar("Answer")
Plan = TypeVar("Plan")


class InsightRequest(Protocol):
    """What the shared flow reads of any insight's request."""

    @property
    def model(self) -> str:
        """The model the request names."""
        ...

    @property
    def filters(self) -> Mapping[str, str]:
        """The request's filters (where a segment is named)."""
        ...


@dataclass(frozen=True)
class InsightOutcome(Generic[Answer]):
    """An insight's answer with its meta."""

    answer: Answer
    stats: QueryStats
    last_sync_at: dt.datetime | None
    #: The catalog rollup whose rows computed every query's answer ("" otherwise).
    rollup: str = ""


class InsightRunner:
    """The base of the insight services; see the module docstring."""

    def __init__(
        self,
        catalog: Catalog,
        backend: AnalyticsBackend,
        *,
        timeout_seconds: float,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        segments: SegmentService | None = None,
        cache: ResultCache | None = None,
        budgets: Budgets | None = None,
        rollups: RollupKeeper | None = None,
    ) -> None:
        """Run on ``backend`` with the query time budget from settings.

        ``segments``: where the tenants' segments are read when a request names one (without
        it, a request naming a segment is refused as naming an unknown one). ``cache``: where
        answers are kept and found (none: every request runs on the engine). ``budgets``:
        the tenants' budgets every request runs within (None: unlimited). ``rollups``: the
        keeper of the catalog's rollups, for the insights a rollup can answer (None: none is).
        """
        self.catalog = catalog
        self.backend = backend
        self._timeout = timeout_seconds
        self._clock = clock
        self._segments = segments
        self.cache = cache
        self.budgets = budgets or Budgets.unlimited()
        self.rollups = rollups

    async def _catalog_for(self, tenant: str, *filter_maps: Mapping[str, str]) -> Catalog:
        """The catalog a request of ``tenant`` compiles against (with its segments if named)."""
        if self._segments is None:
            return self.catalog
        return await self._segments.catalog_for(tenant, *filter_maps)

    def _readable_model(self, principal: Principal, reference: str) -> Model:
        """The model ``reference`` names, if ``principal`` may read it."""
        model = resolve_model(self.catalog, reference)
        authorise_reads(principal, [model])
        return model

    def _budget(self, remaining: float | None) -> float:
        """Seconds the engine may take: the settings' budget, or less if the call has less."""
        return self._timeout if remaining is None else max(min(self._timeout, remaining), 0.001)

    async def _run_insight(
        self,
        principal: Principal,
        request: InsightRequest,
        *,
        remaining: float | None,
        rpc: str,
        compile_plan: Callable[[Catalog, str, dt.datetime], Plan],
        queries: Callable[[Plan], Sequence[CompiledQuery]],
        assemble: Callable[[Plan, list[pa.Table]], Answer],
        rows: Callable[[Answer], int],
        route: Callable[[Catalog, str, dt.datetime, Plan], Equivalent | None] | None = None,
    ) -> InsightOutcome[Answer]:
        """Answer ``request`` through the shared flow (module docstring).

        Raises AnalyticsError for anything a caller must hear. ``compile_plan`` (catalog,
        tenant, now) compiles the request; ``queries`` are the plan's queries (the first one's
        joined models stand for all); ``assemble`` makes the answer of their result tables;
        ``rows`` counts the answer's rows for the audit record. ``route`` (catalog, tenant, now,
        plan): what the engine runs for a query on a cache miss, when a rollup answers the plan
        (``service.cache.execution.answer_queries``).
        """
        started = time.perf_counter()
        model_name = request.model[:200]
        try:
            model_name = self._readable_model(principal, request.model).qualified_name
            catalog = await self._catalog_for(principal.tenant, request.filters)
            now = self._clock()
            plan = compile_plan(catalog, principal.tenant, now)
            compiled = queries(plan)
            authorise_reads(principal, compiled[0].joined)
            equivalent = route(catalog, principal.tenant, now, plan) if route is not None else None
            answered = await self._answer(principal, compiled, remaining, equivalent)
        except AnalyticsError as error:
            audit_failure(principal, model_name, rpc, started, error)
            raise
        results = answered.results
        answer = assemble(plan, [result.table for result in results])
        stats = QueryStats(
            rows_scanned=sum(r.stats.rows_scanned for r in results),
            elapsed_ms=max((r.stats.elapsed_ms for r in results), default=0.0),
        )
        self._audit_ok(
            principal, model_name, rpc, started, rows(answer), answered.engine_rows_scanned
        )
        rollups = {result.rollup for result in results}
        return InsightOutcome(
            answer,
            served(caller_stats(stats), answered.cache_hit),
            answered.last_sync_at,
            rollups.pop() if len(rollups) == 1 else "",
        )

    async def _answer(
        self,
        principal: Principal,
        queries: Sequence[CompiledQuery],
        remaining: float | None,
        equivalent: Equivalent | None = None,
    ) -> Answered:
        """Run ``queries`` within the tenant's budget, through the cache, with ``lastSyncAt``."""
        async with self.budgets.admit(principal.tenant) as admission:
            call_seconds = self._budget(remaining)
            try:
                answered = await answer_queries(
                    self.backend,
                    self.catalog.database,
                    principal.tenant,
                    [admission.bound(query) for query in queries],
                    timeout_seconds=admission.timeout(call_seconds),
                    cache=self.cache,
                    equivalent=equivalent,
                )
            except AnalyticsError as error:
                raise admission.translate(error, call_seconds) from None
            admission.scanned(answered.engine_rows_scanned)
            return answered

    @staticmethod
    def _audit_ok(  # noqa: PLR0917 (one audit record's every field)
        principal: Principal, model: str, rpc: str, started: float, rows: int, rows_scanned: int
    ) -> None:
        audit.record_query(
            tenant=principal.tenant,
            subject=principal.subject,
            model=model,
            rpc=rpc,
            outcome="ok",
            duration_ms=(time.perf_counter() - started) * 1000,
            rows=rows,
            rows_scanned=rows_scanned,
        )
