"""Event validation: raw events as callers send them -> typed rows, or a reason per event.

Pure (no I/O): the clock is an argument. Each event is checked on its own, so one bad event is
rejected with its index, the field at fault and the reason while the others are written. Valid
events accumulate column by column (``EventColumns``), the shape the sink writes them in.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import pyarrow as pa

from service.catalog import EventFields, FieldSpec, FieldType, Model
from service.schema import arrow_type

MAX_NAME_CHARS = 200
"""Longest event name, actor, event id and property key."""
MAX_VALUE_CHARS = 8192
"""Longest property value."""
MAX_PROPERTIES = 500
"""Most properties one event may carry."""
_INT64 = (-(2**63), 2**63 - 1)
_EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class RawEvent:
    """One event as sent: texts only (gRPC's message, or a REST body's object made text)."""

    event_id: str = ""
    event: str = ""
    actor: str = ""
    timestamp: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """Why the event at ``index`` was not written; ``field`` in the request's JSON naming."""

    index: int
    field: str
    reason: str


class EventError(ValueError):
    """One event's fault: the field (``timestamp``, ``properties.revenue``) and the reason."""

    def __init__(self, field_name: str, reason: str) -> None:
        """Name the offending field and say why."""
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class EventRows:
    """Validated events still as Python lists, one list per column of the event table.

    Turning a call of a few events into Arrow costs more (a fixed cost per column) than
    validating them: the sink builds the columns of every such part of a flush at once instead
    (``rows_table``).
    """

    values: dict[str, list[Any]]
    keys: list[list[str]]
    property_values: list[list[str]]

    def __len__(self) -> int:
        return len(self.keys)


class EventColumns:
    """Valid events of one model and tenant: Arrow columns named as the table's, or lists.

    ``table`` holds every declared field and the two property arrays (built once from
    ``rows`` when that is what was given); the tenant and the version are added when the sink
    writes (``service.events.sink.event_table``).
    """

    __slots__ = ("_table", "model", "rows", "tenant")

    def __init__(
        self,
        model: Model,
        tenant: str,
        table: pa.Table | None = None,
        rows: EventRows | None = None,
    ) -> None:
        """Columns from ``table``, or from ``rows`` when there is no table."""
        if (table is None) == (rows is None):
            raise ValueError("EventColumns takes a table or rows, exactly one")
        self.model = model
        self.tenant = tenant
        self.rows = rows
        self._table = table

    @property
    def table(self) -> pa.Table:
        """The events as an Arrow table."""
        if self._table is None:
            self._table = rows_table(self.model, [self.rows] if self.rows is not None else [])
        return self._table

    def __len__(self) -> int:
        if self._table is None and self.rows is not None:
            return len(self.rows)
        return int(self.table.num_rows)


def rows_table(model: Model, parts: Sequence[EventRows]) -> pa.Table:
    """One Arrow table of the rows of ``parts``, in order."""
    roles = model.events
    if roles is None:
        raise ValueError(f"{model.qualified_name} is not an event model")
    texts = pa.list_(pa.string())
    columns = {
        name: pa.array(
            [value for part in parts for value in part.values[name]],
            arrow_type(model.fields[name]),
        )
        for name in model.fields
    }
    columns[roles.key_column] = pa.array([k for part in parts for k in part.keys], texts)
    columns[roles.value_column] = pa.array(
        [v for part in parts for v in part.property_values], texts
    )
    return pa.table(columns)


@dataclass
class _RowCollector:
    """Validated events one by one, turned into EventColumns at the end."""

    model: Model
    values: dict[str, list[Any]]
    keys: list[list[str]] = field(default_factory=list)
    property_values: list[list[str]] = field(default_factory=list)

    def append(self, row: Mapping[str, Any], keys: list[str], values: list[str]) -> None:
        for name, column in self.values.items():
            column.append(row.get(name))
        self.keys.append(keys)
        self.property_values.append(values)

    def finish(self, tenant: str) -> EventColumns:
        return EventColumns(
            self.model, tenant, rows=EventRows(self.values, self.keys, self.property_values)
        )


@dataclass(frozen=True)
class EventLimits:
    """Bounds on what an event may carry, from settings."""

    max_future: dt.timedelta = dt.timedelta(hours=1)


def validate_events(
    model: Model,
    tenant: str,
    events: Iterable[RawEvent],
    *,
    now: dt.datetime,
    limits: EventLimits,
    first_index: int = 0,
) -> tuple[EventColumns, list[Rejection]]:
    """Check every event; the valid ones as columns, and one rejection per invalid one."""
    collector = _RowCollector(model, {name: [] for name in model.fields})
    rejected: list[Rejection] = []
    for offset, raw in enumerate(events):
        try:
            row, keys, values = event_row(model, raw, now=now, limits=limits)
        except EventError as error:
            rejected.append(Rejection(first_index + offset, error.field, error.reason))
            continue
        collector.append(row, keys, values)
    return collector.finish(tenant), rejected


def event_row(
    model: Model, raw: RawEvent, *, now: dt.datetime, limits: EventLimits
) -> tuple[dict[str, Any], list[str], list[str]]:
    """One event's declared field values, and its further properties as parallel key/value lists.

    Raises EventError naming the first offending field.
    """
    roles = model.events
    if roles is None:
        raise ValueError(f"{model.qualified_name} is not an event model")
    row: dict[str, Any] = {
        roles.event_id: _event_id(model.fields[roles.event_id], raw.event_id),
        roles.event: _name(raw.event, "event"),
        roles.actor: _actor(model.fields[roles.actor], raw.actor),
        roles.timestamp: _timestamp(raw.timestamp, now, limits),
    }
    if len(raw.properties) > MAX_PROPERTIES:
        raise EventError("properties", f"at most {MAX_PROPERTIES} properties per event")
    keys: list[str] = []
    values: list[str] = []
    for key, text in raw.properties.items():
        where = f"properties.{key[:MAX_NAME_CHARS]}"
        if not key or len(key) > MAX_NAME_CHARS:
            raise EventError("properties", f"a property key must have 1 to {MAX_NAME_CHARS} chars")
        if len(text) > MAX_VALUE_CHARS:
            raise EventError(where, f"a property value may have at most {MAX_VALUE_CHARS} chars")
        spec = model.fields.get(key)
        if spec is None:
            keys.append(key)
            values.append(text)
        elif key in row:
            raise EventError(where, f"{key!r} is the event's {_role(roles, key)}; send it there")
        else:
            row[key] = field_value(spec, text, where)
    for name, spec in model.fields.items():
        if name not in row and not spec.nullable:
            raise EventError(f"properties.{name}", f"{name!r} is required by the model")
    return row, keys, values


def _role(roles: EventFields, name: str) -> str:
    return {
        roles.event_id: "eventId",
        roles.event: "event",
        roles.actor: "actor",
        roles.timestamp: "timestamp",
    }[name]


def _name(text: str, where: str) -> str:
    if not text:
        raise EventError(where, "required")
    if len(text) > MAX_NAME_CHARS:
        raise EventError(where, f"at most {MAX_NAME_CHARS} characters")
    return text


def _event_id(spec: FieldSpec, text: str) -> str:
    if not text:
        # No id: the event cannot be recognised when re-sent, so it gets one of its own.
        return str(uuid.uuid4())
    if spec.type is FieldType.UUID:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise EventError("eventId", f"{text[:60]!r} is not a UUID") from None
    return _name(text, "eventId")


def _actor(spec: FieldSpec, text: str) -> Any:
    if not text:
        raise EventError("actor", "required")
    return field_value(spec, text, "actor")


def _timestamp(text: str, now: dt.datetime, limits: EventLimits) -> dt.datetime:
    if not text:
        return now
    moment = parse_instant(text, "timestamp")
    if moment > now + limits.max_future:
        raise EventError(
            "timestamp",
            f"{text[:40]} is more than {limits.max_future.total_seconds():.0f}s after the "
            "server's clock",
        )
    return moment


def parse_instant(text: str, where: str) -> dt.datetime:
    """An RFC 3339 instant with an offset or Z, as an aware UTC datetime (microseconds)."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise EventError(
            where, f"{text[:40]!r} is not an RFC 3339 time such as 2026-03-01T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise EventError(where, f"{text[:40]!r} needs an offset or Z")
    try:
        moment = moment.astimezone(dt.UTC)
    except OverflowError:
        # 9999-12-31T23:59:59-01:00 is in year 10000 in UTC, which no datetime holds.
        raise EventError(where, f"{text[:40]!r} is outside the years 1900-9999") from None
    if moment < _EARLIEST:
        raise EventError(where, f"{text[:40]!r} is before 1900")
    return moment


def field_value(spec: FieldSpec, text: str, where: str) -> Any:
    """The Python value of a declared field given as text; EventError if it does not fit."""
    kind = spec.type
    if kind in (FieldType.STRING, FieldType.ENUM):
        return text
    if kind is FieldType.INT:
        try:
            number = int(text)
        except ValueError:
            raise EventError(where, f"{text[:40]!r} is not an integer") from None
        if not _INT64[0] <= number <= _INT64[1]:
            raise EventError(where, f"{text[:40]} is outside the 64-bit integer range")
        return number
    if kind is FieldType.FLOAT:
        try:
            number_f = float(text)
        except ValueError:
            raise EventError(where, f"{text[:40]!r} is not a number") from None
        if not math.isfinite(number_f):
            raise EventError(where, "must be a finite number")
        return number_f
    if kind is FieldType.DECIMAL:
        return _decimal(spec, text, where)
    if kind is FieldType.BOOL:
        if text in ("true", "false"):
            return text == "true"
        raise EventError(where, f"{text[:40]!r} is not true or false")
    if kind is FieldType.UUID:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise EventError(where, f"{text[:40]!r} is not a UUID") from None
    if kind is FieldType.DATE:
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            raise EventError(where, f"{text[:40]!r} is not a date such as 2026-03-01") from None
    return parse_instant(text, where)


def _decimal(spec: FieldSpec, text: str, where: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise EventError(where, f"{text[:40]!r} is not a decimal number") from None
    if not number.is_finite():
        raise EventError(where, "must be a finite number")
    exponent = number.as_tuple().exponent
    if (
        isinstance(exponent, int)
        and -exponent > spec.scale
        and number != number.quantize(Decimal(1).scaleb(-spec.scale))
    ):
        raise EventError(where, f"{text[:40]} has more than {spec.scale} decimal places")
    quantized = number.quantize(Decimal(1).scaleb(-spec.scale))
    if len(quantized.as_tuple().digits) > spec.precision and quantized != 0:
        raise EventError(where, f"{text[:40]} does not fit decimal({spec.precision},{spec.scale})")
    return quantized
