"""InsightServices: the runners of every insight, built together on one catalog and engine.

The transports (gRPC servicer, REST app) take this one object rather than a parameter per
insight, so that an insight added later is one field here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.backends.base import AnalyticsBackend
from service.catalog import Catalog
from service.insights.funnel_service import FunnelService
from service.insights.lifecycle_service import LifecycleService
from service.insights.retention_service import RetentionService
from service.insights.trend_service import TrendService
from service.segments.segment_service import SegmentService

if TYPE_CHECKING:
    from service.budgets import Budgets
    from service.cache.result_cache import ResultCache
    from service.rollups.keeper import RollupKeeper


@dataclass(frozen=True)
class InsightServices:
    """Trends, funnels, retention and lifecycle."""

    trends: TrendService
    funnels: FunnelService
    retention: RetentionService
    lifecycle: LifecycleService

    @classmethod
    def build(
        cls,
        catalog: Catalog,
        backend: AnalyticsBackend,
        *,
        timeout_seconds: float,
        segments: SegmentService | None = None,
        cache: ResultCache | None = None,
        budgets: Budgets | None = None,
        rollups: RollupKeeper | None = None,
    ) -> InsightServices:
        """Every runner on ``backend``, with the query time budget from settings.

        ``cache``: the result cache they share (none: every request runs on the engine).
        ``budgets``: the tenants' budgets they share (none: unlimited). ``rollups``: the keeper
        of the catalog's rollups, which answer the trends they can.
        """
        return cls(
            TrendService(
                catalog,
                backend,
                timeout_seconds=timeout_seconds,
                segments=segments,
                cache=cache,
                budgets=budgets,
                rollups=rollups,
            ),
            FunnelService(
                catalog,
                backend,
                timeout_seconds=timeout_seconds,
                segments=segments,
                cache=cache,
                budgets=budgets,
            ),
            RetentionService(
                catalog,
                backend,
                timeout_seconds=timeout_seconds,
                segments=segments,
                cache=cache,
                budgets=budgets,
            ),
            LifecycleService(
                catalog,
                backend,
                timeout_seconds=timeout_seconds,
                segments=segments,
                cache=cache,
                budgets=budgets,
            ),
        )

    @property
    def catalog(self) -> Catalog:
        """The catalog every runner reads."""
        return self.trends.catalog
