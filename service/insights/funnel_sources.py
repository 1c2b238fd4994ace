"""Where a funnel step's events come from: a model, the field that dates them, the actor's field.

A step (or an exclusion) on the request's model needs none of it when that model is an event
model: its events are dated by their timestamp and belong to their actor. A step on another
model names it (``model``); a step on a replicated model names the timestamp field that dates
its rows (``dateField``: ``crm.deals`` by ``created_at`` for "deal created", by ``closed_at``
for "deal won"), and the row's actor is its primary key unless ``actor`` names a relation (or a
field) leading to the funnel's actors (``contact`` for a deal). Every step's actors must be the
same kind of key as the first step's: a contact id everywhere, never a deal id beside a contact
id. Steps sharing (model, date field, actor field) share one *source*: one scan of the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.catalog import Catalog, FieldType, Model
from service.errors import validation_error
from service.query.actor_keys import actor_field

ACTOR_MISMATCH = "ACTOR_MISMATCH"


@dataclass(frozen=True)
class StepOrigin:
    """Where one step's (or exclusion's) events come from, as resolved from the catalog."""

    model: Model
    date_field: str
    actor_field: str
    actors: str
    """What the actor values are keys of (``crm.contacts``), to compare steps with."""

    @property
    def key(self) -> tuple[str, str, str]:
        """The source this origin reads: steps with equal keys share one scan."""
        return (self.model.qualified_name, self.date_field, self.actor_field)

    @property
    def is_event_source(self) -> bool:
        """Whether rows are events dated by their own timestamp (their id orders ties)."""
        roles = self.model.events
        return roles is not None and self.date_field == roles.timestamp


@dataclass
class FunnelSource:
    """One scan: the origin shared by some steps and exclusions (their indexes)."""

    origin: StepOrigin
    steps: list[int] = field(default_factory=list)
    exclusions: list[int] = field(default_factory=list)


def step_origin(  # noqa: PLR0917 (a step's every part, and where it sits in the request)
    catalog: Catalog,
    request_model: Model,
    model_name: str,
    date_field: str,
    actor: str,
    event: str,
    source: str,
) -> StepOrigin:
    """Resolve one step's model, date field and actor field; errors name ``source``'s field."""
    model = request_model
    if model_name:
        matches = catalog.find(model_name[:200])
        if len(matches) != 1:
            raise validation_error(
                f"{source}.model",
                f"{source}.model: {model_name[:200]!r} is "
                + ("ambiguous" if matches else "not a model of the catalog"),
                "UNKNOWN_MODEL",
            )
        model = matches[0]
    roles = model.events
    if event and roles is None:
        raise validation_error(
            f"{source}.event",
            f"{source}.event: {model.qualified_name} is not an event model; filter its rows "
            "instead",
            "NOT_AN_EVENT_MODEL",
        )
    dated_by = date_field or (roles.timestamp if roles is not None else "")
    if not dated_by:
        raise validation_error(
            f"{source}.dateField",
            f"{source}.dateField: a step on the replicated model {model.qualified_name} names "
            "the timestamp field that dates it, such as created_at",
            "REQUIRED",
        )
    spec = model.fields.get(dated_by)
    if spec is None or spec.type is not FieldType.TIMESTAMP or spec.property_key is not None:
        raise validation_error(
            f"{source}.dateField",
            f"{source}.dateField: {dated_by[:100]!r} is not a timestamp field of "
            f"{model.qualified_name}",
            "INVALID_DATE_FIELD",
        )
    holder, actors = actor_field(model, actor, source)
    return StepOrigin(model, dated_by, holder, actors)


def same_actors(first: StepOrigin, other: StepOrigin, source: str) -> None:
    """Refuse a step whose actors are not the first step's kind of key."""
    if other.actors != first.actors or (
        other.model.fields[other.actor_field].type is not first.model.fields[first.actor_field].type
    ):
        raise validation_error(
            f"{source}.actor",
            f"{source}.actor: this step's actors are keys of {other.actors}, the first step's "
            f"of {first.actors}; name the relation of {other.model.qualified_name} that leads "
            f"to {first.actors}",
            ACTOR_MISMATCH,
        )
