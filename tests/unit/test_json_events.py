"""Events read from JSON bodies (service/events/json_events.py) and their timestamps' range."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from service.catalog import Catalog
from service.events.json_events import JSON, BodyError, dumps, loads, read_body
from service.events.validation import EventLimits, RawEvent, validate_events


def test_property_numbers_keep_the_text_the_producer_wrote() -> None:
    body = json.dumps([{"event": "e", "actor": 1, "properties": {"a": 0}}]).replace(
        '"a": 0',
        '"a": 1.10, "b": 1e2, "c": 1E400, "d": 12345678901234567890.5, "e": {"x": [2.50, -0]},'
        ' "f": 7, "g": true',
    )
    (event,) = read_body(JSON, body.encode())
    assert isinstance(event, RawEvent)
    assert dict(event.properties) == {
        "a": "1.10",
        "b": "1e2",
        "c": "1E400",
        "d": "12345678901234567890.5",
        "e": '{"x":[2.50,0]}',
        "f": "7",
        "g": "true",
    }


@pytest.mark.parametrize("field", ["event", "actor", "timestamp", "eventId"])
def test_a_fractional_number_where_text_is_expected_is_still_refused(field: str) -> None:
    item = {"event": "e", "actor": "1", field: 1.5}
    (outcome,) = read_body(JSON, json.dumps([item]).encode())
    assert not isinstance(outcome, RawEvent)
    assert outcome.field == field


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant: str) -> None:
    body = '[{"event": "e", "actor": 1, "properties": {"x": VALUE}}]'.replace("VALUE", constant)
    with pytest.raises(BodyError):
        read_body(JSON, body.encode())


def test_ndjson_lines_end_at_newlines_only() -> None:
    # U+2028, U+0085 and a form feed may stand in a JSON string as they are.
    lines = [
        {"event": "a\u2028b", "actor": 1},
        {"event": "c\x85d", "actor": 2},
        {"event": "e\x0cf", "actor": 3},
    ]
    body = "\r\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n"
    events = read_body("application/x-ndjson", body.encode())
    assert [e.event for e in events if isinstance(e, RawEvent)] == ["a\u2028b", "c\x85d", "e\x0cf"]


def test_dumps_writes_back_what_loads_read() -> None:
    text = '{"a":[1,2.50,"x\\"y",null,true,{"b":-0.0e1}],"é":"ü"}'
    assert dumps(loads(text)) == text


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00"])
@pytest.mark.parametrize("count", [1, 150])  # the per-event path, and the fast path's batch
def test_an_instant_outside_datetime_s_years_is_rejected_alone(
    catalog: Catalog, stamp: str, count: int
) -> None:
    model = catalog.models[("product", "events")]
    good = RawEvent("", "ok", "1", "2026-12-01T10:00:00Z", {})
    columns, rejected = validate_events(
        model,
        "acme",
        [good] * count + [RawEvent("", "x", "1", stamp, {})],
        now=dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
        limits=EventLimits(),
    )
    assert columns.table.num_rows == count
    assert [(r.index, r.field) for r in rejected] == [(count, "timestamp")]
