"""The whole local stack: components started in dependency order in one directory."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from local_stack._process import StackError, pid_alive, pid_cmdline, port_open, stop_group
from local_stack.clickhouse import ClickHouseServer
from local_stack.component import Component
from local_stack.connector import ConnectorConfig, connector_env, load_connector_config
from local_stack.install import (
    ALL_COMPONENTS,
    PROJECT_ROOT,
    KafkaInstall,
    component_versions,
    install,
)
from local_stack.kafka import KafkaBroker, KafkaConnect
from local_stack.postgres import PostgresServer
from local_stack.redis import RedisServer

DEFAULT_DIRECTORY = PROJECT_ROOT / ".data" / "stack"
STATE_FILE = "state.json"

# Stop order is the reverse. Connect needs Kafka (and takes PostgreSQL's address when present).
START_ORDER = ("postgres", "kafka", "connect", "clickhouse", "redis")
REQUIRES = {"connect": ("kafka",)}


def resolve_components(components: Iterable[str]) -> list[str]:
    """The chosen components plus what they need, in start order."""
    wanted = set(components)
    unknown = wanted - set(ALL_COMPONENTS)
    if unknown:
        raise StackError(
            f"unknown components {', '.join(sorted(unknown))}; known: {', '.join(ALL_COMPONENTS)}"
        )
    for name in list(wanted):
        wanted.update(REQUIRES.get(name, ()))
    return [name for name in START_ORDER if name in wanted]


def make_stack_directory(prefix: str = "local-stack-") -> Path:
    """A new directory under the system temp dir that the ``postgres`` user can enter.

    (pytest's ``tmp_path`` is 0700 root-only; PostgreSQL then keeps its data elsewhere.)
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class LocalStack:
    """PostgreSQL, Kafka, Kafka Connect with Debezium, ClickHouse and Redis, or a subset.

    ``start()`` installs what is missing (fast when installed), starts the chosen components in
    dependency order inside ``directory`` (one sub-directory each) and waits until each answers;
    if any fails, everything already started is stopped before the error propagates.
    ``stop()`` stops all in reverse order. Use as a context manager, or ``astart``/``astop``
    from asyncio code (they run the blocking work in a thread).
    """

    def __init__(
        self,
        directory: Path = DEFAULT_DIRECTORY,
        components: Iterable[str] = ALL_COMPONENTS,
        *,
        timeout: float | None = None,
    ) -> None:
        """Describe the stack; nothing runs before ``start()``."""
        self.directory = directory.resolve()
        self.names = resolve_components(components)
        self.timeout = timeout
        self.started_at: str | None = None
        self._components: dict[str, Component] = {}
        self._jars: KafkaInstall | None = None

    # --- typed access to the components ------------------------------------------------------

    def _get(self, name: str) -> Component:
        component = self._components.get(name)
        if component is None:
            raise StackError(f"{name} is not part of this stack (or it is not started)")
        return component

    @property
    def postgres(self) -> PostgresServer:
        """The PostgreSQL server."""
        component = self._get("postgres")
        assert isinstance(component, PostgresServer)  # noqa: S101 - narrowing
        return component

    @property
    def kafka(self) -> KafkaBroker:
        """The Kafka broker."""
        component = self._get("kafka")
        assert isinstance(component, KafkaBroker)  # noqa: S101 - narrowing
        return component

    @property
    def connect(self) -> KafkaConnect:
        """The Kafka Connect worker."""
        component = self._get("connect")
        assert isinstance(component, KafkaConnect)  # noqa: S101 - narrowing
        return component

    @property
    def clickhouse(self) -> ClickHouseServer:
        """The ClickHouse server."""
        component = self._get("clickhouse")
        assert isinstance(component, ClickHouseServer)  # noqa: S101 - narrowing
        return component

    @property
    def redis(self) -> RedisServer:
        """The Redis server."""
        component = self._get("redis")
        assert isinstance(component, RedisServer)  # noqa: S101 - narrowing
        return component

    @property
    def components(self) -> dict[str, Component]:
        """The created components by name, in start order."""
        return dict(self._components)

    # --- lifecycle ---------------------------------------------------------------------------

    def _create(self) -> None:
        self._jars = install(self.names)
        d = self.directory
        if "postgres" in self.names:
            self._components["postgres"] = PostgresServer(d / "postgres")
        if "kafka" in self.names:
            self._components["kafka"] = KafkaBroker(d / "kafka", jars=self._jars)
        if "connect" in self.names:
            env = connector_env(self.postgres) if "postgres" in self.names else {}
            self._components["connect"] = KafkaConnect(
                d / "connect", self.kafka.bootstrap_servers, jars=self._jars, connector_env=env
            )
        if "clickhouse" in self.names:
            self._components["clickhouse"] = ClickHouseServer(d / "clickhouse")
        if "redis" in self.names:
            self._components["redis"] = RedisServer(d / "redis")

    def start(self) -> LocalStack:
        """Install if needed, start every component, wait for each; all or nothing."""
        if any(c.running for c in self._components.values()):
            raise StackError("the stack is already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            if not self._components:
                self._create()
            # The broker's JVM boots while the quick servers start.
            if "kafka" in self._components:
                self.kafka.launch()
            for name in ("postgres", "clickhouse", "redis"):
                if name in self._components:
                    self._components[name].start(self.timeout)
            if "kafka" in self._components:
                self.kafka.wait_ready(self.timeout)
            if "connect" in self._components:
                self.connect.start(self.timeout)
        except BaseException:
            self.stop()
            raise
        self.started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every component (reverse order); keeps going when one fails to stop."""
        errors: list[str] = []
        for component in reversed(list(self._components.values())):
            try:
                component.stop(timeout)
            except Exception as exc:
                errors.append(f"{component.name}: {exc}")
        if errors:
            raise StackError("stopping the stack failed: " + "; ".join(errors))

    def remove(self) -> None:
        """Stop everything and delete the stack directory (and data kept outside it)."""
        self.stop()
        if "postgres" in self._components:
            self.postgres.remove()
        shutil.rmtree(self.directory, ignore_errors=True)

    async def astart(self) -> LocalStack:
        """``start()`` in a worker thread."""
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """``stop()`` in a worker thread."""
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> LocalStack:
        """Start the stack."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the stack."""
        self.stop()

    def pids(self) -> dict[str, int]:
        """The running components' pids (each also its process group id)."""
        return {
            name: component.pid
            for name, component in self._components.items()
            if component.pid is not None
        }

    # --- Debezium ----------------------------------------------------------------------------

    def register_connector(
        self, config: ConnectorConfig | None = None, timeout: float = 120.0
    ) -> ConnectorConfig:
        """Register (create or update) the connector and wait until its task runs.

        Default: ``deploy/debezium/connector.json`` as it is; its tables must exist, since the
        filtered publication is created for them.
        """
        config = config or load_connector_config()
        self.connect.register(config.name, config.config, timeout)
        return config

    # --- state -------------------------------------------------------------------------------

    def addresses(self) -> dict[str, dict[str, str]]:
        """Every component's addresses."""
        return {name: c.addresses() for name, c in self._components.items()}

    def state(self) -> dict[str, Any]:
        """What ``state.json`` holds: directory, versions, pids and addresses."""
        return {
            "directory": str(self.directory),
            "started_at": self.started_at,
            "versions": component_versions(),
            "components": {name: c.state() for name, c in self._components.items()},
        }

    def write_state(self, path: Path | None = None) -> Path:
        """Write ``state.json`` (default: in the stack directory)."""
        target = path or self.directory / STATE_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.state(), indent=2) + "\n")
        return target


def read_state(path: Path) -> dict[str, Any]:
    """Load a ``state.json``."""
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StackError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise StackError(f"{path}: not a state file")
    return data


def _owns(pid: int, entry: dict[str, Any]) -> bool:
    """Whether the live process ``pid`` is the one the state file recorded (not a reused pid)."""
    if not pid_alive(pid):
        return False
    cmdline = pid_cmdline(pid)
    marker = entry.get("marker")
    return bool(marker) and str(marker) in cmdline


def running_components(state: dict[str, Any]) -> dict[str, int]:
    """The recorded components whose processes are still alive, with their pids."""
    alive: dict[str, int] = {}
    for name, entry in state.get("components", {}).items():
        pid = entry.get("pid")
        if isinstance(pid, int) and _owns(pid, entry):
            alive[name] = pid
    return alive


def stop_from_state(state: dict[str, Any], timeout: float = 30.0) -> list[str]:
    """Stop the processes a state file lists (reverse start order); returns the names stopped."""
    stopped: list[str] = []
    entries = state.get("components", {})
    alive = running_components(state)
    for name in reversed([n for n in START_ORDER if n in entries]):
        pid = alive.get(name)
        if pid is None:
            continue
        sig = int(entries[name].get("stop_signal", signal.SIGTERM))
        stop_group(pid, sig, timeout)
        stopped.append(name)
    return stopped


def probe(name: str, entry: dict[str, Any]) -> bool:
    """A quick liveness probe of a recorded component (its main port accepts connections)."""
    addresses = entry.get("addresses", {})
    candidates = {
        "postgres": addresses.get("port"),
        "kafka": str(addresses.get("bootstrap_servers", ":")).rsplit(":", 1)[-1],
        "connect": str(addresses.get("url", ":")).rsplit(":", 1)[-1],
        "clickhouse": str(addresses.get("http_url", ":")).rsplit(":", 1)[-1],
        "redis": str(addresses.get("address", ":")).rsplit(":", 1)[-1],
    }
    port = candidates.get(name)
    with contextlib.suppress(TypeError, ValueError):
        return port_open(int(str(port)))
    return False


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> bool:
    """Wait until none of the pids is alive."""
    deadline = time.monotonic() + timeout
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        pending = [pid for pid in pending if pid_alive(pid)]
        if pending:
            time.sleep(0.1)
    return not pending


def environment(state: dict[str, Any]) -> dict[str, str]:
    """Environment variables that point programs at a running stack."""
    comps = state.get("components", {})
    env: dict[str, str] = {}
    if "postgres" in comps:
        env["LOCAL_STACK_POSTGRES_DSN"] = comps["postgres"]["addresses"]["dsn"]
    if "kafka" in comps:
        env["LOCAL_STACK_KAFKA_BOOTSTRAP"] = comps["kafka"]["addresses"]["bootstrap_servers"]
    if "connect" in comps:
        env["LOCAL_STACK_CONNECT_URL"] = comps["connect"]["addresses"]["url"]
    if "clickhouse" in comps:
        env["LOCAL_STACK_CLICKHOUSE_URL"] = comps["clickhouse"]["addresses"]["http_url"]
        env["ANALYTICS_CLICKHOUSE_URL"] = comps["clickhouse"]["addresses"]["http_url"]
    if "redis" in comps:
        env["LOCAL_STACK_REDIS_URL"] = comps["redis"]["addresses"]["url"]
    env["LOCAL_STACK_STATE"] = str(Path(state.get("directory", ".")) / STATE_FILE)
    return env


def default_directory() -> Path:
    """``$LOCAL_STACK_DIR`` or ``.data/stack`` at the project root."""
    override = os.environ.get("LOCAL_STACK_DIR")
    return Path(override).resolve() if override else DEFAULT_DIRECTORY
