r"""Decode a run of Debezium records of one topic column-wise, straight into replica Arrow rows.

``DebeziumDecoder`` turns one record into one ``RowChange`` in per-field Python (about 50 µs per
event, bench/README.md). ``ColumnarDecoder`` handles the common case of the shipped connector
settings (JSON without schemas, ``decimal.handling.mode=string``, ``time.precision.mode=
isostring``) for a whole list of records at once: each value is parsed by msgspec straight into
typed structs built once per topic from the model (no dicts, every JSON type checked in C; the
source's schema, table and snapshot flag as literal types, checked in C too). The rest works on
whole columns, not records: the other envelope and source checks are the per-record path's made
over a column each (a set, min and max; ``source.sequence`` through RE2; versions in numpy
``uint64``), so that a list whose records all pass costs a few passes in C, and only a check
that fails looks at each record; the rows' values are transposed from the structs into columns (a
float column's literals parsed as one JSON array), and each column is validated and converted by
Arrow's C++ kernels (decimals from their text, exactly; timestamps and dates from ISO text; UUIDs
in canonical text only).

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
  literals, lone surrogate escapes (``"\ud800"``) and surrogates encoded in UTF-8 (the per-record
  path decodes with ``surrogatepass`` and dead-letters them: no Arrow table holds them), a BOM,
  UTF-16/32 values, a float literal beyond the double range in a float field, and (typed fields) any
  JSON type other than the field's (``1e3`` or ``1.0`` in an int field, a string, object or array
  where text is expected, ``true`` in an int field). JSON integers in float fields are converted
  exactly as ``float(int)`` does (correctly rounded, checked against ``float(Decimal(text))``).
* The same in both: duplicate keys (the last one wins), escapes (``\u00e9``, ``\/``, surrogate
  pairs), ``-0``/``-0.0``, denormals, underflow to ``0.0`` for exponents the standard library's
  ``Decimal`` can hold, raw control characters in strings (rejected), missing keys (msgspec structs
  make every catalog column of ``after`` required, so a missing one is not read as null).
* msgspec accepts where the standard library rejects, only in content it does not check: an integer
  literal of more than ``sys.get_int_max_str_digits()`` digits, an exponent of 18 or more digits
  (``Decimal`` refuses it; msgspec reads ``1e-9999999999999999999`` as ``0.0``), nesting deeper than
  the interpreter's recursion limit allows the per-record parser, and invalid UTF-8. The structs are
  therefore closed (``forbid_unknown_fields``) and declare every field Debezium writes, so that
  normally nothing is skipped: typed integers refuse too many digits, typed strings are UTF-8
  checked, nesting is that of the structs; float fields are kept as raw literals and read as the
  per-record parser reads them (``_read_floats``). A record with fields the structs do not know
  (source columns outside the catalog, a newer connector's metadata) is decoded by an open copy of
  the structs only after the whole value passed those checks (``_plain_json``).

``tests/unit/test_columnar_decoder.py`` checks the equivalence against the per-record path.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import compress
from operator import attrgetter
from typing import Any, Final, Literal, cast

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from msgspec.structs import astuple

from cdc_worker.decoder import _SNAPSHOT_FLAGS, MAX_LSN, DebeziumDecoder
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
# The bytes of float literals joined by commas, when each is a JSON number or null.
_NUMBER_BYTES: Final = b"0123456789-+.eE,nul"
# What _json_float treats apart from float(): exponents Decimal refuses, integers that may
# overflow or exceed the digit limit, and the integer -0 (read as 0.0, not -0.0).
_ODD_NUMBER: Final = re.compile(rb"[eE][-+]?[0-9]{18}|[0-9]{309}|-0[],]")
_OP: Final = attrgetter("op")
_SOURCE: Final = attrgetter("source")
_BEFORE: Final = attrgetter("before")
_AFTER: Final = attrgetter("after")
# The source fields the column-wise checks read (schema, table and snapshot are checked by the
# structs' literal types), one getter each: a map per field is cheaper than transposing a tuple
# per record.
_SOURCE_FIELDS: Final = tuple(attrgetter(name) for name in ("lsn", "ts_ms", "sequence"))
# decoder._SEQUENCE (Debezium's own form of source.sequence) for RE2, whose \d is ASCII as
# re.ASCII's is; the group is the last commit LSN.
_SEQUENCE_TEXT: Final = r'^\[(?:null|"(?P<last>\d{1,20})"),(?:null|"\d{1,20}")\]$'
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
# Debezium's envelope fields besides those the decoder reads (3.x adds ts_us and ts_ns) and the
# PostgreSQL source fields other than schema, table and snapshot (lsn, ts_ms and sequence are read,
# the rest only declared), so that the closed structs skip nothing.
_ENVELOPE_EXTRAS: Final = (("ts_ms", int), ("ts_us", int), ("ts_ns", int))
_SOURCE_FRAME: Final = (
    ("lsn", int),
    ("ts_ms", int),
    ("sequence", str),
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
    every_row: list[int] | None = None
    """``entries`` when every record is a row of ``rows`` (the common case), else None."""


@dataclass(frozen=True, slots=True)
class _Field:
    spec: FieldSpec
    in_key: bool


_Decode = Callable[[bytes], Any]
_Getter = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the column-wise checks need of one topic's model, resolved once."""

    model: Model
    fields: tuple[_Field, ...]
    closed: _Decode
    """Decodes a value whose every field the structs declare (nothing skipped)."""
    open: _Decode
    """Decodes a value with unknown fields, skipping them (only after ``_plain_json``)."""
    key: Callable[[Any], tuple[Any, ...]]
    """``(tenant, *primary key)`` of a ``before`` struct."""
    key_slots: tuple[int, ...]
    """Where the primary key columns sit in ``columns``."""
    delete_slots: tuple[int | None, ...]
    """Per field, where a delete's value sits in ``key`` (None: not read)."""
    floats: tuple[tuple[int, _Getter, bool], ...]
    """Per float field: its slot in ``columns``, its getter (a raw literal) and nullability."""

    @classmethod
    def of(cls, model: Model) -> _Plan:
        names = list(model.fields)
        # Struct attributes c0, c1..: column names need not be Python identifiers.
        attributes = [f"c{index}" for index in range(len(names))]
        indices = [names.index(name) for name in model.primary_key]
        return cls(
            model,
            tuple(_Field(spec, spec.name in model.primary_key) for spec in model.fields.values()),
            _envelope_decoder(model, attributes, closed=True),
            _envelope_decoder(model, attributes, closed=False),
            # The tenant and at least one key column: attrgetter returns a tuple.
            attrgetter("tenant", *(attributes[i] for i in indices)),
            tuple(1 + i for i in indices),
            tuple(
                1 + model.primary_key.index(name) if name in model.primary_key else None
                for name in names
            ),
            tuple(
                (1 + index, attrgetter(attribute), spec.nullable)
                for index, (attribute, spec) in enumerate(
                    zip(attributes, model.fields.values(), strict=True)
                )
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
    schema, _, table = model.source.partition(".")
    # The model's schema and table, and the snapshot flags the per-record path accepts, as literal
    # types: msgspec checks them in C and hands back the literal's own string, allocating nothing.
    # A record with anything else fails the structs and takes the per-record path.
    source = msgspec.defstruct(
        "Source",
        [
            ("schema", Literal[schema]),
            ("table", Literal[table]),
            ("snapshot", Literal[tuple(sorted(_SNAPSHOT_FLAGS))] | bool | None, None),
            *((field, kind | None, None) for field, kind in _SOURCE_FRAME),
        ],
        kw_only=True,
        forbid_unknown_fields=closed,
        gc=False,
    )
    transaction = _optional_fields(
        "Transaction",
        [("id", str), ("total_order", int), ("data_collection_order", int)],
        closed=closed,
    )
    envelope = _optional_fields(
        "Envelope",
        [
            ("op", str),
            ("source", source),
            ("before", before),
            ("after", after),
            ("transaction", transaction),
            *_ENVELOPE_EXTRAS,
        ],
        closed=closed,
    )
    decode: _Decode = msgspec.json.Decoder(envelope).decode
    return decode


def _optional_fields(name: str, fields: Sequence[tuple[str, Any]], *, closed: bool) -> Any:
    """A struct of the envelope's frame: every field optional, missing read as null."""
    return msgspec.defstruct(
        name,
        [(field, kind | None, None) for field, kind in fields],
        forbid_unknown_fields=closed,
        gc=False,
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
        rows = None
        positions: list[int] = []
        gathered = _gather(plan, [value for _, value in records], self._placeholder)
        if gathered is not None:
            converted = _convert(plan, gathered, self._placeholder)
            if converted is not None:
                rows, positions = converted
        entries: list[ColumnarEntry | None] = [None] * len(records)
        for index, position in enumerate(positions):
            entries[position] = index
        if len(positions) == len(records):
            every_row = cast(list[int], entries)
            return ColumnarBatch(rows, cast(list[ColumnarEntry], every_row), every_row)
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


@dataclass(slots=True)
class _Candidates:
    """Records still in the fast shape, as parallel columns (one entry per record)."""

    positions: list[int]
    ops: list[str]
    befores: list[Any]
    afters: list[Any]
    versions: np.ndarray[Any, np.dtype[np.uint64]]
    stamps: list[int]

    def kept(self, keep: list[bool]) -> _Candidates:
        """The candidates whose flag in ``keep`` is true."""
        return _Candidates(
            list(compress(self.positions, keep)),
            list(compress(self.ops, keep)),
            list(compress(self.befores, keep)),
            list(compress(self.afters, keep)),
            self.versions[np.array(keep, dtype=np.bool_)],
            list(compress(self.stamps, keep)),
        )


@dataclass(frozen=True, slots=True)
class _Gathered:
    """The fast-shaped records' rows, column by column, upserts first and deletes last."""

    positions: list[int]
    columns: list[list[Any]]
    """The tenant, then one list per field, as the structs hold them (floats read)."""
    keys: list[tuple[Any, ...]]
    versions: list[int]
    stamps: list[int]
    deleted: list[int]

    @classmethod
    def of(
        cls,
        candidates: _Candidates,
        columns: list[list[Any]],
        keys: list[tuple[Any, ...]],
        *,
        deleted: int,
    ) -> _Gathered:
        """The kept candidates' rows, all upserts (``deleted`` 0) or all deletes (1)."""
        return cls(
            candidates.positions,
            columns,
            keys,
            candidates.versions.tolist(),
            candidates.stamps,
            [deleted] * len(keys),
        )


def _gather(plan: _Plan, values: list[bytes | None], placeholder: str) -> _Gathered | None:
    """The records of ``values`` that have the fast shape, their rows gathered column-wise.

    The envelope and source checks are the per-record path's, made over whole columns: a check
    that passes for every record costs one pass in C; only one that fails looks at each record.
    The field values are checked column-wise in ``_convert``.
    """
    keep: list[bool] | None
    positions, documents = _documents(plan, values)
    ops: list[Any] = list(map(_OP, documents))
    if not _FAST_OPS.issuperset(ops):
        keep = [op in _FAST_OPS for op in ops]
        positions, documents, ops = _compressed(keep, positions, documents, ops)
    sources = list(map(_SOURCE, documents))
    if None in sources:
        keep = [source is not None for source in sources]
        positions, documents, ops, sources = _compressed(keep, positions, documents, ops, sources)
    if not sources:
        return None
    lsns, stamps, sequences = [list(map(getter, sources)) for getter in _SOURCE_FIELDS]
    keep_source = _both(_between(lsns, 0, MAX_LSN), _between(stamps, _INT64_MIN, _INT64_MAX))
    if keep_source is not None:
        positions, documents, ops, lsns, stamps, sequences = _compressed(
            keep_source, positions, documents, ops, lsns, stamps, sequences
        )
        if not positions:
            return None
    versions, keep = _versions(ops, lsns, sequences)
    candidates = _Candidates(
        positions,
        ops,
        list(map(_BEFORE, documents)),
        list(map(_AFTER, documents)),
        versions,
        list(stamps),
    )
    if plan.floats and candidates.befores.count(None) != len(candidates.befores):
        # Never read, but the per-record parser must accept them (_json_float raises).
        keep = _both(keep, _readable_floats(plan, candidates.befores))
    if keep is not None:
        candidates = candidates.kept(keep)
    if "d" not in candidates.ops:
        return _upserts(plan, candidates, placeholder)
    is_delete = [op == "d" for op in candidates.ops]
    upserts = _upserts(plan, candidates.kept([not flag for flag in is_delete]), placeholder)
    deletes = _deletes(plan, candidates.kept(is_delete), placeholder)
    if upserts is None or deletes is None:
        return upserts or deletes
    return _Gathered(
        upserts.positions + deletes.positions,
        [first + second for first, second in zip(upserts.columns, deletes.columns, strict=True)],
        upserts.keys + deletes.keys,
        upserts.versions + deletes.versions,
        upserts.stamps + deletes.stamps,
        upserts.deleted + deletes.deleted,
    )


def _documents(plan: _Plan, values: list[bytes | None]) -> tuple[list[int], list[Any]]:
    """The positions and structs of the values that decode into the plan's structs.

    Anything msgspec refuses (invalid JSON or UTF-8, a type the structs do not allow) is the
    per-record path's to judge.
    """
    if set(map(type, values)) == {bytes}:
        try:
            return list(range(len(values))), list(map(plan.closed, cast(list[bytes], values)))
        except Exception:  # noqa: S110 - some value does not fit: sorted out one by one below
            pass
    positions: list[int] = []
    documents: list[Any] = []
    for position, value in enumerate(values):
        document = _document(plan, value)
        if document is not None:
            positions.append(position)
            documents.append(document)
    return positions, documents


def _document(plan: _Plan, value: bytes | None) -> Any:
    """The structs of one value; None when it is not for the fast path."""
    if type(value) is not bytes:
        return None
    try:
        return plan.closed(value)
    except msgspec.ValidationError as error:
        if not str(error).startswith(_UNKNOWN_FIELD) or not _plain_json(value):
            return None
    except Exception:
        return None
    try:
        return plan.open(value)
    except Exception:
        return None


def _upserts(plan: _Plan, candidates: _Candidates, placeholder: str) -> _Gathered | None:
    """The rows of upserts: every column from ``after``."""
    if not candidates.positions:
        return None
    afters = candidates.afters
    if None in afters:
        candidates = candidates.kept([after is not None for after in afters])
        if not candidates.positions:
            return None
        afters = candidates.afters
    # The replica's columns (tenant, then every field) are the ``after`` struct's fields in
    # order: one tuple per struct in C, transposed by zip (faster than a getter per column).
    columns = [list(column) for column in zip(*map(astuple, afters), strict=True)]
    keep = _usable_tenants(columns[0], placeholder)
    for slot, _, nullable in plan.floats:
        numbers, readable = _read_floats(columns[slot], nullable=nullable)
        columns[slot] = numbers
        keep = _both(keep, readable)
    befores = candidates.befores
    if befores.count(None) != len(befores):
        # The per-record path's previous_tenant (a tenant move) is not the fast shape.
        keep = _both(
            keep,
            [
                before is None
                or op != "u"
                or not before.tenant
                or before.tenant in (tenant, placeholder)
                for op, before, tenant in zip(candidates.ops, befores, columns[0], strict=True)
            ],
        )
    if keep is not None:
        candidates = candidates.kept(keep)
        columns = _compressed(keep, *columns)
        if not candidates.positions:
            return None
    keys = list(zip(columns[0], *(columns[slot] for slot in plan.key_slots), strict=True))
    return _Gathered.of(candidates, columns, keys, deleted=0)


def _deletes(plan: _Plan, candidates: _Candidates, placeholder: str) -> _Gathered | None:
    """The rows of deletes (at least one): the key columns of ``before``, nothing else read."""
    keep = [
        before is not None
        and None not in (key := plan.key(before))
        and bool(key[0])
        and key[0] != placeholder
        for before in candidates.befores
    ]
    if plan.floats and candidates.afters.count(None) != len(candidates.afters):
        # An after image on a delete is never read, but it must parse (_json_float raises).
        keep = [
            flag and (after is None or all(_readable(raw(after)) for _, raw, _ in plan.floats))
            for flag, after in zip(keep, candidates.afters, strict=True)
        ]
    candidates = candidates.kept(keep)
    if not candidates.positions:
        return None
    keys = list(map(plan.key, candidates.befores))
    count = len(keys)
    nothing: list[Any] = [None] * count
    key_columns = list(zip(*keys, strict=True))
    columns = [
        list(key_columns[0]),
        *(nothing if slot is None else list(key_columns[slot]) for slot in plan.delete_slots),
    ]
    return _Gathered.of(candidates, columns, keys, deleted=1)


def _compressed(keep: list[bool], *columns: Sequence[Any]) -> list[list[Any]]:
    """Each of ``columns`` with the entries whose flag in ``keep`` is true."""
    return [list(compress(column, keep)) for column in columns]


def _both(first: list[bool] | None, second: list[bool] | None) -> list[bool] | None:
    """Flags that are true where both are; None stands for all true."""
    if first is None:
        return second
    if second is None:
        return first
    return [a and b for a, b in zip(first, second, strict=True)]


def _between(column: Sequence[int | None], low: int, high: int) -> list[bool] | None:
    """Per entry whether it is an integer in ``low..high``; None when every entry is."""
    if None not in column:
        numbers = cast(Sequence[int], column)
        if low <= min(numbers) and max(numbers) <= high:
            return None
    return [value is not None and low <= value <= high for value in column]


def _usable_tenants(column: list[Any], placeholder: str) -> list[bool] | None:
    """Per row whether its tenant is neither empty nor the placeholder; None when all are."""
    if "" not in column and placeholder not in column:
        return None
    return [tenant not in ("", placeholder) for tenant in column]


def _versions(
    ops: Sequence[str], lsns: Sequence[int], sequences: Sequence[str | None]
) -> tuple[np.ndarray[Any, np.dtype[np.uint64]], list[bool] | None]:
    """``snapshot_version``/``change_version`` per record and whether the sequence is plain.

    The sequence is read as the per-record path reads Debezium's own form (``_SEQUENCE``), for
    every op as it does; other forms, and a last commit LSN that is not below ``MAX_LSN``, are
    not the fast shape. The LSNs are in ``0..MAX_LSN``, so every version fits ``uint64``.
    """
    count = len(lsns)
    lsn = np.fromiter(lsns, np.uint64, count)
    texts = pa.array(sequences, pa.string())
    parts = pc.extract_regex(texts, _SEQUENCE_TEXT)
    last = pc.struct_field(parts, [0])
    lengths = pc.fill_null(pc.binary_length(last), 0).to_numpy()
    # 20 digits may exceed uint64; they cannot be below MAX_LSN unless padded with zeros.
    has_last = (lengths > 0) & (lengths < 20)
    last_lsn = pc.cast(pc.if_else(pa.array(has_last), last, "0"), pa.uint64()).to_numpy()
    plain = (
        (parts.is_valid().to_numpy(zero_copy_only=False) | texts.is_null().to_numpy(False))
        & (lengths < 20)
        & (last_lsn < MAX_LSN)
    )
    position = np.where(has_last, np.maximum(lsn, last_lsn + 1), lsn)
    snapshot = np.fromiter(map("r".__eq__, ops), np.bool_, count)
    versions = np.where(snapshot, lsn * 2, position * 2 + 1)
    return versions, None if plain.all() else plain.tolist()


def _read_floats(
    raws: list[Any], *, nullable: bool
) -> tuple[list[float | None], list[bool] | None]:
    """A float column's raw literals read as ``_json_float`` reads them, and which rows can be kept.

    A row is dropped where the literal does not read (``_json_float`` raises) or is null in a
    field that is not nullable. The whole column is parsed as one JSON array when its bytes show
    nothing ``_json_float`` treats apart (see ``_ODD_NUMBER``), otherwise literal by literal.
    """
    literals = b",".join(raws)
    joined = b"[" + literals + b"]"
    if not literals.translate(None, _NUMBER_BYTES) and _ODD_NUMBER.search(joined) is None:
        # Every literal is a JSON number or null (msgspec checked that each is valid JSON); an
        # integer literal of at most 308 digits other than -0 reads the same through float().
        numbers: list[float | None] = json.loads(joined, parse_int=float)
        if nullable or None not in numbers:
            return numbers, None
        return numbers, [number is not None for number in numbers]
    numbers = []
    keep: list[bool] = []
    for raw in raws:
        try:
            number = _json_float(raw)
        except (ValueError, OverflowError):
            numbers.append(None)
            keep.append(False)
            continue
        numbers.append(number)
        keep.append(nullable or number is not None)
    return numbers, keep


def _readable_floats(plan: _Plan, images: list[Any]) -> list[bool] | None:
    """Per image (None: absent) whether each raw float literal it holds reads; None: all do."""
    present = [image for image in images if image is not None]
    for _, getter, _ in plan.floats:
        literals = [raw for raw in map(getter, present) if raw is not None]
        if literals and _read_floats(literals, nullable=True)[1] is not None:
            return [
                image is None
                or all(
                    (raw := getter(image)) is None or _readable(raw) for _, getter, _ in plan.floats
                )
                for image in images
            ]
    return None


def _readable(raw: msgspec.Raw) -> bool:
    """Whether ``_json_float`` reads ``raw``."""
    try:
        _json_float(raw)
    except (ValueError, OverflowError):
        return False
    return True


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
    plan: _Plan, gathered: _Gathered, placeholder: str
) -> tuple[ColumnarRows, list[int]] | None:
    """The gathered rows as a replica table, and the positions of the records it holds.

    Rows whose values fail the checks are left out (the per-record path decodes them). None when
    a conversion fails (an impossible calendar date, say): the caller then sends every record to
    the per-record path, which knows the exact error.
    """
    columns: list[Sequence[Any]] = list(gathered.columns)
    positions, keys, versions = gathered.positions, gathered.keys, gathered.versions
    stamps, deleted = gathered.stamps, gathered.deleted
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
        masks.append(pa.array([i not in bad for i in range(len(positions))], pa.bool_()))
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
            positions = [positions[i] for i in kept]
            keys = [keys[i] for i in kept]
            versions = [versions[i] for i in kept]
            stamps = [stamps[i] for i in kept]
            deleted = [deleted[i] for i in kept]
    model = plan.model
    arrays: dict[str, pa.Array] = {model.tenant_column: pa.array(columns[0], pa.string())}
    try:
        for index, field in enumerate(plan.fields, start=1):
            spec = field.spec
            arrays[spec.name] = _column(spec, columns[index], texts.get(spec.name))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    if deleted[-1]:
        # Deletes come last. Their non-key columns: null where nullable, the type's zero value
        # otherwise (replica_rows does the same for the per-record path).
        for field in plan.fields:
            spec = field.spec
            if not field.in_key and not spec.nullable:
                zero = pa.scalar(zero_value(spec), arrow_type(spec))
                arrays[spec.name] = pc.fill_null(arrays[spec.name], zero)
    arrays[VERSION_COLUMN] = pa.array(versions, pa.uint64())
    arrays[DELETED_COLUMN] = pa.array(deleted, pa.uint8())
    return ColumnarRows(model, pa.table(arrays), keys, versions, stamps), positions


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
    if spec.type in _JSON_TYPES or _pattern_refuses(spec, placeholder) or placeholder not in column:
        return []
    return [i for i, v in enumerate(column) if v == placeholder]


@cache
def _pattern_refuses(spec: FieldSpec, placeholder: str) -> bool:
    """Whether the field's text pattern (``_convert`` checks every value) rejects ``placeholder``.

    Then the placeholder cannot pass as a value of that field, and its column needs no scan.
    Checked with the same RE2 pattern the values are.
    """
    pattern = _text_pattern(spec)
    if pattern is None:
        return False
    return not pc.match_substring_regex(pa.array([placeholder], pa.string()), pattern)[0].as_py()


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
