"""The Docker deployment reads the same connector and catalog files as the local stack."""

from __future__ import annotations

from typing import Any

import yaml

from service.settings import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"


def _compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def test_compose_has_the_whole_topology() -> None:
    services = _compose()["services"]
    for name in ("postgres", "kafka", "connect", "clickhouse", "service", "worker"):
        assert name in services, name
    assert services["worker"]["command"] == ["worker"]
    assert services["service"]["command"] == ["serve"]
    assert "wal_level=logical" in services["postgres"]["command"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_compose_reads_the_shared_connector_and_catalog_files() -> None:
    services = _compose()["services"]
    mounts = [m for service in services.values() for m in service.get("volumes", [])]
    assert "./debezium/connector.json:/connector.json:ro" in mounts
    assert "./catalog.toml:/app/deploy/catalog.toml:ro" in mounts
    for relative in ("debezium/connector.json", "catalog.toml", "Dockerfile"):
        assert (DEPLOY / relative).exists(), relative


def test_compose_connect_resolves_the_connector_placeholders() -> None:
    connector = (DEPLOY / "debezium" / "connector.json").read_text()
    environment = _compose()["services"]["connect"]["environment"]
    for variable in ("HOSTNAME", "PORT", "USER", "PASSWORD", "DBNAME"):
        assert f"${{env:CDC_DATABASE_{variable}}}" in connector
        assert f"CDC_DATABASE_{variable}" in environment
    assert environment["CONNECT_CONFIG_PROVIDERS"] == "env"
