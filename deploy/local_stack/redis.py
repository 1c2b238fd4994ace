"""Redis (Debian's ``redis-server``): loopback, a free port, no persistence."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from local_stack._process import ManagedProcess, StackError, free_port
from local_stack.component import Component
from local_stack.install import redis_binary


class RedisServer(Component):
    """A Redis server without persistence (no RDB snapshots, no AOF) on 127.0.0.1."""

    name = "redis"
    default_timeout = 30.0

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        """Describe the server; the port is kept across restarts."""
        super().__init__(directory)
        self.port = port or free_port()

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0."""
        return f"redis://{self.host}:{self.port}/0"

    def cmdline_marker(self) -> str:
        """Redis retitles its process ``redis-server 127.0.0.1:<port>``."""
        return f"{self.host}:{self.port}"

    def addresses(self) -> dict[str, str]:
        """URL and host:port."""
        return {"url": self.url, "address": f"{self.host}:{self.port}"}

    def _prepare(self) -> ManagedProcess:
        binary = redis_binary()
        if not binary.exists():
            raise StackError(f"{binary} not found: run `python -m local_stack install`")
        args = [
            str(binary),
            "--bind", self.host,
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", "",
            "--loglevel", "notice",
        ]  # fmt: skip
        return ManagedProcess(
            self.name,
            args,
            self.log_path,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            cwd=self.directory,
        )

    def command(self, *parts: str, timeout: float = 5.0) -> bytes:
        """Send one command (RESP array of bulk strings); returns the raw reply line(s)."""
        payload = f"*{len(parts)}\r\n".encode()
        for part in parts:
            data = part.encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(payload)
            return sock.recv(65536)

    def ping(self) -> bool:
        """Whether the server answers PING with PONG."""
        return self.command("PING") == b"+PONG\r\n"

    def _ready(self) -> bool:
        return self.ping()
