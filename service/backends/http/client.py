r"""The ClickHouse server backend over HTTP: one aiohttp session is the connection pool.

It serves the whole ``AnalyticsBackend`` interface on any server from Debian's 18.16 (the one
installable here) to a current LTS: the read path of compiled queries (``execute``/``stream``),
statements, small typed reads, Arrow inserts and the sync state.

Transport. The design names aiochclient, whose session is an ``aiohttp.ClientSession``; its
query API does not fit here, so requests go through that session directly:

* per-call HTTP arguments (``query_id``, ``max_execution_time``, ``readonly``, ``param_*``) are
  impossible with ``ChClient``, which has one fixed argument set per client;
* ``ChClient`` runs ``str.format`` over SQL that has parameters, which breaks ``{p0:String}``;
* its TSV decoder is not exact (``\\0`` reads as a space, datetimes come back naive, day 0 of a
  ``Date`` as None), and it hides the response status and headers that the read path needs
  (``X-ClickHouse-Summary``, ``X-ClickHouse-Exception-Code``).

Values. Small reads (``query_rows``) use ``TSVWithNamesAndTypes`` and convert each column by its
declared type to the Python values the embedded backend returns (int, Decimal, str, bool, date,
aware UTC datetime, UUID, None; decimals at their column's scale). Inserts are conformed
column-wise with pyarrow compute to the *server's* column types (looked up once per table),
refusing rather than losing data (a NULL for a non-Nullable column, a date a ``Date`` cannot
hold, sub-second digits a ``DateTime`` would drop, decimal digits beyond the column's scale or
precision), then sent as one ``ArrowStream`` body, which servers of 23.8 and later parse natively
(``Dialect.arrow_inserts``), or printed as ``TabSeparated`` text for older servers. Both are exact
for 64-bit integers, decimals and microsecond timestamps; the Arrow body costs the client no
per-value formatting at all (bench/README.md, "CDC writes on the server path").

Parameters. ``{name:Type}`` placeholders are bound by the server where it supports query
parameters, otherwise on the client (``service.backends.dialect.bind_client_side``).

Read path (``execute``/``stream``). Every call is read-only (``readonly=2``), bounded by
``max_execution_time`` (whole seconds, rounded up, where the server has no fractions) with
``timeout_overflow_mode=throw``, carries the caller's ``query_id``, and applies the compiled
query's settings that the server has (``system.settings``, asked once): a setting an older server
lacks is skipped rather than failing the query. The answer is read incrementally, one Arrow
record batch at a time, so the service's memory stays bounded whatever the result's size.
Server-version gates, found in ClickHouse's changelog:

* ``ArrowStream`` output arrived in 20.5 (PR #11088). Newer servers answer in it, framed here
  message by message as the bytes arrive; older ones answer in ``JSONCompact`` (64-bit integers
  quoted, decimals and floats as written by the server, NaN and infinities quoted), decoded
  exactly into the same Arrow types column by column. ``JSONCompact`` rather than a TSV format
  because it ends with the server's own ``statistics`` (``rows_read``, ``elapsed``): 18.16 sends
  neither ``X-ClickHouse-Summary`` nor progress headers (checked on the server). Its one loss:
  18.16 writes bytes that are not UTF-8 as U+FFFD in JSON; replicated PostgreSQL text is UTF-8.
* ``rows_scanned`` is the server's ``read_rows``: from ``X-ClickHouse-Summary`` on Arrow servers.
  Before 22.6 (PR #36884) that header is all zeros unless ``send_progress_in_http_headers=1``,
  which is then sent with a progress interval long enough that no progress header is written.
  ``elapsed_ms`` is the summary's ``elapsed_ns`` where present (23.9, PR #54179), the
  statistics' ``elapsed`` on the JSON path, and otherwise measured here.
* ``wait_end_of_query=1`` on every read: the summary is final only once the query has ended (the
  server sends headers before the body), and an error half-way through arrives as an HTTP error
  rather than as text appended to a 200 response. The server buffers the answer meanwhile (in
  memory up to ``buffer_size``, then in a temporary file), so the first batch arrives when the
  query is done - which for the compiler's aggregations, sorted before their first row, is when
  it would arrive anyway.

Errors. Connection refused/reset/closed -> UNAVAILABLE; the server's timeout codes, or no answer
within the budget -> TIMEOUT; any other server error -> INTERNAL with ``engine_message``. On the
read path a missing table or database (codes 60, 81) is the ``REPLICA_MISSING`` UNAVAILABLE
error of the embedded backend instead: no loader has created the replica yet. When a call is
cancelled, its stream left early or its client-side deadline passes, the query is killed by its
id: a server keeps running a query whose HTTP client went away (18.16 always; newer ones unless
``cancel_http_readonly_queries_on_client_close`` is on, which it is not by default).

Tenant users (DESIGN.md section 6, layer 2). Given ``tenant_login`` (tenant id -> user and
password, derived from the tenant credential secret) and a server with SQL access control
(``detect_row_policies``), every compiled query of a tenant is sent as that tenant's user, whose
row policies the provisioner created; statements, state reads and writes stay the service's own
user. A tenant that was never provisioned (unknown user, wrong password, no grant) is refused
with FORBIDDEN ``TENANT_NOT_PROVISIONED``, never answered as the service user.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import decimal
import io
import json
import re
import struct
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog
import yarl

from service.backends.base import QueryResult, QueryStats
from service.backends.dialect import (
    Dialect,
    bind_client_side,
    parse_version,
    quote_string,
    unescape_bytes,
    unescape_text,
)
from service.errors import AnalyticsError, ErrorKind, engine_unavailable, query_timeout
from service.query.compiler import CompiledQuery, OutputColumn
from service.query.values import encode_text_parameter
from service.schema import SYNC_STATE_TABLE

log = structlog.get_logger(__name__)

#: ClickHouse error codes that mean "the query ran out of time".
TIMEOUT_CODES = frozenset({"159", "160", "209"})
#: ClickHouse error codes for a missing table or database.
MISSING_TABLE_CODES = frozenset({"60", "81"})
#: ClickHouse error codes a tenant user gets when it was never provisioned (or lost a grant):
#: UNKNOWN_USER, AUTHENTICATION_FAILED, ACCESS_DENIED, REQUIRED_PASSWORD, WRONG_PASSWORD.
TENANT_LOGIN_CODES = frozenset({"192", "516", "497", "194", "193"})
# What engine messages must never show when logged: passwords and password hashes in access
# statements (the provisioner redacts its own errors too; this covers the log line written here).
_SECRET_IN_STATEMENT = re.compile(
    r"(IDENTIFIED\s+(?:WITH\s+\w+\s+)?BY\s+)'(?:[^'\\]|\\.)*'", re.IGNORECASE
)
_HEX_DIGEST = re.compile(r"\b[0-9a-fA-F]{64}\b")

#: Percent-encoded characters of query parameters beyond which they are sent as literals in the
#: body rather than in the URL (see ``bind_for_http``).
MAX_URL_PARAMETER_CHARS = 256 * 1024
_LARGE_BODY_BYTES = 1 << 20
DEFAULT_MAX_QUERY_SIZE = 256 * 1024
"""ClickHouse's default ``max_query_size``: the parser's cap on a query's text."""

#: A tenant's ClickHouse login: tenant id -> (user, password).
TenantLogin = Callable[[str], tuple[str, str]]
_ERROR_CODE = re.compile(r"Code: (\d+)")
_EXCEPTION_LINE = re.compile(rb"^Code: \d+, e\.displayText\(\) = |^Code: \d+\. DB::Exception")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The client's own deadline is the server's plus this, so that normally the server's clean
# TIMEOUT_EXCEEDED arrives first; the client deadline catches a server that stopped answering.
_CLIENT_GRACE_SECONDS = 2.0
# Below every server's keep-alive timeout (3 s on many versions), so the pool never reuses a
# connection the server is about to close.
_KEEPALIVE_SECONDS = 2.0

#: ``ArrowStream`` output (ClickHouse PR #11088) first shipped in 20.5; older servers answer the
#: read path in ``JSONCompact``. How servers write some types to Arrow changed after 20.5
#: (strings as binary, Date as UInt16, Bool as UInt8...): ``conform_array`` evens that out.
ARROW_STREAM_SINCE = (20, 5)
#: From 22.6 ``X-ClickHouse-Summary`` carries the query's figures by itself (PR #36884); before,
#: it is all zeros unless ``send_progress_in_http_headers=1``.
COMPLETE_SUMMARY_SINCE = (22, 6)
#: What the query compiler's SQL needs from a server, each with a probe that fails, or answers
#: something else, on a server without it: (feature, probe returning one row ``v``, expected v).
#: Probing asks the server itself, so no version table can be wrong about a build or a backport.
COMPILER_FEATURE_PROBES: tuple[tuple[str, str, str], ...] = (
    (
        "DateTime64",
        "SELECT toString(toDateTime64('2026-01-02 03:04:05.123456', 6, 'UTC')) AS v",
        "2026-01-02 03:04:05.123456",
    ),
    ("Date32", "SELECT toString(toDate32('1900-01-01')) AS v", "1900-01-01"),
    ("Bool", "SELECT toString(CAST(1 AS Bool)) AS v", "true"),
    (
        "formatDateTime %f (microseconds)",
        "SELECT formatDateTime(toDateTime64('2026-01-02 03:04:05.123456', 6, 'UTC'), '%f', 'UTC')"
        " AS v",
        "123456",
    ),
    (
        "timeZoneOffset of a DateTime64",
        "SELECT toString(timeZoneOffset(toTimeZone(toDateTime64('2026-01-02 03:04:05', 6, 'UTC'),"
        " 'Asia/Kolkata'))) AS v",
        "19800",
    ),
    ("leftPad", "SELECT leftPad('5', 2, '0') AS v", "05"),
    (
        "toStartOfSecond",
        "SELECT toString(toStartOfSecond(toDateTime64('2026-01-02 03:04:05.5', 6, 'UTC'))) AS v",
        "2026-01-02 03:04:05.000000",
    ),
    ("sumOrNull of Decimal128", "SELECT toString(sumOrNull(toDecimal128(1, 0))) AS v", "1"),
    (
        "quantileExactInclusive",
        "SELECT toString(quantileExactInclusive(0.5)(number)) AS v FROM numbers(3)",
        "1",
    ),
    (
        "minOrNull/maxOrNull",
        # Not numbers(0): servers before 19.x read a count of 0 as "no end".
        "SELECT toString(isNull(minOrNull(number))) AS v FROM numbers(1) WHERE number > 1",
        "1",
    ),
    ("translateUTF8", "SELECT translateUTF8('\u212aB', '\u212aB', 'kb') AS v", "kb"),
)
#: The setting the compiler sends for time buckets: without it, date functions clamp or wrap
#: outside 1970-2106 (a server without it runs the query, with those buckets wrong).
COMPILER_SETTINGS = ("enable_extended_results_for_datetime_functions",)
# Long enough that a server before 22.6, asked for progress headers only to fill the summary,
# never writes one (http_headers_progress_interval_ms; a day).
_NO_PROGRESS_HEADERS_MS = "86400000"
# Rows and bytes of JSON text decoded into one record batch: small enough that the Python objects
# of one decoded batch (about 100 bytes a value) stay around a megabyte.
_JSON_BATCH_ROWS = 8_192
_JSON_BATCH_BYTES = 1 << 20
# Network reads of a text response (each becomes a list of line objects).
_CHUNK_BYTES = 64 << 10
# Set while probing a server's features: failures are the answer there, not errors to log.
_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar("probing", default=False)


class HttpBackend:
    """A ClickHouse server over its HTTP interface."""

    name = "clickhouse-server"

    def __init__(
        self,
        url: str,
        *,
        user: str = "default",
        password: str = "",
        database_for_state: str = "default",
        pool_size: int = 8,
        connect_timeout: float = 5.0,
        tenant_login: TenantLogin | None = None,
        text_inserts: bool = False,
    ) -> None:
        """Describe the server; nothing connects before the first call.

        ``database_for_state`` is the session's default database (HTTP ``database``): where
        unqualified table names resolve; it must exist. ``pool_size`` caps concurrent
        connections; further calls wait for a free one. Calls without a ``timeout_seconds``
        have no deadline, as on the embedded backend. ``tenant_login`` gives each tenant's user
        and password; tenants query as their users once ``detect_row_policies`` found the server
        able to enforce row policies. ``text_inserts`` sends inserts as ``TabSeparated`` even to
        a server that takes ``ArrowStream`` (for comparisons, and a way out should a server's
        Arrow reader misbehave).
        """
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._url = url.rstrip("/") + "/"
        # Headers rather than URL arguments: credentials stay out of URLs and access logs.
        self._headers = {"X-ClickHouse-User": user, "X-ClickHouse-Key": password}
        self._database = database_for_state
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._dialect: Dialect | None = None
        self._columns: dict[tuple[str, str], dict[str, str]] = {}
        self._settings: frozenset[str] | None = None
        self._feature_gaps: list[str] | None = None
        self._kills: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed = False
        self._tenant_login = tenant_login
        self._text_inserts = text_inserts
        #: True once tenants query as their own users under row policies (``detect_row_policies``).
        self.enforces_row_policies = False
        #: Why row policies are not enforced, once ``detect_row_policies`` has looked.
        self.row_policy_gap = "the server has not been asked yet"

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._url

    async def detect_row_policies(self) -> bool:
        """Turn on tenant users if the server has SQL access control and logins are configured.

        The server is asked whether it knows row policies (``system.row_policies``, 20.x and
        newer); 18.16 and chDB-like engines do not, and a server the service user may not ask
        either is treated the same way: the compiler's tenant filter is then the only layer,
        which the service says at start.
        """
        probing = _PROBING.set(True)
        try:
            await self.query_rows(
                "SELECT count() AS n FROM system.row_policies", timeout_seconds=10
            )
        except AnalyticsError as exc:
            if exc.kind is not ErrorKind.INTERNAL:
                raise
            self.row_policy_gap = "the server has no SQL access control (row policies need 20.x+)"
        else:
            self.row_policy_gap = (
                "" if self._tenant_login else "ANALYTICS_TENANT_CREDENTIAL_SECRET is not set"
            )
        finally:
            _PROBING.reset(probing)
        self.enforces_row_policies = not self.row_policy_gap
        return self.enforces_row_policies

    def _login_headers(self, tenant: str) -> dict[str, str] | None:
        """The headers that make a read run as ``tenant``'s user (None: the service's user)."""
        if not self.enforces_row_policies or self._tenant_login is None or not tenant:
            return None
        user, password = self._tenant_login(tenant)
        return {"X-ClickHouse-User": user, "X-ClickHouse-Key": password}

    # --- the interface ---------------------------------------------------------------------

    async def execute(
        self, query: CompiledQuery, *, timeout_seconds: float, query_id: str
    ) -> QueryResult:
        """Run a compiled query read-only and return all its rows (see ``stream``)."""
        async with self.stream(query, timeout_seconds=timeout_seconds, query_id=query_id) as stream:
            batches = [batch async for batch in stream]
        table = pa.Table.from_batches(batches) if batches else stream.empty_table()
        return QueryResult(table, stream.stats)

    @asynccontextmanager
    async def stream(
        self, query: CompiledQuery, *, timeout_seconds: float, query_id: str
    ) -> AsyncIterator[HttpResultStream]:
        """Run a compiled query read-only; the stream yields its rows as Arrow record batches.

        Columns are named by the compiled aliases and typed by the compiled logical types (see
        ``conform_array``). The query is killed on the server when the context is left before the
        last batch was read (a cancelled call, an error, an early ``break``). Raises
        AnalyticsError: TIMEOUT, UNAVAILABLE (server unreachable, or ``REPLICA_MISSING``),
        INTERNAL with the server's message.
        """
        started = time.perf_counter()
        login: dict[str, str] | None = None
        try:
            dialect = await self.dialect()
            arrow = dialect.version[:2] >= ARROW_STREAM_SINCE
            sql, arguments = await self._read_request(query, dialect, arrow, timeout_seconds)
            login = self._login_headers(query.tenant)
            response = await self._open(
                sql, arguments, timeout=timeout_seconds, query_id=query_id, headers=login
            )
        except AnalyticsError as exc:
            raise _read_path_error(exc, as_tenant=login is not None) from None
        stream = HttpResultStream(
            response,
            query.columns,
            arrow=arrow,
            server_timezone=dialect.server_timezone,
            started=started,
            timeout_seconds=timeout_seconds,
            query_id=query_id,
        )
        try:
            yield stream
        finally:
            if stream.complete:
                response.release()
            else:
                # Left early: the server may still be running it, and the rest of the body must
                # not reach the next request on this connection.
                self._kill_later(query_id)
                response.close()

    async def missing_compiler_features(self) -> list[str]:
        """What the query compiler's SQL needs and this server lacks (empty: none).

        Found by running ``COMPILER_FEATURE_PROBES`` and looking for ``COMPILER_SETTINGS`` in
        the server's settings, once per backend. Raises AnalyticsError when the server cannot be
        asked (a probe failing for anything but an engine error).
        """
        if self._feature_gaps is None:
            gaps: list[str] = []
            probing = _PROBING.set(True)
            try:
                for feature, probe, expected in COMPILER_FEATURE_PROBES:
                    try:
                        rows = await self.query_rows(probe, timeout_seconds=10)
                    except AnalyticsError as exc:
                        if exc.kind is not ErrorKind.INTERNAL:
                            raise
                        gaps.append(feature)
                        continue
                    if not rows or str(rows[0]["v"]) != expected:
                        gaps.append(feature)
            finally:
                _PROBING.reset(probing)
            known = await self.server_settings()
            gaps += [f"setting {name}" for name in COMPILER_SETTINGS if name not in known]
            self._feature_gaps = gaps
        return list(self._feature_gaps)

    async def server_settings(self) -> frozenset[str]:
        """The names of the settings the server has (asked once)."""
        if self._settings is None:
            rows = await self.query_rows("SELECT name FROM system.settings", timeout_seconds=10)
            self._settings = frozenset(str(row["name"]) for row in rows)
        return self._settings

    async def _read_request(
        self, query: CompiledQuery, dialect: Dialect, arrow: bool, timeout_seconds: float
    ) -> tuple[str, dict[str, str]]:
        """The SQL to send and the HTTP arguments of one read."""
        known = await self.server_settings()
        bound, carried = bind_for_http(dialect, query.sql, query.parameters)
        arguments: dict[str, str] = {}
        for name, value in query.settings.items():
            if name in known:
                arguments[name] = _setting_text(value)
            else:
                log.debug(
                    "setting skipped: the server does not have it",
                    setting=name,
                    version=".".join(map(str, dialect.version)),
                )
        if arrow:
            wanted = {
                # Strings as Arrow strings, not binary; LowCardinality decoded, not dictionaries.
                "output_format_arrow_string_as_string": "1",
                "output_format_arrow_low_cardinality_as_dictionary": "0",
            }
            if dialect.version[:2] < COMPLETE_SUMMARY_SINCE:
                wanted |= {
                    "send_progress_in_http_headers": "1",
                    "http_headers_progress_interval_ms": _NO_PROGRESS_HEADERS_MS,
                }
        else:
            wanted = {
                "output_format_json_quote_64bit_integers": "1",
                # NaN and infinities as "nan"/"inf" rather than null, which is NULL's spelling.
                "output_format_json_quote_denormals": "1",
                "output_format_write_statistics": "1",
            }
        arguments |= {name: value for name, value in wanted.items() if name in known}
        # Last, so that no compiled setting can loosen them.
        arguments |= carried | {
            "readonly": "2",
            "max_execution_time": dialect.execution_time(timeout_seconds),
            "timeout_overflow_mode": "throw",
            "wait_end_of_query": "1",
            "default_format": "ArrowStream" if arrow else "JSONCompact",
        }
        return bound, arguments

    async def ping(self) -> None:
        """Run ``SELECT 1``; raise AnalyticsError (UNAVAILABLE when unreachable) otherwise."""
        await self.query_rows("SELECT 1 AS one", timeout_seconds=10)

    async def server_version(self) -> tuple[int, ...]:
        """The server's version, e.g. ``(18, 16, 1)``."""
        rows = await self.query_rows("SELECT version() AS version", timeout_seconds=10)
        return parse_version(str(rows[0]["version"]))

    async def dialect(self) -> Dialect:
        """The server's capabilities (asked once, then kept for this backend's lifetime)."""
        if self._dialect is None:
            # Plain request without parameters: binding itself depends on the dialect.
            payload = await self._post(
                "SELECT version() AS version, timezone() AS tz",
                {"default_format": "TSVWithNamesAndTypes"},
                timeout=10,
                idempotent=True,
            )
            row = decode_tsv_with_names_and_types(payload, "UTC")[0]
            self._dialect = Dialect.for_server(parse_version(row["version"]), row["tz"])
            log.info(
                "clickhouse server",
                url=self._url,
                version=".".join(map(str, self._dialect.version)),
                layout=self._dialect.layout.value,
                server_parameters=self._dialect.server_parameters,
            )
        return self._dialect

    async def command(
        self,
        sql: str,
        parameters: Mapping[str, str] | None = None,
        *,
        timeout_seconds: float | None = None,
        query_id: str | None = None,
    ) -> None:
        """Run a statement that returns nothing (DDL, ``INSERT ... SELECT``).

        ``parameters`` hold texts in ClickHouse's escaped form, as the compiler writes them.
        Not retried: a statement may have taken effect before the connection broke.
        """
        dialect = await self.dialect()
        bound, arguments = bind_for_http(dialect, sql, parameters or {})
        if timeout_seconds is not None:
            arguments["max_execution_time"] = dialect.execution_time(timeout_seconds)
        await self._post(bound, arguments, timeout=timeout_seconds, query_id=query_id)

    async def query_rows(
        self,
        sql: str,
        parameters: Mapping[str, str] | None = None,
        *,
        timeout_seconds: float | None = None,
        query_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run a small read-only query and return its rows as dicts of Python values.

        For state tables and lookups, not user queries: the whole result is buffered.
        """
        dialect = await self.dialect()
        bound, arguments = bind_for_http(dialect, sql, parameters or {})
        # readonly=2: no writes, but settings such as max_execution_time may still be set.
        # wait_end_of_query: an error half-way through arrives as an HTTP error, not as text
        # appended to a 200 response.
        arguments |= {
            "default_format": "TSVWithNamesAndTypes",
            "readonly": "2",
            "wait_end_of_query": "1",
        }
        if timeout_seconds is not None:
            arguments["max_execution_time"] = dialect.execution_time(timeout_seconds)
        payload = await self._post(
            bound, arguments, timeout=timeout_seconds, query_id=query_id, idempotent=True
        )
        return decode_tsv_with_names_and_types(payload, dialect.server_timezone)

    async def insert_arrow(
        self,
        database: str,
        table: str,
        data: pa.Table,
        *,
        timeout_seconds: float | None = None,
        query_id: str | None = None,
    ) -> int:
        """Append ``data`` to ``database.table``, matching columns by name; return rows written.

        Values are conformed to the server's column types (``conformed_columns``; a value the
        column cannot hold exactly raises ValueError before anything is sent) and go as one
        ``ArrowStream`` body where the server parses it (``Dialect.arrow_inserts``), otherwise
        as ``TabSeparated`` text (``encode_tsv``), or always as text when the backend was made
        with ``text_inserts``. Versions of one key in one batch are not collapsed on insert
        (``optimize_on_insert = 0`` where the setting exists; older servers never did it).
        """
        names = (database, table, *data.column_names)
        bad = [name for name in names if not _IDENTIFIER.match(name)]
        if bad:
            raise ValueError(f"insert_arrow: not plain identifiers: {bad!r}")
        if not data.num_rows:
            return 0
        dialect = await self.dialect()
        types = await self._column_types(database, table, data.column_names)
        arrow = dialect.arrow_inserts and not self._text_inserts
        encode = encode_arrow_stream if arrow else encode_tsv
        fmt = "ArrowStream" if arrow else "TabSeparated"
        # Encoding is CPU work (pyarrow releases the GIL): keep it off the event loop.
        payload = await asyncio.to_thread(encode, data, types, dialect)
        columns = ", ".join(f"`{name}`" for name in data.column_names)
        arguments = {"query": f"INSERT INTO `{database}`.`{table}` ({columns}) FORMAT {fmt}"}
        if dialect.optimize_on_insert:
            arguments["optimize_on_insert"] = "0"
        if timeout_seconds is not None:
            arguments["max_execution_time"] = dialect.execution_time(timeout_seconds)
        try:
            await self._post(payload, arguments, timeout=timeout_seconds, query_id=query_id)
        except AnalyticsError:
            # The table may have changed under us; look its columns up again next time.
            self._columns.pop((database, table), None)
            raise
        return int(data.num_rows)

    async def last_sync_at(self, database: str, table: str) -> dt.datetime | None:
        """Read the sync-state row of ``database.table`` (None if there is none, or no table).

        Either layout of the state table (``service.schema.sync_state_ddl``): ``DateTime64(6,
        'UTC')`` on modern servers, Int64 microseconds on legacy ones. Which one is decided by
        the type the server returns, not by the dialect, so a legacy table that outlived a server
        upgrade still reads right. Always an aware UTC datetime, as on the embedded backend.
        """
        sql = (
            f"SELECT argMax(last_sync_at, updated_at) AS at, count() AS n "
            f"FROM `{database}`.`{SYNC_STATE_TABLE}` "
            "WHERE table_name = {table:String}"
        )
        try:
            rows = await self.query_rows(sql, {"table": encode_text_parameter(table)})
        except AnalyticsError as exc:
            if exc.metadata.get("engine_code") in MISSING_TABLE_CODES:
                return None
            raise
        if not rows or not rows[0]["n"]:
            return None
        moment = rows[0]["at"]
        if isinstance(moment, int) and not isinstance(moment, bool):
            # The legacy layout keeps microseconds since the epoch (see dialect.py).
            return from_epoch_microseconds(moment)
        if not isinstance(moment, dt.datetime):
            return None
        return moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)

    async def close(self) -> None:
        """Let pending query kills finish (briefly), then close the session's connections."""
        self._closing = True
        if self._kills:
            _, pending = await asyncio.wait(set(self._kills), timeout=self._connect_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- HTTP ------------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise engine_unavailable("the ClickHouse backend is closed")
        if self._session is None:
            # Created on first use so that it belongs to the running event loop.
            connector = aiohttp.TCPConnector(
                limit=self._pool_size,
                limit_per_host=self._pool_size,
                keepalive_timeout=_KEEPALIVE_SECONDS,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                headers=self._headers,
            )
        return self._session

    async def _post(
        self,
        body: str | bytes,
        arguments: Mapping[str, str],
        *,
        timeout: float | None,  # noqa: ASYNC109 - it becomes the server's max_execution_time
        query_id: str | None = None,
        idempotent: bool = False,
    ) -> bytes:
        """POST ``body`` with ``arguments`` in the URL; return the response body.

        Every call carries a ``query_id`` (new unless given) so that it can be found and killed.
        Idempotent calls are retried once when a pooled connection turns out to be closed.
        """
        query_id = query_id or uuid.uuid4().hex
        url = self._request_url(arguments, query_id)
        data = body.encode() if isinstance(body, str) else body
        for attempt in (1, 2):
            try:
                async with self._client().post(
                    url, data=_request_body(data), timeout=self._client_timeout(timeout)
                ) as response:
                    payload = await response.read()
                    failed = response.status != 200
                    error = (
                        _server_error(response, payload, timeout or 0.0, query_id)
                        if failed
                        else None
                    )
            except asyncio.CancelledError:
                self._kill_later(query_id)
                raise
            except Exception as exc:
                if idempotent and attempt == 1 and _stale_connection(exc):
                    log.debug("retrying on a fresh connection", query_id=query_id)
                    continue
                transport = self._transport_error(exc, timeout or 0.0, query_id)
                if transport is None:
                    raise
                raise transport from None
            if error is not None:
                raise error
            return payload
        raise AssertionError("unreachable")  # pragma: no cover

    async def _open(
        self,
        sql: str,
        arguments: Mapping[str, str],
        *,
        timeout: float,  # noqa: ASYNC109 - it becomes the server's max_execution_time
        query_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST a read; return the response once it is known to be a 200, its body unread.

        The caller reads the body and then releases (or, when it stops early, closes) the
        response. Like ``_post`` for an idempotent call otherwise: retried once on a stale pooled
        connection, killed when cancelled or out of time, every failure mapped.
        """
        url = self._request_url(arguments, query_id)
        data = sql.encode()
        for attempt in (1, 2):
            try:
                response = await self._client().post(
                    url,
                    data=_request_body(data),
                    timeout=self._client_timeout(timeout),
                    headers=headers,
                )
                if response.status != 200:
                    try:
                        payload = await response.read()
                    finally:
                        response.release()
            except asyncio.CancelledError:
                self._kill_later(query_id)
                raise
            except Exception as exc:
                if attempt == 1 and _stale_connection(exc):
                    log.debug("retrying on a fresh connection", query_id=query_id)
                    continue
                transport = self._transport_error(exc, timeout, query_id)
                if transport is None:
                    raise
                raise transport from None
            if response.status != 200:
                raise _server_error(response, payload, timeout, query_id)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _request_url(self, arguments: Mapping[str, str], query_id: str) -> yarl.URL:
        """The URL of one request: the default database, ``arguments`` and the query id."""
        arguments = {"database": self._database, **arguments, "query_id": query_id}
        # Percent-encode everything ourselves: '+' must stay '+' in parameter values.
        return yarl.URL(
            self._url + "?" + urllib.parse.urlencode(arguments, quote_via=urllib.parse.quote),
            encoded=True,
        )

    def _client_timeout(self, timeout: float | None) -> aiohttp.ClientTimeout:
        """The whole request's deadline: the server's plus a grace (see _CLIENT_GRACE_SECONDS)."""
        return aiohttp.ClientTimeout(
            total=None if timeout is None else timeout + _CLIENT_GRACE_SECONDS,
            sock_connect=self._connect_timeout,
        )

    def _transport_error(
        self,
        exc: Exception,
        timeout: float,
        query_id: str,
    ) -> AnalyticsError | None:
        """The error a failed exchange with the server means (None: not a transport failure).

        Out of time also kills the query: the server may still be running it.
        """
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            # A TimeoutError too, but it means "unreachable", not "the query was slow".
            return engine_unavailable(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, TimeoutError):
            # Before OSError, which TimeoutError is a subclass of.
            self._kill_later(query_id)
            return query_timeout(timeout, "no answer from the server in time")
        if isinstance(exc, asyncio.IncompleteReadError):
            return engine_unavailable("the server ended the response early")
        if isinstance(exc, aiohttp.ClientError | OSError):
            return engine_unavailable(f"{type(exc).__name__}: {exc}")
        return None

    def _kill_later(self, query_id: str) -> None:
        """Kill ``query_id`` on the server in the background (old servers keep running it)."""
        if self._closing or self._session is None:
            return
        task = asyncio.get_running_loop().create_task(self._kill(query_id))
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)

    async def _kill(self, query_id: str) -> None:
        sql = f"KILL QUERY WHERE query_id = {quote_string(query_id)} ASYNC"
        try:
            await self._post(sql, {}, timeout=self._connect_timeout)
        except Exception as exc:  # best effort: the server may be gone, or we are closing
            log.warning("could not kill a query", query_id=query_id, error=str(exc))

    async def _column_types(
        self, database: str, table: str, wanted: Sequence[str]
    ) -> dict[str, str]:
        """The server's column types of ``database.table`` (cached; refreshed on a miss)."""
        key = (database, table)
        cached = self._columns.get(key)
        if cached is not None and all(name in cached for name in wanted):
            return cached
        rows = await self.query_rows(
            "SELECT name, type FROM system.columns "
            "WHERE database = {db:String} AND table = {t:String}",
            {"db": encode_text_parameter(database), "t": encode_text_parameter(table)},
            timeout_seconds=10,
        )
        if not rows:
            raise _engine_error(f"Code: 60, Table {database}.{table} doesn't exist", "60", "")
        types = {str(row["name"]): str(row["type"]) for row in rows}
        self._columns[key] = types
        return types


# --- the read path: results ----------------------------------------------------------------


class HttpResultStream:
    """The record batches of one read, decoded as the response arrives.

    ``stats`` is complete once iteration ends; ``complete`` says whether the whole answer was
    read (the backend kills the query and drops the connection otherwise).
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        columns: Sequence[OutputColumn],
        *,
        arrow: bool,
        server_timezone: str,
        started: float,
        timeout_seconds: float,
        query_id: str,
    ) -> None:
        """Wrap a 200 response whose body is not read yet (``HttpBackend.stream`` makes it)."""
        self.stats = QueryStats()
        self.complete = False
        self._response = response
        self._columns = tuple(columns)
        self._arrow = arrow
        self._server_timezone = server_timezone
        self._started = started
        self._timeout = timeout_seconds
        self._query_id = query_id
        self._schema: pa.Schema | None = None
        self._elapsed_ns: int | None = None
        if arrow:
            summary = _summary(response.headers.get("X-ClickHouse-Summary", ""))
            self.stats.rows_scanned = summary.get("read_rows", 0)
            self._elapsed_ns = summary.get("elapsed_ns")

    async def __aiter__(self) -> AsyncIterator[pa.RecordBatch]:
        """Each batch as soon as its bytes are in; raises AnalyticsError on any failure."""
        decoded = self._arrow_batches() if self._arrow else self._json_batches()
        try:
            async for batch in decoded:
                yield conform_batch(batch, self._columns)
        except AnalyticsError as exc:
            raise _read_path_error(exc) from None
        except Exception as exc:
            raise self._failure(exc) from None
        self.complete = True
        if self._elapsed_ns is not None:
            self.stats.elapsed_ms = self._elapsed_ns / 1e6
        elif not self.stats.elapsed_ms:
            self.stats.elapsed_ms = (time.perf_counter() - self._started) * 1000

    def empty_table(self) -> pa.Table:
        """A table of no rows, typed like the result's batches would have been."""
        if self._schema is None:
            # The server sent no schema at all: the embedded backend's empty form.
            return pa.table({c.alias: pa.array([], pa.null()) for c in self._columns})
        empty = pa.RecordBatch.from_pylist([], schema=self._schema)
        return pa.Table.from_batches([conform_batch(empty, self._columns)])

    def _failure(self, exc: Exception) -> AnalyticsError:
        """The AnalyticsError for a failure while reading or decoding the body."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return engine_unavailable(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, TimeoutError):
            # The body did not arrive within the budget; the backend kills the query on exit.
            return query_timeout(self._timeout, "no answer from the server in time")
        if isinstance(exc, asyncio.IncompleteReadError):
            return engine_unavailable("the server ended the response early")
        if isinstance(exc, aiohttp.ClientError | OSError):
            return engine_unavailable(f"{type(exc).__name__}: {exc}")
        return _engine_error(
            f"unreadable {'ArrowStream' if self._arrow else 'JSONCompact'} response: "
            f"{type(exc).__name__}: {exc}",
            "",
            self._query_id,
        )

    async def _arrow_batches(self) -> AsyncIterator[pa.RecordBatch]:
        schema: pa.Schema | None = None
        async for message in _arrow_messages(self._response.content):
            if message.type == "schema":
                schema = pa.ipc.read_schema(message)
                self._schema = schema
            elif message.type == "record batch" and schema is not None:
                yield pa.ipc.read_record_batch(message, schema)
            else:
                # Dictionaries only come with LowCardinality as dictionary, which we turn off.
                raise ValueError(f"unexpected Arrow IPC message {message.type!r}")

    async def _json_batches(self) -> AsyncIterator[pa.RecordBatch]:
        decoder = JsonCompactDecoder(self._server_timezone, self._timeout)
        async for lines in _lines(self._response.content):
            for batch in decoder.feed(lines):
                yield batch
            if self._schema is None and decoder.schema is not None:
                self._schema = decoder.schema
        for batch in decoder.finish():
            yield batch
        self._schema = decoder.schema
        statistics = decoder.statistics
        self.stats.rows_scanned = int(statistics.get("rows_read", 0))
        if "elapsed" in statistics:
            self.stats.elapsed_ms = float(statistics["elapsed"]) * 1000


def _summary(header: str) -> dict[str, int]:
    """The integer fields of an ``X-ClickHouse-Summary`` header (numbers are sent as strings)."""
    if not header:
        return {}
    try:
        fields = json.loads(header)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        log.warning("unreadable X-ClickHouse-Summary", header=header[:200])
        return {}
    summary: dict[str, int] = {}
    for name, value in fields.items():
        try:
            summary[name] = int(value)
        except (TypeError, ValueError):
            continue
    return summary


# Arrow IPC streaming format: each message is [0xFFFFFFFF] <int32 metadata length> <metadata
# flatbuffer, padded> <body>; a length of 0 ends the stream. Writers before Arrow 0.15 leave out
# the 0xFFFFFFFF continuation marker.
_CONTINUATION = b"\xff\xff\xff\xff"
# Field 3 of the flatbuffer ``Message`` table (version, header_type, header, bodyLength).
_BODY_LENGTH_SLOT = 4 + 2 * 3


async def _arrow_messages(content: aiohttp.StreamReader) -> AsyncIterator[pa.ipc.Message]:
    """The messages of an Arrow IPC stream, each read in full before it is decoded.

    Reading message by message keeps memory at one record batch, whatever the stream's size.
    """
    while True:
        try:
            head = await content.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return  # the end of the body without an end-of-stream marker
        (length,) = struct.unpack("<i", head)
        if length == -1:
            (length,) = struct.unpack("<i", await content.readexactly(4))
        if length == 0:
            return
        if length < 0:
            raise ValueError(f"bad Arrow IPC metadata length {length}")
        metadata = await content.readexactly(length)
        body_length = _body_length(metadata)
        body = await content.readexactly(body_length) if body_length else b""
        frame = _CONTINUATION + struct.pack("<i", length) + metadata + body
        yield pa.ipc.read_message(pa.py_buffer(frame))


def _body_length(metadata: bytes) -> int:
    """``Message.bodyLength`` from a message's flatbuffer metadata (0 when absent)."""
    root = int.from_bytes(metadata[0:4], "little")
    vtable = root - int.from_bytes(metadata[root : root + 4], "little", signed=True)
    vtable_size = int.from_bytes(metadata[vtable : vtable + 2], "little")
    if vtable_size < _BODY_LENGTH_SLOT + 2:
        return 0
    offset = int.from_bytes(
        metadata[vtable + _BODY_LENGTH_SLOT : vtable + _BODY_LENGTH_SLOT + 2], "little"
    )
    if not offset:
        return 0
    length = int.from_bytes(metadata[root + offset : root + offset + 8], "little", signed=True)
    if length < 0:
        raise ValueError(f"bad Arrow IPC body length {length}")
    return length


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[list[bytes]]:
    """The body's complete lines (without their newline), in groups as the bytes arrive."""
    buffer = bytearray()
    async for chunk in content.iter_chunked(_CHUNK_BYTES):
        cut = chunk.rfind(b"\n")
        if cut < 0:
            buffer += chunk
            continue
        buffer += chunk[:cut]
        lines = bytes(buffer).split(b"\n")
        buffer = bytearray(chunk[cut + 1 :])
        yield lines
    if buffer:
        yield [bytes(buffer)]


class JsonCompactDecoder:
    """An incremental reader of ``JSONCompact`` text: meta, data rows, then the statistics.

    ClickHouse writes that format one data row per line (strings are JSON-escaped, so a value
    never spans lines), which lets rows be decoded a batch at a time. Numbers are kept as the
    server's text and converted by pyarrow with the column's declared type, so 64-bit integers
    (quoted), decimals and floats come out exactly.
    """

    def __init__(self, server_timezone: str, timeout_seconds: float = 0.0) -> None:
        """Decode ``DateTime`` columns without a time zone in ``server_timezone``.

        ``timeout_seconds`` is the query's budget, for the error of a query that ran out of it.
        """
        self.schema: pa.Schema | None = None
        self._timeout = timeout_seconds
        self.statistics: dict[str, Any] = {}
        self._server_timezone = server_timezone
        self._phase = "meta"
        self._meta: list[bytes] = []
        self._tail: list[bytes] = []
        self._rows = bytearray(b"[")
        self._row_count = 0
        self._rows_seen = 0
        self._names: list[str] = []
        self._types: list[str] = []
        self._last = b""

    def feed(self, lines: Sequence[bytes]) -> list[pa.RecordBatch]:
        """Take more lines; return the batches they complete."""
        batches = []
        for line in lines:
            text = line.strip()
            if text and self._phase != "failed":
                self._last = line
            if self._phase == "meta":
                if text == b'"data":':
                    self._read_meta()
                    self._phase = "open"
                else:
                    self._meta.append(line)
            elif self._phase == "open":
                if text != b"[":
                    raise ValueError(f"expected the data array, got {line[:200]!r}")
                self._phase = "data"
            elif self._phase == "data":
                if text in (b"]", b"],"):
                    self._phase = "tail"
                elif _EXCEPTION_LINE.match(text):
                    # The server's error in place of the rest (see finish).
                    self._phase = "failed"
                elif text:
                    # One bytearray per batch, not an object per row: "[[row],[row],..."
                    self._rows += text if text.endswith(b",") else text + b","
                    self._row_count += 1
                    if self._row_count >= _JSON_BATCH_ROWS or len(self._rows) >= _JSON_BATCH_BYTES:
                        batches.append(self._flush())
            elif self._phase == "tail":
                self._tail.append(line)
        return batches

    def finish(self) -> list[pa.RecordBatch]:
        """The last batch, once the body has ended; reads the statistics."""
        if self._phase != "tail":
            # Without wait_end_of_query a failure would end the body in the server's message.
            if _EXCEPTION_LINE.match(self._last.strip()):
                message = self._last.strip().decode("utf-8", "replace")
                code = _code_of(self._last)
                if code in TIMEOUT_CODES:
                    raise query_timeout(self._timeout, message)
                raise _engine_error(message, code, "")
            raise ValueError(
                f"the response ends early, in {self._phase} (last line {self._last[:200]!r})"
            )
        batches = [self._flush()] if self._row_count else []
        tail = json.loads(b"{" + b"\n".join(self._tail))
        rows = tail.get("rows")
        if rows is not None and int(rows) != self._rows_seen:
            raise ValueError(f"the server announced {rows} rows and sent {self._rows_seen}")
        statistics = tail.get("statistics")
        self.statistics = statistics if isinstance(statistics, dict) else {}
        return batches

    def _read_meta(self) -> None:
        head = b"\n".join(self._meta).strip().removesuffix(b",")
        meta = json.loads(head + b"}")["meta"]
        self._names = [str(column["name"]) for column in meta]
        self._types = [str(column["type"]) for column in meta]
        arrays = [json_column([], kind, self._server_timezone) for kind in self._types]
        self.schema = pa.RecordBatch.from_arrays(arrays, names=self._names).schema

    def _flush(self) -> pa.RecordBatch:
        self._rows[-1:] = b"]"  # the last row's comma closes the array
        # surrogateescape: bytes that are not UTF-8 survive to the string columns (see
        # _json_strings) instead of failing the whole batch.
        text = self._rows.decode("utf-8", "surrogateescape")
        self._rows = bytearray(b"[")
        self._row_count = 0
        rows = json.loads(text, parse_float=str, parse_int=str)
        del text
        width = len(self._names)
        if any(len(row) != width for row in rows):
            raise ValueError(f"a row does not have the {width} columns of the meta")
        self._rows_seen += len(rows)
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self._names]
        arrays = [
            json_column(list(values), kind, self._server_timezone)
            for values, kind in zip(columns, self._types, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, names=self._names)


_ARROW_INTEGERS = {
    "Int8": pa.int8(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
}
_DECIMAL_SPEC = re.compile(r"^Decimal(?:(32|64|128|256)\((\d+)\)|\((\d+),\s*(\d+)\))$")
_DECIMAL_BITS_PRECISION = {"32": 9, "64": 18, "128": 38, "256": 76}
_TIME_UNITS = ("s", "ms", "us", "ns")
_ZERO_DATE = "0000-00-00"


def json_column(values: list[Any], declared: str, server_timezone: str) -> pa.Array:
    """One ``JSONCompact`` column (JSON values, numbers as their text) as an exact Arrow array.

    The Arrow type is the one a server's ``ArrowStream`` output would have (``Date`` as date32,
    ``DateTime`` as a UTC timestamp), so both read paths give the same tables. Types without a
    closer match (UUID, enums, 128/256-bit integers, arrays, ...) come back as their text.
    """
    base, _ = _unwrap(declared)
    if base == "Nothing":
        return pa.nulls(len(values))
    if base in _ARROW_INTEGERS:
        return pa.array(values, pa.string()).cast(_ARROW_INTEGERS[base])
    if base in ("Float32", "Float64"):
        # pyarrow parses the shortest text the server writes back into the same binary value,
        # and "nan", "inf", "-inf" too.
        return pa.array(values, pa.string()).cast(
            pa.float32() if base == "Float32" else pa.float64()
        )
    if match := _DECIMAL_SPEC.match(base):
        bits, short_scale, precision_text, long_scale = match.groups()
        precision = _DECIMAL_BITS_PRECISION[bits] if bits else int(precision_text)
        scale = int(short_scale if bits else long_scale)
        kind = (
            pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
        )
        return pa.array(values, pa.string()).cast(kind)
    if base == "Bool":
        return pa.array(values, pa.bool_())
    if base in ("Date", "Date32"):
        text = pa.array(values, pa.string())
        # Servers before 19.x print day 0 (1970-01-01) as 0000-00-00.
        return pc.if_else(pc.equal(text, _ZERO_DATE), "1970-01-01", text).cast(pa.date32())
    if match := _DATETIME_TYPE.match(base):
        return _json_datetimes(values, "s", match["tz"] or server_timezone)
    if match := _DATETIME64_TYPE.match(base):
        unit = _TIME_UNITS[min((int(match["p"]) + 2) // 3, 3)]
        return _json_datetimes(values, unit, match["tz"] or server_timezone)
    return _json_strings(values)


def _json_datetimes(values: list[Any], unit: str, zone: str) -> pa.Array:
    """Local date-time texts of ``zone`` as a UTC timestamp array."""
    text = pa.array(values, pa.string())
    # Old servers print the epoch (whatever the zone) as 0000-00-00 00:00:00.
    zero = pc.starts_with(text, _ZERO_DATE)
    local = pc.if_else(zero, "1970-01-01 00:00:00", text).cast(pa.timestamp(unit))
    # A local time that occurs twice (the hour clocks go back) cannot be told apart in text;
    # the earlier one is taken. UTC, what replicas use, has no such hour.
    aware = pc.assume_timezone(local, timezone=zone, ambiguous="earliest", nonexistent="raise")
    utc = aware.cast(pa.timestamp(unit, tz="UTC"))
    return pc.if_else(zero, pa.scalar(0, pa.timestamp(unit, tz="UTC")), utc)


def _json_strings(values: list[Any]) -> pa.Array:
    """JSON strings (or other JSON values, as their JSON text) as a string array."""
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
    except UnicodeEncodeError:
        pass
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        # Bytes that are not UTF-8 (kept by surrogateescape) go through as they are, as the
        # embedded engine's Arrow output would carry them.
        raw = [None if v is None else v.encode("utf-8", "surrogateescape") for v in values]
        return pa.array(raw, pa.binary()).view(pa.string())


def conform_batch(batch: pa.RecordBatch, columns: Sequence[OutputColumn]) -> pa.RecordBatch:
    """``batch``'s columns in the compiled order and aliases, each conformed to its logical type.

    Raises ValueError when the result lacks one of the compiled aliases.
    """
    names = batch.schema.names
    arrays = []
    for column in columns:
        if column.alias not in names:
            raise ValueError(f"the result has no column {column.alias!r} (it has {names})")
        arrays.append(conform_array(batch.column(names.index(column.alias)), column.type))
    return pa.RecordBatch.from_arrays(arrays, names=[column.alias for column in columns])


def conform_array(array: pa.Array, logical: str) -> pa.Array:
    """One result column in the form the service consumes, whatever the server's output.

    Servers differ in how they write some types to Arrow (by version and settings), so this
    evens them out: dictionaries (LowCardinality) are decoded, binary strings become strings,
    UUIDs their text, UInt8 "bools" (servers before the Bool type) booleans, ``Date`` as UInt16
    days a date32, ``DateTime`` as UInt32 seconds a UTC timestamp. Everything else - the exact
    integer, decimal and float types - passes unchanged.
    """
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    kind = array.type
    if isinstance(kind, pa.BaseExtensionType):
        storage = array.storage
        if kind.extension_name == "arrow.uuid":
            texts = [None if b is None else str(uuid.UUID(bytes=b)) for b in storage.to_pylist()]
            return pa.array(texts, pa.string())
        array, kind = storage, storage.type
    if pa.types.is_fixed_size_binary(kind):
        array, kind = array.cast(pa.binary()), pa.binary()
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        target = pa.string() if pa.types.is_binary(kind) else pa.large_string()
        try:
            return array.cast(target)
        except pa.ArrowInvalid:
            # Not UTF-8: keep the bytes as they are (the embedded engine's output does too).
            return array.view(target)
    if logical == "bool" and pa.types.is_integer(kind):
        return pc.not_equal(array, 0)
    if logical == "date" and pa.types.is_uint16(kind):
        return array.cast(pa.int32()).cast(pa.date32())
    if logical == "timestamp" and pa.types.is_uint32(kind):
        return array.cast(pa.int64()).cast(pa.timestamp("s", tz="UTC"))
    return array


# --- errors -----------------------------------------------------------------------------------


def _request_body(data: bytes) -> bytes | io.BytesIO:
    """A request body as aiohttp sends it without holding the event loop.

    aiohttp writes a ``bytes`` body in one go and warns beyond 1 MiB (a long literal-bound query
    or a large insert gets there); a file-like body goes out in chunks. New for every attempt:
    a retry must not find the stream already read.
    """
    return io.BytesIO(data) if len(data) > _LARGE_BODY_BYTES else data


def bind_for_http(
    dialect: Dialect, sql: str, parameters: Mapping[str, str]
) -> tuple[str, dict[str, str]]:
    """The SQL body and URL arguments of one request carrying ``parameters``.

    Servers cap the request URL (``http_max_uri_size``, 1 MiB by default) and query parameters
    travel in it: values this long go into the body as literals instead. A body beyond the
    parser's own cap (``max_query_size``, 256 KiB by default; every body of a server without
    query parameters has literals) gets the cap raised to its length.
    """
    bound, arguments = dialect.bind(sql, parameters)
    if _url_length(arguments) > MAX_URL_PARAMETER_CHARS:
        bound, arguments = bind_client_side(sql, parameters), {}
    size = len(bound.encode("utf-8"))
    if size > DEFAULT_MAX_QUERY_SIZE - 1024:
        arguments["max_query_size"] = str(size + 65_536)
    return bound, arguments


def _url_length(arguments: Mapping[str, str]) -> int:
    """How many characters ``arguments`` take in a URL query string."""
    return sum(
        len(urllib.parse.quote(name)) + len(urllib.parse.quote(value)) + 2
        for name, value in arguments.items()
    )


def _setting_text(value: str) -> str:
    """A compiled setting's value as an HTTP argument.

    Compiled settings are SQL literals (the embedded backend writes them into a ``SETTINGS``
    clause); a quoted string literal travels as the text it stands for.
    """
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return unescape_text(value[1:-1]).decode("utf-8", "surrogateescape")
    return value


def _stale_connection(exc: Exception) -> bool:
    """Whether ``exc`` is a pooled connection the server had closed (worth one retry).

    Such a connection (server restart, keep-alive expiry) fails only once it is used; a read can
    safely go again on a new one. Connection refused (ClientConnectorError) cannot be helped.
    """
    return isinstance(
        exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
    ) and not isinstance(exc, aiohttp.ClientConnectorError)


def _read_path_error(error: AnalyticsError, *, as_tenant: bool = False) -> AnalyticsError:
    """``error`` as the read path reports it: a missing table is ``REPLICA_MISSING``.

    Nothing has created the replica yet (no loader has run): not ready rather than broken, the
    same error the embedded backend gives. A read sent as a tenant's user that the server
    refuses to let in means the tenant was never provisioned (or lost its grants).
    """
    code = error.metadata.get("engine_code", "")
    if as_tenant and error.kind is ErrorKind.INTERNAL and code in TENANT_LOGIN_CODES:
        return AnalyticsError(
            ErrorKind.FORBIDDEN,
            "the tenant is not provisioned on the analytics engine; provision it with "
            "TenantService.Provision or `analytics tenants provision`",
            "TENANT_NOT_PROVISIONED",
            metadata={"engine_code": code},
        )
    if error.kind is not ErrorKind.INTERNAL or code not in MISSING_TABLE_CODES:
        return error
    return AnalyticsError(
        ErrorKind.UNAVAILABLE,
        "the model's replica table does not exist yet: no loader has created it",
        "REPLICA_MISSING",
        metadata=dict(error.metadata),
    )


def _server_error(
    response: aiohttp.ClientResponse, payload: bytes, timeout: float, query_id: str
) -> AnalyticsError:
    message = payload.decode("utf-8", "replace").strip() or f"HTTP {response.status}"
    code = response.headers.get("X-ClickHouse-Exception-Code", "")
    if not code:
        match = _ERROR_CODE.search(message)
        code = match.group(1) if match else ""
    if code in TIMEOUT_CODES:
        return query_timeout(timeout, message)
    return _engine_error(message, code, query_id)


def _engine_error(message: str, code: str, query_id: str) -> AnalyticsError:
    # A missing table is routine (last_sync_at before the first load); anything else is not,
    # except where a failure is what a probe looks for.
    if _PROBING.get():
        level = log.debug
    else:
        level = log.warning if code in MISSING_TABLE_CODES else log.error
    message = redact_secrets(message)
    level("engine error", engine_message=message[:2000], engine_code=code, query_id=query_id)
    return AnalyticsError(
        ErrorKind.INTERNAL,
        "the analytics engine failed to run the query",
        "ENGINE_ERROR",
        metadata={"engine_message": message[:500], "engine_code": code, "query_id": query_id},
    )


def redact_secrets(message: str) -> str:
    """An engine message with any password or 64-digit hex digest replaced by ``[HIDDEN]``.

    Servers quote the failing statement in their errors; for ``CREATE USER``/``ALTER USER`` that
    statement holds a tenant's password hash, which must reach neither logs nor callers.
    """
    message = _SECRET_IN_STATEMENT.sub(r"\1'[HIDDEN]'", message)
    return _HEX_DIGEST.sub("[HIDDEN]", message)


# --- reading TSVWithNamesAndTypes --------------------------------------------------------------

Converter = Callable[[bytes], Any]
_NULL = b"\\N"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_INTEGER_TYPE = re.compile(r"^U?Int(8|16|32|64|128|256)$")
_DECIMAL_TYPE = re.compile(r"^Decimal(32|64|128|256)?\(")
_DATETIME_TYPE = re.compile(r"^DateTime(?:\('(?P<tz>[^']*)'\))?$")
_DATETIME64_TYPE = re.compile(r"^DateTime64\((?P<p>\d+)(?:,\s*'(?P<tz>[^']*)')?\)$")
# Room for every digit of a Decimal256 (76): the default context holds 28.
_WIDE = decimal.Context(prec=80)


def from_epoch_microseconds(value: int) -> dt.datetime:
    """An aware UTC datetime from microseconds since the epoch (exact, no float step)."""
    return _EPOCH + dt.timedelta(microseconds=value)


def decode_tsv_with_names_and_types(payload: bytes, server_timezone: str) -> list[dict[str, Any]]:
    """Rows of a ``TSVWithNamesAndTypes`` response, each value converted by its column type.

    Plain ``DateTime`` columns are read in ``server_timezone``; every datetime comes back aware,
    in UTC. Types without a converter (arrays, maps, ...) come back as their unescaped text.
    """
    if not payload:
        return []
    lines = payload.split(b"\n")
    if lines[-1]:
        # A response cut short by an error ends without a newline, in the exception's text.
        raise _engine_error(lines[-1].decode("utf-8", "replace"), _code_of(lines[-1]), "")
    lines.pop()
    names = [unescape_bytes(field).decode() for field in lines[0].split(b"\t")]
    types = [unescape_bytes(field).decode() for field in lines[1].split(b"\t")]
    converters = [_converter(kind, server_timezone) for kind in types]
    rows = []
    for line in lines[2:]:
        fields = line.split(b"\t")
        if len(fields) != len(names):
            if _EXCEPTION_LINE.match(line):
                raise _engine_error(line.decode("utf-8", "replace"), _code_of(line), "")
            raise _engine_error(f"malformed result row: {line[:200]!r}", "", "")
        rows.append(
            {
                name: convert(field)
                for name, convert, field in zip(names, converters, fields, strict=True)
            }
        )
    return rows


def _code_of(line: bytes) -> str:
    match = _ERROR_CODE.search(line.decode("utf-8", "replace"))
    return match.group(1) if match else ""


def _converter(kind: str, server_timezone: str) -> Converter:
    if kind.startswith("LowCardinality(") and kind.endswith(")"):
        return _converter(kind[15:-1], server_timezone)
    if kind.startswith("Nullable(") and kind.endswith(")"):
        inner = _converter(kind[9:-1], server_timezone)
        return lambda raw: None if raw == _NULL else inner(raw)
    if _INTEGER_TYPE.match(kind):
        return int
    if kind in ("Float32", "Float64"):
        return float
    if _DECIMAL_TYPE.match(kind):
        # Servers since 21.9 print no trailing zeros (output_format_decimal_trailing_zeros):
        # the column's scale is put back, as the embedded backend returns it (exact: the text
        # has at most that many fractional digits).
        quantum = Decimal(1).scaleb(-_decimal_precision_scale(kind)[1])
        return lambda raw: Decimal(raw.decode()).quantize(quantum, context=_WIDE)
    if kind == "Bool":
        return lambda raw: raw == b"true"
    if kind == "UUID":
        return lambda raw: uuid.UUID(raw.decode())
    if kind == "Date":
        # Servers before 19.x print day 0 (1970-01-01) as 0000-00-00.
        return lambda raw: (
            dt.date(1970, 1, 1) if raw == b"0000-00-00" else dt.date.fromisoformat(raw.decode())
        )
    if kind == "Date32":
        return lambda raw: dt.date.fromisoformat(raw.decode())
    if match := _DATETIME_TYPE.match(kind):
        return _datetime_converter(ZoneInfo(match["tz"] or server_timezone))
    if match := _DATETIME64_TYPE.match(kind):
        return _datetime_converter(ZoneInfo(match["tz"] or server_timezone))
    return _text


def _text(raw: bytes) -> str:
    # surrogateescape: a String holding bytes that are not UTF-8 still round-trips exactly.
    return unescape_bytes(raw).decode("utf-8", "surrogateescape")


def _datetime_converter(zone: ZoneInfo) -> Converter:
    def convert(raw: bytes) -> dt.datetime:
        text = raw.decode()
        if text.startswith("0000-00-00"):
            return _EPOCH  # how old servers print the epoch
        head, _, fraction = text.partition(".")
        # Python keeps microseconds; DateTime64(7..9) digits beyond them are cut, not rounded.
        micro = int((fraction[:6]).ljust(6, "0")) if fraction else 0
        local = dt.datetime.fromisoformat(head).replace(microsecond=micro, tzinfo=zone)
        return local.astimezone(dt.UTC)

    return convert


# --- writing inserts: ArrowStream (23.8+) or TabSeparated (older servers) -------------------
#
# Both start from the same conformed columns (``conformed_columns``): every check that keeps a
# value from being stored other than it was given happens once, before anything is sent, and
# each column becomes the Arrow type that carries it exactly in the declared type. A server that
# reads Arrow gets those columns as they are (its reader maps each Arrow type to a ClickHouse
# type and casts that to the column's: exact for these pairs, tests/integration/
# test_http_insert_formats.py compares every field type with the text path); an older one gets
# them printed as text.

_INTEGER_BOUNDS = {
    f"{'U' if unsigned else ''}Int{bits}": (
        (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    for bits in (8, 16, 32, 64, 128, 256)
    for unsigned in (False, True)
}
_DATE32_RANGE = ("1900-01-01", "2299-12-31")
_DATETIME64_RANGE = (dt.datetime(1900, 1, 1, tzinfo=dt.UTC), dt.datetime(2300, 1, 1, tzinfo=dt.UTC))
_DATETIME_RANGE = (_EPOCH, dt.datetime(2106, 2, 7, 6, 28, 16, tzinfo=dt.UTC))
_PRECISION_UNITS = {0: "s", 3: "ms", 6: "us", 9: "ns"}
_TICKS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_TSV_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\0", "\\0"))


def encode_arrow_stream(data: pa.Table, column_types: Mapping[str, str], dialect: Dialect) -> bytes:
    """``data`` as one Arrow IPC stream (``FORMAT ArrowStream``) for ``column_types``.

    Raises ValueError as ``conformed_columns`` does.
    """
    table = pa.table(conformed_columns(data, column_types, dialect))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def encode_tsv(data: pa.Table, column_types: Mapping[str, str], dialect: Dialect) -> bytes:
    """``data`` as ``TabSeparated`` rows for ``column_types`` (server type names).

    Raises ValueError as ``conformed_columns`` does.
    """
    texts: list[pa.ChunkedArray] = []
    for name, column in conformed_columns(data, column_types, dialect).items():
        text = _column_text(column, _unwrap(column_types[name])[0], dialect)
        texts.append(pc.fill_null(text.cast(pa.binary()), b"\\N"))
    rows = pc.binary_join_element_wise(*texts, b"\t")
    lines = pc.binary_join_element_wise(rows, b"", b"\n")
    return _concatenate(lines)


def conformed_columns(
    data: pa.Table, column_types: Mapping[str, str], dialect: Dialect
) -> dict[str, pa.ChunkedArray]:
    """Each column of ``data`` in the Arrow type that carries it exactly as its server type.

    ``column_types`` are the server's type names. Raises ValueError naming the column when a
    value cannot be written exactly: a column the table lacks, NULLs for a non-Nullable column
    (servers would store the type's default), an integer out of the column's range, a decimal
    with more fractional digits than the column's scale or more digits than its precision, a
    date or time outside what the column holds, sub-second digits a ``DateTime`` cannot keep, or
    an unsupported pairing of Arrow and ClickHouse types.
    """
    conformed: dict[str, pa.ChunkedArray] = {}
    for name in data.column_names:
        if name not in column_types:
            raise ValueError(f"insert_arrow: the table has no column {name!r}")
        declared = column_types[name]
        base, nullable = _unwrap(declared)
        column = _decoded(data.column(name))
        if column.null_count and not nullable:
            raise ValueError(
                f"insert_arrow: column {name!r} has {column.null_count} NULLs "
                f"but its type {declared} is not Nullable"
            )
        try:
            conformed[name] = _conformed(column, base, dialect)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise ValueError(f"insert_arrow: column {name!r} ({declared}): {exc}") from None
    return conformed


def _unwrap(declared: str) -> tuple[str, bool]:
    kind = declared
    if kind.startswith("LowCardinality(") and kind.endswith(")"):
        kind = kind[15:-1]
    if kind.startswith("Nullable(") and kind.endswith(")"):
        return kind[9:-1], True
    return kind, False


def _decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        return pa.chunked_array(
            [chunk.dictionary_decode() for chunk in column.chunks], column.type.value_type
        )
    if isinstance(column.type, pa.BaseExtensionType):
        storage = [chunk.storage for chunk in column.chunks]
        return pa.chunked_array(storage, column.type.storage_type)
    return column


def _conformed(column: pa.ChunkedArray, base: str, dialect: Dialect) -> pa.ChunkedArray:
    """One column checked against ``base`` (the declared type without Nullable) and typed."""
    arrow = column.type
    if base in ("String", "UUID") or base.startswith(("FixedString(", "Enum8(", "Enum16(")):
        if base == "UUID" and pa.types.is_fixed_size_binary(arrow) and arrow.byte_width == 16:
            return _uuid_text(column)
        if not (pa.types.is_string(arrow) or pa.types.is_large_string(arrow)) and not (
            pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow)
        ):
            raise ValueError(f"cannot write Arrow {arrow} as text")
        # UUIDs and enums travel as their text, which the server parses into the column's type.
        return column
    if base in _INTEGER_BOUNDS:
        return _conformed_integer(column, base)
    if base in ("Float32", "Float64"):
        if not (pa.types.is_floating(arrow) or pa.types.is_integer(arrow)):
            raise ValueError(f"cannot write Arrow {arrow} as a float")
        if pa.types.is_integer(arrow):
            # Floats print integers as integers: the text path never rounded them; nor do we.
            return pc.cast(column, pa.string())
        return pc.cast(column, pa.float32() if base == "Float32" else pa.float64())
    if _DECIMAL_TYPE.match(base):
        return _conformed_decimal(column, base)
    if base == "Bool":
        if not pa.types.is_boolean(arrow):
            raise ValueError(f"cannot write Arrow {arrow} as Bool")
        return column
    if base in ("Date", "Date32"):
        if not (pa.types.is_date32(arrow) or pa.types.is_date64(arrow)):
            raise ValueError(f"cannot write Arrow {arrow} as a date")
        low, high = dialect.date_range if base == "Date" else _DATE32_RANGE
        days = pc.cast(column, pa.date32())
        _check_range(days, dt.date.fromisoformat(low), dt.date.fromisoformat(high))
        return days
    if match := _DATETIME64_TYPE.match(base):
        precision = int(match["p"])
        if precision not in _PRECISION_UNITS:
            raise ValueError(f"DateTime64 precision {precision} is not supported")
        return _conformed_timestamp(column, _PRECISION_UNITS[precision], _DATETIME64_RANGE)
    if _DATETIME_TYPE.match(base):
        return _conformed_timestamp(column, "s", _DATETIME_RANGE)
    raise ValueError(f"cannot write Arrow {arrow} into {base}")


def _uuid_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    values = [None if raw is None else str(uuid.UUID(bytes=raw)) for raw in column.to_pylist()]
    return pa.chunked_array([pa.array(values, pa.string())])


def _conformed_integer(column: pa.ChunkedArray, base: str) -> pa.ChunkedArray:
    arrow = column.type
    if pa.types.is_boolean(arrow):
        column = pc.cast(column, pa.uint8())
    elif pa.types.is_timestamp(arrow):
        # Integer columns hold timestamps as microseconds since the epoch (legacy layout).
        column = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    elif not pa.types.is_integer(arrow):
        raise ValueError(f"cannot write Arrow {arrow} as {base}")
    # Old servers wrap an out-of-range integer silently, new ones when casting it.
    low, high = _INTEGER_BOUNDS[base]
    _check_range(column, low, high)
    # Arrow has no 128- and 256-bit integers: those columns get the number's text, which the
    # server parses (a cast from String) exactly.
    target = _ARROW_INTEGERS.get(base)
    return pc.cast(column, target if target is not None else pa.string())


def _conformed_decimal(column: pa.ChunkedArray, base: str) -> pa.ChunkedArray:
    arrow = column.type
    if pa.types.is_integer(arrow):
        # The number's text: exact for any integer the column's range holds.
        return pc.cast(column, pa.string())
    if not pa.types.is_decimal(arrow):
        raise ValueError(f"cannot write Arrow {arrow} as {base} exactly")
    precision, scale = _decimal_precision_scale(base)
    # The column's own precision and scale: a safe cast refuses to drop fractional digits, where
    # the server would silently truncate them, and a value too large for the column.
    target = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    return pc.cast(column, target)


def _decimal_precision_scale(base: str) -> tuple[int, int]:
    """``Decimal(P, S)`` -> (P, S); ``Decimal64(S)`` and its kind -> (their largest P, S)."""
    match = _DECIMAL_SPEC.match(base)
    if match is None:
        raise ValueError(f"unknown decimal type {base}")
    bits, short_scale, precision, long_scale = match.groups()
    if bits:
        return _DECIMAL_BITS_PRECISION[bits], int(short_scale)
    return int(precision), int(long_scale)


def _conformed_timestamp(
    column: pa.ChunkedArray, unit: str, bounds: tuple[dt.datetime, dt.datetime]
) -> pa.ChunkedArray:
    arrow = column.type
    if not pa.types.is_timestamp(arrow):
        raise ValueError(f"cannot write Arrow {arrow} as a timestamp")
    # A naive Arrow timestamp is taken as UTC. The safe cast to the column's unit refuses to
    # drop digits (a DateTime column cannot hold microseconds).
    utc = pc.cast(column, pa.timestamp(arrow.unit, tz="UTC"))
    # Compared as integer ticks: as_py() cannot represent nanoseconds.
    per_second = _TICKS_PER_SECOND[arrow.unit]
    low, high = ((bound - _EPOCH) // dt.timedelta(seconds=1) * per_second for bound in bounds)
    _check_range(pc.cast(utc, pa.int64()), low, high - 1)
    return pc.cast(utc, pa.timestamp(unit, tz="UTC"))


def _column_text(column: pa.ChunkedArray, base: str, dialect: Dialect) -> pa.ChunkedArray:
    """A conformed column as text (nulls stay null) in the form the server parses ``base`` from."""
    arrow = column.type
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return _tsv_escaped(column)
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow):
        return _tsv_escaped(column)
    if pa.types.is_timestamp(arrow):
        match = _DATETIME64_TYPE.match(base) or _DATETIME_TYPE.match(base)
        zone = (match["tz"] if match else None) or dialect.server_timezone
        local = pc.cast(column, pa.timestamp(arrow.unit, tz=zone))
        return pc.strftime(local, format="%Y-%m-%d %H:%M:%S")
    # Integers, decimals at the column's scale, floats (the shortest text that reads back as the
    # same double, inf and nan too), dates (ISO) and booleans (true/false): Arrow prints each as
    # the server reads it.
    return pc.cast(column, pa.string())


def _tsv_escaped(column: pa.ChunkedArray) -> pa.ChunkedArray:
    # The backslash first, so that the escapes added after it are not escaped again.
    for plain, escaped in _TSV_ESCAPES:
        column = pc.replace_substring(column, plain, escaped)
    return column


def _check_range(column: pa.ChunkedArray, low: Any, high: Any) -> None:
    if column.null_count == len(column):
        return
    extremes = pc.min_max(column)
    smallest, largest = extremes["min"].as_py(), extremes["max"].as_py()
    if smallest < low or largest > high:
        raise ValueError(f"values from {smallest} to {largest} do not fit in {low}..{high}")


def _concatenate(lines: pa.ChunkedArray | pa.Array) -> bytes:
    """The bytes of a binary column's values back to back, without a Python step per row."""
    chunks = lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]
    parts: list[bytes] = []
    for chunk in chunks:
        if not len(chunk):
            continue
        wide = chunk.cast(pa.large_binary())
        _, offsets_buffer, data_buffer = wide.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64)
        start, end = int(offsets[wide.offset]), int(offsets[wide.offset + len(wide)])
        parts.append(memoryview(data_buffer)[start:end].tobytes())
    return b"".join(parts)
