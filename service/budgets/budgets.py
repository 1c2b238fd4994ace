"""``Budgets``: admits a tenant's request or refuses it, and bounds its queries in the engine.

Before a request runs: a token of the tenant's bucket (``requests_per_second``) and a running
slot (``concurrent_queries``), in Redis when configured (shared by every process), else in this
process; while Redis is down, in this process (never a failed request). Refusals are
RESOURCE_EXHAUSTED with RetryInfo (when to try again) and QuotaFailure (the limit).

While it runs: each query carries ``max_rows_to_read`` / ``read_overflow_mode='throw'``
(``rows_per_query``), and its time budget is the smaller of the call's (settings'
``query_timeout_seconds``, the deadline) and the tenant's ``seconds_per_query`` (the engine's
``max_execution_time``). An engine stop at the tenant's limit is a RESOURCE_EXHAUSTED naming it;
a stop at the settings' or the deadline's time stays the query timeout (DEADLINE_EXCEEDED).

A refusal's audit record is written by the runner (it audits every failure); the metrics here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

import structlog

from service.budgets.limits import (
    CONCURRENT_QUERIES,
    REQUESTS_PER_SECOND,
    ROWS_PER_QUERY,
    SECONDS_PER_QUERY,
    BudgetLimits,
    BudgetOverride,
)
from service.budgets.local import LocalCounters
from service.budgets.metrics import BudgetMetrics
from service.budgets.redis_counters import CounterStoreDownError, RedisCounters
from service.errors import AnalyticsError, ErrorKind, QuotaViolation, resource_exhausted
from service.query.compiler import CompiledQuery

log = structlog.get_logger(__name__)

#: What a refusal at the concurrency limit asks the caller to wait (a slot frees when any query
#: of the tenant ends; there is no way to know when).
CONCURRENCY_RETRY_SECONDS = 0.1


class OverrideSource(Protocol):
    """Where the per-tenant overrides are kept (the tenant records)."""

    async def budget_overrides(self) -> Mapping[str, BudgetOverride]:
        """Every tenant's override."""
        ...


class Admission:
    """A request let through: its limits, and what its queries carry into the engine."""

    def __init__(self, budgets: Budgets, tenant: str, limits: BudgetLimits) -> None:
        """For ``tenant`` with ``limits``."""
        self._budgets = budgets
        self.tenant = tenant
        self.limits = limits

    def bound(self, query: CompiledQuery) -> CompiledQuery:
        """``query`` with the engine settings that enforce the rows limit."""
        extra = self.limits.engine_settings()
        if not extra:
            return query
        return dataclasses.replace(query, settings={**query.settings, **extra})

    def timeout(self, call_seconds: float) -> float:
        """The query time budget: the call's, or the tenant's ``seconds_per_query`` if less."""
        if 0 < self.limits.seconds_per_query < call_seconds:
            return self.limits.seconds_per_query
        return call_seconds

    def translate(self, error: AnalyticsError, call_seconds: float) -> AnalyticsError:
        """An engine stop at the tenant's limit as the budget refusal naming it; else ``error``."""
        if error.reason == "ENGINE_ROWS_LIMIT":
            return self._budgets.refusal(
                self.tenant,
                ROWS_PER_QUERY,
                f"a query may read at most {self.limits.rows_per_query} rows; the engine "
                "stopped this one there (narrow the date range or the filters)",
                None,
            )
        if error.kind is ErrorKind.TIMEOUT and self.timeout(call_seconds) < call_seconds:
            return self._budgets.refusal(
                self.tenant,
                SECONDS_PER_QUERY,
                f"a query may run at most {self.limits.seconds_per_query:g}s; the engine "
                "stopped this one there",
                None,
            )
        return error

    def scanned(self, rows: int) -> None:
        """Count ``rows`` read by the engine for this request (budget use)."""
        if rows:
            self._budgets.metrics.rows_scanned.labels(self.tenant).inc(rows)


class Budgets:
    """Every tenant's budget in this service process (module docstring)."""

    def __init__(
        self,
        defaults: BudgetLimits,
        *,
        metrics: BudgetMetrics | None = None,
        shared: RedisCounters | None = None,
        overrides: OverrideSource | None = None,
        override_refresh_seconds: float = 5.0,
        lease_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Enforce ``defaults`` (and each tenant's override from ``overrides``).

        ``shared``: the Redis counters (None: this process's only). ``lease_seconds``: how long
        a running slot held in Redis outlives a process that died holding it.
        """
        self.defaults = defaults
        self.metrics = metrics or BudgetMetrics()
        self._shared = shared
        self._local = LocalCounters()
        self._overrides = overrides
        self._refresh_seconds = override_refresh_seconds
        self._known: Mapping[str, BudgetOverride] = {}
        self._read_at = -float("inf")
        self._reading: asyncio.Future[None] | None = None
        self._loaded = False
        self._generation = 0
        self._lease_seconds = lease_seconds
        self._clock = clock

    @classmethod
    def unlimited(cls) -> Budgets:
        """No limit at all (tests and tools that build runners without settings)."""
        return cls(BudgetLimits())

    async def limits_for(self, tenant: str) -> BudgetLimits:
        """``tenant``'s limits: the defaults with its override (read again every few seconds)."""
        override = (await self._current_overrides()).get(tenant)
        return override.apply(self.defaults) if override is not None else self.defaults

    def forget_overrides(self) -> None:
        """Read the overrides again at the next request, which waits for them (after a change).

        A read already under way is disregarded: it may have started before the change.
        """
        self._read_at = -float("inf")
        self._loaded = False
        self._reading = None
        self._generation += 1

    @asynccontextmanager
    async def admit(self, tenant: str) -> AsyncIterator[Admission]:
        """Let a request of ``tenant`` run, or raise its budget refusal."""
        limits = await self.limits_for(tenant)
        if limits.requests_per_second > 0:
            wait = await self._take(tenant, limits)
            if wait > 0:
                raise self.refusal(
                    tenant,
                    REQUESTS_PER_SECOND,
                    f"at most {limits.requests_per_second:g} requests per second "
                    f"(bursts of {limits.bucket_size})",
                    wait,
                )
        lease: tuple[str, str | None] | None = None
        if limits.concurrent_queries > 0:
            lease = await self._acquire(tenant, limits.concurrent_queries)
            if lease is None:
                raise self.refusal(
                    tenant,
                    CONCURRENT_QUERIES,
                    f"at most {limits.concurrent_queries} queries at once",
                    CONCURRENCY_RETRY_SECONDS,
                )
        self.metrics.admitted.labels(tenant).inc()
        self.metrics.in_flight.labels(tenant).inc()
        try:
            yield Admission(self, tenant, limits)
        finally:
            self.metrics.in_flight.labels(tenant).dec()
            if lease is not None:
                await self._release(tenant, lease)

    def refusal(
        self, tenant: str, limit: str, description: str, retry_after_seconds: float | None
    ) -> AnalyticsError:
        """The RESOURCE_EXHAUSTED of ``tenant`` over ``limit`` (counted in the metrics)."""
        self.metrics.refused.labels(tenant, limit).inc()
        return resource_exhausted(
            f"over the tenant's budget: {description}",
            f"BUDGET_{limit.upper()}",
            retry_after_seconds,
            QuotaViolation(f"tenant:{tenant}", limit, description),
        )

    async def close(self) -> None:
        """Close the Redis connections."""
        if self._shared is not None:
            await self._shared.close()

    async def _take(self, tenant: str, limits: BudgetLimits) -> float:
        if self._shared is not None:
            try:
                return await self._shared.take(
                    tenant, limits.requests_per_second, limits.bucket_size
                )
            except CounterStoreDownError:
                pass
        return self._local.take(
            tenant, limits.requests_per_second, limits.bucket_size, self._clock()
        )

    async def _acquire(self, tenant: str, limit: int) -> tuple[str, str | None] | None:
        """A lease (``("redis", id)`` or ``("local", None)``), or None when all slots are held."""
        if self._shared is not None:
            try:
                lease = await self._shared.acquire(tenant, limit, self._lease_seconds)
            except CounterStoreDownError:
                pass
            else:
                return ("redis", lease) if lease is not None else None
        return ("local", None) if self._local.acquire(tenant, limit) else None

    async def _release(self, tenant: str, lease: tuple[str, str | None]) -> None:
        kind, lease_id = lease
        if kind == "redis" and self._shared is not None and lease_id is not None:
            await self._shared.release(tenant, lease_id)
        else:
            self._local.release(tenant)

    async def _current_overrides(self) -> Mapping[str, BudgetOverride]:
        if self._overrides is None:
            return self._known
        now = self._clock()
        if now - self._read_at >= self._refresh_seconds and self._reading is None:
            # Stamped first: one read at a time; a failed read is retried only after the
            # interval (the previous overrides stay in force meanwhile).
            self._read_at = now
            self._reading = asyncio.ensure_future(self._read(self._overrides, self._generation))
        reading = self._reading
        if reading is not None and not self._loaded:
            # Until the first read (or the one after a change) is done: wait for it.
            await asyncio.shield(reading)
        return self._known

    async def _read(self, source: OverrideSource, generation: int) -> None:
        try:
            known = dict(await source.budget_overrides())
        except Exception as error:  # an unread override must never fail a request
            log.warning(
                "budget overrides could not be read; the last ones stay",
                error=f"{type(error).__name__}: {error}"[:300],
            )
            known = None
        if generation != self._generation:
            return  # a change was made meanwhile: the read it caused decides
        if known is not None:
            self._known = known
        self._loaded = True
        self._reading = None
