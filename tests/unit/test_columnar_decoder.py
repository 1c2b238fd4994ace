"""The column-wise decoder against the per-record one (cdc_worker/columnar_decoder.py).

Differential: generated lists of Debezium records (the shipped connector's form, plus mutations
that must leave the fast path: tombstones, truncates, placeholders, tenant moves, wrapped values,
other encodings, bad values; and the places where msgspec's JSON differs from the standard
library's, which the per-record path parses with: duplicate keys, integers and exponents in float
fields, ``1e3`` in an int field, nested values where text is expected, missing keys, escapes,
invalid UTF-8, unknown fields with deep nesting, huge integers or exponents) go through both
paths; every record must have the same outcome, a column-wise row must be bit for bit the row
``replica_rows`` makes of the per-record change, and a ``ChangeBatch`` fed either way must write
the same table.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.dataset import generate_base
from bench.ingestion import TOPIC_PREFIX, change_events, decode_cost
from cdc_worker.batch import ChangeBatch, replica_rows
from cdc_worker.columnar_decoder import ColumnarBatch, ColumnarDecoder
from cdc_worker.decoder import DebeziumDecoder
from cdc_worker.events import DecodeError, RowChange, Truncate
from service.catalog import Catalog, FieldType, Model, load_catalog
from service.demo.generator import DEMO_TENANTS
from service.settings import DEFAULT_CATALOG
from tests.unit.test_decoder import (
    FIXTURES,
    PLACEHOLDER,
    encode,
    field_values,
    load,
    row_message,
    schemaless,
)

Record = tuple[bytes | None, bytes | None]


@pytest.fixture(scope="module")
def decoder(catalog: Catalog) -> DebeziumDecoder:
    return DebeziumDecoder(catalog)


@pytest.fixture(scope="module")
def columnar(decoder: DebeziumDecoder) -> ColumnarDecoder:
    return ColumnarDecoder(decoder)


def _text_field(target: Model) -> str | None:
    names = [
        s.name
        for s in target.fields.values()
        if s.type in (FieldType.STRING, FieldType.ENUM) and s.name not in target.primary_key
    ]
    return names[0] if names else None


def _typed_field(target: Model, kind: FieldType) -> str | None:
    names = [s.name for s in target.fields.values() if s.type is kind]
    return names[0] if names else None


def _non_key_field(target: Model, kind: FieldType) -> str | None:
    names = [
        s.name
        for s in target.fields.values()
        if s.type is kind and s.name not in target.primary_key
    ]
    return names[0] if names else None


_MARK = "@@literal@@"


def _spliced(envelope: dict[str, Any], holder: dict[str, Any], key: str, literal: bytes) -> bytes:
    """``envelope`` encoded with ``holder[key]`` written as the raw JSON ``literal``."""
    holder[key] = _MARK
    raw = encode(envelope)
    assert raw is not None
    return raw.replace(f'"{_MARK}"'.encode(), literal, 1)


# Raw JSON for the JSON-semantics mutations: (field kind, literal).
LITERALS: dict[str, tuple[FieldType | None, bytes]] = {
    "float_negative_zero_int": (FieldType.FLOAT, b"-0"),
    "float_big_int": (FieldType.FLOAT, str(2**70 + 1).encode()),
    "float_overflowing_int": (FieldType.FLOAT, b"1" + b"0" * 400),
    "float_exponent": (FieldType.FLOAT, b"1.5E-300"),
    "float_huge_exponent": (FieldType.FLOAT, b"1e-99999999999999999999"),
    "float_nan": (FieldType.FLOAT, b"NaN"),
    "float_text": (FieldType.FLOAT, b'"1.5"'),
    "int_exponent": (FieldType.INT, b"1e3"),
    "int_point_zero": (FieldType.INT, b"1.0"),
    "int_beyond_int64": (FieldType.INT, str(2**63).encode()),
    "int_beyond_digit_limit": (FieldType.INT, b"9" * 5000),
    "text_nested": (FieldType.STRING, b'{"a":[1]}'),
    "text_escapes": (FieldType.STRING, b'"\\u00e9\\/\\ud83d\\ude00\\n"'),
    "text_lone_surrogate": (FieldType.STRING, b'"\\ud800"'),
    "text_invalid_utf8": (FieldType.STRING, b'"\xff"'),
    "text_encoded_surrogate": (FieldType.STRING, b'"\xed\xa0\x80"'),
    "extra_text": (None, b'"note"'),
    "extra_deep": (None, b"[" * 995 + b"]" * 995),
    "extra_big_int": (None, b"9" * 4301),
    "extra_huge_exponent": (None, b"1e99999999999999999999"),
    "extra_invalid_utf8": (None, b'"\xc0\xaf"'),
    "extra_nan": (None, b"NaN"),
}


# Each mutation turns a fast-shaped record into one the columnar path must hand over (or, for
# the harmless ones, keep): the per-record path's outcome is the oracle either way.
MUTATIONS = (
    "none",
    "tombstone",
    "truncate",
    "placeholder",
    "tenant_move",
    "int_tenant",
    "wrapped",
    "decimal_number",
    "decimal_text",
    "timestamp_offset",
    "timestamp_year",
    "timestamp_invalid",
    "date_timestamp",
    "uuid_upper",
    "string_in_int",
    "null_non_nullable",
    "float_as_int",
    "missing_column",
    "odd_sequence",
    "null_sequence",
    "garbage",
    "nan_literal",
    "huge_lsn",
    "other_table",
    "message",
    "duplicate_key",
    "duplicate_op",
    "missing_nullable",
    "extra_source_field",
    "before_huge_exponent",
    "bom",
    "pretty",
    "garbage_sequence",
    "huge_commit_lsn",
    "padded_commit_lsn",
    "unknown_snapshot",
    "empty_tenant",
    "surrogate_tenant",
    "same_tenant_before",
    "float_null",
    "delete_with_after",
    "non_ascii_text",
    "no_source",
    "null_image",
    "source_without_table",
    "null_schema",
    "boolean_snapshot",
    "last_snapshot",
    *LITERALS,
)


def _mutate(target: Model, envelope: dict[str, Any], mutation: str) -> Any:
    image = envelope["after"] if envelope["after"] is not None else envelope["before"]
    source = envelope["source"]
    decimal = _typed_field(target, FieldType.DECIMAL)
    timestamp = _typed_field(target, FieldType.TIMESTAMP)
    date = _typed_field(target, FieldType.DATE)
    integer = next(n for n in target.fields if n not in target.primary_key)
    if mutation in LITERALS:
        kind, literal = LITERALS[mutation]
        if kind is None:
            return _spliced(envelope, image, "notes", literal)
        name = {
            FieldType.STRING: _text_field(target),
            FieldType.INT: _non_key_field(target, FieldType.INT),
        }.get(kind, _typed_field(target, kind))
        return _spliced(envelope, image, name, literal) if name else envelope
    if mutation == "duplicate_key":
        raw = encode(envelope)
        assert raw is not None
        side = b'"after":{' if envelope["after"] is not None else b'"before":{'
        # The first of two keys: both parsers keep the last.
        first = f'"{target.primary_key[0]}":999999,'.encode()
        return raw.replace(side, side + first, 1)
    if mutation == "duplicate_op":
        raw = encode(envelope)
        assert raw is not None
        return b'{"op":"t",' + raw[1:]
    if mutation == "bom":
        raw = encode(envelope)
        assert raw is not None
        return b"\xef\xbb\xbf" + raw
    if mutation == "pretty":
        return json.dumps(envelope, indent=1, ensure_ascii=False).encode()
    if mutation == "tombstone":
        return None
    if mutation == "truncate":
        envelope.update(op="t", before=None, after=None)
    elif mutation == "placeholder" and _text_field(target) and envelope["op"] == "u":
        image[_text_field(target)] = PLACEHOLDER
    elif mutation == "tenant_move" and envelope["op"] == "u":
        envelope["before"] = {**image, target.tenant_column: "elsewhere"}
    elif mutation == "int_tenant":
        image[target.tenant_column] = 42
    elif mutation == "wrapped":
        return {"schema": None, "payload": envelope}
    elif mutation == "decimal_number" and decimal and image.get(decimal) is not None:
        image[decimal] = float(image[decimal])
    elif mutation == "decimal_text" and decimal:
        image[decimal] = "+1.5"
    elif mutation == "timestamp_offset" and timestamp:
        image[timestamp] = "2026-02-01T08:30:00.5+02:00"
    elif mutation == "timestamp_year" and timestamp:
        image[timestamp] = "1800-02-01T08:30:00Z"
    elif mutation == "timestamp_invalid" and timestamp:
        image[timestamp] = "2025-02-29T08:30:00Z"
    elif mutation == "date_timestamp" and date:
        image[date] = "2026-02-01T08:30:00Z"
    elif mutation == "uuid_upper":
        for spec in target.fields.values():
            if spec.type is FieldType.UUID and isinstance(image.get(spec.name), str):
                image[spec.name] = image[spec.name].upper()
    elif mutation == "string_in_int":
        image[target.primary_key[0]] = "12"
    elif mutation == "null_non_nullable":
        image[integer] = None
    elif mutation == "float_as_int":
        for spec in target.fields.values():
            if spec.type is FieldType.FLOAT and image.get(spec.name) is not None:
                image[spec.name] = 3
    elif mutation == "missing_column":
        del image[target.primary_key[0]]
    elif mutation == "odd_sequence":
        source["sequence"] = '[ "1", "2" ]'
    elif mutation == "null_sequence":
        source["sequence"] = None
    elif mutation == "garbage":
        return b"{not json"
    elif mutation == "nan_literal":
        return json.dumps(envelope).replace('"op"', '"x": NaN, "op"', 1).encode()
    elif mutation == "huge_lsn":
        source["lsn"] = 2**63
    elif mutation == "other_table":
        source["table"] = "elsewhere"
    elif mutation == "message":
        envelope["op"] = "m"
    elif mutation == "missing_nullable":
        nullable = [s.name for s in target.fields.values() if s.nullable]
        if nullable:
            del image[nullable[0]]
    elif mutation == "garbage_sequence":
        source["sequence"] = "garbage"
    elif mutation == "huge_commit_lsn":
        source["sequence"] = json.dumps([str(2**63 - 1), "1"], separators=(",", ":"))
    elif mutation == "padded_commit_lsn":
        source["sequence"] = json.dumps(["00000000000000000123", "1"], separators=(",", ":"))
    elif mutation == "unknown_snapshot":
        source["snapshot"] = "sometimes"
    elif mutation == "empty_tenant":
        image[target.tenant_column] = ""
    elif mutation == "surrogate_tenant":
        image[target.tenant_column] = "\ud800"
        return encode(envelope, ascii_only=True)
    elif mutation == "same_tenant_before" and envelope["op"] == "u":
        envelope["before"] = dict(image)
    elif mutation == "float_null":
        for spec in target.fields.values():
            if spec.type is FieldType.FLOAT:
                image[spec.name] = None
    elif mutation == "delete_with_after" and envelope["op"] == "d":
        envelope["after"] = dict(image)
    elif mutation == "non_ascii_text" and _text_field(target):
        image[_text_field(target)] = "Bäckerei \U0001f600 \u00e9"
    elif mutation == "no_source":
        envelope["source"] = None
    elif mutation == "null_image":
        envelope["after" if envelope["op"] != "d" else "before"] = None
    elif mutation == "extra_source_field":
        source["origin"] = {"lsn": 1}
    elif mutation == "source_without_table":
        # The per-record path checks the table only when the source names one.
        del source["table"]
    elif mutation == "null_schema":
        source["schema"] = None
    elif mutation == "boolean_snapshot":
        source["snapshot"] = True
    elif mutation == "last_snapshot":
        source["snapshot"] = "last"
    elif mutation == "before_huge_exponent" and envelope["op"] == "u":
        floats = _typed_field(target, FieldType.FLOAT)
        envelope["before"] = dict(image)
        if floats:
            return _spliced(envelope, envelope["before"], floats, b"0e99999999999999999999")
    return envelope


@st.composite
def record_lists(draw: st.DrawFn, catalog: Catalog) -> tuple[Model, list[Record]]:
    target = draw(st.sampled_from(sorted(catalog.replicated_models(), key=lambda m: m.table)))
    records: list[Record] = []
    lsn = draw(st.integers(0, 10**9))
    for _ in range(draw(st.integers(1, 12))):
        # A few tenants and keys, so that versions of one key meet in a batch.
        row: dict[str, Any] = {target.tenant_column: draw(st.sampled_from(["acme", "globex"]))}
        for spec in target.fields.values():
            if spec.name in target.primary_key:
                row[spec.name] = draw(st.integers(1, 3))
            else:
                row[spec.name] = schemaless(spec, draw(field_values(spec)))
        envelope = row_message(target, row, schemas=False)
        op = draw(st.sampled_from(["c", "u", "u", "r", "d"]))
        lsn += draw(st.integers(-50, 500))
        last = draw(st.none() | st.integers(0, max(lsn + 100, 0)))
        envelope.update(op=op)
        envelope["source"].update(
            lsn=max(lsn, 0),
            sequence=json.dumps(
                [None if last is None else str(last), str(max(lsn, 0))], separators=(",", ":")
            ),
            snapshot=draw(st.sampled_from(["false", "true", "last", False, None])),
        )
        if op == "d":
            envelope.update(before=envelope["after"], after=None)
        # Mostly records of the fast shape, so that lists mix both paths.
        mutation = draw(st.just("none") | st.just("none") | st.sampled_from(MUTATIONS))
        value = _mutate(target, copy.deepcopy(envelope), mutation)
        raw = value if isinstance(value, bytes) else encode(value)
        records.append((b'{"id":1}', raw))
    return target, records


def _replica_rows(model: Model, change: RowChange) -> pa.Table:
    return replica_rows(model, [change])


def _same_table(first: pa.Table, second: pa.Table) -> None:
    assert first.schema.equals(second.schema)
    # A NaN (the per-record parser reads a "NaN" literal) is unequal to itself in equals.
    assert first.equals(second) or "nan" in repr(first.to_pylist())
    # repr tells -0.0 from 0.0 and keeps decimal scales: bit for bit, not just equal.
    assert repr(first.to_pylist()) == repr(second.to_pylist())


def _check_entries(
    decoder: DebeziumDecoder, topic: str, records: list[Record], batch: ColumnarBatch
) -> int:
    fast = 0
    assert len(batch.entries) == len(records)
    for (key, value), entry in zip(records, batch.entries, strict=True):
        try:
            expected: Any = decoder.decode(topic, key, value)
        except DecodeError as error:
            expected = error
        if isinstance(entry, int):
            fast += 1
            assert batch.rows is not None
            assert isinstance(expected, RowChange)
            assert not expected.unavailable
            assert expected.previous_tenant is None
            assert batch.rows.versions[entry] == expected.version
            assert batch.rows.keys[entry] == (expected.tenant, *expected.key)
            assert batch.rows.source_ts_ms[entry] == expected.source_ts_ms
            _same_table(batch.rows.table.slice(entry, 1), _replica_rows(batch.rows.model, expected))
        elif isinstance(entry, DecodeError):
            assert isinstance(expected, DecodeError)
            assert entry.reason == expected.reason
        else:
            assert entry == expected
    if batch.rows is not None:
        assert batch.rows.table.num_rows == fast
    # every_row is the worker's shortcut: set exactly when every record is a row.
    assert (batch.every_row is not None) == (fast == len(records))
    assert batch.every_row is None or batch.every_row == batch.entries
    return fast


def _batch_per_record(decoder: DebeziumDecoder, topic: str, records: list[Record]) -> ChangeBatch:
    batch = ChangeBatch()
    for key, value in records:
        try:
            decoded = decoder.decode(topic, key, value)
        except DecodeError:
            continue
        if isinstance(decoded, RowChange):
            batch.add(decoded)
        elif isinstance(decoded, Truncate):
            batch.truncate(decoded)
    return batch


def _batch_columnar(columnar: ColumnarDecoder, topic: str, records: list[Record]) -> ChangeBatch:
    """As the worker does it: runs of column-wise rows at once, in order with the rest."""
    batch = ChangeBatch()
    decoded = columnar.decode(topic, records)
    if decoded.rows is not None and decoded.every_row is not None:
        batch.add_columnar(decoded.rows, decoded.every_row)
        return batch
    run: list[int] = []
    for entry in decoded.entries:
        if isinstance(entry, int):
            run.append(entry)
            continue
        if run:
            assert decoded.rows is not None
            batch.add_columnar(decoded.rows, run)
            run = []
        if isinstance(entry, RowChange):
            batch.add(entry)
        elif isinstance(entry, Truncate):
            batch.truncate(entry)
    if run:
        assert decoded.rows is not None
        batch.add_columnar(decoded.rows, run)
    return batch


def _still_unavailable(changes: list[RowChange]) -> list[tuple[Any, ...]]:
    return sorted((c.tenant, c.key, sorted(c.unavailable)) for c in changes if c.unavailable)


def _written(batch: ChangeBatch) -> dict[str, pa.Table]:
    tables = {}
    for name, pending in batch.tables.items():
        table = pending.replica_table(pending.row_changes())
        keys = [pending.model.tenant_column, *pending.model.primary_key]
        tables[name] = table.sort_by([(k, "ascending") for k in keys])
    return tables


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_columnar_path_matches_the_per_record_path(
    decoder: DebeziumDecoder, columnar: ColumnarDecoder, catalog: Catalog, data: st.DataObject
) -> None:
    target, records = data.draw(record_lists(catalog))
    topic = decoder.topic_for(target)
    _check_entries(decoder, topic, records, columnar.decode(topic, records))
    first = _batch_per_record(decoder, topic, records)
    second = _batch_columnar(columnar, topic, records)
    assert first.events == second.events
    assert first.truncates == second.truncates
    # Every row either way fits Arrow (text with a lone surrogate is a dead letter on both paths).
    written_first = _written(first)
    written_second = _written(second)
    assert written_first.keys() == written_second.keys()
    for name, table in written_first.items():
        _same_table(table, written_second[name])
        pending_first, pending_second = first.tables[name], second.tables[name]
        assert pending_first.events == pending_second.events
        assert pending_first.max_source_ts_ms == pending_second.max_source_ts_ms
        # Columns still unavailable after the batch's own filling are read from the replica.
        assert _still_unavailable(pending_first.row_changes()) == _still_unavailable(
            pending_second.row_changes()
        )


def test_the_shipped_form_takes_the_columnar_path(
    decoder: DebeziumDecoder, columnar: ColumnarDecoder
) -> None:
    message = load("deals_create")
    records: list[Record] = [(encode(message["key"]), encode(message["value"]))]
    deleted = copy.deepcopy(message["value"])
    deleted.update(op="d", before=deleted["after"], after=None)
    records.append((encode(message["key"]), encode(deleted)))
    batch = columnar.decode(message["topic"], records)
    assert batch.entries == [0, 1]
    assert _check_entries(decoder, message["topic"], records, batch) == 2


def test_a_toast_update_fills_from_a_columnar_row(
    decoder: DebeziumDecoder, columnar: ColumnarDecoder
) -> None:
    message = load("deals_create")
    update = copy.deepcopy(message["value"])
    update["op"] = "u"
    update["source"]["lsn"] += 10
    update["after"]["title"] = PLACEHOLDER
    records: list[Record] = [
        (encode(message["key"]), encode(message["value"])),
        (encode(message["key"]), encode(update)),
    ]
    topic = message["topic"]
    batch = columnar.decode(topic, records)
    assert batch.entries[0] == 0
    assert isinstance(batch.entries[1], RowChange)
    filled = _written(_batch_columnar(columnar, topic, records))["crm_deals"]
    assert filled.column("title").to_pylist() == [message["value"]["after"]["title"]]
    _same_table(filled, _written(_batch_per_record(decoder, topic, records))["crm_deals"])


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_has_the_per_record_outcome(
    decoder: DebeziumDecoder, columnar: ColumnarDecoder, name: str
) -> None:
    message = load(name)
    records: list[Record] = [(encode(message["key"]), encode(message["value"]))] * 2
    _check_entries(decoder, message["topic"], records, columnar.decode(message["topic"], records))


# Mutations after which a deals record still has the fast shape (same row as the per-record path).
STILL_FAST = {
    "none",
    "float_negative_zero_int",
    "float_big_int",
    "float_exponent",
    "text_escapes",
    "extra_text",
    "extra_source_field",
    "duplicate_key",
    "duplicate_op",
    "pretty",
    "same_tenant_before",
    "non_ascii_text",
    "boolean_snapshot",
    "last_snapshot",
}

# Mutations that take a deals update off the fast path (the others may not apply to deals).
MUST_LEAVE = (
    set(LITERALS)
    | {"bom", "missing_nullable", "before_huge_exponent", "tombstone", "truncate", "wrapped"}
    | {"placeholder", "tenant_move", "garbage", "huge_lsn", "other_table", "message"}
    | {"garbage_sequence", "huge_commit_lsn", "unknown_snapshot", "empty_tenant", "float_null"}
    | {"surrogate_tenant", "source_without_table", "null_schema"}
) - STILL_FAST


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_mutation_of_an_update_has_the_per_record_outcome(
    decoder: DebeziumDecoder, columnar: ColumnarDecoder, catalog: Catalog, mutation: str
) -> None:
    message = load("deals_create")
    target = catalog.get("crm", "deals")
    assert target is not None
    envelope = copy.deepcopy(message["value"])
    envelope["op"] = "u"
    value = _mutate(target, envelope, mutation)
    raw = value if isinstance(value, bytes) or value is None else encode(value)
    records: list[Record] = [(encode(message["key"]), raw)]
    fast = _check_entries(
        decoder, message["topic"], records, columnar.decode(message["topic"], records)
    )
    if mutation in STILL_FAST:
        assert fast == 1
    if mutation in MUST_LEAVE:
        assert fast == 0


def _mutated(catalog: Catalog, op: str, mutation: str) -> Record:
    """A deals record of ``op`` (the shipped connector's form) after ``mutation``."""
    message = load("deals_create")
    target = catalog.get("crm", "deals")
    assert target is not None
    envelope = copy.deepcopy(message["value"])
    envelope["op"] = op
    if op == "d":
        envelope.update(before=envelope["after"], after=None)
    value = _mutate(target, envelope, mutation)
    raw = value if isinstance(value, bytes) or value is None else encode(value)
    return encode(message["key"]), raw


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_mutation_of_a_delete_has_the_per_record_outcome(
    decoder: DebeziumDecoder, columnar: ColumnarDecoder, catalog: Catalog, mutation: str
) -> None:
    records = [_mutated(catalog, "d", mutation)]
    topic = decoder.topic_for(catalog.models[("crm", "deals")])
    _check_entries(decoder, topic, records, columnar.decode(topic, records))


def test_every_mutation_in_one_list(
    decoder: DebeziumDecoder, columnar: ColumnarDecoder, catalog: Catalog
) -> None:
    # One list mixing every op and mutation: several column-wise checks fail in the same list.
    # (An impossible calendar date fails a whole list's cast, sending all of it record by record.)
    records = [
        _mutated(catalog, op, mutation)
        for mutation in MUTATIONS
        if mutation != "timestamp_invalid"
        for op in ("c", "u", "r", "d", "c")
    ]
    topic = decoder.topic_for(catalog.models[("crm", "deals")])
    batch = columnar.decode(topic, records)
    assert _check_entries(decoder, topic, records, batch) > len(records) // 4
    first = _written(_batch_per_record(decoder, topic, records))
    second = _written(_batch_columnar(columnar, topic, records))
    assert first.keys() == second.keys()
    for name, table in first.items():
        _same_table(table, second[name])


def test_a_placeholder_that_reads_as_a_timestamp_is_still_unchanged_toast(catalog: Catalog) -> None:
    # Text fields whose pattern refuses the placeholder are not scanned for it; one that the
    # pattern accepts must be, or an unchanged TOAST value would be written as a timestamp.
    placeholder = "2025-01-01T00:00:00Z"
    decoder = DebeziumDecoder(catalog, unavailable_value_placeholder=placeholder)
    columnar = ColumnarDecoder(decoder)
    message = load("deals_create")
    target = catalog.get("crm", "deals")
    assert target is not None
    envelope = copy.deepcopy(message["value"])
    envelope["op"] = "u"
    timestamp = _non_key_field(target, FieldType.TIMESTAMP)
    assert timestamp is not None
    envelope["after"][timestamp] = placeholder
    records: list[Record] = [(encode(message["key"]), encode(envelope))]
    assert (
        _check_entries(
            decoder, message["topic"], records, columnar.decode(message["topic"], records)
        )
        == 0
    )


def test_the_ingestion_bench_measures_the_column_wise_path() -> None:
    # bench/ingestion.py's events must all take the column-wise path, or its decode row and
    # rates would measure the per-record one (decode_cost raises if a list leaves it).
    shipped = load_catalog(DEFAULT_CATALOG)
    deals = shipped.get("crm", "deals")
    assert deals is not None
    rows = generate_base(300, tenants=DEMO_TENANTS)
    events = list(change_events(rows))
    figure = decode_cost(shipped, f"{TOPIC_PREFIX}.{deals.source}", events, rounds=1)
    assert figure.ratio is not None
    assert figure.ratio > 1
