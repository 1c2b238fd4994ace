"""The PostgREST filter grammar (service/query/filters.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import AnalyticsError, ErrorKind
from service.query.filters import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_IN_VALUES,
    Condition,
    Junction,
    mentioned_fields,
    parse_filters,
)


def one(key: str, value: str) -> Condition | Junction:
    parsed = parse_filters({key: value})
    assert len(parsed) == 1
    return parsed[0]


def cond(key: str, value: str) -> Condition:
    item = one(key, value)
    assert isinstance(item, Condition)
    return item


def junction(key: str, value: str) -> Junction:
    item = one(key, value)
    assert isinstance(item, Junction)
    return item


def invalid(filters: dict[str, str], field: str) -> AnalyticsError:
    with pytest.raises(AnalyticsError) as info:
        parse_filters(filters)
    error = info.value
    assert error.kind is ErrorKind.VALIDATION
    assert error.reason == "INVALID_FILTER"
    assert [v.field for v in error.violations] == [field]
    assert error.message.startswith(f"{field}: ")
    return error


# --- operators -------------------------------------------------------------------------------


@pytest.mark.parametrize("operator", ["eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike"])
def test_every_comparison_operator(operator: str) -> None:
    item = cond("stage", f"{operator}.closed_won")
    assert item == Condition("stage", operator, ("closed_won",), False, "filters.stage")


@pytest.mark.parametrize(
    "operator", ["eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is"]
)
def test_not_negates_every_operator(operator: str) -> None:
    operand = {"in": "(a,b)", "is": "null"}.get(operator, "x")
    item = cond("stage", f"not.{operator}.{operand}")
    assert item.negated is True
    assert item.operator == operator


def test_value_keeps_dots_and_everything_after_the_operator() -> None:
    assert cond("email", "eq.a.b@c.d").values == ("a.b@c.d",)
    assert cond("amount", "gt.10.005").values == ("10.005",)
    assert cond("created_at", "gte.2026-01-01T00:00:00+01:00").values == (
        "2026-01-01T00:00:00+01:00",
    )


def test_empty_value_is_an_empty_string() -> None:
    assert cond("email", "eq.").values == ("",)


def test_top_level_values_are_literal_quotes_included() -> None:
    """PostgREST's pSingleVal: a top-level value is the rest of the text, quotes and all."""
    assert cond("title", 'eq."quoted"').values == ('"quoted"',)
    assert cond("title", 'eq."a,b(c)"').values == ('"a,b(c)"',)
    assert cond("title", r'eq."say \"hi\""').values == (r'"say \"hi\""',)
    assert cond("title", 'eq.""').values == ('""',)
    assert cond("title", 'eq."a"b"').values == ('"a"b"',)


def test_quoted_value_in_a_tree_loses_quotes_and_escapes() -> None:
    """PostgREST's pLogicSingleVal: inside and/or, quotes delimit and a backslash escapes."""
    tree = junction("or", r'(title.eq."a,b(c)",title.eq."say \"hi\" \\ now",title.eq."")')
    assert [child.values for child in tree.children] == [  # type: ignore[union-attr]
        ("a,b(c)",),
        ('say "hi" \\ now',),
        ("",),
    ]


def test_unbalanced_quote_inside_a_quoted_value_in_a_tree() -> None:
    invalid({"or": '(title.eq."a"b")'}, "filters.or")


def test_like_keeps_its_pattern_characters() -> None:
    assert cond("email", "like.*@example.com").values == ("*@example.com",)
    assert cond("email", "ilike.%a_b%").values == ("%a_b%",)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("in.(a,b)", ("a", "b")),
        ("in.(single)", ("single",)),
        ('in.(a,"b,c")', ("a", "b,c")),
        ('in.("x)y","(z")', ("x)y", "(z")),
        (r'in.("say \"hi\"",plain)', ('say "hi"', "plain")),
        (r'in.("back\\slash")', ("back\\slash",)),
        ("in.(a(b),c)", ("a(b)", "c")),
        ("in.(a,,b)", ("a", "", "b")),
        ('in.("",x)', ("", "x")),
        ("in.( a , b )", (" a ", " b ")),
    ],
)
def test_in_lists(text: str, values: tuple[str, ...]) -> None:
    item = cond("stage", text)
    assert item.operator == "in"
    assert item.values == values


def test_in_list_of_one_quoted_empty_string() -> None:
    assert cond("stage", 'in.("")').values == ("",)


def test_in_list_size_limit() -> None:
    values = ",".join(str(i) for i in range(MAX_IN_VALUES))
    assert len(cond("id", f"in.({values})").values) == MAX_IN_VALUES
    invalid({"id": f"in.({values},x)"}, "filters.id")


@pytest.mark.parametrize("operand", ["null", "true", "false"])
def test_is_operands(operand: str) -> None:
    item = cond("deleted_at", f"is.{operand}")
    assert item == Condition("deleted_at", "is", (operand,), False, "filters.deleted_at")
    assert cond("deleted_at", f"not.is.{operand}").negated is True


@pytest.mark.parametrize("operand", ["NULL", "nil", "", "null ", "1", "unknown"])
def test_is_rejects_other_operands(operand: str) -> None:
    invalid({"deleted_at": f"is.{operand}"}, "filters.deleted_at")


# --- and / or --------------------------------------------------------------------------------


def test_or_with_nested_and() -> None:
    item = junction("or", "(stage.eq.won,and(amount.gt.100,amount.lte.200),not.and(a.eq.1,b.eq.2))")
    assert item.kind == "or"
    assert item.negated is False
    assert item.source == "filters.or"
    first, second, third = item.children
    assert first == Condition("stage", "eq", ("won",), False, "filters.or")
    assert isinstance(second, Junction)
    assert second.kind == "and"
    assert second.negated is False
    assert second.children == (
        Condition("amount", "gt", ("100",), False, "filters.or"),
        Condition("amount", "lte", ("200",), False, "filters.or"),
    )
    assert isinstance(third, Junction)
    assert third.negated is True


@pytest.mark.parametrize("key", ["not.and", "not.or"])
def test_negated_junction_keys(key: str) -> None:
    item = junction(key, "(a.eq.1,b.eq.2)")
    assert item.negated is True
    assert item.kind == key[4:]
    assert item.source == f"filters.{key}"


def test_conditions_inside_junctions_can_be_negated_and_quoted() -> None:
    item = junction("and", r'(title.not.like."*a,b*",stage.in.("x,y",z),note.eq."q\"uote")')
    like, within, quoted = item.children
    assert like == Condition("title", "like", ("*a,b*",), True, "filters.and")
    assert within == Condition("stage", "in", ("x,y", "z"), False, "filters.and")
    assert quoted == Condition("note", "eq", ('q"uote',), False, "filters.and")


def test_nesting_up_to_the_limit() -> None:
    text = "(a.eq.1)"
    for _ in range(MAX_DEPTH - 1):
        text = f"(or{text})"
    item = junction("and", text)
    depth = 1
    while item.children and isinstance(item.children[0], Junction):
        item = item.children[0]
        depth += 1
    assert depth == MAX_DEPTH
    invalid({"and": f"(or{text})"}, "filters.and")


def test_parse_filters_orders_by_key_and_mentions_every_field() -> None:
    parsed = parse_filters(
        {
            "stage": "eq.a",
            "or": "(amount.gt.1,and(owner_id.eq.2,not.or(closed_at.is.null)))",
            "id": "gt.0",
        }
    )
    assert [item.source for item in parsed] == ["filters.id", "filters.or", "filters.stage"]
    assert mentioned_fields(parsed) == {"stage", "amount", "owner_id", "closed_at", "id"}


def test_a_non_junction_key_with_not_is_a_field_name() -> None:
    # Only and/or keys take not.; anything else is a field name for the compiler to judge.
    item = cond("not.stage", "eq.a")
    assert item.field == "not.stage"
    assert item.negated is False


# --- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("stage", "equals.x"),
        ("stage", "EQ.x"),
        ("stage", "eq"),
        ("stage", "in"),
        ("stage", ""),
        ("stage", "x"),
        ("stage", "not.eq"),
        ("stage", "not.not.eq.x"),
        ("stage", "not.not.in.(a)"),
        ("stage", "in.a,b"),
        ("stage", "in.(a,b"),
        ("stage", "in.a,b)"),
        ("stage", "in.(a))"),
        ("stage", "in.((a)"),
        ("stage", 'in.("a,b)'),
        ("stage", 'in.(a,"b)'),
        ("stage", "in.()"),
        ("stage", "in."),
        ("stage", "is.nothing"),
        ("and", "stage.eq.x"),
        ("and", "(stage.eq.x"),
        ("and", "()"),
        ("and", "(stage)"),
        ("and", "(.eq.x)"),
        ("and", "(stage.eq.x,)"),
        ("or", "(stage.bogus.x)"),
        ("or", "(stage.not.not.eq.x)"),
        ("or", '(stage.eq."x)'),
        ("or", "(and(a.eq.1)(b.eq.2))"),
        ("or", "(and(a.eq.1)junk)"),
        ("or", "(and())"),
        ("not.or", "(a.eq.1))("),
        ("not.and", ""),
    ],
)
def test_malformed_filters_name_their_key(key: str, value: str) -> None:
    invalid({"id": "eq.1", key: value}, f"filters.{key}")


def test_too_many_conditions_at_the_top_level() -> None:
    filters = {f"f{i:03d}": "eq.1" for i in range(MAX_CONDITIONS)}
    assert len(parse_filters(filters)) == MAX_CONDITIONS
    filters["g"] = "eq.1"
    invalid(filters, "filters.g")


def test_too_many_conditions_inside_a_junction() -> None:
    body = ",".join(f"a.eq.{i}" for i in range(MAX_CONDITIONS))
    assert len(junction("or", f"({body})").children) == MAX_CONDITIONS
    invalid({"or": f"({body},a.eq.x)"}, "filters.or")
    # The budget is shared by all keys.
    invalid({"a": "eq.1", "or": f"({body})"}, "filters.or")


def test_too_deep_nesting_inside_a_junction_item() -> None:
    text = "(a.eq.1)"
    for _ in range(MAX_DEPTH + 5):
        text = f"(not.and{text})"
    invalid({"or": text}, "filters.or")


def test_long_keys_are_truncated_in_the_error() -> None:
    key = "k" * 500
    error = invalid({key: "bogus.x"}, f"filters.{key}"[:240])
    assert len(error.violations[0].field) == 240


def test_error_preview_is_bounded() -> None:
    error = invalid({"stage": "bogus." + "x" * 10_000}, "filters.stage")
    assert len(error.message) < 400


# --- robustness ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=20), st.text(alphabet='abc.,()"\\ innotqeslgd', max_size=40), max_size=4
    )
)
def test_any_input_parses_or_raises_a_validation_error(filters: dict[str, str]) -> None:
    outcome: list[Condition | Junction] | AnalyticsError
    try:
        outcome = parse_filters(filters)
    except AnalyticsError as error:
        outcome = error
    if isinstance(outcome, AnalyticsError):
        assert outcome.kind is ErrorKind.VALIDATION
        assert outcome.violations
        assert outcome.violations[0].field in {f"filters.{k}"[:240] for k in filters}
    else:
        assert len(outcome) == len(filters)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=6).filter(lambda v: v != [""]))
def test_quoted_in_values_round_trip(values: list[str]) -> None:
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    text = "in.(" + ",".join(quote(v) for v in values) + ")"
    assert cond("title", text).values == tuple(values)
    inside = junction("or", f"(title.{text},title.eq.{quote(values[0])})")
    assert inside.children[0] == Condition("title", "in", tuple(values), False, "filters.or")
    assert inside.children[1] == Condition("title", "eq", (values[0],), False, "filters.or")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_quoted_scalar_values_round_trip(value: str) -> None:
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert cond("title", f"eq.{quoted}").values == (quoted,)
    inside = junction("or", f"(title.eq.{quoted},title.not.like.{quoted})")
    assert [child.values for child in inside.children] == [(value,), (value,)]  # type: ignore[union-attr]
