"""HttpBackend against a real ClickHouse server (Debian's 18.16 unless LOCAL_STACK_CLICKHOUSE_URL
names another one): DDL per dialect, exact Arrow round trips, parameter binding, FINAL semantics,
error mapping, query kills and recovery after a server restart.

Client-side binding is also compared with the modern engine's own server-side parameters on chDB
(the only modern ClickHouse available here), so the two binding paths mean the same thing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import re
import time
import uuid
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.backends.dialect import (
    MODERN,
    Dialect,
    Layout,
    bind_client_side,
    parameter_literal,
    parse_version,
    quote_string,
    unescape_text,
)
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.backends.http.insert_encoding import encode_tsv
from service.catalog import Catalog, FieldType, Model, parse_catalog
from service.catalog import FieldSpec as Spec
from service.errors import AnalyticsError, ErrorKind
from service.query.values import encode_text_parameter, typed_parameter
from service.schema import (
    SYNC_STATE_TABLE,
    all_ddl,
    arrow_type,
    partition_expression,
    replica_table_ddl,
)
from tests.conftest import catalog_in_database
from tests.integration.conftest import Server
from tests.strategies import HOSTILE_STRINGS, hostile_text

pytestmark = pytest.mark.integration

SERVER = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
async def dialect(backend: HttpBackend) -> Dialect:
    return await backend.dialect()


# --- a model with every field type --------------------------------------------------------

EVERY_TYPE = parse_catalog(
    {
        "database": "placeholder",
        "models": [
            {
                "module": "test",
                "name": "every",
                "table": "every_type",
                "fields": {
                    "id": "int",
                    "s": "string",
                    "s_null": "string?",
                    "e": "enum",
                    "e_null": "enum?",
                    "u": "uuid",
                    "u_null": "uuid?",
                    "i": "int",
                    "i_null": "int?",
                    "f": "float",
                    "f_null": "float?",
                    "d": "decimal(18,2)",
                    "d_wide": "decimal(38,10)",
                    "d_null": "decimal(18,2)?",
                    "b": "bool",
                    "b_null": "bool?",
                    "t": "timestamp",
                    "t_null": "timestamp?",
                    "day": "date",
                    "day_null": "date?",
                },
            }
        ],
    }
)
EVERY_MODEL: Model = next(iter(EVERY_TYPE.models.values()))

STRINGS = [s for s in HOSTILE_STRINGS if len(s) < 200] + ["", "x" * 5000, "tab\tnew\nline\\"]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOATS = [0.0, -0.0, 0.1, -1.5, 1e300, -1e-300, 5e-324, 1.7976931348623157e308, math.inf, -math.inf]
DECIMALS_18_2 = [
    Decimal("0.00"),
    Decimal("-0.01"),
    Decimal("9999999999999999.99"),
    Decimal("-9999999999999999.99"),
    Decimal("1234567.89"),
]
DECIMALS_38_10 = [
    Decimal("9999999999999999999999999999.9999999999"),
    Decimal("-9999999999999999999999999999.9999999999"),
    Decimal("0.0000000001"),
    Decimal("-123456789012345678.0123456789"),
]


def timestamps() -> list[dt.datetime]:
    """Microsecond instants, negative epoch offsets included."""
    values = [
        dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2000, 2, 29, 12, 0, 0, 1, tzinfo=dt.UTC),
        dt.datetime(1901, 12, 13, 20, 45, 52, 654321, tzinfo=dt.UTC),
    ]
    # The ends of what both layouts hold (Int64 microseconds hold far more).
    values.append(dt.datetime(1900, 1, 1, tzinfo=dt.UTC))
    values.append(dt.datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC))
    return values


def date_range(dialect: Dialect) -> tuple[dt.date, dt.date]:
    """What a catalog date column holds: Date32 (modern) or Date (legacy)."""
    if dialect.is_modern:
        return dt.date(1900, 1, 1), dt.date(2299, 12, 31)
    low, high = dialect.date_range
    return dt.date.fromisoformat(low), dt.date.fromisoformat(high)


def dates(dialect: Dialect) -> list[dt.date]:
    """Dates the layout's date column holds, its ends included."""
    low, high = date_range(dialect)
    return [low, high, dt.date(2000, 2, 29), dt.date(2026, 4, 15)]


def every_type_rows(dialect: Dialect) -> list[dict[str, Any]]:
    """Rows mixing every hostile value of each type, with a NULL in every third nullable cell."""
    n = max(len(STRINGS), 40)
    stamps, days = timestamps(), dates(dialect)
    ints = [0, 1, -1, INT64_MIN, INT64_MAX, 42]
    rows = []
    for k in range(n):
        nothing = k % 3 == 0
        rows.append(
            {
                "tenant_id": STRINGS[(k + 7) % len(STRINGS)],
                "id": k,
                "s": STRINGS[k % len(STRINGS)],
                "s_null": None if nothing else STRINGS[(k * 5) % len(STRINGS)],
                "e": STRINGS[(k * 3) % len(STRINGS)],
                "e_null": None if nothing else "é",
                "u": str(uuid.UUID(int=(k * 0x9E3779B97F4A7C15) % 2**128)),
                "u_null": None if nothing else str(uuid.UUID(int=2**128 - 1 - k)),
                "i": ints[k % len(ints)],
                "i_null": None if nothing else -ints[k % len(ints)] // 2,
                "f": FLOATS[k % len(FLOATS)] if k != 1 else math.nan,
                "f_null": None if nothing else FLOATS[(k + 3) % len(FLOATS)],
                "d": DECIMALS_18_2[k % len(DECIMALS_18_2)],
                "d_wide": DECIMALS_38_10[k % len(DECIMALS_38_10)],
                "d_null": None if nothing else DECIMALS_18_2[(k + 1) % len(DECIMALS_18_2)],
                "b": k % 2 == 0,
                "b_null": None if nothing else k % 4 == 1,
                "t": stamps[k % len(stamps)],
                "t_null": None if nothing else stamps[(k + 2) % len(stamps)],
                "day": days[k % len(days)],
                "day_null": None if nothing else days[(k + 1) % len(days)],
                "_version": 2**64 - 1 - k,
                "_is_deleted": k % 7 == 6,
            }
        )
    return rows


def arrow_rows(model: Model, rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, pa.Array] = {
        model.tenant_column: pa.array([r[model.tenant_column] for r in rows], pa.string())
    }
    for spec in model.fields.values():
        columns[spec.name] = pa.array([r[spec.name] for r in rows], arrow_type(spec))
    columns["_version"] = pa.array([r["_version"] for r in rows], pa.uint64())
    columns["_is_deleted"] = pa.array([int(r["_is_deleted"]) for r in rows], pa.uint8())
    return pa.table(columns)


def expected_value(spec: Spec | None, value: Any, dialect: Dialect) -> Any:
    """What the server gives back for ``value``, worked out without the backend's code."""
    if value is None or spec is None:
        return value
    if spec.type is FieldType.TIMESTAMP and not dialect.is_modern:
        delta = value - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if spec.type is FieldType.BOOL and not dialect.is_modern:
        return int(value)
    if spec.type is FieldType.UUID:
        return uuid.UUID(value)
    return value


#: ClickHouse 18.16 parses float text inexactly: about one random double in eight reads back
#: one or two units in the last place off (checked bit by bit with reinterpretAsString), and
#: 5e-324 reads as 0. Modern servers parse floats exactly (see the chDB check below).
LEGACY_FLOAT_ULPS = 2


def same(left: Any, right: Any, *, ulps: int = 0) -> bool:
    """Equality that also tells decimal scales, -0.0 from 0.0, and nan from nan."""
    if isinstance(left, float) and isinstance(right, float):
        if math.isnan(left) or math.isnan(right):
            return math.isnan(left) and math.isnan(right)
        if ulps and math.isfinite(right):
            return abs(left - right) <= ulps * math.ulp(right)
        return left == right and math.copysign(1, left) == math.copysign(1, right)
    if isinstance(left, Decimal) or isinstance(right, Decimal):
        return type(left) is type(right) and str(left) == str(right)
    return type(left) is type(right) and left == right


async def create_every_type_table(backend: HttpBackend, database: str, table: str) -> Model:
    model = dataclasses.replace(EVERY_MODEL, table=table)
    catalog = catalog_in_database(EVERY_TYPE, database)
    await backend.command(replica_table_ddl(catalog, model, dialect=await backend.dialect()))
    return model


# --- version, dialect, DDL -----------------------------------------------------------------


async def test_ping_and_version(backend: HttpBackend, server: Server) -> None:
    await backend.ping()
    version = await backend.server_version()
    assert len(version) >= 3
    if server.process is not None:
        assert version == parse_version(server.process.version())
    dialect = await backend.dialect()
    assert dialect.version == version
    assert dialect.layout is (Layout.MODERN if version[:2] >= (23, 2) else Layout.LEGACY)
    assert dialect.server_parameters is (version[:2] >= (19, 11))


# (type, accepted by 18.16.1): what the legacy dialect is built on, re-checked on the server.
LEGACY_EXPERIMENTS = [
    ("Decimal(38, 10)", True),
    ("Nullable(Decimal(18, 2))", True),
    ("UUID", True),
    ("Nullable(String)", True),
    ("DateTime('UTC')", True),
    ("Date", True),
    ("Int64 COMMENT 'x'", True),
    ("LowCardinality(String)", False),
    ("DateTime64(6, 'UTC')", False),
    ("Date32", False),
    ("Bool", False),
]


@pytest.mark.parametrize(("column_type", "accepted"), LEGACY_EXPERIMENTS)
async def test_what_18_16_accepts(
    backend: HttpBackend, database: str, column_type: str, accepted: bool
) -> None:
    if (await backend.dialect()).version[:2] != (18, 16):
        pytest.skip("records what ClickHouse 18.16 accepts; this server is another version")
    table = f"`{database}`.`probe_{uuid.uuid4().hex[:8]}`"
    ddl = f"CREATE TABLE {table} (k UInt64, v {column_type}) ENGINE = Memory"
    if accepted:
        await backend.command(ddl)
    else:
        with pytest.raises(AnalyticsError) as caught:
            await backend.command(ddl)
        assert caught.value.kind is ErrorKind.INTERNAL


async def test_18_16_engine_and_parameter_gaps(backend: HttpBackend, database: str) -> None:
    if (await backend.dialect()).version[:2] != (18, 16):
        pytest.skip("records what ClickHouse 18.16 lacks; this server is another version")
    with pytest.raises(AnalyticsError, match="engine failed"):
        await backend.command(
            f"CREATE TABLE `{database}`.rmt_deleted (k UInt64, v UInt64, d UInt8) "
            "ENGINE = ReplacingMergeTree(v, d) ORDER BY k"
        )
    # Server-side parameters: 18.16 takes param_p for an unknown setting.
    with pytest.raises(AnalyticsError) as caught:
        await backend._post("SELECT {p:String}", {"param_p": "x"}, timeout=5)
    assert caught.value.metadata["engine_code"] == "115"


def test_modern_dialect_renders_the_catalog_types(catalog: Catalog) -> None:
    for model in catalog.models.values():
        for spec in model.fields.values():
            assert MODERN.column_type(spec) == spec.clickhouse_type
    statement = replica_table_ddl(catalog, next(iter(catalog.models.values())))
    assert "ReplacingMergeTree(_version, _is_deleted)" in statement
    assert "LowCardinality(String)" in statement
    assert all_ddl(catalog) == all_ddl(catalog, dialect=MODERN)


async def test_ddl_for_every_catalog_model(
    backend: HttpBackend, database: str, catalog: Catalog, dialect: Dialect
) -> None:
    mine = catalog_in_database(catalog, f"{database}_catalog")
    for _ in range(2):  # idempotent
        for statement in all_ddl(mine, dialect=dialect):
            await backend.command(statement)
    try:
        for model in mine.models.values():
            rows = await backend.query_rows(
                "SELECT name, type FROM system.columns "
                "WHERE database = {db:String} AND table = {t:String}",
                {"db": mine.database, "t": model.table},
            )
            types = {row["name"]: row["type"] for row in rows}
            for spec in model.fields.values():
                assert types[spec.name] == dialect.column_type(spec)
            assert types[model.tenant_column] == dialect.tenant_column_type()
            assert types["_version"] == "UInt64"
            assert types["_is_deleted"] == "UInt8"
            engine = await backend.query_rows(
                "SELECT engine_full FROM system.tables "
                "WHERE database = {db:String} AND name = {t:String}",
                {"db": mine.database, "t": model.table},
            )
            full = engine[0]["engine_full"]
            assert dialect.replacing_engine("_version", "_is_deleted") in full
            if model.events is None:
                assert partition_expression(model).replace("`", "") in full.replace("`", "")
            else:
                # Events: partitioned by month of the event time, deduplicated per tenant,
                # month, day and event id (the sort key FINAL collapses on).
                sort_key = full.replace("`", "").split("ORDER BY ")[1]
                assert sort_key.startswith(f"({model.tenant_column}, ")
                assert f", {model.events.event_id})" in sort_key
                assert model.events.timestamp in full.split("PARTITION BY ")[1]
        state = await backend.query_rows(
            "SELECT name, type FROM system.columns "
            "WHERE database = {db:String} AND table = {t:String}",
            {"db": mine.database, "t": SYNC_STATE_TABLE},
        )
        expected = "DateTime64(6, 'UTC')" if dialect.is_modern else "Int64"
        assert {r["name"]: r["type"] for r in state}["last_sync_at"] == expected
    finally:
        await backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")


# --- inserts ------------------------------------------------------------------------------


async def test_insert_round_trip_of_every_field_type(
    backend: HttpBackend, database: str, dialect: Dialect
) -> None:
    model = await create_every_type_table(backend, database, "every_round_trip")
    rows = every_type_rows(dialect)
    table = arrow_rows(model, rows)
    written = await backend.insert_arrow(database, model.table, table)
    assert written == len(rows)

    got = await backend.query_rows(f"SELECT * FROM `{database}`.`{model.table}` ORDER BY id")
    assert len(got) == len(rows)
    specs: dict[str, Spec | None] = {**model.fields, "tenant_id": None}
    for want, have in zip(rows, got, strict=True):
        for name, value in want.items():
            spec = specs.get(name)
            expected = expected_value(spec, value, dialect)
            if name == "_is_deleted":
                expected = int(value)
            ulps = 0 if dialect.is_modern else LEGACY_FLOAT_ULPS
            assert same(have[name], expected, ulps=ulps), (name, want["id"], have[name], expected)


async def test_modern_encoding_reads_back_exactly_on_the_modern_engine(
    embedded_backend: EmbeddedBackend,
) -> None:
    """The TSV the backend would send a modern server, parsed by chDB with the modern types."""
    model = EVERY_MODEL
    rows = every_type_rows(MODERN)
    types = {model.tenant_column: MODERN.tenant_column_type()}
    types |= {spec.name: MODERN.column_type(spec) for spec in model.fields.values()}
    types |= {"_version": "UInt64", "_is_deleted": "UInt8"}
    payload = encode_tsv(arrow_rows(model, rows), types, MODERN)
    structure = ", ".join(f"`{name}` {kind}" for name, kind in types.items())
    got = await embedded_backend.query_rows(
        f"SELECT * FROM format(TabSeparated, {quote_string(structure)}, {quote_string(payload)})"
    )
    assert len(got) == len(rows)
    for want, have in zip(rows, got, strict=True):
        for name, value in want.items():
            expected = expected_value(model.fields.get(name), value, MODERN)
            if name == "_is_deleted":
                expected = int(value)
            assert same(have[name], expected), (name, want["id"], have[name], expected)


async def test_insert_of_dictionary_and_chunked_columns(
    backend: HttpBackend, database: str, dialect: Dialect
) -> None:
    model = await create_every_type_table(backend, database, "every_chunks")
    rows = every_type_rows(dialect)
    whole = arrow_rows(model, rows)
    chunked = pa.concat_tables([whole.slice(0, 5), whole.slice(5, 0), whole.slice(5)])
    index = chunked.column_names.index("e")
    chunked = chunked.set_column(index, "e", chunked.column("e").dictionary_encode())
    assert await backend.insert_arrow(database, model.table, chunked) == len(rows)
    got = await backend.query_rows(f"SELECT id, e, s FROM `{database}`.`{model.table}` ORDER BY id")
    assert [(r["e"], r["s"]) for r in got] == [(r["e"], r["s"]) for r in rows]


async def test_insert_refuses_values_the_column_cannot_hold(
    backend: HttpBackend, database: str, dialect: Dialect
) -> None:
    model = await create_every_type_table(backend, database, "every_refusals")
    good = arrow_rows(model, every_type_rows(dialect)[:2])

    def with_column(name: str, values: list[Any], kind: pa.DataType) -> pa.Table:
        index = good.column_names.index(name)
        return good.set_column(index, name, pa.array(values, kind))

    too_late = date_range(dialect)[1] + dt.timedelta(days=1)
    # (table, what the error says)
    refused = [
        (with_column("s", [None, "x"], pa.string()), "NULLs but its type String is not Nullable"),
        (with_column("day", [too_late, too_late], pa.date32()), "do not fit"),
        (with_column("d", [Decimal("1.005"), Decimal(1)], pa.decimal128(10, 3)), "data loss"),
        (with_column("d", [1.5, 2.5], pa.float64()), "cannot write Arrow double as Decimal"),
        (good.append_column("nope", pa.array([1, 2])), "no column 'nope'"),
    ]
    for table, message in refused:
        with pytest.raises(ValueError, match=message):
            await backend.insert_arrow(database, model.table, table)
    counted = await backend.query_rows(f"SELECT count() AS n FROM `{database}`.`{model.table}`")
    assert counted == [{"n": 0}]
    assert await backend.insert_arrow(database, model.table, good.slice(0, 0)) == 0


def test_integer_and_datetime_columns_refuse_inexact_values() -> None:
    legacy = Dialect.for_server((18, 16, 1))
    big = pa.table({"x": pa.array([300], pa.int64())})
    with pytest.raises(ValueError, match="do not fit"):
        encode_tsv(big, {"x": "UInt8"}, legacy)
    micro = pa.table({"x": pa.array([1_500_000], pa.timestamp("us", tz="UTC"))})
    with pytest.raises(ValueError, match="lose data"):
        encode_tsv(micro, {"x": "DateTime('UTC')"}, legacy)
    assert encode_tsv(micro, {"x": "Int64"}, legacy) == b"1500000\n"
    assert encode_tsv(micro, {"x": "DateTime64(6, 'UTC')"}, MODERN) == (
        b"1970-01-01 00:00:01.500000\n"
    )
    assert encode_tsv(micro, {"x": "DateTime64(3, 'UTC')"}, MODERN) == (
        b"1970-01-01 00:00:01.500\n"
    )


async def test_same_key_versions_in_one_insert_and_tombstones_under_final(
    backend: HttpBackend, database: str, dialect: Dialect
) -> None:
    model = await create_every_type_table(backend, database, "every_final")
    base = every_type_rows(dialect)[0] | {"tenant_id": "t'1", "_is_deleted": False}

    def version(key: int, v: int, text: str, deleted: bool = False) -> dict[str, Any]:
        return base | {"id": key, "_version": v, "s": text, "_is_deleted": deleted}

    # Key 1: two versions in one insert and a third later; key 2: alive then a tombstone;
    # key 3: a tombstone that arrives before (a lower version than) the live row.
    table = f"`{database}`.`{model.table}`"
    await backend.insert_arrow(
        database,
        model.table,
        arrow_rows(model, [version(1, 1, "one v1"), version(1, 2, "one v2"), version(2, 1, "two")]),
    )
    # One insert, one part: nothing may have collapsed the two versions of key 1 yet.
    assert await backend.query_rows(f"SELECT count() AS n FROM {table}") == [{"n": 3}]
    await backend.insert_arrow(
        database,
        model.table,
        arrow_rows(
            model,
            [version(1, 3, "one v3"), version(2, 2, "", deleted=True), version(3, 5, "three")],
        ),
    )
    await backend.insert_arrow(
        database, model.table, arrow_rows(model, [version(3, 4, "", deleted=True)])
    )
    visible = await backend.query_rows(
        f"SELECT id, s, _version FROM {table} AS t FINAL "
        "WHERE t.tenant_id = {tenant:String} AND t._is_deleted = 0 ORDER BY id",
        {"tenant": encode_text_parameter("t'1")},
    )
    assert visible == [
        {"id": 1, "s": "one v3", "_version": 3},
        {"id": 3, "s": "three", "_version": 5},
    ]


async def test_last_sync_at(
    backend: HttpBackend, database: str, catalog: Catalog, dialect: Dialect
) -> None:
    mine = catalog_in_database(catalog, f"{database}_sync")
    assert await backend.last_sync_at(mine.database, "crm_deals") is None  # no database
    for statement in all_ddl(mine, dialect=dialect):
        await backend.command(statement)
    try:
        assert await backend.last_sync_at(mine.database, "crm_deals") is None  # no row
        first = dt.datetime(2026, 4, 15, 10, 29, 55, 123456, tzinfo=dt.UTC)
        second = dt.datetime(2026, 4, 15, 10, 29, 56, 654321, tzinfo=dt.UTC)
        stamp = pa.timestamp("us", tz="UTC")
        for moment, updated in ((first, 1), (second, 2)):
            state = pa.table(
                {
                    "table_name": ["crm_deals"],
                    "source": ["cdc"],
                    "last_sync_at": pa.array([moment], stamp),
                    "updated_at": pa.array([EPOCH + dt.timedelta(seconds=updated)], stamp),
                }
            )
            await backend.insert_arrow(mine.database, SYNC_STATE_TABLE, state)
        assert await backend.last_sync_at(mine.database, "crm_deals") == second
        assert await backend.last_sync_at(mine.database, "billing_invoices") is None
    finally:
        await backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")


# --- parameters ---------------------------------------------------------------------------


async def test_hostile_strings_round_trip_through_parameters(backend: HttpBackend) -> None:
    values = [*HOSTILE_STRINGS, "", "'" * 100, "\\" * 101, "{p0:String}{p1:String}"]
    names = [f"p{i}" for i in range(len(values))]
    sql = "SELECT " + ", ".join(
        f"{{{n}:String}} AS v{i}, length({{{n}:String}}) AS n{i}" for i, n in enumerate(names)
    )
    parameters = {n: encode_text_parameter(v) for n, v in zip(names, values, strict=True)}
    [row] = await backend.query_rows(sql, parameters)
    for i, value in enumerate(values):
        assert row[f"v{i}"] == value
        assert row[f"n{i}"] == len(value.encode())


@SERVER
@given(values=st.lists(hostile_text(), min_size=1, max_size=8))
async def test_any_text_round_trips_through_a_string_parameter(
    backend: HttpBackend, values: list[str]
) -> None:
    sql = "SELECT " + ", ".join(f"{{p{i}:String}} AS v{i}" for i in range(len(values)))
    parameters = {f"p{i}": encode_text_parameter(v) for i, v in enumerate(values)}
    [row] = await backend.query_rows(sql, parameters)
    assert [row[f"v{i}"] for i in range(len(values))] == values


async def test_text_beyond_the_parsers_default_cap_round_trips(backend: HttpBackend) -> None:
    """300 KiB of text needing escapes: over the default ``max_query_size`` as a literal."""
    value = "'\\\"\n" * 75_000 + "é" * 1_000
    [row] = await backend.query_rows(
        "SELECT {v:String} AS v, length({v:String}) AS n", {"v": encode_text_parameter(value)}
    )
    assert row == {"v": value, "n": len(value.encode())}


@SERVER
@given(raw=st.binary(max_size=64))
async def test_any_bytes_round_trip_through_a_quoted_literal(
    backend: HttpBackend, raw: bytes
) -> None:
    [row] = await backend.query_rows(f"SELECT hex({quote_string(raw)}) AS h")
    assert row["h"] == raw.hex().upper()


async def test_typed_parameters_and_limit_on_the_server(backend: HttpBackend) -> None:
    rows = await backend.query_rows(
        "SELECT number AS n FROM system.numbers WHERE number >= {low:UInt64} "
        "LIMIT {limit:UInt64} OFFSET {offset:UInt64}",
        {"low": "10", "limit": "3", "offset": "1"},
    )
    assert rows == [{"n": 11}, {"n": 12}, {"n": 13}]
    [row] = await backend.query_rows(
        "SELECT {i:Int64} AS i, {d:Decimal(38, 10)} AS d, {u:UUID} AS u, {f:Float64} AS f, "
        "{day:Date} AS day, {n:Nullable(String)} AS n",
        {
            "i": str(INT64_MIN),
            "d": "-9999999999999999999999999999.9999999999",
            "u": "123e4567-e89b-12d3-a456-426614174000",
            "f": "1e-300",
            "day": "2105-12-31",
            "n": "\\N",
        },
    )
    assert row == {
        "i": INT64_MIN,
        "d": Decimal("-9999999999999999999999999999.9999999999"),
        "u": uuid.UUID("123e4567-e89b-12d3-a456-426614174000"),
        "f": 1e-300,
        "day": dt.date(2105, 12, 31),
        "n": None,
    }


def test_placeholders_inside_literals_identifiers_and_comments_stay() -> None:
    sql = (
        "SELECT '{p:String}', `{p:String}`, \"{p:String}\", 'it''s {p:String}', "
        "'\\' {p:String}' -- {p:String}\n, /* {p:String} */ {p:String} AS `x`"
    )
    bound = bind_client_side(sql, {"p": "v"})
    assert bound == sql.replace("{p:String} AS", "'v' AS")
    with pytest.raises(ValueError, match="no value"):
        bind_client_side("SELECT {q:String}", {"p": "v"})
    with pytest.raises(ValueError, match="Identifier"):
        parameter_literal("Identifier", "t")
    with pytest.raises(ValueError, match="not a UInt64"):
        parameter_literal("UInt64", "1 OR 1")


@given(text=hostile_text())
def test_quoted_literal_never_ends_early(text: str) -> None:
    literal = quote_string(text)
    assert literal[0] == literal[-1] == "'"
    inner = re.sub(r"\\.", "", literal[1:-1], flags=re.DOTALL)
    assert "'" not in inner
    assert not any(ord(c) < 0x20 for c in literal)
    # Binding a placeholder produces exactly this literal and nothing else.
    bound = bind_client_side("SELECT {p:String} AS v", {"p": encode_text_parameter(text)})
    assert bound == f"SELECT {literal} AS v"


@given(text=hostile_text())
def test_unescape_inverts_the_parameter_encoding(text: str) -> None:
    assert unescape_text(encode_text_parameter(text)) == text.encode()


def test_server_side_parameters_on_servers_that_have_them() -> None:
    modern = Dialect.for_server((24, 8, 4, 13))
    sql = "SELECT {p0:String} LIMIT {p1:UInt64}"
    assert modern.bind(sql, {"p0": "a+b\\tc", "p1": "5"}) == (
        sql,
        {"param_p0": "a+b\\tc", "param_p1": "5"},
    )
    legacy = Dialect.for_server((19, 10, 1))
    assert legacy.bind(sql, {"p0": "a+b\\tc", "p1": "5"}) == (
        "SELECT 'a+b\\x09c' LIMIT 5",
        {},
    )
    with pytest.raises(ValueError, match="parameter name"):
        modern.bind(sql, {"p 0": "x"})


# Values the compiler binds, per type: server-side parameters (chDB, modern) and client-side
# literals must mean the same on the same engine.
TYPED_VALUES = [
    *((Spec("s", FieldType.STRING), v) for v in HOSTILE_STRINGS),
    (Spec("u", FieldType.UUID), "123E4567-E89B-12D3-A456-426614174000"),
    (Spec("i", FieldType.INT), str(INT64_MIN)),
    (Spec("i", FieldType.INT), "+0042"),
    (Spec("f", FieldType.FLOAT), "-1.5e-300"),
    (Spec("d", FieldType.DECIMAL, precision=18, scale=2), "-9999999999999999.99"),
    (Spec("d", FieldType.DECIMAL, precision=18, scale=2), "10.005"),
    (Spec("b", FieldType.BOOL), "true"),
    (Spec("t", FieldType.TIMESTAMP), "2026-01-02T03:04:05.123456+02:00"),
    (Spec("t", FieldType.TIMESTAMP), "1901-01-01"),
    (Spec("day", FieldType.DATE), "2299-12-31"),
]


async def test_client_side_binding_means_what_server_side_parameters_mean(
    embedded_backend: EmbeddedBackend,
) -> None:
    for spec, text in TYPED_VALUES:
        kind, value = typed_parameter(spec, text, "value", "UTC")
        sql = f"SELECT toString({{v:{kind}}}) AS s, toTypeName({{v:{kind}}}) AS t"
        server_side = await embedded_backend.query_rows(sql, {"v": value})
        client_side = await embedded_backend.query_rows(bind_client_side(sql, {"v": value}))
        assert client_side == server_side, (spec.type, text)


# --- settings, errors, kills, restarts -----------------------------------------------------


async def test_query_rows_is_read_only(backend: HttpBackend, database: str) -> None:
    with pytest.raises(AnalyticsError) as caught:
        await backend.query_rows(f"CREATE TABLE `{database}`.ro (k UInt8) ENGINE = Memory")
    assert caught.value.kind is ErrorKind.INTERNAL
    assert caught.value.metadata["engine_code"] == "164"  # READONLY


async def test_unknown_table_is_internal_with_the_engine_message(
    backend: HttpBackend, database: str
) -> None:
    with pytest.raises(AnalyticsError) as caught:
        await backend.query_rows(f"SELECT * FROM `{database}`.`no_such_table`")
    error = caught.value
    assert error.kind is ErrorKind.INTERNAL
    assert error.metadata["engine_code"] == "60"
    assert "no_such_table" in error.metadata["engine_message"]
    assert error.metadata["query_id"]


async def test_slow_query_times_out_and_stops(backend: HttpBackend) -> None:
    query_id = f"slow-{uuid.uuid4().hex}"
    started = time.monotonic()
    with pytest.raises(AnalyticsError) as caught:
        await backend.query_rows(
            "SELECT count() FROM system.numbers", timeout_seconds=0.5, query_id=query_id
        )
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert time.monotonic() - started < 5
    assert await running(backend, query_id) == 0


async def test_cancelled_call_kills_its_query(backend: HttpBackend) -> None:
    query_id = f"cancel-{uuid.uuid4().hex}"
    task = asyncio.create_task(
        backend.query_rows("SELECT count() FROM system.numbers", query_id=query_id)
    )
    for _ in range(100):
        if await running(backend, query_id):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the query never started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not await running(backend, query_id):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the query kept running after its caller went away")


async def test_the_pool_serves_more_calls_than_connections(backend: HttpBackend) -> None:
    results = await asyncio.gather(
        *(backend.query_rows("SELECT {n:UInt64} AS n", {"n": str(n)}) for n in range(40))
    )
    assert [r[0]["n"] for r in results] == list(range(40))


async def test_stopped_server_is_unavailable_and_the_pool_recovers(
    backend: HttpBackend, server: Server, database: str
) -> None:
    if server.process is None:
        pytest.skip("needs a server this test started (LOCAL_STACK_CLICKHOUSE_URL is set)")
    await backend.command(
        f"CREATE TABLE `{database}`.kept (k UInt64) ENGINE = MergeTree ORDER BY k"
    )
    await backend.insert_arrow(database, "kept", pa.table({"k": pa.array([7], pa.uint64())}))
    # Fill the pool with kept-alive connections that the stop will break.
    await asyncio.gather(*(backend.ping() for _ in range(4)))
    await asyncio.to_thread(server.process.stop)
    try:
        more = pa.table({"k": pa.array([8], pa.uint64())})
        for call in (
            backend.ping,
            lambda: backend.command("SELECT 1"),
            lambda: backend.insert_arrow(database, "kept", more),
        ):
            with pytest.raises(AnalyticsError) as caught:
                await call()
            assert caught.value.kind is ErrorKind.UNAVAILABLE
            assert caught.value.metadata["engine_message"]
    finally:
        await asyncio.to_thread(server.process.start)
    await backend.ping()
    assert await backend.query_rows(f"SELECT k FROM `{database}`.kept") == [{"k": 7}]


async def running(backend: HttpBackend, query_id: str) -> int:
    rows = await backend.query_rows(
        "SELECT count() AS n FROM system.processes WHERE query_id = {q:String}",
        {"q": encode_text_parameter(query_id)},
    )
    return int(rows[0]["n"])
