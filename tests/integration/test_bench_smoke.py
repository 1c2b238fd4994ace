"""The benchmark scripts keep working: ``python -m bench`` at smoke scale on the embedded parts.

Query overhead, FINAL cost and streaming on tiny datasets; event ingestion, trend, join, funnel,
retention speed and the noisy neighbour at ``--quick`` scale; the mixed CDC load (on the local
stack's PostgreSQL, Kafka and Connect) for a few seconds per engine. Each in a subprocess (chDB
opens one data directory per process, and the test session may hold another). No timing is
asserted: only
that every figure is produced and that the benchmark checked its answers exactly (it raises
otherwise, which fails the run).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from service.settings import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def run_bench(tmp_path: Path, *arguments: str) -> list[str]:
    """``python -m bench --quick <arguments>``: the metric names of its table (checked to be
    the results file's contents). ``--quick`` judges no target, so any exit but 0 fails."""
    results = tmp_path / "latest.md"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench",
        "--quick",
        *arguments,
        "--work-dir",
        str(tmp_path / "work"),
        "--output",
        str(results),
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, err.decode()[-3000:]
    table = out.decode()
    assert results.read_text() == table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    return [row.split("|")[1].strip() for row in rows[1:]]


async def test_bench_runs_at_smoke_scale(tmp_path: Path) -> None:
    metrics = await run_bench(
        tmp_path, "--rows", "5k,20k", "--only", "query,final,stream", "--repetitions", "2"
    )
    for size in ("5k", "20k"):
        for query in ("count", "group-by", "daily"):
            assert f"Query {query}, {size}" in metrics
            finals = [m for m in metrics if m.startswith(f"FINAL {query}, {size},")]
            assert [m.split(",")[2].split()[0] for m in finals] == ["settled", "live", "unmerged"]
            assert all("answer exact" in m for m in finals)
        assert f"StreamQuery rows/s, {size}" in " ".join(metrics)
        assert f"StreamQuery server memory, {size}" in metrics


async def test_bench_events_and_trend_run_at_smoke_scale(tmp_path: Path) -> None:
    metrics = await run_bench(tmp_path, "--only", "events,trend")
    for form in ("columns", "events"):
        assert any(m.startswith(f"Ingest events/s, {form} form") for m in metrics)
    for shape in ("x 10 events", "x 100 events"):
        assert any(m.startswith("Ingest ack latency") and shape in m for m in metrics)
        assert any(m.startswith("Ingest -> visible in Query") and shape in m for m in metrics)
    trend = [m for m in metrics if m.startswith("Trend 90 days")]
    assert len(trend) == 1
    assert "answers exact" in trend[0]


async def test_bench_join_runs_at_smoke_scale(tmp_path: Path) -> None:
    metrics = await run_bench(tmp_path, "--only", "join", "--repetitions", "2")
    joins = [m for m in metrics if "Query join" in m]
    assert len(joins) == 3
    assert all("answers exact" in m and "200k deals" in m for m in joins)


async def test_bench_funnel_and_retention_run_at_smoke_scale(tmp_path: Path) -> None:
    metrics = await run_bench(tmp_path, "--only", "funnel,retention", "--repetitions", "2")
    funnels = [m for m in metrics if m.startswith("Funnel 4 steps")]
    assert [m.split(",")[0] for m in funnels] == [
        "Funnel 4 steps ordered",
        "Funnel 4 steps strict",
        "Funnel 4 steps unordered",
        "Funnel 4 steps ordered",
    ]
    assert all("answers exact" in m and "200k events, 20k actors" in m for m in funnels)
    for insight in ("Retention weekly", "Lifecycle weekly"):
        rows = [m for m in metrics if m.startswith(insight)]
        assert len(rows) == 1
        assert "answers exact" in rows[0]


async def test_bench_budgets_runs_at_smoke_scale(tmp_path: Path) -> None:
    metrics = await run_bench(tmp_path, "--only", "budgets")
    assert len(metrics) == 2
    assert metrics[0].startswith("Noisy neighbour: 5 tenants' dashboards beside 1 tenant flooding")
    assert metrics[1].startswith("Noisy neighbour without a budget")


async def test_bench_mixed_cdc_load_runs_at_smoke_scale(tmp_path: Path) -> None:
    metrics = await run_bench(tmp_path, "--only", "mixed", "--fresh-seconds", "5")
    for engine in ("embedded engine", "HTTP backend (chDB front)"):
        label = f"Mixed CDC load, {engine}"
        assert any(m.startswith(f"{label}: commit -> visible in Query") for m in metrics)
        assert any(m.startswith(f"{label}: worker ingestion during the load") for m in metrics)


async def test_bench_rollups_run_at_smoke_scale(tmp_path: Path) -> None:
    metrics = await run_bench(tmp_path, "--only", "rollups", "--repetitions", "2")
    assert [m.split(",")[0] for m in metrics] == [
        "Rollup-served dashboard queries through gRPC",
        "Rollup-served",
        "Rollup build",
    ]
    assert "each answer equal to the base table's" in metrics[0]
