"""Where answers are kept: in this process (byte-bounded LRU) or in Redis (shared).

Both hold answers (the Arrow table and the engine's figures for it) under the keys of
``service.cache.key``; since a key determines its answer, a store never updates an entry, and a
stale one cannot exist. A store that fails raises
``StoreUnavailableError``; the cache then answers uncached.
"""

from __future__ import annotations

import secrets
import struct
from collections import OrderedDict
from typing import Protocol

import pyarrow as pa
import structlog
from pyarrow import ipc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.backends.base import QueryResult, QueryStats
from service.cache.metrics import CacheMetrics
from service.redis_outage import RedisOutage, quick_redis

log = structlog.get_logger(__name__)

#: Bookkeeping per in-process entry beyond its Arrow buffers (key, dict slot, table object).
ENTRY_OVERHEAD_BYTES = 512


class StoreUnavailableError(Exception):
    """The store could not be read or written (the query is answered without it)."""


class CacheStore(Protocol):
    """What the result cache needs of a store."""

    name: str

    async def get(self, key: str) -> QueryResult | None:
        """The answer stored under ``key``, if any."""
        ...

    async def put(self, key: str, result: QueryResult) -> None:
        """Store ``result`` under ``key``."""
        ...

    async def claim(self, key: str, ttl_seconds: float) -> str | None:
        """Claim the right to compute ``key``'s answer: a token, or None if another holds it."""
        ...

    async def release(self, key: str, token: str) -> None:
        """Give a claim back (whether or not an answer was stored)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def encode_table(table: pa.Table) -> bytes:
    """``table`` as one Arrow IPC stream (schema, types and values exactly as they were)."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def decode_table(data: bytes) -> pa.Table:
    """The table ``encode_table`` wrote."""
    return ipc.open_stream(pa.py_buffer(data)).read_all()


_STATS = struct.Struct("<qdH")
"""An entry's header: the engine's rows scanned and milliseconds for the answer, and the length
of the rollup name that follows it."""


def encode_entry(result: QueryResult) -> bytes:
    """An answer as Redis keeps it: the engine's figures and rollup, then the IPC stream."""
    rollup = result.rollup.encode()
    header = _STATS.pack(result.stats.rows_scanned, result.stats.elapsed_ms, len(rollup))
    return header + rollup + encode_table(result.table)


def decode_entry(data: bytes) -> QueryResult:
    """The answer ``encode_entry`` wrote."""
    rows_scanned, elapsed_ms, length = _STATS.unpack_from(data)
    rollup = data[_STATS.size : _STATS.size + length].decode()
    table = decode_table(data[_STATS.size + length :])
    return QueryResult(table, QueryStats(rows_scanned, elapsed_ms), rollup)


def table_bytes(table: pa.Table) -> int:
    """What ``table`` holds in memory (its buffers, shared ones counted in full)."""
    return int(table.get_total_buffer_size())


class LocalStore:
    """Answers in this process, at most ``max_bytes`` of them, least recently used dropped first.

    Answers are kept as they are (Arrow data is immutable), so a hit costs no decoding. Claims
    always succeed: within one process the cache's own single flight already runs each key once.
    """

    name = "memory"

    def __init__(self, max_bytes: int, metrics: CacheMetrics) -> None:
        """Hold up to ``max_bytes`` (Arrow buffers plus ``ENTRY_OVERHEAD_BYTES`` per entry)."""
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._entries: OrderedDict[str, tuple[QueryResult, int]] = OrderedDict()
        self.bytes = 0
        metrics.store_up.labels(self.name).set(1)

    def __len__(self) -> int:
        """Entries held."""
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held (without touching its recency)."""
        return key in self._entries

    async def get(self, key: str) -> QueryResult | None:
        """The answer under ``key``, now the most recently used."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def put(self, key: str, result: QueryResult) -> None:
        """Keep ``result``, dropping least recently used entries to stay within ``max_bytes``."""
        size = table_bytes(result.table) + len(key) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            self._metrics.too_large.inc()
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (result, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
            self._metrics.evictions.inc()
        self._metrics.stored_bytes.set(self.bytes)
        self._metrics.entries.set(len(self._entries))

    async def claim(self, key: str, ttl_seconds: float) -> str | None:
        """Always granted (see the class docstring)."""
        return "local"

    async def release(self, key: str, token: str) -> None:
        """Nothing to give back."""

    async def close(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self.bytes = 0


# Deletes the claim only if it is still ours (it may have expired and been taken by another).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


class RedisStore:
    """Answers in Redis, shared by every service process configured with the same URL.

    Entries are the engine's figures and an Arrow IPC stream, with a time to live (old keys are
    never read again once the tables move; the TTL, and Redis's own ``maxmemory`` policy if
    set, reclaim them). Claims
    are ``SET NX PX`` keys, so identical misses in several processes run the query once.

    Every operation has a short timeout and no retry. After a failure the store is skipped for
    ``retry_seconds`` (queries answer uncached at once instead of each waiting for a timeout),
    then tried again; going down and coming back are logged once each and kept in the metrics.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        metrics: CacheMetrics,
        *,
        ttl_seconds: float,
        timeout_seconds: float,
        retry_seconds: float = 1.0,
        prefix: str = "analytics:result-cache",
    ) -> None:
        """Connect lazily to ``url`` (``redis://host:port/db``)."""
        self._client: Redis = quick_redis(url, timeout_seconds)
        self._metrics = metrics
        self._ttl_ms = max(int(ttl_seconds * 1000), 1)
        self._outage = RedisOutage(retry_seconds)
        self._prefix = prefix
        self._release = self._client.register_script(_RELEASE)
        metrics.store_up.labels(self.name).set(1)

    @property
    def available(self) -> bool:
        """False while the store is skipped after a failure."""
        return not self._outage.down

    async def get(self, key: str) -> QueryResult | None:
        """The answer under ``key``, if Redis holds it."""
        self._check()
        try:
            data = await self._client.get(self._entry(key))
        except (RedisError, OSError) as error:
            raise self._failed("get", error) from error
        self._recovered()
        if data is None:
            return None
        return decode_entry(data if isinstance(data, bytes) else data.encode())

    async def put(self, key: str, result: QueryResult) -> None:
        """Store ``result`` under ``key`` with the TTL."""
        self._check()
        data = encode_entry(result)
        try:
            await self._client.set(self._entry(key), data, px=self._ttl_ms)
        except (RedisError, OSError) as error:
            raise self._failed("put", error) from error
        self._recovered()

    async def claim(self, key: str, ttl_seconds: float) -> str | None:
        """A token if no other process computes ``key`` now, else None."""
        self._check()
        token = secrets.token_hex(8)
        try:
            won = await self._client.set(
                self._claim(key), token, nx=True, px=max(int(ttl_seconds * 1000), 1)
            )
        except (RedisError, OSError) as error:
            raise self._failed("claim", error) from error
        self._recovered()
        return token if won else None

    async def release(self, key: str, token: str) -> None:
        """Delete the claim if it is still ours."""
        if self._outage.down:
            return
        try:
            await self._release(keys=[self._claim(key)], args=[token])
        except (RedisError, OSError) as error:
            self._failed("release", error)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _entry(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    def _claim(self, key: str) -> str:
        return f"{self._prefix}:claim:{key}"

    def _check(self) -> None:
        if self._outage.skipping():
            raise StoreUnavailableError("redis is down; retried after a pause")

    def _failed(self, operation: str, error: BaseException) -> StoreUnavailableError:
        self._metrics.store_errors.labels(self.name, operation).inc()
        self._metrics.store_up.labels(self.name).set(0)
        if self._outage.failed():
            log.warning(
                "result cache store unavailable; queries are answered uncached",
                store=self.name,
                operation=operation,
                error=f"{type(error).__name__}: {error}"[:300],
            )
        return StoreUnavailableError(f"redis {operation} failed: {error}")

    def _recovered(self) -> None:
        if self._outage.recovered():
            self._metrics.store_up.labels(self.name).set(1)
            log.info("result cache store available again", store=self.name)
