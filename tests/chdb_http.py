"""``ChdbOverHttp``: ClickHouse's HTTP interface in front of the embedded engine, for tests.

No ClickHouse server newer than Debian's 18.16 can be installed on these machines, so the modern
server paths of ``HttpBackend`` (``ArrowStream``, the ``X-ClickHouse-Summary`` figures, the
compiler's real SQL over HTTP) run against chDB 26.x, the embedded backend's engine, behind this
small front. It runs every query on the real engine; what it adds is the HTTP framing a server
would.

One part is a stand-in, said here because it is the only one: chDB runs everything as its
``default`` user and refuses SQL access control, so the login check a server with RBAC makes is
played by ``logins`` (user -> password, refused with the server's AUTHENTICATION_FAILED otherwise)
and ``system.row_policies`` answers as on such a server. The front records which user sent every
query (``users``), which is what the tenant-user tests assert on.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pyarrow as pa
from aiohttp import web
from pyarrow import ipc

from service.backends.dialect import quote_string
from service.backends.embedded import EmbeddedBackend, _reset_after_error


class ChdbOverHttp:
    """ClickHouse's HTTP interface in front of the embedded engine (chDB, a current ClickHouse).

    What a modern server does for the requests the backend sends: ``default_format``,
    ``param_*`` query parameters, a few settings, ``X-ClickHouse-Summary`` with ``read_rows``
    (the engine's rows read from storage) and ``elapsed_ns``, errors with
    ``X-ClickHouse-Exception-Code`` (404 for a missing table, as servers since 22.x answer), and
    inserts whose statement is the ``query`` argument (``INSERT ... FORMAT <format>``) and whose
    data is the body, parsed by the engine's own input format. The body goes out in small
    pieces, so that Arrow messages straddle network reads.
    """

    #: Settings passed on to the engine (others the front takes and ignores, like readonly).
    APPLIED = frozenset(
        {
            "max_execution_time",
            "timeout_overflow_mode",
            "enable_extended_results_for_datetime_functions",
            "output_format_arrow_string_as_string",
            "output_format_arrow_low_cardinality_as_dictionary",
            "max_query_size",
            "optimize_on_insert",
        }
    )

    def __init__(self, engine: EmbeddedBackend, chunk_bytes: int = 1000) -> None:
        self.engine = engine
        self.chunk_bytes = chunk_bytes
        self.legacy_arrow = False
        self.requests: list[dict[str, str]] = []
        self.summaries: dict[str, dict[str, str]] = {}
        self.kills: list[str] = []
        #: The user each query ran as, by query id, and every (user, SQL) received in order.
        self.users: dict[str, str] = {}
        self.statements: list[tuple[str, str]] = []
        #: Users other than ``default`` that may log in, with their passwords (see the module doc).
        self.logins: dict[str, str] | None = None
        #: Queries running now.
        self.active = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        # A server streams an insert's body of any size; aiohttp would refuse over 1 MiB.
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/", self._handle)
        # A server takes request URLs of up to ``http_max_uri_size`` (1 MiB by default), and the
        # backend sends query parameters in the URL; aiohttp's own default is 8 KiB.
        self._runner = web.AppRunner(app, max_line_size=1 << 20, max_field_size=1 << 16)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arguments = dict(request.query)
        body = await request.read()
        # A server takes the statement from the URL when the body is an insert's data.
        data: bytes | None = body if "query" in arguments else None
        sql = arguments["query"] if data is not None else body.decode()
        self.requests.append(arguments)
        user = request.headers.get("X-ClickHouse-User", "default")
        self.users[arguments.get("query_id", "")] = user
        self.statements.append((user, sql))
        if user != "default" and (
            self.logins is None
            or self.logins.get(user) != request.headers.get("X-ClickHouse-Key", "")
        ):
            message = (
                f"Code: 516. DB::Exception: {user}: Authentication failed. (AUTHENTICATION_FAILED)"
            )
            return web.Response(
                status=403, text=message, headers={"X-ClickHouse-Exception-Code": "516"}
            )
        if sql.lstrip().upper().startswith("KILL QUERY"):
            self.kills.append(sql)
            return web.Response(text="")
        if self.logins is not None and "system.row_policies" in sql:
            return web.Response(text="n\nUInt64\n0\n")
        fmt = arguments.get("default_format", "TabSeparated")
        parameters = {k[6:]: v for k, v in arguments.items() if k.startswith("param_")}
        settings = {k: v for k, v in arguments.items() if k in self.APPLIED}
        self.active += 1
        try:
            if data is not None:
                payload, rows_read, elapsed = await self._insert(sql, data, settings)
            else:
                payload, rows_read, elapsed = await self._run(sql, fmt, parameters, settings)
        except Exception as exc:  # the engine's error, as a server reports it
            self.active -= 1
            message = str(exc)
            match = re.search(r"Code: (\d+)", message)
            code = match.group(1) if match else ""
            return web.Response(
                status=404 if code in ("60", "81") else 500,
                text=message,
                headers={"X-ClickHouse-Exception-Code": code},
            )
        self.active -= 1
        if self.legacy_arrow and fmt == "ArrowStream" and payload:
            payload = legacy_arrow_stream(payload)
        summary = {
            "read_rows": str(rows_read),
            "read_bytes": "0",
            "written_rows": "0",
            "written_bytes": "0",
            "total_rows_to_read": str(rows_read),
            "elapsed_ns": str(int(elapsed * 1e9)),
        }
        self.summaries[arguments.get("query_id", "")] = summary
        response = web.StreamResponse(
            headers={"X-ClickHouse-Summary": json.dumps(summary), "X-ClickHouse-Format": fmt}
        )
        await response.prepare(request)
        for offset in range(0, len(payload), self.chunk_bytes):
            await response.write(payload[offset : offset + self.chunk_bytes])
        await response.write_eof()
        return response

    async def _run(
        self, sql: str, fmt: str, parameters: dict[str, str], settings: dict[str, str]
    ) -> tuple[bytes, int, float]:
        max_query_size = settings.pop("max_query_size", "")
        sql += _settings_clause(settings)

        def query(connection: Any) -> tuple[bytes, int, float]:
            try:
                if max_query_size:
                    # A server applies it from the URL before parsing; SETTINGS in the query
                    # would come too late.
                    connection.query(f"SET max_query_size = {int(max_query_size)}")
                result = connection.query(sql, fmt, params=parameters or None)
            except Exception:
                _reset_after_error(connection)
                raise
            return result.bytes(), int(result.storage_rows_read()), float(result.elapsed())

        async with self.engine._slots:
            with self.engine._connection() as connection:
                return await asyncio.to_thread(query, connection)

    async def _insert(
        self, sql: str, data: bytes, settings: dict[str, str]
    ) -> tuple[bytes, int, float]:
        """``INSERT ... FORMAT <format>`` with ``data`` parsed by that input format."""
        match = _INSERT_FORMAT.match(sql)
        if match is None:
            raise ValueError(f"Code: 62. DB::Exception: not an INSERT ... FORMAT: {sql[:200]}")
        statement = match["statement"] + _settings_clause(settings)

        def insert(connection: Any) -> tuple[bytes, int, float]:
            started = time.perf_counter()
            try:
                with connection.send_insert(statement, match["format"]) as inserter:
                    inserter.append(data)
                    inserter.finish()
            except Exception:
                _reset_after_error(connection)
                raise
            return b"", 0, time.perf_counter() - started

        async with self.engine._slots:
            with self.engine._connection() as connection:
                return await asyncio.to_thread(insert, connection)


def _settings_clause(settings: dict[str, str]) -> str:
    if not settings:
        return ""
    return " SETTINGS " + ", ".join(
        f"{name} = {value if re.fullmatch(r'[0-9.]+', value) else quote_string(value)}"
        for name, value in settings.items()
    )


_INSERT_FORMAT = re.compile(
    r"^\s*(?P<statement>INSERT\s+INTO\s.*?)\s+FORMAT\s+(?P<format>\w+)\s*$",
    re.IGNORECASE | re.DOTALL,
)


def legacy_arrow_stream(payload: bytes) -> bytes:
    """The same batches in the framing of Arrow writers before 0.15, zstd-compressed."""
    table = ipc.open_stream(payload).read_all()
    sink = pa.BufferOutputStream()
    options = ipc.IpcWriteOptions(use_legacy_format=True, compression="zstd")
    with ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=5000)
    return bytes(sink.getvalue().to_pybytes())
