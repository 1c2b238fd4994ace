"""The benchmarks' modern ClickHouse server: the tests' HTTP front over chDB, in its own process.

No ClickHouse server newer than Debian's 18.16 installs here, so the server path of the worker
(``HttpBackend``) is measured against ``tests/chdb_http.py``'s ``ChdbOverHttp`` on an engine of
its own, in a process of its own, as a server would be: its CPU is not the benchmark process's
(read from ``/proc/<pid>/stat``), and chDB opens a data directory from one process only.

``python -m bench.http_front <data_dir>`` prints ``listening <url>`` and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from service.backends.embedded import EmbeddedBackend
from service.settings import PROJECT_ROOT
from tests.chdb_http import ChdbOverHttp

# Whole network reads for the client: the tests' small default exercises framing, not speed.
_RESPONSE_CHUNK_BYTES = 256 * 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU a running process has used so far (from ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class FrontProcess:
    """A running front and its URL."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        """Wrap a started front listening on ``url``."""
        self.process = process
        self.url = url

    @classmethod
    async def start(cls, data_dir: Path) -> FrontProcess:
        """Start a front on an engine in ``data_dir`` and wait until it listens."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.http_front",
            str(data_dir),
            cwd=PROJECT_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
        if not line.startswith("listening "):
            process.kill()
            await process.wait()
            raise RuntimeError(f"the chDB HTTP front did not start: {line!r}")
        return cls(process, line.split()[1])

    def cpu_seconds(self) -> float:
        """User plus system CPU the front has used so far."""
        return process_cpu_seconds(self.process.pid)

    async def stop(self) -> None:
        """SIGTERM, then wait for the engine to close."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def _serve(data_dir: Path) -> None:
    engine = EmbeddedBackend(data_dir, pool_size=4)
    front = ChdbOverHttp(engine, chunk_bytes=_RESPONSE_CHUNK_BYTES)
    await front.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening {front.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await front.stop()
        await engine.close()


if __name__ == "__main__":
    asyncio.run(_serve(Path(sys.argv[1])))
