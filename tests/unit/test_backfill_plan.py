"""The pure parts of a backfill: key ranges, page SQL, CSV page -> Arrow, progress figures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_worker.backfill_plan import (
    SnapshotInfo,
    UnsupportedKeyError,
    backfill_key,
    checked_snapshot_id,
    page_sql,
    page_table,
    split_key_range,
    tombstone_table,
)
from cdc_worker.decoder import snapshot_version
from service.backfill_jobs import BackfillProgress, BackfillRequest, BackfillState
from service.catalog import Catalog
from service.errors import AnalyticsError


@given(
    st.integers(-(2**40), 2**40),
    st.integers(0, 10**6),
    st.integers(1, 64),
)
def test_ranges_cover_every_key_once(low: int, width: int, parts: int) -> None:
    high = low + width
    ranges = split_key_range(low, high, parts)
    assert 1 <= len(ranges) <= parts
    assert ranges[0].start == low
    assert ranges[-1].end == high + 1
    for before, after in itertools.pairwise(ranges):
        assert before.end == after.start
    assert all(r.start < r.end for r in ranges)
    assert [r.index for r in ranges] == list(range(len(ranges)))
    sizes = [r.end - r.start for r in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_empty_table_has_no_ranges_and_tiny_one_fewer() -> None:
    assert split_key_range(5, 4, 8) == []
    assert len(split_key_range(1, 3, 8)) == 3


def test_key_must_be_one_integer_column(catalog: Catalog) -> None:
    deals = catalog.find("crm.deals")[0]
    assert backfill_key(deals) == "id"
    composite = dataclasses.replace(deals, primary_key=("id", "owner_id"))
    with pytest.raises(UnsupportedKeyError, match="one integer column"):
        backfill_key(composite)
    textual = dataclasses.replace(deals, primary_key=("title",))
    with pytest.raises(UnsupportedKeyError):
        backfill_key(textual)


def test_page_sql_versions_and_bounds(catalog: Catalog) -> None:
    deals = catalog.find("crm.deals")[0]
    snapshot = SnapshotInfo(lsn=1000, xmax=2**32 + 7, in_progress=(2**32 + 3, 2**32 + 5))
    sql = page_sql(deals, snapshot, 10, 500, 50_000)
    assert 'FROM "public"."deals" WHERE "id" >= 10 AND "id" < 500 ORDER BY "id" LIMIT 50000' in sql
    assert f"ELSE {snapshot_version(1000)} END AS _version" in sql
    # xids compared in 32-bit space: the snapshot's running transactions and anything later.
    assert "ANY(ARRAY[3, 5]::bigint[])" in sql
    assert "- 7 + 4294967296" in sql
    assert "false" in page_sql(deals, SnapshotInfo(1000, 7, ()), 0, 1, 1)


def test_snapshot_ids_are_checked() -> None:
    assert checked_snapshot_id("00000003-0000001B-1") == "00000003-0000001B-1"
    with pytest.raises(ValueError, match="snapshot id"):
        checked_snapshot_id("1'; DROP TABLE deals; --")


def test_csv_page_becomes_replica_rows(catalog: Catalog) -> None:
    deals = catalog.find("crm.deals")[0]
    # What COPY ... (FORMAT csv) sends for the SELECT of page_sql: tenant, the fields in
    # catalog order (times as epoch microseconds, dates as epoch days), then the version.
    page = (
        b'acme,1,2,3,"a ""quoted"",\nline",won,1250.50,EUR,0.1,1767225600000000,,,'
        b"1767225600123456,,84\n"
        b'acme,2,2,3,"",lead,-0.01,EUR,5e-324,0,1767225600000001,20454,0,,0\n'
        b"globex,3,2,3,NA,lead,0.00,EUR,NaN,0,0,-25567,0,0,84\n"
    )
    table = page_table(deals, [page[:50], page[50:]])
    rows = table.to_pylist()
    assert [r["title"] for r in rows] == ['a "quoted",\nline', "", "NA"]
    assert rows[0]["amount"] == Decimal("1250.50")
    assert rows[1]["amount"] == Decimal("-0.01")
    assert rows[1]["probability"] == 5e-324
    assert rows[0]["created_at"] == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert rows[0]["updated_at"] == dt.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)
    assert rows[0]["closed_at"] is None
    assert rows[0]["expected_close_date"] is None
    assert rows[1]["expected_close_date"] == dt.date(2026, 1, 1)
    assert rows[2]["expected_close_date"] == dt.date(1900, 1, 1)
    assert [r["_version"] for r in rows] == [84, 0, 84]
    assert [r["_is_deleted"] for r in rows] == [0, 0, 0]
    assert table.column_names == [
        "tenant_id",
        *deals.fields,
        "_version",
        "_is_deleted",
    ]
    assert str(table.schema.field("created_at").type) == "timestamp[us, tz=UTC]"


def test_tombstones_carry_key_and_version(catalog: Catalog) -> None:
    deals = catalog.find("crm.deals")[0]
    table = tombstone_table(deals, [("acme", 7, 11)])
    assert table.to_pylist() == [{"tenant_id": "acme", "id": 7, "_version": 11, "_is_deleted": 1}]


def test_progress_figures() -> None:
    running = BackfillProgress("crm.deals", "b", BackfillState.RUNNING, 250, 1000, 50.0)
    assert running.percent == 25
    assert running.eta_seconds == 15
    low_estimate = dataclasses.replace(running, rows_copied=1200)
    assert low_estimate.percent == 99.9  # 100 only once done
    done = dataclasses.replace(running, state=BackfillState.DONE)
    assert (done.percent, done.eta_seconds) == (100, 0)


def test_request_bounds_name_the_field(catalog: Catalog) -> None:
    deals = catalog.find("crm.deals")[0]
    request = BackfillRequest.validated(deals, parallelism=0, batch_rows=0, resume=False)
    assert (request.parallelism, request.batch_rows) == (2, 50_000)
    with pytest.raises(AnalyticsError) as caught:
        BackfillRequest.validated(deals, parallelism=99, batch_rows=0, resume=False)
    assert caught.value.violations[0].field == "parallelism"
    with pytest.raises(AnalyticsError) as caught:
        BackfillRequest.validated(deals, parallelism=1, batch_rows=5, resume=False)
    assert caught.value.violations[0].field == "batchRows"
