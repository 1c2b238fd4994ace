"""CdcWorker: Debezium topics in, ClickHouse replica rows out, offsets committed after the write.

The loop: take the records the consumer has fetched, decode them (each partition's records
column-wise where they have the common shape, the others one by one; undecodable ones go to the
dead-letter topic with the reason), gather them into a ChangeBatch, and when the batch is due
(size or age) write it while the next one is consumed: fill unchanged-TOAST columns from the
stored rows, insert one Arrow table per replica table, apply truncates, and only then commit the
batch's offsets. One batch is written at a time, in order. A crash before the commit replays the
batch; FINAL keeps one row per key, so a replay changes nothing. A failed write is retried with
back-off while the partitions are paused: nothing is committed, nothing is lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import OffsetAndMetadata

from cdc_worker.batch import ChangeBatch, fill_unavailable
from cdc_worker.columnar_decoder import ColumnarDecoder
from cdc_worker.decoder import DebeziumDecoder, DecodeError
from cdc_worker.events import DecodedMessage, Heartbeat, RowChange, Truncate
from cdc_worker.metrics import WorkerMetrics
from cdc_worker.outage import OutageWaiter, is_transient
from cdc_worker.sync_tracker import SyncTracker
from service.backends.dialect import backend_dialect, quote_string
from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.errors import AnalyticsError
from service.kafka_clients import dead_letter_producer, started
from service.schema import SYNC_STATE_TABLE, all_ddl, sync_state_table
from service.settings import Settings

log = structlog.get_logger(__name__)
_STATE_REPORT_SECONDS = 1.0
# Turns of the event loop after a getmany: two sent the next fetch in the bench (bench/README.md,
# "Ingestion, sixth round"); one more costs microseconds.
_FETCHER_TURNS = 3
# Records decoded column-wise at a time. A fetch holds about 5 000; decoded in slices of 1 000
# the structs and columns of a slice stay in the processor's caches, and the worker decoded
# 15-25 % more events per second (bench/README.md, "Ingestion, seventh round").
_DECODE_SLICE = 1_000


class ReplicaSink(Protocol):
    """What the worker needs from a ClickHouse backend (embedded or server)."""

    async def command(self, sql: str, parameters: Mapping[str, str] | None = None) -> None:
        """Run a statement."""
        ...

    async def query_rows(
        self, sql: str, parameters: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Run a small query."""
        ...

    async def insert_arrow(self, database: str, table: str, data: pa.Table) -> int:
        """Append rows."""
        ...


@dataclass(frozen=True)
class Topics:
    """The topic names the worker reads, derived from the catalog and the Debezium prefix."""

    by_table: dict[str, str]
    heartbeat: str

    @classmethod
    def for_catalog(cls, catalog: Catalog, prefix: str) -> Topics:
        """``<prefix>.<schema>.<table>`` for every model, and Debezium's heartbeat topic."""
        return cls(
            by_table={m.table: f"{prefix}.{m.source}" for m in catalog.replicated_models()},
            heartbeat=f"__debezium-heartbeat.{prefix}",
        )

    def pattern(self) -> str:
        """A subscription pattern that also catches topics Debezium creates later."""
        names = [*self.by_table.values(), self.heartbeat]
        return "^(" + "|".join(re.escape(n) for n in names) + ")$"


class CdcWorker:
    """Consumes the catalog's Debezium topics and keeps the ClickHouse replicas in sync."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        sink: ReplicaSink,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """Prepare the decoder, the topic names and the progress tracker."""
        if not settings.kafka_bootstrap_servers:
            raise ValueError("set ANALYTICS_KAFKA_BOOTSTRAP_SERVERS to run the CDC worker")
        self._settings = settings
        self._bootstrap = settings.kafka_bootstrap_servers
        self._catalog = catalog
        self._sink = sink
        self._topics = Topics.for_catalog(catalog, settings.kafka_topic_prefix)
        self._decoder = DebeziumDecoder(
            catalog,
            topic_prefix=settings.kafka_topic_prefix,
            heartbeat_topic=self._topics.heartbeat,
        )
        self._columnar = ColumnarDecoder(self._decoder)
        self.tracker = SyncTracker(
            {m.table: m.qualified_name for m in catalog.replicated_models()}, self._topics.by_table
        )
        self.metrics = metrics or WorkerMetrics()
        self._last_report = 0.0
        self._started_at = time.monotonic()
        self._wrote_events = False

    @property
    def started_at(self) -> float:
        """When ``run`` began (monotonic clock)."""
        return self._started_at

    async def prepare(self) -> None:
        """Create the database, the replica tables and the sync-state table if missing.

        A sink with a ``dialect()`` (a server, or chDB for the engine version it embeds) says
        which DDL it takes; any other gets the production minimum's.
        """
        dialect = await backend_dialect(self._sink)
        for statement in all_ddl(self._catalog, dialect=dialect):
            await self._sink.command(statement)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then write what is pending and commit it.

        ClickHouse or Kafka unreachable at start is waited for (cdc_worker/outage.py).
        """
        self._started_at = time.monotonic()
        waiter = OutageWaiter(stop, self.metrics, self._settings.cdc_retry_max_seconds)
        if not await waiter.until_available(self._prepared, "clickhouse"):
            return
        consumer = await waiter.until_available(self._consumer, "kafka")
        if consumer is None:
            return
        producer = await waiter.until_available(self._producer, "kafka")
        if producer is None:
            await consumer.stop()
            return
        self.metrics.started = True
        consumer.subscribe(pattern=self._topics.pattern(), listener=_AssignmentLog(self))
        log.info("cdc worker started", topics=sorted(self._topics.by_table.values()))
        batch = ChangeBatch()
        # The batch being written while the next one is consumed and decoded (the insert runs
        # on the engine's threads or the server, the decoding on this one). One at a time, so
        # batches are written and committed in order and a batch's unchanged-TOAST lookup sees
        # the rows of every batch before it.
        writing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                # Every buffered record: aiokafka asks for a partition's next fetch only once its
                # buffer is drained, and its fetcher task needs a few turns of the loop to send
                # the request; so the broker reads the next fetch while this one is decoded.
                records = await consumer.getmany(timeout_ms=50)
                for _ in range(_FETCHER_TURNS):
                    await asyncio.sleep(0)
                for partition, messages in records.items():
                    for start in range(0, len(messages), _DECODE_SLICE):
                        part = messages[start : start + _DECODE_SLICE]
                        await self._take(partition.topic, part, batch, consumer, producer)
                    if messages:
                        batch.consumed(partition.topic, partition.partition, messages[-1].offset)
                if batch.is_due(
                    self._settings.cdc_batch_max_rows, self._settings.cdc_batch_max_seconds
                ):
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self._flush(batch, consumer))
                    batch = ChangeBatch()
                elif writing is not None and writing.done():
                    await writing
                    writing = None
                await self._report(consumer)
            if writing is not None:
                await writing
                writing = None
            if not batch.empty:
                await self._flush(batch, consumer)
            await self._report(consumer, force=True)
        finally:
            if writing is not None and not writing.done():
                # Its offsets stay uncommitted: whoever consumes next replays the batch.
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)
            self.metrics.started = False
            await consumer.stop()
            await producer.stop()
            log.info("cdc worker stopped")

    async def _prepared(self) -> bool:
        await self.prepare()
        return True

    async def _consumer(self) -> AIOKafkaConsumer:
        """A started consumer of the worker's group (closed again if it cannot start)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._settings.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=1_000,
            max_poll_interval_ms=600_000,
            # About 5 000 events of a busy partition per fetch (the default 1 MiB holds ~1 200):
            # the column-wise decoding's cost per list is then spread over more events.
            max_partition_fetch_bytes=4 * 1024 * 1024,
            check_crcs=self._settings.kafka_check_crcs,
            # With a stable instance id the coordinator hands a restarted worker its partitions
            # back without a rebalance; without one, a killed member holds them until its
            # session times out.
            group_instance_id=self._settings.kafka_group_instance_id or None,
            session_timeout_ms=int(self._settings.kafka_session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(self._settings.kafka_session_timeout_seconds * 1000 / 3),
        )
        return await started(consumer)

    async def _producer(self) -> AIOKafkaProducer:
        """A started producer for the dead-letter topic (closed again if it cannot start)."""
        return await dead_letter_producer(self._bootstrap)

    async def _take(
        self,
        topic: str,
        messages: Sequence[Any],
        batch: ChangeBatch,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
    ) -> None:
        """Decode some of one partition's messages (column-wise where they can) into ``batch``."""
        decoded = self._columnar.decode(topic, [(m.key, m.value) for m in messages])
        rows = decoded.rows
        if rows is not None and decoded.every_row is not None:
            batch.add_columnar(rows, decoded.every_row)
            return
        # Runs of column-wise rows go into the batch together, in record order with the rest.
        run: list[int] = []
        for message, entry in zip(messages, decoded.entries, strict=True):
            if isinstance(entry, int):
                run.append(entry)
                continue
            if run and rows is not None:
                batch.add_columnar(rows, run)
                run = []
            await self._apply(entry, message, batch, consumer, producer)
        if run and rows is not None:
            batch.add_columnar(rows, run)

    async def _apply(
        self,
        decoded: DecodedMessage | DecodeError,
        message: Any,
        batch: ChangeBatch,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
    ) -> None:
        if isinstance(decoded, DecodeError):
            await self._dead_letter(producer, message, decoded.reason)
            return
        if isinstance(decoded, RowChange):
            batch.add(decoded)
        elif isinstance(decoded, Truncate):
            batch.truncate(decoded)
        elif isinstance(decoded, Heartbeat):
            ends = await self._end_offsets(consumer)
            await self._seed_committed(consumer, ends)
            batch.heartbeats.append((decoded.ts_ms, ends))

    async def _dead_letter(self, producer: AIOKafkaProducer, message: Any, reason: str) -> None:
        self.metrics.dead_letters += 1
        log.warning(
            "undecodable change event sent to the dead-letter topic",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=reason,
        )
        headers = [
            ("reason", reason.encode()),
            ("source.topic", message.topic.encode()),
            ("source.partition", str(message.partition).encode()),
            ("source.offset", str(message.offset).encode()),
        ]
        await producer.send_and_wait(
            self._settings.dead_letter_topic, value=message.value, key=message.key, headers=headers
        )

    async def _seed_committed(
        self, consumer: AIOKafkaConsumer, partitions: Mapping[tuple[str, int], int]
    ) -> None:
        """Teach the tracker the group's committed offsets of partitions it has not seen.

        After a restart a quiet partition gets no new commit from this process, and without its
        committed offset no heartbeat could ever move its table.
        """
        for topic, partition in partitions:
            if not self.tracker.knows((topic, partition)):
                committed = await consumer.committed(TopicPartition(topic, partition))
                self.tracker.seed((topic, partition), committed or 0)

    async def _end_offsets(self, consumer: AIOKafkaConsumer) -> dict[tuple[str, int], int]:
        partitions = [
            tp for tp in consumer.assignment() if tp.topic in self._topics.by_table.values()
        ]
        if not partitions:
            return {}
        ends = await consumer.end_offsets(partitions)
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    async def _flush(self, batch: ChangeBatch, consumer: AIOKafkaConsumer) -> None:
        """Write the batch, retrying with back-off until it succeeds, then commit its offsets."""
        delay = 0.2
        paused = False
        while True:
            try:
                await self._write(batch)
                break
            except AnalyticsError as error:
                self.tracker.failed(error.message)
                self.metrics.write_errors += 1
                if is_transient(error) and "clickhouse" not in self.metrics.away:
                    self.metrics.dependency_away("clickhouse")
                log.warning(
                    "replica write failed; retrying",
                    error=error.message,
                    retry_in_seconds=delay,
                    detail=error.metadata.get("engine_message", ""),
                )
                # Paused again at every retry: a partition assigned since (a rebalance) is not.
                consumer.pause(*consumer.assignment())
                paused = True
                await self._report(consumer, force=True)
                # Keep polling (paused partitions return nothing) so the group keeps us. What a
                # partition not paused yet returns is not this loop's to take: its position goes
                # back, and the records are fetched again once the write went through.
                polled = await consumer.getmany(timeout_ms=int(delay * 1000))
                for partition, messages in polled.items():
                    if messages:
                        consumer.seek(partition, messages[0].offset)
                delay = min(delay * 2, self._settings.cdc_retry_max_seconds)
        self.metrics.dependency_back("clickhouse")
        if paused:
            consumer.resume(*consumer.assignment())
        offsets = await self._commit(
            consumer,
            {
                TopicPartition(topic, partition): OffsetAndMetadata(offset + 1, "")
                for (topic, partition), offset in batch.offsets.items()
            },
        )
        self.tracker.committed({(tp.topic, tp.partition): o.offset for tp, o in offsets.items()})
        for ts_ms, ends in batch.heartbeats:
            self.tracker.heartbeat(ts_ms, ends)
        self.metrics.batches += 1
        if batch.events and not self._wrote_events:
            # How long a (re)start takes to write again: the figure static membership shortens.
            self._wrote_events = True
            log.info(
                "first batch written",
                events=batch.events,
                seconds_since_start=round(time.monotonic() - self._started_at, 3),
            )
        self.metrics.last_batch_rows = batch.events
        self.metrics.batch_rows_total += batch.events

    async def _commit(
        self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Commit the written batch's offsets of the partitions still ours; return what was.

        A rebalance (a topic Debezium just created, a worker joining the group) can take
        partitions away, or leave none assigned for a moment, between the fetch and the commit.
        Their rows are written already: whoever owns them next starts from the last committed
        offset and replays them, which FINAL collapses. Stopping the worker instead would stop
        replication.
        """
        assigned = consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if mine:
            try:
                await consumer.commit(mine)
            except (IllegalStateError, CommitFailedError) as error:
                log.warning("offsets not committed: the group is rebalancing", error=str(error))
                mine = {}
        if len(mine) < len(offsets):
            self.metrics.uncommitted_batches += 1
            log.info(
                "written changes of partitions no longer assigned will be replayed",
                partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in offsets.keys() - mine),
            )
        return mine

    async def _write(self, batch: ChangeBatch) -> None:
        database = self._catalog.database
        for table, pending in batch.tables.items():
            changes = await self._with_stored_toast(pending.model, pending.row_changes())
            written = await self._sink.insert_arrow(database, table, pending.replica_table(changes))
            log.debug("replica rows written", table=table, rows=written, events=pending.events)
        for truncate in batch.truncates:
            await self._truncate(truncate)
        for table, pending in batch.tables.items():
            self.tracker.written(table, pending.events, pending.max_source_ts_ms)
            self.metrics.events[table] = self.metrics.events.get(table, 0) + pending.events
        for truncate in batch.truncates:
            self.tracker.written(truncate.model.table, 1, truncate.source_ts_ms)

    async def _with_stored_toast(self, model: Model, changes: list[RowChange]) -> list[RowChange]:
        """Fill columns Debezium left out (unchanged TOAST values) from the stored rows."""
        missing = [c for c in changes if c.unavailable and not c.is_deleted]
        if not missing:
            return changes
        stored = await stored_rows(self._sink, self._catalog.database, model, missing)
        filled = {id(c): fill_unavailable(c, stored.get((c.tenant, *c.key), {})) for c in missing}
        return [filled.get(id(c), c) for c in changes]

    async def _truncate(self, truncate: Truncate) -> None:
        """Hide every row written before the truncate with a tombstone of the truncate's version.

        Tombstones rather than TRUNCATE TABLE: a replay of older events after this point cannot
        bring rows back, because their versions are lower.
        """
        model = truncate.model
        keys = ", ".join(f"`{c}`" for c in (model.tenant_column, *model.primary_key))
        table = f"`{self._catalog.database}`.`{model.table}`"
        await self._sink.command(
            f"INSERT INTO {table} ({keys}, _version, _is_deleted) "
            f"SELECT {keys}, {{version:UInt64}}, 1 FROM {table} FINAL "
            "WHERE _is_deleted = 0 AND _version < {version:UInt64}",
            {"version": str(truncate.version)},
        )

    async def _report(self, consumer: AIOKafkaConsumer, *, force: bool = False) -> None:
        """Write each table's progress to the sync-state table, about once a second."""
        now = time.monotonic()
        if not force and now - self._last_report < _STATE_REPORT_SECONDS:
            return
        self._last_report = now
        try:
            self.tracker.lag(await self._end_offsets(consumer))
        except Exception as exc:
            log.debug("could not read end offsets", error=str(exc))
        rows = []
        reported_at = dt.datetime.now(dt.UTC)
        for progress in self.tracker.tables.values():
            progress.roll_rate()
            if not progress.last_sync_ms and not progress.last_error:
                continue
            rows.append(
                {
                    "table_name": progress.table,
                    "source": "cdc",
                    "last_sync_at": dt.datetime.fromtimestamp(progress.last_sync_ms / 1000, dt.UTC),
                    "updated_at": reported_at,
                    "state": progress.state,
                    "pending_events": progress.pending_events,
                    "events_per_second": progress.events_per_second,
                    "events_applied": progress.events_applied,
                    "last_error": progress.last_error,
                }
            )
        self.metrics.tables = {p.table: p for p in self.tracker.tables.values()}
        await report_sync_state(self._sink, self._catalog.database, rows)


class _AssignmentLog(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs each assignment the group gives the worker, with the time since its start."""

    def __init__(self, worker: CdcWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info(
            "partitions assigned",
            partitions=len(assigned),
            seconds_since_start=round(time.monotonic() - self._worker.started_at, 3),
        )


async def report_sync_state(
    sink: ReplicaSink, database: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Append per-table reports to the sync-state table, best effort.

    A report that cannot be written is only logged: the next one supersedes it, and replication
    must not stop over its own bookkeeping.
    """
    if not rows:
        return
    try:
        await sink.insert_arrow(database, SYNC_STATE_TABLE, sync_state_table(rows))
    except AnalyticsError as error:
        log.debug("could not record the sync state", error=error.message)


async def stored_rows(
    sink: ReplicaSink, database: str, model: Model, changes: Sequence[RowChange]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The stored values of the columns ``changes`` left out (unchanged TOAST), by (tenant, *key).

    Keys whose stored row is missing or deleted are absent. One query per table and batch: the
    keys are one ``IN`` set on the sort key's columns (tenant first, then the primary key), so
    the server builds a hash set once, reads only the granules that hold those keys (the set
    also narrows the primary-key index) and only the columns needed. The keys travel as one
    ``Array(Tuple(...))`` parameter unrolled by ``arrayJoin`` in the ``IN`` subquery: one
    parameter per value costs the server a cast each (3 000 keys: about 320 ms where the array
    takes 80), and the ``OR`` chain of ``(tenant = .. AND id = ..)`` terms this replaces grew the
    query's analysis and its filter with every key (bench/README.md, "CDC writes on the server
    path").
    """
    columns = sorted({name for c in changes for name in c.unavailable})
    keys = [model.tenant_column, *model.primary_key]
    specs = [model.fields[name] for name in model.primary_key]
    kinds = ", ".join(["String", *(spec.parameter_type for spec in specs)])
    literals = ",".join(
        "(" + ",".join([quote_string(c.tenant), *map(_key_literal, specs, c.key)]) + ")"
        for c in changes
    )
    elements = ", ".join(f"tupleElement(k, {position})" for position in range(1, len(keys) + 1))
    selected = ", ".join(f"`{c}`" for c in [*keys, *columns])
    sql = (
        f"SELECT {selected} FROM `{database}`.`{model.table}` FINAL "
        f"WHERE _is_deleted = 0 AND ({', '.join(f'`{k}`' for k in keys)}) IN "
        f"(SELECT {elements} FROM (SELECT arrayJoin({{keys:Array(Tuple({kinds}))}}) AS k))"
    )
    # An array parameter is read in its own text form (``parameter_literal``).
    parameters = {"keys": f"[{literals}]"}
    rows = await sink.query_rows(sql, parameters)
    return {
        (row[model.tenant_column], *(_stored_value(model, k, row[k]) for k in model.primary_key)): {
            c: _stored_value(model, c, row[c]) for c in columns
        }
        for row in rows
    }


def _key_literal(spec: FieldSpec, value: Any) -> str:
    """A key value as an ``Array(Tuple(...))`` text holds it: numbers bare, the rest quoted."""
    if spec.type is FieldType.INT:
        return str(int(value))
    if spec.type is FieldType.DECIMAL:
        return format(value, "f")
    if spec.type is FieldType.FLOAT:
        return repr(float(value))
    if isinstance(value, dt.datetime):
        return quote_string(value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f"))
    # Text, enums, canonical UUIDs and dates (ISO) are read from their quoted text.
    return quote_string(str(value))


def _stored_value(model: Model, column: str, value: Any) -> Any:
    """A value read back from the replica, in the type the decoder produces.

    The legacy server layout stores timestamps as Int64 microseconds and booleans as UInt8;
    both backends read UUIDs as ``uuid.UUID`` where the decoder keeps their text (so a stored
    row's key must be turned back into text to be found).
    """
    spec = model.fields[column]
    if value is None:
        return None
    if spec.type is FieldType.UUID:
        return str(value)
    if spec.type is FieldType.TIMESTAMP and isinstance(value, int):
        return _EPOCH + dt.timedelta(microseconds=value)
    if spec.type is FieldType.BOOL and isinstance(value, int):
        return bool(value)
    return value


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def heartbeat_value(ts_ms: int) -> bytes:
    """A heartbeat message value as Debezium writes it (for tests and tools)."""
    return json.dumps({"ts_ms": ts_ms}).encode()
