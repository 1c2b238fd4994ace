"""ClickHouse server (Debian's ``clickhouse-server``) with a generated config on free ports."""

from __future__ import annotations

import os
import string
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from local_stack._process import ManagedProcess, StackError, free_port
from local_stack.component import Component
from local_stack.install import CLICKHOUSE_CONFIG_DIR, clickhouse_binary


class ClickHouseServer(Component):
    """A ClickHouse server in ``directory``: HTTP, native TCP and interserver ports on loopback.

    The user ``default`` has no password and may connect from 127.0.0.1 and ::1 only.
    ``stop()`` followed by ``start()`` brings the same server back on the same ports with the
    same data (for tests of an unavailable ClickHouse); ``restart()`` does both.
    """

    name = "clickhouse"
    default_timeout = 60.0

    def __init__(
        self,
        directory: Path,
        *,
        http_port: int | None = None,
        tcp_port: int | None = None,
        interserver_http_port: int | None = None,
    ) -> None:
        """Describe the server; ports are chosen once and kept across restarts."""
        super().__init__(directory)
        self.http_port = http_port or free_port()
        self.tcp_port = tcp_port or free_port()
        self.interserver_http_port = interserver_http_port or free_port()
        self.user = "default"
        self.password = ""

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP interface."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def config_path(self) -> Path:
        """The generated server config."""
        return self.directory / "config.xml"

    def addresses(self) -> dict[str, str]:
        """HTTP URL, native protocol address and the user."""
        return {
            "http_url": self.http_url,
            "tcp": f"{self.host}:{self.tcp_port}",
            "user": self.user,
            "password": self.password,
        }

    def _write_config(self) -> None:
        values = {
            "directory": str(self.directory),
            "http_port": str(self.http_port),
            "tcp_port": str(self.tcp_port),
            "interserver_http_port": str(self.interserver_http_port),
        }
        for name in ("config.xml", "users.xml"):
            template = string.Template((CLICKHOUSE_CONFIG_DIR / name).read_text())
            (self.directory / name).write_text(template.substitute(values))
        for sub in ("data", "tmp", "user_files", "format_schemas"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)

    def _prepare(self) -> ManagedProcess:
        binary = clickhouse_binary()
        if not binary.exists():
            raise StackError(f"{binary} not found: run `python -m local_stack install`")
        self._write_config()
        return ManagedProcess(
            self.name,
            [str(binary), f"--config-file={self.config_path}"],
            self.log_path,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"},
            cwd=self.directory,
        )

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.http_url}/ping", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)

    def query(self, sql: str, timeout: float = 30.0) -> str:
        """Run one statement over HTTP as ``default``; returns the response body."""
        request = urllib.request.Request(  # noqa: S310 - loopback URL built here
            f"{self.http_url}/?{urllib.parse.urlencode({'user': self.user})}",
            data=sql.encode(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return str(response.read().decode())
        except urllib.error.HTTPError as exc:
            raise StackError(f"ClickHouse error {exc.code}: {exc.read().decode()[:2000]}") from exc

    def version(self) -> str:
        """The server's version string, as the server reports it."""
        return self.query("SELECT version()").strip()

    def restart(self, down_seconds: float = 0.0, timeout: float | None = None) -> None:
        """Stop, optionally stay down for a while, start again (same ports and data)."""
        self.stop()
        if down_seconds > 0:
            time.sleep(down_seconds)
        self.start(timeout)
