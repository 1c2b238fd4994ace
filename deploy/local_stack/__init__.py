"""The local stack: the real components of a deployment, started without Docker.

PostgreSQL 15 (Debian), Kafka in KRaft mode and Kafka Connect with the Debezium PostgreSQL
connector (Maven Central jars), ClickHouse server (Debian's 18.16) and Redis (Debian), each on
free loopback ports in a directory of its own. ``install()`` fetches what is missing (cached in
``.cache/``); ``LocalStack`` starts all or a subset and stops them; every component class can
also be used alone. ``python -m local_stack up|down|status`` runs it from a shell.

Example (pytest, session loop)::

    stack = LocalStack(make_stack_directory(), ["postgres", "kafka", "connect"])
    await stack.astart()
    ...  # stack.postgres.dsn, stack.kafka.bootstrap_servers, stack.connect.url
    await stack.astop()
"""

from local_stack._process import StackError, StartupError, free_port
from local_stack.clickhouse import ClickHouseServer
from local_stack.component import Component
from local_stack.connector import (
    CONNECTOR_ENV_VARS,
    ConnectorConfig,
    connector_env,
    load_connector_config,
)
from local_stack.install import (
    ALL_COMPONENTS,
    CONNECTOR_JSON,
    KafkaInstall,
    component_versions,
    install,
    install_kafka,
)
from local_stack.kafka import ConnectClient, ConnectError, KafkaBroker, KafkaConnect
from local_stack.postgres import PostgresServer
from local_stack.redis import RedisServer
from local_stack.stack import (
    LocalStack,
    make_stack_directory,
    read_state,
    running_components,
    stop_from_state,
)

__all__ = [
    "ALL_COMPONENTS",
    "CONNECTOR_ENV_VARS",
    "CONNECTOR_JSON",
    "ClickHouseServer",
    "Component",
    "ConnectClient",
    "ConnectError",
    "ConnectorConfig",
    "KafkaBroker",
    "KafkaConnect",
    "KafkaInstall",
    "LocalStack",
    "PostgresServer",
    "RedisServer",
    "StackError",
    "StartupError",
    "component_versions",
    "connector_env",
    "free_port",
    "install",
    "install_kafka",
    "load_connector_config",
    "make_stack_directory",
    "read_state",
    "running_components",
    "stop_from_state",
]
