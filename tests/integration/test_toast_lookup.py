"""The CDC worker's unchanged-TOAST lookup (``stored_rows``) on every engine it writes to.

The embedded engine, ``HttpBackend`` through ``ChdbOverHttp`` to a modern engine (its rows go in
as ``ArrowStream``, query parameters bound by the server), and the installed ClickHouse server
(Debian's 18.16: the legacy layout, rows as ``TabSeparated``, query parameters bound on the
client). The key includes a UUID, which every engine reads back as ``uuid.UUID`` where the
decoder keeps text. Rows are written in three inserts,
one per version, so that the engine's ``FINAL`` has versions in different parts to merge. The
expected answer is worked out from the generated rows alone: per key, the newest version unless
it is a tombstone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from cdc_worker.events import RowChange
from cdc_worker.worker import ReplicaSink, stored_rows
from service.backends.dialect import backend_dialect
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.catalog import Model, parse_catalog
from service.schema import arrow_type, replica_table_ddl
from tests.chdb_http import ChdbOverHttp
from tests.conftest import catalog_in_database, unique_database
from tests.strategies import HOSTILE_STRINGS

pytestmark = pytest.mark.integration

CATALOG = parse_catalog(
    {
        "database": "placeholder",
        "models": [
            {
                "module": "test",
                "name": "toasted",
                "table": "toasted",
                "primary_key": ["id", "ref", "code"],
                "fields": {
                    "id": "int",
                    "ref": "uuid",
                    "code": "string",
                    "note": "string",
                    "memo": "string?",
                    "amount": "decimal(38,10)",
                    "at": "timestamp?",
                    "day": "date?",
                    "flag": "bool",
                },
            }
        ],
    }
)
MODEL: Model = next(iter(CATALOG.models.values()))
KEY = ("id", "ref", "code")
FILLED = frozenset({"note", "memo", "amount", "at", "day", "flag"})


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# Text a replica holds (PostgreSQL text is UTF-8); tenants and key codes are made of it too.
TEXTS = [text for text in HOSTILE_STRINGS if _utf8(text)]
TENANTS = ["acme", *TEXTS[:12]]
STAMPS = [
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    dt.datetime(1901, 12, 13, 20, 45, 52, 654321, tzinfo=dt.UTC),
    dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
]


@pytest.fixture(scope="module", params=["chdb", "http", "server"])
async def sink(
    request: pytest.FixtureRequest,
    embedded_backend: EmbeddedBackend,
    chdb_front: ChdbOverHttp,
    installed_server: HttpBackend,
) -> AsyncIterator[ReplicaSink]:
    if request.param == "chdb":
        yield embedded_backend
    elif request.param == "http":
        http = HttpBackend(chdb_front.url, pool_size=2)
        yield http
        await http.close()
    else:
        yield installed_server


def versions_of(rng: random.Random, keys: int) -> list[list[dict[str, Any]]]:
    """Up to three versions per key (the rows of each version's insert), hostile values mixed in."""
    inserts: list[list[dict[str, Any]]] = [[], [], []]
    for k in range(keys):
        key = {
            "tenant_id": TENANTS[k % len(TENANTS)],
            # Equal ids under other tenants and codes: only the whole key tells rows apart.
            "id": k % 7 - 3,
            "ref": str(uuid.UUID(int=(k * 0x9E3779B97F4A7C15) % 2**128)),
            "code": TEXTS[(k * 5) % len(TEXTS)] + str(k),
        }
        for version in range(1 + k % 3):
            last = version == k % 3
            inserts[version].append(
                key
                | {
                    # Now and then a value as long as the ones PostgreSQL moves out of line.
                    "note": rng.choice(TEXTS) * (400 if rng.random() < 0.1 else 1),
                    # The newest version sometimes NULLs what an older one held.
                    "memo": None if last and k % 4 == 0 else rng.choice(TEXTS),
                    "amount": Decimal(rng.randint(-(10**20), 10**20)).scaleb(-10),
                    "at": None if version == 1 else rng.choice(STAMPS),
                    "day": rng.choice([None, dt.date(1970, 1, 1), dt.date(2105, 12, 31)]),
                    "flag": rng.random() < 0.5,
                    "_version": 10 * k + version + 1,
                    "_is_deleted": int(last and k % 5 == 4),
                }
            )
    return inserts


def arrow_rows(rows: list[dict[str, Any]]) -> pa.Table:
    columns = {"tenant_id": pa.array([r["tenant_id"] for r in rows], pa.string())}
    for spec in MODEL.fields.values():
        columns[spec.name] = pa.array([r[spec.name] for r in rows], arrow_type(spec))
    columns["_version"] = pa.array([r["_version"] for r in rows], pa.uint64())
    columns["_is_deleted"] = pa.array([r["_is_deleted"] for r in rows], pa.uint8())
    return pa.table(columns)


def change(row: dict[str, Any]) -> RowChange:
    """An update that left every non-key column out, as Debezium does for unchanged TOAST."""
    return RowChange(
        model=MODEL,
        op="u",
        tenant=row["tenant_id"],
        key=tuple(row[name] for name in KEY),
        row={name: row[name] for name in KEY} | dict.fromkeys(FILLED),
        unavailable=FILLED,
        version=row["_version"] + 100,
        is_deleted=False,
        source_ts_ms=0,
        snapshot=False,
        lsn=0,
    )


def expected(inserts: list[list[dict[str, Any]]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    newest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows in inserts:
        for row in rows:
            key = (row["tenant_id"], *(row[name] for name in KEY))
            if key not in newest or row["_version"] > newest[key]["_version"]:
                newest[key] = row
    return {
        key: {name: row[name] for name in FILLED}
        for key, row in newest.items()
        if not row["_is_deleted"]
    }


def same(left: dict[str, Any], right: dict[str, Any]) -> bool:
    """Equal values of equal types (decimal scales count)."""
    return left.keys() == right.keys() and all(
        type(left[n]) is type(right[n]) and str(left[n]) == str(right[n]) for n in left
    )


@pytest.mark.parametrize("keys", [40, 3_000])
async def test_stored_rows_are_the_newest_live_versions(sink: ReplicaSink, keys: int) -> None:
    """3 000 keys with long codes make the parameter larger than a URL may carry."""
    catalog = catalog_in_database(CATALOG, unique_database("toast"))
    model = dataclasses.replace(MODEL, table=f"toasted_{keys}")
    await sink.command(f"CREATE DATABASE IF NOT EXISTS `{catalog.database}`")
    try:
        dialect = await backend_dialect(sink)
        await sink.command(replica_table_ddl(catalog, model, dialect=dialect))
        inserts = versions_of(random.Random(keys), keys)
        for rows in inserts:
            await sink.insert_arrow(catalog.database, model.table, arrow_rows(rows))
        truth = expected(inserts)
        asked = [change(row) for row in inserts[0]]
        # Keys the replica never had: absent from the answer, like deleted ones.
        asked += [dataclasses.replace(c, tenant=c.tenant + "?") for c in asked[:5]]
        asked = [dataclasses.replace(c, model=model) for c in asked]
        got = await stored_rows(sink, catalog.database, model, asked)
        assert got.keys() == truth.keys()
        for key, values in truth.items():
            assert same(got[key], values), (key, got[key], values)
        # One key alone, asked twice; then a key the replica never had.
        one = [asked[0], asked[0]]
        wanted = (one[0].tenant, *one[0].key)
        alone = await stored_rows(sink, catalog.database, model, one)
        assert alone == ({wanted: truth[wanted]} if wanted in truth else {})
        missing = await stored_rows(sink, catalog.database, model, asked[-1:])
        assert missing == {}
    finally:
        await sink.command(f"DROP DATABASE IF EXISTS `{catalog.database}`")


async def test_one_query_with_an_in_set_on_the_sort_key(
    chdb_front: ChdbOverHttp, embedded_backend: EmbeddedBackend
) -> None:
    """What reaches the server: one statement per lookup, the keys an ``IN`` set, no ``OR``."""
    catalog = catalog_in_database(CATALOG, unique_database("toast_sql"))
    http = HttpBackend(chdb_front.url, pool_size=1)
    await http.command(f"CREATE DATABASE `{catalog.database}`")
    try:
        await http.command(replica_table_ddl(catalog, MODEL, dialect=await http.dialect()))
        inserts = versions_of(random.Random(7), 300)
        await http.insert_arrow(catalog.database, MODEL.table, arrow_rows(inserts[0]))
        before = len(chdb_front.statements)
        got = await stored_rows(http, catalog.database, MODEL, [change(r) for r in inserts[0]])
        assert got.keys() == expected(inserts[:1]).keys()
        statements = [sql for _, sql in chdb_front.statements[before:]]
        assert len(statements) == 1
        assert " OR " not in statements[0].upper()
        assert "(`tenant_id`, `id`, `ref`, `code`) IN (" in statements[0]
    finally:
        await http.command(f"DROP DATABASE IF EXISTS `{catalog.database}`")
        await http.close()
