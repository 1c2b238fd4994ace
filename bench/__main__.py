"""``python -m bench``: run the benchmarks, print one table of figures, save it.

Usage: ``scripts/bench [--rows 1m,10m]
[--only query,final,stream,ingest,fresh,events,trend,funnel,retention,server,join,restart,mixed,
cache,budgets,rollups]
[--quick] [--sweep]``.
See bench/README.md for the method behind each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from bench import (
    budget_fairness,
    cache_speed,
    cdc_mixed_load,
    dataset,
    event_ingest,
    final_cost,
    freshness,
    ingestion,
    insight_speed,
    join_speed,
    query_overhead,
    restart,
    rollup_speed,
    server_path,
    streaming,
    trend_speed,
)
from bench.raw_engine import RawEngine
from bench.report import Figure, render
from bench.served_process import ServedProcess, copy_data
from service.backends.embedded import EmbeddedBackend
from service.settings import PROJECT_ROOT

BENCHMARKS = (
    "query",
    "final",
    "stream",
    "ingest",
    "fresh",
    "events",
    "trend",
    "funnel",
    "retention",
    "server",
    "join",
    "restart",
    "mixed",
    "cache",
    "budgets",
    "rollups",
)
DEFAULT_WORK_DIR = PROJECT_ROOT / ".data" / "bench"
DEFAULT_OUTPUT = PROJECT_ROOT / "bench" / "results" / "latest.md"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; a bad value exits with a message naming the option."""
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument(
        "--rows", default=None, help="dataset sizes (default 1m,10m; quick 20k,100k)"
    )
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions")
    parser.add_argument("--repetitions", type=int, default=None, help="timed runs per query")
    parser.add_argument("--fresh-seconds", type=float, default=None, help="freshness load time")
    parser.add_argument(
        "--sweep", action="store_true", help="events: also sweep the sink's flush settings"
    )
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="scratch data")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results file")
    parser.add_argument("--no-output", action="store_true", help="print only")
    parser.add_argument("--keep-data", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in BENCHMARKS]
    if unknown or not only:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    args.only = only
    try:
        args.sizes = dataset.parse_sizes(args.rows or ("20k,100k" if args.quick else "1m,10m"))
    except ValueError as error:
        parser.error(str(error))
    if args.repetitions is None:
        args.repetitions = 5 if args.quick else 30
    if args.repetitions < 1:
        parser.error("--repetitions: must be at least 1")
    return args


async def run(args: argparse.Namespace) -> list[Figure]:
    """Run the selected benchmarks in order and return their figures."""
    work: Path = args.work_dir
    await asyncio.to_thread(_fresh_directory, work)
    figures: list[Figure] = []
    backend = EmbeddedBackend(work / "raw", pool_size=2)
    trend: list[Figure] = []
    try:
        if "trend" in args.only:
            # First, while the engine holds nothing else: its served process gets a copy of the
            # whole data directory. The trend's database is dropped afterwards.
            events = 200_000 if args.quick else 10_000_000
            # A trend over 10 m events takes seconds: as streaming, fewer runs at that size.
            repetitions = max(5, args.repetitions // (2 * max(events // 1_000_000, 1)))
            _say(f"trend speed, {events:,} events, {repetitions} runs per side")
            trend = await trend_speed.measure(
                backend,
                work,
                events_count=events,
                repetitions=repetitions,
                warmup=1,
                judge=not args.quick,
            )
        # Second, for the same reason; its database is dropped afterwards too.
        figures += await _insights(args, backend, work)
        if "join" in args.only:
            deals = 200_000 if args.quick else 10_000_000
            # A join over 10 m deals takes a few hundred ms: half the runs of the query figures.
            repetitions = max(5, args.repetitions // 2)
            _say(f"join speed, {deals:,} deals, {repetitions} runs per side and request")
            figures += await join_speed.measure(
                backend,
                work,
                deals=deals,
                repetitions=repetitions,
                warmup=1,
                judge=not args.quick,
            )
        if {"query", "final", "stream"} & set(args.only):
            figures += await _engine_benchmarks(args, backend, work)
        if "ingest" in args.only:
            events = 20_000 if args.quick else 300_000
            rounds = 2 if args.quick else 3
            _say(f"ingestion, {events:,} events, {rounds} rounds, embedded and over HTTP")
            figures += await ingestion.measure(backend, events, rounds, work)
        if "fresh" in args.only:
            seconds = args.fresh_seconds or (10.0 if args.quick else 60.0)
            _say(f"freshness, {seconds:.0f} s of load")
            figures += await freshness.measure(backend, seconds)
        if "server" in args.only:
            rounds = 3 if args.quick else 5
            _say(f"CDC writes on the server path (HTTP front over chDB), {rounds} runs per side")
            figures += await server_path.measure(work, rounds)
        if "restart" in args.only:
            rounds = 3 if args.quick else 5
            _say(f"restart to first write, {rounds} SIGKILL/restart rounds per membership")
            figures += await restart.measure(work, rounds)
        if "events" in args.only:
            events = 20_000 if args.quick else 300_000
            rounds = 2 if args.quick else 3
            seconds = 5.0 if args.quick else 20.0
            _say(f"event ingestion, {events:,} events, {rounds} rounds, {seconds:.0f} s of load")
            figures += await event_ingest.measure(
                backend,
                work,
                events_count=events,
                rounds=rounds,
                load_seconds=seconds,
                sweep=args.sweep,
                judge=not args.quick,
            )
        figures += (
            await _mixed(args, work)
            + await _cache(args, backend, work)
            + await _budgets(args, backend, work)
            + await _rollups(args, backend, work)
        )
        figures += trend
    finally:
        await backend.close()
        if not args.keep_data:
            await asyncio.to_thread(shutil.rmtree, work, True)
    return figures


async def _insights(args: argparse.Namespace, backend: EmbeddedBackend, work: Path) -> list[Figure]:
    parts = [name for name in ("funnel", "retention") if name in args.only]
    if not parts:
        return []
    actors, events = (
        (20_000, 200_000) if args.quick else (insight_speed.ACTORS, insight_speed.EVENTS)
    )
    # A funnel over 10 m events takes about a second: a third of the query figures' runs.
    repetitions = max(5, args.repetitions // 3)
    _say(f"{', '.join(parts)}: {events:,} events of {actors:,} actors, {repetitions} runs")
    return await insight_speed.measure(
        backend,
        work,
        actors=actors,
        events=events,
        repetitions=repetitions,
        parts=parts,
        judge=not args.quick,
    )


async def _mixed(args: argparse.Namespace, work: Path) -> list[Figure]:
    if "mixed" not in args.only:
        return []
    seconds = args.fresh_seconds or (10.0 if args.quick else 60.0)
    backends = ", ".join(cdc_mixed_load.BACKENDS)
    _say(f"mixed CDC load, {seconds:.0f} s of load per backend ({backends})")
    return await cdc_mixed_load.measure(work, seconds, judge=not args.quick)


async def _cache(args: argparse.Namespace, backend: EmbeddedBackend, work: Path) -> list[Figure]:
    if "cache" not in args.only:
        return []
    events = 200_000 if args.quick else 10_000_000
    refreshes = max(5, args.repetitions)
    _say(f"result cache, {events:,} events, {refreshes} dashboard refreshes per side")
    return await cache_speed.measure(
        backend, work, events_count=events, refreshes=refreshes, judge=not args.quick
    )


async def _rollups(args: argparse.Namespace, backend: EmbeddedBackend, work: Path) -> list[Figure]:
    if "rollups" not in args.only:
        return []
    events = 200_000 if args.quick else 10_000_000
    runs = max(10, args.repetitions)
    _say(f"rollups, {events:,} events, {len(rollup_speed.QUERIES)} queries x {runs} runs")
    return await rollup_speed.measure(
        backend, work, events_count=events, runs=runs, judge=not args.quick
    )


async def _budgets(args: argparse.Namespace, backend: EmbeddedBackend, work: Path) -> list[Figure]:
    if "budgets" not in args.only:
        return []
    events = 200_000 if args.quick else 10_000_000
    tenants = 5 if args.quick else 20
    rounds = 2 if args.quick else max(3, args.repetitions // 6)
    _say(f"noisy neighbour, {events:,} events, {tenants} dashboard tenants, {rounds} rounds")
    return await budget_fairness.measure(
        backend,
        work,
        events_count=events,
        tenants_count=tenants,
        rounds=rounds,
        judge=not args.quick,
    )


async def _engine_benchmarks(
    args: argparse.Namespace, backend: EmbeddedBackend, work: Path
) -> list[Figure]:
    sizes: list[dataset.Size] = args.sizes
    _say(f"preparing {', '.join(s.label for s in sizes)} rows")
    data = await dataset.prepare(backend, sizes, optimize=args.quick, live="final" in args.only)
    _say(f"tables settled after {data.settled_seconds:.0f} s")
    engine = RawEngine(work / "raw")
    figures: list[Figure] = []
    warmup = 1 if args.quick else 3
    try:
        if {"query", "stream"} & set(args.only):
            catalog_path = work / "catalog.toml"
            catalog_path.write_text(data.catalog_text)
            copy_data(work / "raw", work / "served")
            served = await ServedProcess.start(work / "served", catalog_path, work / "serve.log")
            try:
                if "query" in args.only:
                    for size in sizes:
                        _say(f"query overhead, {size.label}")
                        figures += await query_overhead.measure(
                            served, engine, data, size, repetitions=args.repetitions, warmup=warmup
                        )
                if "stream" in args.only:
                    for size in sizes:
                        _say(f"streaming, {size.label}")
                        figures += await streaming.measure(
                            served,
                            engine,
                            data,
                            size,
                            repetitions=max(5, args.repetitions // (2 * size.copies)),
                            warmup=1,
                        )
            finally:
                await served.stop()
        if "final" in args.only:
            for size in sizes:
                _say(f"FINAL cost, {size.label}")
                for state in dataset.TABLE_STATES:
                    if state == "live":
                        await dataset.insert_newest(backend, data, size)
                    if state == "unmerged":
                        await dataset.load(backend, data, size, state)
                    model = data.model(size, state)
                    physical = await dataset.table_state(backend, data.catalog.database, model)
                    figures += final_cost.measure(
                        engine,
                        data,
                        size,
                        physical,
                        state=state,
                        repetitions=args.repetitions,
                        warmup=warmup,
                    )
    finally:
        engine.close()
    return figures


def _fresh_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _say(message: str) -> None:
    print(f"[bench {dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table, write it to the results file; exit 1 if a target was missed."""
    args = parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    figures = asyncio.run(run(args))
    heading = (
        f"bench {' '.join(sys.argv[1:]) or '(defaults)'} - "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f} at the end"
    )
    table = render(figures, heading)
    print(table)
    if not args.no_output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table + "\n")
    return 1 if any(f.passed is False for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
