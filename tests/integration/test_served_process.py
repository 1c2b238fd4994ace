"""The service as a user runs it: `analytics` commands in their own processes.

A prepared data directory with 3 M contacts of one tenant, `analytics serve` on a free port,
then: a StreamQuery of more than a million rows with the server's peak memory read from /proc,
a cancelled stream, the `analytics query` client, and a graceful stop on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from service.auth import mint_token
from service.settings import PROJECT_ROOT, Settings
from tests.served import start_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIG_ROWS = 3_000_000
ANALYTICS = [sys.executable, "-m", "service.cli"]
PREPARE = f"""
import asyncio
from pathlib import Path
from service.backends.embedded import EmbeddedBackend
from service.catalog import load_catalog
from service.schema import all_ddl

async def main() -> None:
    catalog = load_catalog(Path({str(PROJECT_ROOT / "deploy" / "catalog.toml")!r}))
    backend = EmbeddedBackend(Path(__import__("sys").argv[1]))
    for statement in all_ddl(catalog):
        await backend.command(statement)
    await backend.command(
        "INSERT INTO analytics.crm_contacts (tenant_id, id, email, status, country, "
        "lifetime_value, is_subscribed, created_at, updated_at, _version, _is_deleted) "
        "SELECT 'big', number, concat('c', toString(number), '@example.com'), 'active', 'DE', "
        "number % 1000, true, now64(6) - number, now64(6), 1, 0 FROM numbers({BIG_ROWS})"
    )
    await backend.close()

asyncio.run(main())
"""


@dataclass
class ServedProcess:
    process: asyncio.subprocess.Process
    port: int
    log_lines: list[str]

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match
        return int(match.group(1))

    def audit_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log_lines:
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("audit"):
                    records.append(record)
        return records


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServedProcess]:
    data_dir = tmp_path_factory.mktemp("served")
    env = {
        **os.environ,
        "ANALYTICS_DATA_DIR": str(data_dir),
        "ANALYTICS_REST_PORT": "0",
    }
    prepare = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PREPARE, str(data_dir), env=env, cwd=PROJECT_ROOT
    )
    assert await asyncio.wait_for(prepare.wait(), 120) == 0
    served = await start_serve(env, command=ANALYTICS)
    yield ServedProcess(served.process, served.port, served.lines)
    await served.stop()


def _metadata() -> tuple[tuple[str, str], ...]:
    token = mint_token(Settings(), subject="tester", tenant="big", permissions=["crm.*.read"])
    return (("authorization", f"Bearer {token}"),)


def _stream_request(limit: int) -> analytics_pb2.StreamQueryRequest:
    return analytics_pb2.StreamQueryRequest(
        model="contacts",
        group_by="id",
        aggregate="max",
        field="lifetime_value",
        limit=limit,
        chunk_rows=8192,
    )


@dataclass
class _Streamed:
    rows: int = 0
    checksum: int = 0
    meta: analytics_pb2.QueryMeta = field(default_factory=analytics_pb2.QueryMeta)
    rss_at_first_chunk_kib: int = 0
    most_rss_after_kib: int = 0


async def _stream_rows(served: ServedProcess, limit: int) -> _Streamed:
    """Stream ``limit`` rows; the server's resident memory at the first chunk and after it."""
    streamed = _Streamed()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        async for message in stub.StreamQuery(_stream_request(limit), metadata=_metadata()):
            if message.HasField("chunk"):
                rss = served.rss_kib()
                if not streamed.rows:
                    streamed.rss_at_first_chunk_kib = rss
                streamed.most_rss_after_kib = max(streamed.most_rss_after_kib, rss)
                streamed.rows += message.chunk.row_count
                streamed.checksum += sum(message.chunk.columns[0].int64_values.values)
            else:
                streamed.meta = message.meta
    return streamed


async def test_stream_of_millions_of_rows_keeps_server_memory_flat(served: ServedProcess) -> None:
    # A full sort emits nothing before it has every row, so the engine's aggregation and sort
    # are done when the first chunk leaves: what grows after it is what the service holds per
    # row streamed (sampled at every chunk the client receives).
    streamed = await _stream_rows(served, BIG_ROWS)
    assert streamed.rows == BIG_ROWS
    assert streamed.checksum == BIG_ROWS * (BIG_ROWS - 1) // 2  # ids 0 .. BIG_ROWS-1, each once
    assert streamed.meta.rows_scanned >= BIG_ROWS
    # The whole result as Arrow alone would be ~72 MB; as Python objects, several hundred.
    growth = streamed.most_rss_after_kib - streamed.rss_at_first_chunk_kib
    assert growth < 32 * 1024, (streamed.rss_at_first_chunk_kib, streamed.most_rss_after_kib)


async def test_cancelled_stream_stops_the_query(served: ServedProcess) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        call = stub.StreamQuery(_stream_request(BIG_ROWS), metadata=_metadata())
        received = 0
        async for message in call:
            received += message.chunk.row_count
            if received >= 3 * 8192:
                call.cancel()
                break
    for _ in range(100):
        cancelled = [r for r in served.audit_records() if r["outcome"] == "cancelled"]
        if cancelled:
            break
        await asyncio.sleep(0.1)
    assert cancelled, served.log_lines[-5:]
    # The server stopped producing: far fewer rows than the result has were sent.
    assert int(str(cancelled[-1]["rows"])) < BIG_ROWS // 2


async def test_query_command_prints_the_json_response(served: ServedProcess) -> None:
    client = await asyncio.create_subprocess_exec(
        *ANALYTICS,
        "query",
        "--target",
        f"127.0.0.1:{served.port}",
        "--tenant",
        "big",
        '{"model": "contacts", "groupBy": "status", "aggregate": "sum", "field": "lifetime_value"}',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    out, err = await asyncio.wait_for(client.communicate(), 60)
    assert client.returncode == 0, err.decode()
    body = json.loads(out)
    # lifetime_value = id % 1000 over 3 M ids: 3000 full cycles of 0..999.
    assert body["data"] == [{"status": "active", "sum_lifetime_value": 3000 * 499500}]
    assert body["meta"]["rowsScanned"] >= BIG_ROWS


async def test_sigterm_stops_gracefully(served: ServedProcess) -> None:
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 30) == 0
    await asyncio.sleep(0.1)
    events = [json.loads(line).get("event") for line in served.log_lines if line.startswith("{")]
    assert "shutting down" in events
    assert events[-1] == "stopped"
