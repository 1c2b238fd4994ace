"""The events topic's messages, read: one message -> its events, or why it cannot be written.

The pure half of ``service/events/topic_consumer.py`` (whose docstring gives the message format
and what becomes of each fault): no I/O, no clock. ``parse_message`` reads a message's value
against the catalog; ``DeadLetter`` is what the consumer sends for a fault, with the CDC worker's
headers.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.structs import ConsumerRecord

from service.catalog import Catalog, Model
from service.errors import AnalyticsError
from service.events.json_events import dumps, event_from_json, is_encodable, loads
from service.events.validation import EventError, RawEvent, Rejection
from service.query.compiler import resolve_model
from service.tenants import MAX_TENANT_ID_LENGTH

MESSAGE_KEYS = ("tenant", "model", "event", "events")
#: Namespace of the event ids derived for events sent without one (a fixed, arbitrary UUID).
DERIVED_ID_NAMESPACE = uuid.UUID("5b0d6a52-3a8e-4c55-9a4e-2f1c0e7d9b31")


@dataclass(frozen=True)
class MessageOrigin:
    """Where a message was consumed from."""

    topic: str
    partition: int
    offset: int

    def event_id(self, index: int) -> str:
        """The id of the message's ``index``-th event sent without one: same on every delivery."""
        name = f"{self.topic}/{self.partition}/{self.offset}/{index}"
        return str(uuid.uuid5(DERIVED_ID_NAMESPACE, name))


@dataclass(frozen=True)
class MessageFault:
    """Why a whole message is dead-lettered: the field in its JSON naming ('' for all of it)."""

    field: str
    reason: str

    @property
    def description(self) -> str:
        """The reason with the field in front, as the ``reason`` header says it."""
        return f"{self.field}: {self.reason}" if self.field else self.reason


@dataclass(frozen=True)
class EventFault:
    """Why the message's ``index``-th event is dead-lettered; ``field`` in the message's naming."""

    index: int
    field: str
    reason: str

    @property
    def description(self) -> str:
        """The reason with the field in front, as the ``reason`` header says it."""
        return f"{self.field}: {self.reason}"


@dataclass(frozen=True)
class EventMessage:
    """A readable message: its tenant and model, its readable events, and the unreadable ones."""

    tenant: str
    model: Model
    model_reference: str
    """The model as the message named it (dead letters repeat it)."""
    batch: bool
    """Sent with ``events`` (a list) rather than ``event``."""
    events: list[RawEvent]
    indexes: list[int]
    """Each readable event's position in the message."""
    originals: list[Any]
    """Every event's JSON, by position."""
    unreadable: list[EventFault]

    def field(self, index: int, name: str) -> str:
        """``name`` (an event's field, '' for the event) in the message's JSON naming."""
        where = f"events[{index}]" if self.batch else "event"
        return f"{where}.{name}" if name else where

    def fault(self, rejection: Rejection, first: int) -> EventFault:
        """The fault of a validation rejection of the events submitted from position ``first``."""
        index = self.indexes[first + rejection.index]
        return EventFault(index, self.field(index, rejection.field), rejection.reason)

    def dead_letter_value(self, index: int, value: bytes) -> bytes:
        """What the dead letter of the ``index``-th event carries: a message of it alone.

        ``value`` is the message as it came, which is that already in the ``event`` form.
        """
        if not self.batch:
            return value
        alone = {"tenant": self.tenant, "model": self.model_reference}
        alone["event"] = self.originals[index]
        try:
            return dumps(alone).encode()
        except RecursionError:
            return value  # an event nested too deeply to write out again: its whole message


def parse_message(
    value: bytes | None, catalog: Catalog, origin: MessageOrigin
) -> EventMessage | MessageFault:
    """Read one message of the events topic (module docstring); pure."""
    if value is None:
        return MessageFault("", "no value (a tombstone); a message carries tenant, model, events")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return MessageFault("", "not UTF-8 text")
    try:
        document = loads(text)
    except (ValueError, RecursionError) as exc:
        return MessageFault("", f"not valid JSON: {str(exc)[:200]}")
    if not isinstance(document, dict):
        return MessageFault("", "must be a JSON object with tenant, model and event or events")
    for key in document:
        if key not in MESSAGE_KEYS:
            return MessageFault(
                str(key)[:100], "unknown property; a message has tenant, model, event or events"
            )
    tenant = document.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        return MessageFault("tenant", f"required, a string of 1 to {MAX_TENANT_ID_LENGTH} chars")
    # The rule of a token's tenant claim: any text the engine can store, at most 128 characters.
    if len(tenant) > MAX_TENANT_ID_LENGTH:
        return MessageFault("tenant", f"at most {MAX_TENANT_ID_LENGTH} characters")
    if not is_encodable(tenant):
        return MessageFault("tenant", "not valid Unicode text (a lone surrogate \\u escape)")
    reference = document.get("model")
    if not isinstance(reference, str) or not reference:
        return MessageFault("model", "required, a string such as product.events")
    model = _event_model(catalog, reference)
    if isinstance(model, MessageFault):
        return model
    events = _events_of(document)
    if isinstance(events, MessageFault):
        return events
    items, batch = events
    message = EventMessage(tenant, model, reference, batch, [], [], items, [])
    for index, item in enumerate(items):
        try:
            raw = _readable_event(item)
        except EventError as error:
            message.unreadable.append(
                EventFault(index, message.field(index, error.field), error.reason)
            )
            continue
        if not raw.event_id:
            raw = dataclasses.replace(raw, event_id=origin.event_id(index))
        message.events.append(raw)
        message.indexes.append(index)
    return message


def _event_model(catalog: Catalog, reference: str) -> Model | MessageFault:
    try:
        model = resolve_model(catalog, reference)
    except AnalyticsError as error:
        return MessageFault("model", error.message.removeprefix("model: "))
    if not model.is_events:
        names = ", ".join(m.qualified_name for m in catalog.event_models()) or "none"
        return MessageFault(
            "model",
            f"{model.qualified_name} is replicated from PostgreSQL and takes no events; "
            f"event models: {names}",
        )
    return model


def _events_of(document: Mapping[str, Any]) -> tuple[list[Any], bool] | MessageFault:
    """The message's events and whether they came as a list (``events``)."""
    if "event" in document and "events" in document:
        return MessageFault("events", "send event (one) or events (a list), not both")
    if "events" in document:
        items = document["events"]
        if not isinstance(items, list):
            return MessageFault("events", "must be a JSON array of events")
        if not items:
            return MessageFault("events", "empty; a message carries at least one event")
        return items, True
    if "event" not in document:
        return MessageFault("event", "required: event (one event) or events (a list)")
    return [document["event"]], False


def _readable_event(item: Any) -> RawEvent:
    """``event_from_json``, with JSON nested past Python's recursion limit an event fault."""
    try:
        return event_from_json(item)
    except RecursionError:
        raise EventError("properties", "nested too deeply") from None


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter to send: what it carries and why."""

    record: ConsumerRecord[bytes, bytes]
    value: bytes | None
    field: str
    reason: str
    index: int | None = None
    """The event's position in its message; None for a whole message."""

    def headers(self) -> list[tuple[str, bytes]]:
        """The CDC worker's dead-letter headers, plus ``field`` and an event's ``source.index``."""
        headers = [
            ("reason", _header(self.reason)),
            ("field", _header(self.field)),
            ("source.topic", _header(self.record.topic)),
            ("source.partition", str(self.record.partition).encode()),
            ("source.offset", str(self.record.offset).encode()),
        ]
        if self.index is not None:
            headers.append(("source.index", str(self.index).encode()))
        return headers


def _header(text: str) -> bytes:
    # Reasons quote the message, which may hold lone surrogates: never fail to say why.
    return text.encode("utf-8", "backslashreplace")


def event_dead_letter(
    record: ConsumerRecord[bytes, bytes], message: EventMessage, fault: EventFault
) -> DeadLetter:
    """The dead letter of one event of ``message``: its own message, its fault."""
    value = message.dead_letter_value(fault.index, record.value or b"")
    return DeadLetter(record, value, fault.field, fault.description, fault.index)
