"""The Arrow fast path of event validation never differs from the per-event path.

``fast_columns`` may only decline (None); whenever it answers, its rows equal those of
``validate_events`` (the reference, which names every rejection), for per-event maps and for
flattened properties alike. Hypothesis draws batches mixing canonical events, valid events in
other forms (upper-case UUIDs, offsets, signed actors, untrimmed decimals) and invalid ones.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.catalog import Catalog, Model
from service.events.columnar import EventBatch, FlatProperties, fast_columns, validate_batch
from service.events.validation import EventLimits, RawEvent, validate_events

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
LIMITS = EventLimits(max_future=dt.timedelta(hours=1))
UNIT = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def model(catalog: Catalog) -> Model:
    return catalog.models[("product", "events")]


def canonical_uuid() -> st.SearchStrategy[str]:
    return st.uuids().map(str)


def instants() -> st.SearchStrategy[str]:
    moments = st.datetimes(
        min_value=dt.datetime(1950, 1, 1), max_value=dt.datetime(2026, 6, 1, 12, 59)
    )
    return st.one_of(
        moments.map(lambda m: m.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")),
        moments.map(lambda m: m.strftime("%Y-%m-%dT%H:%M:%S") + "+05:45"),
        moments.map(lambda m: m.strftime("%Y-%m-%dT%H:%M:%S.%f") + "-03:00"),
        # Valid for the per-event path only, or invalid.
        moments.map(lambda m: m.isoformat()),
        st.sampled_from(["", "2026-13-01T00:00:00Z", "2030-01-01T00:00:00Z", "yesterday"]),
        # In UTC past year 9999 or before year 1: no Python datetime holds them.
        st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00"]),
    )


def values_for(name: str) -> st.SearchStrategy[str]:
    if name == "revenue":
        return st.one_of(
            st.decimals(min_value=-(10**15), max_value=10**15, places=2, allow_nan=False).map(str),
            st.sampled_from(["12.5", "12.500", "1e2", "12.345", "abc", "NaN", " 1.00"]),
        )
    return st.one_of(st.sampled_from(["web", "ios", "android", ""]), st.text(max_size=5))


def events() -> st.SearchStrategy[RawEvent]:
    properties = st.dictionaries(
        st.one_of(
            st.sampled_from(["platform", "country", "plan", "revenue", "path", "utm_source"]),
            st.text(min_size=0, max_size=4),
            st.sampled_from(["contact_id", "x" * 201]),
        ),
        st.text(max_size=6),
        max_size=5,
    ).flatmap(
        lambda keys: (
            st.fixed_dictionaries({k: values_for(k) for k in keys}) if keys else st.just({})
        )
    )
    return st.builds(
        RawEvent,
        event_id=st.one_of(
            canonical_uuid(),
            canonical_uuid().map(str.upper),
            st.sampled_from(["", "not-a-uuid"]),
        ),
        event=st.one_of(st.sampled_from(["signed_up", "page_viewed"]), st.text(max_size=3)),
        actor=st.one_of(
            st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
            st.sampled_from(["+5", " 7", "1_000", "abc", "", str(2**63)]),
        ),
        timestamp=instants(),
        properties=properties,
    )


def canonical_events() -> st.SearchStrategy[RawEvent]:
    return st.builds(
        RawEvent,
        event_id=canonical_uuid(),
        event=st.sampled_from(["signed_up", "activated", "page_viewed"]),
        actor=st.integers(min_value=0, max_value=10**12).map(str),
        timestamp=st.datetimes(
            min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2026, 6, 1)
        ).map(lambda m: m.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")),
        properties=st.fixed_dictionaries(
            {},
            optional={
                "platform": st.sampled_from(["web", "ios"]),
                "revenue": st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False).map(
                    str
                ),
                "path": st.text(max_size=10),
                "utm_source": st.sampled_from(["google", "newsletter"]),
            },
        ),
    )


def flat(batch: list[RawEvent]) -> EventBatch:
    return EventBatch(
        [e.event_id for e in batch],
        [e.event for e in batch],
        [e.actor for e in batch],
        [e.timestamp for e in batch],
        flat=FlatProperties(
            [len(e.properties) for e in batch],
            [k for e in batch for k in e.properties],
            [v for e in batch for v in e.properties.values()],
        ),
    )


def reference(model: Model, batch: list[RawEvent]) -> tuple[pa.Table, list[tuple[int, str]]]:
    columns, rejected = validate_events(model, "acme", batch, now=NOW, limits=LIMITS)
    return columns.table, [(r.index, r.field) for r in rejected]


@UNIT
@given(batch=st.lists(events(), max_size=12))
def test_fast_path_never_differs(model: Model, batch: list[RawEvent]) -> None:
    expected_table, expected_rejected = reference(model, batch)
    for form in (EventBatch.of(batch), flat(batch)):
        fast = fast_columns(model, "acme", form, now=NOW, limits=LIMITS)
        if fast is not None:
            assert not expected_rejected
            # Generated ids differ run to run; everything else must be equal.
            assert all(e.event_id for e in batch)
            assert fast.table.equals(expected_table)
        columns, rejected = validate_batch(model, "acme", form, now=NOW, limits=LIMITS)
        assert [(r.index, r.field) for r in rejected] == expected_rejected
        if all(e.event_id for e in batch):
            assert columns.table.equals(expected_table)


@UNIT
@given(batch=st.lists(canonical_events(), min_size=1, max_size=40))
def test_canonical_batches_take_the_fast_path(model: Model, batch: list[RawEvent]) -> None:
    expected_table, expected_rejected = reference(model, batch)
    assert not expected_rejected
    for form in (EventBatch.of(batch), flat(batch)):
        fast = fast_columns(model, "acme", form, now=NOW, limits=LIMITS)
        assert fast is not None
        assert fast.table.equals(expected_table)


def test_fast_path_declines_what_only_the_reference_may_judge(model: Model) -> None:
    good = RawEvent(str(uuid.uuid4()), "signed_up", "7", "2026-05-01T00:00:00Z", {"plan": "pro"})
    declined = [
        RawEvent(good.event_id.upper(), good.event, good.actor, good.timestamp),
        RawEvent(good.event_id, good.event, "+7", good.timestamp),
        RawEvent(good.event_id, good.event, good.actor, "2026-05-01T00:00:00+0100"),
        RawEvent(good.event_id, good.event, good.actor, ""),
        RawEvent("", good.event, good.actor, good.timestamp),
        RawEvent(good.event_id, good.event, good.actor, good.timestamp, {"revenue": "1.234"}),
        RawEvent(good.event_id, good.event, good.actor, good.timestamp, {"contact_id": "8"}),
    ]
    assert fast_columns(model, "acme", EventBatch.of([good]), now=NOW, limits=LIMITS)
    for event in declined:
        batch = EventBatch.of([good, event])
        assert fast_columns(model, "acme", batch, now=NOW, limits=LIMITS) is None


def test_a_key_repeated_in_flat_properties_takes_the_last_value(model: Model) -> None:
    batch = EventBatch(
        [str(uuid.uuid4())],
        ["signed_up"],
        ["7"],
        ["2026-05-01T00:00:00Z"],
        flat=FlatProperties([3], ["plan", "path", "plan"], ["free", "/", "pro"]),
    )
    assert fast_columns(model, "acme", batch, now=NOW, limits=LIMITS) is None
    columns, rejected = validate_batch(model, "acme", batch, now=NOW, limits=LIMITS)
    assert not rejected
    assert columns.table.column("plan").to_pylist() == ["pro"]
    assert columns.table.column("properties_keys").to_pylist() == [["path"]]


@pytest.mark.parametrize(
    ("counts", "keys", "values"),
    [([1], ["a"], []), ([2], ["a"], ["x"]), ([1, 0], ["a"], ["x"])],
)
def test_inconsistent_flat_lists_are_named(
    counts: list[int], keys: list[str], values: list[str]
) -> None:
    batch = EventBatch(["a"], ["e"], ["1"], [""], flat=FlatProperties(counts, keys, values))
    assert batch.problem() is not None
