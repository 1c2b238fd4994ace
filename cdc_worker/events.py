"""What the Debezium decoder makes of one Kafka record: plain, immutable values, no I/O.

``cdc_worker.decoder.DebeziumDecoder.decode`` turns every record of the replication topics into
exactly one of the classes below (together: ``DecodedMessage``) or raises ``DecodeError``. The
worker acts on them: it writes ``RowChange`` rows, applies ``Truncate``, advances its clock on
``Heartbeat`` and skips ``Tombstone`` and ``Ignored``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from service.catalog import Model

RowOp = Literal["c", "u", "d", "r"]
"""Debezium's operation codes for row events: create, update, delete, read (snapshot)."""


class DecodeError(ValueError):
    """A record that cannot be decoded; ``reason`` says precisely what is wrong and where.

    The worker sends such a record to the dead-letter topic: retrying cannot fix it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row-level change (or snapshot read) of a catalog model, ready to be written.

    ``row`` maps the tenant column and every catalog field to a Python value of the type the
    writer puts into the field's Arrow array (``service.demo.generator.arrow_type``): ``int``,
    ``float``, ``Decimal`` quantized to the field's scale, ``bool``, timezone-aware UTC
    ``datetime``, ``date``, or ``str`` (UUIDs canonical). Fields listed in ``unavailable`` hold
    ``None``: the source sent Debezium's unchanged-TOAST placeholder instead of the value, so the
    worker must keep the value it already stores for them.

    A delete (``is_deleted``) carries the key and the tenant; its other fields are ``None`` when
    nullable and the type's zero value otherwise, so that the tombstone row inserts as is (under
    ``FINAL`` a deleted winner hides the row, so those values are never read).

    ``version`` orders the changes of one row (``cdc_worker.decoder.change_version`` and
    ``snapshot_version``); ``lsn`` and ``last_commit_lsn`` are the raw positions it was made of.
    ``previous_tenant`` is set when an update moved the row to another tenant (visible only with
    ``REPLICA IDENTITY FULL``): the worker must then also write a tombstone for the key under
    the previous tenant, since the replica's sort key starts with the tenant.
    """

    model: Model
    op: RowOp
    tenant: str
    key: tuple[Any, ...]
    row: Mapping[str, Any]
    unavailable: frozenset[str]
    version: int
    is_deleted: bool
    source_ts_ms: int
    snapshot: bool
    lsn: int
    last_commit_lsn: int | None = None
    previous_tenant: str | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    """The source table was truncated: every row of the model older than ``version`` is gone."""

    model: Model
    source_ts_ms: int
    version: int
    lsn: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A Debezium heartbeat: the connector was alive and caught up at ``ts_ms`` (epoch ms)."""

    ts_ms: int


@dataclass(frozen=True, slots=True)
class Tombstone:
    """The null-value record Debezium sends after a delete for Kafka log compaction.

    The preceding delete event already carried everything; there is nothing to write.
    """

    model: Model


@dataclass(frozen=True, slots=True)
class Ignored:
    """A record that is not for the replica (a table outside the catalog, a logical message)."""

    topic: str
    reason: str


DecodedMessage = RowChange | Truncate | Heartbeat | Tombstone | Ignored
"""Everything ``DebeziumDecoder.decode`` returns."""

__all__ = [
    "DecodeError",
    "DecodedMessage",
    "Heartbeat",
    "Ignored",
    "RowChange",
    "RowOp",
    "Tombstone",
    "Truncate",
]
