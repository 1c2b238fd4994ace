"""Query overhead: ``AnalyticsService.Query`` through a real gRPC server against the raw engine.

A is a unary Query call from this process to ``analytics serve`` (its own process, its own copy of
the data): token check, validation, compilation, the engine, the freshness lookup, response
building, audit log and the client's decoding. B is the same compiled SQL on chDB in this process.
The calls alternate (A then B, then B then A) after a warm-up; p50 and p95 of each, ratio at p50.
"""

from __future__ import annotations

import time

from bench import queries
from bench.dataset import BenchData, Size
from bench.raw_engine import RawEngine
from bench.report import Figure, at_most, median, milliseconds, percentile
from bench.served_process import ServedProcess
from service.api import convert

TARGET = 1.15


async def measure(
    served: ServedProcess,
    engine: RawEngine,
    data: BenchData,
    size: Size,
    *,
    repetitions: int,
    warmup: int,
) -> list[Figure]:
    """Both sides for the three queries on one size; the served answers are checked first."""
    model = data.model(size)
    figures = []
    for name in queries.QUERIES:
        request = queries.request(model, name)
        query = queries.compiled(data.catalog, model, name)
        truth = queries.expected(data.truth[size.label], name)
        response = await served.stub.Query(request, metadata=served.metadata)
        queries.check(
            f"Query {name} on {model.table}",
            convert.response_json(response)["data"],
            queries.api_form(truth),
        )
        served_times: list[float] = []
        raw_times: list[float] = []
        for repetition in range(warmup + repetitions):
            sides = ("A", "B") if repetition % 2 == 0 else ("B", "A")
            for side in sides:
                started = time.perf_counter()
                if side == "A":
                    reply = await served.stub.Query(request, metadata=served.metadata)
                    convert.response_json(reply)
                else:
                    queries.engine_rows(query, engine.run(query))
                elapsed = time.perf_counter() - started
                if repetition >= warmup:
                    (served_times if side == "A" else raw_times).append(elapsed)
        ratio = median(served_times) / median(raw_times)
        judged = size.label == "10m"
        figures.append(
            Figure(
                metric=f"Query {name}, {size.label}",
                a=_latencies(served_times),
                b=_latencies(raw_times),
                ratio=ratio,
                target=f"<= {TARGET:g} at p50 (10m)" if judged else "",
                passed=at_most(ratio, TARGET) if judged else None,
            )
        )
    return figures


def _latencies(samples: list[float]) -> str:
    return f"p50 {milliseconds(median(samples))}, p95 {milliseconds(percentile(samples, 0.95))}"
