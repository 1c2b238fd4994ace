"""The connector file and the catalog must agree: one source of truth for each setting."""

from __future__ import annotations

from local_stack import load_connector_config
from service.catalog import Catalog
from service.settings import Settings


def test_connector_captures_exactly_the_catalog_tables(catalog: Catalog) -> None:
    config = load_connector_config().config
    captured = set(config["table.include.list"].split(","))
    assert captured == {model.source for model in catalog.replicated_models()}


def test_connector_settings_match_what_the_worker_decodes() -> None:
    config = load_connector_config().config
    assert config["topic.prefix"] == Settings().kafka_topic_prefix
    assert config["plugin.name"] == "pgoutput"
    assert config["decimal.handling.mode"] == "string"
    assert config["time.precision.mode"] == "isostring"
    assert config["value.converter.schemas.enable"] == "false"
    # Truncates are skipped by default; the worker applies them.
    assert config["skipped.operations"] == "none"
