"""The budget's counters in Redis, shared by every service process using the same URL.

The token bucket and the running count of a tenant are each one key, updated by one Lua script
(atomic; the clock is Redis's ``TIME``, so processes need not agree on theirs). A running request
holds a lease (a member of a sorted set scored by its expiry): a process that dies without
releasing it gives the slot back when the lease expires.

Every operation has a short timeout and no retry. A failure raises ``CounterStoreDownError``; the
caller (``Budgets``) then enforces the budget with this process's counters, and the store is
skipped for ``retry_seconds`` before it is tried again. Down and back are logged once each.
"""

from __future__ import annotations

import secrets

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.budgets.metrics import BudgetMetrics
from service.redis_outage import RedisOutage, quick_redis

log = structlog.get_logger(__name__)

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local size = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(v[1])
local stamp = tonumber(v[2])
if tokens == nil or stamp == nil then tokens = size; stamp = now end
if tokens > size then tokens = size end
if now > stamp then
  tokens = math.min(size, tokens + (now - stamp) * rate)
  stamp = now
end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(stamp))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return tostring(wait)
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class CounterStoreDownError(Exception):
    """Redis could not be asked (the budget is enforced locally instead)."""


class RedisCounters:
    """Token buckets and running counts per tenant in Redis (module docstring)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        metrics: BudgetMetrics,
        *,
        timeout_seconds: float,
        retry_seconds: float = 1.0,
        prefix: str = "analytics:budget",
    ) -> None:
        """Connect lazily to ``url``."""
        self._client: Redis = quick_redis(url, timeout_seconds)
        self._metrics = metrics
        self._outage = RedisOutage(retry_seconds)
        self._prefix = prefix
        self._take = self._client.register_script(_TAKE)
        self._acquire = self._client.register_script(_ACQUIRE)
        metrics.store_up.labels(self.name).set(1)

    @property
    def available(self) -> bool:
        """False while the store is skipped after a failure."""
        return not self._outage.down

    async def take(self, tenant: str, rate: float, size: int) -> float:
        """Take a token of ``tenant``'s shared bucket: 0.0 granted, else seconds to wait."""
        self._check()
        # The key lives as long as the bucket takes to fill up again (then it equals a new one).
        ttl_ms = max(int(size / rate * 1000) + 1000, 1000)
        try:
            wait = await self._take(
                keys=[f"{self._prefix}:bucket:{tenant}"], args=[rate, size, ttl_ms]
            )
        except (RedisError, OSError) as error:
            raise self._failed("take", error) from error
        self._recovered()
        return float(wait.decode() if isinstance(wait, bytes) else wait)

    async def acquire(self, tenant: str, limit: int, lease_seconds: float) -> str | None:
        """A lease on one of ``tenant``'s ``limit`` running slots, or None if all are held."""
        self._check()
        lease = secrets.token_hex(8)
        try:
            won = await self._acquire(
                keys=[self._running(tenant)],
                args=[limit, lease, max(int(lease_seconds * 1000), 1)],
            )
        except (RedisError, OSError) as error:
            raise self._failed("acquire", error) from error
        self._recovered()
        return lease if int(won) == 1 else None

    async def release(self, tenant: str, lease: str) -> None:
        """Give the slot back (an expired lease needs nothing; a failure lets it expire)."""
        try:
            await self._client.zrem(self._running(tenant), lease)
        except (RedisError, OSError) as error:
            self._failed("release", error)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _running(self, tenant: str) -> str:
        return f"{self._prefix}:running:{tenant}"

    def _check(self) -> None:
        if self._outage.skipping():
            raise CounterStoreDownError("redis is down; retried after a pause")

    def _failed(self, operation: str, error: BaseException) -> CounterStoreDownError:
        self._metrics.store_errors.labels(operation).inc()
        self._metrics.store_up.labels(self.name).set(0)
        if self._outage.failed():
            log.warning(
                "budget store unavailable; budgets are enforced per process",
                operation=operation,
                error=f"{type(error).__name__}: {error}"[:300],
            )
        return CounterStoreDownError(f"redis {operation} failed: {error}")

    def _recovered(self) -> None:
        if self._outage.recovered():
            self._metrics.store_up.labels(self.name).set(1)
            log.info("budget store available again; budgets are shared again")
