"""SegmentDefinition: what a named actor set is, validated against the catalog.

* **behavioral**: the actors of an event model's events (of ``event``, if given, passing
  ``filters``) who did at least ``minCount`` of them within the last ``window`` before the query
  runs (``30d`` by default; ``<n>`` with ``s m h d w``, at most 365 days).
* **properties**: the rows of a replicated model passing ``filters``; the actors are their
  primary keys (``crm.contacts`` with ``{"country": "eq.DE"}``: German contacts).

A segment's actors are keys of one model (``crm.contacts`` for the demo's events, whose actor
relates to the contacts): it applies to any model holding such keys (see
``service.segments.condition``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.catalog import ActorSegment, Catalog, Model
from service.errors import validation_error
from service.insights.funnels import parse_window
from service.query.actor_keys import actor_field
from service.query.compiler import (
    SEGMENT_KEY,
    SEGMENT_NAME,
    ParameterBuilder,
    filter_conditions,
    resolve_model,
)
from service.query.filters import parse_filters

KINDS = ("behavioral", "properties")
DEFAULT_WINDOW = "30d"
MAX_MIN_COUNT = 1_000_000
MAX_DESCRIPTION_CHARS = 500


@dataclass(frozen=True)
class SegmentDefinition:
    """One segment as stored; ``validate_segment`` checks it against the catalog."""

    name: str
    kind: str
    model: str
    event: str = ""
    filters: Mapping[str, str] = field(default_factory=dict)
    min_count: int = 0
    window: str = ""
    description: str = ""

    def to_json(self) -> str:
        """The stored form (keys sorted, so equal definitions store equal text)."""
        return json.dumps(
            {
                "name": self.name,
                "kind": self.kind,
                "model": self.model,
                "event": self.event,
                "filters": dict(self.filters),
                "min_count": self.min_count,
                "window": self.window,
                "description": self.description,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SegmentDefinition:
        """A stored definition."""
        data: dict[str, Any] = json.loads(text)
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            model=str(data["model"]),
            event=str(data.get("event", "")),
            filters={str(k): str(v) for k, v in data.get("filters", {}).items()},
            min_count=int(data.get("min_count", 0)),
            window=str(data.get("window", "")),
            description=str(data.get("description", "")),
        )


def validate_segment(definition: SegmentDefinition, catalog: Catalog) -> SegmentDefinition:
    """The definition with its defaults filled in; AnalyticsError naming the field otherwise."""
    if not SEGMENT_NAME.fullmatch(definition.name):
        raise validation_error(
            "name",
            f"name: {definition.name[:80]!r} is not a segment name: a lower-case letter, then "
            "up to 63 lower-case letters, digits or underscores",
            "INVALID_NAME",
        )
    if definition.kind not in KINDS:
        raise validation_error(
            "kind",
            f"kind: {definition.kind[:40]!r} is not one of {', '.join(KINDS)}",
            "INVALID_VALUE",
        )
    if len(definition.description) > MAX_DESCRIPTION_CHARS:
        raise validation_error("description", f"description: at most {MAX_DESCRIPTION_CHARS} chars")
    model = resolve_model(catalog, definition.model)
    if SEGMENT_KEY in definition.filters:
        raise validation_error(
            f"filters.{SEGMENT_KEY}",
            f"filters.{SEGMENT_KEY}: a segment is not defined by another segment",
            "NESTED_SEGMENT",
        )
    # Compiled once so that each field is resolved (and named in errors) as written.
    filter_conditions(parse_filters(definition.filters), model, ParameterBuilder(), "UTC")
    if definition.kind == "properties":
        return _properties(definition, model)
    return _behavioral(definition, model)


def resolve_segment(definition: SegmentDefinition, catalog: Catalog) -> ActorSegment:
    """A stored ``definition`` against today's catalog (which may have changed since)."""
    valid = validate_segment(definition, catalog)
    model = resolve_model(catalog, valid.model)
    holder, actors = actor_field(model, "", "segment")
    window = parse_window(valid.window) if valid.kind == "behavioral" else None
    return ActorSegment(
        valid.name,
        valid.kind,
        model,
        holder,
        actors,
        dict(valid.filters),
        valid.event,
        valid.min_count,
        int(window.total_seconds()) if window is not None else 0,
    )


def _behavioral(definition: SegmentDefinition, model: Model) -> SegmentDefinition:
    if model.events is None:
        raise validation_error(
            "model",
            f"model: {model.qualified_name} is not an event model; a behavioral segment counts "
            "events (a properties segment reads a replicated model)",
            "NOT_AN_EVENT_MODEL",
        )
    count = definition.min_count or 1
    if not 1 <= count <= MAX_MIN_COUNT:
        raise validation_error("minCount", f"minCount: from 1 to {MAX_MIN_COUNT}", "INVALID_VALUE")
    window = definition.window or DEFAULT_WINDOW
    parse_window(window)
    return SegmentDefinition(
        definition.name,
        definition.kind,
        model.qualified_name,
        definition.event,
        dict(definition.filters),
        count,
        window,
        definition.description,
    )


def _properties(definition: SegmentDefinition, model: Model) -> SegmentDefinition:
    if model.events is not None or len(model.primary_key) != 1:
        raise validation_error(
            "model",
            f"model: {model.qualified_name} is not a replicated model with a one-column key; a "
            "properties segment selects such rows",
            "INVALID_MODEL",
        )
    for name, given in (
        ("event", definition.event),
        ("minCount", definition.min_count),
        ("window", definition.window),
    ):
        if given:
            raise validation_error(name, f"{name}: only for a behavioral segment")
    return SegmentDefinition(
        definition.name,
        definition.kind,
        model.qualified_name,
        filters=dict(definition.filters),
        description=definition.description,
    )
