"""Funnel, retention and lifecycle speed: the RPCs through a gRPC server against hand-written SQL.

The data (``bench.insight_data``): ``ACTORS`` actors of one tenant with about ``EVENTS`` events
of realistic journeys over 26 weeks (``bench.journeys``), three other tenants beside them, 1 %
of the events sent twice, the table left as the trend benchmark leaves its table, and the data
directory copied for ``analytics serve``. Every answer is first checked exactly against the
ground truth computed from the generated arrays (``bench.insight_truth``): counts, and the
funnels' median and average times to convert.

A is the RPC from this process to the served process (result cache off: every call runs its
query), the client's reading of the answer included. B is chDB in this process running
hand-written SQL over the same rows (same tenant, same range, FINAL within partitions, as the
service reads: ``FINAL_WITHIN_PARTITIONS`` in ``service.insights.retention``). A and B
alternate (A then B, then B then A), after a warm-up, so that a shared machine's noise hits both
alike; ratios are of medians in one run.

* Funnel: ``signed_up -> activated -> invited_teammate -> purchased`` over the whole 26 weeks,
  14-day window. B: ``windowFunnel`` per actor, then actors per level (counts only: B computes
  no times to convert). Target: A's p50 <= 1 s and A/B <= 1.3. Beside it, without targets:
  ``strict`` against ``windowFunnel(..., 'strict_order')`` over every event of the actors (the
  same question but not the same definition: B's counts are shown, not checked), and
  ``unordered`` and a funnel excluding ``session_started`` between steps 1 and 2, each against
  the ordered ``windowFunnel`` B timed in its own loop (a yardstick, not the same question).
* Retention: weekly, 8 intervals, ``first_time`` cohorts of ``signed_up`` (an actor's first ever,
  read over all history) returning with ``session_started``, the 8 weeks ending with the range's
  last week. B: per actor the week of its first sign-up and its session weeks, cohort x interval
  counts. Target: A's p50 <= 1 s.
* Lifecycle: weekly over 12 weeks, any event. B: per actor its active weeks and first week,
  statuses per week. Reported.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from google.protobuf import json_format

from analytics.v1 import analytics_pb2
from bench import insight_truth, journeys
from bench.insight_data import DATA_FROM, DATA_TO, DATABASE, TENANT, catalog_text, load, micros
from bench.raw_engine import RawEngine
from bench.report import Figure, at_most, median, milliseconds, percentile
from bench.served_process import ServedProcess, copy_data
from service.api import convert
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import load_catalog
from service.settings import Settings

ACTORS = 1_000_000
EVENTS = 10_000_000
P50_TARGET = 1.0
"""Seconds: the funnel's and the retention's p50."""
RATIO_TARGET = 1.3
"""The ordered funnel against hand-written windowFunnel SQL."""
STEPS = (journeys.SIGNED_UP, journeys.ACTIVATED, journeys.INVITED_TEAMMATE, journeys.PURCHASED)
WINDOW = dt.timedelta(days=14)
DATE_FROM = DATA_FROM.date()
DATE_TO = (DATA_TO - dt.timedelta(days=1)).date()
"""The funnel's range, both days included: the whole data."""
EXCLUDED = "session_started"
RETENTION_TARGET = journeys.SIGNED_UP
RETENTION_RETURNING = "session_started"
INTERVALS = 8
LIFECYCLE_WEEKS = 12
LIFECYCLE_FROM = DATE_TO - dt.timedelta(days=7 * LIFECYCLE_WEEKS - 1)
"""A Monday: the 12 weeks end with the range's last (Sunday) day."""
_MICROS = 1_000_000
_INSTANT = "%Y-%m-%d %H:%M:%S.%f"

WINDOW_FUNNEL_SQL = """
SELECT level, count() AS actors FROM (
    SELECT contact_id, windowFunnel({{window:UInt64}}{mode})(
        toUInt64(toUnixTimestamp64Micro(timestamp)),
        event = {{e1:String}}, event = {{e2:String}}, event = {{e3:String}}, event = {{e4:String}}
    ) AS level
    FROM `{database}`.`product_events` FINAL
    WHERE tenant_id = {{tenant:String}} AND _is_deleted = 0
      AND timestamp >= {{date_from:DateTime64(6, 'UTC')}}
      AND timestamp < {{date_to:DateTime64(6, 'UTC')}}{events}
    GROUP BY contact_id
)
GROUP BY level
SETTINGS do_not_merge_across_partitions_select_final = 1
"""
"""B of the funnels: actors per furthest level (the strict form reads every event)."""
_STEP_EVENTS = "\n      AND event IN ({e1:String}, {e2:String}, {e3:String}, {e4:String})"

RETENTION_SQL = """
SELECT cohort, k, count() AS actors FROM (
    SELECT contact_id,
        minIf(toMonday(timestamp), event = {{target:String}}) AS cohort,
        groupUniqArrayIf(toMonday(timestamp), event = {{returning:String}}) AS weeks
    FROM `{database}`.`product_events` FINAL
    WHERE tenant_id = {{tenant:String}} AND _is_deleted = 0
      AND timestamp < {{end:DateTime64(6, 'UTC')}}
      AND (event = {{target:String}}
           OR (event = {{returning:String}} AND timestamp >= {{start:DateTime64(6, 'UTC')}}))
    GROUP BY contact_id
    HAVING cohort >= {{first_cohort:Date}}
)
ARRAY JOIN arrayConcat([0], arrayFilter(x -> x >= 1 AND x < {{intervals:Int64}},
    arrayMap(w -> intDiv(dateDiff('day', cohort, w), 7), weeks))) AS k
GROUP BY cohort, k
SETTINGS do_not_merge_across_partitions_select_final = 1
"""
"""B of the retention: the cohort of each actor's first-ever sign-up, its session weeks."""

LIFECYCLE_SQL = """
SELECT p AS week, multiIf(NOT has(weeks, p), 'dormant', first = p, 'new',
    has(weeks, p - 7), 'returning', 'resurrecting') AS status, count() AS actors
FROM (
    SELECT contact_id, groupUniqArray(toMonday(timestamp)) AS weeks,
        min(toMonday(timestamp)) AS first
    FROM `{database}`.`product_events` FINAL
    WHERE tenant_id = {{tenant:String}} AND _is_deleted = 0
      AND timestamp < {{end:DateTime64(6, 'UTC')}}
    GROUP BY contact_id
)
ARRAY JOIN arrayFilter(p -> has(weeks, p) OR has(weeks, p - 7), {{weeks:Array(Date)}}) AS p
GROUP BY week, status
SETTINGS do_not_merge_across_partitions_select_final = 1
"""
"""B of the lifecycle: per actor its active weeks and first week, a status per week."""

Steps = list[insight_truth.StepFigures]


@dataclass(frozen=True)
class _Variant:
    """One funnel of the benchmark: its request, truth and B."""

    name: str
    order: str
    exclusion: bool
    b_sql: str
    b_label: str
    b_checked: bool
    """Whether B answers the same question (its counts are checked against the truth)."""


def _instant(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime(_INSTANT)


def _monday(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def funnel_request(order: str, exclusion: bool) -> analytics_pb2.FunnelRequest:
    """The Funnel request of a variant."""
    body: dict[str, Any] = {
        "model": "product.events",
        "steps": [{"event": name} for name in STEPS],
        "dateFrom": DATE_FROM.isoformat(),
        "dateTo": DATE_TO.isoformat(),
        "window": f"{WINDOW.days}d",
    }
    if order:
        body["order"] = order
    if exclusion:
        body["exclusions"] = [{"event": EXCLUDED, "fromStep": 1, "toStep": 2}]
    return json_format.ParseDict(body, analytics_pb2.FunnelRequest())


def funnel_answer(response: analytics_pb2.FunnelResponse) -> Steps:
    """The Funnel response as (actors, median, average) per step."""
    return [
        (
            int(step.actors),
            step.median_seconds if step.HasField("median_seconds") else None,
            step.average_seconds if step.HasField("average_seconds") else None,
        )
        for step in response.steps
    ]


def levels_answer(rows: pa.Table) -> list[int]:
    """windowFunnel's actors per level as actors per step (reaching it or further)."""
    per_level = {int(r["level"]): int(r["actors"]) for r in rows.to_pylist()}
    return [sum(n for level, n in per_level.items() if level >= k) for k in range(1, 5)]


def check_steps(what: str, answer: Steps, truth: Steps) -> None:
    """Raise unless ``answer`` equals the truth (times to 1e-9 relative)."""
    if len(answer) != len(truth):
        raise AssertionError(f"{what}: {len(answer)} steps, expected {len(truth)}")
    for index, (got, want) in enumerate(zip(answer, truth, strict=True), start=1):
        same = got[0] == want[0] and all(
            (a is None and b is None)
            or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9))
            for a, b in zip(got[1:], want[1:], strict=True)
        )
        if not same:
            raise AssertionError(f"{what}: step {index} is {got}, the ground truth {want}")


def _window_parameters() -> dict[str, str]:
    return {
        "window": str(int(WINDOW.total_seconds()) * _MICROS),
        "e1": STEPS[0],
        "e2": STEPS[1],
        "e3": STEPS[2],
        "e4": STEPS[3],
        "tenant": TENANT,
        "date_from": _instant(DATA_FROM),
        "date_to": _instant(DATA_TO),
    }


def _variants() -> list[_Variant]:
    ordered = WINDOW_FUNNEL_SQL.format(database=DATABASE, mode="", events=_STEP_EVENTS)
    strict = WINDOW_FUNNEL_SQL.format(database=DATABASE, mode=", 'strict_order'", events="")
    yardstick = "ordered windowFunnel, timed in the same loop"
    return [
        _Variant("ordered", "", False, ordered, "windowFunnel", True),
        _Variant("strict", "strict", False, strict, "windowFunnel 'strict_order'", False),
        _Variant("unordered", "unordered", False, ordered, yardstick, False),
        _Variant(f"ordered, {EXCLUDED} excluded 1->2", "", True, ordered, yardstick, False),
    ]


def _funnel_truths(events: journeys.Journeys) -> dict[str, Steps]:
    kinds = tuple(journeys.code(name) for name in STEPS)
    window = int(WINDOW.total_seconds()) * _MICROS
    ranged = insight_truth.in_range(events, micros(DATA_FROM), micros(DATA_TO))
    return {
        "ordered": insight_truth.ordered(ranged, kinds, window, None),
        "strict": insight_truth.strict(ranged, kinds, window),
        "unordered": insight_truth.unordered(ranged, kinds, window),
        f"ordered, {EXCLUDED} excluded 1->2": insight_truth.ordered(
            ranged, kinds, window, (journeys.code(EXCLUDED), 1, 2)
        ),
    }


async def measure(
    backend: EmbeddedBackend,
    work: Path,
    *,
    actors: int,
    events: int,
    repetitions: int,
    parts: Sequence[str],
    judge: bool,
) -> list[Figure]:
    """Load the journeys, check every answer, then time A and B alternately.

    ``parts``: ``funnel`` and/or ``retention`` (with the lifecycle). ``judge``: whether the
    targets are judged (not at smoke scale).
    """
    catalog_path = work / "insight_catalog.toml"
    catalog_path.write_text(catalog_text(), encoding="utf-8")
    catalog = load_catalog(catalog_path)
    loaded = await load(backend, catalog, actors=actors, events=events)
    served_dir = work / "insight_served"
    await asyncio.to_thread(copy_data, work / "raw", served_dir)
    # The engine's work is measured: repeated requests must not be answered from the cache.
    served = await ServedProcess.start(
        served_dir,
        catalog_path,
        work / "serve_insight.log",
        extra_env={"ANALYTICS_RESULT_CACHE": "false"},
    )
    engine = RawEngine(work / "raw")
    token = mint_token(
        Settings(), subject="bench", tenant=TENANT, permissions=["product.events.read"]
    )
    run = _Run(
        served,
        engine,
        (("authorization", f"Bearer {token}"),),
        repetitions,
        judge,
        f"{loaded.layout}, loaded in {loaded.seconds:.0f} s",
        _label(actors, events),
    )
    figures: list[Figure] = []
    try:
        if "funnel" in parts:
            figures += await run.funnels(await asyncio.to_thread(_funnel_truths, loaded.events))
        if "retention" in parts:
            figures += await run.retention(loaded.events)
            figures += await run.lifecycle(loaded.events)
    finally:
        engine.close()
        await served.stop()
        await asyncio.to_thread(shutil.rmtree, served_dir, True)
        await backend.command(f"DROP DATABASE `{catalog.database}` SYNC")
    return figures


@dataclass
class _Run:
    served: ServedProcess
    engine: RawEngine
    metadata: tuple[tuple[str, str], ...]
    repetitions: int
    judge: bool
    data: str
    scale: str

    async def funnels(self, truths: dict[str, Steps]) -> list[Figure]:
        parameters = _window_parameters()
        figures = []
        for variant in _variants():
            request = funnel_request(variant.order, variant.exclusion)
            truth = truths[variant.name]

            async def a_side(request: analytics_pb2.FunnelRequest = request) -> Steps:
                response = await self.served.stub.Funnel(
                    request, metadata=self.metadata, timeout=300
                )
                return funnel_answer(response)

            def b_side(sql: str = variant.b_sql) -> list[int]:
                return levels_answer(self.engine.run_sql(sql, parameters))

            check_steps(f"Funnel {variant.name} (served)", await a_side(), truth)
            b_counts = b_side()
            b_note = ""
            if variant.b_checked:
                check_steps(
                    f"{variant.b_label} (raw engine)",
                    [(n, t[1], t[2]) for n, t in zip(b_counts, truth, strict=True)],
                    truth,
                )
            elif variant.order == "strict":
                b_note = f"; B's actors per step {b_counts}" + (
                    " (the same)" if b_counts == [t[0] for t in truth] else ""
                )
            main = variant.name == "ordered"
            runs = self.repetitions if main else max(3, self.repetitions // 3)
            a_times, b_times = await _alternate(a_side, b_side, runs, warmup=1)
            ratio = median(a_times) / median(b_times)
            passed = None
            target = ""
            if main:
                target = f"p50 <= {P50_TARGET:g} s, <= {RATIO_TARGET:g} at p50"
                passed = median(a_times) <= P50_TARGET and at_most(ratio, RATIO_TARGET)
            actors = ", ".join(f"{t[0]:,}" for t in truth)
            figures.append(
                Figure(
                    metric=f"Funnel 4 steps {variant.name}, 14d window, 26 weeks, {self.scale}",
                    a=_latencies(a_times),
                    b=f"{_latencies(b_times)} ({variant.b_label})",
                    ratio=ratio,
                    target=target,
                    passed=passed if self.judge else None,
                    note=(
                        f"actors per step {actors}, answers exact{b_note}; {runs} runs each"
                        + (f"; {self.data}" if main else "")
                    ),
                )
            )
        return figures

    async def retention(self, events: journeys.Journeys) -> list[Figure]:
        last = _monday(DATE_TO)
        first_cohort = last - dt.timedelta(weeks=INTERVALS - 1)
        end = micros(DATA_TO)
        truth = insight_truth.retention(
            events,
            target=journeys.code(RETENTION_TARGET),
            returning=journeys.code(RETENTION_RETURNING),
            first_cohort=first_cohort,
            cohorts=INTERVALS,
            intervals=INTERVALS,
            end=end,
        )
        request = json_format.ParseDict(
            {
                "model": "product.events",
                "target": {"event": RETENTION_TARGET},
                "returning": {"event": RETENTION_RETURNING},
                "period": "week",
                "intervals": INTERVALS,
                "retentionType": "first_time",
                "dateTo": DATE_TO.isoformat(),
            },
            analytics_pb2.RetentionRequest(),
        )
        sql = RETENTION_SQL.format(database=DATABASE)
        parameters = {
            "tenant": TENANT,
            "target": RETENTION_TARGET,
            "returning": RETENTION_RETURNING,
            "end": _instant(DATA_TO),
            "start": f"{first_cohort.isoformat()} 00:00:00.000000",
            "first_cohort": first_cohort.isoformat(),
            "intervals": str(INTERVALS),
        }

        async def a_side() -> list[tuple[int, list[int | None]]]:
            response = await self.served.stub.Retention(
                request, metadata=self.metadata, timeout=300
            )
            table = convert.retention_json(response)["tables"][0]["cohorts"]
            return [(int(c["size"]), list(c["counts"])) for c in table]

        def b_side() -> list[tuple[int, list[int | None]]]:
            counts: dict[tuple[dt.date, int], int] = {
                (r["cohort"], int(r["k"])): int(r["actors"])
                for r in self.engine.run_sql(sql, parameters).to_pylist()
            }
            rows = []
            for index in range(INTERVALS):
                cohort = first_cohort + dt.timedelta(weeks=index)
                cells: list[int | None] = [
                    counts.get((cohort, k), 0) if k < INTERVALS - index else None
                    for k in range(INTERVALS)
                ]
                rows.append((counts.get((cohort, 0), 0), cells))
            return rows

        for what, answer in (("Retention (served)", await a_side()), ("B", b_side())):
            if answer != truth:
                raise AssertionError(f"{what}: {answer} differs from the ground truth {truth}")
        a_times, b_times = await _alternate(a_side, b_side, self.repetitions, warmup=1)
        sizes = sum(size for size, _ in truth)
        return [
            Figure(
                metric=f"Retention weekly, 8 intervals, first_time, {self.scale}",
                a=_latencies(a_times),
                b=f"{_latencies(b_times)} (hand-written SQL)",
                ratio=median(a_times) / median(b_times),
                target=f"p50 <= {P50_TARGET:g} s",
                passed=median(a_times) <= P50_TARGET if self.judge else None,
                note=(f"{sizes:,} actors in 8 cohorts, answers exact; {len(a_times)} runs each"),
            )
        ]

    async def lifecycle(self, events: journeys.Journeys) -> list[Figure]:
        end = micros(DATA_TO)
        truth = insight_truth.lifecycle(
            events, first_week=LIFECYCLE_FROM, weeks=LIFECYCLE_WEEKS, end=end
        )
        request = json_format.ParseDict(
            {
                "model": "product.events",
                "period": "week",
                "dateFrom": LIFECYCLE_FROM.isoformat(),
                "dateTo": DATE_TO.isoformat(),
            },
            analytics_pb2.LifecycleRequest(),
        )
        weeks = [LIFECYCLE_FROM + dt.timedelta(weeks=k) for k in range(LIFECYCLE_WEEKS)]
        sql = LIFECYCLE_SQL.format(database=DATABASE)
        parameters = {
            "tenant": TENANT,
            "end": _instant(DATA_TO),
            "weeks": "[" + ", ".join(f"'{w.isoformat()}'" for w in weeks) + "]",
        }

        async def a_side() -> dict[str, list[int]]:
            response = await self.served.stub.Lifecycle(
                request, metadata=self.metadata, timeout=300
            )
            return {
                line["status"]: line["values"] for line in convert.lifecycle_json(response)["lines"]
            }

        def b_side() -> dict[str, list[int]]:
            lines = {name: [0] * LIFECYCLE_WEEKS for name in truth}
            for row in self.engine.run_sql(sql, parameters).to_pylist():
                sign = -1 if row["status"] == "dormant" else 1
                lines[row["status"]][weeks.index(row["week"])] = sign * int(row["actors"])
            return lines

        for what, answer in (("Lifecycle (served)", await a_side()), ("B", b_side())):
            if answer != truth:
                raise AssertionError(f"{what}: {answer} differs from the ground truth {truth}")
        runs = max(3, self.repetitions // 2)
        a_times, b_times = await _alternate(a_side, b_side, runs, warmup=1)
        active = sum(truth["new"]) + sum(truth["returning"]) + sum(truth["resurrecting"])
        return [
            Figure(
                metric=f"Lifecycle weekly, {LIFECYCLE_WEEKS} weeks, any event, {self.scale}",
                a=_latencies(a_times),
                b=f"{_latencies(b_times)} (hand-written SQL)",
                ratio=median(a_times) / median(b_times),
                target="",
                passed=None,
                note=f"{active:,} active actor-weeks, answers exact; {runs} runs each",
            )
        ]


async def _alternate(
    a_side: Callable[[], Awaitable[Any]], b_side: Callable[[], Any], runs: int, *, warmup: int
) -> tuple[list[float], list[float]]:
    """A and B alternately (A then B, then B then A): their times after ``warmup`` rounds."""
    a_times: list[float] = []
    b_times: list[float] = []
    for repetition in range(warmup + runs):
        sides = ("A", "B") if repetition % 2 == 0 else ("B", "A")
        for side in sides:
            began = time.perf_counter()
            if side == "A":
                await a_side()
            else:
                b_side()
            elapsed = time.perf_counter() - began
            if repetition >= warmup:
                (a_times if side == "A" else b_times).append(elapsed)
    return a_times, b_times


def _label(actors: int, events: int) -> str:
    def size(count: int) -> str:
        if count >= 1_000_000 and count % 1_000_000 == 0:
            return f"{count // 1_000_000}m"
        return f"{count // 1000}k"

    return f"{size(events)} events, {size(actors)} actors"


def _latencies(samples: list[float]) -> str:
    return f"p50 {milliseconds(median(samples))}, p90 {milliseconds(percentile(samples, 0.9))}"
