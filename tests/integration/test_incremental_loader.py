"""The incremental loader on real components: PostgreSQL 15 from the local stack, chDB in-process.

Each test gets its own PostgreSQL database (the catalog's source tables, with a trigger that
stamps ``updated_at`` on every insert and update, as the loader requires of a source) and its own
ClickHouse database on the session's embedded engine. The ground truth is PostgreSQL itself: the
live replica rows (``FINAL``, not deleted) must equal the source rows column by column.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from google.protobuf import json_format

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from cdc_worker.incremental_loader import IncrementalLoader, run_loader
from local_stack import LocalStack
from service.api import convert
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, Model
from service.errors import AnalyticsError
from service.insights.funnel_request import FunnelRequest, FunnelStep
from service.insights.funnels import assemble_funnel, compile_funnel
from service.settings import Settings
from tests.conftest import catalog_in_database, unique_database
from tests.funnel_reference import reference_breakdowns
from tests.integration.conftest import comparable, loader_source_ddl
from tests.served import start_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def source_database(stack: LocalStack, catalog: Catalog) -> str:
    """A new PostgreSQL database with the catalog's source tables and updated_at triggers."""
    dsn = await asyncio.to_thread(stack.postgres.create_database, f"src_{uuid.uuid4().hex[:10]}")
    connection = await asyncpg.connect(dsn)
    try:
        for statement in loader_source_ddl(catalog):
            await connection.execute(statement)
    finally:
        await connection.close()
    return dsn


class Source:
    """One test's source database and replica database, and the comparison of the two."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, catalog: Catalog, backend: EmbeddedBackend):
        self.dsn, self.pool, self.catalog, self.backend = dsn, pool, catalog, backend

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "source_database_url": self.dsn,
            "loader_poll_seconds": 0.1,
            "loader_lookback_seconds": 0.0,
            "loader_reconcile_seconds": 0.0,
            **overrides,
        }
        return Settings(**values)

    def loader(self, **overrides: Any) -> IncrementalLoader:
        return IncrementalLoader(self.settings(**overrides), self.catalog, self.backend)

    def model(self, name: str) -> Model:
        (model,) = self.catalog.find(name)
        return model

    async def source_rows(self, model: Model) -> list[tuple[Any, ...]]:
        columns = ", ".join([model.tenant_column, *model.fields])
        key = ", ".join([model.tenant_column, *model.primary_key])
        records = await self.pool.fetch(f"SELECT {columns} FROM {model.source} ORDER BY {key}")
        return [tuple(comparable(v) for v in record) for record in records]

    async def replica_rows(self, model: Model) -> list[tuple[Any, ...]]:
        columns = [model.tenant_column, *model.fields]
        key = ", ".join(f"`{c}`" for c in (model.tenant_column, *model.primary_key))
        rows = await self.backend.query_rows(
            f"SELECT {', '.join(f'`{c}`' for c in columns)} "
            f"FROM `{self.catalog.database}`.`{model.table}` FINAL "
            f"WHERE _is_deleted = 0 ORDER BY {key}"
        )
        return [tuple(comparable(row[c]) for c in columns) for row in rows]

    async def assert_equal(self) -> int:
        """Every model's live replica rows equal the source rows; returns the rows compared."""
        compared = 0
        for model in self.catalog.replicated_models():
            expected = await self.source_rows(model)
            assert await self.replica_rows(model) == expected, model.qualified_name
            compared += len(expected)
        return compared


@pytest.fixture
async def source(
    postgres: LocalStack, catalog: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[Source]:
    moved = catalog_in_database(catalog, unique_database("loader"))
    dsn = await source_database(postgres, moved)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        yield Source(dsn, pool, moved, embedded_backend)
    finally:
        await pool.close()


async def insert_deals(pool: asyncpg.Pool, tenant: str, ids: range, stage: str = "lead") -> None:
    await pool.executemany(
        "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, currency, "
        "probability, created_at, closed_at, expected_close_date, updated_at) "
        "VALUES ($1, $2::bigint, $2::bigint % 7, 3, $3, $4, $5, 'EUR', 0.25, now(), NULL, "
        "DATE '2026-06-30', now())",
        [(tenant, i, f"deal {i} 'quoted' \\ ü", stage, Decimal(i) / 4) for i in ids],
    )


async def insert_contacts(pool: asyncpg.Pool, tenant: str, ids: range) -> None:
    await pool.executemany(
        "INSERT INTO contacts (tenant_id, id, email, status, country, lead_source, "
        "lifetime_value, score, is_subscribed, created_at, updated_at) "
        "VALUES ($1, $2, $3, 'active', 'DE', NULL, 12.50, $4, $5, now(), now())",
        [(tenant, i, f"c{i}@example.com", i / 3, i % 2 == 0) for i in ids],
    )


async def insert_invoices(pool: asyncpg.Pool, tenant: str, ids: range) -> None:
    await pool.executemany(
        "INSERT INTO invoices (tenant_id, id, customer_id, external_ref, status, total, "
        "currency, issued_at, due_date, paid_at, updated_at) "
        "VALUES ($1, $2, 9, $3, 'open', 99.99, 'USD', now(), DATE '2026-12-31', NULL, now())",
        [(tenant, i, uuid.uuid4()) for i in ids],
    )


async def test_inserts_updates_and_soft_deletes_reach_the_replica(source: Source) -> None:
    pool = source.pool
    for tenant, offset in (("acme", 0), ("globex", 1000)):
        await insert_deals(pool, tenant, range(offset + 1, offset + 301))
        await insert_contacts(pool, tenant, range(offset + 1, offset + 51))
        await insert_invoices(pool, tenant, range(offset + 1, offset + 31))
    loader = source.loader(loader_batch_rows=100)
    await loader.start()
    try:
        await loader.poll_once()
        assert await source.assert_equal() == 2 * (300 + 50 + 30)
        deals = loader.tables["crm_deals"]
        assert deals.rows_written == 600
        assert deals.last_sync_at is not None

        await pool.execute("UPDATE deals SET stage = 'won', amount = amount * 3 WHERE id % 10 = 0")
        await pool.execute("UPDATE deals SET deleted_at = now() WHERE id % 25 = 1")
        await pool.execute("UPDATE contacts SET score = NULL, is_subscribed = NOT is_subscribed")
        await pool.execute("UPDATE invoices SET status = 'paid', paid_at = now() WHERE id < 10")
        await insert_deals(pool, "acme", range(301, 321), stage="won")
        await loader.poll_once()
        await source.assert_equal()
        # Only what changed was read again: 60 updated, 24 soft-deleted, 20 new deals.
        assert deals.rows_read == 600 + 60 + 24 + 20

        # Soft-deleted rows stay in the replica (with deleted_at) and Query hides them.
        live = await source.backend.query_rows(
            f"SELECT count() AS n FROM `{source.catalog.database}`.crm_deals FINAL "
            "WHERE _is_deleted = 0 AND deleted_at IS NULL"
        )
        truth = await pool.fetchval("SELECT count(*) FROM deals WHERE deleted_at IS NULL")
        assert live[0]["n"] == truth == 620 - 24
    finally:
        await loader.close()


async def test_hard_deletes_and_tenant_moves_are_reconciled(source: Source) -> None:
    pool = source.pool
    await insert_deals(pool, "acme", range(1, 201))
    await insert_deals(pool, "initech", range(1001, 1101))
    loader = source.loader(loader_batch_rows=1000)
    await loader.start()
    try:
        await loader.poll_once()
        await source.assert_equal()
        await pool.execute("DELETE FROM deals WHERE id % 3 = 0")
        await pool.execute("UPDATE deals SET tenant_id = 'acme' WHERE id BETWEEN 1001 AND 1005")
        await loader.poll_once()
        with pytest.raises(AssertionError):
            await source.assert_equal()  # polling alone cannot see hard deletes
        started = time.monotonic()
        await loader.reconcile_once()
        reconcile_seconds = time.monotonic() - started
        await source.assert_equal()
        deleted = len(range(3, 201, 3)) + len(range(1002, 1101, 3))
        moved = len([i for i in range(1001, 1006) if i % 3])  # their initech keys are gone
        assert loader.tables["crm_deals"].tombstones == deleted + moved
        print(f"reconciled 300 keys in {reconcile_seconds * 1000:.0f} ms")
        # A key deleted and inserted again comes back.
        await insert_deals(pool, "acme", range(3, 4), stage="won")
        await loader.poll_once()
        await source.assert_equal()
    finally:
        await loader.close()


async def test_a_transaction_committing_after_a_later_stamped_one_is_not_skipped(
    source: Source,
) -> None:
    pool = source.pool
    loader = source.loader()
    await loader.start()
    early = await asyncpg.connect(source.dsn)
    try:
        transaction = early.transaction()
        await transaction.start()
        # Stamped now() = this transaction's start; committed only after a later one is read.
        await early.execute(
            "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, "
            "currency, probability, created_at, updated_at) "
            "VALUES ('acme', 1, 1, 1, 'early', 'lead', 1, 'EUR', 0.5, now(), now())"
        )
        await asyncio.sleep(0.05)
        await insert_deals(pool, "acme", range(2, 3))
        await loader.poll_once()
        assert [r[1] for r in await source.replica_rows(source.model("deals"))] == [2]
        await transaction.commit()
        stamps = dict(await pool.fetch("SELECT id, updated_at FROM deals"))
        assert stamps[1] < stamps[2]  # a plain updated_at > watermark would now skip id 1
        await loader.poll_once()
        await source.assert_equal()
        assert [r[1] for r in await source.replica_rows(source.model("deals"))] == [1, 2]
    finally:
        await early.close()
        await loader.close()


async def test_a_new_loader_resumes_from_the_checkpoint(source: Source) -> None:
    pool = source.pool
    await insert_deals(pool, "acme", range(1, 501))
    await insert_contacts(pool, "acme", range(1, 101))
    first = source.loader(loader_batch_rows=64)
    await first.start()
    await first.poll_once()
    await first.close()
    await source.assert_equal()

    await pool.execute("UPDATE deals SET stage = 'won' WHERE id <= 5")
    await pool.execute("UPDATE deals SET deleted_at = now() WHERE id = 6")
    await insert_deals(pool, "acme", range(501, 505))
    second = source.loader(loader_batch_rows=64)
    await second.start()
    try:
        await second.poll_once()
        await source.assert_equal()
        assert second.tables["crm_deals"].rows_read == 10  # not the 504 rows again
        assert second.tables["crm_contacts"].rows_read == 0
    finally:
        await second.close()


async def test_a_failed_write_is_retried_from_the_checkpoint(source: Source) -> None:
    database = source.catalog.database
    await insert_deals(source.pool, "acme", range(1, 51))
    loader = source.loader()
    await loader.start()
    try:
        await loader.poll_once()
        deals = loader.tables["crm_deals"]
        before = deals.checkpoint
        # The replica goes away (and comes back with its rows): every insert into it fails.
        await source.backend.command(f"RENAME TABLE `{database}`.crm_deals TO `{database}`.away")
        await source.pool.execute("UPDATE deals SET stage = 'won' WHERE id <= 20")
        await insert_contacts(source.pool, "acme", range(1, 11))
        await loader.poll_once()
        assert deals.state == "error"
        assert "does not exist" in deals.last_error
        assert deals.checkpoint == before  # nothing counted as loaded
        assert loader.tables["crm_contacts"].rows_written == 10  # other tables go on
        state = await source.backend.query_rows(
            f"SELECT argMax(state, updated_at) AS state FROM `{database}`._sync_state "
            "WHERE table_name = 'crm_deals'"
        )
        assert state == [{"state": "error"}]
        await source.backend.command(f"RENAME TABLE `{database}`.away TO `{database}`.crm_deals")
        await asyncio.sleep(deals.retry_delay)
        await loader.poll_once()
        assert deals.state == "streaming"
        await source.assert_equal()
    finally:
        await loader.close()


async def test_the_running_loader_keeps_up_and_moves_last_sync_at(source: Source) -> None:
    database = source.catalog.database
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_loader(
            source.settings(loader_poll_seconds=0.1, loader_reconcile_seconds=0.5),
            source.catalog,
            source.backend,
            stop,
        )
    )
    try:
        await insert_deals(source.pool, "acme", range(1, 101))
        latency = await _until(source.assert_equal, within=10)

        # The rows are visible before the loader reports the poll that wrote them: wait for it.
        async def deals_synced() -> None:
            assert await source.backend.last_sync_at(database, "crm_deals") is not None

        await _until(deals_synced, within=10)
        first_sync = await source.backend.last_sync_at(database, "crm_deals")
        assert first_sync is not None
        await source.pool.execute("DELETE FROM deals WHERE id <= 10")
        await source.pool.execute("UPDATE deals SET amount = 0 WHERE id > 90")
        delete_latency = await _until(source.assert_equal, within=10)

        # Nobody writes contacts, yet the table is known complete up to a later time.
        async def contacts_synced_later() -> None:
            later = await source.backend.last_sync_at(database, "crm_contacts")
            assert later is not None
            assert later > first_sync

        await _until(contacts_synced_later, within=10)
        print(f"insert visible after {latency:.2f}s, hard delete after {delete_latency:.2f}s")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _until(check: Callable[[], Awaitable[Any]], within: float) -> float:
    started = time.monotonic()
    while True:
        try:
            await check()
            return time.monotonic() - started
        except (AssertionError, AnalyticsError):  # not equal yet, or not even created yet
            if time.monotonic() - started > within:
                raise
            await asyncio.sleep(0.05)


async def test_analytics_serve_runs_the_loader_against_a_source_database(
    postgres: LocalStack, catalog: Catalog, tmp_path: Path
) -> None:
    dsn = await source_database(postgres, catalog)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    await insert_deals(pool, "acme", range(1, 41))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("ANALYTICS_KAFKA_BOOTSTRAP_SERVERS", "ANALYTICS_CLICKHOUSE_URL")
    }
    env.update(
        ANALYTICS_SOURCE_DATABASE_URL=dsn,
        ANALYTICS_DATA_DIR=str(tmp_path / "chdb"),
        ANALYTICS_LOADER_POLL_SECONDS="0.2",
        ANALYTICS_REST_PORT="off",
    )
    served = await start_serve(env)
    lines = served.lines
    port = served.port
    try:
        token = mint_token(Settings(), subject="t", tenant="acme", permissions=["crm.*.read"])
        request = {
            "model": "deals",
            "groupBy": "stage",
            "aggregate": "sum",
            "field": "amount",
            "order": "stage.asc",
        }

        async def expected() -> list[dict[str, Any]]:
            rows = await pool.fetch(
                "SELECT stage, count(*) AS n, sum(amount) AS total FROM deals "
                "WHERE tenant_id = 'acme' AND deleted_at IS NULL GROUP BY stage ORDER BY stage"
            )
            return [{"stage": r["stage"], "sum_amount": float(r["total"])} for r in rows]

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)

            async def answer() -> tuple[list[dict[str, Any]], str]:
                response = await stub.Query(
                    json_format.ParseDict(request, analytics_pb2.QueryRequest()),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
                body = convert.response_json(response)
                data = [
                    {k: float(v) if k == "sum_amount" else v for k, v in row.items()}
                    for row in body["data"]
                ]
                return data, body["meta"].get("lastSyncAt", "")

            synced: list[str] = []

            async def check() -> None:
                data, last_sync = await answer()
                assert data == await expected()
                # The loader reports how far it is after writing the rows: rows can be visible
                # a moment before the report that covers them.
                assert last_sync
                assert not synced or last_sync > synced[-1]
                synced.append(last_sync)

            await _until_served(check)
            await pool.execute("UPDATE deals SET stage = 'won' WHERE id <= 10")
            await pool.execute("UPDATE deals SET deleted_at = now() WHERE id > 35")
            await _until_served(check)
            assert len(synced) >= 2
        assert any('"incremental loader started"' in line for line in lines)
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 30) == 0
    finally:
        await served.stop()
        await pool.close()


async def _until_served(check: Callable[[], Awaitable[None]]) -> None:
    started = time.monotonic()
    while True:
        try:
            await check()
        except (AssertionError, grpc.aio.AioRpcError):
            if time.monotonic() - started > 20:
                raise
            await asyncio.sleep(0.1)
        else:
            return


async def test_a_cross_model_funnel_on_loaded_rows_equals_the_reference(source: Source) -> None:
    """Contact created -> deal created -> deal won, on rows the loader replicated from PostgreSQL.

    Some deals are won, some soft-deleted, one contact is hard-deleted after the first load
    (the reconcile pass tombstones it); the funnel on the replica equals the reference
    evaluator's answer on PostgreSQL's own rows.
    """
    pool = source.pool
    start = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)
    hour = dt.timedelta(hours=1)
    # The source's keys are unique across tenants; the other tenant's rows tell the same story.
    for tenant, offset in (("acme", 0), ("globex", 1000)):
        await pool.executemany(
            "INSERT INTO contacts (tenant_id, id, email, status, country, lead_source, "
            "lifetime_value, score, is_subscribed, created_at, updated_at) "
            "VALUES ($1, $2, 'c@example.com', 'active', 'DE', NULL, 1.00, NULL, true, $3, now())",
            [(tenant, offset + key, start + key * hour) for key in range(1, 21)],
        )
        await pool.executemany(
            "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, "
            "currency, probability, created_at, closed_at, expected_close_date, updated_at) "
            "VALUES ($1, $2, $3, 1, 'd', $4, 1.00, 'EUR', 0.5, $5, $6, NULL, now())",
            [
                (
                    tenant,
                    offset + key,
                    offset + key % 20 + 1,
                    "closed_won" if key % 3 == 0 else "lead",
                    start + (key % 20 + 1 + key % 5) * hour,
                    start + (key % 20 + 3 + key % 7) * hour if key % 3 == 0 else None,
                )
                for key in range(1, 41)
            ],
        )
    await pool.execute("UPDATE deals SET deleted_at = now() WHERE id % 8 = 0")
    loader = source.loader()
    await loader.start()
    try:
        await loader.poll_once()
        await pool.execute("DELETE FROM contacts WHERE id = 4")
        await loader.reconcile_once()
        await source.assert_equal()
    finally:
        await loader.close()
    request = FunnelRequest(
        model="crm.contacts",
        steps=(
            FunnelStep(date_field="created_at"),
            FunnelStep(model="crm.deals", date_field="created_at", actor="contact"),
            FunnelStep(
                model="crm.deals",
                date_field="closed_at",
                actor="contact",
                filters={"stage": "eq.closed_won"},
            ),
        ),
        date_from="2026-03-01",
        date_to="2026-03-31",
        window="12h",
    )
    now = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    plan = compile_funnel(request, source.catalog, "acme", now)
    result = await source.backend.execute(
        plan.compiled, timeout_seconds=60, query_id=uuid.uuid4().hex
    )
    answer = assemble_funnel(plan, result.table)
    tables = {}
    for name in ("crm.contacts", "crm.deals"):
        model = source.model(name)
        records = await pool.fetch(
            f"SELECT {', '.join([model.tenant_column, *model.fields])} FROM {model.source}"
        )
        tables[name] = [dict(record) | {"_version": 1, "_is_deleted": 0} for record in records]
    contacts = tables.pop("crm.contacts")
    (expected,) = reference_breakdowns(
        request, contacts, "acme", now, source.model("crm.contacts"), source.catalog, tables
    )
    assert [(s.actors, s.median_seconds) for s in answer.steps] == [
        (s.actors, s.median_seconds) for s in expected.steps
    ]
    assert answer.steps[0].actors == 19  # contact 4 is gone
    assert answer.steps[2].actors > 0
