"""Decode a run of Debezium records of one topic column-wise, straight into replica Arrow rows.

``DebeziumDecoder`` turns one record into one ``RowChange`` in per-field Python (about 50 µs per
event, bench/README.md). ``ColumnarDecoder`` handles the common case of the shipped connector
settings (JSON without schemas, ``decimal.handling.mode=string``, ``time.precision.mode=
isostring``) for a whole list of records at once: each value is parsed once with orjson, its
envelope and source fields are checked, the row's values are gathered into column lists, and each
column is validated and converted by Arrow's C++ kernels (decimals from their text, exactly;
timestamps and dates from ISO text; UUIDs in canonical text only).

A record takes this path only when it has the strict shape below; every other record (tombstones,
truncates, heartbeats, logical messages, ``{schema, payload}`` values, unchanged-TOAST
placeholders, tenant moves, numbers or times in any other encoding, anything that would fail) goes
through ``DebeziumDecoder.decode`` unchanged, so the outcome of every record (row, version,
``_is_deleted``, dead-letter reason) is what the per-record path gives. The strict shape of an
upsert (``op`` c, u or r) or a delete (``op`` d):

* an envelope object (not wrapped) whose ``source`` passes the per-record checks;
* a string tenant, neither empty nor the placeholder; for a delete only the key columns of
  ``before`` are read, as the per-record path does;
* per column: JSON integers in int64 for int fields, JSON numbers for float fields, booleans for
  bool fields, text for the others (no text equal to the placeholder); decimals as plain text
  that fits the field's precision and scale; timestamps ``YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z`` and
  dates ``YYYY-MM-DD[Z]`` with years 1900-2299 (no clamping to do); lowercase canonical UUIDs;
  ``null`` only in nullable fields.

``tests/unit/test_columnar_decoder.py`` checks the equivalence against the per-record path.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cdc_worker.decoder import (
    _SEQUENCE,
    _SNAPSHOT_FLAGS,
    MAX_LSN,
    DebeziumDecoder,
)
from cdc_worker.events import DecodedMessage, DecodeError
from service.catalog import FieldSpec, FieldType, Model
from service.demo.generator import DELETED_COLUMN, VERSION_COLUMN
from service.schema import arrow_type, zero_value

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_WRAPPED: Final = frozenset({"schema", "payload"})
# Kinds of per-value check in the gather loop (plain ints: cheaper than enum members).
_CHECK_INT, _CHECK_FLOAT, _CHECK_BOOL, _CHECK_TEXT = range(4)
_PYTHON_TYPES: Final[dict[int, type[Any]]] = {
    _CHECK_INT: int,
    _CHECK_FLOAT: float,
    _CHECK_BOOL: bool,
    _CHECK_TEXT: str,
}
_CHECKS: Final = {
    FieldType.INT: _CHECK_INT,
    FieldType.FLOAT: _CHECK_FLOAT,
    FieldType.BOOL: _CHECK_BOOL,
}
_KEY_TYPES: Final = frozenset({FieldType.INT, FieldType.STRING, FieldType.ENUM, FieldType.BOOL})
# Years 1900-2299: inside the replica's range, so the per-record path would not clamp them.
_YEAR: Final = r"(?:19\d\d|2[0-2]\d\d)-\d\d-\d\d"
_TIMESTAMP_TEXT: Final = rf"^{_YEAR}T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{{1,6}})?Z$"
_DATE_TEXT: Final = rf"^{_YEAR}Z?$"
_UUID_TEXT: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


@dataclass(frozen=True, slots=True)
class ColumnarRows:
    """Rows decoded column-wise: the replica table and, per row, its batch key and version."""

    model: Model
    table: pa.Table
    """In the replica's layout: tenant, every field, ``_version``, ``_is_deleted``."""
    keys: list[tuple[Any, ...]]
    """Per row, ``(tenant, *primary key)`` with the values the per-record path gives."""
    versions: list[int]
    source_ts_ms: list[int]

    def row(self, index: int) -> dict[str, Any]:
        """One row's field values as the per-record path types them (for TOAST filling)."""
        row: dict[str, Any] = self.table.slice(index, 1).to_pylist()[0]
        return row


ColumnarEntry = int | DecodedMessage | DecodeError
"""Per record: the index of its row in ``ColumnarRows``, or the per-record path's outcome."""


@dataclass(frozen=True, slots=True)
class ColumnarBatch:
    """The outcome of a list of records, in their order."""

    rows: ColumnarRows | None
    entries: list[ColumnarEntry]


@dataclass(frozen=True, slots=True)
class _Field:
    spec: FieldSpec
    check: int
    in_key: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the per-record loop needs of one topic's model, resolved once."""

    model: Model
    fields: tuple[_Field, ...]
    values: Callable[[dict[str, Any]], tuple[Any, ...]]
    key: Callable[[dict[str, Any]], tuple[Any, ...]]
    schema: str
    table: str

    @classmethod
    def of(cls, model: Model) -> _Plan:
        names = [*model.fields]
        schema, _, table = model.source.partition(".")
        return cls(
            model,
            tuple(
                _Field(spec, _CHECKS.get(spec.type, _CHECK_TEXT), spec.name in model.primary_key)
                for spec in model.fields.values()
            ),
            _getter(names),
            _getter(list(model.primary_key)),
            schema,
            table,
        )


class ColumnarDecoder:
    """Decodes lists of records of one topic; a thin fast path in front of ``DebeziumDecoder``."""

    def __init__(self, decoder: DebeziumDecoder) -> None:
        """Use ``decoder`` (and its placeholder) for every record outside the fast shape."""
        self._decoder = decoder
        self._placeholder = decoder.unavailable_value_placeholder
        self._plans = {
            topic: _Plan.of(model)
            for topic, model in decoder.table_topics.items()
            if _columnar(model)
        }

    def decode(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]
    ) -> ColumnarBatch:
        """Decode ``records`` (key, value) of ``topic``; fast rows in ``rows``, the rest alone."""
        plan = self._plans.get(topic)
        if plan is None:
            return ColumnarBatch(None, [self._single(topic, k, v) for k, v in records])
        gathered: list[tuple[Any, ...]] = []
        positions: list[int] = []
        keys: list[tuple[Any, ...]] = []
        versions: list[int] = []
        stamps: list[int] = []
        deleted: list[int] = []
        for position, (_, value) in enumerate(records):
            try:
                fast = self._gather(plan, value)
            except Exception:  # anything unusual is the per-record path's to judge
                fast = None
            if fast is None:
                continue
            values, key, version, ts_ms, is_deleted = fast
            gathered.append(values)
            positions.append(position)
            keys.append(key)
            versions.append(version)
            stamps.append(ts_ms)
            deleted.append(is_deleted)
        rows = None
        if gathered:
            converted = _convert(plan, gathered, deleted, self._placeholder)
            if converted is None:
                positions = []
            else:
                table, kept = converted
                if kept is not None:
                    positions = [positions[i] for i in kept]
                    keys = [keys[i] for i in kept]
                    versions = [versions[i] for i in kept]
                    stamps = [stamps[i] for i in kept]
                    deleted = [deleted[i] for i in kept]
                table = table.append_column(VERSION_COLUMN, pa.array(versions, pa.uint64()))
                table = table.append_column(DELETED_COLUMN, pa.array(deleted, pa.uint8()))
                rows = ColumnarRows(plan.model, table, keys, versions, stamps)
        entries: list[ColumnarEntry | None] = [None] * len(records)
        for index, position in enumerate(positions):
            entries[position] = index
        return ColumnarBatch(
            rows,
            [
                entry if entry is not None else self._single(topic, *records[position])
                for position, entry in enumerate(entries)
            ],
        )

    def _single(self, topic: str, key: bytes | None, value: bytes | None) -> ColumnarEntry:
        try:
            return self._decoder.decode(topic, key, value)
        except DecodeError as error:
            return error

    def _gather(
        self, plan: _Plan, value: bytes | None
    ) -> tuple[tuple[Any, ...], tuple[Any, ...], int, int, int] | None:
        """The raw values, key, version, source time and delete flag of a fast-shaped record.

        The envelope and source checks are the per-record path's, for the common values only;
        the field values are checked column-wise in ``_convert``.
        """
        if value is None:
            return None
        document = orjson.loads(value)
        if type(document) is not dict or document.keys() == _WRAPPED:
            return None
        op = document.get("op")
        if op not in ("c", "u", "r", "d"):
            return None
        source = document["source"]
        if type(source) is not dict:
            return None
        if source.get("schema") != plan.schema or source.get("table") != plan.table:
            return None
        lsn = source["lsn"]
        ts_ms = source["ts_ms"]
        if type(lsn) is not int or not 0 <= lsn <= MAX_LSN:
            return None
        if type(ts_ms) is not int or not _INT64_MIN <= ts_ms <= _INT64_MAX:
            return None
        snapshot = source.get("snapshot")
        if snapshot is not None and type(snapshot) is not bool and snapshot not in _SNAPSHOT_FLAGS:
            return None
        # snapshot_version and change_version, inline: the range checks above are theirs.
        if op == "r":
            version = 2 * lsn
        else:
            sequence = source.get("sequence")
            position = lsn
            if sequence is not None:
                plain = _SEQUENCE.fullmatch(sequence) if type(sequence) is str else None
                if plain is None:
                    return None
                if plain.group(1) is not None:
                    last_commit_lsn = int(plain.group(1))
                    if last_commit_lsn >= MAX_LSN:
                        return None
                    position = max(lsn, last_commit_lsn + 1)
            version = 2 * position + 1
        image = document["before" if op == "d" else "after"]
        if type(image) is not dict:
            return None
        model = plan.model
        tenant = image[model.tenant_column]
        placeholder = self._placeholder
        if type(tenant) is not str or not tenant or tenant == placeholder:
            return None
        if op == "u":
            before = document.get("before")
            if isinstance(before, dict) and _moves_tenant(before, model, tenant, placeholder):
                return None
        key = (tenant, *plan.key(image))
        if op == "d":
            values = tuple(image[f.spec.name] if f.in_key else None for f in plan.fields)
            return (tenant, *values), key, version, ts_ms, 1
        return (tenant, *plan.values(image)), key, version, ts_ms, 0


def _getter(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function from a row image to the values of ``names``, as a tuple (in C)."""
    if len(names) == 1:
        name = names[0]
        return lambda image: (image[name],)
    getter: Callable[[dict[str, Any]], tuple[Any, ...]] = operator.itemgetter(*names)
    return getter


def _columnar(model: Model) -> bool:
    """Whether a model's rows can take the fast path.

    Its key columns must compare as raw JSON values (ints, text, booleans) and its decimals must
    have integer digits (a text pattern then bounds them).
    """
    return all(model.fields[c].type in _KEY_TYPES for c in model.primary_key) and all(
        spec.precision > spec.scale
        for spec in model.fields.values()
        if spec.type is FieldType.DECIMAL
    )


def _moves_tenant(before: dict[str, Any], model: Model, tenant: str, placeholder: str) -> bool:
    """Whether the per-record path would set ``previous_tenant`` (a tenant move)."""
    old = before.get(model.tenant_column)
    if isinstance(old, str | int) and not isinstance(old, bool) and old != "":
        return str(old) != tenant and old != placeholder
    return False


def _convert(
    plan: _Plan, gathered: list[tuple[Any, ...]], deleted: list[int], placeholder: str
) -> tuple[pa.Table, list[int] | None] | None:
    """The gathered rows as replica columns, and the rows kept when some failed the checks.

    None when a conversion fails (an impossible calendar date, say): the caller then sends every
    record to the per-record path, which knows the exact error.
    """
    columns: list[Sequence[Any]] = list(zip(*gathered, strict=True))
    bad: set[int] = set()
    for index, field in enumerate(plan.fields, start=1):
        column, rejected = _checked(field, columns[index], deleted, placeholder)
        columns[index] = column
        bad.update(rejected)
    texts: dict[str, pa.Array] = {}
    masks: list[pa.Array] = []
    for index, field in enumerate(plan.fields, start=1):
        pattern = _text_pattern(field.spec)
        if pattern is None:
            continue
        # Rows that failed the type checks may hold anything: they are dropped below.
        column = columns[index]
        if bad:
            column = [None if i in bad else v for i, v in enumerate(column)]
        text = pa.array(column, pa.string())
        texts[field.spec.name] = text
        masks.append(pc.fill_null(pc.match_substring_regex(text, pattern), True))
    if bad:
        masks.append(pa.array([i not in bad for i in range(len(gathered))], pa.bool_()))
    kept: list[int] | None = None
    if masks:
        mask = masks[0]
        for other in masks[1:]:
            mask = pc.and_(mask, other)
        if not pc.all(mask).as_py():
            kept = pc.indices_nonzero(mask).to_pylist()
            if not kept:
                return None
            rows = pa.array(kept, pa.int64())
            texts = {name: text.take(rows) for name, text in texts.items()}
            columns = [[column[i] for i in kept] for column in columns]
            deleted = [deleted[i] for i in kept]
    model = plan.model
    arrays: dict[str, pa.Array] = {model.tenant_column: pa.array(columns[0], pa.string())}
    try:
        for index, field in enumerate(plan.fields, start=1):
            spec = field.spec
            arrays[spec.name] = _column(spec, columns[index], texts.get(spec.name))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    if any(deleted):
        # A delete's non-key columns: null where nullable, the type's zero value otherwise
        # (replica_rows does the same for the per-record path).
        for field in plan.fields:
            spec = field.spec
            if not field.in_key and not spec.nullable:
                zero = pa.scalar(zero_value(spec), arrow_type(spec))
                arrays[spec.name] = pc.fill_null(arrays[spec.name], zero)
    return pa.table(arrays), kept


def _checked(
    field: _Field, column: Sequence[Any], deleted: list[int], placeholder: str
) -> tuple[Sequence[Any], list[int]]:
    """A column's values (ints made floats in float fields) and the rows whose value fails.

    Whole-column checks in C first; the per-value loop runs only when they find something.
    """
    spec = field.spec
    expected = _PYTHON_TYPES[field.check]
    types = set(map(type, column))
    has_null = type(None) in types
    types.discard(type(None))
    clean = types <= {expected}
    if clean and has_null and not spec.nullable:
        # Nulls of a non-nullable field are only a delete's unread columns.
        clean = all(deleted[i] for i, v in enumerate(column) if v is None)
    if clean and field.check == _CHECK_TEXT:
        clean = placeholder not in column
    if clean and field.check == _CHECK_INT and types:
        present = [v for v in column if v is not None] if has_null else column
        clean = min(present) >= _INT64_MIN and max(present) <= _INT64_MAX
    if clean:
        return column, []
    values: list[Any] = []
    rejected: list[int] = []
    for index, raw in enumerate(column):
        value = raw
        if raw is None:
            ok = spec.nullable or bool(deleted[index])
        elif field.check == _CHECK_FLOAT and type(raw) is int:
            value, ok = float(raw), True
        elif type(raw) is not expected:
            ok = False
        elif field.check == _CHECK_TEXT:
            ok = raw != placeholder
        elif field.check == _CHECK_INT:
            ok = _INT64_MIN <= raw <= _INT64_MAX
        else:
            ok = True
        if not ok:
            rejected.append(index)
            value = None
        values.append(value)
    return values, rejected


def _text_pattern(spec: FieldSpec) -> str | None:
    if spec.type is FieldType.DECIMAL:
        whole = spec.precision - spec.scale
        fraction = rf"(?:\.\d{{1,{spec.scale}}})?" if spec.scale else ""
        return rf"^-?\d{{1,{whole}}}{fraction}$"
    return {
        FieldType.TIMESTAMP: _TIMESTAMP_TEXT,
        FieldType.DATE: _DATE_TEXT,
        FieldType.UUID: _UUID_TEXT,
    }.get(spec.type)


def _column(spec: FieldSpec, column: Sequence[Any], text: pa.Array | None) -> pa.Array:
    target = arrow_type(spec)
    if text is None:
        return pa.array(column, target)
    if spec.type is FieldType.DATE:
        text = pc.utf8_slice_codeunits(text, 0, 10)
    if spec.type is FieldType.UUID:
        return text
    return text.cast(target)
