"""Events in JSON, as REST bodies and the events Kafka topic carry them.

The JSON form of an event is the proto3 JSON of ``analytics.v1.Event``, made forgiving where
producers differ: ``eventId`` or ``event_id``, an integer or text ``actor``, and property values
of any JSON type (numbers keep their JSON text, booleans are ``true``/``false``, objects and
arrays their compact JSON; ``null`` leaves the property out). A body is a JSON array of events,
or NDJSON (one event per line).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from service.events.validation import EventError, RawEvent

JSON = "application/json"
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
_KEYS = {
    "eventId": "event_id",
    "event_id": "event_id",
    "event": "event",
    "actor": "actor",
    "timestamp": "timestamp",
    "properties": "properties",
}


class JsonNumber:
    """A JSON number with a fraction or an exponent, kept as its own text.

    Read as a float, ``1.10`` became ``1.1``, ``1e2`` ``100.0`` and ``1e400`` ``inf``; a
    property keeps the text the producer wrote. Not a ``str``: where a field must be text (a
    tenant, an event name) a number is still refused. Integers are Python ints, whose text is
    theirs already.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        """Keep ``text``, a JSON number literal."""
        self.text = text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str) -> Any:
    """``json.loads`` keeping fractional numbers' text (``JsonNumber``).

    NaN and Infinity, which are not JSON, are refused.
    """
    return json.loads(text, parse_float=JsonNumber, parse_constant=_refuse_constant)


def dumps(value: Any) -> str:
    """Compact JSON of what ``loads`` gives (numbers as their text); RecursionError if too deep."""
    if isinstance(value, JsonNumber):
        return value.text
    # Loops, not generator expressions: one frame per level of nesting, as json.dumps takes.
    parts: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            parts.append(f"{json.dumps(str(key), ensure_ascii=False)}:{dumps(item)}")
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(dumps, value)) + "]"
    return json.dumps(value, ensure_ascii=False)


class BodyError(ValueError):
    """The body as a whole cannot be read (not JSON, not an array); ``field`` names where."""

    def __init__(self, field_name: str, reason: str) -> None:
        """Name where reading stopped and why."""
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


def read_body(content_type: str, body: bytes) -> list[RawEvent | EventError]:
    """Every event of a REST body, in order; an event that cannot be read is its EventError."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("body", "not UTF-8 text") from None
    if content_type in NDJSON_TYPES:
        items: list[Any] = []
        # Lines end at \n only (a \r before it is JSON whitespace): str.splitlines also cuts
        # at U+2028, U+0085 and others, which JSON strings may hold as they are.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                items.append(loads(line))
            except (ValueError, RecursionError) as exc:
                items.append(EventError("", f"line {number} is not valid JSON: {exc}"))
    elif content_type == JSON:
        try:
            document = loads(text)
        except (ValueError, RecursionError) as exc:
            raise BodyError("body", f"not valid JSON: {exc}") from None
        if not isinstance(document, list):
            raise BodyError("body", "must be a JSON array of events (or send NDJSON)")
        items = document
    else:
        raise BodyError(
            "Content-Type",
            f"send events as {JSON} (an array) or application/x-ndjson, "
            f"not {content_type or 'nothing'}",
        )
    return [item if isinstance(item, EventError) else _event_or_error(item) for item in items]


def _event_or_error(item: Any) -> RawEvent | EventError:
    try:
        return event_from_json(item)
    except EventError as error:
        return error


def event_from_json(item: Any) -> RawEvent:
    """One event from its JSON object; EventError naming the property that cannot be read."""
    if not isinstance(item, dict):
        raise EventError("", "an event must be a JSON object")
    where = lone_surrogate_path(item, "")
    if where is not None:
        raise EventError(where, "not valid Unicode text (a lone surrogate \\u escape)")
    values: dict[str, Any] = {}
    for key, value in item.items():
        name = _KEYS.get(key)
        if name is None:
            raise EventError(
                str(key)[:100],
                "unknown property; an event has eventId, event, actor, timestamp and properties",
            )
        if name in values:
            raise EventError(str(key), "given twice")
        values[name] = value
    return RawEvent(
        event_id=_text(values.get("event_id"), "eventId"),
        event=_text(values.get("event"), "event"),
        actor=_actor(values.get("actor")),
        timestamp=_text(values.get("timestamp"), "timestamp"),
        properties=_properties(values.get("properties")),
    )


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EventError(where, "must be a string")
    return value


def _actor(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EventError("actor", "must be a string or an integer")
    return str(value)


def _properties(value: Any) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventError("properties", "must be a JSON object")
    texts: dict[str, str] = {}
    for key, item in value.items():
        if item is None:
            continue
        if isinstance(item, str):
            texts[key] = item
        elif isinstance(item, bool):
            texts[key] = "true" if item else "false"
        else:
            try:
                texts[key] = dumps(item)
            except RecursionError:
                raise EventError("properties", "nested too deeply") from None
    return texts


def lone_surrogate_path(value: Any, where: str) -> str | None:
    r"""The path of the first text under ``value`` that UTF-8 cannot encode, if any.

    JSON's ``\ud800`` escapes decode to text that cannot be written; one such event in a flush
    would fail every caller's events of that flush (and a topic consumer would retry it forever).
    """
    if isinstance(value, str):
        return None if is_encodable(value) else where
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if not is_encodable(key):
                return path.encode("utf-8", "backslashreplace").decode()
            found = lone_surrogate_path(item, path)
            if found is not None:
                return found
    if isinstance(value, list):
        for position, item in enumerate(value):
            found = lone_surrogate_path(item, f"{where}[{position}]")
            if found is not None:
                return found
    return None


def is_encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode the engine can store (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
