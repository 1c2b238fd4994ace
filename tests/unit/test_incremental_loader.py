"""The incremental loader's pure parts: checkpoint arithmetic, key encoding, value conversion."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from cdc_worker import cli
from cdc_worker.incremental_loader import (
    START,
    Checkpoint,
    IncrementalLoader,
    RecentRows,
    advance,
    checkpoint_ddl,
    decode_key,
    encode_key,
    from_micros,
    source_expression,
    to_micros,
)
from service.catalog import Catalog, CatalogError, FieldSpec, FieldType, parse_catalog
from service.settings import Settings

UTC = dt.UTC


def _catalog(fields: dict[str, str], **model: Any) -> Catalog:
    return parse_catalog({"models": [{"module": "m", "name": "things", "fields": fields, **model}]})


def test_the_checkpoint_follows_the_last_row_read_below_the_horizon() -> None:
    last = Checkpoint(100, ("acme", 7))
    assert advance(START, last, horizon_us=200) == last


def test_the_checkpoint_never_passes_the_commit_horizon() -> None:
    # Rows stamped at or after the horizon may have siblings in transactions still open.
    assert advance(START, Checkpoint(250, ("acme", 7)), horizon_us=200) == Checkpoint(200)
    assert advance(START, None, horizon_us=200) == Checkpoint(200)


def test_the_checkpoint_never_moves_back() -> None:
    current = Checkpoint(300, ("acme", 1))
    assert advance(current, None, horizon_us=200) == current
    assert advance(current, Checkpoint(150, ("acme", 9)), horizon_us=200) == current


def test_a_position_without_key_precedes_every_key_at_its_watermark() -> None:
    assert Checkpoint(5).order() < Checkpoint(5, ("", 0)).order() < Checkpoint(6).order()
    assert START.order() < Checkpoint(to_micros(dt.datetime(1900, 1, 1, tzinfo=UTC))).order()


def test_micros_round_trip_exactly() -> None:
    moment = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    assert from_micros(to_micros(moment)) == moment
    assert to_micros(moment.replace(tzinfo=None)) == to_micros(moment)
    assert from_micros(START.watermark_us) == dt.datetime(1, 1, 1, tzinfo=UTC)


def test_keys_round_trip_through_the_checkpoint_table_with_their_types() -> None:
    catalog = _catalog(
        {"at": "timestamp", "day": "date", "amount": "decimal(10,3)", "ref": "uuid", "n": "int"},
        primary_key=["at", "day", "amount", "ref", "n"],
        watermark_column="at",
    )
    model = catalog.models[("m", "things")]
    key = (
        "acme",
        dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        dt.date(2026, 1, 2),
        Decimal("12.345"),
        str(uuid.uuid4()),
        -(2**63),
    )
    assert decode_key(model, encode_key(key)) == key
    with pytest.raises(ValueError, match=r"does not fit m\.things"):
        decode_key(model, '["acme", 1]')


def test_source_columns_are_selected_in_the_replica_form() -> None:
    assert source_expression(FieldSpec("r", FieldType.UUID)) == '"r"::text'
    assert source_expression(FieldSpec("n", FieldType.INT)) == '"n"'
    stamp = source_expression(FieldSpec("t", FieldType.TIMESTAMP, nullable=True))
    # Clamped to ClickHouse's range (PostgreSQL's infinities included), NULL kept NULL.
    assert stamp.startswith('CASE WHEN "t" IS NULL THEN NULL ELSE LEAST(GREATEST("t"::timestamptz')
    assert "TIMESTAMPTZ '1900-01-01T00:00:00+00:00'" in stamp
    assert "TIMESTAMPTZ '2299-12-31T23:59:59.999999+00:00'" in stamp
    day = source_expression(FieldSpec("d", FieldType.DATE))
    assert "DATE '1900-01-01'" in day
    assert "DATE '2299-12-31'" in day


def test_recent_rows_skip_only_unchanged_rewrites() -> None:
    recent = RecentRows(limit=3)
    recent.remember(("a", 1), 100, ("a", 1, "x"))
    assert recent.unchanged(("a", 1), ("a", 1, "x"))
    assert not recent.unchanged(("a", 1), ("a", 1, "y"))
    assert not recent.unchanged(("a", 2), ("a", 2, "x"))
    recent.remember(("a", 2), 300, ("a", 2, "x"))
    recent.prune(Checkpoint(200))
    assert len(recent) == 1
    assert not recent.unchanged(("a", 1), ("a", 1, "x"))
    recent.forget(("a", 2))
    assert len(recent) == 0
    for index in range(4):
        recent.remember(("a", index), 1, ("a", index))
    assert len(recent) <= 3


def test_the_catalog_defaults_the_watermark_to_updated_at() -> None:
    catalog = _catalog({"id": "int", "updated_at": "timestamp"})
    assert catalog.models[("m", "things")].watermark_column == "updated_at"
    assert _catalog({"id": "int"}).models[("m", "things")].watermark_column is None
    nullable = _catalog({"id": "int", "updated_at": "timestamp?"})
    assert nullable.models[("m", "things")].watermark_column is None
    named = _catalog({"id": "int", "changed": "timestamp"}, watermark_column="changed")
    assert named.models[("m", "things")].watermark_column == "changed"


@pytest.mark.parametrize(
    ("fields", "column", "message"),
    [
        ({"id": "int"}, "changed", "watermark_column: 'changed' is not a field"),
        ({"id": "int", "changed": "timestamp?"}, "changed", "must be a non-nullable timestamp"),
        ({"id": "int", "changed": "date"}, "changed", "must be a non-nullable timestamp"),
        ({"id": "int"}, 7, "watermark_column: 7 is not a field"),
    ],
)
def test_a_bad_watermark_column_is_refused_naming_the_key(
    fields: dict[str, str], column: object, message: str
) -> None:
    with pytest.raises(CatalogError, match=message):
        _catalog(fields, watermark_column=column)


def test_the_loader_needs_a_source_database(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="ANALYTICS_SOURCE_DATABASE_URL"):
        IncrementalLoader(Settings(), catalog, sink=None)  # type: ignore[arg-type]


def test_the_loader_skips_models_without_a_watermark() -> None:
    catalog = parse_catalog(
        {
            "models": [
                {"module": "m", "name": "a", "fields": {"id": "int", "updated_at": "timestamp"}},
                {"module": "m", "name": "b", "fields": {"id": "int"}},
            ]
        }
    )
    settings = Settings(source_database_url="postgresql://127.0.0.1/x")
    loader = IncrementalLoader(settings, catalog, sink=None)  # type: ignore[arg-type]
    assert list(loader.tables) == ["m_a"]


def test_batches_are_read_in_watermark_then_key_order(catalog: Catalog) -> None:
    settings = Settings(source_database_url="postgresql://127.0.0.1/x", loader_batch_rows=500)
    loader = IncrementalLoader(settings, catalog, sink=None)  # type: ignore[arg-type]
    (model,) = catalog.find("invoices")
    sql, *arguments = loader._select(model, Checkpoint(0))
    assert '"updated_at" >= $1' in sql
    assert '"external_ref"::text' in sql
    assert '"updated_at" AS _watermark' in sql
    assert sql.endswith('ORDER BY "updated_at", "tenant_id", "id" LIMIT $2')
    assert arguments == [from_micros(0), 500]
    sql, *arguments = loader._select(model, Checkpoint(0, ("acme", 5)))
    assert '("updated_at", "tenant_id", "id") > ($1, $2, $3)' in sql
    assert arguments == [from_micros(0), "acme", 5, 500]


def test_the_checkpoint_table_keeps_the_newest_revision() -> None:
    ddl = checkpoint_ddl("analytics")
    assert "`analytics`.`_loader_checkpoints`" in ddl
    assert "ReplacingMergeTree(revision)" in ddl


def test_serve_runs_the_cdc_worker_when_kafka_is_configured_else_the_loader() -> None:
    source = "postgresql://127.0.0.1/x"
    both = cli._serve_worker(
        Settings(kafka_bootstrap_servers="127.0.0.1:9", source_database_url=source)
    )
    assert both is not None
    assert both.__name__ == "worker"
    loader = cli._serve_worker(Settings(source_database_url=source))
    assert loader is not None
    assert loader.__name__ == "loader"
    assert cli._serve_worker(Settings()) is None
