"""What every component of the local stack has: a directory, a process, start/stop, a state."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from local_stack._process import LOOPBACK, ManagedProcess, StackError


class Component(abc.ABC):
    """A server started from this package, in a directory of its own, on free loopback ports.

    ``start()`` is ``launch()`` (spawn, returns at once) followed by ``wait_ready()``; the stack
    launches slow components first and waits later. ``stop()`` ends the process group and keeps
    the directory, so ``start()`` again reuses the same ports and data.
    """

    name: ClassVar[str]
    default_timeout: ClassVar[float] = 60.0
    host: str = LOOPBACK

    def __init__(self, directory: Path) -> None:
        """Use (and create) ``directory`` for this component's data, config and log."""
        self.directory = directory.resolve()
        self._process: ManagedProcess | None = None

    @property
    def log_path(self) -> Path:
        """The component's log file (stdout and stderr of its process)."""
        return self.directory / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """The server's pid while running (also its process group id)."""
        return self._process.pid if self._process is not None and self._process.alive() else None

    def output_since_start(self) -> str:
        """The log written since the current start ('' when not started)."""
        return self._process.output_since_start() if self._process is not None else ""

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.alive()

    @abc.abstractmethod
    def _prepare(self) -> ManagedProcess:
        """Create config and data (first start only) and describe the process to run."""

    @abc.abstractmethod
    def _ready(self) -> bool:
        """One readiness probe; may raise, which counts as not ready."""

    def _after_ready(self) -> None:  # noqa: B027 - optional hook
        """Work once the server answers (create roles, databases, ...)."""

    @abc.abstractmethod
    def addresses(self) -> dict[str, str]:
        """How to reach the server (DSNs, URLs, host:port)."""

    def launch(self) -> None:
        """Spawn the server; returns without waiting for it to be ready."""
        if self.running:
            raise StackError(f"{self.name} is already running (pid {self.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = self._prepare()
        self._process.spawn()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers; on failure stop it and raise with the log's tail."""
        if self._process is None:
            raise StackError(f"{self.name} was not launched")
        try:
            self._process.wait_until(
                self._ready, timeout or self.default_timeout, f"waiting for {self.name}"
            )
            self._after_ready()
        except BaseException:
            self.stop()
            raise

    def start(self, timeout: float | None = None) -> None:
        """Start the server and wait until it is ready."""
        self.launch()
        self.wait_ready(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server's process group (keeps the directory for a later ``start()``)."""
        if self._process is not None:
            self._process.stop(timeout)
            self._process = None

    def cmdline_marker(self) -> str:
        """Text found in the server's command line, to recognise it by pid later."""
        return str(self.directory)

    def state(self) -> dict[str, Any]:
        """What ``state.json`` records of this component."""
        return {
            "pid": self.pid,
            "marker": self.cmdline_marker(),
            "directory": str(self.directory),
            "log": str(self.log_path),
            "addresses": self.addresses(),
            "stop_signal": int(self._process.stop_signal) if self._process is not None else 15,
        }
