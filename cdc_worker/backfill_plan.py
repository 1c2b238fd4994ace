"""The pure parts of a backfill: key ranges, the SQL that reads a page, and the page as Arrow.

A page is read with ``COPY (SELECT ...) TO STDOUT (FORMAT csv)``: PostgreSQL renders the text in
C, and pyarrow's CSV reader (C++) turns it into typed columns, so no Python code runs per row.
The SELECT converts each column into the form the CDC decoder produces for the same value, so a
row copied by a backfill and the same row streamed by CDC are identical in the replica:

* timestamps as microseconds since the epoch and dates as days, both clamped to
  1900-01-01..2299-12-31 (what ClickHouse stores; ``infinity`` lands on the bounds, as in the
  decoder);
* decimals rounded half away from zero to the catalog's scale (the decoder's ROUND_HALF_UP);
* floats in PostgreSQL's shortest exact text (``extra_float_digits`` 1), read back exactly;
* NULL is an unquoted empty field and the empty string a quoted one, which the reader tells
  apart (and no other text, such as ``NA``, is taken for NULL).

Versions: every row gets ``_version`` ``2 * snapshot_lsn`` (``snapshot_version``), except rows
whose visible version a transaction the snapshot does not see has already replaced, deleted or
locked (``xmax`` is in the snapshot's in-progress list or not older than its ``xmax``). Such a
transaction may have written its change record before the snapshot's WAL position (a
long transaction commits after the snapshot), so CDC could version its change below
``2 * snapshot_lsn``; those rows are copied at version 0, which fills a missing key but never
replaces anything replication wrote, and the change itself arrives through CDC.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv

from cdc_worker.decoder import MAX_DATE, MAX_TIMESTAMP, MIN_DATE, MIN_TIMESTAMP, snapshot_version
from service.catalog import FieldSpec, FieldType, Model
from service.schema import arrow_type

_EPOCH_MICROS = {
    "min": int(MIN_TIMESTAMP.timestamp()) * 1_000_000,
    "max": int(MAX_TIMESTAMP.timestamp()) * 1_000_000 + MAX_TIMESTAMP.microsecond,
}
_XID_SPACE = 2**32
_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?$")
VERSION_COLUMN = "_version"
DELETED_COLUMN = "_is_deleted"


class UnsupportedKeyError(ValueError):
    """The model's primary key cannot be split into ranges (not one integer column)."""


@dataclass(frozen=True)
class KeyRange:
    """Primary keys ``start <= key < end``, the ``index``-th range of a backfill."""

    index: int
    start: int
    end: int


@dataclass(frozen=True)
class SnapshotInfo:
    """What a page query needs to know about the snapshot it reads in."""

    lsn: int
    xmax: int
    in_progress: tuple[int, ...]

    @property
    def version(self) -> int:
        """The version of rows read in this snapshot."""
        return snapshot_version(self.lsn)


def backfill_key(model: Model) -> str:
    """The single integer primary-key column a backfill splits and pages by."""
    keys = model.primary_key
    spec = model.fields.get(keys[0]) if len(keys) == 1 else None
    if spec is None or spec.type is not FieldType.INT:
        raise UnsupportedKeyError(
            f"model {model.qualified_name!r}: a backfill needs a primary key of one integer "
            f"column; it has {list(keys)!r}"
        )
    return keys[0]


def split_key_range(low: int, high: int, parts: int) -> list[KeyRange]:
    """``[low, high]`` (the snapshot's smallest and largest key) in up to ``parts`` ranges.

    Equal widths: right for the dense keys sequences give; a table with a few huge gaps gets
    uneven ranges, which costs balance, not correctness. The last range ends past ``high``.
    """
    if high < low:
        return []
    span = high - low + 1
    count = max(1, min(parts, span))
    starts = [low + span * i // count for i in range(count)]
    ends = [*starts[1:], high + 1]
    return [KeyRange(i, s, e) for i, (s, e) in enumerate(zip(starts, ends, strict=True))]


def checked_snapshot_id(snapshot_id: str) -> str:
    """A ``pg_export_snapshot()`` id, safe to put in ``SET TRANSACTION SNAPSHOT '...'``."""
    if not _SNAPSHOT_ID.match(snapshot_id):
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    return snapshot_id


def quoted_source(model: Model) -> str:
    """``"schema"."table"`` of the model's source table."""
    schema, table = model.source.split(".")
    return f'"{schema}"."{table}"'


def page_sql(model: Model, snapshot: SnapshotInfo, next_key: int, end: int, limit: int) -> str:
    """The SELECT of up to ``limit`` rows with ``next_key <= key < end``, in key order.

    It runs as ``COPY (...) TO STDOUT (FORMAT csv)``.

    Every value spliced in is an integer or comes from the validated catalog.
    """
    key = backfill_key(model)
    columns = [f'"{model.tenant_column}"::text', *map(_select_expression, model.fields.values())]
    columns.append(f"{_version_expression(snapshot)} AS {VERSION_COLUMN}")
    return (
        f"SELECT {', '.join(columns)} FROM {quoted_source(model)} "  # noqa: S608 (integers and catalog names only)
        f'WHERE "{key}" >= {int(next_key)} AND "{key}" < {int(end)} '
        f'ORDER BY "{key}" LIMIT {int(limit)}'
    )


def _select_expression(spec: FieldSpec) -> str:
    column = f'"{spec.name}"'
    if spec.type is FieldType.TIMESTAMP:
        micros = (
            f"LEAST(GREATEST(extract(epoch FROM {column}) * 1000000, {_EPOCH_MICROS['min']}), "
            f"{_EPOCH_MICROS['max']})::bigint"
        )
        return f"CASE WHEN {column} IS NULL THEN NULL ELSE {micros} END"
    if spec.type is FieldType.DATE:
        days = (
            f"LEAST(GREATEST({column}, DATE '{MIN_DATE.isoformat()}'), "
            f"DATE '{MAX_DATE.isoformat()}') - DATE '1970-01-01'"
        )
        return f"CASE WHEN {column} IS NULL THEN NULL ELSE {days} END"
    if spec.type is FieldType.DECIMAL:
        return f"round({column}::numeric, {int(spec.scale)})"
    return {
        FieldType.STRING: f"{column}::text",
        FieldType.ENUM: f"{column}::text",
        FieldType.UUID: f"{column}::text",
        FieldType.INT: f"{column}::bigint",
        FieldType.FLOAT: f"{column}::float8",
        FieldType.BOOL: f"{column}::boolean",
    }[spec.type]


def _version_expression(snapshot: SnapshotInfo) -> str:
    """``2 * lsn``, or 0 for a row a transaction outside the snapshot has touched."""
    xmax = "xmax::text::bigint"
    running = ", ".join(str(int(x) % _XID_SPACE) for x in snapshot.in_progress)
    in_progress = f"{xmax} = ANY(ARRAY[{running}]::bigint[])" if running else "false"
    # xids wrap around at 2**32: "not older than the snapshot's xmax" is a modular comparison.
    horizon = int(snapshot.xmax) % _XID_SPACE
    later = f"(({xmax} - {horizon} + {_XID_SPACE}) % {_XID_SPACE}) < {_XID_SPACE // 2}"
    return (
        f"CASE WHEN {xmax} <> 0 AND ({in_progress} OR {later}) THEN 0 "
        f"ELSE {int(snapshot.version)} END"
    )


def csv_types(model: Model) -> dict[str, pa.DataType]:
    """The Arrow type each CSV column is read as (times as integers, converted afterwards)."""
    types: dict[str, pa.DataType] = {model.tenant_column: pa.string()}
    for spec in model.fields.values():
        if spec.type is FieldType.TIMESTAMP:
            types[spec.name] = pa.int64()
        elif spec.type is FieldType.DATE:
            types[spec.name] = pa.int32()
        else:
            types[spec.name] = arrow_type(spec)
    types[VERSION_COLUMN] = pa.uint64()
    return types


def page_table(model: Model, chunks: Sequence[bytes]) -> pa.Table:
    """The replica rows of one CSV page: the catalog's Arrow types, ``_is_deleted`` 0."""
    types = csv_types(model)
    table = csv.read_csv(
        io.BytesIO(b"".join(chunks)),
        read_options=csv.ReadOptions(column_names=list(types)),
        parse_options=csv.ParseOptions(newlines_in_values=True),
        convert_options=csv.ConvertOptions(
            column_types=types,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for name in types:
        column = table.column(name)
        spec = model.fields.get(name)
        if spec is not None and spec.type in (FieldType.TIMESTAMP, FieldType.DATE):
            column = pc.cast(column, arrow_type(spec))
        columns[name] = column
    columns[DELETED_COLUMN] = pa.array([0] * table.num_rows, pa.uint8())
    return pa.table(columns)


def tombstone_table(model: Model, keys: Sequence[tuple[str, int, int]]) -> pa.Table:
    """Tombstones for ``(tenant, key, version)``: the key columns, the version, deleted."""
    key = backfill_key(model)
    return pa.table(
        {
            model.tenant_column: pa.array([k[0] for k in keys], pa.string()),
            key: pa.array([k[1] for k in keys], pa.int64()),
            VERSION_COLUMN: pa.array([k[2] for k in keys], pa.uint64()),
            DELETED_COLUMN: pa.array([1] * len(keys), pa.uint8()),
        }
    )
