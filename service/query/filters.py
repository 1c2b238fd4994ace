"""The PostgREST filter grammar: ``eq.x``, ``not.in.(a,"b,c")``, ``is.null``, ``and``/``or``.

Parsing only checks the grammar; whether a field exists and takes the operator is the compiler's
business. Values stay text here and are typed against the catalog later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.errors import AnalyticsError, validation_error

COMPARISONS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike"})
OPERATORS = COMPARISONS | {"in", "is"}
IS_VALUES = frozenset({"null", "true", "false"})
JUNCTIONS = frozenset({"and", "or"})
MAX_DEPTH = 8
MAX_CONDITIONS = 200
MAX_IN_VALUES = 1000


@dataclass(frozen=True)
class Condition:
    """``field operator values``, possibly negated; ``source`` is the request path for errors."""

    field: str
    operator: str
    values: tuple[str, ...]
    negated: bool
    source: str


@dataclass(frozen=True)
class Junction:
    """``and``/``or`` of several filters, possibly negated."""

    kind: str
    children: tuple[Filter, ...]
    negated: bool
    source: str


Filter = Condition | Junction


def parse_filters(filters: Mapping[str, str], source_prefix: str = "filters") -> list[Filter]:
    """Parse every entry of the request's ``filters`` map, in key order.

    ``source_prefix``: where the map sits in the request (``steps[2].filters``), so that errors
    name the entry as the caller wrote it.
    """
    parsed: list[Filter] = []
    budget = [MAX_CONDITIONS]
    for key in sorted(filters):
        source = f"{source_prefix}.{key}"[:240]
        value = filters[key]
        negated, kind = _strip_not(key)
        if kind in JUNCTIONS:
            parsed.append(_parse_junction(kind, value, negated, source, 1, budget))
        else:
            parsed.append(_parse_condition(key, value, source, budget, in_tree=False))
    return parsed


def mentioned_fields(filters: list[Filter]) -> set[str]:
    """Every field name a filter tree refers to."""
    names: set[str] = set()
    for item in filters:
        if isinstance(item, Condition):
            names.add(item.field)
        else:
            names |= mentioned_fields(list(item.children))
    return names


def _strip_not(text: str) -> tuple[bool, str]:
    if text.startswith("not."):
        return True, text[4:]
    return False, text


def _parse_condition(
    field: str, expression: str, source: str, budget: list[int], *, in_tree: bool
) -> Condition:
    """One condition; as in PostgREST, quotes delimit a value only inside an and/or tree.

    A top-level value runs to the end of the text, quotes included (PostgREST's ``pSingleVal``),
    so ``eq."quoted"`` matches the seven characters ``"quoted"``; inside a tree a value ends at
    the next comma or parenthesis unless it is double-quoted (``pLogicSingleVal``).
    """
    budget[0] -= 1
    if budget[0] < 0:
        raise _error(source, f"too many conditions (at most {MAX_CONDITIONS})")
    negated, rest = _strip_not(expression)
    operator, dot, operand = rest.partition(".")
    if operator == "not":
        raise _error(source, "not. may appear only once, before the operator")
    if operator not in OPERATORS or not dot:
        raise _error(
            source,
            f"expected operator.value with an operator among {sorted(OPERATORS)}, "
            f"optionally after not., got {_preview(expression)}",
        )
    if operator == "in":
        values = tuple(_parse_list(operand, source))
        if not values:
            raise _error(source, "in.() needs at least one value")
        if len(values) > MAX_IN_VALUES:
            raise _error(source, f"in.() takes at most {MAX_IN_VALUES} values")
        return Condition(field, operator, values, negated, source)
    if operator == "is":
        if operand not in IS_VALUES:
            raise _error(source, f"is. takes null, true or false, got {_preview(operand)}")
        return Condition(field, operator, (operand,), negated, source)
    value = _unquote(operand, source) if in_tree else operand
    return Condition(field, operator, (value,), negated, source)


def _parse_junction(  # noqa: PLR0917 (private recursion)
    kind: str, text: str, negated: bool, source: str, depth: int, budget: list[int]
) -> Junction:
    if depth > MAX_DEPTH:
        raise _error(source, f"and/or nest at most {MAX_DEPTH} deep")
    items = _parse_list(text, source, keep_quotes=True)
    if not items:
        raise _error(source, f"{kind}=() needs at least one condition")
    children: list[Filter] = []
    for item in items:
        item_negated, body = _strip_not(item)
        head, paren, _ = body.partition("(")
        if paren and head in JUNCTIONS:
            children.append(
                _parse_junction(head, body[len(head) :], item_negated, source, depth + 1, budget)
            )
            continue
        field, expression = _split_field(item, source)
        children.append(_parse_condition(field, expression, source, budget, in_tree=True))
    return Junction(kind, tuple(children), negated, source)


def _split_field(item: str, source: str) -> tuple[str, str]:
    """``field.operator.value`` -> (field, ``operator.value``), for fields with dots too.

    The field ends before the first segment that is an operator or ``not``, so dotted paths
    (``properties.plan.eq.pro``) read as one field; a path segment named like an operator
    cannot be used inside and/or (it can as a top-level filter key).
    """
    segments = item.split(".")
    for index in range(1, len(segments)):
        if segments[index] in OPERATORS or segments[index] == "not":
            field = ".".join(segments[:index])
            if field:
                return field, ".".join(segments[index:])
            break
    raise _error(source, f"expected field.operator.value, got {_preview(item)}")


def _parse_list(text: str, source: str, *, keep_quotes: bool = False) -> list[str]:
    """Split ``(a,"b,c",d(e,f))`` at top-level commas; quotes protect commas and parentheses."""
    if len(text) < 2 or text[0] != "(" or text[-1] != ")":
        raise _error(source, f"expected a parenthesised list, got {_preview(text)}")
    body = text[1:-1]
    if not body:
        return []
    items: list[str] = []
    current: list[str] = []
    depth = 0
    in_quotes = False
    index = 0
    while index < len(body):
        char = body[index]
        if in_quotes:
            if char == "\\" and index + 1 < len(body):
                current.append(body[index : index + 2] if keep_quotes else body[index + 1])
                index += 2
                continue
            if char == '"':
                in_quotes = False
                if keep_quotes:
                    current.append(char)
            else:
                current.append(char)
        elif char == '"':
            in_quotes = True
            if keep_quotes:
                current.append(char)
        elif char == "(":
            depth += 1
            current.append(char)
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise _error(source, "unbalanced parentheses")
            current.append(char)
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    if in_quotes or depth != 0:
        raise _error(source, "unbalanced quotes or parentheses")
    items.append("".join(current))
    return items


def _unquote(text: str, source: str) -> str:
    """A value of an and/or tree written as ``"..."`` loses its quotes and backslash escapes."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        out: list[str] = []
        index = 0
        while index < len(inner):
            if inner[index] == "\\" and index + 1 < len(inner):
                out.append(inner[index + 1])
                index += 2
                continue
            if inner[index] == '"':
                raise _error(source, 'a quote inside a quoted value must be escaped as \\"')
            out.append(inner[index])
            index += 1
        return "".join(out)
    return text


def _preview(text: str) -> str:
    return repr(text[:60] + ("..." if len(text) > 60 else ""))


def _error(source: str, message: str) -> AnalyticsError:
    return validation_error(source, f"{source}: {message}", "INVALID_FILTER")
