"""Checks on compiled SQL and rows for event tables, shared by the compilers' tests."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from service.catalog import Model
from service.query.compiler import CompiledQuery
from service.query.values import encode_text_parameter
from service.schema import arrow_type

_TENANT_FIRST = re.compile(r"t\.`tenant_id` = \{(p[0-9]+):String\}")


def assert_tenant_first(compiled: CompiledQuery, tenant: str) -> None:
    """Every WHERE of the query begins with the tenant condition, bound to the tenant, and is
    ANDed with everything after it: an OR at the clause's own level would let rows of any
    tenant through its other side."""
    sql = compiled.sql
    parts = sql.split(" WHERE ")
    assert len(parts) > 1, sql
    assert sql.count("WHERE") == len(parts) - 1, sql
    for part in parts[1:]:
        match = _TENANT_FIRST.match(part)
        assert match is not None, part[:120]
        assert compiled.parameters[match.group(1)] == encode_text_parameter(tenant)
        assert " OR " not in _top_level(part), part[:300]


def _top_level(clause: str) -> str:
    """The text of a WHERE clause at its own parenthesis depth, up to where the clause ends."""
    kept: list[str] = []
    depth = 0
    for char in clause:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                break
        elif depth == 0:
            kept.append(char)
    return "".join(kept).split(" GROUP BY ")[0]


def event_arrow(model: Model, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows of an event table (every column, tenant and version included) as Arrow, written
    by the test rather than by the sink."""
    columns: dict[str, pa.Array] = {"tenant_id": pa.array([r["tenant_id"] for r in rows])}
    for name, spec in model.fields.items():
        columns[name] = pa.array([r[name] for r in rows], arrow_type(spec))
    for name in ("properties_keys", "properties_values"):
        columns[name] = pa.array([r[name] for r in rows], pa.list_(pa.string()))
    columns["_version"] = pa.array([r["_version"] for r in rows], pa.uint64())
    columns["_is_deleted"] = pa.array([r["_is_deleted"] for r in rows], pa.uint8())
    return pa.table(columns)
