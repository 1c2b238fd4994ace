"""A Redis client that never waits long, and the outage state of a store built on it.

The result cache and the budget counters both treat Redis as optional: every operation has a
short timeout and no retry, and after a failure the store is skipped for a pause (callers fall
back at once instead of each waiting for a timeout), then tried again. Each store keeps its own
metrics and log lines; this module holds what they share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def quick_redis(url: str, timeout_seconds: float) -> Redis:
    """A client of ``url`` (connected lazily) whose operations time out and are not retried."""
    return Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
    )


@dataclass
class RedisOutage:
    """Whether a Redis store is down, and until when it is skipped."""

    retry_seconds: float
    down: bool = False
    down_until: float = 0.0

    def skipping(self) -> bool:
        """True during the pause after a failure (the store is not asked)."""
        return self.down and time.monotonic() < self.down_until

    def failed(self) -> bool:
        """Record a failure (the pause starts again); True if it begins an outage."""
        self.down_until = time.monotonic() + self.retry_seconds
        began = not self.down
        self.down = True
        return began

    def recovered(self) -> bool:
        """Record a success; True if it ends an outage."""
        ended = self.down
        self.down = False
        return ended
