"""Formulas over trend series, such as ``A / B * 100``.

A formula is parsed into a small tree and evaluated bucket by bucket in Decimal arithmetic; its
text never reaches ``eval``. The grammar, where ``*`` and ``/`` bind tighter than ``+`` and ``-``,
all four associate to the left, and unary minus binds tightest::

    expression := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*
    factor     := "-" factor | number | letter | "(" expression ")"
    number     := digits ["." digits]           (100, 0.5)
    letter     := one of A..Z or a..z           (A is the first series, Z the 26th)

Spaces, tabs and line breaks may stand between tokens. Positions in error messages count
characters from 1.
"""

from __future__ import annotations

import decimal
import enum
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeAlias

from service.errors import AnalyticsError, validation_error

MAX_FORMULA_LENGTH = 500
MAX_NESTING_DEPTH = 32
FORMULA_FIELD = "formula"
INVALID_FORMULA = "INVALID_FORMULA"

# Fifty significant digits keep the ratio of any two engine values free of visible rounding, and
# the widest exponent range Decimal allows means no product of such values can overflow.
_CONTEXT = decimal.Context(prec=50, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_WHITESPACE = frozenset(" \t\r\n")
# A whole run of word characters is read at once, so that `1e400`, `2A` and `drop` are reported
# as the one bad token they are rather than as a number followed by a stray letter.
_WORD = re.compile(r"[0-9A-Za-z_.]+")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")
_UNARY_PRECEDENCE = 3
_ATOM_PRECEDENCE = 4


class Operator(enum.Enum):
    """A binary arithmetic operator, valued by its symbol."""

    ADD = "+"
    SUBTRACT = "-"
    MULTIPLY = "*"
    DIVIDE = "/"

    @property
    def precedence(self) -> int:
        """How tightly the operator binds: 2 for ``*`` and ``/``, 1 for ``+`` and ``-``."""
        return 2 if self in (Operator.MULTIPLY, Operator.DIVIDE) else 1


@dataclass(frozen=True)
class Number:
    """A number literal; the parser only makes non-negative ones (``-2`` is a negation)."""

    value: Decimal


@dataclass(frozen=True)
class SeriesRef:
    """The value of one series in the current bucket: index 0 is ``A``."""

    index: int


@dataclass(frozen=True)
class Negation:
    """Unary minus."""

    operand: Node


@dataclass(frozen=True)
class BinaryOperation:
    """``left operator right``."""

    operator: Operator
    left: Node
    right: Node


Node: TypeAlias = Number | SeriesRef | Negation | BinaryOperation


@dataclass(frozen=True)
class Formula:
    """A parsed formula, made by ``parse_formula``."""

    root: Node

    @property
    def letters(self) -> frozenset[int]:
        """The indices of the series the formula reads (0 for ``A``)."""
        return frozenset(_series_indices(self.root))

    def evaluate(self, values: Sequence[Decimal | None]) -> Decimal | None:
        """The formula's value for one bucket, given each series' value in series order.

        Arithmetic is Decimal with 50 significant digits, rounding half to even. The result is
        None (the bucket has no value, rather than PostHog's 0) when an operand it needs is None
        or not finite (ClickHouse's ``avg`` of no rows is NaN), or when it divides by zero.
        """
        return _evaluate(self.root, values)

    def render(self) -> str:
        """Canonical text: upper-case letters, single spaces and only the parentheses needed.

        Parsing the text gives back an equal formula: a right operand of equal precedence keeps
        its parentheses, as ``A - (B - C)`` differs from ``A - B - C`` (and even ``+`` and ``*``
        round differently when regrouped).
        """
        return _render(self.root)


def parse_formula(text: str, series_count: int) -> Formula:
    """Parse ``text`` into a formula over ``series_count`` series.

    Raises:
        AnalyticsError: a validation error on ``formula`` (reason ``INVALID_FORMULA``) saying
            what is wrong and where: empty or longer than 500 characters, an unknown character
            or name, a malformed number, ``**``, a missing operand or operator, unbalanced
            parentheses, nesting (parentheses and unary minus) deeper than 32, or a letter
            beyond the request's series.
    """
    if len(text) > MAX_FORMULA_LENGTH:
        raise _invalid(f"longer than {MAX_FORMULA_LENGTH} characters")
    if not text.strip("".join(_WHITESPACE)):
        raise _invalid("empty; write for example A / B * 100")
    return Formula(_Parser(_tokenize(text), series_count).parse())


def evaluate_series(
    formula: Formula, series: Sequence[Sequence[Decimal | None]]
) -> list[Decimal | None]:
    """The formula's value in each bucket, from the series' values bucket by bucket.

    Raises:
        ValueError: the series differ in length.
    """
    return [formula.evaluate(bucket) for bucket in zip(*series, strict=True)]


def _series_indices(node: Node) -> Iterator[int]:
    match node:
        case SeriesRef(index=index):
            yield index
        case Negation(operand=operand):
            yield from _series_indices(operand)
        case BinaryOperation(left=left, right=right):
            yield from _series_indices(left)
            yield from _series_indices(right)
        case Number():
            pass


def _evaluate(node: Node, values: Sequence[Decimal | None]) -> Decimal | None:
    match node:
        case Number(value=value):
            return value
        case SeriesRef(index=index):
            series_value = values[index]
            if series_value is None or not series_value.is_finite():
                return None
            return series_value
        case Negation(operand=operand):
            negated = _evaluate(operand, values)
            return None if negated is None else _CONTEXT.minus(negated)
        case BinaryOperation(operator=operator, left=left_node, right=right_node):
            left = _evaluate(left_node, values)
            right = _evaluate(right_node, values)
            if left is None or right is None:
                return None
            if operator is Operator.ADD:
                return _CONTEXT.add(left, right)
            if operator is Operator.SUBTRACT:
                return _CONTEXT.subtract(left, right)
            if operator is Operator.MULTIPLY:
                return _CONTEXT.multiply(left, right)
            return None if right.is_zero() else _CONTEXT.divide(left, right)


def _precedence(node: Node) -> int:
    if isinstance(node, BinaryOperation):
        return node.operator.precedence
    if isinstance(node, Negation):
        return _UNARY_PRECEDENCE
    return _ATOM_PRECEDENCE


def _render(node: Node) -> str:
    match node:
        case Number(value=value):
            return format(value, "f")
        case SeriesRef(index=index):
            return chr(ord("A") + index)
        case Negation(operand=operand):
            return "-" + _render_operand(operand, _precedence(operand) < _UNARY_PRECEDENCE)
        case BinaryOperation(operator=operator, left=left, right=right):
            left_text = _render_operand(left, _precedence(left) < operator.precedence)
            right_text = _render_operand(right, _precedence(right) <= operator.precedence)
            return f"{left_text} {operator.value} {right_text}"


def _render_operand(node: Node, parenthesise: bool) -> str:
    text = _render(node)
    return f"({text})" if parenthesise else text


class _TokenKind(enum.Enum):
    NUMBER = "number"
    LETTER = "letter"
    OPERATOR = "operator"
    OPEN = "("
    CLOSE = ")"
    END = "end"


@dataclass(frozen=True)
class _Token:
    kind: _TokenKind
    text: str
    position: int  # of the first character, counting from 1


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(text):
        char = text[index]
        position = index + 1
        if char in _WHITESPACE:
            index += 1
            continue
        if char in "()":
            tokens.append(_Token(_TokenKind(char), char, position))
            index += 1
            continue
        if char in "+-*/":
            if text.startswith("**", index):
                raise _invalid(f"'**' at position {position}: powers are not supported")
            tokens.append(_Token(_TokenKind.OPERATOR, char, position))
            index += 1
            continue
        word = _WORD.match(text, index)
        if word is None:
            raise _invalid(f"unexpected character {char!r} at position {position}")
        index = word.end()
        tokens.append(_word_token(word.group(), position))
    tokens.append(_Token(_TokenKind.END, "", len(text) + 1))
    return tokens


def _word_token(word: str, position: int) -> _Token:
    if word[0].isdigit() or word[0] == ".":
        if not _NUMBER.fullmatch(word):
            raise _invalid(
                f"malformed number {_preview(word)} at position {position}; "
                "numbers are written like 100 or 0.5"
            )
        return _Token(_TokenKind.NUMBER, word, position)
    if len(word) == 1 and word.isalpha():
        return _Token(_TokenKind.LETTER, word.upper(), position)
    raise _invalid(
        f"unknown name {_preview(word)} at position {position}; "
        "series are single letters A to Z and there are no functions"
    )


class _Parser:
    """Recursive descent over the tokens, one method per grammar rule."""

    def __init__(self, tokens: list[_Token], series_count: int) -> None:
        self._tokens = tokens
        self._next = 0
        self._series_count = series_count
        self._depth = 0

    def parse(self) -> Node:
        node = self._expression()
        token = self._peek()
        if token.kind is _TokenKind.CLOSE:
            raise _invalid(f"')' at position {token.position} has no matching '('")
        if token.kind is not _TokenKind.END:
            raise _unexpected(token, "an operator")
        return node

    def _expression(self) -> Node:
        node = self._term()
        while self._peek().text in ("+", "-"):
            operator = Operator(self._take().text)
            node = BinaryOperation(operator, node, self._term())
        return node

    def _term(self) -> Node:
        node = self._factor()
        while self._peek().text in ("*", "/"):
            operator = Operator(self._take().text)
            node = BinaryOperation(operator, node, self._factor())
        return node

    def _factor(self) -> Node:
        token = self._take()
        if token.kind is _TokenKind.OPERATOR and token.text == "-":
            self._enter(token)
            node: Node = Negation(self._factor())
            self._depth -= 1
            return node
        if token.kind is _TokenKind.NUMBER:
            return Number(Decimal(token.text))
        if token.kind is _TokenKind.LETTER:
            return self._series(token)
        if token.kind is _TokenKind.OPEN:
            self._enter(token)
            node = self._expression()
            self._depth -= 1
            closing = self._take()
            if closing.kind is _TokenKind.END:
                raise _invalid(f"the '(' at position {token.position} is never closed")
            if closing.kind is not _TokenKind.CLOSE:
                raise _unexpected(closing, "an operator or ')'")
            return node
        raise _unexpected(token, "a number, a series letter or '('")

    def _series(self, token: _Token) -> SeriesRef:
        index = ord(token.text) - ord("A")
        if index >= self._series_count:
            raise _invalid(
                f"series {token.text} at position {token.position} does not exist: "
                f"{_series_names(self._series_count)}"
            )
        return SeriesRef(index)

    def _enter(self, token: _Token) -> None:
        self._depth += 1
        if self._depth > MAX_NESTING_DEPTH:
            raise _invalid(
                f"nesting deeper than {MAX_NESTING_DEPTH} levels at position {token.position}"
            )

    def _peek(self) -> _Token:
        return self._tokens[self._next]

    def _take(self) -> _Token:
        token = self._tokens[self._next]
        self._next += 1
        return token


def _series_names(series_count: int) -> str:
    if series_count <= 0:
        return "the request has no series"
    if series_count == 1:
        return "the request has 1 series (A)"
    last = chr(ord("A") + min(series_count, 26) - 1)
    return f"the request has {series_count} series (A to {last})"


def _unexpected(token: _Token, expected: str) -> AnalyticsError:
    if token.kind is _TokenKind.END:
        return _invalid(f"expected {expected} at the end of the formula")
    return _invalid(f"expected {expected} at position {token.position}, found {token.text!r}")


def _preview(word: str) -> str:
    return repr(word[:20] + ("..." if len(word) > 20 else ""))


def _invalid(reason: str) -> AnalyticsError:
    return validation_error(FORMULA_FIELD, f"{FORMULA_FIELD}: {reason}", INVALID_FORMULA)
