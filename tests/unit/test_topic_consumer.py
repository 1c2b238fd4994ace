"""The events topic's messages read without Kafka: parsing, faults, derived ids, dead letters.

``service/events/topic_messages.py`` (the consumer's pure half) against the shipped catalog (its
event model ``product.events``, its CDC model ``crm.deals``); the expected faults are written
from the message format in ``service/events/topic_consumer.py``'s docstring.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from service.catalog import Catalog
from service.events.topic_messages import (
    DeadLetter,
    EventMessage,
    MessageFault,
    MessageOrigin,
    parse_message,
)
from service.events.validation import EventLimits, RawEvent, Rejection, validate_events
from service.settings import Settings

ORIGIN = MessageOrigin("analytics.events", 2, 41)
EVENT_ID = "7f1c1a9e-2b1c-4c55-8d0e-000000000001"
SIGNUP = {
    "eventId": EVENT_ID,
    "event": "signup",
    "actor": 17,
    "timestamp": "2026-03-01T10:00:00Z",
    "properties": {"plan": "pro", "revenue": 12.5, "referrer": "ads", "beta": True},
}


def encoded(document: Any) -> bytes:
    return json.dumps(document).encode()


def read(document: Any, catalog: Catalog) -> EventMessage:
    parsed = parse_message(encoded(document), catalog, ORIGIN)
    assert isinstance(parsed, EventMessage), parsed
    return parsed


def record(value: bytes | None, offset: int = 41) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="analytics.events",
        partition=2,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"acme",
        value=value,
        checksum=None,
        serialized_key_size=4,
        serialized_value_size=len(value or b""),
        headers=(),
    )


# --- readable messages ---------------------------------------------------------------------------


def test_one_event_form(catalog: Catalog) -> None:
    message = read({"tenant": "acme", "model": "product.events", "event": SIGNUP}, catalog)
    assert (message.tenant, message.model.qualified_name, message.batch) == (
        "acme",
        "product.events",
        False,
    )
    assert message.unreadable == []
    assert message.indexes == [0]
    assert message.events == [
        RawEvent(
            event_id=EVENT_ID,
            event="signup",
            actor="17",
            timestamp="2026-03-01T10:00:00Z",
            properties={"plan": "pro", "revenue": "12.5", "referrer": "ads", "beta": "true"},
        )
    ]


def test_batch_form_and_a_bare_model_name(catalog: Catalog) -> None:
    second = {**SIGNUP, "eventId": str(uuid.uuid4()), "event": "login"}
    message = read({"tenant": "acme", "model": "events", "events": [SIGNUP, second]}, catalog)
    assert message.batch
    assert message.model.qualified_name == "product.events"
    assert [e.event for e in message.events] == ["signup", "login"]
    assert message.indexes == [0, 1]


def test_read_events_pass_the_sinks_validation(catalog: Catalog) -> None:
    message = read({"tenant": "acme", "model": "product.events", "event": SIGNUP}, catalog)
    columns, rejected = validate_events(
        message.model,
        message.tenant,
        message.events,
        now=dt.datetime(2026, 3, 2, tzinfo=dt.UTC),
        limits=EventLimits(),
    )
    assert rejected == []
    assert len(columns) == 1


def test_an_event_without_id_gets_one_that_every_delivery_repeats(catalog: Catalog) -> None:
    anonymous = {key: value for key, value in SIGNUP.items() if key != "eventId"}
    document = {"tenant": "acme", "model": "product.events", "events": [anonymous, anonymous]}
    first = read(document, catalog)
    again = read(document, catalog)
    ids = [event.event_id for event in first.events]
    assert ids == [event.event_id for event in again.events]
    assert len(set(ids)) == 2  # two events of one message are two events
    assert all(uuid.UUID(text).version == 5 for text in ids)
    elsewhere = parse_message(encoded(document), catalog, MessageOrigin("analytics.events", 2, 42))
    assert isinstance(elsewhere, EventMessage)
    assert not set(ids) & {event.event_id for event in elsewhere.events}
    # An id the producer gave is kept as given.
    assert read({"tenant": "a", "model": "events", "event": SIGNUP}, catalog).events[
        0
    ].event_id == (EVENT_ID)


# --- messages dead-lettered whole ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "field", "reason"),
    [
        (None, "", "tombstone"),
        (b"\xff\xfe{}", "", "not UTF-8"),
        (b"{not json", "", "not valid JSON"),
        (b"[1, 2]", "", "must be a JSON object"),
        (b'"acme"', "", "must be a JSON object"),
        (
            encoded({"tenant": "acme", "model": "events", "event": {}, "colour": 1}),
            "colour",
            "unknown",
        ),
        (encoded({"model": "events", "event": SIGNUP}), "tenant", "required"),
        (encoded({"tenant": 7, "model": "events", "event": SIGNUP}), "tenant", "a string"),
        (encoded({"tenant": None, "model": "events", "event": SIGNUP}), "tenant", "required"),
        (encoded({"tenant": "", "model": "events", "event": SIGNUP}), "tenant", "required"),
        (encoded({"tenant": "x" * 129, "model": "events", "event": SIGNUP}), "tenant", "128"),
        (b'{"tenant": "a\\ud800", "model": "events", "event": {}}', "tenant", "Unicode"),
        (encoded({"tenant": "acme", "event": SIGNUP}), "model", "required"),
        (encoded({"tenant": "acme", "model": "", "event": SIGNUP}), "model", "required"),
        (encoded({"tenant": "acme", "model": "shop.orders", "event": SIGNUP}), "model", "unknown"),
        (encoded({"tenant": "acme", "model": "crm.deals", "event": SIGNUP}), "model", "no events"),
        (encoded({"tenant": "acme", "model": "events"}), "event", "required"),
        (
            encoded({"tenant": "acme", "model": "events", "event": SIGNUP, "events": [SIGNUP]}),
            "events",
            "not both",
        ),
        (encoded({"tenant": "acme", "model": "events", "events": SIGNUP}), "events", "array"),
        (encoded({"tenant": "acme", "model": "events", "events": []}), "events", "empty"),
    ],
)
def test_a_message_that_cannot_be_read_is_one_fault(
    value: bytes | None, field: str, reason: str, catalog: Catalog
) -> None:
    fault = parse_message(value, catalog, ORIGIN)
    assert isinstance(fault, MessageFault), fault
    assert fault.field == field
    assert reason in fault.reason
    assert fault.description == (f"{field}: {fault.reason}" if field else fault.reason)


def test_a_cdc_model_fault_names_the_event_models(catalog: Catalog) -> None:
    fault = parse_message(
        encoded({"tenant": "acme", "model": "deals", "event": SIGNUP}), catalog, ORIGIN
    )
    assert isinstance(fault, MessageFault)
    assert fault.reason.startswith("crm.deals is replicated from PostgreSQL")
    assert fault.reason.endswith("event models: product.events")


# --- events dead-lettered alone ------------------------------------------------------------------


def test_unreadable_events_are_faults_of_their_own(catalog: Catalog) -> None:
    value = (
        '{"tenant": "acme", "model": "product.events", "events": ['
        + ", ".join(
            [
                json.dumps(SIGNUP),
                '"signup"',
                '{"eventId": 5, "event": "x"}',
                '{"event": "x", "colour": "red"}',
                '{"event": "bad\\udc00", "actor": 1}',
                '{"event": "x", "actor": 1, "properties": {"k": ["ok", "\\ud83d"]}}',
                '{"event": "x", "actor": 1, "properties": {"\\ud800": "v"}}',
                '{"event": "ok", "actor": 2, "properties": {"smile": "\\ud83d\\ude00"}}',
            ]
        )
        + "]}"
    ).encode()
    message = parse_message(value, catalog, ORIGIN)
    assert isinstance(message, EventMessage)
    assert message.indexes == [0, 7]  # a surrogate pair is one character, and fine
    assert message.events[1].properties == {"smile": "\N{GRINNING FACE}"}
    faults = {fault.index: (fault.field, fault.reason) for fault in message.unreadable}
    assert faults.keys() == {1, 2, 3, 4, 5, 6}
    assert faults[1] == ("events[1]", "an event must be a JSON object")
    assert faults[2] == ("events[2].eventId", "must be a string")
    assert faults[3][0] == "events[3].colour"
    assert faults[4][0] == "events[4].event"
    assert faults[5][0] == "events[5].properties.k[1]"
    assert faults[6][0] == "events[6].properties.\\ud800"
    assert all("surrogate" in faults[index][1] for index in (4, 5, 6))


@pytest.mark.parametrize("depth", [500, 950, 990, 1_000, 1_010, 1_100, 5_000, 100_000])
def test_deep_nesting_is_read_or_refused_never_a_crash(depth: int, catalog: Catalog) -> None:
    # Around the recursion limit json.loads may succeed and the checks after it recurse deeper:
    # whichever part gives up, the message is read or a fault, never an exception.
    deep = "[" * depth + '"bottom"' + "]" * depth
    value = (
        '{"tenant": "a", "model": "events", "events": ['
        + json.dumps(SIGNUP)
        + ', {"event": "x", "actor": 1, "properties": {"k": '
        + deep
        + "}}]}"
    ).encode()
    parsed = parse_message(value, catalog, ORIGIN)
    if isinstance(parsed, MessageFault):
        assert "JSON" in parsed.reason
        return
    assert parsed.indexes[0] == 0
    for fault in parsed.unreadable:
        assert (fault.index, fault.field) == (1, "events[1].properties")
        assert fault.reason == "nested too deeply"
        assert isinstance(parsed.dead_letter_value(1, value), bytes)


def test_validation_rejections_name_the_event_in_the_message(catalog: Catalog) -> None:
    document = {
        "tenant": "acme",
        "model": "product.events",
        "events": [SIGNUP, "unreadable", {**SIGNUP, "timestamp": "yesterday"}],
    }
    message = read(document, catalog)
    assert message.indexes == [0, 2]
    # Validation numbers the events it was given; a second submission starts at position 1.
    fault = message.fault(Rejection(0, "timestamp", "not an RFC 3339 time"), first=1)
    assert (fault.index, fault.field) == (2, "events[2].timestamp")
    assert fault.description == "events[2].timestamp: not an RFC 3339 time"
    single = read({"tenant": "acme", "model": "product.events", "event": SIGNUP}, catalog)
    assert single.fault(Rejection(0, "properties.revenue", "too many places"), 0).field == (
        "event.properties.revenue"
    )
    assert single.fault(Rejection(0, "", "whole event"), 0).field == "event"


def test_an_events_dead_letter_is_a_message_of_it_alone(catalog: Catalog) -> None:
    document = {"tenant": "acme", "model": "events", "events": [SIGNUP, {"event": 1}]}
    message = read(document, catalog)
    letter = json.loads(message.dead_letter_value(1, encoded(document)))
    assert letter == {"tenant": "acme", "model": "events", "event": {"event": 1}}
    # Read again, it is the one event (so a fixed copy can be sent back as it is).
    again = parse_message(message.dead_letter_value(0, encoded(document)), catalog, ORIGIN)
    assert isinstance(again, EventMessage)
    assert not again.batch
    assert again.events == message.events[:1]
    original = encoded({"tenant": "acme", "model": "events", "event": {"event": 1}})
    single = read(json.loads(original), catalog)
    assert single.dead_letter_value(0, original) == original


def test_dead_letter_headers_mirror_the_cdc_workers() -> None:
    whole = DeadLetter(record(b"{"), b"{", "", "not valid JSON: Expecting value")
    assert whole.headers() == [
        ("reason", b"not valid JSON: Expecting value"),
        ("field", b""),
        ("source.topic", b"analytics.events"),
        ("source.partition", b"2"),
        ("source.offset", b"41"),
    ]
    one = DeadLetter(record(b"{}"), b"{}", "events[3].event", "events[3].event: bad\udc00", 3)
    headers = dict(one.headers())
    assert headers["source.index"] == b"3"
    assert headers["reason"] == b"events[3].event: bad\\udc00"  # said, never an encoding error


# --- settings ------------------------------------------------------------------------------------


def test_events_topic_settings() -> None:
    settings = Settings()
    assert settings.events_topic is None
    assert settings.events_group_id == "analytics-events"
    assert settings.events_dead_letter_topic == "analytics.events.dead-letter"
    on = Settings(events_topic="analytics.events", kafka_bootstrap_servers="127.0.0.1:9092")
    assert on.events_topic == "analytics.events"
    assert Settings(events_topic="").events_topic is None  # an empty variable is off


def test_events_topic_settings_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="needs kafka_bootstrap_servers"):
        Settings(events_topic="analytics.events")
    with pytest.raises(ValidationError, match="must differ"):
        Settings(
            events_topic="same",
            events_dead_letter_topic="same",
            kafka_bootstrap_servers="127.0.0.1:9092",
        )
    with pytest.raises(ValidationError, match="events_topic"):
        Settings(events_topic="no spaces", kafka_bootstrap_servers="127.0.0.1:9092")
    monkeypatch.setenv("ANALYTICS_EVENTS_TOPIC", "  ")
    assert Settings().events_topic is None
