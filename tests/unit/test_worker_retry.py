"""The CDC worker's write retry: what a rebalance hands it between two retries is not dropped.

While a failed write is retried the worker keeps polling (so that the group keeps it) with its
partitions paused. A partition the group assigns in between is not paused yet, and the poll can
return its records: they must be fetched again after the write, not lost. A fake consumer stands
in for aiokafka here, since the fault is a rebalance landing between two retries of one write,
an interleaving the real broker and group coordinator cannot be made to produce on cue; the
worker, its batch and its retry loop are the real ones.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pyarrow as pa
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from cdc_worker.batch import ChangeBatch
from cdc_worker.worker import CdcWorker, ReplicaSink
from service.catalog import Catalog
from service.errors import engine_unavailable
from service.schema import SYNC_STATE_TABLE
from service.settings import Settings
from tests.unit.test_worker_pure import DEALS_TOPIC, change, deal_row, model_of

OURS = TopicPartition(DEALS_TOPIC, 0)
HANDED_OVER = TopicPartition(DEALS_TOPIC, 1)


class FlakySink:
    """Refuses the first ``failures`` replica writes as an unreachable engine, then takes them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[str] = []

    async def insert_arrow(self, database: str, table: str, data: pa.Table) -> int:
        if table == SYNC_STATE_TABLE:
            return int(data.num_rows)
        if self.failures:
            self.failures -= 1
            raise engine_unavailable("the analytics engine is unavailable")
        self.written.append(table)
        return int(data.num_rows)

    async def command(self, sql: str, parameters: Any = None) -> None:
        raise AssertionError(f"no command expected: {sql}")

    async def query_rows(self, sql: str, parameters: Any = None) -> list[dict[str, Any]]:
        raise AssertionError(f"no query expected: {sql}")


class RebalancingConsumer:
    """One partition at first; at the first poll the group hands the worker a second one, which
    holds three records from offset 40."""

    def __init__(self) -> None:
        self.assigned = {OURS}
        self.paused: set[TopicPartition] = set()
        self.positions = {HANDED_OVER: 40}
        self.polls = 0
        self.committed: dict[TopicPartition, OffsetAndMetadata] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused -= set(partitions)

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        self.polls += 1
        if self.polls == 1:
            self.assigned.add(HANDED_OVER)
        if HANDED_OVER in self.paused or HANDED_OVER not in self.assigned:
            return {}
        start = self.positions[HANDED_OVER]
        self.positions[HANDED_OVER] = start + 3
        return {HANDED_OVER: [SimpleNamespace(offset=o) for o in range(start, start + 3)]}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.committed.update(offsets)

    async def end_offsets(self, partitions: Any) -> dict[TopicPartition, int]:
        return {}


async def test_records_polled_during_a_retry_are_fetched_again(catalog: Catalog) -> None:
    sink = FlakySink(failures=2)
    # An address the fake never connects to: the worker only refuses to start without one.
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9", cdc_retry_max_seconds=0.01)
    worker = CdcWorker(settings, catalog, cast(ReplicaSink, sink))
    deals = model_of(catalog, "crm", "deals")
    batch = ChangeBatch()
    batch.add(change(deals, "acme", 1, 100, deal_row("acme", 1)))
    batch.consumed(DEALS_TOPIC, 0, 7)
    consumer = RebalancingConsumer()

    await worker._flush(batch, cast(AIOKafkaConsumer, consumer))

    assert sink.written == ["crm_deals"]
    assert worker.metrics.write_errors == 2
    # The first retry's poll took three records of the new partition: its position is back at
    # the first of them; the second retry paused it too, so it returned nothing.
    assert consumer.polls == 2
    assert consumer.positions[HANDED_OVER] == 40
    assert not consumer.paused
    assert consumer.committed == {OURS: OffsetAndMetadata(8, "")}
