r"""The ClickHouse server backend over HTTP: one aiohttp session is the connection pool.

It serves the whole ``AnalyticsBackend`` interface on any server from Debian's 18.16 (the one
installable here) to a current LTS: the read path of compiled queries (``execute``/``stream``),
statements, small typed reads, Arrow inserts and the sync state. This module is the transport
and the calls; what travels is made and read by its neighbours: ``request`` (SQL body,
parameters, settings), ``results`` with ``arrow_ipc`` and ``json_compact`` (the read path's
answer), ``tsv_results`` (small reads), ``insert_encoding`` (insert bodies) and
``engine_errors`` (what a failure means).

Transport. Requests go through an ``aiohttp.ClientSession`` directly, not through a client
library:

* ``clickhouse-connect`` (the official client; its async client runs on aiohttp too) cannot
  talk to 18.16 at all: both its clients start by reading ``system.settings.readonly``, a column
  18.16 does not have ("Code: 47 ... Unknown identifier: readonly", tried with 1.13.0; its docs
  test 25.x and promise nothing older). On a modern server (chDB 26.9 behind
  tests/chdb_http.py) its ``query_arrow_stream`` read the same Arrow answer 8-10 % slower than
  ``stream`` here (medians at 1 k and 1 M rows, runs alternated, load average 0.8 and 5).
  Using it for modern servers only would add a second transport beside this one, which 18.16
  needs whole (``JSONCompact`` reads, text inserts, client-side binding): so it is not used.
* aiochclient's ``ChClient`` has one fixed argument set per client, where every call here
  carries its own ``query_id``, ``max_execution_time``, ``readonly`` and ``param_*``; it runs
  ``str.format`` over SQL that has parameters, which breaks ``{p0:String}``; its TSV decoder is
  not exact (``\\0`` reads as a space, datetimes come back naive, day 0 of a ``Date`` as None),
  and it hides the response status and headers the read path needs (``X-ClickHouse-Summary``,
  ``X-ClickHouse-Exception-Code``).

Read path (``execute``/``stream``). Every call is read-only (``readonly=2``), bounded by
``max_execution_time`` (whole seconds, rounded up, where the server has no fractions) with
``timeout_overflow_mode=throw``, carries the caller's ``query_id``, and applies the compiled
query's settings that the server has (``system.settings``, asked once): a setting an older server
lacks is skipped rather than failing the query. The answer is read incrementally, one record
batch at a time, so the service's memory stays bounded whatever the result's size. Server-version
gates, found in ClickHouse's changelog:

* ``ArrowStream`` output arrived in 20.5 (PR #11088): newer servers answer in it, older ones in
  ``JSONCompact`` (see ``json_compact``).
* Before 22.6 (PR #36884) ``X-ClickHouse-Summary`` is all zeros unless
  ``send_progress_in_http_headers=1``, which is then sent with a progress interval long enough
  that no progress header is written.
* ``wait_end_of_query=1`` on every read: the summary is final only once the query has ended (the
  server sends headers before the body), and an error half-way through arrives as an HTTP error
  rather than as text appended to a 200 response. The server buffers the answer meanwhile (in
  memory up to ``buffer_size``, then in a temporary file), so the first batch arrives when the
  query is done - which for the compiler's aggregations, sorted before their first row, is when
  it would arrive anyway.

Failures. Connection refused/reset/closed -> UNAVAILABLE; no answer within the budget ->
TIMEOUT; the server's own errors as ``engine_errors`` maps them. When a call is cancelled, its
stream left early or its client-side deadline passes, the query is killed by its id: a server
keeps running a query whose HTTP client went away (18.16 always; newer ones unless
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
import datetime as dt
import re
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pyarrow as pa
import structlog
import yarl

from service.backends.base import QueryResult
from service.backends.dialect import Dialect, parse_version, quote_string
from service.backends.http.column_types import from_epoch_microseconds
from service.backends.http.engine_errors import (
    MISSING_TABLE_CODES,
    PROBING,
    engine_error,
    read_path_error,
    server_error,
)
from service.backends.http.insert_encoding import encode_arrow_stream, encode_tsv
from service.backends.http.request import bind_for_http, request_body, setting_text
from service.backends.http.results import HttpResultStream
from service.backends.http.tsv_results import decode_tsv_with_names_and_types
from service.errors import AnalyticsError, ErrorKind, engine_unavailable, query_timeout
from service.query.compiler import CompiledQuery
from service.query.values import encode_text_parameter
from service.schema import SYNC_STATE_TABLE

log = structlog.get_logger(__name__)

#: A tenant's ClickHouse login: tenant id -> (user, password).
TenantLogin = Callable[[str], tuple[str, str]]
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
        probing = PROBING.set(True)
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
            PROBING.reset(probing)
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
            raise read_path_error(exc, as_tenant=login is not None) from None
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
            probing = PROBING.set(True)
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
                PROBING.reset(probing)
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
                arguments[name] = setting_text(value)
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
                    url, data=request_body(data), timeout=self._client_timeout(timeout)
                ) as response:
                    payload = await response.read()
                    failed = response.status != 200
                    error = (
                        server_error(response, payload, timeout or 0.0, query_id)
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
                    data=request_body(data),
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
                raise server_error(response, payload, timeout, query_id)
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
            raise engine_error(f"Code: 60, Table {database}.{table} doesn't exist", "60", "")
        types = {str(row["name"]): str(row["type"]) for row in rows}
        self._columns[key] = types
        return types


def _stale_connection(exc: Exception) -> bool:
    """Whether ``exc`` is a pooled connection the server had closed (worth one retry).

    Such a connection (server restart, keep-alive expiry) fails only once it is used; a read can
    safely go again on a new one. Connection refused (ClientConnectorError) cannot be helped.
    """
    return isinstance(
        exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
    ) and not isinstance(exc, aiohttp.ClientConnectorError)
