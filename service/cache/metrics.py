"""The result cache's Prometheus metrics (in the registry the service exposes at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_POSITION_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.5)


class CacheMetrics:
    """Counters and gauges of one result cache."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Register the metrics in ``registry`` (a new one if not given)."""
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "analytics_result_cache_requests",
            "Queries by how the cache answered: hit (stored answer), shared (an identical query "
            "in flight answered it), miss (the engine ran it, answer stored), uncacheable (a "
            "table never synced, or volatile SQL), unavailable (the store failed: answered "
            "uncached).",
            ["outcome"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "analytics_result_cache_store_errors",
            "Failed operations on the cache store (redis down or slow), by operation.",
            ["store", "operation"],
            registry=self.registry,
        )
        self.store_up = Gauge(
            "analytics_result_cache_store_up",
            "1 while the cache store answers, 0 while queries are answered uncached.",
            ["store"],
            registry=self.registry,
        )
        self.stored_bytes = Gauge(
            "analytics_result_cache_bytes",
            "Bytes of answers held by the in-process store (bounded by result_cache_bytes).",
            registry=self.registry,
        )
        self.entries = Gauge(
            "analytics_result_cache_entries",
            "Answers held by the in-process store.",
            registry=self.registry,
        )
        self.evictions = Counter(
            "analytics_result_cache_evictions",
            "Answers the in-process store dropped, least recently used first, to stay in bounds.",
            registry=self.registry,
        )
        self.too_large = Counter(
            "analytics_result_cache_too_large",
            "Answers not stored because they exceed result_cache_max_entry_bytes.",
            registry=self.registry,
        )
        self.position_seconds = Histogram(
            "analytics_result_cache_position_seconds",
            "Time to read the positions (sync reports and data parts) of a query's tables.",
            buckets=_POSITION_BUCKETS,
            registry=self.registry,
        )
