"""Streaming: rows/s a gRPC client receives from ``StreamQuery`` against the raw engine.

The request groups the deals by id (one row per live deal: 1 M or 10 M rows) with the largest
amount of each, so the result is as large as the table. A is a client in this process reading
every chunk from ``analytics serve`` and decoding its packed columns into Python values; B is the
raw engine producing the same rows as Arrow record batches in this process. Alternating, after a
warm-up. The server's memory is sampled (VmRSS every 10 ms) during the service's streams: the
engine's aggregation and sort are done when the first chunk leaves (a full sort emits nothing
before it has all rows), so the growth from the first chunk to the end of the stream is what the
service holds per streamed row: it must stay flat. The process's overall peak (VmHWM) is shown too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from analytics.v1 import analytics_pb2
from bench.dataset import TENANT, BenchData, Size
from bench.raw_engine import RawEngine
from bench.report import Figure, at_least_rate, median, rate
from bench.served_process import ServedProcess
from service.api import convert
from service.query.compiler import QueryLimits, compile_query
from service.settings import Settings

TARGET_ROWS_PER_SECOND = 1_000_000
TARGET_RATIO = 2.0
MEMORY_GROWTH_LIMIT_MIB = 64.0


def _body(size: Size, limit: int) -> dict[str, Any]:
    return {
        "model": f"bench.{size.model_name}",
        "groupBy": "id",
        "aggregate": "max",
        "field": "amount",
        "limit": limit,
        "chunkRows": 8192,
    }


@dataclass
class _Memory:
    """The server's resident memory while one stream runs, in MiB."""

    at_first_chunk: float = 0.0
    highest_after: float = 0.0

    @property
    def growth(self) -> float:
        return max(self.highest_after - self.at_first_chunk, 0.0)


async def _receive(
    served: ServedProcess, request: analytics_pb2.StreamQueryRequest, memory: _Memory | None = None
) -> int:
    """Rows received, every column decoded to Python values as a client would."""
    rows = 0
    sampler: asyncio.Task[None] | None = None
    try:
        async for message in served.stub.StreamQuery(request, metadata=served.metadata):
            if message.HasField("chunk"):
                if memory is not None and sampler is None:
                    memory.at_first_chunk = served.rss_mib()
                    sampler = asyncio.create_task(_sample(served, memory))
                for column in message.chunk.columns:
                    which = column.WhichOneof("values")
                    if which:
                        list(getattr(column, which).values)
                rows += message.chunk.row_count
    finally:
        if sampler is not None:
            sampler.cancel()
    return rows


async def _sample(served: ServedProcess, memory: _Memory) -> None:
    while True:
        memory.highest_after = max(memory.highest_after, served.rss_mib())
        await asyncio.sleep(0.01)


async def measure(
    served: ServedProcess,
    engine: RawEngine,
    data: BenchData,
    size: Size,
    *,
    repetitions: int,
    warmup: int,
) -> list[Figure]:
    """Client rows/s against raw rows/s for one size, and the server's memory growth."""
    expected = data.truth[size.label].count
    body = _body(size, size.rows * 2)
    request = json_format.ParseDict(body, analytics_pb2.StreamQueryRequest())
    settings = Settings()
    limits = QueryLimits(settings.max_stream_limit, settings.max_stream_limit, settings.max_offset)
    query = compile_query(convert.query_request(request), data.catalog, TENANT, limits)

    samples: list[_Memory] = []
    served_times: list[float] = []
    raw_times: list[float] = []
    for repetition in range(warmup + repetitions):
        sides = ("A", "B") if repetition % 2 == 0 else ("B", "A")
        for side in sides:
            started = time.perf_counter()
            if side == "A":
                samples.append(_Memory())
                rows = await _receive(served, request, samples[-1])
            else:
                rows = engine.stream_rows(query)
            elapsed = time.perf_counter() - started
            if rows != expected:
                raise AssertionError(f"stream side {side}: {rows} rows, expected {expected}")
            if repetition >= warmup:
                (served_times if side == "A" else raw_times).append(elapsed)
    peak = served.peak_rss_mib()
    memory = max(samples, key=lambda sample: sample.growth)

    served_rate = expected / median(served_times)
    raw_rate = expected / median(raw_times)
    ratio = raw_rate / served_rate
    judged = size.rows >= 1_000_000
    return [
        Figure(
            metric=f"StreamQuery rows/s, {size.label}",
            a=rate(served_rate, "rows"),
            b=rate(raw_rate, "rows"),
            ratio=ratio,
            target=f">= 1 M rows/s, ratio <= {TARGET_RATIO:g}" if judged else "",
            passed=(
                at_least_rate(served_rate, TARGET_ROWS_PER_SECOND) and ratio <= TARGET_RATIO
                if judged
                else None
            ),
            note=f"{expected:,} rows",
        ),
        Figure(
            metric=f"StreamQuery server memory, {size.label}",
            a=f"+{memory.growth:.0f} MiB while streaming",
            b=f"{memory.at_first_chunk:.0f} MiB at first chunk, peak {peak:.0f} MiB",
            ratio=None,
            target=f"growth < {MEMORY_GROWTH_LIMIT_MIB:g} MiB",
            passed=memory.growth < MEMORY_GROWTH_LIMIT_MIB,
        ),
    ]
