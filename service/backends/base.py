"""The interface every ClickHouse backend implements, and the types it returns.

Results travel as Arrow: exact for 64-bit integers and decimals, columnar for streaming, and
what both chDB and a server can produce without a per-row Python step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from service.query.compiler import CompiledQuery


@dataclass
class QueryStats:
    """The engine's own figures for one query."""

    rows_scanned: int = 0
    elapsed_ms: float = 0.0


@dataclass
class QueryResult:
    """A whole result and its figures."""

    table: pa.Table
    stats: QueryStats
    #: The rollup whose rows computed it ("" for the model's own rows; ``service.rollups``).
    rollup: str = ""


class ResultStream(Protocol):
    """Record batches of one running query; ``stats`` is complete once iteration ends."""

    stats: QueryStats

    def __aiter__(self) -> AsyncIterator[pa.RecordBatch]:
        """Iterate the batches; cancelling the iteration stops the query."""
        ...


class AnalyticsBackend(Protocol):
    """What the service needs from a ClickHouse engine."""

    name: str
    enforces_row_policies: bool

    async def execute(
        self, query: CompiledQuery, *, timeout_seconds: float, query_id: str
    ) -> QueryResult:
        """Run a compiled query read-only and return all its rows."""
        ...

    def stream(
        self, query: CompiledQuery, *, timeout_seconds: float, query_id: str
    ) -> AbstractAsyncContextManager[ResultStream]:
        """Run a compiled query read-only and stream its rows; leaving the context stops it."""
        ...

    async def command(self, sql: str, parameters: Mapping[str, str] | None = None) -> None:
        """Run a statement that returns nothing (DDL, INSERT ... SELECT)."""
        ...

    async def query_rows(
        self, sql: str, parameters: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Run a small internal query (state tables, not user queries) and return its rows."""
        ...

    async def insert_arrow(self, database: str, table: str, data: pa.Table) -> int:
        """Append ``data`` to ``database.table`` (columns matched by name); rows written."""
        ...

    async def last_sync_at(self, database: str, table: str) -> dt.datetime | None:
        """The source time up to which ``database.table`` is complete, if anything recorded one."""
        ...

    async def ping(self) -> None:
        """Raise if the engine cannot answer a trivial query."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


@runtime_checkable
class SoleWriter(Protocol):
    """A backend every write to its engine passes through, in this process.

    The embedded engine is one: only one process opens its data directory, and this process
    writes to it through its backends alone. A server has other clients, so no server backend
    is one.
    """

    @property
    def write_generation(self) -> int:
        """A number that has grown once a write to the engine has returned (or failed)."""
        ...


def write_generation(backend: object) -> int | None:
    """``backend``'s write generation if it is a ``SoleWriter``; None if others write too."""
    return backend.write_generation if isinstance(backend, SoleWriter) else None
