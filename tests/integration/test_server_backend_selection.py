"""`analytics serve` on the ClickHouse server backend refuses a server too old for the compiler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from local_stack import ClickHouseServer, make_stack_directory
from service.api.server import start_server
from service.backends.http import HttpBackend
from service.backends.selection import open_backend
from service.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def clickhouse() -> AsyncIterator[ClickHouseServer]:
    server = ClickHouseServer(make_stack_directory())
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


async def test_settings_select_the_server_backend(clickhouse: ClickHouseServer) -> None:
    backend = open_backend(Settings(clickhouse_url=clickhouse.http_url))
    try:
        assert isinstance(backend, HttpBackend)
        await backend.ping()
    finally:
        await backend.close()


async def test_a_server_too_old_for_the_compiler_is_refused_at_start(
    clickhouse: ClickHouseServer,
) -> None:
    backend = open_backend(Settings(clickhouse_url=clickhouse.http_url))
    assert isinstance(backend, HttpBackend)
    try:
        if not await backend.missing_compiler_features():
            pytest.skip("this ClickHouse server has every feature the compiler needs")
        with pytest.raises(RuntimeError, match=r"needs ClickHouse 23\.8 or newer") as caught:
            await start_server(
                Settings(port=0, rest_port=0, clickhouse_url=clickhouse.http_url), backend=backend
            )
        assert "DateTime64" in str(caught.value)
    finally:
        await backend.close()
