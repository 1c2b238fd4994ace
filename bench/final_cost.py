"""FINAL cost: the benchmark queries with and without FINAL on the raw engine, answers checked.

A is the compiled SQL as the service runs it (with FINAL); B is the same text without FINAL (whose
answers are wrong: it counts superseded versions). Both run on the same table in this process, one
after the other, alternating which goes first, in each of the states of ``dataset.TABLE_STATES``:
*settled* and *live* (the newest tenth of the table just changed, merges running) are judged;
*unmerged* (merges stopped: every partition holds unmerged versions) is the worst case, reported.
The table's partitioning and merge settings are the service's own (``service.schema``).
"""

from __future__ import annotations

import time

from bench import queries
from bench.dataset import BenchData, Size, TableState
from bench.raw_engine import RawEngine
from bench.report import Figure, at_most, median, milliseconds

TARGET = 2.0
JUDGED_STATES = ("settled", "live")


def measure(
    engine: RawEngine,
    data: BenchData,
    size: Size,
    physical: TableState,
    *,
    state: str,
    repetitions: int,
    warmup: int,
) -> list[Figure]:
    """FINAL against no FINAL for the three queries on one table; FINAL answers checked exactly."""
    model = data.model(size, state)
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
        judged = size.label == "10m" and state in JUDGED_STATES
        figures.append(
            Figure(
                metric=f"FINAL {name}, {size.label}, {state}",
                a=f"p50 {milliseconds(median(with_final))}",
                b=f"p50 {milliseconds(median(without))}",
                ratio=ratio,
                target=f"<= {TARGET:g} (10m)" if judged else "",
                passed=at_most(ratio, TARGET) if judged else None,
                note=f"{physical.describe()}, answer exact",
            )
        )
    return figures
