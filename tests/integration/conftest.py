"""Fixtures shared by the integration tests.

Module-scoped: each test module gets a server (or the developer's, from
``LOCAL_STACK_CLICKHOUSE_URL``), one backend with its connection pool, and a database of its own;
modules that poll PostgreSQL with the incremental loader get a cluster of their own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cdc_worker.source_schema import source_schema_ddl
from local_stack import ClickHouseServer, LocalStack, make_stack_directory
from service.backends.http import HttpBackend
from service.catalog import Catalog
from tests.conftest import unique_database

#: What the incremental loader asks of a source table: ``updated_at`` stamped on every write.
TOUCH = """
CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$
"""


def loader_source_ddl(catalog: Catalog) -> list[str]:
    """The catalog's source tables, each with a trigger stamping ``updated_at`` (README)."""
    return [
        *source_schema_ddl(catalog),
        TOUCH,
        *(
            f"CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON {model.source} "
            "FOR EACH ROW EXECUTE FUNCTION touch_updated_at()"
            for model in catalog.replicated_models()
        ),
    ]


def comparable(value: Any) -> Any:
    """A PostgreSQL or replica value in the form both sides compare in: uuids as text,
    timestamps as aware UTC datetimes (the replica's come back naive in UTC)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    return value


@pytest.fixture(scope="module")
async def postgres() -> AsyncIterator[LocalStack]:
    """A PostgreSQL cluster of the module's own, its role able to see others' transactions."""
    stack = LocalStack(make_stack_directory(), ["postgres"])
    await stack.astart()
    try:
        # What the loader's role needs to see other roles' open transactions (README).
        await asyncio.to_thread(stack.postgres.execute, "GRANT pg_read_all_stats TO analytics")
        yield stack
    finally:
        await stack.astop()
        stack.remove()


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
