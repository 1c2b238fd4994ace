"""Batches of events column by column, and their validation in Arrow (the fast path).

Ingestion is bound by Python's per-event work: checking one event at a time (``event_row``) runs
at about 60 k events a second on one core, below the sink's target. A batch whose every event is
in the usual, canonical form (lowercase UUIDs, ``YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+hh:mm)``
timestamps, integer actors as digits, declared properties that cast cleanly) is checked with
Arrow's vectorised kernels instead. Any event outside that form, valid or not, sends the whole
batch to the per-event path, which is the reference: it names every rejected event and accepts
the forms the fast path leaves out. So the fast path can only be faster, never different
(tests/unit/test_event_columns.py checks both paths give the same rows).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from service.catalog import FieldSpec, FieldType, Model
from service.events.validation import (
    MAX_NAME_CHARS,
    MAX_PROPERTIES,
    MAX_VALUE_CHARS,
    EventColumns,
    EventLimits,
    RawEvent,
    Rejection,
    validate_events,
)
from service.schema import arrow_type

_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_INSTANT = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DIGITS = r"^-?[0-9]{1,19}$"
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
FAST_PATH_EVENTS = 100
"""Batches this large or larger are checked with Arrow kernels first."""


@dataclass(frozen=True)
class FlatProperties:
    """Every event's properties flattened: ``counts[i]`` keys and values belong to event i."""

    counts: Sequence[int]
    keys: Sequence[str]
    values: Sequence[str]

    def per_event(self) -> list[dict[str, str]]:
        """The properties of each event (the last of a repeated key wins)."""
        result: list[dict[str, str]] = []
        start = 0
        for count in self.counts:
            end = start + count
            result.append(dict(zip(self.keys[start:end], self.values[start:end], strict=True)))
            start = end
        return result


@dataclass(frozen=True)
class EventBatch:
    """Events as parallel lists of their texts (what a gRPC message or JSON array holds).

    Properties come per event (``properties``) or flattened (``flat``, the columnar wire form).
    """

    event_ids: Sequence[str]
    events: Sequence[str]
    actors: Sequence[str]
    timestamps: Sequence[str]
    properties: Sequence[Mapping[str, str]] = ()
    flat: FlatProperties | None = None

    def __len__(self) -> int:
        return len(self.events)

    def problem(self) -> str | None:
        """What makes the lists inconsistent (different lengths), if anything."""
        count = len(self.events)
        lists = (self.event_ids, self.actors, self.timestamps)
        if any(len(texts) != count for texts in lists):
            return "event_ids, events, actors and timestamps must have one entry per event"
        if self.flat is None:
            return None if len(self.properties) == count else "one properties map per event"
        flat = self.flat
        if len(flat.counts) != count:
            return "property_counts must have one entry per event"
        if len(flat.keys) != len(flat.values) or sum(flat.counts) != len(flat.keys):
            return "property_counts must add up to the number of property_keys and values"
        return None

    @classmethod
    def of(cls, events: Sequence[RawEvent]) -> EventBatch:
        """The batch of ``events``."""
        return cls(
            [e.event_id for e in events],
            [e.event for e in events],
            [e.actor for e in events],
            [e.timestamp for e in events],
            [e.properties for e in events],
        )

    def raw_events(self) -> list[RawEvent]:
        """The events one by one."""
        properties = self.flat.per_event() if self.flat is not None else self.properties
        return [
            RawEvent(*fields)
            for fields in zip(
                self.event_ids,
                self.events,
                self.actors,
                self.timestamps,
                properties,
                strict=True,
            )
        ]


def validate_batch(
    model: Model,
    tenant: str,
    batch: EventBatch,
    *,
    now: dt.datetime,
    limits: EventLimits,
    first_index: int = 0,
) -> tuple[EventColumns, list[Rejection]]:
    """The valid events as columns, and a rejection per invalid one (as ``validate_events``).

    Batches under ``FAST_PATH_EVENTS`` take the per-event path: the Arrow kernels' fixed cost
    (about 1 ms a batch) is more than checking a few events one by one (bench/README.md).
    """
    if len(batch) >= FAST_PATH_EVENTS:
        fast = fast_columns(model, tenant, batch, now=now, limits=limits)
        if fast is not None:
            return fast, []
    return validate_events(
        model, tenant, batch.raw_events(), now=now, limits=limits, first_index=first_index
    )


def fast_columns(
    model: Model, tenant: str, batch: EventBatch, *, now: dt.datetime, limits: EventLimits
) -> EventColumns | None:
    """The batch as columns if every event is valid and canonical; None: use the per-event path."""
    roles = model.events
    if roles is None:
        raise ValueError(f"{model.qualified_name} is not an event model")
    columns: dict[str, pa.Array] = {}
    event_id = _identifiers(batch.event_ids, model.fields[roles.event_id])
    names = pa.array(batch.events, pa.string())
    actors = _actors(batch.actors, model.fields[roles.actor])
    moments = _instants(batch.timestamps, now + limits.max_future)
    if event_id is None or actors is None or moments is None or not _sized(names, 1):
        return None
    columns[roles.event_id] = event_id
    columns[roles.event] = names
    columns[roles.actor] = actors
    columns[roles.timestamp] = moments
    declared = [n for n in model.fields if n not in columns]
    split = (
        _split_flat(batch.flat, len(batch), declared, set(columns))
        if batch.flat is not None
        else _split_maps(batch.properties, declared, set(columns))
    )
    if split is None:
        return None
    typed, key_array, value_array = split
    for name in declared:
        array = _declared(typed[name], model.fields[name], now + limits.max_future)
        if array is None:
            return None
        columns[name] = array
    if not _sized(key_array.flatten(), 1, MAX_NAME_CHARS) or not _sized(
        value_array.flatten(), 0, MAX_VALUE_CHARS
    ):
        return None
    ordered = {name: columns[name] for name in model.fields}
    ordered[roles.key_column] = key_array
    ordered[roles.value_column] = value_array
    return EventColumns(model, tenant, pa.table(ordered))


_Split = tuple[dict[str, pa.Array], pa.Array, pa.Array]
"""Declared properties as one text column each, and the other keys and values as list arrays."""


def _split_maps(
    maps: Sequence[Mapping[str, str]], declared: Sequence[str], reserved: set[str]
) -> _Split | None:
    keys: list[list[str]] = []
    values: list[list[str]] = []
    typed: dict[str, list[str | None]] = {name: [] for name in declared}
    for properties in maps:
        if len(properties) > MAX_PROPERTIES or not reserved.isdisjoint(properties):
            return None
        for name, column in typed.items():
            column.append(properties.get(name))
        free = [key for key in properties if key not in typed]
        keys.append(free)
        values.append([properties[key] for key in free])
    texts = pa.list_(pa.string())
    return (
        {name: pa.array(column, pa.string()) for name, column in typed.items()},
        pa.array(keys, texts),
        pa.array(values, texts),
    )


def _split_flat(
    flat: FlatProperties, count: int, declared: Sequence[str], reserved: set[str]
) -> _Split | None:
    """``_split_maps`` for flattened properties, in array operations only."""
    counts = np.asarray(flat.counts, dtype=np.int64)
    if count and counts.max(initial=0) > MAX_PROPERTIES:
        return None
    keys = pa.array(flat.keys, pa.string())
    values = pa.array(flat.values, pa.string())
    owner = np.repeat(np.arange(count, dtype=np.int64), counts)
    if len(keys) > 1 and _repeats_a_key(owner, keys):
        return None  # a key repeated within an event: the per-event path keeps the last
    if len(keys) and pc.any(pc.is_in(keys, pa.array(sorted(reserved), pa.string()))).as_py():
        return None
    typed: dict[str, pa.Array] = {}
    for name in declared:
        hits = np.flatnonzero(pc.equal(keys, name).to_numpy(zero_copy_only=False))
        positions = np.full(count, -1, dtype=np.int64)
        positions[owner[hits]] = hits
        typed[name] = values.take(pa.array(positions, mask=positions < 0))
    free = np.flatnonzero(
        pc.invert(pc.is_in(keys, pa.array(declared, pa.string()))).to_numpy(zero_copy_only=False)
    )
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(np.bincount(owner[free], minlength=count), out=offsets[1:])
    offset_array = pa.array(offsets, pa.int32())
    return (
        typed,
        pa.ListArray.from_arrays(offset_array, keys.take(pa.array(free))),
        pa.ListArray.from_arrays(offset_array, values.take(pa.array(free))),
    )


def _repeats_a_key(owner: np.ndarray, keys: pa.Array) -> bool:
    """Whether some event has a key twice: (event, key code) pairs sorted, neighbours compared.

    A numpy sort of integer codes; pyarrow's group-by costs five times as much on small batches.
    """
    codes = keys.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)
    pairs = owner * (int(codes.max()) + 1) + codes
    pairs.sort()
    return bool(np.any(pairs[1:] == pairs[:-1]))


def _sized(array: pa.Array, least: int, most: int = MAX_NAME_CHARS) -> bool:
    """Whether every text has ``least`` to ``most`` characters."""
    if not len(array):
        return True
    lengths = pc.utf8_length(array)
    bounds = pc.min_max(lengths).as_py()
    return bool(bounds["min"] >= least and bounds["max"] <= most)


def _matches(array: pa.Array, pattern: str) -> bool:
    return not len(array) or bool(pc.all(pc.match_substring_regex(array, pattern)).as_py())


def _identifiers(texts: Sequence[str], spec: FieldSpec) -> pa.Array | None:
    array = pa.array(texts, pa.string())
    if spec.type is FieldType.UUID:
        return array if _matches(array, _UUID) else None
    return array if _sized(array, 1) else None


def _actors(texts: Sequence[str], spec: FieldSpec) -> pa.Array | None:
    array = pa.array(texts, pa.string())
    if spec.type is FieldType.INT:
        return _cast(array, pa.int64()) if _matches(array, _DIGITS) else None
    return _identifiers(texts, spec)


def _instants(texts: Sequence[str | None], latest: dt.datetime) -> pa.Array | None:
    array = pa.array(texts, pa.string())
    if array.null_count or not _matches(array, _INSTANT):
        return None
    moments = _cast(array, _TIMESTAMP)
    if moments is None or not len(moments):
        return moments
    # Compared as microseconds: an instant past year 9999 or before year 1 (a far offset on
    # 9999-12-31 or 0001-01-01) has no Python datetime; the per-event path names it.
    bounds = pc.min_max(moments.cast(pa.int64())).as_py()
    if bounds["min"] < _micros(_EARLIEST) or bounds["max"] > _micros(latest):
        return None
    return moments


def _micros(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


def _declared(array: pa.Array, spec: FieldSpec, latest: dt.datetime) -> pa.Array | None:
    """A declared property's column, or None where the per-event path must decide."""
    if array.null_count and not spec.nullable:
        return None
    present = pc.drop_null(array)
    kind = spec.type
    if kind in (FieldType.STRING, FieldType.ENUM):
        return array if _sized(present, 0, MAX_VALUE_CHARS) else None
    if kind is FieldType.BOOL:
        if len(present) and not pc.all(pc.is_in(present, pa.array(["true", "false"]))).as_py():
            return None
        return pc.equal(array, "true")
    if kind is FieldType.UUID:
        return array if _matches(present, _UUID) else None
    if kind is FieldType.INT:
        return _cast(array, pa.int64()) if _matches(present, _DIGITS) else None
    if kind is FieldType.DATE:
        return _cast(array, pa.date32()) if _matches(present, _DATE) else None
    if kind is FieldType.TIMESTAMP:
        if _instants(present.to_pylist(), latest) is None:
            return None
        return _cast(array, _TIMESTAMP)
    target = arrow_type(spec)
    numbers = _cast(array, target)
    if numbers is None or kind is not FieldType.FLOAT:
        return numbers
    finite = pc.drop_null(pc.is_finite(numbers))
    return numbers if not len(finite) or pc.all(finite).as_py() else None


def _cast(array: pa.Array, target: pa.DataType) -> pa.Array | None:
    try:
        return array.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
