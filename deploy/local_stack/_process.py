"""Child processes of the local stack: spawn in their own process group, wait, stop, tail logs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOG_TAIL_LINES = 40

_allocated_ports: set[int] = set()
_ports_lock = threading.Lock()


class StackError(RuntimeError):
    """A component could not be installed, started or stopped."""


class StartupError(StackError):
    """A component did not become ready; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on and this process has not handed out."""
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = int(sock.getsockname()[1])
            if port not in _allocated_ports:
                _allocated_ports.add(port)
                return port
    raise StackError("no free port found on 127.0.0.1")


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file (empty text when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return False
    # Field 3 (after the parenthesised command name) is the state; Z = zombie, X = dead.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in {"Z", "X"}


def group_alive(pgid: int) -> bool:
    """Whether any live process is left in the process group."""
    proc = Path("/proc")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        # fields: state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            return True
    return False


def pid_cmdline(pid: int) -> str:
    """The command line of a process, arguments joined by spaces ('' when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", errors="replace").strip()


def stop_group(pgid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Signal a process group, wait for it to empty, SIGKILL what is left after the timeout.

    Returns True when the group had to be killed.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


class ManagedProcess:
    """One server process, started in a new session (its own process group), output to a log."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        """Describe the process; `spawn` starts it."""
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        """The pid (also the process group id) while started."""
        return self._popen.pid if self._popen is not None else None

    def spawn(self) -> None:
        """Start the process; its stdout and stderr are appended to the log file."""
        if self.alive():
            raise StackError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== local_stack: starting {self.name}: {' '.join(self.args)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            try:
                self._popen = subprocess.Popen(  # noqa: S603 - arguments built by this package
                    self.args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env=self.env,
                    start_new_session=True,
                    user=self.user,
                    group=self.user,
                    extra_groups=[] if self.user is not None else None,
                )
            except OSError as exc:
                raise StartupError(f"{self.name} could not be started: {exc}") from exc

    def output_since_start(self) -> str:
        """What the process has written to its log since this start."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(self._log_offset)
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        """Whether the main process is running."""
        return self._popen is not None and self._popen.poll() is None

    def returncode(self) -> int | None:
        """The exit status once the main process ended."""
        return self._popen.poll() if self._popen is not None else None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the whole process group: the stop signal, then SIGKILL after the timeout."""
        if self._popen is None:
            return
        pgid = self._popen.pid
        stop_group(pgid, self.stop_signal, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=5)
        self._popen = None

    def wait_until(
        self,
        ready: Callable[[], bool],
        timeout: float,
        what: str,
        interval: float = 0.2,
    ) -> None:
        """Poll `ready` until it is true; fail early when the process exits, late on timeout."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            code = self.returncode()
            if code is not None:
                raise StartupError(
                    f"{self.name} exited with status {code} before it was ready ({what})"
                    + self._tail()
                )
            try:
                if ready():
                    return
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                detail = f"; last probe error: {last_error}" if last_error else ""
                raise StartupError(
                    f"{self.name} was not ready within {timeout:.0f} s ({what}){detail}"
                    + self._tail()
                )
            time.sleep(interval)

    def _tail(self) -> str:
        tail = log_tail(self.log_path)
        return f"\n--- last lines of {self.log_path}:\n{tail}" if tail else ""


def run_checked(
    args: Sequence[str],
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    timeout: float = 600.0,
    cwd: Path | None = None,
) -> str:
    """Run a command to completion; raise StackError with its output when it fails."""
    try:
        result = subprocess.run(  # noqa: S603 - arguments built by this package
            list(args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            user=user,
            group=user,
            extra_groups=[] if user is not None else None,
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"{what} failed: {exc}") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        tail = "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
        raise StackError(f"{what} failed with status {result.returncode}:\n{tail}")
    return result.stdout
