"""The budgets' Prometheus metrics (in the registry the service exposes at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class BudgetMetrics:
    """Budget use and refusals per tenant, and the shared store's health."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Register the metrics in ``registry`` (a new one if not given)."""
        self.registry = registry or CollectorRegistry()
        self.admitted = Counter(
            "analytics_budget_admitted",
            "Requests a tenant's budget let through, per tenant.",
            ["tenant"],
            registry=self.registry,
        )
        self.refused = Counter(
            "analytics_budget_refused",
            "Requests refused (RESOURCE_EXHAUSTED / 429) per tenant and the limit they hit: "
            "requests_per_second, concurrent_queries (before running), rows_per_query, "
            "seconds_per_query (stopped by the engine).",
            ["tenant", "limit"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "analytics_budget_in_flight",
            "Requests of a tenant running in this process.",
            ["tenant"],
            registry=self.registry,
        )
        self.rows_scanned = Counter(
            "analytics_budget_rows_scanned",
            "Rows the engine read for a tenant's requests (what rows_per_query bounds per query).",
            ["tenant"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "analytics_budget_store_errors",
            "Failed operations on the shared budget store (Redis), by operation; each one was "
            "enforced with this process's counters instead.",
            ["operation"],
            registry=self.registry,
        )
        self.store_up = Gauge(
            "analytics_budget_store_up",
            "1 while the shared budget store (Redis) answers, 0 while budgets are enforced per "
            "process (absent without Redis).",
            ["store"],
            registry=self.registry,
        )
