"""Per-tenant budgets (DESIGN.md 8.3).

Requests per second, concurrent queries, rows and time per query; defaults in settings,
overrides in the tenant records, counters shared through Redis when it is configured.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.budgets.budgets import Admission, Budgets, OverrideSource
from service.budgets.limits import BudgetLimits, BudgetOverride
from service.budgets.metrics import BudgetMetrics
from service.budgets.redis_counters import RedisCounters
from service.settings import Settings

__all__ = [
    "Admission",
    "BudgetLimits",
    "BudgetMetrics",
    "BudgetOverride",
    "Budgets",
    "OverrideSource",
    "build_budgets",
    "default_limits",
]


def default_limits(settings: Settings) -> BudgetLimits:
    """The budget every tenant without an override gets."""
    return BudgetLimits(
        requests_per_second=settings.budget_requests_per_second,
        burst=settings.budget_burst,
        concurrent_queries=settings.budget_concurrent_queries,
        rows_per_query=settings.budget_rows_per_query,
        seconds_per_query=settings.budget_seconds_per_query,
    )


def build_budgets(
    settings: Settings, registry: CollectorRegistry, overrides: OverrideSource | None
) -> Budgets:
    """The budgets of the service, in Redis when ``redis_url`` is set."""
    metrics = BudgetMetrics(registry)
    shared = None
    if settings.redis_url is not None:
        shared = RedisCounters(
            settings.redis_url.get_secret_value(),
            metrics,
            timeout_seconds=settings.redis_timeout_seconds,
        )
    return Budgets(
        default_limits(settings),
        metrics=metrics,
        shared=shared,
        overrides=overrides,
        override_refresh_seconds=settings.budget_override_refresh_seconds,
        lease_seconds=settings.query_timeout_seconds + 5.0,
    )
