"""Field names in requests -> catalog fields, and the SQL that reads each one.

A request names a model's declared field (``amount``), on an event model a key of its
free-form property map (``properties.plan``), or a related model's field through the catalog's
relations (``contact.country``, ``deal.contact.country``). All resolve to a ``FieldSpec``; only
``column_sql`` knows how a field is stored (and which joined table holds it), so every compiler
reads fields the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from service.catalog import MAX_RELATION_HOPS, FieldSpec, FieldType, Model
from service.errors import unknown_field, validation_error
from service.query.filters import Filter, mentioned_fields
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
    if "." in name:
        return _related(model, name, source)
    if name == model.tenant_column:
        raise validation_error(
            source,
            f"{source}: {name!r} is the tenant column; the tenant comes from the token and "
            "cannot be named in a request",
            "TENANT_COLUMN",
        )
    raise unknown_field(source, name[:200], model.qualified_name)


def _related(model: Model, name: str, source: str) -> FieldSpec:
    """A field of a related model, reached by following relations from ``model``."""
    segments = name.split(".")
    hops = segments[:-1]
    if len(hops) > MAX_RELATION_HOPS:
        raise validation_error(
            source,
            f"{source}: {name[:200]!r} follows {len(hops)} relations; at most "
            f"{MAX_RELATION_HOPS} are allowed",
            "TOO_MANY_HOPS",
        )
    current = model
    for index, hop in enumerate(hops):
        relation = current.relations.get(hop)
        if relation is None:
            walked = ".".join(segments[:index])
            where = f"{walked!r} ({current.qualified_name})" if walked else current.qualified_name
            if hop in current.fields:
                raise validation_error(
                    source,
                    f"{source}: {hop!r} is a field of {where}, not a relation "
                    f"(relations: {', '.join(current.relations) or 'none'})",
                    "NOT_A_RELATION",
                )
            raise validation_error(
                source,
                f"{source}: {where} has no relation {hop[:60]!r} "
                f"(relations: {', '.join(current.relations) or 'none'})",
                "UNKNOWN_RELATION",
            )
        current = relation.target
    last = segments[-1]
    spec = current.fields.get(last)
    if spec is None:
        if last == current.tenant_column:
            raise validation_error(
                source,
                f"{source}: {last!r} is the tenant column of {current.qualified_name}; the "
                "tenant comes from the token and cannot be named in a request",
                "TENANT_COLUMN",
            )
        raise unknown_field(source, name[:200], current.qualified_name)
    return dataclasses.replace(
        spec, name=name, nullable=True, relation_path=tuple(hops), column=spec.name
    )


def join_alias(path: tuple[str, ...]) -> str:
    """The table alias of the joined model reached by ``path`` (``j_7contact`` for contact).

    Length-prefixed names make every path's alias distinct (``a_b`` + ``c`` is not ``a`` +
    ``b_c``), and no alias is ``t``, the requested model's own.
    """
    return "j_" + "_".join(f"{len(hop)}{hop}" for hop in path)


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
    if spec.relation_path:
        return f"{join_alias(spec.relation_path)}.`{spec.column_name}`"
    if spec.property_key is None:
        return f"{alias}.`{spec.name}`"
    if model.events is None:
        raise ValueError(f"{model.qualified_name} has no property map")
    keys = f"{alias}.`{model.events.key_column}`"
    values = f"{alias}.`{model.events.value_column}`"
    key = bind("String", encode_text_parameter(spec.property_key))
    return f"if(has({keys}, {key}), {values}[indexOf({keys}, {key})], NULL)"


def fields_read(model: Model, filter_lists: Sequence[Sequence[Filter]]) -> list[FieldSpec]:
    """Every field the parsed filters read (related ones make the joins), each once, in order."""
    found: dict[str, FieldSpec] = {}
    for parsed in filter_lists:
        for name in sorted(mentioned_fields(list(parsed))):
            found.setdefault(name, resolve_field(model, name, "filters"))
    return list(found.values())
