"""Decode Debezium PostgreSQL change events (Kafka JSON converter) into typed row changes.

``DebeziumDecoder`` is pure: it reads one record (topic, key, value bytes) and returns one
``cdc_worker.events`` value or raises ``DecodeError``; no I/O, no state between records, and no
other exception for any input.

Both JSON forms are read:

* without schemas (the shipped ``deploy/debezium/connector.json``: ``decimal.handling.mode=string``,
  ``time.precision.mode=isostring``): NUMERIC as exact text, DATE/TIMESTAMP as ISO-8601 text in UTC
  (``"2000-02-29Z"``, ``"2026-03-04T05:06:07.5Z"``), TIMESTAMPTZ as ISO text with an offset;
* ``{"schema": ..., "payload": ...}`` (``schemas.enable=true``) with any decimal mode (``precise``:
  base64 two's-complement unscaled bytes with the scale in the schema; ``string``; ``double``) and
  any time mode (``adaptive``: ``io.debezium.time.Date`` days, ``Timestamp`` ms,
  ``MicroTimestamp`` µs, ``ZonedTimestamp`` text). The field schema's semantic ``name`` picks the
  decoding: the same JSON number is milliseconds for one column and microseconds for another.

Versions (``RowChange.version``): see ``change_version`` and ``snapshot_version``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any, Final

from cdc_worker.events import (
    DecodedMessage,
    DecodeError,
    Heartbeat,
    Ignored,
    RowChange,
    RowOp,
    Tombstone,
    Truncate,
)
from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.schema import zero_value

DEFAULT_TOPIC_PREFIX: Final = "analytics"
HEARTBEAT_TOPIC_PREFIX: Final = "__debezium-heartbeat"
UNAVAILABLE_VALUE_PLACEHOLDER: Final = "__debezium_unavailable_value"
"""Debezium's default ``unavailable.value.placeholder`` (unchanged TOASTed values)."""

MIN_TIMESTAMP: Final = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
MAX_TIMESTAMP: Final = dt.datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
MIN_DATE: Final = dt.date(1900, 1, 1)
MAX_DATE: Final = dt.date(2299, 12, 31)
"""The range of ClickHouse ``DateTime64`` and ``Date32`` (and of the service's filters)."""

MAX_LSN: Final = 2**63 - 1
"""Largest LSN whose version still fits the replica's ``_version UInt64``."""

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DATE: Final = dt.date(1970, 1, 1)
# Timestamps in UTC wall time parse naive and count from the naive epoch.
_NAIVE_EPOCH: Final = dt.datetime(1970, 1, 1)
_MICROS_PER_DAY: Final = 86_400_000_000
_MIN_MICROS: Final = (MIN_TIMESTAMP - _EPOCH) // dt.timedelta(microseconds=1)
_MAX_MICROS: Final = (MAX_TIMESTAMP - _EPOCH) // dt.timedelta(microseconds=1)
_MIN_DAYS: Final = (MIN_DATE - _EPOCH_DATE).days
_MAX_DAYS: Final = (MAX_DATE - _EPOCH_DATE).days

# PostgreSQL DATE 'infinity' / '-infinity': Debezium's PostgresValueConverter maps them to the
# LocalDates -5877611-06-21 (+infinity, sic: a year BC, a known Debezium quirk, debezium/dbz#2524)
# and -5877611-06-22 (-infinity), i.e. these epoch days (io.debezium.time.Date) or those ISO
# dates (IsoDate). Range clamping alone would send +infinity to 1900, hence the explicit mapping.
_DATE_POSITIVE_INFINITY_DAYS: Final = -2_147_472_692
_DATE_NEGATIVE_INFINITY_DAYS: Final = -2_147_472_691

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

# Kafka Connect / Debezium semantic type names (the "name" of a field schema).
_DECIMAL: Final = "org.apache.kafka.connect.data.Decimal"
_VARIABLE_SCALE_DECIMAL: Final = "io.debezium.data.VariableScaleDecimal"
_DATE_DAYS: Final = frozenset({"io.debezium.time.Date", "org.apache.kafka.connect.data.Date"})
_TS_MILLIS: Final = frozenset(
    {"io.debezium.time.Timestamp", "org.apache.kafka.connect.data.Timestamp"}
)
_TS_MICROS: Final = "io.debezium.time.MicroTimestamp"
_TS_NANOS: Final = "io.debezium.time.NanoTimestamp"
_TIME_OF_DAY: Final = frozenset(
    {
        "io.debezium.time.Time",
        "io.debezium.time.MicroTime",
        "io.debezium.time.NanoTime",
        "io.debezium.time.ZonedTime",
        "io.debezium.time.IsoTime",
        "org.apache.kafka.connect.data.Time",
    }
)
_PLACEHOLDER_PARAMETER: Final = "__debezium.unavailable.value.placeholder"

_SNAPSHOT_FLAGS: Final = frozenset(
    {
        "true",
        "false",
        "first",
        "first_in_data_collection",
        "last_in_data_collection",
        "last",
        "incremental",
    }
)
_OPS: Final = frozenset({"c", "u", "d", "r", "t", "m"})
_UPSERT_OPS: Final[Mapping[str, RowOp]] = {"c": "c", "u": "u", "r": "r"}

_DECIMAL_TEXT: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,4})?", re.ASCII)
_SPECIAL_FLOATS: Final = {
    "NaN": math.nan,
    "NAN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
}
_ISO: Final = re.compile(
    r"(?P<year>[+-]?\d{4,10})-(?P<month>\d{2})-(?P<day>\d{2})"
    r"(?:[Tt ](?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?)?"
    r"(?P<offset>[Zz]|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)?",
    re.ASCII,
)
_SEQUENCE: Final = re.compile(r'\[(?:null|"(\d{1,20})"),(?:null|"\d{1,20}")\]', re.ASCII)
# Decimal keeps JSON numbers exact (decimal.format=NUMERIC, double decimals); floats are made
# from them only for float fields. One decoder for every record.
_JSON: Final = json.JSONDecoder(parse_float=Decimal)
# Exact decimal arithmetic far beyond decimal128's 38 digits; magnitudes are bounded before use.
_DECIMAL_CONTEXT: Final = Context(prec=100, Emax=10_000, Emin=-10_000)
_IDENTITY_HINT: Final = (
    "a delete's `before` holds only the replica identity: give the source table "
    "REPLICA IDENTITY FULL (or a replica identity index that includes the tenant column)"
)


def snapshot_version(lsn: int) -> int:
    """The version of a row read by a snapshot whose ``source.lsn`` is ``lsn``: ``2 * lsn``.

    Debezium's snapshot rows all carry the snapshot's position as ``source.lsn``: the new slot's
    consistent point (``CREATE_REPLICATION_SLOT``), or the slot's flushed position or
    ``pg_current_wal_lsn()`` when the slot already existed; streaming resumes from that very
    position. An even version puts a snapshot row just below any streamed change at the same
    position (which gets ``2 * position + 1``), so a change that follows a snapshot wins even when
    its LSN equals the snapshot's, while the snapshot row still beats every change committed
    before it (those sit below the snapshot position). ``version // 2`` is the WAL position.
    """
    _check_lsn(lsn, "lsn")
    return 2 * lsn


def change_version(lsn: int, last_commit_lsn: int | None = None) -> int:
    """The version of a streamed change (or truncate): ``2 * max(lsn, last_commit_lsn + 1) + 1``.

    ``lsn`` is ``source.lsn``, the WAL position of the change record itself, and
    ``last_commit_lsn`` the first element of ``source.sequence``: the end LSN of the previous
    transaction the connector streamed (``null`` for the first one after a snapshot or a start
    without offsets). Change LSNs alone are not a sound order: pgoutput streams transactions in
    commit order, so a long transaction's early changes carry LSNs lower than those of
    transactions that committed before it (Debezium's ``WalPositionLocator`` notes that LSNs are
    ordered only within a transaction and across commits). The rule stays monotonic per row:

    * two transactions touching one row are serialized by its row lock, so the later one's change
      record starts at or after the earlier one's commit record ends (``E1``); the earlier
      change's version is below ``2 * E1`` (its LSN and the preceding commit's end are both
      before its own commit record), the later one's at least ``2 * E1 + 1``;
    * within a transaction a row's changes have increasing LSNs; raising them to
      ``last_commit_lsn + 1`` can make two of them equal, and then the later one (later in the
      topic, so inserted later) wins the tie in ``ReplacingMergeTree``.

    Raising to ``last_commit_lsn + 1`` also lifts a long transaction's early changes above a
    snapshot taken before it committed, once one transaction has been streamed after the
    snapshot. Not covered (no field of the event can tell): the very first transaction streamed
    after a snapshot (``last_commit_lsn`` null) when it was already running at the snapshot's
    position and touched a row the snapshot read; the worker can raise such changes
    (``RowChange.last_commit_lsn is None`` and not ``snapshot``) above the highest snapshot
    version it wrote for the table.
    """
    _check_lsn(lsn, "lsn")
    position = lsn
    if last_commit_lsn is not None:
        _check_lsn(last_commit_lsn + 1, "last_commit_lsn + 1")
        position = max(lsn, last_commit_lsn + 1)
    return 2 * position + 1


def _check_lsn(value: int, what: str) -> None:
    if not 0 <= value <= MAX_LSN:
        raise ValueError(f"{what} {value} is outside 0..2**63-1")


@dataclass(frozen=True, slots=True)
class _FieldSchema:
    """The parts of a Kafka Connect field schema that decide how a value decodes."""

    type: str | None
    name: str | None
    parameters: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Position:
    """Where a change sits in the source's history."""

    version: int
    source_ts_ms: int
    lsn: int
    last_commit_lsn: int | None


_Converter = Callable[[FieldSpec, Any, _FieldSchema | None, str], Any]


class DebeziumDecoder:
    """Turns the records of the replication topics into ``cdc_worker.events`` values.

    Args:
        catalog: the models to replicate; a table's topic is ``<topic_prefix>.<model.source>``.
        topic_prefix: the connector's ``topic.prefix``.
        heartbeat_topic: the heartbeat topic; ``__debezium-heartbeat.<topic_prefix>`` (the
            connector's ``topic.heartbeat.prefix`` and ``topic.prefix``) when not given.
        unavailable_value_placeholder: the connector's ``unavailable.value.placeholder``.
    """

    def __init__(
        self,
        catalog: Catalog,
        topic_prefix: str = DEFAULT_TOPIC_PREFIX,
        heartbeat_topic: str | None = None,
        *,
        unavailable_value_placeholder: str = UNAVAILABLE_VALUE_PLACEHOLDER,
    ) -> None:
        self._prefix = topic_prefix
        self._heartbeat_topic = heartbeat_topic or f"{HEARTBEAT_TOPIC_PREFIX}.{topic_prefix}"
        self._models = {f"{topic_prefix}.{m.source}": m for m in catalog.replicated_models()}
        # Per topic, each field with its message path and converter, resolved once: the
        # per-event loop then does no enum hashing or string formatting (bench/README.md).
        self._plans = {
            topic: tuple(
                (spec, f"after.{spec.name}", _CONVERTERS[spec.type])
                for spec in model.fields.values()
            )
            for topic, model in self._models.items()
        }
        self._placeholder = unavailable_value_placeholder
        # With binary.handling.mode=base64 (and in the schema form, where BYTES travel as base64)
        # a bytes column's placeholder is the placeholder's bytes in base64.
        self._placeholder_base64 = base64.b64encode(
            unavailable_value_placeholder.encode("utf-8")
        ).decode("ascii")

    @property
    def heartbeat_topic(self) -> str:
        """The topic whose records are heartbeats."""
        return self._heartbeat_topic

    @property
    def unavailable_value_placeholder(self) -> str:
        """The connector's ``unavailable.value.placeholder`` this decoder recognises."""
        return self._placeholder

    @property
    def table_topics(self) -> Mapping[str, Model]:
        """Every change-event topic of the catalog, with its model."""
        return dict(self._models)

    def topic_for(self, model: Model) -> str:
        """The change-event topic of ``model``."""
        return f"{self._prefix}.{model.source}"

    def decode(self, topic: str, key: bytes | None, value: bytes | None) -> DecodedMessage:
        """Decode one Kafka record.

        ``key`` is not needed: ``before``/``after`` hold the key columns, and a truncate has no
        key. Raises ``DecodeError`` (and nothing else, whatever the bytes) when the record is
        malformed or does not fit the catalog.
        """
        try:
            return self._decode(topic, value)
        except DecodeError:
            raise
        except RecursionError as exc:
            raise DecodeError("value: JSON nests too deeply") from exc
        except Exception as exc:
            # The contract is DecodeError for any input; an unforeseen failure is reported as
            # one (and sent to the dead-letter topic) rather than stopping the worker. The unit
            # tests assert that random input never reaches this line.
            raise DecodeError(
                f"internal decoder error ({type(exc).__name__}): {_show(str(exc))}"
            ) from exc

    def _decode(self, topic: str, value: bytes | None) -> DecodedMessage:
        if topic == self._heartbeat_topic:
            return _heartbeat(topic, value)
        model = self._models.get(topic)
        if model is None:
            return Ignored(topic, self._ignore_reason(topic))
        if value is None:
            return Tombstone(model)
        payload, schema = _unwrap(_parse_json(value))
        if payload is None:
            return Tombstone(model)
        if not isinstance(payload, dict):
            raise DecodeError(f"value: expected a Debezium envelope object, got {_kind(payload)}")
        op = payload.get("op")
        if op is None:
            raise DecodeError("value: the envelope has no `op` (not a Debezium change event)")
        if not isinstance(op, str) or op not in _OPS:
            raise DecodeError(f"op: unknown operation {_show(op)} (expected c, u, d, r, t or m)")
        if op == "m":
            return Ignored(topic, "logical decoding message (op m): not replicated")
        source = payload.get("source")
        if not isinstance(source, dict):
            raise DecodeError(f"source: expected an object, got {_kind(source)}")
        _check_source_table(source, model, topic)
        lsn = _lsn(source)
        last_commit_lsn = _last_commit_lsn(source)
        source_ts_ms = _integer(source.get("ts_ms"), "source.ts_ms")
        _check_snapshot_flag(source.get("snapshot"))
        if op == "t":
            return Truncate(model, source_ts_ms, change_version(lsn, last_commit_lsn), lsn)
        # op 'r' is emitted exactly for snapshot reads (initial, blocking and incremental
        # snapshots); source.snapshot is only validated, as the documentation's own examples
        # show it true on a create.
        version = snapshot_version(lsn) if op == "r" else change_version(lsn, last_commit_lsn)
        position = _Position(version, source_ts_ms, lsn, last_commit_lsn)
        if op == "d":
            return self._delete(model, payload, schema, position)
        return self._upsert(
            model, _UPSERT_OPS[op], payload, schema, position, plan=self._plans[topic]
        )

    def _ignore_reason(self, topic: str) -> str:
        if topic.startswith(f"{self._prefix}."):
            rest = topic[len(self._prefix) + 1 :]
            if rest == "message":
                return f"logical decoding messages (topic {topic}) are not replicated"
            if rest == "transaction":
                return f"transaction metadata (topic {topic}) is not used"
            return f"table {_show(rest)} is not in the catalog"
        return f"topic {_show(topic)} is not a change-event topic of prefix {self._prefix!r}"

    def _upsert(
        self,
        model: Model,
        op: RowOp,
        payload: Mapping[str, Any],
        schema: Mapping[str, Any] | None,
        position: _Position,
        *,
        plan: tuple[tuple[FieldSpec, str, _Converter], ...],
    ) -> RowChange:
        after = payload.get("after")
        if not isinstance(after, dict):
            raise DecodeError(f"after: op {op} needs the row in `after`, got {_kind(after)}")
        schemas = _column_schemas(schema, "after")
        tenant = self._tenant(after, model, "after", "")
        row: dict[str, Any] = {model.tenant_column: tenant}
        unavailable: set[str] = set()
        for spec, where, converter in plan:
            name = spec.name
            if name not in after:
                raise DecodeError(
                    f"{where}: column missing from the event (the source table or the "
                    "connector's column filters do not match the catalog)"
                )
            raw = after[name]
            field_schema = schemas.get(name) if schemas is not None else None
            # Only an update can carry the placeholder: inserts and snapshot reads always
            # have every value (Debezium docs, "Toasted values").
            if op == "u" and self._is_placeholder(raw, field_schema):
                if name in model.primary_key:
                    raise DecodeError(f"{where}: unchanged-TOAST placeholder in a key column")
                unavailable.add(name)
                row[name] = None
                continue
            if raw is None:
                if not spec.nullable:
                    raise DecodeError(f"{where}: null in the non-nullable {spec.type.value} field")
                row[name] = None
                continue
            row[name] = converter(spec, raw, field_schema, where)
        previous_tenant = None
        before = payload.get("before")
        if op == "u" and isinstance(before, dict):
            # With REPLICA IDENTITY FULL, `before` shows whether the update moved the row to
            # another tenant; an empty or null tenant there is the identity's fallback, not data.
            old = before.get(model.tenant_column)
            if isinstance(old, str | int) and not isinstance(old, bool) and old != "":
                old_tenant = _text(str(old), f"before.{model.tenant_column}")
                if old_tenant != tenant and old != self._placeholder:
                    previous_tenant = old_tenant
        return RowChange(
            model=model,
            op=op,
            tenant=tenant,
            key=tuple(row[column] for column in model.primary_key),
            row=row,
            unavailable=frozenset(unavailable),
            version=position.version,
            is_deleted=False,
            source_ts_ms=position.source_ts_ms,
            snapshot=op == "r",
            lsn=position.lsn,
            last_commit_lsn=position.last_commit_lsn,
            previous_tenant=previous_tenant,
        )

    def _delete(
        self,
        model: Model,
        payload: Mapping[str, Any],
        schema: Mapping[str, Any] | None,
        position: _Position,
    ) -> RowChange:
        before = payload.get("before")
        if not isinstance(before, dict):
            raise DecodeError(
                f"before: a delete needs the deleted row's key in `before`, got {_kind(before)} "
                "(REPLICA IDENTITY NOTHING?)"
            )
        schemas = _column_schemas(schema, "before")
        tenant = self._tenant(before, model, "before", f": {_IDENTITY_HINT}")
        row: dict[str, Any] = {model.tenant_column: tenant}
        for spec in model.fields.values():
            if spec.name in model.primary_key:
                where = f"before.{spec.name}"
                if spec.name not in before:
                    raise DecodeError(f"{where}: primary key column missing from the delete")
                field_schema = schemas.get(spec.name) if schemas is not None else None
                row[spec.name] = _convert(spec, before[spec.name], field_schema, where)
            else:
                # Other columns are the identity's fallbacks under REPLICA IDENTITY DEFAULT and
                # are never read under FINAL (the deleted row hides the key): decoding them could
                # only turn a delete into a dead letter.
                row[spec.name] = None if spec.nullable else zero_value(spec)
        return RowChange(
            model=model,
            op="d",
            tenant=tenant,
            key=tuple(row[column] for column in model.primary_key),
            row=row,
            unavailable=frozenset(),
            version=position.version,
            is_deleted=True,
            source_ts_ms=position.source_ts_ms,
            snapshot=False,
            lsn=position.lsn,
            last_commit_lsn=position.last_commit_lsn,
        )

    def _tenant(self, image: Mapping[str, Any], model: Model, side: str, hint: str) -> str:
        where = f"{side}.{model.tenant_column}"
        if model.tenant_column not in image:
            raise DecodeError(f"{where}: tenant column missing from the event{hint}")
        raw = image[model.tenant_column]
        if raw is None or raw == "":
            # Under REPLICA IDENTITY DEFAULT Debezium fills a NOT NULL column outside the
            # identity with its type's fallback (the empty string), a nullable one with null.
            state = "null" if raw is None else "empty"
            raise DecodeError(f"{where}: the tenant is {state}{hint}")
        if raw == self._placeholder:
            raise DecodeError(f"{where}: unchanged-TOAST placeholder instead of the tenant")
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise DecodeError(f"{where}: expected the tenant as a string, got {_kind(raw)}")
        return _text(str(raw), where)

    def _is_placeholder(self, raw: Any, schema: _FieldSchema | None) -> bool:
        if isinstance(raw, str):
            if raw == self._placeholder:
                return True
            if schema is not None:
                # Recent Debezium versions declare the exact placeholder in the field schema.
                declared = schema.parameters.get(_PLACEHOLDER_PARAMETER)
                if declared is not None and raw == declared:
                    return True
                return schema.type == "bytes" and raw == self._placeholder_base64
            return False
        # Arrays are replaced by a one-element list holding the placeholder.
        return isinstance(raw, list) and len(raw) == 1 and raw[0] == self._placeholder


def _heartbeat(topic: str, value: bytes | None) -> DecodedMessage:
    if value is None:
        return Ignored(topic, "null value on the heartbeat topic")
    payload, _ = _unwrap(_parse_json(value))
    if not isinstance(payload, dict):
        raise DecodeError(f"value: expected a heartbeat object, got {_kind(payload)}")
    return Heartbeat(_integer(payload.get("ts_ms"), "heartbeat ts_ms"))


def _parse_json(value: object) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        data: bytes | str = bytes(value)
    elif isinstance(value, str):
        data = value
    else:
        raise DecodeError(f"value: expected bytes, got {type(value).__name__}")
    if not data:
        raise DecodeError("value: empty (a tombstone has a null value, not an empty one)")
    try:
        if isinstance(data, bytes):
            # What json.loads does with bytes, without building a decoder for every record.
            data = data.decode(json.detect_encoding(data), "surrogatepass")
        elif data.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
        return _JSON.decode(data)
    except RecursionError as exc:
        raise DecodeError("value: JSON nests too deeply") from exc
    except (ValueError, ArithmeticError) as exc:
        # JSONDecodeError, UnicodeDecodeError, integers beyond str()'s digit limit, and
        # decimal.InvalidOperation for exponents beyond Decimal's range.
        raise DecodeError(f"value: not valid JSON ({_show(str(exc))})") from exc


def _unwrap(document: Any) -> tuple[Any, Mapping[str, Any] | None]:
    """Split the ``{"schema", "payload"}`` wrapper of ``schemas.enable=true`` off a value."""
    if isinstance(document, dict) and document.keys() == {"schema", "payload"}:
        schema = document["schema"]
        if schema is not None and not isinstance(schema, dict):
            raise DecodeError(f"value.schema: expected an object, got {_kind(schema)}")
        return document["payload"], schema
    return document, None


def _column_schemas(
    envelope: Mapping[str, Any] | None, image: str
) -> dict[str, _FieldSchema] | None:
    """The field schemas of the envelope's ``before`` or ``after`` struct, by column."""
    if envelope is None:
        return None
    fields = envelope.get("fields")
    if not isinstance(fields, list):
        raise DecodeError("value.schema.fields: expected a list (not an envelope schema)")
    for entry in fields:
        if isinstance(entry, dict) and entry.get("field") == image:
            columns = entry.get("fields")
            if not isinstance(columns, list):
                raise DecodeError(f"value.schema.{image}: expected a struct schema with fields")
            result: dict[str, _FieldSchema] = {}
            for column in columns:
                if not isinstance(column, dict) or not isinstance(column.get("field"), str):
                    raise DecodeError(f"value.schema.{image}: a field schema has no name")
                result[column["field"]] = _field_schema(column, f"value.schema.{image}")
            return result
    return None


def _field_schema(column: Mapping[str, Any], where: str) -> _FieldSchema:
    where = f"{where}.{column['field']}"
    kind = column.get("type")
    name = column.get("name")
    parameters = column.get("parameters", {})
    if kind is not None and not isinstance(kind, str):
        raise DecodeError(f"{where}: schema type is not a string")
    if name is not None and not isinstance(name, str):
        raise DecodeError(f"{where}: schema name is not a string")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parameters.items()
    ):
        raise DecodeError(f"{where}: schema parameters must map strings to strings")
    return _FieldSchema(kind, name, parameters)


def _check_source_table(source: Mapping[str, Any], model: Model, topic: str) -> None:
    schema, table = source.get("schema"), source.get("table")
    named = isinstance(schema, str) and isinstance(table, str) and schema and table
    if named and f"{schema}.{table}" != model.source:
        raise DecodeError(
            f"source: an event of table {_show(f'{schema}.{table}')} on topic {topic} "
            f"(which carries {model.source})"
        )


def _integer(raw: Any, where: str) -> int:
    if raw is None:
        raise DecodeError(f"{where}: missing")
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise DecodeError(f"{where}: expected an integer, got {_kind(raw)}")
    if not _INT64_MIN <= raw <= _INT64_MAX:
        raise DecodeError(f"{where}: {_show(raw)} is outside the int64 range")
    return raw


def _lsn(source: Mapping[str, Any]) -> int:
    raw = source.get("lsn")
    if raw is None:
        raise DecodeError("source.lsn: missing, so the change cannot be versioned")
    lsn = _integer(raw, "source.lsn")
    if lsn < 0:
        raise DecodeError(f"source.lsn: {lsn} is negative")
    return lsn


def _last_commit_lsn(source: Mapping[str, Any]) -> int | None:
    """The first element of ``source.sequence``, a JSON array in a string: ``["123","456"]``."""
    raw = source.get("sequence")
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > 100:
        raise DecodeError(f"source.sequence: expected a short JSON array text, got {_kind(raw)}")
    # The form Debezium writes, read without a JSON parser; anything else takes the full path.
    plain = _SEQUENCE.fullmatch(raw)
    if plain is not None:
        return _commit_lsn(plain.group(1)) if plain.group(1) is not None else None
    try:
        sequence = json.loads(raw)
    except ValueError as exc:
        raise DecodeError(f"source.sequence: not valid JSON ({_show(raw)})") from exc
    if not isinstance(sequence, list) or len(sequence) != 2:
        raise DecodeError(f"source.sequence: expected [last commit LSN, LSN], got {_show(raw)}")
    first = sequence[0]
    if first is None:
        return None
    if not isinstance(first, str) or not first.isascii() or not first.isdigit():
        raise DecodeError(f"source.sequence: {_show(first)} is not an LSN")
    return _commit_lsn(first)


def _commit_lsn(digits: str) -> int:
    value = int(digits)
    if value >= MAX_LSN:
        raise DecodeError(f"source.sequence: LSN {value} is out of range")
    return value


def _check_snapshot_flag(raw: Any) -> None:
    # Older connectors send a boolean, current ones the SnapshotRecord enum as a string.
    if raw is None or isinstance(raw, bool) or (isinstance(raw, str) and raw in _SNAPSHOT_FLAGS):
        return
    raise DecodeError(f"source.snapshot: unknown value {_show(raw)}")


def _convert(spec: FieldSpec, raw: Any, schema: _FieldSchema | None, where: str) -> Any:
    if raw is None:
        if spec.nullable:
            return None
        raise DecodeError(f"{where}: null in the non-nullable {spec.type.value} field")
    return _CONVERTERS[spec.type](spec, raw, schema, where)


def _to_string(spec: FieldSpec, raw: Any, schema: _FieldSchema | None, where: str) -> str:
    # json/jsonb (io.debezium.data.Json), enums (io.debezium.data.Enum), xml, inet... all arrive
    # as text; anything else is a column whose type does not match the catalog.
    if isinstance(raw, str):
        return _text(raw, where)
    raise DecodeError(f"{where}: expected a string, got {_kind(raw)}")


def _text(text: str, where: str) -> str:
    r"""``text`` if it is valid Unicode, else DecodeError.

    A lone surrogate (a ``"\ud800"`` escape) parses, but no Arrow table (so no replica) can hold
    it: such a row would make every write of its batch fail and stall replication.
    """
    # isascii is a flag lookup: only non-ASCII text pays for the check.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DecodeError(
                f"{where}: text with a lone surrogate ({_show(text[exc.start : exc.end])}) "
                "is not valid Unicode"
            ) from None
    return text


def _to_uuid(spec: FieldSpec, raw: Any, schema: _FieldSchema | None, where: str) -> str:
    if not isinstance(raw, str) or len(raw) > 64:
        raise DecodeError(f"{where}: expected a UUID string, got {_kind(raw)}")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise DecodeError(f"{where}: {_show(raw)} is not a UUID") from None


def _to_bool(spec: FieldSpec, raw: Any, schema: _FieldSchema | None, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    raise DecodeError(f"{where}: expected true or false, got {_kind(raw)}")


def _to_int(spec: FieldSpec, raw: Any, schema: _FieldSchema | None, where: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        # A NUMERIC(n, 0) column in a catalog int field, or a JSON number written as 12.0.
        number = _number(raw, schema, where)
        if isinstance(number, float):
            raise DecodeError(f"{where}: {_show(raw)} is not an integer")
        if number.adjusted() > 19:
            raise DecodeError(f"{where}: {_show(raw)} is outside the int64 range")
        if number != number.to_integral_value(context=_DECIMAL_CONTEXT):
            raise DecodeError(f"{where}: {_show(raw)} is not an integer")
        value = int(number)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise DecodeError(f"{where}: {_show(raw)} is outside the int64 range")
    return value


def _to_float(spec: FieldSpec, raw: Any, schema: _FieldSchema | None, where: str) -> float:
    if isinstance(raw, float):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        try:
            return float(raw)
        except OverflowError:
            raise DecodeError(f"{where}: {_show(raw)} is too large for a float") from None
    return float(_number(raw, schema, where))


def _to_decimal(spec: FieldSpec, raw: Any, schema: _FieldSchema | None, where: str) -> Decimal:
    number = _number(raw, schema, where)
    if isinstance(number, float):
        if not math.isfinite(number):
            target = f"decimal({spec.precision},{spec.scale})"
            raise DecodeError(f"{where}: {_show(raw)} cannot be stored in {target}")
        number = Decimal(repr(number))
    if number and number.adjusted() >= spec.precision - spec.scale:
        raise DecodeError(f"{where}: {_show(raw)} does not fit {_decimal_type(spec)}")
    try:
        # ROUND_HALF_UP is PostgreSQL's rounding for numeric: exact when the source column has
        # the catalog's scale, which is the expected set-up.
        value = number.quantize(
            _quantum(spec.scale), rounding=ROUND_HALF_UP, context=_DECIMAL_CONTEXT
        )
    except InvalidOperation:
        raise DecodeError(f"{where}: {_show(raw)} does not fit {_decimal_type(spec)}") from None
    if len(value.as_tuple().digits) > spec.precision:
        raise DecodeError(f"{where}: {_show(raw)} does not fit {_decimal_type(spec)}")
    return value


def _decimal_type(spec: FieldSpec) -> str:
    return f"decimal({spec.precision},{spec.scale})"


@functools.lru_cache(maxsize=64)
def _quantum(scale: int) -> Decimal:
    return Decimal(1).scaleb(-scale)


def _number(raw: Any, schema: _FieldSchema | None, where: str) -> Decimal | float:
    """A numeric value in any of Debezium's encodings, exact where the encoding is exact."""
    if isinstance(raw, bool):
        raise DecodeError(f"{where}: expected a number, got a boolean")
    if isinstance(raw, int):
        return Decimal(raw)
    if isinstance(raw, Decimal | float):
        return raw
    name = schema.name if schema is not None else None
    if name == _VARIABLE_SCALE_DECIMAL:
        # NUMERIC without a declared scale, decimal.handling.mode=precise.
        if not isinstance(raw, dict):
            raise DecodeError(f"{where}: expected a VariableScaleDecimal struct, got {_kind(raw)}")
        scale = raw.get("scale")
        if isinstance(scale, bool) or not isinstance(scale, int):
            raise DecodeError(f"{where}.scale: expected an integer, got {_kind(scale)}")
        return _scaled(_unscaled(raw.get("value"), f"{where}.value"), scale, where)
    if isinstance(raw, str):
        if name == _DECIMAL:
            # decimal.handling.mode=precise: the unscaled value's big-endian two's-complement
            # bytes in base64, the scale in the schema's parameters.
            return _scaled(_unscaled(raw, where), _schema_scale(schema, where), where)
        if schema is not None and schema.type == "bytes":
            raise DecodeError(f"{where}: bytes without a Decimal schema are not a number")
        if len(raw) <= 100 and _DECIMAL_TEXT.fullmatch(raw):
            return Decimal(raw)
        special = _SPECIAL_FLOATS.get(raw)
        if special is not None:
            return special
        hint = ""
        if schema is None and _looks_base64(raw):
            hint = (
                " (decimal.handling.mode=precise sends base64 bytes that need the schema: "
                "use decimal.handling.mode=string or schemas.enable=true)"
            )
        raise DecodeError(f"{where}: {_show(raw)} is not a number{hint}")
    raise DecodeError(f"{where}: expected a number, got {_kind(raw)}")


def _unscaled(raw: Any, where: str) -> int:
    if not isinstance(raw, str):
        raise DecodeError(f"{where}: expected base64 decimal bytes, got {_kind(raw)}")
    # decimal128 needs at most 16 bytes; a little slack for wider source columns.
    if len(raw) > 64:
        raise DecodeError(f"{where}: decimal bytes too long ({len(raw)} base64 characters)")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{where}: {_show(raw)} is not base64") from None
    if not data:
        raise DecodeError(f"{where}: empty decimal bytes")
    return int.from_bytes(data, "big", signed=True)


def _schema_scale(schema: _FieldSchema | None, where: str) -> int:
    text = schema.parameters.get("scale") if schema is not None else None
    if text is None:
        raise DecodeError(f"{where}: the Decimal schema has no scale parameter")
    if not re.fullmatch(r"-?\d{1,4}", text):
        raise DecodeError(f"{where}: Decimal scale {_show(text)} is not an integer")
    return int(text)


def _scaled(unscaled: int, scale: int, where: str) -> Decimal:
    if not -1000 <= scale <= 1000:
        raise DecodeError(f"{where}: decimal scale {scale} is out of range")
    # The constructor is exact: no context rounding, whatever the number of digits.
    return Decimal(f"{unscaled}E{-scale}")


def _looks_base64(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", text)) and len(text) % 4 == 0


def _to_timestamp(
    spec: FieldSpec, raw: Any, schema: _FieldSchema | None, where: str
) -> dt.datetime:
    if schema is None and isinstance(raw, str) and "1900" <= raw[:4] <= "2299":
        # isostring's usual shape inside the range: no sentinel, no clamping to do.
        common = _parse_common_iso(raw)
        if common is not None and common[1] is not None:
            return _EPOCH + dt.timedelta(days=common[0], microseconds=common[1])
    micros = min(max(_timestamp_micros(raw, schema, where), _MIN_MICROS), _MAX_MICROS)
    return _EPOCH + dt.timedelta(microseconds=micros)


def _to_date(spec: FieldSpec, raw: Any, schema: _FieldSchema | None, where: str) -> dt.date:
    days = min(max(_date_days(raw, schema, where), _MIN_DAYS), _MAX_DAYS)
    return _EPOCH_DATE + dt.timedelta(days=days)


# Infinite dates and timestamps are clamped to the supported range rather than rejected:
# PostgreSQL's 'infinity' means "after every date" (a deadline never set, a validity without end),
# which the range bound preserves for ordering and filters, and Debezium's sentinels for it are
# well defined (ZonedTimestamp text 'infinity'/'-infinity'; (Micro)Timestamp values
# 9223372036825200000 / -9223372036832400000 from PGStatement.DATE_POSITIVE/NEGATIVE_INFINITY,
# year +294247 / -290308 as ISO text; the two DATE sentinels above). Rejecting would send every
# such row to the dead-letter topic and leave the replica without it. Finite values outside
# 1900..2299 are clamped alike: ClickHouse cannot store them either.
def _infinity_micros(text: str) -> int | None:
    lowered = text.lower() if len(text) <= 9 else ""
    if lowered in ("infinity", "+infinity"):
        return _MAX_MICROS
    if lowered == "-infinity":
        return _MIN_MICROS
    return None


def _timestamp_micros(raw: Any, schema: _FieldSchema | None, where: str) -> int:
    name = schema.name if schema is not None else None
    if name in _TIME_OF_DAY:
        raise DecodeError(f"{where}: a time of day ({name}) cannot fill a timestamp field")
    if isinstance(raw, str):
        infinity = _infinity_micros(raw)
        if infinity is not None:
            return infinity
        days, micros_of_day = _parse_iso(raw, where)
        if micros_of_day is None:
            return _date_micros(days)
        return days * _MICROS_PER_DAY + micros_of_day
    if isinstance(raw, int) and not isinstance(raw, bool):
        if name in _TS_MILLIS:
            return raw * 1000
        if name == _TS_MICROS:
            return raw
        if name == _TS_NANOS:
            # Debezium maps infinity to Long.MAX_VALUE / MIN_VALUE nanoseconds, which are
            # years 2262 / 1677: inside or near the range, so map them explicitly.
            if raw >= _INT64_MAX:
                return _MAX_MICROS
            if raw <= _INT64_MIN:
                return _MIN_MICROS
            return raw // 1000
        if name in _DATE_DAYS:
            return _date_micros(raw)
        if schema is None:
            raise DecodeError(
                f"{where}: a timestamp given as a number needs its schema to tell the unit "
                "(time.precision.mode=adaptive sends milliseconds for TIMESTAMP(0-3) and "
                "microseconds for TIMESTAMP(4-6)): use time.precision.mode=isostring or "
                "schemas.enable=true"
            )
        raise DecodeError(f"{where}: a number of schema {_show(name or schema.type)} is not a time")
    raise DecodeError(f"{where}: expected a timestamp, got {_kind(raw)}")


def _date_days(raw: Any, schema: _FieldSchema | None, where: str) -> int:
    name = schema.name if schema is not None else None
    if name in _TIME_OF_DAY:
        raise DecodeError(f"{where}: a time of day ({name}) cannot fill a date field")
    if isinstance(raw, str):
        infinity = _infinity_micros(raw)
        if infinity is not None:
            return _MAX_DAYS if infinity > 0 else _MIN_DAYS
        days, micros_of_day = _parse_iso(raw, where)
        if micros_of_day is None:
            return _date_sentinel_days(days)
        # A timestamp in a date field: its UTC calendar day.
        return (days * _MICROS_PER_DAY + micros_of_day) // _MICROS_PER_DAY
    if isinstance(raw, int) and not isinstance(raw, bool):
        if schema is None or name in _DATE_DAYS:
            # Both integer DATE encodings (io.debezium.time.Date, Kafka's Date) count days.
            return _date_sentinel_days(raw)
        if name in (*_TS_MILLIS, _TS_MICROS, _TS_NANOS):
            return _timestamp_micros(raw, schema, where) // _MICROS_PER_DAY
        raise DecodeError(f"{where}: a number of schema {_show(name or schema.type)} is not a date")
    raise DecodeError(f"{where}: expected a date, got {_kind(raw)}")


def _date_micros(days: int) -> int:
    """Midnight UTC of an epoch day; the infinity sentinels go to the ends of the range."""
    if days == _DATE_POSITIVE_INFINITY_DAYS:
        return _MAX_MICROS
    if days == _DATE_NEGATIVE_INFINITY_DAYS:
        return _MIN_MICROS
    return days * _MICROS_PER_DAY


def _date_sentinel_days(days: int) -> int:
    if days == _DATE_POSITIVE_INFINITY_DAYS:
        return _MAX_DAYS
    if days == _DATE_NEGATIVE_INFINITY_DAYS:
        return _MIN_DAYS
    return days


def _parse_iso(text: str, where: str) -> tuple[int, int | None]:
    """Epoch days and microseconds of the day (UTC; ``None`` for a bare date) of ISO-8601 text.

    Integer arithmetic instead of ``datetime`` so that years beyond 1..9999 (Java's rendering
    of the infinity sentinels, ``+294247-01-10T04:00:25.2Z``) read like any other instant. A
    bare date keeps its calendar day whatever its offset: IsoDate writes ``2000-02-29Z``.
    """
    common = _parse_common_iso(text)
    if common is not None:
        return common
    match = _ISO.fullmatch(text) if len(text) <= 48 else None
    if match is None:
        raise DecodeError(f"{where}: {_show(text)} is not an ISO-8601 date or timestamp")
    year, month, day = int(match["year"]), int(match["month"]), int(match["day"])
    if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        raise DecodeError(f"{where}: {_show(text)} is not a valid date")
    days = _days_from_civil(year, month, day)
    if match["hour"] is None:
        return days, None
    hour, minute = int(match["hour"]), int(match["minute"])
    second = int(match["second"] or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise DecodeError(f"{where}: {_show(text)} is not a valid time of day")
    # PostgreSQL keeps microseconds; finer digits (Java may print nanoseconds) are cut.
    fraction = int((match["fraction"] or "").ljust(6, "0")[:6])
    micros = ((hour * 60 + minute) * 60 + second) * 1_000_000 + fraction
    micros -= _offset_seconds(match["offset"], text, where) * 1_000_000
    return days, micros


def _parse_common_iso(text: str) -> tuple[int, int | None] | None:
    """``_parse_iso`` for the shapes isostring mode writes, through the C date parser.

    ``2026-02-01``, ``2026-02-01Z`` and ``2026-02-01T08:30:00[.f{1,9}]Z``; None for anything
    else (including invalid values), which the general parser then reads or rejects. The
    separators are checked first so that ``fromisoformat`` sees no other ISO form (week dates,
    basic format, hour 24).
    """
    length = len(text)
    if length < 10 or text[4] != "-" or text[7] != "-":
        return None
    if length == 10 or (length == 11 and text[10] == "Z"):
        try:
            return (dt.date.fromisoformat(text[:10]) - _EPOCH_DATE).days, None
        except ValueError:
            return None
    if length < 20 or text[10] != "T" or text[13] + text[16] + text[-1] != "::Z":
        return None
    fraction = 0
    if length > 20:
        digits = text[20:-1]
        if text[19] != "." or not 2 <= length - 20 <= 10:
            return None
        if not (digits.isascii() and digits.isdigit()):
            return None
        fraction = int(digits[:6].ljust(6, "0"))
    if text[11:13] > "23":
        return None
    try:
        delta = dt.datetime.fromisoformat(text[:19]) - _NAIVE_EPOCH
    except ValueError:
        return None
    return delta.days, delta.seconds * 1_000_000 + fraction


def _offset_seconds(offset: str | None, text: str, where: str) -> int:
    if offset is None or offset in ("Z", "z"):
        # A TIMESTAMP without time zone: Debezium renders it in UTC.
        return 0
    sign = -1 if offset[0] == "-" else 1
    digits = offset[1:].replace(":", "")
    hours, minutes, seconds = int(digits[0:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if hours > 23 or minutes > 59 or seconds > 59 or len(digits) not in (2, 4, 6):
        raise DecodeError(f"{where}: {_show(text)} has an invalid UTC offset")
    return sign * ((hours * 60 + minutes) * 60 + seconds)


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


@functools.lru_cache(maxsize=65_536)
def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date, any year (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def _kind(raw: Any) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, int | float | Decimal):
        return f"the number {_show(raw)}"
    if isinstance(raw, str):
        return f"the string {_show(raw)}"
    if isinstance(raw, list):
        return "an array"
    if isinstance(raw, dict):
        return "an object"
    return type(raw).__name__


def _show(raw: Any) -> str:
    """A short ``repr`` for messages: values come from the wire and can be huge."""
    try:
        text = str(raw) if isinstance(raw, Decimal) else repr(raw)
    except ValueError:  # an integer beyond str()'s digit limit
        return "<a very large number>"
    return text if len(text) <= 80 else f"{text[:77]}..."


_CONVERTERS: Final[Mapping[FieldType, _Converter]] = {
    FieldType.STRING: _to_string,
    FieldType.ENUM: _to_string,
    FieldType.UUID: _to_uuid,
    FieldType.INT: _to_int,
    FieldType.FLOAT: _to_float,
    FieldType.DECIMAL: _to_decimal,
    FieldType.BOOL: _to_bool,
    FieldType.TIMESTAMP: _to_timestamp,
    FieldType.DATE: _to_date,
}

__all__ = [
    "DEFAULT_TOPIC_PREFIX",
    "HEARTBEAT_TOPIC_PREFIX",
    "MAX_DATE",
    "MAX_LSN",
    "MAX_TIMESTAMP",
    "MIN_DATE",
    "MIN_TIMESTAMP",
    "UNAVAILABLE_VALUE_PLACEHOLDER",
    "DebeziumDecoder",
    "DecodeError",
    "change_version",
    "snapshot_version",
]
