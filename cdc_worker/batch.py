"""ChangeBatch: decoded change events gathered until they are written, with their offsets.

Pure (no I/O): the worker adds events as it consumes them, asks whether the batch is due (by size
or by the age of its oldest event), and turns it into one Arrow table per replica table. Only the
newest version of each key within a batch is written: ReplacingMergeTree would keep only it anyway,
and writing fewer rows keeps inserts small. Rows decoded column-wise (``ColumnarRows``) stay in
their Arrow table: the batch keeps a reference (table, row index) per key and takes the winners
from the table when it is written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cdc_worker.columnar_decoder import ColumnarRows
from cdc_worker.events import RowChange, Truncate
from service.catalog import FieldSpec, Model
from service.demo.generator import DELETED_COLUMN, VERSION_COLUMN
from service.schema import arrow_type, zero_value

ColumnarRow = tuple[ColumnarRows, int]
"""A row of a column-wise decoded table: the table and the row's index in it."""


@dataclass
class TablePending:
    """The newest change per key of one replica table, plus facts for the sync state."""

    model: Model
    rows: dict[tuple[Any, ...], RowChange | ColumnarRow] = field(default_factory=dict)
    events: int = 0
    max_source_ts_ms: int = 0

    def add(self, change: RowChange, *, counted: bool = True) -> None:
        """Keep ``change`` unless a newer version of its key is already here."""
        if counted:
            self.events += 1
        self.max_source_ts_ms = max(self.max_source_ts_ms, change.source_ts_ms)
        key = (change.tenant, *change.key)
        current = self.rows.get(key)
        if current is not None and _version(current) > change.version:
            return
        if current is not None and change.unavailable:
            # Unchanged TOAST columns keep the value the previous version of this batch had,
            # where it had one; the rest stay unavailable and are read from the replica.
            if isinstance(current, RowChange):
                previous, available = current.row, change.unavailable - current.unavailable
            else:
                previous, available = current[0].row(current[1]), change.unavailable
            change = fill_unavailable(change, previous, only=available)
        self.rows[key] = change

    def add_columnar(self, rows: ColumnarRows, indices: Sequence[int]) -> None:
        """Keep each row of ``indices`` (in order) unless a newer version of its key is here."""
        self.events += len(indices)
        kept = self.rows
        keys, versions, stamps = rows.keys, rows.versions, rows.source_ts_ms
        for index in indices:
            key = keys[index]
            current = kept.get(key)
            if current is not None and _version(current) > versions[index]:
                continue
            kept[key] = (rows, index)
        self.max_source_ts_ms = max(self.max_source_ts_ms, *(stamps[i] for i in indices))

    def row_changes(self) -> list[RowChange]:
        """The winning changes decoded record by record (those the TOAST filling may touch)."""
        return [change for change in self.rows.values() if isinstance(change, RowChange)]

    def replica_table(self, changes: Iterable[RowChange]) -> pa.Table:
        """The rows to insert: ``changes`` (``row_changes`` after filling) and columnar winners."""
        tables = [replica_rows(self.model, changes)]
        taken: dict[int, tuple[ColumnarRows, list[int]]] = {}
        for entry in self.rows.values():
            if not isinstance(entry, RowChange):
                taken.setdefault(id(entry[0]), (entry[0], []))[1].append(entry[1])
        for rows, indices in taken.values():
            tables.append(rows.table.take(pa.array(indices, pa.int64())))
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _version(entry: RowChange | ColumnarRow) -> int:
    if isinstance(entry, RowChange):
        return entry.version
    return entry[0].versions[entry[1]]


@dataclass
class ChangeBatch:
    """Events consumed since the last write, grouped by replica table."""

    tables: dict[str, TablePending] = field(default_factory=dict)
    truncates: list[Truncate] = field(default_factory=list)
    heartbeats: list[tuple[int, dict[tuple[str, int], int]]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    events: int = 0
    started_at: float | None = None

    def add(self, change: RowChange) -> None:
        """Add a row change (and the tombstone of its old key if it moved to another tenant)."""
        if change.previous_tenant is not None and change.previous_tenant != change.tenant:
            # One source event: the tombstone of the old key is not counted again.
            self._add(
                dataclasses.replace(
                    change,
                    tenant=change.previous_tenant,
                    is_deleted=True,
                    unavailable=frozenset(),
                    previous_tenant=None,
                ),
                counted=False,
            )
        self._add(change)

    def add_columnar(self, rows: ColumnarRows, indices: Sequence[int]) -> None:
        """Add the rows ``indices`` of column-wise decoded ``rows`` (never tenant moves)."""
        if not indices:
            return
        pending = self.tables.get(rows.model.table)
        if pending is None:
            pending = self.tables[rows.model.table] = TablePending(rows.model)
        pending.add_columnar(rows, indices)
        self.events += len(indices)
        self._touch()

    def truncate(self, truncate: Truncate) -> None:
        """Add a truncate; it applies after the rows of this batch are written."""
        self.truncates.append(truncate)
        self.events += 1
        self._touch()

    def _add(self, change: RowChange, *, counted: bool = True) -> None:
        pending = self.tables.get(change.model.table)
        if pending is None:
            pending = self.tables[change.model.table] = TablePending(change.model)
        pending.add(change, counted=counted)
        if counted:
            self.events += 1
        self._touch()

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        """Record that a message up to ``offset`` is accounted for by this batch."""
        self.offsets[(topic, partition)] = max(offset, self.offsets.get((topic, partition), -1))
        self._touch()

    def _touch(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()

    def is_due(self, max_rows: int, max_seconds: float) -> bool:
        """Whether the batch should be written now."""
        if self.started_at is None:
            return False
        return self.events >= max_rows or time.monotonic() - self.started_at >= max_seconds

    @property
    def empty(self) -> bool:
        """Whether nothing at all was consumed (not even offsets to commit)."""
        return not self.offsets and not self.tables


def replica_rows(model: Model, changes: Iterable[RowChange]) -> pa.Table:
    """The rows to insert into a model's replica: tenant, fields, ``_version``, ``_is_deleted``.

    A delete carries only its key; its other columns get placeholder values of their type, which
    no reader sees because FINAL keeps the tombstone and the compiler filters deleted rows.
    """
    changes = list(changes)
    columns: dict[str, pa.Array] = {
        model.tenant_column: pa.array([c.tenant for c in changes], pa.string())
    }
    for spec in model.fields.values():
        values = [_column_value(spec, c) for c in changes]
        columns[spec.name] = pa.array(values, arrow_type(spec))
    columns[VERSION_COLUMN] = pa.array([c.version for c in changes], pa.uint64())
    columns[DELETED_COLUMN] = pa.array([1 if c.is_deleted else 0 for c in changes], pa.uint8())
    return pa.table(columns)


def _column_value(spec: FieldSpec, change: RowChange) -> Any:
    value = change.row.get(spec.name)
    missing = change.is_deleted or spec.name in change.unavailable
    if value is None and not spec.nullable and missing:
        return zero_value(spec)
    return value


def fill_unavailable(
    change: RowChange, previous: Mapping[str, Any], only: frozenset[str] | None = None
) -> RowChange:
    """``change`` with its unchanged-TOAST columns (or those in ``only``) from ``previous``."""
    filled = change.unavailable if only is None else change.unavailable & only
    row = dict(change.row)
    for name in filled:
        row[name] = previous.get(name)
    return dataclasses.replace(change, row=row, unavailable=change.unavailable - filled)
