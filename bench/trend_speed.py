"""Trend speed: ``AnalyticsService.Trend`` through a real gRPC server against hand-written SQL.

The data: N events of the benchmark tenant (and a tenth of that for each of three other
tenants, so that the tenant condition has rows to skip) in the shipped event model's table,
generated column by column with numpy and inserted as Arrow straight into the table (no sink:
the figure is about reading), a million rows an insert. Timestamps spread over ``DATA_FROM`` to
``DATA_TO`` (eight monthly partitions), 40 countries with skewed shares (a top 25 leaves an
``Other``). 1 % of the benchmark tenant's events are sent again with a later version on the same
UTC day with another time and country (the table's key is tenant, month, day, event id: the
latest send wins under FINAL), and 0.5 % on another day (another event, by the same key). Then
every month but the newest two is merged into one part (``OPTIMIZE ... FINAL``); the newest two
stay as the inserts and the background merges left them, as months still being written to do;
merges are stopped and the data directory copied for ``analytics serve``, as the query-overhead
benchmark does.

The request: daily count of ``page_viewed`` over the 90 days ``DATE_FROM`` to ``DATE_TO``
(dates, so the end day is included), broken down by ``country`` (top 25 by the range's count,
the rest as ``Other``), compared with the previous 90 days. A is the ``Trend`` call from this
process to the served process, the client's decoding of the answer included. B is chDB in this
process running hand-written SQL with the same semantics: one statement, the top 25 of the
current range in a CTE, and one FINAL scan over both periods grouped by period, day and class.
Both answers are first checked exactly against the ground truth computed from the generated
arrays (per event id and day the latest send, then the range: what FINAL means here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from google.protobuf import json_format

from analytics.v1 import analytics_pb2
from bench.event_ingest import COUNTRIES
from bench.raw_engine import RawEngine
from bench.report import Figure, at_most, median, milliseconds, percentile
from bench.served_process import ServedProcess, copy_data
from bench.shipped_catalog import shipped_catalog_text
from service.api import convert
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, load_catalog
from service.schema import all_ddl
from service.settings import Settings

TARGET = 1.3
DATABASE = "bench_trend"
TENANT = "bench"
OTHER_TENANTS = ("bench-other-1", "bench-other-2", "bench-other-3")
OTHER_SHARE = 0.1
"""Each other tenant holds this share of the benchmark tenant's event count."""
DATA_FROM = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
DATA_TO = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
DATE_FROM = dt.date(2026, 9, 1)
DATE_TO = dt.date(2026, 11, 29)
"""The trend's range, both days included: 90 days."""
DAYS = (DATE_TO - DATE_FROM).days + 1
EVENT = "page_viewed"
BREAKDOWN = "country"
TOP = 25
RESENT_SAME_DAY = 0.01
"""Share of the benchmark tenant's events sent again on the same UTC day (the latest wins)."""
RESENT_OTHER_DAY = 0.005
"""Share sent again up to ``RESEND_DAYS`` days away: another event (the key holds the day)."""
RESEND_DAYS = 10
CHUNK_EVENTS = 1_000_000
"""Events generated and inserted at a time (one insert each)."""
_EVENT_NAMES = ("page_viewed", "feature_used", "signed_up", "activated", "upgraded", "purchase")
_EVENT_WEIGHTS = (0.45, 0.3, 0.08, 0.07, 0.05, 0.05)
_PLATFORMS = ("web", "ios", "android", "desktop")
_PLANS = ("free", "starter", "pro", "enterprise")
_SOURCES = ("newsletter", "google", "twitter", "direct", "partner", "linkedin")
_US_PER_DAY = 86_400 * 1_000_000
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

RAW_SQL = """
WITH top AS (
    SELECT country
    FROM `{database}`.`product_events` FINAL
    WHERE tenant_id = {{tenant:String}} AND _is_deleted = 0 AND event = {{event:String}}
      AND timestamp >= {{current_from:DateTime64(6, 'UTC')}}
      AND timestamp < {{current_to:DateTime64(6, 'UTC')}}
    GROUP BY country
    ORDER BY count() DESC, country ASC
    LIMIT {{top:UInt64}}
)
SELECT
    timestamp >= {{current_from:DateTime64(6, 'UTC')}} AS current,
    toDate(timestamp) AS day,
    if(country IN top, country, NULL) AS value,
    count() AS events
FROM `{database}`.`product_events` FINAL
WHERE tenant_id = {{tenant:String}} AND _is_deleted = 0 AND event = {{event:String}}
  AND timestamp >= {{compare_from:DateTime64(6, 'UTC')}}
  AND timestamp < {{current_to:DateTime64(6, 'UTC')}}
GROUP BY current, day, value
"""
"""B: the same trend by hand (``previous`` ends where the current range starts: one scan)."""

Answer = dict[tuple[bool, str | None], list[int]]
"""(compare period?, breakdown value or None for Other) -> count per day of the period."""


@dataclass
class Truth:
    """The benchmark tenant's current events (latest version of each id) as arrays."""

    day: np.ndarray
    """Days since 1970-01-01 (UTC) of each event's timestamp."""
    country: np.ndarray
    """Index into ``COUNTRIES``."""
    counted: np.ndarray
    """Whether the event is a ``page_viewed``."""


def uuid_texts(rng: np.random.Generator, count: int) -> pa.Array:
    """``count`` random version-4 UUIDs in their canonical text, built without Python objects."""
    raw = rng.integers(0, 256, size=(count, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    digits = np.empty((count, 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 0x0F]
    text = np.full((count, 36), ord("-"), dtype=np.uint8)
    for target, source in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):
        width = {0: 8, 24: 12}.get(target, 4)
        text[:, target : target + width] = digits[:, source : source + width]
    offsets = np.arange(0, 36 * (count + 1), 36, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(
        count, pa.py_buffer(offsets), pa.py_buffer(text.tobytes())
    ).cast(pa.string())


def _country_weights() -> np.ndarray:
    weights: np.ndarray = 1.0 / np.arange(1, len(COUNTRIES) + 1) ** 1.1
    return weights / weights.sum()  # type: ignore[no-any-return]


def _texts(choices: Sequence[str], codes: np.ndarray) -> pa.Array:
    return pa.array(choices, pa.string()).take(pa.array(codes))


def event_rows(
    rng: np.random.Generator, tenant: str, count: int
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """``count`` events of ``tenant`` as the event table's Arrow rows, and their codes."""
    span = int((DATA_TO - DATA_FROM) / dt.timedelta(microseconds=1))
    start = int(DATA_FROM.timestamp()) * 1_000_000
    moments = start + rng.integers(0, span, count)
    names = rng.choice(len(_EVENT_NAMES), count, p=_EVENT_WEIGHTS)
    countries = rng.choice(len(COUNTRIES), count, p=_country_weights())
    sources = rng.choice(len(_SOURCES), count)
    one_each = pa.array(np.arange(count + 1, dtype=np.int32))
    table = pa.table(
        {
            "tenant_id": _texts([tenant], np.zeros(count, dtype=np.int32)),
            "event_id": uuid_texts(rng, count),
            "event": _texts(_EVENT_NAMES, names),
            "contact_id": pa.array(rng.integers(1, 1_000_000, count)),
            "timestamp": pa.array(moments, pa.timestamp("us", tz="UTC")),
            "platform": _texts(_PLATFORMS, rng.choice(len(_PLATFORMS), count)),
            "country": _texts(COUNTRIES, countries),
            "plan": _texts(_PLANS, rng.choice(len(_PLANS), count)),
            "properties_keys": pa.ListArray.from_arrays(
                one_each, _texts(["utm_source"], np.zeros(count, dtype=np.int32))
            ),
            "properties_values": pa.ListArray.from_arrays(one_each, _texts(_SOURCES, sources)),
            "_version": pa.array(np.ones(count, dtype=np.uint64)),
        }
    )
    return table, {"moments": moments, "names": names, "countries": countries}


@dataclass
class _Chunk:
    rows: pa.Table
    resent: pa.Table | None
    """The re-sent events of ``rows`` (benchmark tenant only), inserted after them."""
    day: np.ndarray | None
    country: np.ndarray | None
    counted: np.ndarray | None


def _chunk(rng: np.random.Generator, tenant: str, count: int) -> _Chunk:
    rows, codes = event_rows(rng, tenant, count)
    if tenant != TENANT:
        return _Chunk(rows, None, None, None, None)
    # Re-sent events (the same id, a later version): on the same UTC day with another time and
    # country (the latest send wins under FINAL), or on another day (another event).
    draw = rng.random(count)
    same_day = np.flatnonzero(draw < RESENT_SAME_DAY)
    other_day = np.flatnonzero(
        (draw >= RESENT_SAME_DAY) & (draw < RESENT_SAME_DAY + RESENT_OTHER_DAY)
    )
    moments = codes["moments"]
    countries = codes["countries"]
    latest, latest_country = moments.copy(), countries.copy()
    latest[same_day] = moments[same_day] // _US_PER_DAY * _US_PER_DAY + rng.integers(
        0, _US_PER_DAY, len(same_day)
    )
    latest_country[same_day] = rng.choice(len(COUNTRIES), len(same_day), p=_country_weights())
    days = rng.integers(1, RESEND_DAYS + 1, len(other_day)) * rng.choice([-1, 1], len(other_day))
    elsewhere = moments[other_day] + days * _US_PER_DAY
    chosen = np.concatenate([same_day, other_day])
    again = rows.take(pa.array(chosen))
    replaced = {
        "timestamp": pa.array(
            np.concatenate([latest[same_day], elsewhere]), pa.timestamp("us", tz="UTC")
        ),
        "country": _texts(
            COUNTRIES, np.concatenate([latest_country[same_day], countries[other_day]])
        ),
        "_version": pa.array(np.full(len(chosen), 2, dtype=np.uint64)),
    }
    for name, column in replaced.items():
        again = again.set_column(again.schema.get_field_index(name), name, column)
    counted = codes["names"] == _EVENT_NAMES.index(EVENT)
    return _Chunk(
        rows,
        again,
        np.concatenate([latest, elsewhere]) // _US_PER_DAY,
        np.concatenate([latest_country, countries[other_day]]),
        np.concatenate([counted, counted[other_day]]),
    )


async def load_events(
    backend: EmbeddedBackend, catalog: Catalog, events_count: int, seed: int = 14
) -> Truth:
    """Create the tables, insert every tenant's events, merge; the benchmark tenant's truth.

    The next chunk is generated (one thread, in order: the random stream is the same every run)
    while the engine inserts the current one.
    """
    for statement in all_ddl(catalog):
        await backend.command(statement)
    rng = np.random.default_rng(seed)
    plan = [(TENANT, events_count)] + [
        (tenant, max(int(events_count * OTHER_SHARE), 1)) for tenant in OTHER_TENANTS
    ]
    chunks = [
        (tenant, min(CHUNK_EVENTS, total - offset))
        for tenant, total in plan
        for offset in range(0, total, CHUNK_EVENTS)
    ]
    truth: list[_Chunk] = []
    upcoming = asyncio.ensure_future(asyncio.to_thread(_chunk, rng, *chunks[0]))
    for index in range(len(chunks)):
        chunk = await upcoming
        if index + 1 < len(chunks):
            upcoming = asyncio.ensure_future(asyncio.to_thread(_chunk, rng, *chunks[index + 1]))
        await backend.insert_arrow(catalog.database, "product_events", chunk.rows)
        if chunk.resent is not None:
            await backend.insert_arrow(catalog.database, "product_events", chunk.resent)
            truth.append(dataclasses.replace(chunk, rows=pa.table({}), resent=None))
    table = f"`{catalog.database}`.`product_events`"
    partitions = await backend.query_rows(
        "SELECT DISTINCT partition_id AS id FROM system.parts WHERE database = {db:String} "
        "AND table = 'product_events' AND active ORDER BY id",
        {"db": catalog.database},
    )
    # Months before the newest two merged into one part each; the newest two left as the
    # inserts and the background merges made them (the months still being written to).
    for row in partitions[:-2]:
        await backend.command(f"OPTIMIZE TABLE {table} PARTITION ID '{row['id']}' FINAL")
    # Held as it is now: the served process gets a copy, which must be of the same parts.
    await backend.command(f"SYSTEM STOP MERGES {table}")
    for _ in range(600):
        running = await backend.query_rows(
            "SELECT count() AS n FROM system.merges WHERE database = {db:String}",
            {"db": catalog.database},
        )
        if not running[0]["n"]:
            break
        await asyncio.sleep(0.1)
    return Truth(
        np.concatenate([c.day for c in truth if c.day is not None]),
        np.concatenate([c.country for c in truth if c.country is not None]),
        np.concatenate([c.counted for c in truth if c.counted is not None]),
    )


def _epoch_day(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def expected(truth: Truth) -> Answer:
    """The trend's answer from the generated arrays alone."""
    first = _epoch_day(DATE_FROM)
    compare_first = first - DAYS
    chosen = truth.counted & (truth.day >= compare_first) & (truth.day < first + DAYS)
    day, country = truth.day[chosen], truth.country[chosen]
    current = day >= first
    totals = np.bincount(country[current], minlength=len(COUNTRIES))
    ranked = sorted(
        (code for code in range(len(COUNTRIES)) if totals[code]),
        key=lambda code: (-totals[code], COUNTRIES[code]),
    )
    top = set(ranked[:TOP])
    answer: Answer = {}
    for is_current, start in ((True, first), (False, compare_first)):
        in_period = current == is_current
        for code in range(len(COUNTRIES)):
            rows = in_period & (country == code)
            if not rows.any() and code not in top:
                continue
            key = (not is_current, COUNTRIES[code] if code in top else None)
            line = answer.setdefault(key, [0] * DAYS)
            counts = np.bincount(day[rows] - start, minlength=DAYS)
            for index in range(DAYS):
                line[index] += int(counts[index])
    return _zero_filled(answer)


def _zero_filled(answer: Answer) -> Answer:
    """Every class in both periods (a class seen in one period is all zeros in the other)."""
    classes = {value for _, value in answer}
    return {
        (compare, value): answer.get((compare, value), [0] * DAYS)
        for compare in (False, True)
        for value in classes
    }


def trend_request() -> analytics_pb2.TrendRequest:
    """The Trend request of the benchmark."""
    body = {
        "model": "product.events",
        "series": [{"event": EVENT}],
        "dateFrom": DATE_FROM.isoformat(),
        "dateTo": DATE_TO.isoformat(),
        "interval": "day",
        "breakdown": BREAKDOWN,
        "breakdownLimit": TOP,
        "compare": "previous",
    }
    return json_format.ParseDict(body, analytics_pb2.TrendRequest())


def served_answer(response: analytics_pb2.TrendResponse) -> Answer:
    """The Trend response as an Answer (the client's decoding, as a caller would do it)."""
    document = convert.trend_json(response)
    answer: Answer = {}
    for line in document["lines"]:
        value = None if line["isOther"] else line["breakdownValue"]
        answer[(bool(line.get("compare")), value)] = [int(v) for v in line["values"]]
    return answer


def raw_parameters() -> dict[str, str]:
    """The bound values of ``RAW_SQL``."""

    def instant(day: dt.date) -> str:
        return f"{day.isoformat()} 00:00:00.000000"

    return {
        "tenant": TENANT,
        "event": EVENT,
        "current_from": instant(DATE_FROM),
        "current_to": instant(DATE_TO + dt.timedelta(days=1)),
        "compare_from": instant(DATE_FROM - dt.timedelta(days=DAYS)),
        "top": str(TOP),
    }


def raw_answer(rows: pa.Table) -> Answer:
    """B's rows as an Answer, zero-filled as the service fills its lines."""
    first = DATE_FROM
    answer: Answer = {}
    for row in rows.to_pylist():
        current = bool(row["current"])
        start = first if current else first - dt.timedelta(days=DAYS)
        line = answer.setdefault((not current, row["value"]), [0] * DAYS)
        line[(row["day"] - start).days] = int(row["events"])
    return _zero_filled(answer)


def check(what: str, answer: Answer, truth: Answer) -> None:
    """Raise unless ``answer`` equals the ground truth exactly."""
    if answer == truth:
        return
    missing = sorted(str(k) for k in truth.keys() - answer.keys())[:5]
    extra = sorted(str(k) for k in answer.keys() - truth.keys())[:5]
    different = [
        (
            key,
            [
                (i, a, b)
                for i, (a, b) in enumerate(zip(answer[key], truth[key], strict=True))
                if a != b
            ][:3],
        )
        for key in sorted(answer.keys() & truth.keys(), key=str)
        if answer[key] != truth[key]
    ][:3]
    raise AssertionError(
        f"{what}: answer differs from the ground truth: missing lines {missing}, extra {extra}, "
        f"different (bucket, answer, truth) {different}"
    )


def bench_catalog_text() -> str:
    """The shipped catalog in the trend benchmark's database."""
    return shipped_catalog_text(DATABASE)


async def measure(
    backend: EmbeddedBackend,
    work: Path,
    *,
    events_count: int,
    repetitions: int,
    warmup: int,
    judge: bool,
) -> list[Figure]:
    """Load the events, check both answers, then time A and B alternately.

    ``judge``: whether the target is judged (not at smoke scale).
    """
    catalog_path = work / "trend_catalog.toml"
    catalog_path.write_text(bench_catalog_text(), encoding="utf-8")
    catalog = load_catalog(catalog_path)
    started = time.perf_counter()
    truth = expected(await load_events(backend, catalog, events_count))
    loaded = time.perf_counter() - started
    parts = await backend.query_rows(
        "SELECT count() AS parts, uniqExact(partition_id) AS partitions FROM system.parts "
        "WHERE database = {db:String} AND table = 'product_events' AND active",
        {"db": catalog.database},
    )
    layout = f"{parts[0]['parts']} parts in {parts[0]['partitions']} partitions"
    served_dir = work / "trend_served"
    await asyncio.to_thread(copy_data, work / "raw", served_dir)
    served = await ServedProcess.start(served_dir, catalog_path, work / "serve_trend.log")
    engine = RawEngine(work / "raw")
    try:
        return await _timed(
            served,
            engine,
            truth=truth,
            events_count=events_count,
            repetitions=repetitions,
            warmup=warmup,
            loaded=f"{layout}, loaded in {loaded:.0f} s",
            judge=judge,
        )
    finally:
        engine.close()
        await served.stop()
        await asyncio.to_thread(shutil.rmtree, served_dir, True)
        await backend.command(f"DROP DATABASE `{catalog.database}` SYNC")


async def _timed(
    served: ServedProcess,
    engine: RawEngine,
    *,
    truth: Answer,
    events_count: int,
    repetitions: int,
    warmup: int,
    loaded: str,
    judge: bool,
) -> list[Figure]:
    token = mint_token(
        Settings(), subject="bench", tenant=TENANT, permissions=["product.events.read"]
    )
    metadata = (("authorization", f"Bearer {token}"),)
    request = trend_request()
    sql = RAW_SQL.format(database=DATABASE)
    parameters = raw_parameters()
    check("hand-written SQL (raw engine)", raw_answer(engine.run_sql(sql, parameters)), truth)
    check(
        "Trend (served)", served_answer(await served.stub.Trend(request, metadata=metadata)), truth
    )
    served_times: list[float] = []
    raw_times: list[float] = []
    for repetition in range(warmup + repetitions):
        sides = ("A", "B") if repetition % 2 == 0 else ("B", "A")
        for side in sides:
            began = time.perf_counter()
            if side == "A":
                served_answer(await served.stub.Trend(request, metadata=metadata, timeout=120))
            else:
                raw_answer(engine.run_sql(sql, parameters))
            elapsed = time.perf_counter() - began
            if repetition >= warmup:
                (served_times if side == "A" else raw_times).append(elapsed)
    ratio = median(served_times) / median(raw_times)
    lines = len(truth)
    return [
        Figure(
            metric=f"Trend {DAYS} days, top {TOP} + Other, compare, {_label(events_count)}",
            a=_latencies(served_times),
            b=_latencies(raw_times) + " (hand-written SQL)",
            ratio=ratio,
            target=f"<= {TARGET:g} at p50",
            passed=at_most(ratio, TARGET) if judge else None,
            note=f"{lines} lines, answers exact; {len(served_times)} runs each; {loaded}",
        )
    ]


def _label(count: int) -> str:
    if count >= 1_000_000 and count % 1_000_000 == 0:
        return f"{count // 1_000_000}m events"
    return f"{count // 1000}k events"


def _latencies(samples: list[float]) -> str:
    return f"p50 {milliseconds(median(samples))}, p95 {milliseconds(percentile(samples, 0.95))}"
