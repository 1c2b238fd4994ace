"""Shared fixtures. chDB allows one data directory per process, so the embedded engine is one
session-wide backend; tests isolate themselves with their own database names instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from local_stack import ClickHouseServer, make_stack_directory
from service.backends.base import AnalyticsBackend
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.catalog import Catalog, load_catalog
from service.settings import DEFAULT_CATALOG
from tests.chdb_http import ChdbOverHttp


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    """The demo catalog shipped in deploy/."""
    return load_catalog(DEFAULT_CATALOG)


def catalog_in_database(catalog: Catalog, database: str) -> Catalog:
    """The same models in another database, so tests sharing the engine do not collide."""
    return dataclasses.replace(catalog, database=database)


def unique_database(prefix: str) -> str:
    """A database name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded engine's data directory for this test session."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(scope="session")
async def embedded_backend(engine_dir: Path) -> AsyncIterator[EmbeddedBackend]:
    """The one embedded engine of this test session."""
    backend = EmbeddedBackend(engine_dir, pool_size=4)
    yield backend
    await backend.close()


# --- the API suite on every backend ---------------------------------------------------------------


@dataclass
class ApiBackend:
    """A backend the API suite runs on, with what tests need to know about its engine.

    ``kind`` is ``chdb`` (the embedded engine), ``http`` (``HttpBackend`` through
    ``ChdbOverHttp`` to the same engine) or ``server`` (``HttpBackend`` to the installed ClickHouse
    server). ``writer`` is how test data reaches that engine (as a loader's writes would: not
    through the service's read path). ``active`` counts the engine's running queries (not
    counted on a server, where it stays 0: the server's own tests check ``system.processes``);
    ``breakable`` opens another backend of the same kind and a function that makes its engine
    unreachable.
    """

    kind: str
    backend: AnalyticsBackend
    writer: AnalyticsBackend
    active: Callable[[], int]
    breakable: Callable[[], Awaitable[Breakable]]


#: A working backend and what makes its engine unreachable.
Breakable = tuple[AnalyticsBackend, Callable[[], Awaitable[None]]]


@pytest.fixture(scope="session")
async def chdb_front(embedded_backend: EmbeddedBackend) -> AsyncIterator[ChdbOverHttp]:
    """ClickHouse's HTTP interface over the session's embedded engine (see tests/chdb_http.py)."""
    front = ChdbOverHttp(embedded_backend)
    await front.start()
    yield front
    await front.stop()


@pytest.fixture(scope="session")
async def installed_server() -> AsyncIterator[HttpBackend]:
    """The installed ClickHouse server (Debian's), or the developer's from the environment."""
    url = os.environ.get("LOCAL_STACK_CLICKHOUSE_URL")
    process: ClickHouseServer | None = None
    directory = None
    if not url:
        directory = make_stack_directory("api-server-")
        process = ClickHouseServer(directory / "clickhouse")
        await asyncio.to_thread(process.start)
        url = process.http_url
    backend = HttpBackend(url, pool_size=4)
    try:
        yield backend
    finally:
        await backend.close()
        if process is not None:
            await asyncio.to_thread(process.stop)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


async def _breakable_embedded(engine_dir: Path) -> Breakable:
    backend = EmbeddedBackend(engine_dir, pool_size=1)
    return backend, backend.close


async def _breakable_http(embedded_backend: EmbeddedBackend) -> Breakable:
    # A front of its own, stopped to cut the engine off: connections are then refused, as by a
    # server that went away.
    front = ChdbOverHttp(embedded_backend)
    await front.start()
    return HttpBackend(front.url, pool_size=1), front.stop


@pytest.fixture(scope="module", params=["chdb", "http", "server"])
async def api_backend(
    request: pytest.FixtureRequest,
    embedded_backend: EmbeddedBackend,
    engine_dir: Path,
    chdb_front: ChdbOverHttp,
    installed_server: HttpBackend,
) -> AsyncIterator[ApiBackend]:
    """Each backend in turn for a module of API tests; the server skips naming what it lacks."""
    kind = str(request.param)
    if kind == "chdb":
        yield ApiBackend(
            kind,
            embedded_backend,
            embedded_backend,
            lambda: embedded_backend.active_queries,
            lambda: _breakable_embedded(engine_dir),
        )
        return
    if kind == "http":
        front = chdb_front
        http = HttpBackend(front.url, pool_size=4)
        yield ApiBackend(
            kind,
            http,
            embedded_backend,
            lambda: front.active,
            lambda: _breakable_http(embedded_backend),
        )
        await http.close()
        return
    server = installed_server
    gaps = await server.missing_compiler_features()
    if gaps:
        version = ".".join(map(str, (await server.dialect()).version))
        pytest.skip(f"ClickHouse {version} lacks what compiled queries need: {', '.join(gaps)}")

    # Stopping the shared server would break the other tests of the module: a closed session is
    # as unreachable as a stopped server for the backend.
    async def breakable() -> Breakable:
        http = HttpBackend(server.url, pool_size=1)
        return http, http.close

    yield ApiBackend(kind, server, server, lambda: 0, breakable)
