"""Replica partitioning on chDB: key ranges for integer keys, and FINAL exact across them.

A partition that is one merged part is read by FINAL without merging, so the replica partitions
integer keys by ranges (new keys and most changes land in the newest ones); these tests hold that
the answers stay exact whatever mix of merged and changing partitions FINAL meets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import chdb
import pyarrow as pa
import pytest_asyncio

from service.backends.dialect import parse_version
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.demo.generator import DELETED_COLUMN, VERSION_COLUMN
from service.schema import (
    FORCE_MERGE_AFTER_SECONDS,
    KEYS_PER_PARTITION,
    MERGE_SELECTOR_BASE,
    PARTITIONS,
    all_ddl,
    arrow_type,
    partition_expression,
    zero_value,
)
from tests.conftest import catalog_in_database, unique_database

TENANTS = ("acme", "globex")


def test_integer_keys_are_partitioned_by_ranges_others_by_tenant(catalog: Catalog) -> None:
    deals = catalog.get("crm", "deals")
    assert deals is not None
    assert partition_expression(deals) == f"intDiv(`id`, {KEYS_PER_PARTITION})"
    text_key = dataclasses.replace(
        deals,
        primary_key=("title",),
    )
    assert partition_expression(text_key) == f"cityHash64(`tenant_id`) % {PARTITIONS}"
    composite = dataclasses.replace(deals, primary_key=("id", "owner_id"))
    assert partition_expression(composite) == f"cityHash64(`tenant_id`) % {PARTITIONS}"
    uuid_key = dataclasses.replace(
        deals,
        fields={**deals.fields, "id": FieldSpec("id", FieldType.UUID)},
    )
    assert partition_expression(uuid_key) == f"cityHash64(`tenant_id`) % {PARTITIONS}"


@pytest_asyncio.fixture
async def replica(
    embedded_backend: EmbeddedBackend, catalog: Catalog
) -> AsyncIterator[tuple[Catalog, Model]]:
    mine = catalog_in_database(catalog, unique_database("partitions"))
    for statement in all_ddl(mine):
        await embedded_backend.command(statement)
    model = mine.get("crm", "deals")
    assert model is not None
    try:
        yield mine, model
    finally:
        await embedded_backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")


def _rows(model: Model, versions: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, pa.Array] = {
        model.tenant_column: pa.array([v["tenant"] for v in versions], pa.string())
    }
    for spec in model.fields.values():
        columns[spec.name] = pa.array(
            [v.get(spec.name, None if spec.nullable else zero_value(spec)) for v in versions],
            arrow_type(spec),
        )
    columns[VERSION_COLUMN] = pa.array([v["version"] for v in versions], pa.uint64())
    columns[DELETED_COLUMN] = pa.array([v["deleted"] for v in versions], pa.uint8())
    return pa.table(columns)


async def test_final_is_exact_across_merged_and_changing_partitions(
    embedded_backend: EmbeddedBackend, replica: tuple[Catalog, Model]
) -> None:
    """Old key ranges merged to one part each, new ones still receiving versions and deletes."""
    mine, model = replica
    table = f"`{mine.database}`.`{model.table}`"
    rng = random.Random(7)
    # Keys spread over four ranges, a few at the very edges of a range.
    keys = [r * KEYS_PER_PARTITION + offset for r in range(4) for offset in (0, 1, 500, 1 << 19)]
    keys += [KEYS_PER_PARTITION - 1, 2 * KEYS_PER_PARTITION - 1]
    latest: dict[tuple[str, int], tuple[int, bool, Decimal]] = {}
    version = 0

    async def write(batch_keys: list[int]) -> None:
        nonlocal version
        versions = []
        for key in batch_keys:
            version += 1
            tenant = TENANTS[key % 2]
            deleted = rng.random() < 0.2
            amount = Decimal(rng.randrange(1, 10_000)) / 100
            versions.append(
                {
                    "tenant": tenant,
                    "id": key,
                    "amount": amount,
                    "version": version,
                    "deleted": int(deleted),
                }
            )
            latest[(tenant, key)] = (version, deleted, amount)
        await embedded_backend.insert_arrow(mine.database, model.table, _rows(model, versions))

    await write(keys)
    await write(keys[: len(keys) // 2])
    # The two older ranges settle into one part each; the newer ones keep getting changes.
    await embedded_backend.command(f"OPTIMIZE TABLE {table} FINAL")
    newer = [k for k in keys if k >= 2 * KEYS_PER_PARTITION]
    for _ in range(3):
        await write(rng.sample(newer, len(newer) // 2))
    parts = await embedded_backend.query_rows(
        "SELECT partition, count() AS n FROM system.parts WHERE active "
        "AND database = {db:String} AND table = {t:String} GROUP BY partition ORDER BY partition",
        {"db": mine.database, "t": model.table},
    )
    by_partition = {row["partition"]: row["n"] for row in parts}
    assert by_partition["0"] == by_partition["1"] == 1
    assert by_partition["2"] > 1 or by_partition["3"] > 1

    for tenant in TENANTS:
        rows = await embedded_backend.query_rows(
            f"SELECT id, amount FROM {table} FINAL "
            "WHERE tenant_id = {t:String} AND _is_deleted = 0 ORDER BY id",
            {"t": tenant},
        )
        expected = sorted(
            (key, amount)
            for (owner, key), (_, deleted, amount) in latest.items()
            if owner == tenant and not deleted
        )
        assert [(row["id"], row["amount"]) for row in rows] == expected


async def test_replicas_on_the_embedded_engine_merge_a_burst_within_seconds(
    embedded_backend: EmbeddedBackend, catalog: Catalog
) -> None:
    """chDB reports its own version, so its replicas get ``merge_selector_base``.

    Three equal inserts into one partition: the default base (5) leaves them as three parts
    until the forced merge a minute later, and FINAL merges all three on every read; base 2
    merges them as soon as they exist.
    """
    dialect = await embedded_backend.dialect()
    assert dialect.version == parse_version(chdb.engine_version)
    assert dialect.merge_selector_base
    mine = catalog_in_database(catalog, unique_database("selector"))
    for statement in all_ddl(mine, dialect=dialect):
        await embedded_backend.command(statement)
    model = mine.get("crm", "deals")
    assert model is not None
    try:
        created = await embedded_backend.query_rows(
            "SELECT create_table_query AS q FROM system.tables "
            "WHERE database = {db:String} AND name = {t:String}",
            {"db": mine.database, "t": model.table},
        )
        assert f"merge_selector_base = {MERGE_SELECTOR_BASE}" in created[0]["q"]
        for batch in range(3):
            keys = range(batch * 1000, (batch + 1) * 1000)
            versions = [
                {"tenant": "acme", "id": key, "version": key + 1, "deleted": 0} for key in keys
            ]
            await embedded_backend.insert_arrow(mine.database, model.table, _rows(model, versions))
        deadline = time.monotonic() + FORCE_MERGE_AFTER_SECONDS / 2
        while True:
            parts = await embedded_backend.query_rows(
                "SELECT count() AS n FROM system.parts WHERE active "
                "AND database = {db:String} AND table = {t:String}",
                {"db": mine.database, "t": model.table},
            )
            if parts[0]["n"] == 1:
                break
            assert time.monotonic() < deadline, f"{parts[0]['n']} parts, not merged"
            await asyncio.sleep(0.2)
        counted = await embedded_backend.query_rows(
            f"SELECT count() AS n FROM `{mine.database}`.`{model.table}` FINAL"
        )
        assert counted[0]["n"] == 3000
    finally:
        await embedded_backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")
