"""SyncTracker: per table, the source time up to which the replica is known complete.

Pure bookkeeping. Two facts move a table's ``last_sync_at``:

* a write of its events: the partition is consumed in commit order, so once the events up to
  commit time T are written, every earlier change of that table is written too;
* a Debezium heartbeat at time H: the end offsets of the table topics are read when the heartbeat
  is consumed; once the committed offsets reach them, every change Debezium had published before
  the heartbeat is written, so quiet tables move to H as well.

The second is complete up to the time Debezium had read the WAL to, which is what a heartbeat
can tell; it is the reason lastSyncAt keeps moving for tables nobody writes to.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass
class TableProgress:
    """What the worker knows about one replica table."""

    table: str
    model: str
    last_sync_ms: int = 0
    events_applied: int = 0
    pending_events: int = 0
    events_per_second: float = 0.0
    state: str = "streaming"
    last_error: str = ""
    _rate_window_start: float = field(default_factory=time.monotonic)
    _rate_window_events: int = 0

    def note_written(self, events: int, max_source_ts_ms: int) -> None:
        """Events up to ``max_source_ts_ms`` are written."""
        self.events_applied += events
        self._rate_window_events += events
        self.last_sync_ms = max(self.last_sync_ms, max_source_ts_ms)
        self.state = "streaming"
        self.last_error = ""

    def roll_rate(self) -> None:
        """Close the events-per-second window (called when the state is reported)."""
        now = time.monotonic()
        elapsed = now - self._rate_window_start
        if elapsed > 0:
            self.events_per_second = self._rate_window_events / elapsed
        self._rate_window_start = now
        self._rate_window_events = 0


@dataclass
class _PendingHeartbeat:
    ts_ms: int
    end_offsets: dict[TopicPartition, int]
    waiting: set[str]


class SyncTracker:
    """Tracks every catalog table's progress from writes, commits and heartbeats."""

    def __init__(self, tables: Mapping[str, str], topic_of: Mapping[str, str]) -> None:
        """``tables``: replica table -> ``module.model``; ``topic_of``: replica table -> topic."""
        self.tables = {table: TableProgress(table, model) for table, model in tables.items()}
        self._topic_of = dict(topic_of)
        self._committed: dict[TopicPartition, int] = {}
        self._heartbeats: list[_PendingHeartbeat] = []

    def written(self, table: str, events: int, max_source_ts_ms: int) -> None:
        """A batch holding ``events`` events of ``table`` is written."""
        self.tables[table].note_written(events, max_source_ts_ms)

    def seed(self, partition: TopicPartition, offset: int) -> None:
        """The consumer group's committed offset of a partition this process has not committed."""
        self._committed.setdefault(partition, offset)

    def knows(self, partition: TopicPartition) -> bool:
        """Whether the committed offset of ``partition`` is known (seeded or committed here)."""
        return partition in self._committed

    def failed(self, error: str) -> None:
        """A write failed: every table is behind until the retry succeeds."""
        for progress in self.tables.values():
            progress.state = "error"
            progress.last_error = error[:500]

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Offsets (next to read) are committed; resolve heartbeats they now cover.

        A commit follows a successful write only, so no table is failing any more, quiet
        ones included.
        """
        for progress in self.tables.values():
            if progress.state == "error":
                progress.state = "streaming"
                progress.last_error = ""
        for partition, offset in offsets.items():
            self._committed[partition] = max(offset, self._committed.get(partition, 0))
        self._resolve()

    def heartbeat(self, ts_ms: int, end_offsets: Mapping[TopicPartition, int]) -> None:
        """A heartbeat at ``ts_ms`` was consumed when the table topics ended at ``end_offsets``."""
        self._heartbeats.append(_PendingHeartbeat(ts_ms, dict(end_offsets), set(self.tables)))
        self._resolve()

    def lag(self, end_offsets: Mapping[TopicPartition, int]) -> None:
        """Record each table's pending events from the topics' end offsets."""
        for table, progress in self.tables.items():
            topic = self._topic_of[table]
            progress.pending_events = sum(
                max(end - self._committed.get(tp, 0), 0)
                for tp, end in end_offsets.items()
                if tp[0] == topic
            )

    def _resolve(self) -> None:
        for beat in self._heartbeats:
            for table in list(beat.waiting):
                topic = self._topic_of[table]
                caught_up = all(
                    self._committed.get(tp, 0) >= end
                    for tp, end in beat.end_offsets.items()
                    if tp[0] == topic
                )
                if caught_up:
                    progress = self.tables[table]
                    progress.last_sync_ms = max(progress.last_sync_ms, beat.ts_ms)
                    beat.waiting.discard(table)
        self._heartbeats = [beat for beat in self._heartbeats if beat.waiting][-16:]
