"""Trend formulas (service/insights/formula.py): grammar, evaluation and rejection."""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeAlias

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from service.errors import AnalyticsError, ErrorKind
from service.insights.formula import (
    BinaryOperation,
    Formula,
    Negation,
    Node,
    Number,
    Operator,
    SeriesRef,
    evaluate_series,
    parse_formula,
)

SERIES_COUNT = 4
A, B, C = SeriesRef(0), SeriesRef(1), SeriesRef(2)


# The reference tree is the test's own, so that the ground truth owes nothing to the parser.
@dataclass(frozen=True)
class RefNumber:
    value: Decimal


@dataclass(frozen=True)
class RefSeries:
    index: int


@dataclass(frozen=True)
class RefNegate:
    operand: Tree


@dataclass(frozen=True)
class RefOperation:
    symbol: str
    left: Tree
    right: Tree


Tree: TypeAlias = RefNumber | RefSeries | RefNegate | RefOperation


def reference_value(tree: Tree, values: list[Decimal | None]) -> Decimal | None:
    """Plain Decimal arithmetic at 50 digits; a missing operand or a zero divisor gives None."""
    with decimal.localcontext(prec=50, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN):
        return _reference_value(tree, values)


def _reference_value(tree: Tree, values: list[Decimal | None]) -> Decimal | None:
    match tree:
        case RefNumber(value=value):
            return value
        case RefSeries(index=index):
            return values[index]
        case RefNegate(operand=operand):
            negated = _reference_value(operand, values)
            return None if negated is None else -negated
        case RefOperation(symbol=symbol, left=left_tree, right=right_tree):
            left = _reference_value(left_tree, values)
            right = _reference_value(right_tree, values)
            if left is None or right is None:
                return None
            if symbol == "+":
                return left + right
            if symbol == "-":
                return left - right
            if symbol == "*":
                return left * right
            return None if right == 0 else left / right


def reference_letters(tree: Tree) -> set[int]:
    match tree:
        case RefNumber():
            return set()
        case RefSeries(index=index):
            return {index}
        case RefNegate(operand=operand):
            return reference_letters(operand)
        case RefOperation(left=left, right=right):
            return reference_letters(left) | reference_letters(right)


def parenthesised_text(tree: Tree, space: str, lower_case: bool) -> str:
    """Every operation in parentheses, so that the text's meaning does not hang on precedence."""
    match tree:
        case RefNumber(value=value):
            return format(value, "f")
        case RefSeries(index=index):
            letter = chr(ord("A") + index)
            return letter.lower() if lower_case else letter
        case RefNegate(operand=operand):
            return "-" + parenthesised_text(operand, space, lower_case)
        case RefOperation(symbol=symbol, left=left, right=right):
            left_text = parenthesised_text(left, space, lower_case)
            right_text = parenthesised_text(right, space, lower_case)
            return f"({space}{left_text}{space}{symbol}{space}{right_text}{space})"


LEAVES: st.SearchStrategy[Tree] = st.one_of(
    st.decimals(min_value=0, max_value=10_000, places=2).map(RefNumber),
    st.integers(0, SERIES_COUNT - 1).map(RefSeries),
)


def trees(depth: int) -> st.SearchStrategy[Tree]:
    if depth == 0:
        return LEAVES
    children = st.deferred(lambda: trees(depth - 1))
    return st.one_of(
        LEAVES,
        children.map(RefNegate),
        st.builds(RefOperation, st.sampled_from("+-*/"), children, children),
    )


SERIES_VALUES = st.one_of(
    st.none(),
    st.just(Decimal(0)),
    st.decimals(min_value=-(10**9), max_value=10**9, places=4),
)


def rejected(text: str, series_count: int = 3) -> AnalyticsError:
    with pytest.raises(AnalyticsError) as caught:
        parse_formula(text, series_count)
    error = caught.value
    assert error.kind is ErrorKind.VALIDATION
    assert error.reason == "INVALID_FORMULA"
    assert [violation.field for violation in error.violations] == ["formula"]
    assert error.message.startswith("formula: ")
    return error


@given(
    tree=trees(5),
    values=st.lists(SERIES_VALUES, min_size=SERIES_COUNT, max_size=SERIES_COUNT),
    space=st.sampled_from(["", " ", "\t", "\n  "]),
    lower_case=st.booleans(),
)
def test_formula_equals_direct_decimal_arithmetic(
    tree: Tree, values: list[Decimal | None], space: str, lower_case: bool
) -> None:
    text = parenthesised_text(tree, space, lower_case)
    assume(len(text) <= 500)
    formula = parse_formula(text, SERIES_COUNT)
    assert formula.evaluate(values) == reference_value(tree, values)
    assert formula.letters == reference_letters(tree)
    assert parse_formula(formula.render(), SERIES_COUNT) == formula


@given(
    tree=trees(4),
    series=st.integers(0, 6).flatmap(
        lambda length: st.lists(
            st.lists(SERIES_VALUES, min_size=length, max_size=length),
            min_size=SERIES_COUNT,
            max_size=SERIES_COUNT,
        )
    ),
)
def test_evaluate_series_goes_bucket_by_bucket(tree: Tree, series: list[list[Decimal | None]]):
    text = parenthesised_text(tree, " ", lower_case=False)
    assume(len(text) <= 500)
    buckets = [list(bucket) for bucket in zip(*series, strict=True)]
    expected = [reference_value(tree, bucket) for bucket in buckets]
    assert evaluate_series(parse_formula(text, SERIES_COUNT), series) == expected


def test_evaluate_series_needs_equal_lengths() -> None:
    with pytest.raises(ValueError, match="zip"):
        evaluate_series(parse_formula("A + B", 2), [[Decimal(1)], [Decimal(1), Decimal(2)]])


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        (
            "A - B - C",
            BinaryOperation(Operator.SUBTRACT, BinaryOperation(Operator.SUBTRACT, A, B), C),
        ),
        ("A / B / C", BinaryOperation(Operator.DIVIDE, BinaryOperation(Operator.DIVIDE, A, B), C)),
        (
            "A - (B - C)",
            BinaryOperation(Operator.SUBTRACT, A, BinaryOperation(Operator.SUBTRACT, B, C)),
        ),
        ("-A * B", BinaryOperation(Operator.MULTIPLY, Negation(A), B)),
        ("-(A * B)", Negation(BinaryOperation(Operator.MULTIPLY, A, B))),
        ("A + B * C", BinaryOperation(Operator.ADD, A, BinaryOperation(Operator.MULTIPLY, B, C))),
        ("(A + B) * C", BinaryOperation(Operator.MULTIPLY, BinaryOperation(Operator.ADD, A, B), C)),
        ("A - -B", BinaryOperation(Operator.SUBTRACT, A, Negation(B))),
        ("--A", Negation(Negation(A))),
        ("((A))", A),
        (
            "A / B * 100",
            BinaryOperation(
                Operator.MULTIPLY, BinaryOperation(Operator.DIVIDE, A, B), Number(Decimal(100))
            ),
        ),
    ],
)
def test_precedence_and_associativity(text: str, tree: Node) -> None:
    assert parse_formula(text, 3) == Formula(tree)


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("A - B - C", ["10", "3", "2"], Decimal(5)),
        ("A / B / C", ["100", "5", "2"], Decimal(10)),
        ("-A * B", ["2", "3", "0"], Decimal(-6)),
        ("2 * A + B * 0.5", ["3", "4", "0"], Decimal(8)),
        (
            "A / B * 100",
            ["1", "3", "0"],
            Decimal("33.333333333333333333333333333333333333333333333333"),
        ),
        ("A / B", ["2", "3", "0"], Decimal("0.66666666666666666666666666666666666666666666666667")),
    ],
)
def test_evaluate(text: str, values: list[str], expected: Decimal) -> None:
    assert parse_formula(text, 3).evaluate([Decimal(value) for value in values]) == expected


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("A / B", [Decimal(1), Decimal(0)]),
        ("A / B", [Decimal(0), Decimal("0.000")]),
        ("A / (B - B)", [Decimal(1), Decimal(7)]),
        ("A + B", [Decimal(1), None]),
        ("-B", [Decimal(1), None]),
        ("A * 0 + B", [None, Decimal(1)]),
        ("A + B", [Decimal("NaN"), Decimal(1)]),
        ("A - B", [Decimal("Infinity"), Decimal("Infinity")]),
    ],
)
def test_no_value_for_missing_operands_and_division_by_zero(
    text: str, values: list[Decimal | None]
) -> None:
    assert parse_formula(text, 2).evaluate(values) is None


def test_a_series_the_formula_does_not_read_may_be_missing() -> None:
    assert parse_formula("A * 2", 2).evaluate([Decimal(3), None]) == Decimal(6)


def test_letters_are_the_series_indices_used() -> None:
    assert parse_formula("A / C * 100", 3).letters == {0, 2}
    assert parse_formula("100", 3).letters == frozenset()


def test_lower_case_letters_are_normalised() -> None:
    formula = parse_formula("a / b", 2)
    assert formula == parse_formula("A / B", 2)
    assert formula.render() == "A / B"


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("A/B*100", "A / B * 100"),
        ("(A - B) - C", "A - B - C"),
        ("A - (B - C)", "A - (B - C)"),
        ("A + (B + C)", "A + (B + C)"),
        ("(A * B) + C", "A * B + C"),
        ("-(A) * ((B))", "-A * B"),
        ("-(A + B)", "-(A + B)"),
        ("0.50 * A", "0.50 * A"),
        ("007", "7"),
    ],
)
def test_render_is_canonical(text: str, rendered: str) -> None:
    assert parse_formula(text, 3).render() == rendered


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "A; drop",
        "A; drop table events",
        "A**2",
        "A ** 2",
        "1e400",
        "1E5",
        "2A",
        ".5",
        "1.",
        "1..2",
        "1_000",
        "0x10",
        "\uff21",  # fullwidth A
        "A\u00a0+ B",  # no-break space
        "A + \u0663",  # Arabic-Indic digit three
        "é",
        "A\x00",
        "sum(A)",
        "abs(A)",
        "A(B)",
        "AB",
        "A B",
        "A 2",
        "",
        "   \t\n",
        "A +",
        "* A",
        "+A",
        "A + + B",
        "(A",
        "((A)",
        "A)",
        "()",
        "A % B",
        "A ^ 2",
        "lambda: 1",
        "A if B else C",
        "D",
        "[A]",
        "{A}",
        "'A'",
    ],
)
def test_hostile_and_malformed_text_is_rejected(text: str) -> None:
    rejected(text)


def test_messages_say_what_and_where() -> None:
    assert rejected("A + $").message == "formula: unexpected character '$' at position 5"
    assert "position 2" in rejected("A**2").message
    assert "at the end of the formula" in rejected("A / ").message
    assert rejected("(A").message == "formula: the '(' at position 1 is never closed"
    assert rejected("A)").message == "formula: ')' at position 2 has no matching '('"
    assert rejected("A B").message == "formula: expected an operator at position 3, found 'B'"
    assert "'1e400' at position 3" in rejected("A*1e400").message
    assert "'__import__' at position 1" in rejected("__import__('os')").message


def test_letters_beyond_the_series_are_rejected() -> None:
    assert rejected("A + D", 3).message == (
        "formula: series D at position 5 does not exist: the request has 3 series (A to C)"
    )
    assert "the request has 1 series (A)" in rejected("B", 1).message
    assert "no series" in rejected("a", 0).message
    assert parse_formula("Z", 26).letters == {25}


def test_length_limit() -> None:
    longest = "A+" * 249 + "A"
    assert len(longest) == 499
    assert parse_formula(longest + " ", 1).letters == {0}
    assert "longer than 500" in rejected(longest + "  ").message


def test_nesting_limit() -> None:
    assert parse_formula("(" * 32 + "A" + ")" * 32, 1).letters == {0}
    assert parse_formula("-" * 32 + "A", 1).letters == {0}
    assert parse_formula("(" * 16 + "-" * 16 + "A" + ")" * 16, 1).letters == {0}
    assert "deeper than 32" in rejected("(" * 33 + "A" + ")" * 33).message
    assert "deeper than 32" in rejected("-" * 33 + "A").message
    assert "deeper than 32" in rejected("(" * 17 + "-" * 16 + "A" + ")" * 17).message


def parsed_or_rejected(text: str) -> Formula | AnalyticsError:
    try:
        return parse_formula(text, 3)
    except AnalyticsError as error:
        return error


@given(
    st.one_of(
        st.text(max_size=60),
        st.text(alphabet="ABCabc0123456789.+-*/() ", max_size=40),
    )
)
def test_any_text_parses_or_is_rejected_as_invalid_formula(text: str) -> None:
    outcome = parsed_or_rejected(text)
    if isinstance(outcome, AnalyticsError):
        assert outcome.reason == "INVALID_FORMULA"
        assert [violation.field for violation in outcome.violations] == ["formula"]
    else:
        assert parse_formula(outcome.render(), 3) == outcome
