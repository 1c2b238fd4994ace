"""``HttpBackend`` inserts: ``ArrowStream`` on servers that take it writes exactly the rows the
``TabSeparated`` text path writes.

The modern server is ``ChdbOverHttp`` over the session's embedded engine (chDB 26.x, the only
modern ClickHouse here), whose inserts are parsed by the engine's own input formats. The same
rows go into two tables, one through each path, and are read back both over HTTP and straight
from the engine as Arrow; both must equal each other and what the rows were, worked out without
the backend's code (``expected_value``). The rows hold every catalog field type: decimals at
both ends of their precision, NULLs in every nullable column, UUIDs, timestamps with
microseconds (before the epoch too), unicode and control characters, empty strings.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from service.backends.dialect import MODERN, Dialect
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.schema import replica_table_ddl
from tests.chdb_http import ChdbOverHttp
from tests.conftest import catalog_in_database, unique_database
from tests.integration.test_http_backend import (
    EVERY_MODEL,
    EVERY_TYPE,
    arrow_rows,
    every_type_rows,
    expected_value,
    same,
)

pytestmark = pytest.mark.integration

UNICODE = ["", "é", "日本語", "emoji 🎉", "tab\tnew\nline\\", "quote ' \" `", "\x00nul", " "]


@pytest.fixture(scope="module")
async def database(chdb_front: ChdbOverHttp) -> AsyncIterator[str]:
    name = unique_database("insert_formats")
    http = HttpBackend(chdb_front.url, pool_size=1)
    await http.command(f"CREATE DATABASE `{name}`")
    yield name
    await http.command(f"DROP DATABASE IF EXISTS `{name}`")
    await http.close()


@pytest.fixture(scope="module")
async def arrow_backend(chdb_front: ChdbOverHttp) -> AsyncIterator[HttpBackend]:
    http = HttpBackend(chdb_front.url, pool_size=2)
    yield http
    await http.close()


@pytest.fixture(scope="module")
async def text_backend(chdb_front: ChdbOverHttp) -> AsyncIterator[HttpBackend]:
    http = HttpBackend(chdb_front.url, pool_size=2, text_inserts=True)
    yield http
    await http.close()


def test_arrow_inserts_from_the_production_minimum_on() -> None:
    assert not Dialect.for_server((18, 16, 1)).arrow_inserts
    assert not Dialect.for_server((23, 3, 1)).arrow_inserts
    assert Dialect.for_server((23, 8, 1)).arrow_inserts
    assert MODERN.arrow_inserts


def rows_with_unicode() -> list[dict[str, Any]]:
    """The every-type rows plus rows of unicode, empty and blank text in every text column."""
    rows = every_type_rows(MODERN)
    base = rows[1]
    extra = []
    for k, text in enumerate(UNICODE):
        extra.append(
            base
            | {
                "tenant_id": text,
                "id": 1_000 + k,
                "s": text,
                "s_null": text,
                "e": text,
                "e_null": text,
                "u": str(uuid.UUID(int=k + 1)),
                "t": dt.datetime(2026, 4, 15, 10, 29, 55, 100_000 + k, tzinfo=dt.UTC),
                "d_wide": Decimal("0.0000000001") * (k + 1),
            }
        )
    return rows + extra


async def write_both(
    arrow_backend: HttpBackend,
    text_backend: HttpBackend,
    chdb_front: ChdbOverHttp,
    database: str,
    name: str,
    table: pa.Table,
) -> tuple[str, str]:
    """``table`` into ``<name>_arrow`` as ArrowStream and ``<name>_text`` as TabSeparated."""
    catalog = catalog_in_database(EVERY_TYPE, database)
    dialect = await arrow_backend.dialect()
    assert dialect.arrow_inserts, "the chDB front reports a modern version"
    names = []
    for backend, side, fmt in (
        (arrow_backend, "arrow", "ArrowStream"),
        (text_backend, "text", "TabSeparated"),
    ):
        model = dataclasses.replace(EVERY_MODEL, table=f"{name}_{side}")
        await backend.command(replica_table_ddl(catalog, model, dialect=dialect))
        before = len(chdb_front.requests)
        assert await backend.insert_arrow(database, model.table, table) == table.num_rows
        sent = [r["query"] for r in chdb_front.requests[before:] if "query" in r]
        assert len(sent) == 1
        assert sent[0].endswith(f"FORMAT {fmt}"), sent[0]
        names.append(model.table)
    return names[0], names[1]


async def test_arrow_and_text_inserts_write_the_same_rows(
    arrow_backend: HttpBackend,
    text_backend: HttpBackend,
    chdb_front: ChdbOverHttp,
    embedded_backend: EmbeddedBackend,
    database: str,
) -> None:
    rows = rows_with_unicode()
    arrow_table, text_table = await write_both(
        arrow_backend,
        text_backend,
        chdb_front,
        database,
        "every",
        arrow_rows(EVERY_MODEL, rows),
    )
    specs = {**EVERY_MODEL.fields}
    read: dict[str, list[dict[str, Any]]] = {}
    for table in (arrow_table, text_table):
        sql = f"SELECT * FROM `{database}`.`{table}` ORDER BY id"
        over_http = await arrow_backend.query_rows(sql)
        from_engine = await embedded_backend.query_rows(sql)
        assert len(over_http) == len(from_engine) == len(rows)
        for want, have in zip(rows, over_http, strict=True):
            for name, value in want.items():
                expected = expected_value(specs.get(name), value, MODERN)
                if name == "_is_deleted":
                    expected = int(value)
                assert same(have[name], expected), (table, name, want["id"], have[name], expected)
        read[table] = from_engine
    # Straight from the engine, as Arrow: the two tables hold the same values of the same types.
    for left, right in zip(read[arrow_table], read[text_table], strict=True):
        assert left.keys() == right.keys()
        for name in left:
            assert same(left[name], right[name]), (name, left["id"], left[name], right[name])


async def test_dictionary_chunked_and_refused_columns_on_the_arrow_path(
    arrow_backend: HttpBackend,
    text_backend: HttpBackend,
    chdb_front: ChdbOverHttp,
    database: str,
) -> None:
    whole = arrow_rows(EVERY_MODEL, rows_with_unicode())
    chunked = pa.concat_tables([whole.slice(0, 5), whole.slice(5, 0), whole.slice(5)])
    index = chunked.column_names.index("e")
    chunked = chunked.set_column(index, "e", chunked.column("e").dictionary_encode())
    arrow_table, text_table = await write_both(
        arrow_backend, text_backend, chdb_front, database, "chunks", chunked
    )
    got = [
        await arrow_backend.query_rows(f"SELECT id, e, s FROM `{database}`.`{table}` ORDER BY id")
        for table in (arrow_table, text_table)
    ]
    assert got[0] == got[1]
    assert [r["e"] for r in got[0]] == whole.column("e").to_pylist()

    def with_column(name: str, values: list[Any], kind: pa.DataType) -> pa.Table:
        good = whole.slice(0, 2)
        return good.set_column(good.column_names.index(name), name, pa.array(values, kind))

    refused = [
        (with_column("s", [None, "x"], pa.string()), "NULLs but its type String is not Nullable"),
        (with_column("d", [Decimal("1.005"), Decimal(1)], pa.decimal128(10, 3)), "data loss"),
        # 17 integer digits: more than Decimal(18, 2) holds (a server would wrap or refuse).
        (with_column("d", [Decimal(10**17), Decimal(1)], pa.decimal128(20, 0)), "precision"),
        (with_column("i", [1.5, 2.5], pa.float64()), "cannot write Arrow double as Int64"),
        (whole.slice(0, 2).append_column("nope", pa.array([1, 2])), "no column 'nope'"),
    ]
    before = len(chdb_front.requests)
    for table, message in refused:
        with pytest.raises(ValueError, match=message):
            await arrow_backend.insert_arrow(database, arrow_table, table)
    assert not [r for r in chdb_front.requests[before:] if "query" in r], "nothing was sent"
