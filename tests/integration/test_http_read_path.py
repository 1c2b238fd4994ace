"""The HTTP backend's read path (``execute``/``stream``) against real servers.

Two servers: the real ClickHouse of the local stack (Debian's 18.16 unless
LOCAL_STACK_CLICKHOUSE_URL names another), and the modern engine (chDB 26.x, the embedded
backend's) behind a small HTTP front that speaks ClickHouse's interface (``ChdbOverHttp``), so the
``ArrowStream`` path, the ``X-ClickHouse-Summary`` figures and the compiler's real SQL run over HTTP
too. 18.16 cannot run the compiler's SQL: tests there use hand-written ``CompiledQuery`` objects in
the SQL it has, and the compiled-query test skips naming what the server lacks (the gate of
``skip_unless_compiled_sql_runs``).

Ground truth is computed independently of the backend: from the rows a test generated (in
Python), from the server's own figures (``system.query_log``, ``system.processes``, the bits of
a float), or from the embedded backend and the reference evaluator for the modern path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
import struct
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from service.backends.base import AnalyticsBackend
from service.backends.dialect import quote_string
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.backends.http.client import ARROW_STREAM_SINCE
from service.backends.http.json_compact import JsonCompactDecoder, json_column
from service.backends.http.results import conform_array
from service.catalog import Catalog, load_catalog
from service.demo.generator import (
    DELETED_COLUMN,
    VERSION_COLUMN,
    DemoDataset,
    current_rows,
    generate_dataset,
)
from service.demo.loader import load_dataset
from service.errors import AnalyticsError, ErrorKind
from service.query.compiler import CompiledQuery, OutputColumn, compile_query
from service.query.request import MetricRequest, QueryRequest
from service.query.values import encode_text_parameter
from service.schema import all_ddl
from service.settings import DEFAULT_CATALOG
from tests.chdb_http import ChdbOverHttp
from tests.conftest import catalog_in_database, unique_database
from tests.integration.conftest import Server
from tests.reference import assert_results_equal, evaluate, result_dicts
from tests.strategies import HOSTILE_STRINGS

pytestmark = pytest.mark.integration

# The read path completes the interface: mypy checks this line.
_: AnalyticsBackend = HttpBackend("http://x")

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Any model: hand-written queries name their own tables, the field is only carried along.
SOME_MODEL = next(iter(load_catalog(DEFAULT_CATALOG).models.values()))


# --- the compiler gate -----------------------------------------------------------------


async def skip_unless_compiled_sql_runs(backend: HttpBackend) -> None:
    """Skip the calling test when the server cannot run the compiler's SQL, naming what it lacks.

    The gate for every test that sends compiled queries to a server (the API suite on the HTTP
    backend): the production minimum, 23.8, has everything; 18.16 lacks most of it.
    """
    gaps = await backend.missing_compiler_features()
    if gaps:
        version = ".".join(map(str, (await backend.dialect()).version))
        pytest.skip(f"ClickHouse {version} lacks what compiled queries need: {', '.join(gaps)}")


# --- helpers ------------------------------------------------------------------------------


def cq(
    sql: str,
    columns: Sequence[tuple[str, str]],
    parameters: Mapping[str, str] | None = None,
    settings: Mapping[str, str] | None = None,
) -> CompiledQuery:
    """A hand-written compiled query; ``columns`` are (alias, logical type) in result order."""
    outputs = tuple(OutputColumn(alias, alias, kind) for alias, kind in columns)
    return CompiledQuery(sql, dict(parameters or {}), outputs, SOME_MODEL, 0, dict(settings or {}))


def qid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def running(backend: HttpBackend, query_id: str) -> int:
    """How many processes of ``query_id`` the server lists (asked with another query)."""
    rows = await backend.query_rows(
        "SELECT count() AS n FROM system.processes WHERE query_id = {q:String}",
        {"q": encode_text_parameter(query_id)},
    )
    return int(rows[0]["n"])


async def wait_until(condition: Any, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{what} within {seconds}s")


async def streamed(
    backend: HttpBackend, query: CompiledQuery, budget: float = 30, query_id: str = ""
) -> pa.Table:
    """The whole result of ``stream``, gathered."""
    query_id = query_id or qid("stream")
    async with backend.stream(query, timeout_seconds=budget, query_id=query_id) as stream:
        batches = [batch async for batch in stream]
    return pa.Table.from_batches(batches) if batches else stream.empty_table()


async def read(
    backend: HttpBackend, query: CompiledQuery, mode: str, budget: float, query_id: str = ""
) -> pa.Table:
    """Run ``query`` through ``execute`` or ``stream`` (``mode``)."""
    query_id = query_id or qid(mode)
    if mode == "execute":
        result = await backend.execute(query, timeout_seconds=budget, query_id=query_id)
        return result.table
    return await streamed(backend, query, budget, query_id)


READ_MODES = ("execute", "stream")


#: A query that runs until something stops it (every block costs a hash of each number).
ENDLESS = cq(
    "SELECT count() AS c0 FROM system.numbers WHERE NOT ignore(sipHash64(number))",
    [("c0", "int")],
)


# --- a table with every value the read path must carry exactly --------------------------------

TENANT = "t'1\\\t"  # a quote, a backslash and a tab: it travels as a bound parameter
OTHER_TENANT = "other"
LABELS = [*(s for s in HOSTILE_STRINGS if len(s) < 40), "", "x" * 300]
ALL_NULL_LABEL = "NULL"  # the group whose `maybe` values are all NULL
FLOATS = [0.5, -0.0, math.nan, math.inf, -math.inf, 1e300, 0.1, 2.5e-308, 123456.789]
ROWS = 600


@dataclass
class Facts:
    database: str
    table: str
    rows: list[dict[str, Any]]  # every inserted row version
    visible: list[dict[str, Any]] = field(default_factory=list)  # what FINAL shows TENANT


def fact_rows(rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for k in range(ROWS):
        label = LABELS[k % len(LABELS)]
        rows.append(
            {
                "tenant": TENANT if k % 5 else OTHER_TENANT,
                "id": k,
                "label": label,
                "i": (
                    [INT64_MIN, INT64_MAX, 0, -1][k % 4]
                    if k % 7 == 0
                    else rng.randint(INT64_MIN, INT64_MAX)
                ),
                "u": UINT64_MAX - k if k % 11 == 0 else rng.randint(0, UINT64_MAX),
                # Sums of a group stay below 2^63, and far above 2^53.
                "i2": rng.randint(2**53, 2**55),
                "amount": Decimal(rng.randint(-(10**27), 10**27)).scaleb(-10),
                "maybe": (
                    None
                    if label == ALL_NULL_LABEL or k % 3 == 0
                    else rng.randint(INT64_MIN // 2, INT64_MAX // 2)
                ),
                "f": FLOATS[k % len(FLOATS)] if k % 2 else rng.uniform(-1e6, 1e6),
                # Day 0 (1970-01-01) prints as 0000-00-00 on 18.16.
                "day": dt.date(1970, 1, 1) + dt.timedelta(days=rng.randint(0, 49_673) if k else 0),
                "at": EPOCH + dt.timedelta(seconds=rng.randint(0, 2**32 - 1) if k else 0),
                "flag": k % 2,
                "deleted": 0,
                "version": 1,
            }
        )
    return rows


def later_versions(rows: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Version 2 of every fourth row: a new label (so it moves group) or a tombstone."""
    updates = []
    for row in rows[::4]:
        update = dict(row, version=2, label=LABELS[(row["id"] * 7 + 3) % len(LABELS)])
        update["deleted"] = int(row["id"] % 8 == 0)
        update["i2"] = rng.randint(2**53, 2**55)
        updates.append(update)
    return updates


def facts_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {
            "tenant": pa.array([r["tenant"] for r in rows], pa.string()),
            "id": pa.array([r["id"] for r in rows], pa.uint64()),
            "label": pa.array([r["label"] for r in rows], pa.string()),
            "i": pa.array([r["i"] for r in rows], pa.int64()),
            "u": pa.array([r["u"] for r in rows], pa.uint64()),
            "i2": pa.array([r["i2"] for r in rows], pa.int64()),
            "amount": pa.array([r["amount"] for r in rows], pa.decimal128(38, 10)),
            "maybe": pa.array([r["maybe"] for r in rows], pa.int64()),
            "f": pa.array([r["f"] for r in rows], pa.float64()),
            "day": pa.array([r["day"] for r in rows], pa.date32()),
            "at": pa.array([r["at"] for r in rows], pa.timestamp("s", tz="UTC")),
            "flag": pa.array([r["flag"] for r in rows], pa.uint8()),
            "deleted": pa.array([r["deleted"] for r in rows], pa.uint8()),
            "version": pa.array([r["version"] for r in rows], pa.uint64()),
        }
    )


@pytest.fixture(scope="module")
async def facts(backend: HttpBackend, database: str) -> Facts:
    table = "facts"
    await backend.command(
        f"CREATE TABLE `{database}`.`{table}` (tenant String, id UInt64, label String, "
        "i Int64, u UInt64, i2 Int64, amount Decimal(38, 10), maybe Nullable(Int64), "
        "f Float64, day Date, at DateTime('UTC'), flag UInt8, deleted UInt8, version UInt64) "
        "ENGINE = ReplacingMergeTree(version) ORDER BY (tenant, id)"
    )
    rng = random.Random(20260415)
    first = fact_rows(rng)
    second = later_versions(first, rng)
    await backend.insert_arrow(database, table, facts_table(first))
    await backend.insert_arrow(database, table, facts_table(second))
    latest: dict[int, dict[str, Any]] = {}
    for row in [*first, *second]:
        if row["id"] not in latest or row["version"] > latest[row["id"]]["version"]:
            latest[row["id"]] = row
    visible = [r for r in latest.values() if r["tenant"] == TENANT and not r["deleted"]]
    return Facts(database, table, [*first, *second], visible)


GROUPED_COLUMNS = [
    ("c0", "string"),
    ("c1", "int"),
    ("c2", "int"),
    ("c3", "int"),
    ("c4", "int"),
    ("c5", "decimal"),
    ("c6", "int"),
    ("c7", "date"),
    ("c8", "timestamp"),
    ("c9", "bool"),
    ("c10", "int"),
]


def grouped_query(
    facts: Facts, limit: int, settings: Mapping[str, str] | None = None
) -> CompiledQuery:
    """Per label: count, sums beyond 2^53, 64-bit extremes, a Decimal(38, 10) sum, NULLs..."""
    return cq(
        "SELECT label AS c0, count() AS c1, sum(i2) AS c2, min(i) AS c3, max(u) AS c4, "
        "sum(amount) AS c5, min(maybe) AS c6, max(day) AS c7, max(at) AS c8, max(flag) AS c9, "
        "count(maybe) AS c10 "
        f"FROM `{facts.database}`.`{facts.table}` AS t FINAL "
        "WHERE t.tenant = {tenant:String} AND t.deleted = 0 "
        "GROUP BY label ORDER BY label LIMIT {limit:UInt64}",
        GROUPED_COLUMNS,
        {"tenant": encode_text_parameter(TENANT), "limit": str(limit)},
        settings,
    )


def expected_groups(facts: Facts) -> list[dict[str, Any]]:
    """What ``grouped_query`` must return, computed from the generated rows."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in facts.visible:
        groups.setdefault(row["label"], []).append(row)
    expected = []
    # ClickHouse orders strings by their bytes.
    for label in sorted(groups, key=lambda text: text.encode()):
        members = groups[label]
        present = [r["maybe"] for r in members if r["maybe"] is not None]
        expected.append(
            {
                "c0": label,
                "c1": len(members),
                "c2": sum(r["i2"] for r in members),
                "c3": min(r["i"] for r in members),
                "c4": max(r["u"] for r in members),
                "c5": sum((r["amount"] for r in members), Decimal(0)),
                "c6": min(present) if present else None,
                "c7": max(r["day"] for r in members),
                "c8": max(r["at"] for r in members),
                "c9": bool(max(r["flag"] for r in members)),
                "c10": len(present),
            }
        )
    return expected


def assert_exact(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Row by row, key by key: equal values of the same Python type (decimals at their scale)."""
    assert len(actual) == len(expected)
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert list(got) == list(want), index
        for key, value in want.items():
            have = got[key]
            assert type(have) is type(value), (index, key, have, value)
            assert have == value, (index, key, have, value)
            if isinstance(value, Decimal):
                assert have.as_tuple().exponent == -10, (index, key, have)


# --- exact results on the real server ---------------------------------------------------------


async def test_grouped_results_are_exact(backend: HttpBackend, facts: Facts) -> None:
    expected = expected_groups(facts)
    assert any(row["c6"] is None for row in expected)  # a group of NULLs only
    assert any(abs(row["c2"]) > 2**53 for row in expected)
    query = grouped_query(facts, 1000)
    result = await backend.execute(query, timeout_seconds=30, query_id=qid("grouped"))
    assert result.table.column_names == [alias for alias, _ in GROUPED_COLUMNS]
    types = dict(zip(result.table.column_names, result.table.schema.types, strict=True))
    assert types["c0"] == pa.string()
    assert types["c1"] == pa.uint64()
    assert types["c2"] == pa.int64()
    assert types["c4"] == pa.uint64()
    assert types["c5"] == pa.decimal128(38, 10)
    assert types["c7"] == pa.date32()
    assert types["c8"] == pa.timestamp("s", tz="UTC")
    assert types["c9"] == pa.bool_()
    assert_exact(result.table.to_pylist(), expected)

    # The stream carries the same rows, and LIMIT (a bound parameter) cuts the groups.
    assert (await streamed(backend, query)).to_pylist() == result.table.to_pylist()
    first_three = await backend.execute(
        grouped_query(facts, 3), timeout_seconds=30, query_id=qid("limit")
    )
    assert_exact(first_three.table.to_pylist(), expected[:3])


async def test_floats_come_back_bit_for_bit(backend: HttpBackend, facts: Facts) -> None:
    query = cq(
        # reinterpretAsString: the double's little-endian bytes, trailing zero bytes dropped
        # (18.16 has no reinterpretAsUInt64 for floats).
        "SELECT id AS c0, any(f) AS c1, hex(reinterpretAsString(any(f))) AS c2 "
        f"FROM `{facts.database}`.`{facts.table}` AS t FINAL "
        "WHERE t.tenant = {tenant:String} GROUP BY id ORDER BY id",
        [("c0", "int"), ("c1", "float"), ("c2", "string")],
        {"tenant": encode_text_parameter(TENANT)},
    )
    result = await backend.execute(query, timeout_seconds=30, query_id=qid("floats"))
    assert result.table.schema.field("c1").type == pa.float64()
    rows = result.table.to_pylist()
    inserted = {r["id"]: r["f"] for r in facts.rows if r["version"] == 1}
    assert len(rows) == sum(1 for r in facts.rows if r["version"] == 1 and r["tenant"] == TENANT)
    for row in rows:
        # The server's own bytes of the value against the decoded double's.
        assert struct.pack("<d", row["c1"]).rstrip(b"\0") == bytes.fromhex(row["c2"]), row
        sent = inserted[row["c0"]]
        if math.isnan(sent) or math.isinf(sent) or sent == 0:
            # NaN, the infinities and the sign of zero survive; 18.16's text parser rounds
            # some other doubles on insert (see dialect.py), so those are compared by bits only.
            assert math.isnan(row["c1"]) == math.isnan(sent)
            assert math.isinf(row["c1"]) == math.isinf(sent)
            assert math.copysign(1, row["c1"]) == math.copysign(1, sent) or math.isnan(sent)


async def test_empty_result_is_typed(backend: HttpBackend, facts: Facts) -> None:
    query = grouped_query(facts, 10)
    query = cq(
        query.sql.replace("t.deleted = 0", "t.deleted = 7"),
        GROUPED_COLUMNS,
        query.parameters,
    )
    result = await backend.execute(query, timeout_seconds=30, query_id=qid("empty"))
    assert result.table.num_rows == 0
    assert result.table.column_names == [alias for alias, _ in GROUPED_COLUMNS]
    assert result.table.schema.field("c5").type == pa.decimal128(38, 10)
    assert result.table.schema.field("c9").type == pa.bool_()
    assert (await streamed(backend, query)).num_rows == 0


async def test_settings_apply_and_unknown_ones_are_skipped(backend: HttpBackend) -> None:
    known = await backend.server_settings()
    version = (await backend.dialect()).version
    if version[:2] == (18, 16):
        assert "enable_extended_results_for_datetime_functions" not in known
    rows = cq("SELECT number AS c0 FROM system.numbers LIMIT 100", [("c0", "int")])
    # A quoted (SQL literal) setting value reaches the server as its text: 'break' stops at
    # the limit where the default 'throw' fails the query.
    limited = {"max_result_rows": "10", "max_block_size": "10"}
    with pytest.raises(AnalyticsError) as caught:
        await backend.execute(
            cq(rows.sql, [("c0", "int")], settings=limited), timeout_seconds=10, query_id=qid("s")
        )
    assert caught.value.kind is ErrorKind.INTERNAL
    broken = await backend.execute(
        cq(
            rows.sql,
            [("c0", "int")],
            settings={
                **limited,
                "result_overflow_mode": "'break'",
                "enable_extended_results_for_datetime_functions": "1",
                "no_such_setting_anywhere": "1",
            },
        ),
        timeout_seconds=10,
        query_id=qid("settings"),
    )
    assert 10 <= broken.table.num_rows < 100
    # The safety settings win over compiled ones.
    with pytest.raises(AnalyticsError) as caught:
        await backend.execute(
            cq(
                "CREATE TABLE default.nope (k UInt8) ENGINE = Memory",
                [("c0", "int")],
                settings={"readonly": "0"},
            ),
            timeout_seconds=10,
            query_id=qid("readonly"),
        )
    assert caught.value.metadata["engine_code"] == "164"  # READONLY


# --- the server's figures -----------------------------------------------------------------


async def test_rows_scanned_is_the_servers_read_rows(backend: HttpBackend, database: str) -> None:
    size = 100_000
    await backend.command(
        f"CREATE TABLE `{database}`.scan (k UInt64) ENGINE = MergeTree ORDER BY k"
    )
    await backend.command(f"INSERT INTO `{database}`.scan SELECT number FROM numbers({size})")
    full_scan = cq(
        f"SELECT count() AS c0 FROM `{database}`.scan WHERE NOT ignore(k)", [("c0", "int")]
    )
    result = await backend.execute(full_scan, timeout_seconds=30, query_id=qid("scan"))
    assert result.table.to_pylist() == [{"c0": size}]
    assert result.stats.rows_scanned == size
    assert result.stats.elapsed_ms > 0
    async with backend.stream(full_scan, timeout_seconds=30, query_id=qid("scan")) as stream:
        assert [batch.to_pylist() async for batch in stream] == [[{"c0": size}]]
    assert stream.stats.rows_scanned == size
    assert stream.stats.elapsed_ms > 0


async def test_rows_scanned_matches_the_query_log(backend: HttpBackend, facts: Facts) -> None:
    query_id = qid("logged")
    # log_queries travels as a compiled setting: the log entry also shows settings apply.
    result = await backend.execute(
        grouped_query(facts, 1000, {"log_queries": "1"}), timeout_seconds=30, query_id=query_id
    )
    assert result.stats.rows_scanned > 0
    logged: list[dict[str, Any]] = []
    # The server logs the query's end just after it has answered: flush until the entry is in.
    for _ in range(50):
        await backend.command("SYSTEM FLUSH LOGS")
        log_table = await backend.query_rows(
            "SELECT count() AS n FROM system.tables "
            "WHERE database = 'system' AND name = 'query_log'"
        )
        if not log_table[0]["n"]:
            pytest.skip("this server keeps no system.query_log (no <query_log> in its config)")
        logged = await backend.query_rows(
            "SELECT read_rows FROM system.query_log "
            "WHERE query_id = {q:String} AND toUInt8(type) = 2",  # QueryFinish (UInt8 on 18.16)
            {"q": encode_text_parameter(query_id)},
        )
        if logged:
            break
        await asyncio.sleep(0.1)
    assert logged == [{"read_rows": result.stats.rows_scanned}]


# --- time limits, cancels, kills --------------------------------------------------------------


async def test_a_slow_query_times_out_on_the_server(backend: HttpBackend) -> None:
    for mode in READ_MODES:
        query_id = qid(f"slow-{mode}")
        started = time.monotonic()
        with pytest.raises(AnalyticsError) as caught:
            await read(backend, ENDLESS, mode, 0.5, query_id)
        assert caught.value.kind is ErrorKind.TIMEOUT
        # 18.16 has whole seconds only: 0.5 s runs as 1 s (rounded up, never 0 = no limit).
        assert time.monotonic() - started < 5
        assert await running(backend, query_id) == 0


async def test_a_cancelled_stream_kills_its_query(backend: HttpBackend) -> None:
    query_id = qid("cancelled")
    task = asyncio.create_task(streamed(backend, ENDLESS, 60, query_id))
    await wait_until(lambda: running(backend, query_id), "the query never started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(
        lambda: _gone(backend, query_id), "the query kept running after the stream was cancelled"
    )


async def test_a_client_deadline_kills_its_query(backend: HttpBackend) -> None:
    """The caller's deadline (a gRPC deadline) passes long before the server's time limit."""
    query_id = qid("deadline")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await backend.execute(ENDLESS, timeout_seconds=60, query_id=query_id)
    await wait_until(lambda: _gone(backend, query_id), "the query kept running after its deadline")


async def _gone(backend: HttpBackend, query_id: str) -> bool:
    return await running(backend, query_id) == 0


async def test_leaving_a_stream_early_leaves_the_pool_clean(backend: HttpBackend) -> None:
    query = cq(
        "SELECT number AS c0, toString(number) AS c1 FROM system.numbers LIMIT 300000",
        [("c0", "int"), ("c1", "string")],
    )
    for _ in range(3):
        async with backend.stream(query, timeout_seconds=30, query_id=qid("early")) as stream:
            async for batch in stream:
                assert batch.num_rows
                break
        assert not stream.complete
    # Connections that had the rest of a body in flight were dropped, not reused.
    answers = await asyncio.gather(
        *(
            backend.execute(
                cq("SELECT {n:UInt64} AS c0", [("c0", "int")], {"n": str(n)}),
                timeout_seconds=10,
                query_id=qid("after"),
            )
            for n in range(12)
        )
    )
    assert [a.table.to_pylist() for a in answers] == [[{"c0": n}] for n in range(12)]


@pytest.mark.slow
async def test_a_million_rows_stream_in_bounded_memory(backend: HttpBackend) -> None:
    count = 1_000_000
    query = cq(
        f"SELECT number AS c0, concat('row-', toString(number)) AS c1 FROM numbers({count})",
        [("c0", "int"), ("c1", "string")],
    )
    rows = total_bytes = checksum = arrow_peak = 0
    arrow_base = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        async with backend.stream(query, timeout_seconds=120, query_id=qid("million")) as stream:
            async for batch in stream:
                rows += batch.num_rows
                total_bytes += batch.nbytes
                checksum += pc.sum(batch.column(0)).as_py()
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_base)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == count
    assert checksum == count * (count - 1) // 2
    assert stream.stats.rows_scanned >= count
    # The result is about 20 MB as Arrow; the stream never held more than a few batches.
    assert total_bytes > 15_000_000
    assert python_peak < total_bytes / 4, (python_peak, total_bytes)
    assert arrow_peak < total_bytes / 4, (arrow_peak, total_bytes)


# --- errors -------------------------------------------------------------------------------


async def test_missing_table_or_database_is_replica_missing(
    backend: HttpBackend, database: str
) -> None:
    for table, code in ((f"`{database}`.`no_such_table`", "60"), ("`no_such_db`.`t`", "81")):
        query = cq(f"SELECT count() AS c0 FROM {table}", [("c0", "int")])
        for mode in READ_MODES:
            with pytest.raises(AnalyticsError) as caught:
                await read(backend, query, mode, 10)
            error = caught.value
            assert (error.kind, error.reason) == (ErrorKind.UNAVAILABLE, "REPLICA_MISSING")
            assert error.metadata["engine_code"] == code


async def test_other_engine_errors_are_internal_with_the_message(backend: HttpBackend) -> None:
    query_id = qid("broken")
    with pytest.raises(AnalyticsError) as caught:
        await backend.execute(
            cq("SELECT nosuchfunction(1) AS c0", [("c0", "int")]),
            timeout_seconds=10,
            query_id=query_id,
        )
    error = caught.value
    assert error.kind is ErrorKind.INTERNAL
    assert "nosuchfunction" in error.metadata["engine_message"]
    assert error.metadata["engine_code"] == "46"
    assert error.metadata["query_id"] == query_id


async def test_unreachable_server_is_unavailable() -> None:
    nobody = HttpBackend("http://127.0.0.1:9", connect_timeout=2)
    try:
        with pytest.raises(AnalyticsError) as caught:
            await nobody.execute(ENDLESS, timeout_seconds=5, query_id=qid("nobody"))
        assert caught.value.kind is ErrorKind.UNAVAILABLE
    finally:
        await nobody.close()


async def test_stopped_server_is_unavailable_then_recovers(
    backend: HttpBackend, server: Server, facts: Facts
) -> None:
    if server.process is None:
        pytest.skip("needs a server this test started (LOCAL_STACK_CLICKHOUSE_URL is set)")
    query = grouped_query(facts, 1000)
    before = await backend.execute(query, timeout_seconds=30, query_id=qid("before"))
    await asyncio.to_thread(server.process.stop)
    try:
        for mode in READ_MODES:
            with pytest.raises(AnalyticsError) as caught:
                await read(backend, query, mode, 10)
            assert caught.value.kind is ErrorKind.UNAVAILABLE
    finally:
        await asyncio.to_thread(server.process.start)
    after = await backend.execute(query, timeout_seconds=30, query_id=qid("after"))
    assert after.table.equals(before.table)


# --- the modern engine over HTTP -------------------------------------------------------------


@pytest.fixture(scope="module")
async def modern(chdb_front: ChdbOverHttp) -> AsyncIterator[HttpBackend]:
    """The HTTP backend talking to the modern engine."""
    http = HttpBackend(chdb_front.url, pool_size=4)
    yield http
    await http.close()


MODERN_SQL = (
    "SELECT toInt64('-9223372036854775808') + toInt64(number) AS c0, "
    "toUInt64(18446744073709551615) - number AS c1, "
    "CAST(toString(number * 123456789) || '.0123456789' AS Decimal(38, 10)) AS c2, "
    "if(number % 3 = 0, NULL, number) AS c3, "
    "arrayElement([nan, inf, -inf, -0., 0.1, 5e-324], number % 6 + 1) AS c4, "
    "arrayElement({strings}, number % {{n:UInt64}} + 1) AS c5, "
    "toLowCardinality(toString(number % 4)) AS c6, "
    "toDate32('1900-01-01') + number AS c7, "
    "CAST(number % 2 AS Bool) AS c8, "
    "toString(reinterpretAsUUID(MD5(toString(number)))) AS c9, "
    "reinterpretAsUUID(MD5(toString(number))) AS c10 "
    "FROM numbers(20000)"
)
MODERN_COLUMNS = [
    ("c0", "int"),
    ("c1", "int"),
    ("c2", "decimal"),
    ("c3", "int"),
    ("c4", "float"),
    ("c5", "string"),
    ("c6", "string"),
    ("c7", "date"),
    ("c8", "bool"),
    ("c9", "string"),
    ("c10", "string"),  # a UUID column, conformed to its text
]


def modern_query() -> CompiledQuery:
    strings = [s for s in HOSTILE_STRINGS if "\0" not in s]
    literal = "[" + ", ".join(quote_string(s) for s in strings) + "]"
    return cq(MODERN_SQL.format(strings=literal), MODERN_COLUMNS, {"n": str(len(strings))})


def same_rows(left: pa.Table, right: pa.Table) -> None:
    assert left.column_names == right.column_names
    for name in left.column_names:
        got, want = left.column(name).to_pylist(), right.column(name).to_pylist()
        for index, (have, expected) in enumerate(zip(got, want, strict=True)):
            assert type(have) is type(expected), (name, index, have)
            if isinstance(expected, float) and math.isnan(expected):
                assert math.isnan(have), (name, index)
            else:
                assert have == expected, (name, index, have)
                if isinstance(expected, float):
                    assert math.copysign(1, have) == math.copysign(1, expected)


async def test_modern_server_answers_in_arrow_exactly(
    modern: HttpBackend, chdb_front: ChdbOverHttp, embedded_backend: EmbeddedBackend
) -> None:
    assert (await modern.dialect()).version[:2] >= ARROW_STREAM_SINCE
    query = modern_query()
    query_id = qid("modern")
    result = await modern.execute(query, timeout_seconds=30, query_id=query_id)
    assert chdb_front.requests[-1]["default_format"] == "ArrowStream"
    assert chdb_front.requests[-1]["wait_end_of_query"] == "1"
    assert chdb_front.requests[-1]["readonly"] == "2"
    # Ground truth: the same query on the engine directly, through the embedded backend.
    truth = await embedded_backend.execute(query, timeout_seconds=30, query_id=qid("truth"))
    assert result.table.num_rows == 20000
    # The engine's own Arrow has a UUID extension type there; the backend gives its text.
    assert result.table.column("c10").to_pylist() == truth.table.column("c9").to_pylist()
    same_rows(result.table.drop_columns(["c10"]), truth.table.drop_columns(["c10"]))
    # The figures are the server's summary.
    summary = chdb_front.summaries[query_id]
    assert result.stats.rows_scanned == int(summary["read_rows"]) == 20000
    assert result.stats.elapsed_ms == pytest.approx(int(summary["elapsed_ns"]) / 1e6)
    # Streamed, in the old Arrow framing with compressed bodies too, the rows are the same.
    same_rows(await streamed(modern, query), result.table)
    chdb_front.legacy_arrow = True
    try:
        same_rows(await streamed(modern, query), result.table)
    finally:
        chdb_front.legacy_arrow = False


async def test_modern_server_errors_map_like_the_old_one(modern: HttpBackend) -> None:
    with pytest.raises(AnalyticsError) as caught:
        await modern.execute(
            cq("SELECT count() AS c0 FROM nowhere.none", [("c0", "int")]),
            timeout_seconds=10,
            query_id=qid("missing"),
        )
    assert (caught.value.kind, caught.value.reason) == (ErrorKind.UNAVAILABLE, "REPLICA_MISSING")
    with pytest.raises(AnalyticsError) as caught:
        await modern.execute(
            cq("SELECT nosuchfunction(1) AS c0", [("c0", "int")]),
            timeout_seconds=10,
            query_id=qid("broken"),
        )
    assert caught.value.kind is ErrorKind.INTERNAL
    assert caught.value.metadata["engine_code"] == "46"


# --- compiled queries: the gate, and the real thing where a server can run it ----------------


@dataclass
class Loaded:
    backend: HttpBackend
    catalog: Catalog
    dataset: DemoDataset
    #: The engine holding the same data directly, where there is one (the modern path).
    engine: EmbeddedBackend | None = None


DEMO_ROWS = 4_000
DEMO_TENANT = "acme"


async def load_over_http(backend: HttpBackend, catalog: Catalog, dataset: DemoDataset) -> None:
    """The demo dataset into a server, in the layout of the server's dialect."""
    for statement in all_ddl(catalog, dialect=await backend.dialect()):
        await backend.command(statement)
    for model in catalog.models.values():
        data = dataset.tables.get(model.qualified_name)
        if data is not None and data.num_rows:
            columns = [model.tenant_column, *model.fields, VERSION_COLUMN, DELETED_COLUMN]
            await backend.insert_arrow(catalog.database, model.table, data.select(columns))


@pytest.fixture(scope="module", params=["server", "chdb-over-http"])
async def loaded(
    request: pytest.FixtureRequest,
    catalog: Catalog,
    embedded_backend: EmbeddedBackend,
) -> AsyncIterator[Loaded]:
    """The demo dataset on the server of the local stack, or on the modern engine over HTTP."""
    dataset = generate_dataset(catalog, seed=5, rows=DEMO_ROWS)
    mine = catalog_in_database(catalog, unique_database("http_compiled"))
    if request.param == "server":
        http = HttpBackend(request.getfixturevalue("server").url, pool_size=4)
        try:
            await skip_unless_compiled_sql_runs(http)
            await load_over_http(http, mine, dataset)
            yield Loaded(http, mine, dataset)
            await http.command(f"DROP DATABASE IF EXISTS `{mine.database}`")
        finally:
            await http.close()
    else:
        front: ChdbOverHttp = request.getfixturevalue("chdb_front")
        await load_dataset(embedded_backend, mine, dataset)
        http = HttpBackend(front.url, pool_size=4)
        try:
            await skip_unless_compiled_sql_runs(http)
            yield Loaded(http, mine, dataset, embedded_backend)
        finally:
            await http.close()


def q(model: str, metrics: Sequence[tuple[str, ...]] = (), **fields: Any) -> QueryRequest:
    return QueryRequest(
        model=model, metrics=tuple(MetricRequest(*metric) for metric in metrics), **fields
    )


COMPILED_REQUESTS = [
    # DESIGN.md section 5's example: day buckets, filters, several metrics.
    q(
        "deals",
        [("count",), ("avg", "amount")],
        aggregate="sum",
        field="amount",
        group_by="created_at",
        group_by_interval="day",
        filters={"stage": "eq.closed_won", "deleted_at": "is.null"},
        order="created_at.asc",
        limit=100,
    ),
    q(
        "deals",
        [("count",), ("max", "created_at"), ("p95", "probability"), ("min", "expected_close_date")],
        group_by="stage",
        order="stage.asc",
    ),
    q(
        "contacts",
        [("count_distinct", "country"), ("sum", "lifetime_value"), ("max", "score")],
        group_by="status",
        filters={"email": "ilike.*a*"},
        time_zone="Asia/Kolkata",
    ),
]


@pytest.mark.parametrize("request_", COMPILED_REQUESTS, ids=["design", "stages", "contacts"])
async def test_compiled_queries_over_http(loaded: Loaded, request_: QueryRequest) -> None:
    compiled = compile_query(request_, loaded.catalog, DEMO_TENANT)
    result = await loaded.backend.execute(compiled, timeout_seconds=60, query_id=qid("compiled"))
    expected = evaluate(
        request_,
        compiled.model,
        DEMO_TENANT,
        current_rows(loaded.dataset, compiled.model.qualified_name),
    )
    assert_results_equal(result_dicts(result.table, compiled.columns), expected)
    assert result.stats.rows_scanned > 0
    streamed_table = await streamed(loaded.backend, compiled, 60)
    assert streamed_table.to_pylist() == result.table.to_pylist()


async def test_last_sync_at_of_the_modern_layout(loaded: Loaded) -> None:
    """``DateTime64(6, 'UTC')`` state rows (the legacy Int64 layout: test_http_backend.py)."""
    if loaded.engine is None:
        pytest.skip("compares with the engine that holds the same data (the modern path)")
    for model in loaded.catalog.models.values():
        moment = await loaded.backend.last_sync_at(loaded.catalog.database, model.table)
        assert moment is not None
        assert moment.tzinfo is dt.UTC
        assert moment == await loaded.engine.last_sync_at(loaded.catalog.database, model.table)
    assert await loaded.backend.last_sync_at(loaded.catalog.database, "no_such_table") is None


async def test_compiler_gate_names_the_missing_features(backend: HttpBackend) -> None:
    gaps = await backend.missing_compiler_features()
    version = (await backend.dialect()).version
    if version[:2] == (18, 16):
        assert {"DateTime64", "Date32", "Bool", "quantileExactInclusive"} <= set(gaps)
    if version[:2] >= (23, 8):
        assert gaps == []


# --- decoding details (no server) -------------------------------------------------------------

JSON_COMPACT = b"""{
\t"meta":
\t[
\t\t{
\t\t\t"name": "c0",
\t\t\t"type": "Nullable(Int64)"
\t\t}
\t],

\t"data":
\t[
\t\t["-9223372036854775808"],
\t\t[null],
\t\t["9223372036854775807"]
\t],

\t"rows": 3,

\t"statistics":
\t{
\t\t"elapsed": 0.5,
\t\t"rows_read": 7,
\t\t"bytes_read": 56
\t}
}
"""


def test_json_compact_decoder_reads_any_split_of_lines() -> None:
    lines = JSON_COMPACT.split(b"\n")
    for cut in range(len(lines)):
        decoder = JsonCompactDecoder("UTC")
        batches = decoder.feed(lines[:cut]) + decoder.feed(lines[cut:]) + decoder.finish()
        table = pa.Table.from_batches(batches)
        assert table.to_pylist() == [{"c0": INT64_MIN}, {"c0": None}, {"c0": INT64_MAX}]
        assert decoder.statistics == {"elapsed": 0.5, "rows_read": 7, "bytes_read": 56}


def test_json_compact_decoder_failures() -> None:
    # A body cut short by the server's exception (a server answering without
    # wait_end_of_query): the exception is the error.
    end = JSON_COMPACT.index(b"\t\t[null]")
    timed_out = JSON_COMPACT[:end] + (
        b"Code: 159, e.displayText() = DB::Exception: Timeout exceeded: elapsed 2 seconds, "
        b"maximum: 1, e.what() = DB::Exception\n"
    )
    decoder = JsonCompactDecoder("UTC", 1.0)
    decoder.feed(timed_out.split(b"\n"))
    with pytest.raises(AnalyticsError) as caught:
        decoder.finish()
    assert caught.value.kind is ErrorKind.TIMEOUT
    # A body that simply stops, or announces more rows than it has.
    decoder = JsonCompactDecoder("UTC")
    decoder.feed(JSON_COMPACT[:end].split(b"\n"))
    with pytest.raises(ValueError, match="ends early"):
        decoder.finish()
    decoder = JsonCompactDecoder("UTC")
    decoder.feed(JSON_COMPACT.replace(b'"rows": 3', b'"rows": 4').split(b"\n"))
    with pytest.raises(ValueError, match="announced 4 rows"):
        decoder.finish()


def test_json_columns_by_declared_type() -> None:
    utc = dt.UTC
    cases: list[tuple[str, list[Any], pa.DataType, list[Any] | None]] = [
        (
            "Nullable(DateTime('Europe/Moscow'))",
            ["0000-00-00 00:00:00", "2020-01-01 03:00:00", None],
            pa.timestamp("s", tz="UTC"),
            [EPOCH, dt.datetime(2020, 1, 1, tzinfo=utc), None],
        ),
        (
            "DateTime64(3, 'UTC')",
            ["1901-12-13 20:45:52.654"],
            pa.timestamp("ms", tz="UTC"),
            [dt.datetime(1901, 12, 13, 20, 45, 52, 654000, tzinfo=utc)],
        ),
        (
            "Date",
            ["0000-00-00", "2105-12-31"],
            pa.date32(),
            [dt.date(1970, 1, 1), dt.date(2105, 12, 31)],
        ),
        ("Decimal32(2)", ["-1.50", "3"], pa.decimal128(9, 2), [Decimal("-1.50"), Decimal("3.00")]),
        ("Decimal(76, 3)", ["1.5"], pa.decimal256(76, 3), [Decimal("1.500")]),
        ("Float32", ["nan", "-inf", "0.1"], pa.float32(), None),
        ("UInt64", ["18446744073709551615"], pa.uint64(), [UINT64_MAX]),
        ("LowCardinality(Nullable(String))", ["a\tb", None], pa.string(), ["a\tb", None]),
        ("UUID", ["123e4567-e89b-12d3-a456-426614174000"], pa.string(), None),
        ("Array(UInt8)", [["1", "2"]], pa.string(), ['["1", "2"]']),
        ("Nullable(Nothing)", [None], pa.null(), [None]),
        ("String", ["bad \udcff byte"], pa.string(), None),
    ]
    for declared, values, arrow_type, expected in cases:
        array = json_column(values, declared, "UTC")
        assert array.type == arrow_type, declared
        if expected is not None:
            assert array.to_pylist() == expected, declared
    raw = json_column(["bad \udcff byte"], "String", "UTC").view(pa.binary()).to_pylist()
    assert raw == [b"bad \xff byte"]  # bytes that are not UTF-8 pass through unchanged


def test_conform_evens_out_older_arrow_output() -> None:
    assert conform_array(pa.array([0, 2, None], pa.uint8()), "bool").to_pylist() == [
        False,
        True,
        None,
    ]
    assert conform_array(pa.array([0, 1], pa.uint16()), "date").to_pylist() == [
        dt.date(1970, 1, 1),
        dt.date(1970, 1, 2),
    ]
    assert conform_array(pa.array([1], pa.uint32()), "timestamp").to_pylist() == [
        EPOCH + dt.timedelta(seconds=1)
    ]
    assert conform_array(pa.array([b"\xc3\xa9"], pa.binary()), "string").to_pylist() == ["é"]
    dictionary = pa.array(["x", "y", "x"]).dictionary_encode()
    assert conform_array(dictionary, "string").to_pylist() == ["x", "y", "x"]
    # Everything exact passes unchanged.
    for array in (
        pa.array([INT64_MIN], pa.int64()),
        pa.array([Decimal("1.5")], pa.decimal128(38, 10)),
    ):
        assert conform_array(array, "int").equals(array)
