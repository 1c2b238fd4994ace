"""The Debezium PostgreSQL connector of ``deploy/debezium/connector.json``.

The file is the one config for every deployment. Connection values are placeholders of Kafka's
``EnvVarConfigProvider`` (``${env:CDC_DATABASE_HOSTNAME}`` ...): the Connect worker resolves them
from its own environment when it starts the connector, so the file holds no host or secret and
the REST API stores only the placeholders. A worker needs, in its properties::

    config.providers=env
    config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider
    config.providers.env.param.allowlist.pattern=^CDC_.*

(with the Debezium Connect image: ``CONNECT_CONFIG_PROVIDERS=env``,
``CONNECT_CONFIG_PROVIDERS_ENV_CLASS=...``) and the ``CDC_DATABASE_*`` variables in its
environment. Register with ``PUT /connectors/<name>/config`` and the ``config`` object, or
``POST /connectors`` with the whole file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local_stack._process import StackError
from local_stack.install import CONNECTOR_JSON

if TYPE_CHECKING:
    from local_stack.postgres import PostgresServer

# The environment variables the connector file refers to.
CONNECTOR_ENV_VARS = (
    "CDC_DATABASE_HOSTNAME",
    "CDC_DATABASE_PORT",
    "CDC_DATABASE_USER",
    "CDC_DATABASE_PASSWORD",
    "CDC_DATABASE_DBNAME",
)


@dataclass(frozen=True)
class ConnectorConfig:
    """A connector's name and its config map (all values strings, as Connect wants them)."""

    name: str
    config: dict[str, str]

    @property
    def topic_prefix(self) -> str:
        """``topic.prefix``: change events of ``schema.table`` go to ``<prefix>.schema.table``."""
        return self.config["topic.prefix"]

    def topic_for(self, table: str, schema: str = "public") -> str:
        """The change-event topic of a table."""
        return f"{self.topic_prefix}.{schema}.{table}"

    @property
    def heartbeat_topic(self) -> str:
        """``<topic.heartbeat.prefix>.<topic.prefix>``."""
        prefix = self.config.get("topic.heartbeat.prefix", "__debezium-heartbeat")
        return f"{prefix}.{self.topic_prefix}"

    def with_config(
        self, overrides: Mapping[str, str] | None = None, *, name: str | None = None
    ) -> ConnectorConfig:
        """A copy with config keys replaced (and optionally another connector name).

        Example: ``cfg.with_config({"table.include.list": "public.t", "slot.name": "s2"})``.
        """
        return ConnectorConfig(name or self.name, {**self.config, **(overrides or {})})


def load_connector_config(path: Path = CONNECTOR_JSON) -> ConnectorConfig:
    """Read ``{"name": ..., "config": {...}}`` (the ``POST /connectors`` body)."""
    try:
        document: Any = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StackError(f"cannot read connector config {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise StackError(f"{path}: expected an object with 'name' and 'config'")
    config = {str(key): str(value) for key, value in document["config"].items()}
    return ConnectorConfig(str(document.get("name") or config.get("name")), config)


def connector_env(postgres: PostgresServer, database: str | None = None) -> dict[str, str]:
    """The ``CDC_DATABASE_*`` environment for a Connect worker, pointing at this PostgreSQL."""
    return {
        "CDC_DATABASE_HOSTNAME": postgres.host,
        "CDC_DATABASE_PORT": str(postgres.port),
        "CDC_DATABASE_USER": postgres.user,
        "CDC_DATABASE_PASSWORD": postgres.password,
        "CDC_DATABASE_DBNAME": database or postgres.database,
    }
