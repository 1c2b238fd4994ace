"""The result cache (README "Result cache"): answers keyed by what they depend on.

``build_result_cache`` makes the one the settings ask for: in this process (byte-bounded LRU)
by default, in Redis when ``redis_url`` is set, none when ``result_cache`` is off. Runners use
it through ``service.cache.execution.answer_queries``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.cache.metrics import CacheMetrics
from service.cache.result_cache import ResultCache
from service.cache.stores import CacheStore, LocalStore, RedisStore
from service.settings import Settings

__all__ = ["CacheMetrics", "ResultCache", "build_result_cache"]


def build_result_cache(
    settings: Settings, registry: CollectorRegistry | None = None
) -> ResultCache | None:
    """The cache ``settings`` configure, its metrics in ``registry``; None when it is off."""
    if not settings.result_cache:
        return None
    metrics = CacheMetrics(registry)
    store: CacheStore
    if settings.redis_url is not None:
        store = RedisStore(
            settings.redis_url.get_secret_value(),
            metrics,
            ttl_seconds=settings.result_cache_ttl_seconds,
            timeout_seconds=settings.redis_timeout_seconds,
        )
    else:
        store = LocalStore(settings.result_cache_bytes, metrics)
    return ResultCache(store, metrics, settings.result_cache_max_entry_bytes)
