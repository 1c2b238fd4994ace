"""``analytics serve`` as a real process for tests: started, its addresses read from its log.

The process logs JSON to stderr; ``start_serve`` waits for the ``serving`` record (gRPC address,
REST address) and keeps collecting the log lines afterwards, so tests can read audit records.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.settings import PROJECT_ROOT

#: The console script's entry point, run with this interpreter.
ANALYTICS = (sys.executable, "-m", "cdc_worker.cli")


@dataclass
class Served:
    """A running ``analytics serve`` and everything it has logged so far."""

    process: asyncio.subprocess.Process
    serving: dict[str, Any]
    lines: list[str]
    pump: asyncio.Task[None]

    @property
    def port(self) -> int:
        """The gRPC port it bound."""
        return int(str(self.serving["address"]).rsplit(":", 1)[1])

    async def stop(self) -> None:
        """Kill it if it is still running and wait for its log to end."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self.pump


async def _pump(stream: asyncio.StreamReader, sink: list[str]) -> None:
    while line := await stream.readline():
        sink.append(line.decode().rstrip("\n"))


async def start_serve(
    env: Mapping[str, str], *, command: Sequence[str] = ANALYTICS, wait_seconds: float = 60.0
) -> Served:
    """Start ``<command> serve --port 0`` with JSON logs and wait until it serves."""
    process = await asyncio.create_subprocess_exec(
        *command,
        "serve",
        "--port",
        "0",
        env={**env, "ANALYTICS_LOG_FORMAT": "json"},
        cwd=PROJECT_ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert process.stderr is not None
    lines: list[str] = []
    serving: dict[str, Any] = {}
    try:
        while not serving:
            line = (await asyncio.wait_for(process.stderr.readline(), wait_seconds)).decode()
            assert line, "analytics serve ended before serving:\n" + "\n".join(lines)
            lines.append(line.rstrip("\n"))
            if '"serving"' in line:
                serving = json.loads(line)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return Served(process, serving, lines, asyncio.create_task(_pump(process.stderr, lines)))
