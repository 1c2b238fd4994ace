"""Field names in requests -> catalog fields, and the SQL that reads each one.

A request names a model's declared field (``amount``) or, on an event model, a key of its
free-form property map (``properties.plan``). Both resolve to a ``FieldSpec``; only
``column_sql`` knows how a field is stored, so every compiler reads fields the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from service.catalog import FieldSpec, FieldType, Model
from service.errors import unknown_field, validation_error
from service.query.values import encode_text_parameter

MAX_PROPERTY_KEY_CHARS = 200

Bind = Callable[[str, str], str]
"""Binds a parameter text of a ClickHouse type and returns its placeholder."""


def resolve_field(model: Model, name: str, source: str) -> FieldSpec:
    """The field ``name`` of ``model``; a validation error naming ``source`` if there is none."""
    spec = model.fields.get(name)
    if spec is not None:
        return spec
    if model.events is not None:
        prefix = f"{model.events.properties}."
        if name.startswith(prefix):
            return _property(name, name[len(prefix) :], source)
    if name == model.tenant_column:
        raise validation_error(
            source,
            f"{source}: {name!r} is the tenant column; the tenant comes from the token and "
            "cannot be named in a request",
            "TENANT_COLUMN",
        )
    raise unknown_field(source, name[:200], model.qualified_name)


def _property(name: str, key: str, source: str) -> FieldSpec:
    if not key or len(key) > MAX_PROPERTY_KEY_CHARS:
        raise validation_error(
            source,
            f"{source}: a property key must have 1 to {MAX_PROPERTY_KEY_CHARS} characters",
            "INVALID_PROPERTY",
        )
    return FieldSpec(name, FieldType.STRING, nullable=True, property_key=key)


def column_sql(spec: FieldSpec, model: Model, bind: Bind, alias: str = "t") -> str:
    """The SQL reading ``spec`` from the row alias ``alias``: a column, or a property lookup.

    A property absent from an event reads as NULL (as a missing JSON key does in PostgreSQL's
    ``->>``), not as the empty string a map lookup gives; the key is a bound parameter, so no
    key changes the SQL's shape.
    """
    if spec.property_key is None:
        return f"{alias}.`{spec.name}`"
    if model.events is None:
        raise ValueError(f"{model.qualified_name} has no property map")
    keys = f"{alias}.`{model.events.key_column}`"
    values = f"{alias}.`{model.events.value_column}`"
    key = bind("String", encode_text_parameter(spec.property_key))
    return f"if(has({keys}, {key}), {values}[indexOf({keys}, {key})], NULL)"
