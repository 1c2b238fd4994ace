"""Which field of a model holds an actor, and what the actor values are keys of.

Funnels tie steps of several models to one actor, and segments apply to any model holding their
actors' keys; both compare *what the values are keys of*: ``crm.contacts`` for a contact's own
id, a deal's ``contact_id`` (its relation ``contact`` targets the contacts) and the demo events'
actor (``contact_id``, related to the contacts too).
"""

from __future__ import annotations

from service.catalog import Model
from service.errors import validation_error


def actor_field(model: Model, actor: str, source: str) -> tuple[str, str]:
    """(the field holding a row's actor, what its values are keys of); errors name ``source``.

    ``actor``: a relation or field name, or empty for the model's default (an event model's
    actor, a replicated model's one-column primary key).
    """
    roles = model.events
    if actor in model.relations:
        relation = model.relations[actor]
        return relation.field, relation.target.qualified_name
    if actor:
        spec = model.fields.get(actor)
        if spec is None or spec.property_key is not None:
            raise validation_error(
                f"{source}.actor",
                f"{source}.actor: {actor[:100]!r} is neither a relation nor a field of "
                f"{model.qualified_name}",
                "UNKNOWN_FIELD",
            )
        name = actor
    elif roles is not None:
        name = roles.actor
    elif len(model.primary_key) == 1:
        name = model.primary_key[0]
    else:
        raise validation_error(
            f"{source}.actor",
            f"{source}.actor: {model.qualified_name} has a composite key; name the relation "
            "or field holding the actor",
            "REQUIRED",
        )
    for relation in model.relations.values():
        if relation.field == name:
            return name, relation.target.qualified_name
    if model.primary_key == (name,) and roles is None:
        return name, model.qualified_name
    return name, f"{model.qualified_name}.{name}"


def holder_of(model: Model, actors: str, source: str) -> str:
    """The field of ``model`` holding keys of ``actors``; errors name ``source``.

    The model's default actor field if its values are such keys, else the one relation of
    ``model`` that targets ``actors``.
    """
    own, own_actors = actor_field(model, "", source) if _has_default(model) else ("", "")
    if own and own_actors == actors:
        return own
    fields = sorted(r.field for r in model.relations.values() if r.target.qualified_name == actors)
    if len(fields) == 1:
        return fields[0]
    raise validation_error(
        source,
        f"{source}: {model.qualified_name} "
        + (
            f"has several relations to {actors} ({', '.join(fields)})"
            if fields
            else f"holds no keys of {actors}, the segment's actors"
        ),
        "ACTOR_MISMATCH",
    )


def _has_default(model: Model) -> bool:
    return model.events is not None or len(model.primary_key) == 1
