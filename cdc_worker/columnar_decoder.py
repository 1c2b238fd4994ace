r"""Decode a run of Debezium records of one topic column-wise, straight into replica Arrow rows.

``DebeziumDecoder`` turns one record into one ``RowChange`` in per-field Python (about 50 µs per
event, bench/README.md). ``ColumnarDecoder`` handles the common case of the shipped connector
settings (JSON without schemas, ``decimal.handling.mode=string``, ``time.precision.mode=
isostring``) for a whole list of records at once: each value is parsed by msgspec straight into
typed structs built once per topic from the model (no dicts, every JSON type checked in C), the
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
  ``null`` only in nullable fields; every catalog column present in ``after``.

JSON semantics. The per-record path parses with the standard library (``json`` with
``parse_float=Decimal``); msgspec differs from it as follows, and each difference either rejects
(the record then takes the per-record path) or is caught before a row is kept:

* msgspec is stricter, so these only send records to the per-record path: ``NaN``/``Infinity``
  literals, lone surrogate escapes (``"\ud800"``), surrogates encoded in UTF-8 (the per-record
  path decodes with ``surrogatepass``), a UTF-8 BOM, UTF-16/32 values, a float literal beyond
  the double range in a float field, and (typed fields) any JSON type other than the field's
  (``1e3`` or ``1.0`` in an int field, a string, object or array where text is expected,
  ``true`` in an int field). JSON integers in float fields are converted exactly as
  ``float(int)`` does (correctly rounded, checked against ``float(Decimal(text))``).
* The same in both: duplicate keys (the last one wins), escapes (``\u00e9``, ``\/``, surrogate
  pairs), ``-0``/``-0.0``, denormals, underflow to ``0.0`` for exponents the standard library's
  ``Decimal`` can hold, raw control characters in strings (rejected), missing keys (msgspec
  structs make every catalog column of ``after`` required, so a missing one is not read as null).
* msgspec accepts where the standard library rejects, only in content it does not check: an
  integer literal of more than ``sys.get_int_max_str_digits()`` digits, an exponent of 18 or
  more digits (``Decimal`` refuses it; msgspec reads ``1e-9999999999999999999`` as ``0.0``),
  nesting deeper than the interpreter's recursion limit allows the per-record parser, and
  invalid UTF-8. The structs are therefore closed (``forbid_unknown_fields``) and declare every
  field Debezium writes, so that normally nothing is skipped: typed integers refuse too many
  digits, typed strings are UTF-8 checked, nesting is that of the structs; a float field that
  decodes to zero has its record searched for a huge exponent. A record with fields the structs
  do not know (source columns outside the catalog, a newer connector's metadata) is decoded by an
  open copy of the structs only after the whole value passed those checks
  (``_plain_json``).

``tests/unit/test_columnar_decoder.py`` checks the equivalence against the per-record path.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final

import msgspec
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
_FAST_OPS: Final = frozenset({"c", "u", "r", "d"})
# Float fields are read from their raw literal (``_json_float``): msgspec's own float parsing
# reads exponents Decimal refuses.
_JSON_TYPES: Final[dict[FieldType, type[Any]]] = {
    FieldType.INT: int,
    FieldType.FLOAT: msgspec.Raw,
    FieldType.BOOL: bool,
}
_NUMBER_START: Final = frozenset(b"-0123456789")
_KEY_TYPES: Final = frozenset({FieldType.INT, FieldType.STRING, FieldType.ENUM, FieldType.BOOL})
# Years 1900-2299: inside the replica's range, so the per-record path would not clamp them.
_YEAR: Final = r"(?:19\d\d|2[0-2]\d\d)-\d\d-\d\d"
_TIMESTAMP_TEXT: Final = rf"^{_YEAR}T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{{1,6}})?Z$"
_DATE_TEXT: Final = rf"^{_YEAR}Z?$"
_UUID_TEXT: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# An exponent Decimal cannot hold (its limit is about 10**18): the per-record parser fails on it.
_HUGE_EXPONENT: Final = re.compile(rb"[eE][-+]?[0-9]{18}")
_UNKNOWN_FIELD: Final = "Object contains unknown field"
# Nesting that both parsers accept wherever the per-record path is called from; a value with fewer
# brackets than this cannot nest deeper.
_SAFE_DEPTH: Final = 200
# Debezium's envelope and PostgreSQL source fields besides those the decoder reads (3.x adds
# ts_us and ts_ns); declared so that the closed structs skip nothing.
_ENVELOPE_EXTRAS: Final = (("ts_ms", int), ("ts_us", int), ("ts_ns", int))
_SOURCE_EXTRAS: Final = (
    ("version", str),
    ("connector", str),
    ("name", str),
    ("db", str),
    ("ts_us", int),
    ("ts_ns", int),
    ("txId", int),
    ("xmin", int),
)


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
    in_key: bool


_Decode = Callable[[bytes], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the per-record loop needs of one topic's model, resolved once."""

    model: Model
    fields: tuple[_Field, ...]
    schema: str
    table: str
    closed: _Decode
    """Decodes a value whose every field the structs declare (nothing skipped)."""
    open: _Decode
    """Decodes a value with unknown fields, skipping them (only after ``_plain_json``)."""
    values: Callable[[Any], tuple[Any, ...]]
    """``(tenant, *fields)`` of an ``after`` struct."""
    key: Callable[[Any], tuple[Any, ...]]
    """``(tenant, *primary key)`` of a ``before`` struct."""
    key_indices: tuple[int, ...]
    """Where the primary key columns sit in ``values``."""
    delete_slots: tuple[int | None, ...]
    """Per field, where a delete's value sits in ``key`` (None: not read)."""
    floats: Callable[[Any], tuple[Any, ...]] | None
    """The raw float fields of an image struct, when the model has any."""
    float_slots: tuple[tuple[int, bool], ...]
    """Where float fields sit in ``values``, and whether they are nullable."""

    @classmethod
    def of(cls, model: Model) -> _Plan:
        names = list(model.fields)
        # Struct attributes c0, c1..: column names need not be Python identifiers.
        attributes = [f"c{index}" for index in range(len(names))]
        indices = [names.index(name) for name in model.primary_key]
        floats = [
            attribute
            for attribute, spec in zip(attributes, model.fields.values(), strict=True)
            if spec.type is FieldType.FLOAT
        ]
        schema, _, table = model.source.partition(".")
        return cls(
            model,
            tuple(_Field(spec, spec.name in model.primary_key) for spec in model.fields.values()),
            schema,
            table,
            _envelope_decoder(model, attributes, closed=True),
            _envelope_decoder(model, attributes, closed=False),
            _tuple_getter(["tenant", *attributes]),
            _tuple_getter(["tenant", *(attributes[i] for i in indices)]),
            tuple(1 + i for i in indices),
            tuple(
                1 + model.primary_key.index(name) if name in model.primary_key else None
                for name in names
            ),
            _tuple_getter(floats) if floats else None,
            tuple(
                (1 + index, spec.nullable)
                for index, spec in enumerate(model.fields.values())
                if spec.type is FieldType.FLOAT
            ),
        )


def _envelope_decoder(model: Model, attributes: list[str], *, closed: bool) -> _Decode:
    """A msgspec decoder of a topic's envelope into structs (attributes ``c0``.. per field).

    ``after`` has every catalog column required, typed as its JSON form (nullable where the field
    is); ``before`` has them optional and nullable, as the identity may leave any out. Fields
    the per-record path reads with ``get`` default to None, the same as an explicit null.
    """
    renames = {"tenant": model.tenant_column} | dict(zip(attributes, model.fields, strict=True))
    after_fields: list[tuple[Any, ...]] = [("tenant", str)]
    before_fields: list[tuple[Any, ...]] = [("tenant", str | None, None)]
    for attribute, spec in zip(attributes, model.fields.values(), strict=True):
        kind = _JSON_TYPES.get(spec.type, str)
        if kind is msgspec.Raw:
            # A raw literal holds null too; _json_float reads and checks it.
            after_fields.append((attribute, kind))
            before_fields.append((attribute, kind, None))
            continue
        after_fields.append((attribute, kind | None if spec.nullable else kind))
        before_fields.append((attribute, kind | None, None))
    after = msgspec.defstruct(
        "After", after_fields, rename=renames, forbid_unknown_fields=closed, gc=False
    )
    before = msgspec.defstruct(
        "Before", before_fields, rename=renames, forbid_unknown_fields=closed, gc=False
    )
    source = msgspec.defstruct(
        "Source",
        [
            ("schema", str | None, None),
            ("table", str | None, None),
            ("lsn", int | None, None),
            ("ts_ms", int | None, None),
            ("snapshot", str | bool | None, None),
            ("sequence", str | None, None),
            *((name, kind | None, None) for name, kind in _SOURCE_EXTRAS),
        ],
        forbid_unknown_fields=closed,
        gc=False,
    )
    transaction = msgspec.defstruct(
        "Transaction",
        [
            ("id", str | None, None),
            ("total_order", int | None, None),
            ("data_collection_order", int | None, None),
        ],
        forbid_unknown_fields=closed,
        gc=False,
    )
    envelope = msgspec.defstruct(
        "Envelope",
        [
            ("op", str | None, None),
            ("source", source | None, None),
            ("before", before | None, None),
            ("after", after | None, None),
            ("transaction", transaction | None, None),
            *((name, kind | None, None) for name, kind in _ENVELOPE_EXTRAS),
        ],
        forbid_unknown_fields=closed,
        gc=False,
    )
    decode: _Decode = msgspec.json.Decoder(envelope).decode
    return decode


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
        if type(value) is not bytes:
            return None
        try:
            document = plan.closed(value)
        except msgspec.ValidationError as error:
            if not str(error).startswith(_UNKNOWN_FIELD) or not _plain_json(value):
                return None
            document = plan.open(value)
        op = document.op
        if op not in _FAST_OPS:
            return None
        source = document.source
        if source is None or source.schema != plan.schema or source.table != plan.table:
            return None
        lsn = source.lsn
        ts_ms = source.ts_ms
        if lsn is None or not 0 <= lsn <= MAX_LSN:
            return None
        if ts_ms is None or not _INT64_MIN <= ts_ms <= _INT64_MAX:
            return None
        snapshot = source.snapshot
        if type(snapshot) is str and snapshot not in _SNAPSHOT_FLAGS:
            return None
        version = 2 * lsn if op == "r" else _change_version(lsn, source.sequence)
        if version is None:
            return None
        before = document.before
        after = document.after
        floats = plan.floats
        if floats is not None and before is not None:
            # Never read, but the per-record parser must accept them (_json_float raises).
            for raw in floats(before):
                if raw is not None:
                    _json_float(raw)
        placeholder = self._placeholder
        if op == "d":
            if before is None:
                return None
            if floats is not None and after is not None:
                for raw in floats(after):
                    _json_float(raw)
            key = plan.key(before)
            if None in key:
                return None
            tenant = key[0]
            if not tenant or tenant == placeholder:
                return None
            values = tuple(None if slot is None else key[slot] for slot in plan.delete_slots)
            return (tenant, *values), key, version, ts_ms, 1
        if after is None:
            return None
        row = _with_floats(plan, plan.values(after)) if plan.float_slots else plan.values(after)
        if row is None:
            return None
        tenant = row[0]
        if not tenant or tenant == placeholder:
            return None
        if op == "u" and before is not None:
            # The per-record path's previous_tenant (a tenant move) is not the fast shape.
            old = before.tenant
            if old and old not in (tenant, placeholder):
                return None
        key = (tenant, *(row[i] for i in plan.key_indices))
        return row, key, version, ts_ms, 0


def _change_version(lsn: int, sequence: str | None) -> int | None:
    """``change_version`` inline (the caller checked the LSN's range); None: not the fast shape."""
    position = lsn
    if sequence is not None:
        plain = _SEQUENCE.fullmatch(sequence)
        if plain is None:
            return None
        if plain.group(1) is not None:
            last_commit_lsn = int(plain.group(1))
            if last_commit_lsn >= MAX_LSN:
                return None
            position = max(lsn, last_commit_lsn + 1)
    return 2 * position + 1


def _with_floats(plan: _Plan, row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """``row`` with its raw float literals read; None when a non-nullable one is null."""
    values = list(row)
    for index, nullable in plan.float_slots:
        number = _json_float(values[index])
        if number is None and not nullable:
            return None
        values[index] = number
    return tuple(values)


def _tuple_getter(names: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """``attrgetter`` that returns a tuple for a single name too."""
    if len(names) == 1:
        name = names[0]
        return lambda struct: (getattr(struct, name),)
    getter: Callable[[Any], tuple[Any, ...]] = attrgetter(*names)
    return getter


def _json_float(raw: msgspec.Raw) -> float | None:
    """A float field's raw JSON read as the per-record path reads it: null, or a number.

    Raises ValueError for anything else (text, booleans, arrays: the per-record path's to judge)
    and for literals its parser refuses: exponents beyond Decimal's range, integers beyond
    ``sys.get_int_max_str_digits()`` (``int`` applies the same limit) or the float range.
    """
    text = bytes(raw)
    if text == b"null":
        return None
    if not text or text[0] not in _NUMBER_START:
        raise ValueError("not a JSON number")
    if b"." in text or b"e" in text or b"E" in text:
        if _HUGE_EXPONENT.search(text) is not None:
            raise ValueError("an exponent Decimal refuses")
        # float() of the text rounds exactly as float(Decimal(text)) does: correctly.
        return float(text)
    # A JSON integer: the per-record path converts the int (so -0 is 0.0, not -0.0).
    return float(int(text))


def _plain_json(value: bytes) -> bool:
    """Whether ``value`` holds none of what msgspec skips unchecked but ``json`` rejects.

    Checked only for values with fields the structs do not declare: invalid UTF-8 (strict: the
    per-record path's ``surrogatepass`` accepts a superset), nesting (bounded by the brackets),
    exponents ``Decimal`` refuses and integers beyond ``sys.get_int_max_str_digits()``.
    """
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if value.count(b"[") + value.count(b"{") >= _SAFE_DEPTH:
        return False
    if _HUGE_EXPONENT.search(value) is not None:
        return False
    limit = sys.get_int_max_str_digits()
    return not limit or len(value) <= limit or re.search(rb"[0-9]{%d}" % (limit + 1), value) is None


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
        bad.update(_rejected(field.spec, columns[index], placeholder))
    texts: dict[str, pa.Array] = {}
    masks: list[pa.Array] = []
    for index, field in enumerate(plan.fields, start=1):
        pattern = _text_pattern(field.spec)
        if pattern is None:
            continue
        text = pa.array(columns[index], pa.string())
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


def _rejected(spec: FieldSpec, column: Sequence[Any], placeholder: str) -> list[int]:
    """The rows whose value the per-record path would not keep as it is.

    The structs already fixed each value's JSON type (and nulls to nullable fields and to a
    delete's unread columns); left are the int64 range and placeholder text. Whole-column checks
    in C first; the per-value loop runs only when they find something.
    """
    if spec.type is FieldType.INT:
        present = [v for v in column if v is not None] if None in column else column
        if not present or (min(present) >= _INT64_MIN and max(present) <= _INT64_MAX):
            return []
        return [
            i for i, v in enumerate(column) if v is not None and not _INT64_MIN <= v <= _INT64_MAX
        ]
    if spec.type in _JSON_TYPES or placeholder not in column:
        return []
    return [i for i, v in enumerate(column) if v == placeholder]


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
