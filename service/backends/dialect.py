"""What a ClickHouse server can do, and how SQL and parameters are written for it.

The production minimum is a current LTS (23.8 or newer): everything here defaults to that
*modern* dialect, and ``service.schema`` renders exactly the DDL it always did. The only server
installable in this project's environment is Debian's 18.16 (2018), which the HTTP backend's
integration tests run against; for it (and anything older than 23.2) there is a version-gated
*legacy* fallback. Nothing else should need to know about it.

What 18.16.1 accepts, found by experiment on the real server (``tests/integration/
test_http_backend.py`` keeps checking it):

* yes: ``Decimal(P, S)`` up to P = 38, ``Nullable(...)`` (also of Decimal), ``UUID``, ``Int64``,
  ``UInt64``, ``Float64`` (inf and nan), ``Date``, ``DateTime('UTC')``, column ``COMMENT``,
  ``ReplacingMergeTree(ver)`` with ``FINAL``, ``PARTITION BY cityHash64(col) % 16``,
  ``KILL QUERY``, the HTTP settings ``query_id``, ``max_execution_time``, ``readonly``,
  ``wait_end_of_query`` and the ``X-ClickHouse-User``/``X-ClickHouse-Key`` headers.
* no: ``DateTime64``, ``Date32``, ``Bool``, ``ReplacingMergeTree(ver, is_deleted)`` ("requires
  0 to 1 parameters"), server-side query parameters (``param_x`` is an "Unknown setting"),
  ``optimize_on_insert``, fractional ``max_execution_time`` (``0.5`` reads as 0: no limit).
* experimental only: ``LowCardinality`` (``allow_experimental_low_cardinality_type``); not used.
* quirks: ``Date`` holds 1970-01-01..2105-12-31 and silently stores anything outside as day 0,
  which it prints as ``0000-00-00`` (so day 0 itself, 1970-01-01, reads back as ``0000-00-00``);
  ``LIMIT`` takes only a number literal, not an expression such as ``CAST('5' AS UInt64)``;
  its text parser for floats is not exact (about one random double in eight lands one or two
  units in the last place off, and 5e-324 reads as 0), so Float64 values sent as text are
  approximate there - and only there: modern servers parse them exactly.

Legacy layout decisions (each loses nothing for the values a replica holds, or fails loudly):

* enum and the tenant column: ``String`` instead of ``LowCardinality(String)`` (same values,
  bigger and slower, and no experimental setting on a production path).
* bool: ``UInt8`` (0/1), the representation Bool replaced.
* timestamp: ``Int64`` microseconds since 1970-01-01 00:00:00 UTC (column comment says so).
  ``DateTime('UTC')`` was the alternative: it keeps date functions working but truncates every
  source timestamp to whole seconds, and replicas must be exact; Int64 microseconds is what
  PostgreSQL itself stores and what Debezium's MicroTimestamp carries. The price is that readers
  convert (``toDateTime(intDiv(col, 1000000), 'UTC')``) - the query compiler targets modern
  servers only, so the legacy layout is for the write path and tests of it.
* date: ``Date``. It is exact for 1970-01-01..2105-12-31; the HTTP backend refuses a date outside
  that range instead of letting the server store day 0 (an ``Int32`` of days would hold every
  date, but loses the type for no practical gain on a fallback).
* decimal, uuid, int: the same types as modern. float: the same too; it is the one type that is
  not exact on 18.16 (the parser quirk above), and no text form avoids that.
* engine: ``ReplacingMergeTree(_version)``; ``_is_deleted`` stays an ordinary column, and since
  every reader filters ``_is_deleted = 0`` after ``FINAL`` (the compiler always does) the visible
  rows are the same. Tombstones are never purged, which costs space only.

Each capability below arrived somewhere between 19.x and 23.2 (``DateTime64`` 20.1, ``Date32``
21.9, ``Bool`` 21.12, ``is_deleted`` 23.2). Finer gates would only serve versions nobody runs, so
one threshold switches the whole layout: a server older than 23.2 gets the legacy forms, which
every later server accepts too. Server-side parameters have their own gate (19.11), because they
change only the transport, not what is stored.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from service.catalog import FieldSpec, FieldType

#: The first version with ``ReplacingMergeTree(ver, is_deleted)``; every other modern type and
#: setting used here is older.
MODERN_LAYOUT_SINCE = (23, 2)
#: Query parameters (``{name:Type}`` with HTTP ``param_name``) arrived in 19.11.3.
SERVER_PARAMETERS_SINCE = (19, 11)
#: What the project targets in production, and what callers get without asking a server.
PRODUCTION_MINIMUM = (23, 8)
#: Inserts as ``ArrowStream`` rather than ``TabSeparated`` (``Dialect.arrow_inserts``).
ARROW_INSERTS_SINCE = PRODUCTION_MINIMUM
#: The MergeTree setting ``merge_selector_base`` (ClickHouse PR 71497, November 2024); a table
#: setting a server does not know fails the whole ``CREATE TABLE``.
MERGE_SELECTOR_BASE_SINCE = (24, 12)
EPOCH_MICROSECONDS_COMMENT = "microseconds since 1970-01-01 00:00:00 UTC"


class Layout(enum.Enum):
    """How replica tables are laid out on a server."""

    MODERN = "modern"
    LEGACY = "legacy"


class TimestampEncoding(enum.Enum):
    """How a catalog ``timestamp`` is stored."""

    DATETIME64 = "DateTime64(6, 'UTC')"
    EPOCH_MICROSECONDS = "Int64 (microseconds since the Unix epoch, UTC)"


@dataclass(frozen=True)
class Dialect:
    """One server's capabilities, derived from its version (``Dialect.for_server``)."""

    version: tuple[int, ...]
    layout: Layout
    server_parameters: bool
    server_timezone: str = "UTC"

    @classmethod
    def for_server(cls, version: tuple[int, ...], timezone: str = "UTC") -> Dialect:
        """The dialect of a server that reports ``version`` and ``timezone``."""
        layout = Layout.MODERN if version[:2] >= MODERN_LAYOUT_SINCE else Layout.LEGACY
        return cls(version, layout, version[:2] >= SERVER_PARAMETERS_SINCE, timezone or "UTC")

    @property
    def is_modern(self) -> bool:
        """Whether the modern layout applies."""
        return self.layout is Layout.MODERN

    @property
    def replacing_is_deleted(self) -> bool:
        """``ReplacingMergeTree(version, is_deleted)`` exists."""
        return self.is_modern

    @property
    def low_cardinality(self) -> bool:
        """``LowCardinality`` is usable without an experimental setting."""
        return self.is_modern

    @property
    def hash_partitioning(self) -> bool:
        """``PARTITION BY cityHash64(col) % N`` works (on every supported server, 18.16 too)."""
        return True

    @property
    def optimize_on_insert(self) -> bool:
        """The ``optimize_on_insert`` setting exists (and defaults to collapsing in one insert)."""
        return self.is_modern

    @property
    def arrow_inserts(self) -> bool:
        """Inserts go as ``ArrowStream``; older servers get ``TabSeparated`` text.

        ``ArrowStream`` input is much older (20.x), but what its reader makes of each Arrow type
        moved with the modern types (Date32 21.9, Bool 21.12, DateTime64 scales and zones): it
        is used from the production minimum on, the oldest server it is meant for, and never on
        the legacy layout, whose columns (Int64 microseconds, UInt8 booleans) are written as text.
        """
        return self.is_modern and self.version[:2] >= ARROW_INSERTS_SINCE

    @property
    def merge_selector_base(self) -> bool:
        """The ``merge_selector_base`` table setting exists."""
        return self.version[:2] >= MERGE_SELECTOR_BASE_SINCE

    @property
    def fractional_timeouts(self) -> bool:
        """``max_execution_time`` takes fractions of a second (18.16 reads ``0.5`` as 0)."""
        return self.is_modern

    @property
    def timestamp_encoding(self) -> TimestampEncoding:
        """How catalog timestamps are stored."""
        return (
            TimestampEncoding.DATETIME64 if self.is_modern else TimestampEncoding.EPOCH_MICROSECONDS
        )

    @property
    def date_range(self) -> tuple[str, str]:
        """The ISO dates a ``Date`` column holds exactly, inclusive."""
        return ("1970-01-01", "2149-06-06") if self.is_modern else ("1970-01-01", "2105-12-31")

    # --- column types ----------------------------------------------------------------------

    def column_type(self, spec: FieldSpec) -> str:
        """The column type for a catalog field, ``Nullable`` included."""
        if self.is_modern:
            return spec.clickhouse_type
        base = {
            FieldType.STRING: "String",
            FieldType.ENUM: "String",
            FieldType.UUID: "UUID",
            FieldType.INT: "Int64",
            FieldType.FLOAT: "Float64",
            FieldType.DECIMAL: f"Decimal({spec.precision}, {spec.scale})",
            FieldType.BOOL: "UInt8",
            FieldType.TIMESTAMP: "Int64",
            FieldType.DATE: "Date",
        }[spec.type]
        return f"Nullable({base})" if spec.nullable else base

    def column_definition(self, name: str, spec: FieldSpec) -> str:
        """```name` Type`` plus a comment where the type alone does not say what it holds."""
        definition = f"`{name}` {self.column_type(spec)}"
        if spec.type is FieldType.TIMESTAMP and not self.is_modern:
            definition += f" COMMENT '{EPOCH_MICROSECONDS_COMMENT}'"
        return definition

    def tenant_column_type(self) -> str:
        """The tenant column's type."""
        return self.string_key_type()

    def string_key_type(self) -> str:
        """A string with few distinct values (tenant ids, source names)."""
        return "LowCardinality(String)" if self.low_cardinality else "String"

    def timestamp_column_definition(self, name: str) -> str:
        """A non-null UTC timestamp column with microseconds, for the service's own tables."""
        if self.is_modern:
            return f"`{name}` DateTime64(6, 'UTC')"
        return f"`{name}` Int64 COMMENT '{EPOCH_MICROSECONDS_COMMENT}'"

    def replacing_engine(self, version_column: str, deleted_column: str | None = None) -> str:
        """The ReplacingMergeTree clause; without ``is_deleted`` support readers filter it."""
        if deleted_column and self.replacing_is_deleted:
            return f"ReplacingMergeTree({version_column}, {deleted_column})"
        return f"ReplacingMergeTree({version_column})"

    # --- per-query settings and parameters -------------------------------------------------

    def execution_time(self, seconds: float) -> str:
        """``max_execution_time`` for a budget of ``seconds``.

        Rounded up where only whole seconds exist, so the limit is never 0 (which means none).
        """
        if self.fractional_timeouts:
            return f"{max(seconds, 0.001):.3f}"
        return str(max(1, math.ceil(seconds)))

    def bind(self, sql: str, parameters: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        """Return the SQL to send and the HTTP arguments that carry ``parameters``.

        ``parameters`` are texts in ClickHouse's escaped form (``encode_text_parameter``). A
        server that has query parameters gets them as ``param_<name>``; an older one gets the
        placeholders replaced by literals (``bind_client_side``).
        """
        for name in parameters:
            if not _PARAMETER_NAME.match(name):
                raise ValueError(f"not a valid parameter name: {name!r}")
        if self.server_parameters:
            return sql, {f"param_{name}": text for name, text in parameters.items()}
        return bind_client_side(sql, parameters), {}


#: What callers get when they do not ask a server: the production minimum.
MODERN = Dialect.for_server(PRODUCTION_MINIMUM)


async def backend_dialect(backend: object) -> Dialect:
    """The dialect ``backend`` reports (its ``dialect()``), or ``MODERN`` if it has none."""
    dialect_of = getattr(backend, "dialect", None)
    if dialect_of is None:
        return MODERN
    dialect: Dialect = await dialect_of()
    return dialect


def parse_version(text: str) -> tuple[int, ...]:
    """``'18.16.1'`` -> ``(18, 16, 1)``; ``'24.8.4.13'`` -> ``(24, 8, 4, 13)``."""
    parts = re.findall(r"\d+", text.strip().split("-")[0].split("+")[0])
    if len(parts) < 2:
        raise ValueError(f"not a ClickHouse version: {text!r}")
    return tuple(int(part) for part in parts)


# --- client-side parameter binding ----------------------------------------------------------
#
# ClickHouse reads a query parameter's text in its escaped (TSV) form and parses the result as
# the declared type. Binding on the client does the same: unescape the text, then write it as
# a string literal that the server parses back into exactly those bytes, and CAST it to the
# declared type, so the server's own parser decides what the value means.

_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([^{}]+?)\s*\}")
# A type written in a placeholder: names, numbers, parentheses, commas and quoted time zones.
_TYPE_TEXT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\((?:[A-Za-z0-9_ ,()]|'[A-Za-z0-9_/+\-]*')*\))?$")
_UNSIGNED = re.compile(r"^(UInt8|UInt16|UInt32|UInt64|UInt128|UInt256)$")
_DIGITS = re.compile(rb"^\+?[0-9]+$")
_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {
    b"a": b"\a",
    b"b": b"\b",
    b"e": b"\x1b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"v": b"\v",
    b"0": b"\0",
}
# Control characters, the quote and the backslash as escapes every server version reads.
_LITERAL_ESCAPES = {code: f"\\x{code:02X}" for code in (*range(0x20), 0x7F)} | {
    ord("\\"): "\\\\",
    ord("'"): "\\'",
}
_SURROGATES = re.compile("[\udc80-\udcff]")
_COMPOSITE_TYPES = ("Array(", "Tuple(", "Map(")


def unescape_text(text: str) -> bytes:
    """The bytes ClickHouse reads from ``text`` in its escaped format (see ``unescape_bytes``)."""
    return unescape_bytes(text.encode("utf-8", "surrogateescape"))


def unescape_bytes(data: bytes) -> bytes:
    r"""Decode ClickHouse's escaped (TSV) form: the inverse of how it writes and reads values.

    ``\\xHH`` is one byte, ``\\a \\b \\e \\f \\n \\r \\t \\v \\0`` are control characters, and a
    backslash before any other character stands for that character.
    """
    if b"\\" not in data:
        return data
    if (len(data) - len(data.rstrip(b"\\"))) % 2:
        raise ValueError("escaped text ends in a lone backslash")
    return _ESCAPE.sub(_unescape_one, data)


def _unescape_one(match: re.Match[bytes]) -> bytes:
    escape = match.group(1)
    if len(escape) == 3:
        return bytes([int(escape[1:], 16)])
    return _SIMPLE_ESCAPES.get(escape, escape)


def quote_string(value: bytes | str) -> str:
    r"""A ClickHouse string literal that reads back as exactly ``value``.

    Bytes that are not UTF-8 and every control character become ``\\xHH``, so the SQL text is
    valid UTF-8 and printable whatever the value holds; ``'`` and ``\\`` are escaped.
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    quoted = text.translate(_LITERAL_ESCAPES)
    if _SURROGATES.search(quoted):
        quoted = _SURROGATES.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02X}", quoted)
    return f"'{quoted}'"


def parameter_literal(type_text: str, text: str) -> str:
    """The SQL expression that stands for parameter ``text`` declared as ``type_text``.

    Unsigned integers become bare number literals, because old servers accept nothing else
    after ``LIMIT``/``OFFSET``; ``String`` a string literal; everything else
    ``CAST('<text>' AS <type>)``, which parses the text as the server would parse the parameter.
    Arrays, tuples and maps are read by the server in their own text form (strings inside quoted,
    with their own backslash escapes), not in the escaped form: their text is cast as it is.
    """
    declared = type_text.strip()
    if not _TYPE_TEXT.match(declared) or declared.count("(") != declared.count(")"):
        raise ValueError(f"unsupported parameter type {declared!r}")
    if declared == "Identifier":
        raise ValueError("Identifier parameters cannot be bound on the client")
    if text == "\\N" and declared.startswith("Nullable("):
        return f"CAST(NULL AS {declared})"
    if declared.startswith(_COMPOSITE_TYPES):
        return f"CAST({quote_string(text)} AS {declared})"
    raw = unescape_text(text)
    if _UNSIGNED.match(declared):
        if not _DIGITS.match(raw):
            raise ValueError(f"{raw[:40]!r} is not a {declared}")
        return str(int(raw))
    if declared == "String":
        return quote_string(raw)
    return f"CAST({quote_string(raw)} AS {declared})"


def bind_client_side(sql: str, parameters: Mapping[str, str]) -> str:
    """Replace each ``{name:Type}`` placeholder by the literal of its parameter.

    Placeholders are found the way the server's lexer finds them: not inside string literals,
    quoted identifiers or comments. A placeholder without a parameter is an error.
    """
    out: list[str] = []
    index = 0
    length = len(sql)
    while index < length:
        char = sql[index]
        if char in "'`\"":
            end = _quoted_end(sql, index)
            out.append(sql[index:end])
            index = end
        elif sql.startswith("--", index):
            end = sql.find("\n", index)
            end = length if end < 0 else end
            out.append(sql[index:end])
            index = end
        elif sql.startswith("/*", index):
            end = sql.find("*/", index + 2)
            end = length if end < 0 else end + 2
            out.append(sql[index:end])
            index = end
        elif char == "{" and (match := _PLACEHOLDER.match(sql, index)):
            name, declared = match.group(1), match.group(2)
            if name not in parameters:
                raise ValueError(f"no value for query parameter {name!r}")
            out.append(parameter_literal(declared, parameters[name]))
            index = match.end()
        else:
            # Copy up to the next character that may start something we must look at.
            stop = _next_special(sql, index + 1)
            out.append(sql[index:stop])
            index = stop
    return "".join(out)


_SPECIAL = re.compile(r"['`\"{]|--|/\*")


def _next_special(sql: str, start: int) -> int:
    match = _SPECIAL.search(sql, start)
    return match.start() if match else len(sql)


def _quoted_end(sql: str, start: int) -> int:
    """The index after the quoted literal or identifier opening at ``start``.

    Inside, a backslash escapes the next character and a doubled quote is a quote, as in the
    server's lexer. An unterminated literal runs to the end (the server will reject it).
    """
    quote = sql[start]
    index = start + 1
    while index < len(sql):
        char = sql[index]
        if char == "\\":
            index += 2
            continue
        if char == quote:
            if index + 1 < len(sql) and sql[index + 1] == quote:
                index += 2
                continue
            return index + 1
        index += 1
    return len(sql)
