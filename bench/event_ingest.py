"""Event ingestion: ``EventService.Ingest`` into the embedded engine, against direct inserts.

A is ``analytics serve`` in its own process (the benchmark's client and the server do not share a
Python interpreter: each has its own GIL, and the two cores are the machine's), on a data
directory of its own holding the shipped event model's table, empty at the start. The client
sends messages serialized before the clock starts, so its own work is gRPC's.

* **Throughput**: one client stream of N events in messages of ``BATCH_EVENTS`` (1 000), in each
  wire form (``columns``: packed lists with flattened properties; ``events``: one ``Event``
  message each), timed from the first message to the answer (every event written); then the
  tenant's count through ``Query`` must be N. B inserts the same Arrow rows the sink writes
  (``service.events.sink.event_table`` of the fast path's columns) straight into a table of the
  same DDL in the benchmark process, one insert per ``flush_events`` rows (the sink's flush
  size when events arrive faster than it writes). Rounds alternate the order of the three; the
  figures are the medians.
* **Acknowledgement latency** under a steady 10 k events/s: 50 callers, each sending one Ingest
  call on a fixed schedule (open loop: a slow answer does not delay the next send), in calls of
  100 events (``BATCHED``, 100 calls/s, judged) and of 10 (``SMALL_BATCHES``, 1 000 calls/s, a
  stress row without target); p50 and p99 from the send to the answer, a failed call counting as
  never answered, and the served process's CPU per call. A caller producing 200 events a second
  batches them as event SDKs do (PostHog's flush at 20 to 100 events, mobile SDKs 50, Segment's
  15, with a flush interval): the judged row is the issue's load in such calls. Calls of 10
  events measure the per-call cost instead, 1.2 to 1.9 ms of server CPU across gRPC's call
  machinery, authentication, validation and the audit record, so one process tops out near
  1 000 calls/s on this machine (the row shows where it stands).
* **Visible**: meanwhile a prober sends one event tagged with a unique property, then polls
  ``Query`` (count, filtered on the tag, on a tenant of its own) until it counts 1; p50 and p99
  from the send to the first answer that counts it.

With ``sweep`` the nine sink settings of ``SWEEP`` are served at once and measured in turns
(``sweep_settings``), reported as rows without targets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import os
import re
import shutil
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
from google.protobuf import json_format

from analytics.v1 import analytics_pb2, events_pb2
from bench.report import Figure, at_least_rate, median, milliseconds, percentile, rate
from bench.served_process import ServedProcess, copy_data
from bench.shipped_catalog import shipped_catalog_text
from service.api import convert
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, Model, load_catalog
from service.events.columnar import EventBatch, FlatProperties, fast_columns
from service.events.sink import event_table
from service.events.validation import EventColumns, EventLimits
from service.schema import all_ddl
from service.settings import PROJECT_ROOT, Settings

MODEL = "product.events"
DATABASE = "bench_events"
BATCH_EVENTS = 1_000
TARGET_EVENTS_PER_SECOND = 100_000
TARGET_ACK_P99 = 0.200
TARGET_VISIBLE_P99 = 0.500
LOAD_CHANNELS = 5
"""Connections the load's callers share (ten callers each)."""
PROBES = 100
"""Visibility probes over a full load run (fewer on a shorter one: one per 200 ms at most)."""
PROBE_POLL_SECONDS = 0.010
CALL_TIMEOUT_SECONDS = 10.0
"""Deadline of each call under load: an overloaded server fails calls instead of queueing on."""
SWEEP: tuple[tuple[float, int], ...] = tuple(
    (ms, events) for ms in (10.0, 50.0, 200.0) for events in (1_000, 5_000, 20_000)
)
"""(flush milliseconds, flush events) settings the sweep runs."""
SWEEP_EVENTS = 100_000
SWEEP_LOAD_SECONDS = 5.0
SWEEP_ROUNDS = 3

_INGEST = "/analytics.v1.EventService/Ingest"
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Each channel its own connection (channels to one target share one by default).
    ("grpc.use_local_subchannel_pool", 1),
]
_EVENT_NAMES = (
    "page_viewed",
    "feature_used",
    "signed_up",
    "activated",
    "invited_teammate",
    "upgraded",
    "purchase",
)
_EVENT_WEIGHTS = (0.45, 0.25, 0.06, 0.05, 0.07, 0.04, 0.08)
_PLATFORMS = ("web", "ios", "android", "desktop")
_PLANS = ("free", "starter", "pro", "enterprise")
_SOURCES = ("newsletter", "google", "twitter", "direct", "partner", "linkedin")
COUNTRIES = (
    "US", "GB", "DE", "FR", "ES", "IT", "NL", "BE", "SE", "NO", "DK", "FI", "PL", "CZ", "AT",
    "CH", "IE", "PT", "GR", "HU", "RO", "BG", "HR", "SK", "SI", "EE", "LV", "LT", "CA", "MX",
    "BR", "AR", "CL", "JP", "KR", "IN", "AU", "NZ", "ZA", "SG",
)  # fmt: skip
"""Forty countries: a top 25 leaves an Other (the trend benchmark uses them too)."""
_PREPARE = """
import asyncio, sys
from pathlib import Path
from service.backends.embedded import EmbeddedBackend
from service.catalog import load_catalog
from service.schema import all_ddl

async def main() -> None:
    backend = EmbeddedBackend(Path(sys.argv[1]), pool_size=1)
    for statement in all_ddl(load_catalog(Path(sys.argv[2]))):
        await backend.command(statement)
    await backend.close()

asyncio.run(main())
"""


@dataclass(frozen=True)
class SinkSetting:
    """The group-commit thresholds a served process runs with."""

    flush_milliseconds: float
    flush_events: int

    def env(self) -> dict[str, str]:
        """The settings as the served process reads them."""
        return {
            "ANALYTICS_EVENT_FLUSH_MILLISECONDS": f"{self.flush_milliseconds:g}",
            "ANALYTICS_EVENT_FLUSH_EVENTS": str(self.flush_events),
            "ANALYTICS_REST_PORT": "0",
        }

    def label(self) -> str:
        """As the table shows it."""
        return f"flush {self.flush_events} events / {self.flush_milliseconds:g} ms"

    def name(self) -> str:
        """For file names."""
        return f"{self.flush_events}_{self.flush_milliseconds:g}"


@dataclass(frozen=True)
class Events:
    """Events as texts, column by column, properties flattened (``offsets`` per event)."""

    event_ids: list[str]
    events: list[str]
    actors: list[str]
    timestamps: list[str]
    counts: list[int]
    keys: list[str]
    values: list[str]
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.events)

    def batch(self, start: int, stop: int) -> EventBatch:
        """Events ``start`` to ``stop`` as the servicer hands the columns form to the domain."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        return EventBatch(
            self.event_ids[start:stop],
            self.events[start:stop],
            self.actors[start:stop],
            self.timestamps[start:stop],
            flat=FlatProperties(
                self.counts[start:stop], self.keys[first:last], self.values[first:last]
            ),
        )

    def columns_message(self, start: int, stop: int) -> bytes:
        """One IngestRequest of the columnar form, serialized."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        columns = events_pb2.EventColumns(
            event_ids=self.event_ids[start:stop],
            events=self.events[start:stop],
            actors=self.actors[start:stop],
            timestamps=self.timestamps[start:stop],
            property_counts=self.counts[start:stop],
            property_keys=self.keys[first:last],
            property_values=self.values[first:last],
        )
        return events_pb2.IngestRequest(model=MODEL, columns=columns).SerializeToString()

    def events_message(self, start: int, stop: int) -> bytes:
        """One IngestRequest of ``Event`` messages, serialized."""
        request = events_pb2.IngestRequest(model=MODEL)
        for index in range(start, stop):
            first, last = int(self.offsets[index]), int(self.offsets[index + 1])
            request.events.add(
                event_id=self.event_ids[index],
                event=self.events[index],
                actor=self.actors[index],
                timestamp=self.timestamps[index],
                properties=dict(zip(self.keys[first:last], self.values[first:last], strict=True)),
            )
        return request.SerializeToString()


def generate_events(
    count: int, seed: int, now: dt.datetime, span: dt.timedelta = dt.timedelta(days=90)
) -> Events:
    """``count`` events of the ``span`` before ``now``: random UUIDs, 4 or 5 properties each.

    Properties: ``platform``, ``country`` and ``plan`` (declared by the event model) and
    ``utm_source`` (free-form); ``purchase`` events carry a declared ``revenue`` as well.
    """
    rng = np.random.default_rng(seed)
    raw = rng.bytes(16 * count)
    ids = [str(uuid.UUID(bytes=raw[i * 16 : i * 16 + 16], version=4)) for i in range(count)]
    names = rng.choice(np.array(_EVENT_NAMES), count, p=_EVENT_WEIGHTS)
    actors = rng.integers(1, 200_000, count).astype(str)
    latest = np.datetime64(now.astimezone(dt.UTC).replace(tzinfo=None), "us")
    ages = rng.integers(0, span // dt.timedelta(microseconds=1), count).astype("timedelta64[us]")
    timestamps = np.char.add(np.datetime_as_string(latest - ages, unit="us"), "Z")
    purchase = names == "purchase"
    revenue = np.char.mod("%.2f", rng.integers(100, 50_000, count) / 100)
    keys = np.array(["platform", "country", "plan", "utm_source", "revenue"])
    value_columns = np.stack(
        [
            rng.choice(np.array(_PLATFORMS), count),
            rng.choice(np.array(COUNTRIES), count),
            rng.choice(np.array(_PLANS), count),
            rng.choice(np.array(_SOURCES), count),
            revenue,
        ],
        axis=1,
    )
    present = np.ones((count, len(keys)), dtype=bool)
    present[:, 4] = purchase
    counts = present.sum(axis=1)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Events(
        event_ids=ids,
        events=names.tolist(),
        actors=actors.tolist(),
        timestamps=timestamps.tolist(),
        counts=counts.tolist(),
        keys=np.broadcast_to(keys, present.shape)[present].tolist(),
        values=value_columns[present].tolist(),
        offsets=offsets,
    )


def _batches(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(start + size, count)


def bench_catalog_text() -> str:
    """The shipped catalog in a database of the benchmark's own."""
    return shipped_catalog_text(DATABASE)


async def prepare_directory(data_dir: Path, catalog_path: Path) -> None:
    """Create the catalog's empty tables in ``data_dir`` from a process of its own.

    (chDB opens one data directory per process, and this one holds the benchmark's.)
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PREPARE, str(data_dir), str(catalog_path), cwd=PROJECT_ROOT
    )
    if await asyncio.wait_for(process.wait(), 120) != 0:
        raise RuntimeError(f"could not create the event tables in {data_dir}")


class Client:
    """Ingest and Query calls to one served process, with a token per tenant."""

    def __init__(self, served: ServedProcess, channels: int = 1) -> None:
        """Open ``channels`` connections to ``served``."""
        self.served = served
        self.channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{served.port}", options=_CHANNEL_OPTIONS)
            for _ in range(channels)
        ]
        # Messages go out as serialized beforehand: no serializer.
        self.ingest_calls = [
            channel.stream_unary(
                _INGEST,
                request_serializer=None,
                response_deserializer=events_pb2.IngestResponse.FromString,
            )
            for channel in self.channels
        ]
        self._tokens: dict[str, tuple[tuple[str, str], ...]] = {}

    def metadata(self, tenant: str) -> tuple[tuple[str, str], ...]:
        """The authorization metadata of ``tenant`` (write and read of the event model)."""
        if tenant not in self._tokens:
            token = mint_token(
                Settings(),
                subject="bench",
                tenant=tenant,
                permissions=["product.events.write", "product.events.read"],
            )
            self._tokens[tenant] = (("authorization", f"Bearer {token}"),)
        return self._tokens[tenant]

    async def ingest(
        self,
        tenant: str,
        messages: Sequence[bytes],
        channel: int = 0,
        deadline_seconds: float = 600,
    ) -> events_pb2.IngestResponse:
        """One Ingest stream of ``messages``; its answer."""
        response: events_pb2.IngestResponse = await self.ingest_calls[channel](
            iter(messages), metadata=self.metadata(tenant), timeout=deadline_seconds
        )
        return response

    async def count(self, tenant: str, filters: dict[str, str] | None = None) -> int:
        """The tenant's events (matching ``filters``) through Query."""
        request = json_format.ParseDict(
            {"model": MODEL, "filters": filters or {}}, analytics_pb2.QueryRequest()
        )
        response = await self.served.stub.Query(request, metadata=self.metadata(tenant), timeout=30)
        rows = convert.response_json(response)["data"]
        return int(rows[0]["count"]) if rows else 0

    async def close(self) -> None:
        """Close the connections."""
        for channel in self.channels:
            await channel.close()


def flush_stats(served: ServedProcess) -> tuple[int, int]:
    """(flushes, events written) the served sink reports at ``/metrics``."""
    if served.rest_address is None:
        return 0, 0
    with urllib.request.urlopen(f"{served.rest_address}/metrics", timeout=10) as reply:  # noqa: S310
        text = reply.read().decode()

    def value(name: str) -> int:
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return int(float(match.group(1))) if match else 0

    return (
        value("analytics_event_sink_flush_events_count"),
        value("analytics_event_sink_flush_events_sum"),
    )


@dataclass
class Throughput:
    """Events/s of each side over the rounds, and the served sink's flushes."""

    columns: list[float] = dataclasses.field(default_factory=list)
    events: list[float] = dataclasses.field(default_factory=list)
    direct: list[float] = dataclasses.field(default_factory=list)
    flushes: int = 0
    flushed_events: int = 0


async def _served_throughput(
    client: Client, tenant: str, messages: Sequence[bytes], count: int
) -> float:
    started = time.perf_counter()
    response = await client.ingest(tenant, messages)
    elapsed = time.perf_counter() - started
    if response.accepted != count or response.rejected:
        raise AssertionError(
            f"Ingest accepted {response.accepted} of {count} events, "
            f"rejected {len(response.rejected)}"
        )
    stored = await client.count(tenant)
    if stored != count:
        raise AssertionError(f"Query counts {stored} events of tenant {tenant}, expected {count}")
    return count / elapsed


async def _direct_throughput(
    backend: EmbeddedBackend, catalog: Catalog, tables: Sequence[pa.Table]
) -> float:
    for statement in all_ddl(catalog):
        await backend.command(statement)
    model = _model(catalog)
    started = time.perf_counter()
    for table in tables:
        await backend.insert_arrow(catalog.database, model.table, table)
    elapsed = time.perf_counter() - started
    rows = await backend.query_rows(
        f"SELECT count() AS n FROM `{catalog.database}`.`{model.table}` FINAL"  # noqa: S608
    )
    expected: int = sum(t.num_rows for t in tables)
    stored = int(rows[0]["n"])
    if stored != expected:
        raise AssertionError(f"the direct table holds {stored} events, expected {expected}")
    await backend.command(f"DROP DATABASE `{catalog.database}` SYNC")
    return expected / elapsed


def direct_tables(
    model: Model, events: Events, flush_events: int, now: dt.datetime
) -> list[pa.Table]:
    """The sink's rows of ``events`` (fast path, as served), one table per ``flush_events``."""
    parts: list[EventColumns] = []
    for start, stop in _batches(len(events), BATCH_EVENTS):
        columns = fast_columns(
            model, "direct", events.batch(start, stop), now=now, limits=EventLimits()
        )
        if columns is None:
            raise AssertionError("the generated events do not take the fast validation path")
        parts.append(columns)
    per_flush = max(flush_events // BATCH_EVENTS, 1)
    return [
        event_table(parts[i : i + per_flush], version=i + 1)
        for i in range(0, len(parts), per_flush)
    ]


@dataclass(frozen=True)
class Setup:
    """What every served run shares: the engine of this process, scratch space, the catalog."""

    backend: EmbeddedBackend
    work: Path
    template: Path
    """A data directory with the catalog's empty tables, copied for each served process."""
    catalog_path: Path
    catalog: Catalog

    async def serve(self, setting: SinkSetting, name: str) -> ServedProcess:
        """``analytics serve`` with ``setting`` on a copy of the template (``events_<name>``)."""
        data_dir = self.work / f"events_{name}"
        await asyncio.to_thread(copy_data, self.template, data_dir)
        return await ServedProcess.start(
            data_dir,
            self.catalog_path,
            self.work / f"serve_events_{name}.log",
            extra_env=setting.env(),
        )

    async def remove(self, name: str) -> None:
        """Remove a served process's data directory."""
        await asyncio.to_thread(shutil.rmtree, self.work / f"events_{name}", True)


def _throughput_messages(count: int, seed: int) -> list[bytes]:
    """``count`` events of the last 90 days in columnar messages of ``BATCH_EVENTS``."""
    events = generate_events(count, seed, dt.datetime.now(dt.UTC))
    return [events.columns_message(a, b) for a, b in _batches(count, BATCH_EVENTS)]


async def throughput(
    client: Client, setup: Setup, setting: SinkSetting, *, count: int, rounds: int, seed: int = 1
) -> Throughput:
    """Rounds of A (each wire form) and B (direct), alternating the order; see the docstring."""
    now = dt.datetime.now(dt.UTC)
    events = await asyncio.to_thread(generate_events, count, seed, now)
    spans = list(_batches(count, BATCH_EVENTS))
    messages = {
        "columns": [events.columns_message(a, b) for a, b in spans],
        "events": [events.events_message(a, b) for a, b in spans],
    }
    tables = direct_tables(_model(setup.catalog), events, setting.flush_events, now)
    # Warm-up: the served process's first Ingest imports what it imports lazily (pandas, through
    # pyarrow's conversion of Python lists: about 0.3 s on the event loop).
    for form, sent in messages.items():
        await client.ingest(f"warmup-{form}", sent[:2])
    result = Throughput()
    flushes_before, flushed_before = flush_stats(client.served)
    run = uuid.uuid4().hex[:8]
    forms = ("columns", "events", "direct")
    for round_number in range(rounds):
        order = forms if round_number % 2 == 0 else forms[::-1]
        for form in order:
            if form == "direct":
                direct = dataclasses.replace(setup.catalog, database=f"bench_events_direct_{run}")
                result.direct.append(await _direct_throughput(setup.backend, direct, tables))
            else:
                tenant = f"{form}-{run}-{round_number}"
                rate_ = await _served_throughput(client, tenant, messages[form], count)
                getattr(result, form).append(rate_)
    flushes_after, flushed_after = flush_stats(client.served)
    result.flushes = flushes_after - flushes_before
    result.flushed_events = flushed_after - flushed_before
    return result


@dataclass(frozen=True)
class LoadShape:
    """A steady load: ``callers``, each sending ``rate`` Ingest calls/s of ``batch`` events."""

    callers: int
    rate: float
    batch: int

    @property
    def offered(self) -> float:
        """Events per second offered."""
        return self.callers * self.rate * self.batch

    def label(self) -> str:
        """As the table shows it."""
        return f"{self.callers} callers x {self.rate:g} calls/s x {self.batch} events"


SMALL_BATCHES = LoadShape(50, 20.0, 10)
"""The stress load: 10 k events/s from 50 callers in calls of 10 events (1 000 calls/s)."""
BATCHED = LoadShape(50, 2.0, 100)
"""The judged load: 10 k events/s from 50 callers in calls of 100 events (100 calls/s)."""
JUDGED = BATCHED


@dataclass
class Latency:
    """What one load run measured (latencies in seconds; failed calls counted apart)."""

    shape: LoadShape
    acknowledged: list[float]
    visible: list[float]
    probe_acknowledged: list[float]
    failures: dict[str, int]
    probe_failures: int
    written_events: int
    seconds: float
    late_sends: float
    """The latest a send left after its scheduled time (the client's own lag)."""
    server_cpu_seconds: float = 0.0
    """CPU time the served process used during the load, every thread counted."""

    def cpu_per_call(self) -> float:
        """Server CPU seconds per answered call (0 without answers)."""
        answered = len(self.acknowledged)
        return self.server_cpu_seconds / answered if answered else 0.0

    def ack(self, share: float) -> float:
        """The acknowledgement latency percentile, a failed call counting as never answered."""
        failed = sum(self.failures.values())
        return percentile([*self.acknowledged, *[math.inf] * failed], share)

    def seen(self, share: float) -> float:
        """The visibility percentile, a failed probe counting as never visible."""
        return percentile([*self.visible, *[math.inf] * self.probe_failures], share)


def load_messages(shape: LoadShape, seconds: float, seed: int = 2) -> list[bytes]:
    """The serialized calls of ``shape`` over ``seconds``, caller after caller."""
    total = shape.callers * max(int(seconds * shape.rate), 1) * shape.batch
    # Live traffic: events of the last minute (one monthly partition per flush).
    events = generate_events(total, seed, dt.datetime.now(dt.UTC), dt.timedelta(minutes=1))
    return [events.columns_message(a, b) for a, b in _batches(total, shape.batch)]


async def load(
    client: Client, shape: LoadShape, seconds: float, messages: Sequence[bytes] | None = None
) -> Latency:
    """``shape`` for ``seconds`` on a fixed schedule (open loop), and a prober."""
    per_caller = max(int(seconds * shape.rate), 1)
    if messages is None:
        messages = await asyncio.to_thread(load_messages, shape, seconds)
    tenant = f"load-{uuid.uuid4().hex[:8]}"
    acknowledged: list[float] = []
    failures: dict[str, int] = {}
    details: dict[str, str] = {}
    lateness: list[float] = []
    pending: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    async def send(message: bytes, channel: int) -> None:
        started = time.perf_counter()
        try:
            response = await client.ingest(
                tenant, [message], channel, deadline_seconds=CALL_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            failures[code] = failures.get(code, 0) + 1
            details.setdefault(code, str(error.details()))
            return
        acknowledged.append(time.perf_counter() - started)
        if response.accepted != shape.batch:
            failures["REJECTED"] = failures.get("REJECTED", 0) + 1

    async def caller(number: int, start: float) -> None:
        channel = number % len(client.channels)
        for k in range(per_caller):
            due = start + (k + number / shape.callers) / shape.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness.append(max(-delay, 0.0))
            message = messages[number * per_caller + k]
            pending.append(asyncio.create_task(send(message, channel)))

    probe_count = min(PROBES, max(int(seconds / 0.2), 1))
    cpu_before = process_cpu_seconds(client.served.process.pid)
    start = loop.time() + 0.2
    began = time.perf_counter()
    callers = [asyncio.create_task(caller(n, start)) for n in range(shape.callers)]
    probe = asyncio.create_task(_probe(client, start, seconds, probe_count))
    await asyncio.gather(*callers)
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - began
    visible, probe_acknowledged, probe_failures = await probe
    cpu_used = process_cpu_seconds(client.served.process.pid) - cpu_before
    for code, text in details.items():
        print(f"[bench] Ingest under load ({shape.label()}): {code}: {text[:200]}", file=sys.stderr)
    written = len(acknowledged) * shape.batch
    if not failures:
        stored = await client.count(tenant)
        if stored != written:
            raise AssertionError(f"Query counts {stored} events of the load, expected {written}")
    return Latency(
        shape,
        acknowledged,
        visible,
        probe_acknowledged,
        failures,
        probe_failures,
        written,
        elapsed,
        max(lateness, default=0.0),
        cpu_used,
    )


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process ``pid`` has used, every thread counted."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # utime and stime are the 14th and 15th fields; the split starts at the 3rd.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _probe(
    client: Client, start: float, seconds: float, count: int
) -> tuple[list[float], list[float], int]:
    """Send a tagged event, poll Query until it counts it; ``count`` times over the load.

    Returns the visibility and acknowledgement latencies and the number of failed probes.
    """
    loop = asyncio.get_running_loop()
    tenant = f"probe-{uuid.uuid4().hex[:8]}"
    visible: list[float] = []
    acknowledged: list[float] = []
    failed = 0
    for number in range(count):
        due = start + (number + 0.5) * seconds / count
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        tag = uuid.uuid4().hex
        event = events_pb2.Event(
            event_id=str(uuid.uuid4()),
            event="probe",
            actor="1",
            timestamp=dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            properties={"probe": tag, "platform": "web"},
        )
        message = events_pb2.IngestRequest(model=MODEL, events=[event]).SerializeToString()
        started = time.perf_counter()
        try:
            response = await client.ingest(tenant, [message], deadline_seconds=CALL_TIMEOUT_SECONDS)
            acknowledged.append(time.perf_counter() - started)
            if response.accepted != 1:
                raise AssertionError(f"probe event not accepted: {response}")
            deadline = started + CALL_TIMEOUT_SECONDS
            while await client.count(tenant, {"properties.probe": f"eq.{tag}"}) != 1:
                if time.perf_counter() > deadline:
                    raise AssertionError("an acknowledged probe event is not visible after 10 s")
                await asyncio.sleep(PROBE_POLL_SECONDS)
        except grpc.aio.AioRpcError:
            failed += 1
            continue
        visible.append(time.perf_counter() - started)
    return visible, acknowledged, failed


def _model(catalog: Catalog) -> Model:
    model = catalog.get("product", "events")
    if model is None:
        raise RuntimeError("the catalog has no product.events")
    return model


async def measure(
    backend: EmbeddedBackend,
    work: Path,
    *,
    events_count: int,
    rounds: int,
    load_seconds: float,
    sweep: bool,
    judge: bool,
) -> list[Figure]:
    """Throughput, acknowledgement and visibility at the default sink settings (and the sweep).

    ``judge``: whether the targets are judged (not at smoke scale).
    """
    catalog_path = work / "events_catalog.toml"
    catalog_path.write_text(bench_catalog_text(), encoding="utf-8")
    setup = Setup(backend, work, work / "events_template", catalog_path, load_catalog(catalog_path))
    await prepare_directory(setup.template, catalog_path)
    defaults = Settings()
    setting = SinkSetting(defaults.event_flush_milliseconds, defaults.event_flush_events)
    served = await setup.serve(setting, "defaults")
    client = Client(served, channels=LOAD_CHANNELS)
    try:
        result = await throughput(client, setup, setting, count=events_count, rounds=rounds)
        loads = [await load(client, shape, load_seconds) for shape in (SMALL_BATCHES, BATCHED)]
    finally:
        await client.close()
        await served.stop()
    await setup.remove("defaults")
    figures = _throughput_figures(result, setting, events_count, rounds, judge=judge)
    for latency in loads:
        figures += _latency_figures(latency, setting, judge=judge and latency.shape == JUDGED)
    if sweep:
        figures += await sweep_settings(
            setup,
            events_count=min(events_count, SWEEP_EVENTS),
            load_seconds=min(load_seconds, SWEEP_LOAD_SECONDS),
            rounds=SWEEP_ROUNDS,
        )
    return figures


@dataclass
class _SweepPoint:
    setting: SinkSetting
    served: ServedProcess
    client: Client
    rates: list[float] = dataclasses.field(default_factory=list)
    loads: list[Latency] = dataclasses.field(default_factory=list)
    flushes: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    """(flushes, events) of the throughput runs and of the load runs."""


async def sweep_settings(
    setup: Setup, *, events_count: int, load_seconds: float, rounds: int
) -> list[Figure]:
    """Every setting of ``SWEEP`` served at once, measured in turns (one round after another).

    A served process per setting, all started first; then each round runs the throughput stream
    on each in turn, then the batched load on each (the order reversed every other round), so
    that the machine's other load falls on all settings alike.
    """
    messages = await asyncio.to_thread(_throughput_messages, events_count, 3)
    calls = await asyncio.to_thread(load_messages, BATCHED, load_seconds, 4)
    points: list[_SweepPoint] = []
    try:
        for milliseconds_, flush_events in SWEEP:
            setting = SinkSetting(milliseconds_, flush_events)
            served = await setup.serve(setting, setting.name())
            points.append(_SweepPoint(setting, served, Client(served, channels=LOAD_CHANNELS)))
            await points[-1].client.ingest("warmup", messages[:2])
        for round_number in range(rounds):
            order = points if round_number % 2 == 0 else points[::-1]
            for point in order:
                before = flush_stats(point.served)
                tenant = f"sweep-{round_number}"
                point.rates.append(
                    await _served_throughput(point.client, tenant, messages, events_count)
                )
                point.flushes.append(_delta(before, flush_stats(point.served)))
            for point in order:
                before = flush_stats(point.served)
                point.loads.append(await load(point.client, BATCHED, load_seconds, calls))
                point.flushes.append(_delta(before, flush_stats(point.served)))
    finally:
        for point in points:
            await point.client.close()
            await point.served.stop()
            await setup.remove(point.setting.name())
    return [_sweep_figure(point, events_count, load_seconds) for point in points]


def _delta(before: tuple[int, int], after: tuple[int, int]) -> tuple[int, int]:
    return after[0] - before[0], after[1] - before[1]


def _sweep_figure(point: _SweepPoint, events_count: int, load_seconds: float) -> Figure:
    latency = Latency(
        BATCHED,
        [s for run in point.loads for s in run.acknowledged],
        [s for run in point.loads for s in run.visible],
        [s for run in point.loads for s in run.probe_acknowledged],
        {
            code: sum(run.failures.get(code, 0) for run in point.loads)
            for code in {code for run in point.loads for code in run.failures}
        },
        sum(run.probe_failures for run in point.loads),
        sum(run.written_events for run in point.loads),
        sum(run.seconds for run in point.loads),
        max(run.late_sends for run in point.loads),
    )
    spread = ", ".join(f"{r / 1e3:.0f}" for r in point.rates)
    stream_flushes = point.flushes[0::2]
    load_flushes = point.flushes[1::2]
    stream_mean = sum(e for _, e in stream_flushes) / max(sum(f for f, _ in stream_flushes), 1)
    load_rate = sum(f for f, _ in load_flushes) / latency.seconds
    return Figure(
        metric=f"Sink sweep: {point.setting.label()}",
        a=f"{rate(median(point.rates), 'events')} (columns)",
        b=f"ack p50 {_duration(latency.ack(0.5))}, p99 {_duration(latency.ack(0.99))}",
        ratio=None,
        target="",
        passed=None,
        note=f"streams of {events_count // 1000} k: {spread} k, flushes of {stream_mean:,.0f}; "
        f"{BATCHED.label()} {len(point.loads)} x {load_seconds:g} s: {load_rate:.0f} flushes/s, "
        f"visible p99 {_duration(latency.seen(0.99))}{_failures(latency)}",
    )


def _duration(seconds: float) -> str:
    return "failed" if math.isinf(seconds) else milliseconds(seconds)


def _mean_flush(result: Throughput) -> str:
    if not result.flushes:
        return "flushes not reported"
    return f"{result.flushes} flushes of {result.flushed_events / result.flushes:,.0f} events"


def _failures(latency: Latency) -> str:
    failed = dict(latency.failures)
    if latency.probe_failures:
        failed["probes"] = latency.probe_failures
    if not failed:
        return ""
    return "; FAILED: " + ", ".join(f"{k} {v}" for k, v in sorted(failed.items()))


def _throughput_figures(
    result: Throughput, setting: SinkSetting, count: int, rounds: int, *, judge: bool
) -> list[Figure]:
    direct = median(result.direct)
    figures = []
    for form in ("columns", "events"):
        rates: list[float] = getattr(result, form)
        served = median(rates)
        columns = form == "columns"
        judged = judge and columns
        spread = ", ".join(f"{r / 1e3:.1f}" for r in rates)
        figures.append(
            Figure(
                metric=f"Ingest events/s, {form} form (gRPC -> sink -> chDB)",
                a=rate(served, "events"),
                b=rate(direct, "rows") + f" (Arrow inserts of {setting.flush_events})",
                ratio=direct / served,
                target=f">= {TARGET_EVENTS_PER_SECOND // 1000} k events/s" if columns else "",
                passed=at_least_rate(served, TARGET_EVENTS_PER_SECOND) if judged else None,
                note=f"{count:,} events in messages of {BATCH_EVENTS}, median of {rounds} "
                f"rounds: {spread} k"
                + (f"; {_mean_flush(result)} (both forms); {setting.label()}" if columns else ""),
            )
        )
    return figures


def _latency_figures(latency: Latency, setting: SinkSetting, *, judge: bool) -> list[Figure]:
    shape = latency.shape
    ack_p99, visible_p99 = latency.ack(0.99), latency.seen(0.99)
    written = latency.written_events / latency.seconds
    acks = latency.probe_acknowledged
    probe_ack = _duration(median(acks)) if acks else "-"
    return [
        Figure(
            metric=f"Ingest ack latency, {shape.label()}",
            a=f"p50 {_duration(latency.ack(0.5))}, p99 {_duration(ack_p99)}",
            b="",
            ratio=None,
            target=f"p99 < {TARGET_ACK_P99 * 1000:.0f} ms" if shape == JUDGED else "",
            passed=ack_p99 < TARGET_ACK_P99 if judge else None,
            note=f"{shape.offered / 1e3:g} k events/s offered for {latency.seconds:.0f} s, "
            f"{len(latency.acknowledged):,} calls answered, {written / 1e3:.1f} k events/s "
            f"written, server CPU {latency.cpu_per_call() * 1e6:,.0f} us per call, sends up to "
            f"{milliseconds(latency.late_sends)} late; {setting.label()}{_failures(latency)}",
        ),
        Figure(
            metric=f"Ingest -> visible in Query, {shape.label()}",
            a=f"p50 {_duration(latency.seen(0.5))}, p99 {_duration(visible_p99)}",
            b="",
            ratio=None,
            target=f"p99 < {TARGET_VISIBLE_P99 * 1000:.0f} ms" if shape == JUDGED else "",
            passed=visible_p99 < TARGET_VISIBLE_P99 if judge else None,
            note=f"{len(latency.visible) + latency.probe_failures} probes, ack p50 "
            f"{probe_ack}, Query polled every {PROBE_POLL_SECONDS * 1000:.0f} ms after the ack",
        ),
    ]
