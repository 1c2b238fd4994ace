"""Fixtures shared by the tests of the ClickHouse server path.

Module-scoped: each test module gets a server (or the developer's, from
``LOCAL_STACK_CLICKHOUSE_URL``), one backend with its connection pool, and a database of its own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from local_stack import ClickHouseServer, make_stack_directory
from service.backends.http import HttpBackend
from tests.conftest import unique_database


@dataclass
class Server:
    """The server under test; ``process`` is None when it was started by someone else."""

    url: str
    process: ClickHouseServer | None


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A ClickHouse server of our own in a fresh directory (or the developer's, from the env)."""
    url = os.environ.get("LOCAL_STACK_CLICKHOUSE_URL")
    if url:
        yield Server(url, None)
        return
    directory = make_stack_directory(f"{request.module.__name__.rsplit('.', 1)[-1]}-")
    process = ClickHouseServer(directory / "clickhouse")
    process.start()
    try:
        yield Server(process.http_url, process)
    finally:
        process.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
async def backend(server: Server) -> AsyncIterator[HttpBackend]:
    """One backend (and connection pool) for the whole module, as a service would have."""
    http = HttpBackend(server.url, pool_size=4)
    yield http
    await http.close()


@pytest.fixture(scope="module")
async def database(backend: HttpBackend, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A database of this module's own on the server."""
    name = unique_database(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    await backend.command(f"CREATE DATABASE `{name}`")
    yield name
    await backend.command(f"DROP DATABASE IF EXISTS `{name}`")
