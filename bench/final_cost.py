"""FINAL cost: the benchmark queries with and without FINAL on the raw engine, answers checked.

A is the compiled SQL as the service runs it (with FINAL); B is the same text without FINAL (whose
answers are wrong: it counts superseded versions). Both run on the same table in this process, one
after the other, alternating which goes first. Two states of each table are measured: *settled*
(inserted in CDC order, then background merges left to finish, as a replica normally is) and
*unmerged* (merges stopped before the insert: every version still in the part it was written to,
the worst case right after a burst of changes).
"""

from __future__ import annotations

import time

from bench import queries
from bench.dataset import BenchData, Size, TableState
from bench.raw_engine import RawEngine
from bench.report import Figure, at_most, median, milliseconds

TARGET = 2.0


def measure(
    engine: RawEngine,
    data: BenchData,
    size: Size,
    state: TableState,
    *,
    unmerged: bool,
    repetitions: int,
    warmup: int,
) -> list[Figure]:
    """FINAL against no FINAL for the three queries on one table; FINAL answers checked exactly."""
    model = data.model(size, unmerged=unmerged)
    figures = []
    for name in queries.QUERIES:
        query = queries.compiled(data.catalog, model, name)
        truth = queries.expected(data.truth[size.label], name)
        answer = queries.engine_rows(query, engine.run(query))
        queries.check(f"FINAL {name} on {model.table}", answer, truth)
        with_final: list[float] = []
        without: list[float] = []
        for repetition in range(warmup + repetitions):
            order = (True, False) if repetition % 2 == 0 else (False, True)
            for final in order:
                started = time.perf_counter()
                engine.run(query, final=final)
                elapsed = time.perf_counter() - started
                if repetition >= warmup:
                    (with_final if final else without).append(elapsed)
        ratio = median(with_final) / median(without)
        judged = size.label == "10m"
        figures.append(
            Figure(
                metric=f"FINAL {name}, {size.label}, {'unmerged' if unmerged else 'settled'}",
                a=f"p50 {milliseconds(median(with_final))}",
                b=f"p50 {milliseconds(median(without))}",
                ratio=ratio,
                target=f"<= {TARGET:g} (10m)" if judged else "",
                passed=at_most(ratio, TARGET) if judged else None,
                note=f"{state.describe()}, answer exact",
            )
        )
    return figures
