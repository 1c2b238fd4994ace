"""Apache Kafka (KRaft, one combined node) and Kafka Connect (distributed), from Maven jars."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from local_stack._process import (
    ManagedProcess,
    StackError,
    free_port,
    log_tail,
    port_open,
    run_checked,
)
from local_stack.component import Component
from local_stack.install import KAFKA_LOG4J2, KafkaInstall, install_kafka, java_binary

# The broker logs this once it serves requests (kafka.server.KafkaRaftServer).
KAFKA_STARTED_LINE = "Kafka Server started"


def _java_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAFKA_")}
    env["TZ"] = "UTC"
    return env


def _jvm_options(heap: str, log_dir: Path) -> list[str]:
    return [
        "-Xms128m",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        "-Dfile.encoding=UTF-8",
        "-Duser.timezone=UTC",
        f"-Dlog4j2.configurationFile={KAFKA_LOG4J2}",
        f"-Dkafka.logs.dir={log_dir}",
    ]


def _write_properties(path: Path, properties: Mapping[str, str]) -> None:
    lines = ["# Written by local_stack; regenerated at every start."]
    lines += [f"{key}={value}" for key, value in properties.items()]
    path.write_text("\n".join(lines) + "\n")


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Never starting with '-' (as Kafka's own ``Uuid.randomUuid`` ensures): the storage tool would
    read such an id as an option and fail to format, about one start in 64.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaBroker(Component):
    """One Kafka node in KRaft mode (``process.roles=broker,controller``) on loopback ports.

    The storage is formatted with ``kafka.tools.StorageTool`` on the first start; log dirs live
    in ``directory/data``. ``bootstrap_servers`` is what clients connect to.
    """

    name = "kafka"
    default_timeout = 120.0

    def __init__(
        self,
        directory: Path,
        *,
        jars: KafkaInstall | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "768m",
        properties: Mapping[str, str] | None = None,
    ) -> None:
        """Describe the broker; ``jars`` defaults to ``install_kafka()`` (fast when installed)."""
        super().__init__(directory)
        self.jars = jars or install_kafka()
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.extra_properties = dict(properties or {})

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of the PLAINTEXT listener."""
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """The broker's log directory (partitions and the KRaft metadata log)."""
        return self.directory / "data"

    @property
    def config_path(self) -> Path:
        """The generated ``server.properties``."""
        return self.directory / "server.properties"

    def addresses(self) -> dict[str, str]:
        """Bootstrap servers and the controller's address."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "controller": f"{self.host}:{self.controller_port}",
        }

    def server_properties(self) -> dict[str, str]:
        """The broker's configuration."""
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.retention.hours": "168",
            "log.segment.bytes": str(64 * 1024 * 1024),
            **self.extra_properties,
        }

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            str(java_binary()),
            *_jvm_options(self.heap, self.directory),
            "-cp",
            self.jars.classpath,
            main,
            *args,
        ]

    def _prepare(self) -> ManagedProcess:
        _write_properties(self.config_path, self.server_properties())
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            run_checked(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "--cluster-id",
                    _cluster_id(),
                    "--config",
                    str(self.config_path),
                    "--ignore-formatted",
                ),
                "formatting Kafka storage (kafka.tools.StorageTool)",
                env=_java_env(),
                timeout=180,
            )
        return ManagedProcess(
            self.name,
            self._java("kafka.Kafka", str(self.config_path)),
            self.log_path,
            env=_java_env(),
            cwd=self.directory,
        )

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        return KAFKA_STARTED_LINE in self.output_since_start()


class ConnectError(StackError):
    """The Kafka Connect REST API answered with an error."""

    def __init__(self, status: int, message: str) -> None:
        """Keep the HTTP status for callers."""
        super().__init__(f"Kafka Connect REST error {status}: {message}")
        self.status = status


class KafkaConnect(Component):
    """A Kafka Connect worker in distributed mode (REST API on a free port) with Debezium.

    The JSON converter is the worker default (connectors may override it); internal topics have
    replication factor 1. ``EnvVarConfigProvider`` is registered as ``env`` so connector configs
    can say ``${env:CDC_DATABASE_HOSTNAME}``: the worker resolves them from ``connector_env``
    (its process environment) when it starts a connector, restricted to names matching
    ``CDC_.*``.
    """

    name = "connect"
    default_timeout = 180.0

    def __init__(
        self,
        directory: Path,
        bootstrap_servers: str,
        *,
        jars: KafkaInstall | None = None,
        rest_port: int | None = None,
        connector_env: Mapping[str, str] | None = None,
        heap: str = "1g",
        group_id: str = "local-stack-connect",
        properties: Mapping[str, str] | None = None,
    ) -> None:
        """Describe the worker; ``connector_env`` becomes part of its process environment."""
        super().__init__(directory)
        self.bootstrap_servers = bootstrap_servers
        self.jars = jars or install_kafka()
        self.rest_port = rest_port or free_port()
        self.connector_env = dict(connector_env or {})
        self.heap = heap
        self.group_id = group_id
        self.extra_properties = dict(properties or {})

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self.rest_port}"

    @property
    def config_path(self) -> Path:
        """The generated worker properties."""
        return self.directory / "connect-distributed.properties"

    def addresses(self) -> dict[str, str]:
        """The REST URL and the Kafka it uses."""
        return {"url": self.url, "bootstrap_servers": self.bootstrap_servers}

    def worker_properties(self) -> dict[str, str]:
        """The worker's configuration."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "config.storage.topic": f"_{self.group_id}-configs",
            "offset.storage.topic": f"_{self.group_id}-offsets",
            "status.storage.topic": f"_{self.group_id}-status",
            "config.storage.replication.factor": "1",
            "offset.storage.replication.factor": "1",
            "status.storage.replication.factor": "1",
            "offset.storage.partitions": "5",
            "status.storage.partitions": "1",
            # Commit source offsets every second (default 60 s): a restart replays less.
            "offset.flush.interval.ms": "1000",
            "scheduled.rebalance.max.delay.ms": "0",
            "listeners": f"http://{self.host}:{self.rest_port}",
            "rest.advertised.host.name": self.host,
            "rest.advertised.port": str(self.rest_port),
            "plugin.path": str(self.jars.plugins_dir),
            "plugin.discovery": "service_load",
            "config.providers": "env",
            "config.providers.env.class": (
                "org.apache.kafka.common.config.provider.EnvVarConfigProvider"
            ),
            "config.providers.env.param.allowlist.pattern": "^CDC_.*",
            "topic.creation.enable": "true",
            **self.extra_properties,
        }

    def _prepare(self) -> ManagedProcess:
        _write_properties(self.config_path, self.worker_properties())
        env = {**_java_env(), **self.connector_env}
        command = [
            str(java_binary()),
            *_jvm_options(self.heap, self.directory),
            "-cp",
            self.jars.classpath,
            "org.apache.kafka.connect.cli.ConnectDistributed",
            str(self.config_path),
        ]
        return ManagedProcess(self.name, command, self.log_path, env=env, cwd=self.directory)

    @property
    def client(self) -> ConnectClient:
        """A REST client of this worker."""
        return ConnectClient(self.url)

    def _ready(self) -> bool:
        if not port_open(self.rest_port):
            return False
        # /health (KIP-1017) answers 200 once the worker joined its group and read its configs.
        return self.client.healthy()

    def plugins(self) -> list[dict[str, Any]]:
        """``GET /connector-plugins``."""
        return self.client.plugins()

    def put_connector(self, name: str, config: Mapping[str, str]) -> dict[str, Any]:
        """Create or update a connector (``PUT /connectors/{name}/config``)."""
        return self.client.put_connector(name, config)

    def register(
        self, name: str, config: Mapping[str, str], timeout: float = 120.0
    ) -> dict[str, Any]:
        """Create or update a connector and wait until it runs (see ``ConnectClient``)."""
        try:
            return self.client.register(name, config, timeout)
        except StackError as exc:
            raise StackError(
                f"{exc}\n--- last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            ) from exc

    def wait_connector_running(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the connector and its tasks are RUNNING (see ``ConnectClient``)."""
        try:
            return self.client.wait_connector_running(name, timeout)
        except StackError as exc:
            raise StackError(
                f"{exc}\n--- last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            ) from exc


class ConnectClient:
    """A small client of the Kafka Connect REST API (stdlib only, synchronous)."""

    def __init__(self, url: str) -> None:
        """Talk to the worker at ``url`` (``http://host:port``)."""
        self.url = url.rstrip("/")

    def healthy(self) -> bool:
        """``GET /health`` answers 200 (the worker is up and in its group)."""
        status, _ = self._request("GET", "/health", raise_for_status=False, timeout=5)
        return status == 200

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raise_for_status: bool = True,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - loopback http URL built here
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                raw = response.read()
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            status = exc.code
        text = raw.decode("utf-8", errors="replace")
        try:
            payload: Any = json.loads(text) if text else None
        except json.JSONDecodeError:
            payload = text
        if raise_for_status and status >= 400:
            message = payload.get("message", text) if isinstance(payload, dict) else text
            raise ConnectError(status, str(message))
        return status, payload

    def plugins(self) -> list[dict[str, Any]]:
        """``GET /connector-plugins``: the connector classes the worker found."""
        _, payload = self._request("GET", "/connector-plugins")
        return list(payload)

    def connectors(self) -> list[str]:
        """Names of the registered connectors."""
        _, payload = self._request("GET", "/connectors")
        return list(payload)

    def put_connector(self, name: str, config: Mapping[str, str]) -> dict[str, Any]:
        """Create or update a connector (``PUT /connectors/{name}/config``, idempotent)."""
        quoted = urllib.parse.quote(name, safe="")
        _, payload = self._request("PUT", f"/connectors/{quoted}/config", dict(config))
        return dict(payload)

    def connector_status(self, name: str) -> dict[str, Any]:
        """``GET /connectors/{name}/status``: the connector's and its tasks' states."""
        quoted = urllib.parse.quote(name, safe="")
        _, payload = self._request("GET", f"/connectors/{quoted}/status")
        return dict(payload)

    def delete_connector(self, name: str) -> None:
        """Remove a connector (its offsets stay in the offsets topic)."""
        quoted = urllib.parse.quote(name, safe="")
        self._request("DELETE", f"/connectors/{quoted}")

    def restart_connector(self, name: str, *, only_failed: bool = True) -> None:
        """Restart the connector and its tasks (``only_failed``: just the FAILED ones)."""
        quoted = urllib.parse.quote(name, safe="")
        query = urllib.parse.urlencode(
            {"includeTasks": "true", "onlyFailed": str(only_failed).lower()}
        )
        self._request("POST", f"/connectors/{quoted}/restart?{query}")

    def register(
        self, name: str, config: Mapping[str, str], timeout: float = 120.0
    ) -> dict[str, Any]:
        """Create or update a connector and wait until it runs.

        A PUT of an unchanged config does not restart a FAILED task (say, one that failed
        because its tables did not exist yet): such a task is restarted once.
        """
        self.put_connector(name, config)
        try:
            return self.wait_connector_running(name, timeout)
        except StackError as exc:
            if "FAILED" not in str(exc):
                raise
        self.restart_connector(name, only_failed=True)
        time.sleep(1.0)
        return self.wait_connector_running(name, timeout)

    def wait_connector_running(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the connector and all its tasks are RUNNING; fail fast when one FAILED."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.connector_status(name)
            except ConnectError as exc:
                if exc.status != 404:
                    raise
                time.sleep(0.5)
                continue
            states = [last.get("connector", {}).get("state")]
            states += [task.get("state") for task in last.get("tasks", [])]
            if "FAILED" in states:
                traces = [last.get("connector", {}).get("trace")]
                traces += [task.get("trace") for task in last.get("tasks", [])]
                trace = "\n".join(t for t in traces if t)
                raise StackError(f"connector {name} FAILED:\n{trace[-4000:]}")
            if last.get("tasks") and all(state == "RUNNING" for state in states):
                return last
            time.sleep(0.5)
        raise StackError(
            f"connector {name} not RUNNING within {timeout:.0f} s; last status: {last}"
        )
