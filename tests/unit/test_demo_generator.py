"""The demo generator: deterministic, sized as asked, shaped like a CDC history."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from collections import Counter
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from service.catalog import Catalog, FieldSpec, FieldType
from service.demo.events import EVENTS_PER_ROW
from service.demo.generator import (
    DELETED_COLUMN,
    DEMO_TENANTS,
    MODEL_SHARES,
    VERSION_COLUMN,
    DemoDataset,
    DemoError,
    current_rows,
    dataset_fingerprint,
    generate_dataset,
)
from service.schema import arrow_type

CONTACTS, DEALS, INVOICES = "crm.contacts", "crm.deals", "billing.invoices"
EVENTS = "product.events"
Current = dict[str, list[dict[str, Any]]]
UUID_V4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def dataset(catalog: Catalog) -> DemoDataset:
    return generate_dataset(catalog, seed=21, rows=60_000)


@pytest.fixture(scope="module")
def current(dataset: DemoDataset) -> Current:
    # The CDC models; tests/unit/test_demo_events.py checks the events.
    return {name: current_rows(dataset, name) for name in MODEL_SHARES}


def test_same_seed_same_data(catalog: Catalog) -> None:
    first = generate_dataset(catalog, seed=5, rows=5_000)
    second = generate_dataset(catalog, seed=5, rows=5_000)
    other = generate_dataset(catalog, seed=6, rows=5_000)
    assert set(first.tables) == {*MODEL_SHARES, EVENTS}
    for name in first.tables:
        assert first.tables[name].num_rows > 0, name
        assert first.tables[name].equals(second.tables[name])
        assert not first.tables[name].equals(other.tables[name])
    assert first.fingerprint == second.fingerprint != other.fingerprint


def test_fingerprint_names_parameters_and_models(catalog: Catalog) -> None:
    base = dataset_fingerprint(catalog, seed=1, rows=10)
    assert base == generate_dataset(catalog, seed=1, rows=10).fingerprint
    assert base != dataset_fingerprint(catalog, seed=1, rows=11)
    assert base != dataset_fingerprint(catalog, seed=1, rows=10, tenants=("acme",))
    # The default event count is part of it, whether given or not.
    assert base == dataset_fingerprint(catalog, seed=1, rows=10, events=10 * EVENTS_PER_ROW)
    assert base != dataset_fingerprint(catalog, seed=1, rows=10, events=7)
    # Another database holds the same data; another field does not.
    assert base == dataset_fingerprint(dataclasses.replace(catalog, database="x"), seed=1, rows=10)
    assert base != dataset_fingerprint(_with_field(catalog, "note", nullable=True), seed=1, rows=10)


def test_current_rows_add_up_to_the_requested_size(current: Current) -> None:
    assert sum(len(current[name]) for name in MODEL_SHARES) == 60_000
    for name, share in MODEL_SHARES.items():
        assert len(current[name]) == pytest.approx(60_000 * share, abs=1)


def test_columns_follow_the_catalog(catalog: Catalog, dataset: DemoDataset) -> None:
    for model in catalog.models.values():
        table = dataset.tables[model.qualified_name]
        properties = []
        if model.events is not None:
            properties = [model.events.key_column, model.events.value_column]
            for name in properties:
                assert table.schema.field(name).type == pa.list_(pa.string())
                assert table.column(name).null_count == 0
        assert table.column_names == [
            model.tenant_column,
            *model.fields,
            *properties,
            VERSION_COLUMN,
            DELETED_COLUMN,
        ]
        assert table.schema.field(VERSION_COLUMN).type == pa.uint64()
        assert table.schema.field(DELETED_COLUMN).type == pa.uint8()
        for spec in model.fields.values():
            column = table.column(spec.name)
            assert column.type == arrow_type(spec), spec.name
            if not spec.nullable:
                assert column.null_count == 0, spec.name
        assert dataset.keys[model.qualified_name] == (model.tenant_column, *model.primary_key)
    assert arrow_type(FieldSpec("x", FieldType.DECIMAL, precision=18, scale=2)) == pa.decimal128(
        18, 2
    )
    assert arrow_type(FieldSpec("x", FieldType.TIMESTAMP)) == pa.timestamp("us", tz="UTC")


def test_nullable_fields_have_nulls(current: Current) -> None:
    for model, field, low, high in (
        (CONTACTS, "lead_source", 0.08, 0.16),
        (CONTACTS, "score", 0.14, 0.22),
        (DEALS, "expected_close_date", 0.11, 0.19),
    ):
        rows = current[model]
        share = sum(row[field] is None for row in rows) / len(rows)
        assert low < share < high, (model, field, share)


def test_history_proportions(dataset: DemoDataset) -> None:
    for name in (CONTACTS, DEALS, INVOICES):
        table = dataset.tables[name]
        ids = table.column("id").to_numpy()
        deleted = table.column(DELETED_COLUMN).to_numpy()
        keys = len(set(ids.tolist()))
        live_versions = Counter(ids[deleted == 0].tolist())
        superseded = sum(count > 1 for count in live_versions.values()) / keys
        tombstoned = int(deleted.sum()) / keys
        assert 0.08 < superseded < 0.12, (name, superseded)
        assert 0.008 < tombstoned < 0.012, (name, tombstoned)
        assert max(live_versions.values()) == 3  # the latest plus at most two older ones


def test_soft_deleted_share(current: Current) -> None:
    for name in (CONTACTS, DEALS):
        rows = current[name]
        share = sum(row["deleted_at"] is not None for row in rows) / len(rows)
        assert 0.02 < share < 0.04, (name, share)
        assert all(
            row["deleted_at"] >= row["created_at"] and row["updated_at"] == row["deleted_at"]
            for row in rows
            if row["deleted_at"] is not None
        )


def test_versions_increase_and_older_ones_differ(dataset: DemoDataset) -> None:
    table = dataset.tables[DEALS]
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        by_key.setdefault((row["tenant_id"], row["id"]), []).append(row)
    changed = 0
    for versions in by_key.values():
        versions.sort(key=lambda row: row[VERSION_COLUMN])
        numbers = [row[VERSION_COLUMN] for row in versions]
        assert len(set(numbers)) == len(numbers)
        # A tombstone is always the last word; only the latest version may be soft-deleted.
        assert all(row[DELETED_COLUMN] == 0 for row in versions[:-1])
        live = [row for row in versions if row[DELETED_COLUMN] == 0]
        assert all(row["deleted_at"] is None for row in live[:-1])
        updates = [row["updated_at"] for row in live]
        assert updates == sorted(updates)
        first, last = live[0], live[-1]
        changed += first["stage"] != last["stage"] or first["amount"] != last["amount"]
    superseded = sum(
        sum(row[DELETED_COLUMN] == 0 for row in versions) > 1 for versions in by_key.values()
    )
    assert changed > 0.9 * superseded


def test_time_span_growth_and_weekly_rhythm(dataset: DemoDataset) -> None:
    for name, field in ((CONTACTS, "created_at"), (DEALS, "created_at"), (INVOICES, "issued_at")):
        column = dataset.tables[name].column(field)
        first, last = pc.min(column).as_py(), pc.max(column).as_py()
        assert last - first >= dt.timedelta(days=365)
        assert dataset.start <= first
        assert last < dataset.end
    moments = dataset.tables[DEALS].column("created_at").to_pylist()
    months = Counter((m.year, m.month) for m in moments)
    assert months[(2026, 10)] > 2 * months[(2025, 10)]
    weekdays = Counter(m.weekday() for m in moments)
    assert min(weekdays[day] for day in range(5)) > 2 * max(weekdays[5], weekdays[6])
    for name in dataset.tables:
        table = dataset.tables[name]
        for field in table.column_names:
            if pa.types.is_timestamp(table.schema.field(field).type):
                newest = pc.max(table.column(field)).as_py()
                assert newest is None or newest < dataset.end, (name, field)


def test_business_rules(current: Current) -> None:
    for deal in current[DEALS]:
        closed = deal["stage"] in ("closed_won", "closed_lost")
        assert (deal["closed_at"] is not None) == closed
        if closed:
            assert deal["closed_at"] >= deal["created_at"]
            assert deal["probability"] == (1.0 if deal["stage"] == "closed_won" else 0.0)
        else:
            assert 0 < deal["probability"] < 1
        assert deal["amount"] > 0
        assert deal["amount"] == deal["amount"].quantize(Decimal("0.01"))
        assert deal["updated_at"] >= deal["created_at"]
    for invoice in current[INVOICES]:
        assert (invoice["paid_at"] is not None) == (invoice["status"] == "paid")
        assert invoice["due_date"] > invoice["issued_at"].date()
        assert UUID_V4.match(invoice["external_ref"])
    assert len({i["external_ref"] for i in current[INVOICES]}) == len(current[INVOICES])
    stages = Counter(deal["stage"] for deal in current[DEALS])
    assert set(stages) == {
        "lead",
        "qualified",
        "proposal",
        "negotiation",
        "closed_won",
        "closed_lost",
    }
    statuses = Counter(invoice["status"] for invoice in current[INVOICES])
    assert set(statuses) == {"draft", "open", "paid", "overdue", "void"}
    countries = Counter(contact["country"] for contact in current[CONTACTS])
    assert countries.most_common(1)[0][0] == "US"


def test_tenants_are_skewed_and_references_stay_inside_them(current: Current) -> None:
    sizes = Counter(row["tenant_id"] for row in current[DEALS])
    assert set(sizes) == set(DEMO_TENANTS)
    assert sizes["acme"] > 3 * sizes["hooli"]
    contact_tenant = {row["id"]: row["tenant_id"] for row in current[CONTACTS]}
    for model, field in ((DEALS, "contact_id"), (INVOICES, "customer_id")):
        linked = [row for row in current[model] if row[field] in contact_tenant]
        assert len(linked) > 0.95 * len(current[model])
        assert all(contact_tenant[row[field]] == row["tenant_id"] for row in linked)


def test_hostile_strings_reach_every_tenant(current: Current) -> None:
    for model, field, marks in (
        (CONTACTS, "email", ("'", '"', "\\", "%", "_", "*", "ä")),
        (DEALS, "title", ("'", '"', "\\", "%", "_", "*", "\t", "\n", "日")),
    ):
        for tenant in DEMO_TENANTS:
            values = [row[field] for row in current[model] if row["tenant_id"] == tenant]
            for mark in marks:
                assert any(mark in value for value in values), (model, tenant, mark)


def test_current_rows_on_a_hand_made_history() -> None:
    ts = pa.timestamp("us", tz="UTC")
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [
        # (tenant, id, stage, deleted_at, version, is_deleted)
        ("a", 1, "lead", None, 10, 0),
        ("a", 1, "won", None, 20, 0),  # supersedes version 10
        ("b", 1, "other", None, 5, 0),  # same id, another tenant: its own row
        ("a", 2, "lead", None, 30, 0),
        ("a", 2, "lead", None, 31, 1),  # tombstone: key 2 is gone
        ("a", 3, "lost", at, 7, 0),  # soft-deleted, still a current row
        ("a", 4, "old", None, 9, 1),
        ("a", 4, "back", None, 12, 0),  # re-inserted after a delete
        ("a", 5, "newest", None, 8, 0),  # versions out of order in the table
        ("a", 5, "stale", None, 3, 0),
    ]
    table = pa.table(
        {
            "tenant_id": [r[0] for r in rows],
            "id": pa.array([r[1] for r in rows], pa.int64()),
            "stage": [r[2] for r in rows],
            "deleted_at": pa.array([r[3] for r in rows], ts),
            VERSION_COLUMN: pa.array([r[4] for r in rows], pa.uint64()),
            DELETED_COLUMN: pa.array([r[5] for r in rows], pa.uint8()),
        }
    )
    dataset = DemoDataset({DEALS: table}, {DEALS: ("tenant_id", "id")}, "test", at, at)
    assert current_rows(dataset, DEALS) == [
        {"tenant_id": "a", "id": 1, "stage": "won", "deleted_at": None},
        {"tenant_id": "a", "id": 3, "stage": "lost", "deleted_at": at},
        {"tenant_id": "a", "id": 4, "stage": "back", "deleted_at": None},
        {"tenant_id": "a", "id": 5, "stage": "newest", "deleted_at": None},
        {"tenant_id": "b", "id": 1, "stage": "other", "deleted_at": None},
    ]


def test_tiny_and_empty_datasets(catalog: Catalog) -> None:
    empty = generate_dataset(catalog, rows=0)
    assert all(table.num_rows == 0 for table in empty.tables.values())
    tiny = generate_dataset(catalog, rows=7, tenants=("solo",))
    assert sum(len(current_rows(tiny, name)) for name in MODEL_SHARES) == 7
    assert tiny.tables[EVENTS].num_rows > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rows": -1},
        {"events": -1},
        {"tenants": ()},
        {"tenants": ("a", "a")},
        {"tenants": ("",)},
        {"start": dt.datetime(2026, 1, 1), "end": dt.datetime(2026, 2, 1)},
        {
            "start": dt.datetime(2026, 2, 1, tzinfo=dt.UTC),
            "end": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        },
    ],
)
def test_bad_parameters_are_refused(catalog: Catalog, kwargs: dict[str, Any]) -> None:
    with pytest.raises(DemoError):
        generate_dataset(catalog, **kwargs)


def test_catalog_changes(catalog: Catalog) -> None:
    extended = generate_dataset(_with_field(catalog, "note", nullable=True), rows=500)
    assert extended.tables[DEALS].column("note").null_count == extended.tables[DEALS].num_rows
    with pytest.raises(DemoError, match=r"crm\.deals\.note"):
        generate_dataset(_with_field(catalog, "note", nullable=False), rows=500)
    model = catalog.models[("crm", "deals")]
    unknown = dataclasses.replace(model, module="sales", name="orders", table="sales_orders")
    bigger = dataclasses.replace(catalog, models={**catalog.models, ("sales", "orders"): unknown})
    generated = generate_dataset(bigger, rows=500)
    assert generated.tables["sales.orders"].num_rows == 0
    assert generated.tables["sales.orders"].schema == generated.tables[DEALS].schema


@pytest.mark.slow
def test_full_size_generation_is_fast(catalog: Catalog) -> None:
    started = time.perf_counter()
    full = generate_dataset(catalog)
    elapsed = time.perf_counter() - started
    assert full.row_count() > 1_200_000
    assert 3_000_000 < full.tables[EVENTS].num_rows < 5_000_000
    assert elapsed < 15, elapsed


def _with_field(catalog: Catalog, name: str, *, nullable: bool) -> Catalog:
    model = catalog.models[("crm", "deals")]
    fields = {**model.fields, name: FieldSpec(name, FieldType.STRING, nullable)}
    models = {**catalog.models, ("crm", "deals"): dataclasses.replace(model, fields=fields)}
    return dataclasses.replace(catalog, models=models)
