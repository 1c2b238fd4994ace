"""The CDC worker's pure parts: batching, replica rows, sync bookkeeping, metrics, topic names.

No Kafka and no ClickHouse: every test builds ``RowChange`` objects (or offsets) by hand and
checks results computed independently of the code under test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

import cdc_worker.batch as batch_module
import cdc_worker.metrics as metrics_module
import cdc_worker.sync_tracker as tracker_module
from cdc_worker.batch import ChangeBatch, TablePending, fill_unavailable, replica_rows
from cdc_worker.events import RowChange, RowOp, Truncate
from cdc_worker.metrics import WorkerMetrics
from cdc_worker.sync_tracker import SyncTracker, TableProgress
from cdc_worker.worker import Topics, _stored_value
from service.catalog import Catalog, FieldType, Model
from service.schema import arrow_type

UTC = dt.UTC
T0 = dt.datetime(2024, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

DEALS_TOPIC = "analytics.public.deals"
CONTACTS_TOPIC = "analytics.public.contacts"
INVOICES_TOPIC = "analytics.public.invoices"

# What a tombstone's non-nullable, non-key columns must hold (written out, not imported).
ZERO_VALUES: dict[FieldType, Any] = {
    FieldType.STRING: "",
    FieldType.ENUM: "",
    FieldType.UUID: "00000000-0000-0000-0000-000000000000",
    FieldType.INT: 0,
    FieldType.FLOAT: 0.0,
    FieldType.DECIMAL: Decimal("0"),
    FieldType.BOOL: False,
    FieldType.TIMESTAMP: EPOCH,
    FieldType.DATE: dt.date(1970, 1, 1),
}


class FakeClock:
    """Stands in for the ``time`` module of one module under test."""

    def __init__(self, monotonic: float = 1_000.0, wall: float = 1_700_000_000.0) -> None:
        self.now = monotonic
        self.wall = wall

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall


# --------------------------------------------------------------------------- helpers / fixtures


def model_of(catalog: Catalog, module: str, name: str) -> Model:
    model = catalog.get(module, name)
    assert model is not None
    return model


@pytest.fixture
def deals(catalog: Catalog) -> Model:
    return model_of(catalog, "crm", "deals")


@pytest.fixture
def contacts(catalog: Catalog) -> Model:
    return model_of(catalog, "crm", "contacts")


@pytest.fixture
def invoices(catalog: Catalog) -> Model:
    return model_of(catalog, "billing", "invoices")


def deal_row(tenant: str, deal_id: int, **overrides: Any) -> dict[str, Any]:
    """A complete crm.deals row as the decoder produces it."""
    row: dict[str, Any] = {
        "tenant_id": tenant,
        "id": deal_id,
        "contact_id": 100 + deal_id,
        "owner_id": 7,
        "title": f"Deal {deal_id}",
        "stage": "open",
        "amount": Decimal("1250.50"),
        "currency": "EUR",
        "probability": 0.25,
        "created_at": T0,
        "closed_at": None,
        "expected_close_date": dt.date(2024, 6, 30),
        "updated_at": T0,
        "deleted_at": None,
    }
    row.update(overrides)
    return row


def key_only_row(model: Model, tenant: str, key: tuple[Any, ...]) -> dict[str, Any]:
    """A delete's row: the tenant and the key, nothing else known."""
    row: dict[str, Any] = dict.fromkeys(model.fields)
    row[model.tenant_column] = tenant
    row.update(zip(model.primary_key, key, strict=True))
    return row


def change(
    model: Model,
    tenant: str,
    key: int,
    version: int,
    row: Mapping[str, Any] | None = None,
    *,
    op: RowOp = "u",
    unavailable: frozenset[str] = frozenset(),
    is_deleted: bool = False,
    source_ts_ms: int = 0,
    previous_tenant: str | None = None,
) -> RowChange:
    if row is None:
        row = deal_row(tenant, key)
    return RowChange(
        model=model,
        op=op,
        tenant=tenant,
        key=(key,),
        row=row,
        unavailable=unavailable,
        version=version,
        is_deleted=is_deleted,
        source_ts_ms=source_ts_ms,
        snapshot=False,
        lsn=version,
        previous_tenant=previous_tenant,
    )


def toast_change(model: Model, tenant: str, key: int, version: int, **values: Any) -> RowChange:
    """An update whose ``title`` was an unchanged TOAST value (sent as a placeholder)."""
    row = deal_row(tenant, key, title=None, **values)
    return change(model, tenant, key, version, row, unavailable=frozenset({"title"}))


def rows_of(batch: ChangeBatch, table: str) -> dict[tuple[Any, ...], RowChange]:
    rows = batch.tables[table].rows.items()
    return {key: row for key, row in rows if isinstance(row, RowChange)}


# --------------------------------------------------------------------------- ChangeBatch


def test_newest_version_per_tenant_and_key_wins(deals: Model) -> None:
    batch = ChangeBatch()
    v1 = change(deals, "acme", 1, 100, deal_row("acme", 1, title="first"))
    v3 = change(deals, "acme", 1, 300, deal_row("acme", 1, title="third"))
    v2 = change(deals, "acme", 1, 200, deal_row("acme", 1, title="second"))
    other_key = change(deals, "acme", 2, 50)
    other_tenant = change(deals, "globex", 1, 10, deal_row("globex", 1, title="globex's"))
    for c in (v1, v3, v2, other_key, other_tenant):
        batch.add(c)

    rows = rows_of(batch, "crm_deals")
    assert rows == {("acme", 1): v3, ("acme", 2): other_key, ("globex", 1): other_tenant}
    assert rows[("acme", 1)].row["title"] == "third"
    assert set(batch.tables) == {"crm_deals"}


def test_equal_versions_later_message_wins(deals: Model) -> None:
    pending = TablePending(deals)
    first = change(deals, "acme", 1, 700, deal_row("acme", 1, stage="open"))
    second = change(deals, "acme", 1, 700, deal_row("acme", 1, stage="won"))
    pending.add(first)
    pending.add(second)
    assert pending.rows[("acme", 1)] is second
    assert pending.events == 2


def test_older_version_after_newer_is_dropped(deals: Model) -> None:
    pending = TablePending(deals)
    newer = change(deals, "acme", 1, 900, deal_row("acme", 1, stage="won"), source_ts_ms=9_000)
    older = change(deals, "acme", 1, 800, deal_row("acme", 1, stage="lost"), source_ts_ms=8_000)
    pending.add(newer)
    pending.add(older)
    assert pending.rows == {("acme", 1): newer}
    assert pending.events == 2
    assert pending.max_source_ts_ms == 9_000


def test_delete_is_the_newest_version(deals: Model) -> None:
    batch = ChangeBatch()
    batch.add(change(deals, "acme", 1, 1, op="c"))
    delete = change(deals, "acme", 1, 2, key_only_row(deals, "acme", (1,)), op="d", is_deleted=True)
    batch.add(delete)
    assert rows_of(batch, "crm_deals") == {("acme", 1): delete}


def test_events_count_every_event_across_tables(deals: Model, contacts: Model) -> None:
    batch = ChangeBatch()
    contact_row = {"tenant_id": "acme", "id": 5, "email": "a@example.com"}
    batch.add(change(deals, "acme", 1, 2))
    batch.add(change(deals, "acme", 1, 1))  # older: dropped, still counted
    batch.add(change(deals, "acme", 1, 2))  # same version again
    batch.add(change(contacts, "acme", 5, 4, contact_row))
    assert batch.events == 4
    assert batch.tables["crm_deals"].events == 3
    assert batch.tables["crm_contacts"].events == 1
    assert len(rows_of(batch, "crm_deals")) == 1
    assert len(rows_of(batch, "crm_contacts")) == 1


def test_max_source_ts_ms_per_table(deals: Model, contacts: Model) -> None:
    batch = ChangeBatch()
    for version, ts in ((1, 3_000), (2, 7_500), (3, 5_000)):
        batch.add(change(deals, "acme", version, version, source_ts_ms=ts))
    batch.add(change(contacts, "acme", 1, 9, {"tenant_id": "acme", "id": 1}, source_ts_ms=123))
    assert batch.tables["crm_deals"].max_source_ts_ms == 7_500
    assert batch.tables["crm_contacts"].max_source_ts_ms == 123


def test_consumed_keeps_the_max_offset_per_partition() -> None:
    batch = ChangeBatch()
    for topic, partition, offset in (
        (DEALS_TOPIC, 0, 5),
        (DEALS_TOPIC, 0, 3),
        (DEALS_TOPIC, 1, 0),
        (DEALS_TOPIC, 0, 9),
        (CONTACTS_TOPIC, 0, 2),
        (DEALS_TOPIC, 0, 8),
    ):
        batch.consumed(topic, partition, offset)
    assert batch.offsets == {(DEALS_TOPIC, 0): 9, (DEALS_TOPIC, 1): 0, (CONTACTS_TOPIC, 0): 2}


def test_empty(deals: Model) -> None:
    assert ChangeBatch().empty

    with_offsets = ChangeBatch()
    with_offsets.consumed(DEALS_TOPIC, 0, 0)
    assert not with_offsets.empty

    with_rows = ChangeBatch()
    with_rows.add(change(deals, "acme", 1, 1))
    assert not with_rows.empty


def test_truncates_are_counted(deals: Model) -> None:
    batch = ChangeBatch()
    truncate = Truncate(model=deals, source_ts_ms=5_000, version=77, lsn=77)
    batch.truncate(truncate)
    assert batch.truncates == [truncate]
    assert batch.events == 1
    assert batch.tables == {}
    assert batch.started_at is not None
    batch.add(change(deals, "acme", 1, 80))
    assert batch.events == 2
    assert batch.is_due(max_rows=2, max_seconds=3_600)


def test_is_due_by_size(deals: Model) -> None:
    batch = ChangeBatch()
    assert not batch.is_due(max_rows=1, max_seconds=0)  # nothing consumed: never due
    batch.add(change(deals, "acme", 1, 1))
    batch.add(change(deals, "acme", 1, 2))
    assert not batch.is_due(max_rows=3, max_seconds=3_600)
    batch.add(change(deals, "acme", 1, 1))  # dropped as older, but it is an event
    assert batch.is_due(max_rows=3, max_seconds=3_600)


def test_is_due_by_age(monkeypatch: pytest.MonkeyPatch, deals: Model) -> None:
    clock = FakeClock(monotonic=500.0)
    monkeypatch.setattr(batch_module, "time", clock)
    batch = ChangeBatch()
    clock.now = 510.0
    assert not batch.is_due(max_rows=1_000, max_seconds=2.0)
    batch.consumed(DEALS_TOPIC, 0, 0)  # offsets alone start the clock
    assert batch.started_at == 510.0
    clock.now = 511.999
    assert not batch.is_due(max_rows=1_000, max_seconds=2.0)
    batch.add(change(deals, "acme", 1, 1))  # later events do not restart it
    clock.now = 512.0
    assert batch.is_due(max_rows=1_000, max_seconds=2.0)


def test_is_due_by_age_real_clock(deals: Model) -> None:
    batch = ChangeBatch()
    batch.add(change(deals, "acme", 1, 1))
    assert not batch.is_due(max_rows=1_000, max_seconds=60.0)
    time.sleep(0.03)
    assert batch.is_due(max_rows=1_000, max_seconds=0.02)


def test_tenant_move_also_writes_a_tombstone_under_the_previous_tenant(deals: Model) -> None:
    batch = ChangeBatch()
    before = change(deals, "acme", 1, 10, deal_row("acme", 1))
    moved = change(
        deals, "globex", 1, 20, deal_row("globex", 1, title="moved"), previous_tenant="acme"
    )
    batch.add(before)
    batch.add(moved)

    rows = rows_of(batch, "crm_deals")
    assert set(rows) == {("acme", 1), ("globex", 1)}
    assert rows[("globex", 1)] is moved
    tombstone = rows[("acme", 1)]
    assert tombstone.tenant == "acme"
    assert tombstone.key == (1,)
    assert tombstone.is_deleted
    assert tombstone.version == 20  # supersedes the row the tenant had
    assert tombstone.previous_tenant is None
    assert tombstone.unavailable == frozenset()

    table = replica_rows(deals, [rows[("acme", 1)], rows[("globex", 1)]])
    assert table.column("tenant_id").to_pylist() == ["acme", "globex"]
    assert table.column("id").to_pylist() == [1, 1]
    assert table.column("_is_deleted").to_pylist() == [1, 0]
    assert table.column("_version").to_pylist() == [20, 20]


def test_tenant_move_tombstone_drops_unavailable_columns(deals: Model) -> None:
    batch = ChangeBatch()
    moved = dataclasses.replace(toast_change(deals, "globex", 1, 20), previous_tenant="acme")
    batch.add(moved)
    tombstone = rows_of(batch, "crm_deals")[("acme", 1)]
    assert tombstone.is_deleted
    assert tombstone.unavailable == frozenset()
    # The tombstone's title is only a placeholder: nothing ever reads it.
    assert replica_rows(deals, [tombstone]).column("title").to_pylist() == [""]


def test_previous_tenant_equal_to_tenant_writes_no_tombstone(deals: Model) -> None:
    batch = ChangeBatch()
    batch.add(change(deals, "acme", 1, 10, previous_tenant="acme"))
    assert list(rows_of(batch, "crm_deals")) == [("acme", 1)]
    assert not rows_of(batch, "crm_deals")[("acme", 1)].is_deleted
    assert batch.events == 1


def test_unavailable_column_filled_from_previous_version_in_batch(deals: Model) -> None:
    batch = ChangeBatch()
    batch.add(change(deals, "acme", 1, 10, deal_row("acme", 1, title="A long TOASTed title")))
    update = toast_change(deals, "acme", 1, 11, stage="won", probability=1.0)
    batch.add(update)

    kept = rows_of(batch, "crm_deals")[("acme", 1)]
    assert kept.unavailable == frozenset()
    assert kept.version == 11
    assert kept.row == deal_row(
        "acme", 1, title="A long TOASTed title", stage="won", probability=1.0
    )
    assert update.row["title"] is None  # the consumed event itself is untouched


def test_unavailable_column_without_previous_version_stays_unavailable(deals: Model) -> None:
    batch = ChangeBatch()
    update = toast_change(deals, "acme", 1, 11)
    batch.add(update)
    # The worker fills it from the stored row before writing.
    assert rows_of(batch, "crm_deals")[("acme", 1)] is update


def test_unavailable_column_filled_through_a_chain_of_updates(deals: Model) -> None:
    batch = ChangeBatch()
    batch.add(change(deals, "acme", 1, 10, deal_row("acme", 1, title="kept")))
    batch.add(toast_change(deals, "acme", 1, 11, stage="negotiation"))
    batch.add(toast_change(deals, "acme", 1, 12, stage="won"))
    kept = rows_of(batch, "crm_deals")[("acme", 1)]
    assert kept.row == deal_row("acme", 1, title="kept", stage="won")
    assert kept.unavailable == frozenset()


def test_unavailable_column_stays_unavailable_when_the_previous_version_lacked_it(
    deals: Model,
) -> None:
    batch = ChangeBatch()
    batch.add(toast_change(deals, "acme", 1, 11, stage="negotiation"))
    batch.add(toast_change(deals, "acme", 1, 12, stage="won"))
    kept = rows_of(batch, "crm_deals")[("acme", 1)]
    assert kept.version == 12
    assert kept.row["stage"] == "won"
    # Nobody in this batch knows the title: the stored row must still supply it.
    assert kept.unavailable == frozenset({"title"})


# --------------------------------------------------------------------------- replica_rows


def test_replica_rows_schema_of_deals(deals: Model) -> None:
    ts = pa.timestamp("us", tz="UTC")
    expected = pa.schema(
        [
            ("tenant_id", pa.string()),
            ("id", pa.int64()),
            ("contact_id", pa.int64()),
            ("owner_id", pa.int64()),
            ("title", pa.string()),
            ("stage", pa.string()),
            ("amount", pa.decimal128(18, 2)),
            ("currency", pa.string()),
            ("probability", pa.float64()),
            ("created_at", ts),
            ("closed_at", ts),
            ("expected_close_date", pa.date32()),
            ("updated_at", ts),
            ("deleted_at", ts),
            ("_version", pa.uint64()),
            ("_is_deleted", pa.uint8()),
        ]
    )
    assert replica_rows(deals, [change(deals, "acme", 1, 1)]).schema == expected
    assert replica_rows(deals, []).schema == expected


def test_replica_rows_schema_follows_the_catalog(catalog: Catalog) -> None:
    for model in catalog.replicated_models():
        table = replica_rows(model, [])
        assert table.num_rows == 0
        assert table.schema.names == [
            model.tenant_column,
            *model.fields,
            "_version",
            "_is_deleted",
        ]
        assert table.schema.field(model.tenant_column).type == pa.string()
        for name, spec in model.fields.items():
            assert table.schema.field(name).type == arrow_type(spec), name
        assert table.schema.field("_version").type == pa.uint64()
        assert table.schema.field("_is_deleted").type == pa.uint8()


def test_replica_rows_values(deals: Model) -> None:
    closed = dt.datetime(2024, 4, 2, 8, 0, 0, 1, tzinfo=UTC)
    first = deal_row("acme", 1)
    second = deal_row(
        "globex",
        2,
        amount=Decimal("-0.05"),
        closed_at=closed,
        expected_close_date=None,
        probability=0.0,
    )
    big_version = 2**63 + 5  # uint64: beyond int64
    table = replica_rows(
        deals, [change(deals, "acme", 1, 3, first), change(deals, "globex", 2, big_version, second)]
    )
    assert table.num_rows == 2
    assert table.to_pylist() == [
        {**first, "_version": 3, "_is_deleted": 0},
        {**second, "_version": big_version, "_is_deleted": 0},
    ]
    assert table.column("closed_at").null_count == 1
    assert table.column("deleted_at").null_count == 2


@pytest.mark.parametrize(
    ("module", "name"), [("crm", "deals"), ("crm", "contacts"), ("billing", "invoices")]
)
def test_replica_rows_delete_placeholders(catalog: Catalog, module: str, name: str) -> None:
    model = model_of(catalog, module, name)
    delete = RowChange(
        model=model,
        op="d",
        tenant="acme",
        key=(42,),
        row=key_only_row(model, "acme", (42,)),
        unavailable=frozenset(),
        version=99,
        is_deleted=True,
        source_ts_ms=1,
        snapshot=False,
        lsn=99,
    )
    (row,) = replica_rows(model, [delete]).to_pylist()

    expected: dict[str, Any] = {model.tenant_column: "acme"}
    for field_name, spec in model.fields.items():
        if field_name == "id":
            expected[field_name] = 42
        elif spec.nullable:
            expected[field_name] = None
        else:
            expected[field_name] = ZERO_VALUES[spec.type]
    expected["_version"] = 99
    expected["_is_deleted"] = 1
    assert row == expected


def test_delete_placeholder_cases_cover_every_type(catalog: Catalog) -> None:
    # The three models above have a non-nullable field of every type between them.
    types = {
        spec.type
        for model in catalog.replicated_models()
        for spec in model.fields.values()
        if not spec.nullable
    }
    assert types == set(FieldType)


def test_replica_rows_delete_keeps_values_it_carries(deals: Model) -> None:
    row = deal_row("acme", 3, title="still here", closed_at=T0)
    delete = change(deals, "acme", 3, 5, row, op="d", is_deleted=True)
    (written,) = replica_rows(deals, [delete]).to_pylist()
    assert written == {**row, "_version": 5, "_is_deleted": 1}


# --------------------------------------------------------------------------- fill_unavailable


def test_fill_unavailable(deals: Model) -> None:
    row = deal_row("acme", 1, title=None, closed_at=None, stage="won")
    update = change(deals, "acme", 1, 8, row, unavailable=frozenset({"title", "closed_at"}))
    stored = {"title": "stored title", "closed_at": T0, "stage": "open", "owner_id": 99}

    filled = fill_unavailable(update, stored)

    assert filled.row == deal_row("acme", 1, title="stored title", closed_at=T0, stage="won")
    assert filled.unavailable == frozenset()
    assert dataclasses.replace(filled, row=update.row, unavailable=update.unavailable) == update
    assert update.row["title"] is None
    assert update.unavailable == frozenset({"title", "closed_at"})


def test_fill_unavailable_missing_from_previous_gives_none(deals: Model) -> None:
    update = toast_change(deals, "acme", 1, 8)
    filled = fill_unavailable(update, {})
    assert filled.row == deal_row("acme", 1, title=None)
    assert filled.unavailable == frozenset()


def test_fill_unavailable_with_nothing_unavailable_is_a_copy(deals: Model) -> None:
    update = change(deals, "acme", 1, 8)
    assert fill_unavailable(update, {"title": "other"}) == update


# --------------------------------------------------------------------------- SyncTracker


def make_tracker() -> SyncTracker:
    return SyncTracker(
        {
            "crm_deals": "crm.deals",
            "crm_contacts": "crm.contacts",
            "billing_invoices": "billing.invoices",
        },
        {
            "crm_deals": DEALS_TOPIC,
            "crm_contacts": CONTACTS_TOPIC,
            "billing_invoices": INVOICES_TOPIC,
        },
    )


def last_sync(tracker: SyncTracker) -> dict[str, int]:
    return {table: p.last_sync_ms for table, p in tracker.tables.items()}


def test_tracker_starts_empty() -> None:
    tracker = make_tracker()
    assert {t: (p.model, p.state, p.events_applied) for t, p in tracker.tables.items()} == {
        "crm_deals": ("crm.deals", "streaming", 0),
        "crm_contacts": ("crm.contacts", "streaming", 0),
        "billing_invoices": ("billing.invoices", "streaming", 0),
    }
    assert last_sync(tracker) == dict.fromkeys(tracker.tables, 0)


def test_written_moves_last_sync_forward_only() -> None:
    tracker = make_tracker()
    tracker.written("crm_deals", 5, 10_000)
    tracker.written("crm_deals", 2, 8_000)
    assert last_sync(tracker) == {"crm_deals": 10_000, "crm_contacts": 0, "billing_invoices": 0}
    assert tracker.tables["crm_deals"].events_applied == 7
    tracker.written("crm_deals", 1, 12_000)
    assert tracker.tables["crm_deals"].last_sync_ms == 12_000
    assert tracker.tables["crm_deals"].events_applied == 8


def test_heartbeat_waits_for_committed_offsets() -> None:
    tracker = make_tracker()
    tracker.committed({(DEALS_TOPIC, 0): 10})
    ends = {(DEALS_TOPIC, 0): 10, (DEALS_TOPIC, 1): 4, (CONTACTS_TOPIC, 0): 3}
    tracker.heartbeat(50_000, ends)
    # deals partition 1 and contacts are behind; invoices has no partition: caught up.
    assert last_sync(tracker) == {"crm_deals": 0, "crm_contacts": 0, "billing_invoices": 50_000}

    tracker.committed({(DEALS_TOPIC, 1): 3})
    assert tracker.tables["crm_deals"].last_sync_ms == 0
    tracker.committed({(DEALS_TOPIC, 1): 4})
    assert last_sync(tracker) == {
        "crm_deals": 50_000,
        "crm_contacts": 0,
        "billing_invoices": 50_000,
    }
    tracker.committed({(CONTACTS_TOPIC, 0): 5})  # beyond the recorded end: caught up too
    assert last_sync(tracker) == dict.fromkeys(tracker.tables, 50_000)


def test_heartbeat_with_no_partitions_moves_every_table_at_once() -> None:
    tracker = make_tracker()
    tracker.heartbeat(7_000, {})
    assert last_sync(tracker) == dict.fromkeys(tracker.tables, 7_000)


def test_heartbeat_on_empty_partitions_moves_at_once() -> None:
    tracker = make_tracker()
    tracker.heartbeat(7_000, {(DEALS_TOPIC, 0): 0, (CONTACTS_TOPIC, 0): 0})
    assert last_sync(tracker) == dict.fromkeys(tracker.tables, 7_000)


def test_committed_offsets_never_go_back() -> None:
    tracker = make_tracker()
    tracker.committed({(DEALS_TOPIC, 0): 10})
    tracker.committed({(DEALS_TOPIC, 0): 4})
    tracker.heartbeat(9_000, {(DEALS_TOPIC, 0): 10})
    assert tracker.tables["crm_deals"].last_sync_ms == 9_000


def test_heartbeats_resolve_in_turn_and_never_move_back() -> None:
    tracker = make_tracker()
    tracker.heartbeat(1_000, {(DEALS_TOPIC, 0): 5})
    tracker.heartbeat(2_000, {(DEALS_TOPIC, 0): 8})
    assert tracker.tables["crm_deals"].last_sync_ms == 0
    tracker.committed({(DEALS_TOPIC, 0): 5})
    assert tracker.tables["crm_deals"].last_sync_ms == 1_000
    tracker.committed({(DEALS_TOPIC, 0): 8})
    assert tracker.tables["crm_deals"].last_sync_ms == 2_000

    tracker.written("crm_deals", 1, 3_000)
    tracker.heartbeat(2_500, {(DEALS_TOPIC, 0): 8})
    assert tracker.tables["crm_deals"].last_sync_ms == 3_000


def test_lag_counts_pending_events_per_table() -> None:
    tracker = make_tracker()
    tracker.committed({(DEALS_TOPIC, 0): 7, (DEALS_TOPIC, 1): 9, (CONTACTS_TOPIC, 0): 12})
    tracker.lag(
        {
            (DEALS_TOPIC, 0): 10,  # 3 behind
            (DEALS_TOPIC, 1): 12,  # 3 behind
            (DEALS_TOPIC, 2): 4,  # never committed: 4 behind
            (CONTACTS_TOPIC, 0): 11,  # committed beyond the (older) end: not negative
        }
    )
    assert {t: p.pending_events for t, p in tracker.tables.items()} == {
        "crm_deals": 10,
        "crm_contacts": 0,
        "billing_invoices": 0,
    }
    tracker.committed({(DEALS_TOPIC, 0): 10, (DEALS_TOPIC, 1): 12, (DEALS_TOPIC, 2): 4})
    tracker.lag({(DEALS_TOPIC, 0): 10, (DEALS_TOPIC, 1): 12, (DEALS_TOPIC, 2): 4})
    assert tracker.tables["crm_deals"].pending_events == 0


def test_failed_sets_error_and_written_clears_it() -> None:
    tracker = make_tracker()
    message = "connection refused " + "x" * 600
    tracker.failed(message)
    for progress in tracker.tables.values():
        assert progress.state == "error"
        assert progress.last_error == message[:500]
        assert len(progress.last_error) == 500

    tracker.written("crm_deals", 3, 4_000)
    deals = tracker.tables["crm_deals"]
    assert (deals.state, deals.last_error, deals.last_sync_ms) == ("streaming", "", 4_000)
    assert tracker.tables["crm_contacts"].state == "error"


def test_successful_retry_clears_error_of_quiet_tables() -> None:
    tracker = make_tracker()
    tracker.failed("replica down")
    # What the worker does once the retried write succeeds: written, committed, heartbeats.
    tracker.written("crm_deals", 3, 4_000)
    tracker.committed({(DEALS_TOPIC, 0): 3})
    tracker.heartbeat(5_000, {(DEALS_TOPIC, 0): 3, (CONTACTS_TOPIC, 0): 0})
    contacts = tracker.tables["crm_contacts"]
    assert contacts.last_sync_ms == 5_000
    assert (contacts.state, contacts.last_error) == ("streaming", "")


def test_roll_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monotonic=100.0)
    monkeypatch.setattr(tracker_module, "time", clock)
    progress = TableProgress("crm_deals", "crm.deals", _rate_window_start=100.0)

    progress.note_written(20, 1_000)
    progress.note_written(10, 2_000)
    clock.now = 102.5
    progress.roll_rate()
    assert progress.events_per_second == pytest.approx(12.0)
    assert progress.events_applied == 30

    clock.now = 106.5  # a window without writes
    progress.roll_rate()
    assert progress.events_per_second == 0.0

    progress.note_written(7, 3_000)
    progress.roll_rate()  # no time elapsed: the rate is left as it was
    assert progress.events_per_second == 0.0


# --------------------------------------------------------------------------- WorkerMetrics

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"^(?P<name>{_NAME})(?P<labels>\{{{_LABEL}(?:,{_LABEL})*\}})? (?P<value>\S+)$"
)
_HELP = re.compile(rf"^# HELP (?P<name>{_NAME}) \S.*$")
_TYPE = re.compile(rf"^# TYPE (?P<name>{_NAME}) (?P<type>counter|gauge|summary|histogram|untyped)$")
_SUFFIXES = {"summary": ("_sum", "_count"), "histogram": ("_sum", "_count", "_bucket")}


def _family(name: str, types: Mapping[str, str]) -> str:
    if name in types:
        return name
    for family, kind in types.items():
        if any(name == family + suffix for suffix in _SUFFIXES.get(kind, ())):
            return family
    raise AssertionError(f"sample {name} belongs to no declared metric")


def parse_exposition(text: str) -> dict[tuple[str, str], float]:
    """Check the text format line by line; the samples by (name, labels)."""
    assert text.endswith("\n")
    helps: set[str] = set()
    types: dict[str, str] = {}
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            if help_match := _HELP.match(line):
                assert help_match["name"] not in helps, f"second HELP line: {line}"
                helps.add(help_match["name"])
                continue
            type_match = _TYPE.match(line)
            assert type_match, f"malformed comment line: {line!r}"
            assert type_match["name"] not in types, f"second TYPE line: {line}"
            types[type_match["name"]] = type_match["type"]
            continue
        sample = _SAMPLE.match(line)
        assert sample, f"malformed sample line: {line!r}"
        family = _family(sample["name"], types)  # TYPE comes before the first sample
        assert family in helps, f"{family} has no HELP line before its samples"
        value = float(sample["value"])
        assert not math.isnan(value)
        key = (sample["name"], sample["labels"] or "")
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = value
    assert set(types) == helps, "every metric has both HELP and TYPE"
    return samples


def family_runs(text: str) -> list[str]:
    """The metric each line belongs to, consecutive repeats collapsed."""
    types = {m["name"]: m["type"] for m in map(_TYPE.match, text.splitlines()) if m}
    runs: list[str] = []
    for line in text.splitlines():
        match = _HELP.match(line) or _TYPE.match(line) or _SAMPLE.match(line)
        assert match
        family = _family(match["name"], types)
        if not runs or runs[-1] != family:
            runs.append(family)
    return runs


def progress(table: str, **values: Any) -> TableProgress:
    return TableProgress(table, table.replace("_", ".", 1), **values)


def test_render_without_anything_is_valid() -> None:
    samples = parse_exposition(WorkerMetrics().render())
    assert samples == {
        ("cdc_batches_total", ""): 0,
        ("cdc_batch_rows_sum", ""): 0,
        ("cdc_batch_rows_count", ""): 0,
        ("cdc_last_batch_rows", ""): 0,
        ("cdc_dead_letters_total", ""): 0,
        ("cdc_write_errors_total", ""): 0,
        ("cdc_uncommitted_batches_total", ""): 0,
        ("cdc_ready", ""): 0,
    }


def test_render_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "time", FakeClock(wall=1_700_000_060.623))
    metrics = WorkerMetrics(
        events={"crm_deals": 7, "billing_invoices": 3},
        batches=4,
        batch_rows_total=25,
        last_batch_rows=6,
        dead_letters=2,
        write_errors=1,
        uncommitted_batches=5,
        outages={"kafka": 2, "clickhouse": 1},
        away={"kafka"},
        started=True,
        tables={
            "crm_deals": progress(
                "crm_deals",
                events_per_second=12.5,
                pending_events=3,
                last_sync_ms=1_700_000_000_123,
            ),
            "crm_contacts": progress("crm_contacts", pending_events=0),  # never synced
            "billing_invoices": progress(
                "billing_invoices", last_sync_ms=1_700_000_090_000, events_per_second=1 / 3
            ),
        },
    )
    samples = parse_exposition(metrics.render())
    assert samples == {
        ("cdc_events_total", '{table="billing_invoices"}'): 3,
        ("cdc_events_total", '{table="crm_deals"}'): 7,
        ("cdc_batches_total", ""): 4,
        ("cdc_batch_rows_sum", ""): 25,
        ("cdc_batch_rows_count", ""): 4,
        ("cdc_last_batch_rows", ""): 6,
        ("cdc_dead_letters_total", ""): 2,
        ("cdc_write_errors_total", ""): 1,
        ("cdc_uncommitted_batches_total", ""): 5,
        ("cdc_dependency_outages_total", '{dependency="clickhouse"}'): 1,
        ("cdc_dependency_outages_total", '{dependency="kafka"}'): 2,
        # started, but waiting for Kafka again
        ("cdc_ready", ""): 0,
        ("cdc_events_per_second", '{table="billing_invoices"}'): 0.333,
        ("cdc_events_per_second", '{table="crm_contacts"}'): 0,
        ("cdc_events_per_second", '{table="crm_deals"}'): 12.5,
        ("cdc_consumer_lag_events", '{table="billing_invoices"}'): 0,
        ("cdc_consumer_lag_events", '{table="crm_contacts"}'): 0,
        ("cdc_consumer_lag_events", '{table="crm_deals"}'): 3,
        ("cdc_last_sync_timestamp_seconds", '{table="billing_invoices"}'): 1_700_000_090.0,
        ("cdc_last_sync_timestamp_seconds", '{table="crm_deals"}'): 1_700_000_000.123,
        # 60.5 s behind; a last sync in the (wall clock's) future is no lag at all.
        ("cdc_lag_seconds", '{table="billing_invoices"}'): 0,
        ("cdc_lag_seconds", '{table="crm_deals"}'): 60.5,
    }


def test_ready_once_started_with_nothing_away() -> None:
    metrics = WorkerMetrics(started=True)
    seen = [metrics.ready]
    metrics.dependency_away("clickhouse")
    metrics.dependency_away("clickhouse")
    seen.append(metrics.ready)
    metrics.dependency_back("clickhouse")
    seen.append(metrics.ready)
    assert seen == [True, False, True]
    assert metrics.outages == {"clickhouse": 2}
    assert "cdc_ready 1" in metrics.render()


def test_render_counters_are_typed() -> None:
    text = WorkerMetrics(events={"crm_deals": 1}).render()
    types = {m["name"]: m["type"] for m in map(_TYPE.match, text.splitlines()) if m}
    assert types == {
        "cdc_events_total": "counter",
        "cdc_batches_total": "counter",
        "cdc_batch_rows": "summary",
        "cdc_last_batch_rows": "gauge",
        "cdc_dead_letters_total": "counter",
        "cdc_write_errors_total": "counter",
        "cdc_uncommitted_batches_total": "counter",
        "cdc_dependency_outages_total": "counter",
        "cdc_ready": "gauge",
        "cdc_events_per_second": "gauge",
        "cdc_consumer_lag_events": "gauge",
        "cdc_last_sync_timestamp_seconds": "gauge",
        "cdc_lag_seconds": "gauge",
    }


def test_render_groups_each_metric() -> None:
    metrics = WorkerMetrics(
        tables={
            "crm_deals": progress("crm_deals", last_sync_ms=1_000),
            "crm_contacts": progress("crm_contacts", last_sync_ms=2_000),
        }
    )
    runs = family_runs(metrics.render())
    assert len(runs) == len(set(runs)), runs


# --------------------------------------------------------------------------- Topics


def test_topics_for_catalog(catalog: Catalog) -> None:
    topics = Topics.for_catalog(catalog, "analytics")
    assert topics.by_table == {
        "crm_contacts": CONTACTS_TOPIC,
        "crm_deals": DEALS_TOPIC,
        "billing_invoices": INVOICES_TOPIC,
    }
    assert topics.heartbeat == "__debezium-heartbeat.analytics"


def test_topics_pattern_matches_exactly_the_topics(catalog: Catalog) -> None:
    topics = Topics.for_catalog(catalog, "analytics")
    pattern = re.compile(topics.pattern())  # aiokafka matches with re.match
    wanted = [CONTACTS_TOPIC, DEALS_TOPIC, INVOICES_TOPIC, "__debezium-heartbeat.analytics"]
    for topic in wanted:
        assert pattern.match(topic), topic
    for topic in (
        "analytics.public.deals2",
        "xanalytics.public.deals",
        "analytics.public.deal",
        "analytics.public.deals.dlq",
        "analyticsXpublicXdeals",
        "analytics.public.users",
        "analytics.public.",
        "other.public.deals",
        "__debezium-heartbeat.analytics2",
        "__debezium-heartbeat.other",
        "__debezium-heartbeatXanalytics",
        "analytics.dead-letter",
        "",
    ):
        assert not pattern.match(topic), topic


def test_topics_with_a_dotted_prefix(catalog: Catalog) -> None:
    topics = Topics.for_catalog(catalog, "prod.eu")
    pattern = re.compile(topics.pattern())
    assert topics.by_table["crm_deals"] == "prod.eu.public.deals"
    assert topics.heartbeat == "__debezium-heartbeat.prod.eu"
    assert pattern.match("prod.eu.public.deals")
    assert not pattern.match("prodXeu.public.deals")
    assert not pattern.match("analytics.public.deals")


# --------------------------------------------------------------------------- _stored_value


def test_stored_value_legacy_timestamps(deals: Model) -> None:
    expected = dt.datetime(2023, 11, 14, 22, 13, 20, 123_456, tzinfo=UTC)
    assert _stored_value(deals, "created_at", 1_700_000_000_123_456) == expected
    assert _stored_value(deals, "closed_at", 0) == EPOCH
    assert _stored_value(deals, "updated_at", -1) == dt.datetime(
        1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC
    )
    converted = _stored_value(deals, "created_at", 86_400_000_000)
    assert converted == dt.datetime(1970, 1, 2, tzinfo=UTC)
    assert converted.utcoffset() == dt.timedelta(0)


def test_stored_value_modern_values_pass_through(deals: Model, contacts: Model) -> None:
    assert _stored_value(deals, "created_at", T0) is T0
    assert _stored_value(deals, "closed_at", None) is None
    assert _stored_value(deals, "id", 5) == 5
    assert _stored_value(deals, "amount", Decimal("1.50")) == Decimal("1.50")
    assert _stored_value(deals, "title", "t") == "t"
    assert _stored_value(contacts, "is_subscribed", True) is True
    assert _stored_value(contacts, "deleted_at", None) is None


def test_stored_value_legacy_booleans(contacts: Model) -> None:
    assert _stored_value(contacts, "is_subscribed", 1) is True
    assert _stored_value(contacts, "is_subscribed", 0) is False
    assert _stored_value(contacts, "is_subscribed", False) is False


def test_only_unreachable_dependencies_are_waited_for() -> None:
    from aiokafka.errors import KafkaConnectionError

    from cdc_worker.outage import is_transient
    from service.errors import AnalyticsError, ErrorKind, engine_unavailable

    assert is_transient(engine_unavailable("connection refused"))
    assert is_transient(KafkaConnectionError("no broker"))
    assert is_transient(ConnectionRefusedError())
    # a server that refuses the credentials or the DDL is a configuration to fix, not to wait for
    assert not is_transient(AnalyticsError(ErrorKind.INTERNAL, "DDL refused", "ENGINE_ERROR"))
    assert not is_transient(AnalyticsError(ErrorKind.UNAUTHORIZED, "bad password", "AUTH"))
    assert not is_transient(ValueError("bad topic pattern"))
