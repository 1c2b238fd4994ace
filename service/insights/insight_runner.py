"""InsightRunner: what every insight's runner shares (Trend, Funnel, and those to come).

The catalog, the engine, the query time budget and the clock that relative dates are read
against; the model's read permission checked before compiling; the one execution path
(``_answer``: the result cache, freshness); the success audit record.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from service import audit
from service.auth import Principal
from service.backends.base import AnalyticsBackend
from service.cache.execution import Answered, answer_queries
from service.catalog import Catalog, Model
from service.query.compiler import CompiledQuery, resolve_model
from service.query_service import authorise_reads

if TYPE_CHECKING:
    from service.cache.result_cache import ResultCache
    from service.segments.segment_service import SegmentService


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
    ) -> None:
        """Run on ``backend`` with the query time budget from settings.

        ``segments``: where the tenants' segments are read when a request names one (without
        it, a request naming a segment is refused as naming an unknown one). ``cache``: where
        answers are kept and found (none: every request runs on the engine).
        """
        self.catalog = catalog
        self.backend = backend
        self._timeout = timeout_seconds
        self._clock = clock
        self._segments = segments
        self.cache = cache

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

    async def _answer(
        self, principal: Principal, queries: Sequence[CompiledQuery], remaining: float | None
    ) -> Answered:
        """Run ``queries`` within the budget, through the cache, with their ``lastSyncAt``."""
        return await answer_queries(
            self.backend,
            self.catalog.database,
            principal.tenant,
            queries,
            timeout_seconds=self._budget(remaining),
            cache=self.cache,
        )

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
