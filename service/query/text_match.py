"""``like`` and ``ilike`` as PostgreSQL means them, written for ClickHouse.

PostgreSQL's LIKE reads a backslash as "the next character is literal", whatever that character
is; ClickHouse's does so only before ``%``, ``_`` and a backslash and keeps it elsewhere, so the
pattern is rewritten into the form both read alike. ILIKE in PostgreSQL (UTF-8 database) is
``lower(text) LIKE lower(pattern)``, lowering each character by the simple Unicode mapping (as
glibc's ``towlower`` does); ClickHouse's ILIKE and ``lowerUTF8`` fold some letters differently
by version (the Kelvin sign, dotted capital I, titlecase digraphs), so the text is folded here by
one fixed table with ``translateUTF8`` and the pattern by the same table in Python.
"""

from __future__ import annotations

import functools
import sys

#: The one character whose full lowercase mapping has two characters (U+0130 -> "i" + U+0307);
#: its simple mapping, the one PostgreSQL's ``lower`` uses, is a plain "i".
_SIMPLE_LOWER_EXCEPTIONS = {"\u0130": "i"}


@functools.cache
def case_fold_table() -> tuple[str, str]:
    """Every character whose simple lowercase differs from it, and those lowercases, in order."""
    sources: list[str] = []
    targets: list[str] = []
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        lower = _SIMPLE_LOWER_EXCEPTIONS.get(char, char.lower())
        if len(lower) == 1 and lower != char:
            sources.append(char)
            targets.append(lower)
    return "".join(sources), "".join(targets)


def fold_case(text: str) -> str:
    """``text`` with each character replaced by its simple lowercase."""
    sources, targets = case_fold_table()
    return text.translate(str.maketrans(sources, targets))


def folded_sql(column: str) -> str:
    """SQL folding ``column`` the way ``fold_case`` folds a pattern.

    The table is a constant of this module, never request text: no quote or backslash is in it.
    """
    sources, targets = case_fold_table()
    return f"translateUTF8({column}, '{sources}', '{targets}')"


def like_pattern(pattern: str) -> str:
    """A PostgreSQL LIKE pattern rewritten so that ClickHouse's LIKE reads it the same way.

    ``%`` and ``_`` stay wildcards; an escaped character becomes itself, escaped again only where
    ClickHouse needs it. The caller has checked that the pattern does not end in an unpaired
    backslash (PostgreSQL refuses such a pattern).
    """
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            literal = pattern[index + 1]
            out.append("\\" + literal if literal in "%_\\" else literal)
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)
