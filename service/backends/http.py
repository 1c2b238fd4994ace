r"""The ClickHouse server backend over HTTP: one aiohttp session is the connection pool.

What exists now is what the replication worker needs: statements, small typed reads, Arrow
inserts and the sync state, on any server from Debian's 18.16 (the one installable here) to a
current LTS. The read path (``execute``/``stream`` of compiled queries) can be built on the same
pieces: ``_post`` already sends per-query settings and a query id, kills the query when the
caller goes away, and maps every failure; what it still needs is a streaming variant of
``_post``, ``ArrowStream`` output and ``read_rows`` from ``X-ClickHouse-Summary``, all of which
need a modern server (the compiler's SQL does too).

Transport. The design names aiochclient, whose session is an ``aiohttp.ClientSession``; its
query API does not fit here, so requests go through that session directly:

* per-call HTTP arguments (``query_id``, ``max_execution_time``, ``readonly``, ``param_*``) are
  impossible with ``ChClient``, which has one fixed argument set per client;
* ``ChClient`` runs ``str.format`` over SQL that has parameters, which breaks ``{p0:String}``;
* its TSV decoder is not exact (``\\0`` reads as a space, datetimes come back naive, day 0 of a
  ``Date`` as None), and it hides the response status and headers that the read path needs
  (``X-ClickHouse-Summary``, ``X-ClickHouse-Exception-Code``).

Values. Reads use ``TSVWithNamesAndTypes`` and convert each column by its declared type to the
Python values the embedded backend returns (int, Decimal, str, bool, date, aware UTC datetime,
UUID, None). Inserts send ``TabSeparated`` text encoded column-wise with pyarrow compute, driven
by the *server's* column types (looked up once per table): exact for 64-bit integers, decimals
and microsecond timestamps, and refusing rather than losing data (a NULL for a non-Nullable
column, a date a ``Date`` cannot hold, sub-second digits a ``DateTime`` would drop).

Parameters. ``{name:Type}`` placeholders are bound by the server where it supports query
parameters, otherwise on the client (``service.backends.dialect.bind_client_side``).

Errors. Connection refused/reset/closed -> UNAVAILABLE; the server's timeout codes, or no answer
within the budget -> TIMEOUT; any other server error -> INTERNAL with ``engine_message``. When a
call is cancelled or its client-side deadline passes, the query is killed by its id: a server
keeps running a query whose HTTP client went away (18.16 always; newer ones unless
``cancel_http_readonly_queries_on_client_close`` is on, which it is not by default).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog
import yarl

from service.backends.dialect import Dialect, parse_version, quote_string, unescape_bytes
from service.errors import AnalyticsError, ErrorKind, engine_unavailable, query_timeout
from service.query.values import encode_text_parameter
from service.schema import SYNC_STATE_TABLE

log = structlog.get_logger(__name__)

#: ClickHouse error codes that mean "the query ran out of time".
TIMEOUT_CODES = frozenset({"159", "160", "209"})
#: ClickHouse error codes for a missing table or database.
MISSING_TABLE_CODES = frozenset({"60", "81"})
_ERROR_CODE = re.compile(r"Code: (\d+)")
_EXCEPTION_LINE = re.compile(rb"^Code: \d+, e\.displayText\(\) = |^Code: \d+\. DB::Exception")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The client's own deadline is the server's plus this, so that normally the server's clean
# TIMEOUT_EXCEEDED arrives first; the client deadline catches a server that stopped answering.
_CLIENT_GRACE_SECONDS = 2.0
# Below every server's keep-alive timeout (3 s on many versions), so the pool never reuses a
# connection the server is about to close.
_KEEPALIVE_SECONDS = 2.0


class HttpBackend:
    """A ClickHouse server over its HTTP interface."""

    name = "clickhouse-server"
    #: True once tenants query as their own users with row policies (needs SQL RBAC, 20.x+).
    enforces_row_policies = False

    def __init__(
        self,
        url: str,
        *,
        user: str = "default",
        password: str = "",
        database_for_state: str = "default",
        pool_size: int = 8,
        connect_timeout: float = 5.0,
    ) -> None:
        """Describe the server; nothing connects before the first call.

        ``database_for_state`` is the session's default database (HTTP ``database``): where
        unqualified table names resolve; it must exist. ``pool_size`` caps concurrent
        connections; further calls wait for a free one. Calls without a ``timeout_seconds``
        have no deadline, as on the embedded backend.
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
        self._kills: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed = False

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._url

    # --- the interface ---------------------------------------------------------------------

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
        bound, arguments = dialect.bind(sql, parameters or {})
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
        bound, arguments = dialect.bind(sql, parameters or {})
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

        Values are encoded for the server's column types (see ``encode_tsv``); a value the
        column cannot hold exactly raises ValueError before anything is sent. Versions of one
        key in one batch are not collapsed on insert (``optimize_on_insert = 0`` where the
        setting exists; older servers never did it).
        """
        names = (database, table, *data.column_names)
        bad = [name for name in names if not _IDENTIFIER.match(name)]
        if bad:
            raise ValueError(f"insert_arrow: not plain identifiers: {bad!r}")
        if not data.num_rows:
            return 0
        dialect = await self.dialect()
        types = await self._column_types(database, table, data.column_names)
        # Encoding is CPU work (pyarrow releases the GIL): keep it off the event loop.
        payload = await asyncio.to_thread(encode_tsv, data, types, dialect)
        columns = ", ".join(f"`{name}`" for name in data.column_names)
        arguments = {"query": f"INSERT INTO `{database}`.`{table}` ({columns}) FORMAT TabSeparated"}
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
        """Read the sync-state row of ``database.table`` (None if there is none, or no table)."""
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
        if isinstance(moment, int):
            # The legacy layout keeps microseconds since the epoch (see dialect.py).
            return from_epoch_microseconds(moment)
        if not isinstance(moment, dt.datetime):
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)

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
        arguments = {"database": self._database, **arguments, "query_id": query_id}
        # Percent-encode everything ourselves: '+' must stay '+' in parameter values.
        url = yarl.URL(
            self._url + "?" + urllib.parse.urlencode(arguments, quote_via=urllib.parse.quote),
            encoded=True,
        )
        data = body.encode() if isinstance(body, str) else body
        client_timeout = aiohttp.ClientTimeout(
            total=None if timeout is None else timeout + _CLIENT_GRACE_SECONDS,
            sock_connect=self._connect_timeout,
        )
        for attempt in (1, 2):
            try:
                async with self._client().post(url, data=data, timeout=client_timeout) as response:
                    payload = await response.read()
                    if response.status != 200:
                        raise _server_error(response, payload, timeout or 0.0, query_id)
                    return payload
            except AnalyticsError:
                raise
            except asyncio.CancelledError:
                self._kill_later(query_id)
                raise
            except aiohttp.ConnectionTimeoutError as exc:
                # A TimeoutError too, but it means "unreachable", not "the query was slow".
                raise engine_unavailable(f"{type(exc).__name__}: {exc}") from None
            except TimeoutError:
                # Before OSError, which TimeoutError is a subclass of.
                self._kill_later(query_id)
                raise query_timeout(timeout or 0.0, "no answer from the server in time") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A pooled connection the server closed (restart, keep-alive expiry) fails only
                # once it is used; a read can safely go again on a new one. Connection refused
                # (ClientConnectorError) cannot be helped by retrying.
                stale = not isinstance(exc, aiohttp.ClientConnectorError)
                if idempotent and stale and attempt == 1:
                    log.debug("retrying on a fresh connection", query_id=query_id)
                    continue
                raise engine_unavailable(f"{type(exc).__name__}: {exc}") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise engine_unavailable(f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

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


# --- errors -----------------------------------------------------------------------------------


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
    # A missing table is routine (last_sync_at before the first load); anything else is not.
    level = log.warning if code in MISSING_TABLE_CODES else log.error
    level("engine error", engine_message=message[:2000], engine_code=code, query_id=query_id)
    return AnalyticsError(
        ErrorKind.INTERNAL,
        "the analytics engine failed to run the query",
        "ENGINE_ERROR",
        metadata={"engine_message": message[:500], "engine_code": code, "query_id": query_id},
    )


# --- reading TSVWithNamesAndTypes --------------------------------------------------------------

Converter = Callable[[bytes], Any]
_NULL = b"\\N"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_INTEGER_TYPE = re.compile(r"^U?Int(8|16|32|64|128|256)$")
_DECIMAL_TYPE = re.compile(r"^Decimal(32|64|128|256)?\(")
_DATETIME_TYPE = re.compile(r"^DateTime(?:\('(?P<tz>[^']*)'\))?$")
_DATETIME64_TYPE = re.compile(r"^DateTime64\((?P<p>\d+)(?:,\s*'(?P<tz>[^']*)')?\)$")


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
        return lambda raw: Decimal(raw.decode())
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


# --- writing TabSeparated ---------------------------------------------------------------------

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


def encode_tsv(data: pa.Table, column_types: Mapping[str, str], dialect: Dialect) -> bytes:
    """``data`` as ``TabSeparated`` rows for columns of ``column_types`` (server type names).

    Raises ValueError naming the column when a value cannot be written exactly: a column the
    table lacks, NULLs for a non-Nullable column, an integer out of the column's range, a
    decimal with more fractional digits than the column's scale, a date or time outside what the
    column holds, sub-second digits a ``DateTime`` cannot keep, or an unsupported pairing of
    Arrow and ClickHouse types.
    """
    texts: list[pa.ChunkedArray] = []
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
            text = _column_text(column, base, dialect)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"insert_arrow: column {name!r} ({declared}): {exc}") from None
        except ValueError as exc:
            raise ValueError(f"insert_arrow: column {name!r} ({declared}): {exc}") from None
        texts.append(pc.fill_null(text.cast(pa.binary()), b"\\N"))
    rows = pc.binary_join_element_wise(*texts, b"\t")
    lines = pc.binary_join_element_wise(rows, b"", b"\n")
    return _concatenate(lines)


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
    if isinstance(column.type, pa.ExtensionType):
        storage = [chunk.storage for chunk in column.chunks]
        return pa.chunked_array(storage, column.type.storage_type)
    return column


def _column_text(column: pa.ChunkedArray, base: str, dialect: Dialect) -> pa.ChunkedArray:
    """One column as text (nulls stay null) in the form the server parses ``base`` from."""
    arrow = column.type
    if base in ("String", "UUID") or base.startswith(("FixedString(", "Enum8(", "Enum16(")):
        if base == "UUID" and pa.types.is_fixed_size_binary(arrow) and arrow.byte_width == 16:
            return _uuid_text(column)
        if not (pa.types.is_string(arrow) or pa.types.is_large_string(arrow)) and not (
            pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow)
        ):
            raise ValueError(f"cannot write Arrow {arrow} as text")
        return _tsv_escaped(column)
    if base in _INTEGER_BOUNDS:
        return _integer_text(column, base)
    if base in ("Float32", "Float64"):
        if not (pa.types.is_floating(arrow) or pa.types.is_integer(arrow)):
            raise ValueError(f"cannot write Arrow {arrow} as a float")
        # Arrow prints the shortest text that reads back as the same double (inf, nan too).
        return pc.cast(column, pa.string())
    if _DECIMAL_TYPE.match(base):
        return _decimal_text(column, base)
    if base == "Bool":
        if not pa.types.is_boolean(arrow):
            raise ValueError(f"cannot write Arrow {arrow} as Bool")
        return pc.cast(column, pa.string())
    if base in ("Date", "Date32"):
        if not (pa.types.is_date32(arrow) or pa.types.is_date64(arrow)):
            raise ValueError(f"cannot write Arrow {arrow} as a date")
        low, high = dialect.date_range if base == "Date" else _DATE32_RANGE
        days = pc.cast(column, pa.date32())
        _check_range(days, dt.date.fromisoformat(low), dt.date.fromisoformat(high))
        return pc.cast(days, pa.string())
    if match := _DATETIME64_TYPE.match(base):
        precision = int(match["p"])
        if precision not in _PRECISION_UNITS:
            raise ValueError(f"DateTime64 precision {precision} is not supported")
        zone = match["tz"] or dialect.server_timezone
        return _timestamp_text(column, _PRECISION_UNITS[precision], zone, _DATETIME64_RANGE)
    if match := _DATETIME_TYPE.match(base):
        zone = match["tz"] or dialect.server_timezone
        return _timestamp_text(column, "s", zone, _DATETIME_RANGE)
    raise ValueError(f"cannot write Arrow {arrow} into {base}")


def _tsv_escaped(column: pa.ChunkedArray) -> pa.ChunkedArray:
    # The backslash first, so that the escapes added after it are not escaped again.
    for plain, escaped in _TSV_ESCAPES:
        column = pc.replace_substring(column, plain, escaped)
    return column


def _uuid_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    values = [None if raw is None else str(uuid.UUID(bytes=raw)) for raw in column.to_pylist()]
    return pa.chunked_array([pa.array(values, pa.string())])


def _integer_text(column: pa.ChunkedArray, base: str) -> pa.ChunkedArray:
    arrow = column.type
    if pa.types.is_boolean(arrow):
        return pc.if_else(column, "1", "0")
    if pa.types.is_timestamp(arrow):
        # Integer columns hold timestamps as microseconds since the epoch (legacy layout).
        column = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    elif not pa.types.is_integer(arrow):
        raise ValueError(f"cannot write Arrow {arrow} as {base}")
    # Old servers wrap an out-of-range integer silently instead of refusing it.
    low, high = _INTEGER_BOUNDS[base]
    _check_range(column, low, high)
    return pc.cast(column, pa.string())


def _decimal_text(column: pa.ChunkedArray, base: str) -> pa.ChunkedArray:
    arrow = column.type
    scale = _decimal_scale(base)
    if pa.types.is_integer(arrow):
        return pc.cast(column, pa.string())
    if not pa.types.is_decimal(arrow):
        raise ValueError(f"cannot write Arrow {arrow} as {base} exactly")
    # Rescale to the column's scale first: a safe cast refuses to drop digits, where the
    # server would silently truncate them.
    precision = max(arrow.precision - arrow.scale + scale, 1)
    target = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    return pc.cast(pc.cast(column, target), pa.string())


def _decimal_scale(base: str) -> int:
    numbers = [int(n) for n in re.findall(r"\d+", base[base.index("(") :])]
    return numbers[-1]


def _timestamp_text(
    column: pa.ChunkedArray, unit: str, zone: str, bounds: tuple[dt.datetime, dt.datetime]
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
    local = pc.cast(pc.cast(utc, pa.timestamp(unit, tz="UTC")), pa.timestamp(unit, tz=zone))
    return pc.strftime(local, format="%Y-%m-%d %H:%M:%S")


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
