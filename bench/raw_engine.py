"""The B side of the query, FINAL and streaming figures: chDB running the compiled SQL directly.

The same connection type the embedded backend pools (``chdb.connect`` on a data directory), in the
benchmark's own process and thread, with the very SQL text and settings the backend would send:
no gRPC, no asyncio, no thread hop, no protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import chdb
import pyarrow as pa
from pyarrow import ipc

# The backend's own rendering of the SETTINGS clause, so both sides run byte-identical SQL.
from service.backends.embedded import _settings as backend_settings
from service.query.compiler import CompiledQuery

QUERY_TIMEOUT_SECONDS = 30.0


class RawEngine:
    """One chDB connection on the benchmark's data directory."""

    def __init__(self, data_dir: Path) -> None:
        """Connect to the engine's data directory (the embedded backend may share it)."""
        self._connection: Any = chdb.connect(str(data_dir))

    @staticmethod
    def sql(query: CompiledQuery, *, final: bool = True) -> str:
        """The statement the embedded backend sends for ``query`` (FINAL removed if not final)."""
        sql = query.sql
        if not final:
            if sql.count(" FINAL ") != 1:
                raise ValueError("expected exactly one FINAL in the compiled SQL")
            sql = sql.replace(" FINAL ", " ")
        return f"{sql} SETTINGS {backend_settings(QUERY_TIMEOUT_SECONDS, query.settings)}"

    def run(self, query: CompiledQuery, *, final: bool = True) -> pa.Table:
        """Run the query to completion and return its rows as one Arrow table."""
        result = self._connection.query(
            self.sql(query, final=final), "ArrowStream", params=query.parameters
        )
        payload = result.bytes()
        table: pa.Table = ipc.open_stream(payload).read_all()
        return table

    def run_sql(self, sql: str, parameters: Mapping[str, str]) -> pa.Table:
        """Run hand-written SQL with bound ``{name:Type}`` parameters; its rows as Arrow."""
        result = self._connection.query(sql, "ArrowStream", params=dict(parameters))
        table: pa.Table = ipc.open_stream(result.bytes()).read_all()
        return table

    def stream_rows(self, query: CompiledQuery) -> int:
        """Produce the result as Arrow record batches, block by block; return the row count."""
        result = self._connection.send_query(
            self.sql(query), "ArrowStream", params=query.parameters
        )
        rows = 0
        while (chunk := result.fetch()) is not None:
            payload = chunk.bytes()
            if not payload:
                break
            for batch in ipc.open_stream(payload):
                rows += batch.num_rows
        return rows

    def command(self, sql: str) -> None:
        """Run a statement that returns nothing."""
        self._connection.query(sql, "Null")

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()
