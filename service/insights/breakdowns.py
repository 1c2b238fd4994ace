"""The breakdown field and limit every insight with a breakdown reads the same way.

A breakdown is a field of the request's model, a related path or ``properties.<key>``, never a
timestamp or date (too many values to rank); the top ``breakdownLimit`` values (25 by default,
at most 1 000) keep their own lines or tables and the rest are ``Other``.
"""

from __future__ import annotations

from service.catalog import FieldSpec, Model
from service.errors import validation_error
from service.query.field_paths import resolve_field

DEFAULT_BREAKDOWN_LIMIT = 25
MAX_BREAKDOWN_LIMIT = 1000


def breakdown_field(model: Model, name: str) -> FieldSpec | None:
    """The field ``name`` (the request's ``breakdown``) names, or None without one."""
    if not name:
        return None
    spec = resolve_field(model, name, "breakdown")
    if spec.type.is_temporal:
        raise validation_error(
            "breakdown",
            "breakdown: a timestamp or date field has too many values; break down by a category",
            "INVALID_BREAKDOWN",
        )
    return spec


def breakdown_limit(limit: int, breakdown: str) -> int:
    """How many values keep their own results (the request's ``breakdownLimit``, or 25)."""
    if limit and not breakdown:
        raise validation_error("breakdownLimit", "breakdownLimit: only with a breakdown")
    chosen = limit or DEFAULT_BREAKDOWN_LIMIT
    if not 1 <= chosen <= MAX_BREAKDOWN_LIMIT:
        raise validation_error(
            "breakdownLimit",
            f"breakdownLimit: between 1 and {MAX_BREAKDOWN_LIMIT}",
            "INVALID_VALUE",
        )
    return chosen
