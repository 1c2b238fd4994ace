"""The A side: ``analytics serve`` in its own process on a copy of the benchmark data.

chDB lets one process open a data directory, so the served process gets a copy made after the
tables have settled (no merges running, so both copies hold the same parts). Its peak memory is
read from ``/proc/<pid>/status``. Tokens are minted with the development secret both sides
default to.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from analytics.v1 import analytics_pb2_grpc
from service.auth import mint_token
from service.settings import PROJECT_ROOT, Settings

_MIB = 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def copy_data(source: Path, target: Path) -> None:
    """Copy a settled engine data directory for the served process."""
    shutil.rmtree(target, ignore_errors=True)
    # The engine links metadata/ and data/ into store/ with relative symlinks: keep them links.
    try:
        shutil.copytree(source, target, symlinks=True)
    except shutil.Error as error:
        # The source engine is still open and removes parts a merge outdated while the copy
        # runs; those are covered by the merged part, which the served engine loads instead.
        vanished = all("No such file or directory" in str(item[-1]) for item in error.args[0])
        if not vanished:
            raise


class ServedProcess:
    """A running ``analytics serve`` and a gRPC channel to it."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        port: int,
        log_path: Path,
        rest_address: str | None = None,
    ) -> None:
        """Wrap a started process that listens on ``port`` (and on ``rest_address``, if any)."""
        self.process = process
        self.port = port
        self.log_path = log_path
        self.rest_address = rest_address
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_CHANNEL_OPTIONS)
        self.stub: Any = analytics_pb2_grpc.AnalyticsServiceStub(self.channel)
        token = mint_token(
            Settings(), subject="bench", tenant="bench", permissions=["bench.*.read"]
        )
        self.metadata = (("authorization", f"Bearer {token}"),)

    @classmethod
    async def start(
        cls,
        data_dir: Path,
        catalog_path: Path,
        log_path: Path,
        extra_env: Mapping[str, str] | None = None,
        *,
        with_cdc_worker: bool = False,
    ) -> ServedProcess:
        """Start the server on a free port and wait until it serves.

        ``extra_env`` adds settings (``ANALYTICS_REST_PORT=0`` opens the REST port as well). The
        result cache is off unless ``extra_env`` turns it on: a benchmark repeats its requests,
        and its figures are the engine's work, not cache hits (bench/cache_speed.py measures
        those). The engine and Kafka of the caller's environment are not inherited; with
        ``with_cdc_worker`` the process is the ``analytics`` console script, whose ``serve`` runs
        the CDC worker beside the server when ``extra_env`` names Kafka brokers (and writes
        to ``ANALYTICS_CLICKHOUSE_URL`` instead of the data directory when it names one).
        """
        inherited = {
            name: value
            for name, value in os.environ.items()
            if name not in ("ANALYTICS_CLICKHOUSE_URL", "ANALYTICS_KAFKA_BOOTSTRAP_SERVERS")
        }
        env = {
            **inherited,
            "ANALYTICS_LOG_FORMAT": "json",
            "ANALYTICS_DATA_DIR": str(data_dir),
            "ANALYTICS_CATALOG_PATH": str(catalog_path),
            "ANALYTICS_PORT": "0",
            "ANALYTICS_RESULT_CACHE": "false",
            **(extra_env or {}),
        }
        command = (
            [str(Path(sys.executable).with_name("analytics"))]
            if with_cdc_worker
            else [sys.executable, "-m", "service.cli"]
        )
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *command,
                "serve",
                env=env,
                cwd=PROJECT_ROOT,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.returncode is not None:
                break
            log_text = await asyncio.to_thread(log_path.read_text, errors="replace")
            for line in log_text.splitlines():
                if '"serving"' in line:
                    record = json.loads(line)
                    port = int(record["address"].rsplit(":", 1)[1])
                    return cls(process, port, log_path, record.get("rest_address"))
            await asyncio.sleep(0.2)
        if process.returncode is None:
            process.kill()
        await process.wait()
        tail = (await asyncio.to_thread(log_path.read_text, errors="replace"))[-2000:]
        raise RuntimeError(f"analytics serve did not start:\n{tail}")

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match is None:
            raise RuntimeError("no VmHWM in /proc status")
        return int(match.group(1)) / _MIB

    def rss_mib(self) -> float:
        """The process's resident memory now (VmRSS), in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match is None:
            raise RuntimeError("no VmRSS in /proc status")
        return int(match.group(1)) / _MIB

    async def stop(self) -> None:
        """Close the channel and stop the server (SIGTERM, then kill after 30 s)."""
        await self.channel.close()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
