"""Backfills on the real components: PostgreSQL -> StartBackfill -> chDB, with CDC running.

The connector starts with ``snapshot.mode=no_data``, so rows that exist before it arrive only
through a backfill, while every later change streams through Debezium and the CDC worker into
the same replica: the situation a backfill is for. Ground truth is PostgreSQL itself, compared
per tenant by row count and a checksum over every column, each side computed by its own SQL.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest

from analytics.v1 import sync_pb2, sync_pb2_grpc
from cdc_worker.backfill_command import backfill_launchers
from cdc_worker.runner import run_worker
from cdc_worker.source_schema import source_schema_ddl
from local_stack import LocalStack, load_connector_config, make_stack_directory
from service.api.server import RunningServer, start_server
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog
from service.schema import BACKFILL_CHECKPOINTS_TABLE, all_ddl
from service.settings import Settings
from tests.conftest import catalog_in_database, unique_database
from tests.grpc_errors import error_details

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEALS = 1_000_000
CONTACTS = 200_000
INVOICES = 20_000
TENANTS = 5
# These tests need no REST site (and two servers of one module must not share its port).
NO_REST: dict[str, Any] = {"rest_port": None} if "rest_port" in Settings.model_fields else {}


@dataclass
class Setup:
    stack: LocalStack
    pg: asyncpg.Pool
    catalog: Catalog
    settings: Settings
    server: RunningServer
    channel: grpc.aio.Channel
    backend: EmbeddedBackend

    @property
    def stub(self) -> sync_pb2_grpc.SyncServiceStub:
        return sync_pb2_grpc.SyncServiceStub(self.channel)

    def metadata(self, *permissions: str) -> tuple[tuple[str, str], ...]:
        token = mint_token(
            self.settings,
            subject="t",
            tenant="ops",
            permissions=list(permissions or ("analytics.admin", "*.*.read")),
        )
        return (("authorization", f"Bearer {token}"),)

    async def backfill(self, **fields: Any) -> list[sync_pb2.StartBackfillResponse]:
        call = self.stub.StartBackfill(
            sync_pb2.StartBackfillRequest(**fields), metadata=self.metadata()
        )
        return [message async for message in call]


# Each side renders every column the same way: integers, scaled decimals, floors of scaled
# floats, epoch microseconds and epoch days, N for NULL. The checksum is the sum over rows of
# the first 32 bits of the MD5 of that text.
PG_CANONICAL = {
    "deals": (
        "concat_ws('|', tenant_id, id, contact_id, owner_id, title, stage, (amount * 100)::bigint,"
        " currency, floor(probability * 1000000)::bigint, {us:created_at}, {us:closed_at},"
        " coalesce((expected_close_date - DATE '1970-01-01')::text, 'N'), {us:updated_at},"
        " {us:deleted_at})"
    ),
    "contacts": (
        "concat_ws('|', tenant_id, id, email, status, country, coalesce(lead_source, 'N'),"
        " (lifetime_value * 100)::bigint, coalesce(floor(score * 1000000)::bigint::text, 'N'),"
        " is_subscribed::int, {us:created_at}, {us:updated_at}, {us:deleted_at})"
    ),
    "invoices": (
        "concat_ws('|', tenant_id, id, customer_id, external_ref::text, status,"
        " (total * 100)::bigint, currency, {us:issued_at}, (due_date - DATE '1970-01-01'),"
        " {us:paid_at}, {us:updated_at})"
    ),
}
CH_CANONICAL = {
    "crm_deals": (
        "concat(tenant_id, '|', toString(id), '|', toString(contact_id), '|', toString(owner_id),"
        " '|', title, '|', stage, '|', toString(toInt64(amount * 100)), '|', currency, '|',"
        " toString(toInt64(floor(probability * 1000000))), '|', {us:created_at}, '|',"
        " {us:closed_at}, '|', ifNull(toString(toInt32(expected_close_date)), 'N'), '|',"
        " {us:updated_at}, '|', {us:deleted_at})"
    ),
    "crm_contacts": (
        "concat(tenant_id, '|', toString(id), '|', email, '|', status, '|', country, '|',"
        " ifNull(lead_source, 'N'), '|', toString(toInt64(lifetime_value * 100)), '|',"
        " ifNull(toString(toInt64(floor(score * 1000000))), 'N'), '|',"
        " toString(toUInt8(is_subscribed)), '|', {us:created_at}, '|', {us:updated_at}, '|',"
        " {us:deleted_at})"
    ),
    "billing_invoices": (
        "concat(tenant_id, '|', toString(id), '|', toString(customer_id), '|',"
        " toString(external_ref), '|', status, '|', toString(toInt64(total * 100)), '|', currency,"
        " '|', {us:issued_at}, '|', toString(toInt32(due_date)), '|', {us:paid_at}, '|',"
        " {us:updated_at})"
    ),
}


def _pg_expression(template: str) -> str:
    out = template
    for column in ("created_at", "closed_at", "updated_at", "deleted_at", "issued_at", "paid_at"):
        out = out.replace(
            f"{{us:{column}}}",
            f"coalesce((extract(epoch FROM {column}) * 1000000)::bigint::text, 'N')",
        )
    return out


def _ch_expression(template: str) -> str:
    out = template
    for column in ("created_at", "closed_at", "updated_at", "deleted_at", "issued_at", "paid_at"):
        out = out.replace(
            f"{{us:{column}}}", f"ifNull(toString(toUnixTimestamp64Micro({column})), 'N')"
        )
    return out


async def source_digest(pool: asyncpg.Pool, table: str) -> dict[str, tuple[int, int]]:
    text = _pg_expression(PG_CANONICAL[table])
    rows = await pool.fetch(
        f"SELECT tenant_id, count(*) AS n, sum(('x' || lpad(substr(md5({text}), 1, 8), 16, '0'))"
        f"::bit(64)::bigint) AS h FROM {table} GROUP BY tenant_id"
    )
    return {r["tenant_id"]: (int(r["n"]), int(r["h"])) for r in rows}


async def replica_digest(setup: Setup, table: str) -> dict[str, tuple[int, int]]:
    text = _ch_expression(CH_CANONICAL[table])
    rows = await setup.backend.query_rows(
        f"SELECT tenant_id, count() AS n, "
        f"sum(reinterpretAsUInt32(reverse(unhex(substring(hex(MD5({text})), 1, 8))))) AS h "
        f"FROM `{setup.catalog.database}`.`{table}` FINAL WHERE _is_deleted = 0 "
        "GROUP BY tenant_id"
    )
    return {r["tenant_id"]: (int(r["n"]), int(r["h"])) for r in rows}


async def wait_equal(setup: Setup, source: str, replica: str, within: float = 90.0) -> None:
    """Until the replica equals the source (CDC catching up), or fail showing the difference."""
    started = time.monotonic()
    while True:
        expected = await source_digest(setup.pg, source)
        actual = await replica_digest(setup, replica)
        if actual == expected:
            return
        if time.monotonic() - started > within:
            differ = {
                t: (expected.get(t), actual.get(t))
                for t in set(expected) | set(actual)
                if expected.get(t) != actual.get(t)
            }
            pytest.fail(f"replica {replica} differs from {source}: {differ}")
        await asyncio.sleep(1.0)


async def checkpoints(setup: Setup, table: str) -> list[dict[str, Any]]:
    return await setup.backend.query_rows(
        "SELECT backfill_id, range_index, next_key, rows_copied, state, updated_at "
        f"FROM `{setup.catalog.database}`.`{BACKFILL_CHECKPOINTS_TABLE}` FINAL "
        "WHERE table_name = {t:String} ORDER BY backfill_id, range_index",
        {"t": table},
    )


async def _load_source(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount, currency,"
        " probability, created_at, closed_at, expected_close_date, updated_at, deleted_at)"
        f" SELECT 'bf' || (i % {TENANTS}), i, i % 1000, i % 37,"
        " CASE WHEN i % 101 = 0 THEN E'deal \"' || i || E'\",\\nsecond line'"
        " WHEN i % 103 = 0 THEN '' WHEN i % 107 = 0 THEN 'NA' ELSE 'deal ' || i END,"
        " (ARRAY['lead', 'won', 'lost'])[1 + i % 3], (i % 100000) / 100.0, 'EUR',"
        " (i % 1000) / 1000.0 + 1e-9, timestamptz '2025-01-01' + i * interval '1.000001 second',"
        " CASE WHEN i % 7 = 0 THEN NULL ELSE timestamptz '2025-06-01' + i * interval '1 ms' END,"
        " CASE WHEN i % 3 = 0 THEN NULL ELSE DATE '2026-01-01' + i % 400 END, now(),"
        " CASE WHEN i % 50 = 0 THEN now() ELSE NULL END"
        f" FROM generate_series(1, {DEALS}) AS i"
    )
    await pool.execute(
        "INSERT INTO contacts (tenant_id, id, email, status, country, lead_source,"
        " lifetime_value, score, is_subscribed, created_at, updated_at, deleted_at)"
        f" SELECT 'bf' || (i % {TENANTS}), i, 'c' || i || '@example.com',"
        " (ARRAY['lead', 'customer'])[1 + i % 2], 'DE',"
        " CASE WHEN i % 4 = 0 THEN NULL ELSE 'web' END,"
        " i / 100.0, CASE WHEN i % 5 = 0 THEN NULL ELSE i / 7.0 END, i % 2 = 0,"
        " timestamptz '2024-01-01' + i * interval '1 minute', now(), NULL"
        f" FROM generate_series(1, {CONTACTS}) AS i"
    )
    await pool.execute(
        "INSERT INTO invoices (tenant_id, id, customer_id, external_ref, status, total, currency,"
        " issued_at, due_date, paid_at, updated_at)"
        f" SELECT 'bf' || (i % {TENANTS}), i, i % 300, md5(i::text)::uuid, 'open', i / 10.0,"
        " 'USD', timestamptz '2025-01-01' + i * interval '1 hour', DATE '2025-02-01' + i % 90,"
        " NULL, now()"
        f" FROM generate_series(1, {INVOICES}) AS i"
    )
    await pool.execute("ANALYZE deals; ANALYZE contacts; ANALYZE invoices")


@pytest.fixture(scope="module")
async def setup(catalog: Catalog, embedded_backend: EmbeddedBackend) -> AsyncIterator[Setup]:
    stack = LocalStack(make_stack_directory(), ["postgres", "kafka", "connect"])
    await stack.astart()
    try:
        pool = await asyncpg.create_pool(stack.postgres.dsn, min_size=1, max_size=6)
        moved = catalog_in_database(catalog, unique_database("backfill"))
        for statement in source_schema_ddl(moved):
            await pool.execute(statement)
        for statement in all_ddl(moved):
            await embedded_backend.command(statement)
        started = time.monotonic()
        await _load_source(pool)
        print(f"\nsource loaded in {time.monotonic() - started:.1f}s")
        # No initial snapshot: what exists now reaches the replica only through backfills.
        config = load_connector_config().with_config({"snapshot.mode": "no_data"})
        await asyncio.to_thread(stack.register_connector, config)
        settings = Settings(
            port=0,
            kafka_bootstrap_servers=stack.kafka.bootstrap_servers,
            kafka_group_id=f"test-{uuid.uuid4().hex[:8]}",
            source_database_url=stack.postgres.dsn,
            **NO_REST,
        )
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, moved, embedded_backend, stop))
        server = await start_server(
            settings,
            catalog=moved,
            backend=embedded_backend,
            backfills=backfill_launchers(settings),
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Setup(stack, pool, moved, settings, server, channel, embedded_backend)
        stop.set()
        await asyncio.wait_for(worker, 30)
        await server.stop(1.0)
        await pool.close()
    finally:
        await stack.astop()
        stack.remove()


async def _mutate(pool: asyncpg.Pool, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Updates, deletes and inserts on deals until ``stop``: the changes CDC carries meanwhile."""
    rng = random.Random(7)
    next_id = DEALS + 1
    while not stop.is_set():
        ids = [rng.randint(1, DEALS) for _ in range(40)]
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "UPDATE deals SET amount = amount + 1, stage = 'won', updated_at = now() "
                "WHERE id = ANY($1::bigint[])",
                ids[:30],
            )
            await connection.execute("DELETE FROM deals WHERE id = ANY($1::bigint[])", ids[30:])
            await connection.execute(
                "INSERT INTO deals (tenant_id, id, contact_id, owner_id, title, stage, amount,"
                " currency, probability, created_at, updated_at) SELECT 'bf' || (i % 5), i, 1, 1,"
                " 'new', 'lead', 1.50, 'EUR', 0.5, now(), now() FROM generate_series($1::bigint,"
                " $1::bigint + 4) AS i",
                next_id,
            )
        next_id += 5
        counts["transactions"] += 1
        await asyncio.sleep(0.01)


async def test_million_rows_with_concurrent_changes_end_equal(setup: Setup) -> None:
    """1 M rows backfilled while CDC applies updates, deletes and inserts of the same table."""
    stop = asyncio.Event()
    counts = {"transactions": 0}
    mutator = asyncio.create_task(_mutate(setup.pg, stop, counts))
    watched: list[sync_pb2.WatchSyncStatusResponse] = []

    async def watch() -> None:
        call = setup.stub.WatchSyncStatus(
            sync_pb2.WatchSyncStatusRequest(models=["crm.deals"], interval_seconds=0.5),
            metadata=setup.metadata(),
        )
        async for message in call:
            watched.append(message)  # noqa: PERF401 (kept as they arrive, until cancelled)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(1.0)  # CDC is streaming the mutations before the copy starts
    started = time.monotonic()
    try:
        progress = await setup.backfill(model="crm.deals", parallelism=2)
    finally:
        stop.set()
        await mutator
    elapsed = time.monotonic() - started
    final = progress[-1]
    assert final.state == sync_pb2.BACKFILL_STATE_DONE
    assert final.percent == 100
    assert final.ranges_done == final.ranges_total == 8
    assert final.rows_copied >= DEALS - 5 * counts["transactions"]
    assert len(progress) > 2  # progress arrived while copying, not only at the end
    assert all(0 <= m.percent <= 100 for m in progress)
    print(
        f"\nbackfill of {final.rows_copied:,} rows: {elapsed:.1f}s wall, "
        f"{final.rows_copied / elapsed:,.0f} rows/s (server figure {final.rows_per_second:,.0f}),"
        f" {counts['transactions']} concurrent transactions"
    )
    await wait_equal(setup, "deals", "crm_deals")
    expected_rows = await setup.pg.fetchval("SELECT count(*) FROM deals")
    reply = await setup.stub.GetSyncStatus(
        sync_pb2.GetSyncStatusRequest(models=["crm.deals"]), metadata=setup.metadata()
    )
    assert reply.tables[0].rows == expected_rows
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    copying = [t for m in watched for t in m.tables if t.state == sync_pb2.SYNC_STATE_SNAPSHOT]
    assert copying, "WatchSyncStatus never showed the backfill"
    assert copying[0].source == "backfill"
    assert max(t.backfill_rows_copied for t in copying) > 0


async def test_cancelled_backfill_stops_and_resumes_without_recopying(setup: Setup) -> None:
    table = "crm_contacts"
    call = setup.stub.StartBackfill(
        sync_pb2.StartBackfillRequest(model="crm.contacts", parallelism=2, batch_rows=5000),
        metadata=setup.metadata(),
    )
    first: list[sync_pb2.StartBackfillResponse] = []
    async for message in call:
        first.append(message)
        if message.rows_copied >= CONTACTS // 3:
            break
    call.cancel()
    assert first[-1].state == sync_pb2.BACKFILL_STATE_RUNNING
    backfill_id = first[-1].backfill_id
    # The server notices the cancel, stops the readers and waits for inserts already sent.
    for _ in range(50):
        saved = await checkpoints(setup, table)
        if any(r["range_index"] == -1 and r["state"] == "cancelled" for r in saved):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"the backfill was not recorded as cancelled: {saved}")
    raw_count = f"SELECT count() AS n FROM `{setup.catalog.database}`.`{table}`"
    before = (await setup.backend.query_rows(raw_count))[0]["n"]
    await asyncio.sleep(2.0)
    assert (await setup.backend.query_rows(raw_count))[0]["n"] == before  # no insert after
    done_before = {r["range_index"]: r for r in saved if r["state"] == "done"}
    copied_before = sum(r["rows_copied"] for r in saved if r["range_index"] >= 0)
    assert done_before, "no range finished before the cancel"
    assert copied_before < CONTACTS
    assert before >= copied_before  # nothing checkpointed that was not inserted

    resumed = await setup.backfill(
        model="crm.contacts", parallelism=2, batch_rows=5000, resume=True
    )
    final = resumed[-1]
    assert final.state == sync_pb2.BACKFILL_STATE_DONE
    assert final.resumed
    assert final.backfill_id == backfill_id
    assert final.rows_copied == CONTACTS  # each row counted once across both runs
    after = {r["range_index"]: r for r in await checkpoints(setup, table)}
    for index, row in done_before.items():
        assert after[index]["updated_at"] == row["updated_at"]  # finished ranges not recopied
    raw_after = (await setup.backend.query_rows(raw_count))[0]["n"]
    # The resumed run inserted only what was left (plus at most one page per unfinished range).
    assert raw_after - before <= CONTACTS - copied_before + 8 * 5000
    await wait_equal(setup, "contacts", table)


async def test_damaged_replica_is_repaired(setup: Setup) -> None:
    table = f"`{setup.catalog.database}`.`billing_invoices`"
    first = await setup.backfill(model="billing.invoices")
    assert first[-1].state == sync_pb2.BACKFILL_STATE_DONE
    assert first[-1].rows_removed == 0
    await wait_equal(setup, "invoices", "billing_invoices")
    # Damage: rows the source never had, lost rows, and wrong values of existing keys at old
    # versions (as a broken loader or a restored backup would leave them).
    await setup.backend.command(
        f"INSERT INTO {table} (tenant_id, id, customer_id, external_ref, status, total, currency,"
        " issued_at, due_date, updated_at, _version, _is_deleted) SELECT 'bf' || toString(number"
        " % 5), 900000 + number, 1, generateUUIDv4(), 'ghost', 1, 'USD', now64(6), today(),"
        " now64(6), 10, 0 FROM numbers(37)"
    )
    scratch = f"`{setup.catalog.database}`.`invoices_wrong`"
    columns = (
        "tenant_id, id, customer_id, external_ref, status, total, currency, issued_at, due_date,"
        " updated_at, _version, _is_deleted"
    )
    await setup.backend.command(
        f"CREATE TABLE {scratch} ENGINE = Memory AS SELECT tenant_id, id, customer_id,"
        " external_ref, 'void' AS status, total + 1 AS total, currency, issued_at, due_date,"
        " updated_at, toUInt64(1) AS _version, toUInt8(0) AS _is_deleted"
        f" FROM {table} FINAL WHERE id % 100 = 0"
    )
    await setup.backend.command(
        f"ALTER TABLE {table} DELETE WHERE id < {INVOICES} AND (id % 100 = 0 OR id % 250 = 1)"
        " SETTINGS mutations_sync = 2"
    )
    await setup.backend.command(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {scratch}")
    await setup.backend.command(f"DROP TABLE {scratch}")
    assert await replica_digest(setup, "billing_invoices") != await source_digest(
        setup.pg, "invoices"
    )
    repaired = await setup.backfill(model="billing.invoices")
    assert repaired[-1].state == sync_pb2.BACKFILL_STATE_DONE
    assert repaired[-1].rows_removed == 37
    await wait_equal(setup, "invoices", "billing_invoices", within=10)


async def test_errors(setup: Setup) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await setup.backfill(model="crm.nope")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    call = setup.stub.StartBackfill(
        sync_pb2.StartBackfillRequest(model="crm.deals"), metadata=setup.metadata("*.*.read")
    )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        [m async for m in call]
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await setup.backfill(model="crm.deals", batch_rows=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(bad.value)[1] == ["batchRows"]

    without_source = setup.settings.model_copy(update={"source_database_url": None})
    server = await start_server(
        without_source,
        catalog=setup.catalog,
        backend=setup.backend,
        backfills=backfill_launchers(without_source),
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = sync_pb2_grpc.SyncServiceStub(channel).StartBackfill(
                sync_pb2.StartBackfillRequest(model="crm.deals"), metadata=setup.metadata()
            )
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                [m async for m in call]
    finally:
        await server.stop(0.5)
    assert missing.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ANALYTICS_SOURCE_DATABASE_URL" in (missing.value.details() or "")
    assert error_details(missing.value)[0].metadata["setting"] == "source_database_url"
