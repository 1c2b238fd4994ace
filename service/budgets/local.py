"""The budget's counters in this process: a token bucket and a concurrency count per tenant.

Pure bookkeeping with the clock passed in, so the unit tests drive time by hand. Used alone when
no Redis is configured, and as the fallback while Redis is down.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """``size`` tokens, refilled at ``rate`` per second; a request takes one."""

    rate: float
    size: int
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, size: int, now: float) -> TokenBucket:
        """A bucket holding ``size`` tokens at ``now``."""
        return cls(rate, size, float(size), now)

    def take(self, now: float) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is there."""
        if now > self.stamp:
            self.tokens = min(float(self.size), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class LocalCounters:
    """Every tenant's bucket and running count in this process."""

    def __init__(self) -> None:
        """Start with no tenant known."""
        self._buckets: dict[str, TokenBucket] = {}
        self._running: dict[str, int] = {}

    def take(self, tenant: str, rate: float, size: int, now: float) -> float:
        """Take a token of ``tenant``'s bucket (0.0: granted; else seconds to wait)."""
        bucket = self._buckets.get(tenant)
        if bucket is None or bucket.rate != rate or bucket.size != size:
            # New tenant, or its limits changed: a full bucket of the new shape.
            tokens = float(size) if bucket is None else min(bucket.tokens, float(size))
            bucket = TokenBucket(rate, size, tokens, now)
            self._buckets[tenant] = bucket
        return bucket.take(now)

    def acquire(self, tenant: str, limit: int) -> bool:
        """Count one more running request of ``tenant`` unless ``limit`` are running."""
        running = self._running.get(tenant, 0)
        if running >= limit:
            return False
        self._running[tenant] = running + 1
        return True

    def release(self, tenant: str) -> None:
        """Count one running request of ``tenant`` fewer."""
        running = self._running.get(tenant, 0) - 1
        if running > 0:
            self._running[tenant] = running
        else:
            self._running.pop(tenant, None)

    def running(self, tenant: str) -> int:
        """Requests of ``tenant`` running in this process."""
        return self._running.get(tenant, 0)
