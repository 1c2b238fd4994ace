"""Compiled queries on the real embedded engine, against independently computed answers.

Two databases hold the catalog's tables. ``full`` has rows of tenant A, tenant B and of tenants
with hostile ids; ``only_a`` has exactly the same rows of tenant A and nothing else. Tenant B's
string values are drawn from the same pool of hostile strings the filters use, so a filter that
escaped the tenant condition would count them. The checks:

* random valid requests (tests/strategies.py) compile and run without any error, and give the
  same answer for tenant A on both databases (rows of other tenants change nothing);
* counts under string filter trees (eq/neq/in/is, not, and/or) equal a three-valued-logic
  evaluation in Python over the rows as written, for tenant A and tenant B;
* hostile tenant ids see exactly their own rows;
* edge values (LIKE escapes, empty aggregates, dates outside 1970-2106) behave; engine failures on
  values the compiler accepts run.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.errors import AnalyticsError, ErrorKind
from service.query.compiler import CompiledQuery, OutputColumn, compile_query
from service.query.request import MetricRequest, QueryRequest
from service.query.values import parse_time_zone
from service.schema import all_ddl
from tests.conftest import catalog_in_database, unique_database
from tests.strategies import (
    CATALOG,
    HOSTILE_STRINGS,
    MODELS,
    Cond,
    Junc,
    Node,
    Shape,
    map_string_values,
    quote_value,
    render_filters,
    shapes,
    to_request,
)

pytestmark = pytest.mark.integration

ENGINE = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TENANT_A = "tenant_a"
TENANT_B = "tenant_b"
#: Tenant ids that have rows of their own.
HOSTILE_TENANTS = (
    "x' OR '1'='1",
    "back\\slash",
    "new\nline",
    "nul\0",
    "%",
    "日本語",
    "tenant_a ",
    "TENANT_A",
)
#: Tenant ids without rows, several of them near misses of real ones.
EMPTY_TENANTS = (
    "*",
    "_",
    "tenant_",
    "tenant_a\0",
    "tenant_a\n",
    "' OR 1=1 --",
    "{p0:String}",
    "tenant_b' OR tenant_id = 'tenant_a",
    "\\N",
    "\\",
)
#: Every string value written into string and enum columns.
STRING_POOL: tuple[str, ...] = (
    "",
    "alice@example.com",
    "bob@example.com",
    "active",
    "won",
    "EUR",
    *sorted({s for s in HOSTILE_STRINGS if len(s) <= 40}),
)
KEYS_PER_TENANT = {TENANT_A: 50, TENANT_B: 40} | dict.fromkeys(HOSTILE_TENANTS, 4)


# --- the data set, written as plain INSERT statements ---------------------------------------


@dataclass(frozen=True)
class Row:
    """One written row version of a model."""

    tenant: str
    values: dict[str, Any]
    version: int
    is_deleted: int


def _value(spec: FieldSpec, rng: random.Random, tenant: str) -> Any:
    if spec.nullable and rng.random() < 0.2:
        return None
    kind = spec.type
    if kind in (FieldType.STRING, FieldType.ENUM):
        if tenant == TENANT_B and rng.random() < 0.7:
            return rng.choice(STRING_POOL[6:])  # B is made of hostile strings
        return rng.choice(STRING_POOL)
    if kind is FieldType.UUID:
        return uuid.UUID(int=rng.getrandbits(128))
    if kind is FieldType.INT:
        return rng.choice([rng.randint(-1000, 1000), rng.randint(-(10**12), 10**12), 0])
    if kind is FieldType.FLOAT:
        return rng.choice([rng.uniform(-1000, 1000), 0.0, -0.5, 1e300, math.nan, math.inf])
    if kind is FieldType.DECIMAL:
        return Decimal(rng.randint(-(10**11), 10**11)).scaleb(-spec.scale)
    if kind is FieldType.BOOL:
        return rng.random() < 0.5
    if kind is FieldType.TIMESTAMP:
        start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
        return start + dt.timedelta(
            seconds=rng.randint(0, 8 * 365 * 86400), microseconds=rng.randint(0, 999_999)
        )
    return dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 4000))


def generate_rows(model: Model, tenant: str, keys: int, seed: int) -> list[Row]:
    """Row versions of ``keys`` primary keys: superseded versions, deletes, soft deletes."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for key in range(1, keys + 1):
        first: dict[str, Any] = {}
        for version in range(1, rng.choice([1, 1, 2, 3]) + 1):
            values = {name: _value(spec, rng, tenant) for name, spec in model.fields.items()}
            values[model.primary_key[0]] = primary_key(model, key)
            if model.events is not None:
                # A resent event is the same event: its day is part of its identity (events
                # dedupe per tenant, event id and UTC day; see the README).
                moment = model.events.timestamp
                values[moment] = first.setdefault(moment, values[moment])
            if model.soft_delete_column:
                if rng.random() < 0.8:
                    values[model.soft_delete_column] = None
                elif values[model.soft_delete_column] is None:
                    values[model.soft_delete_column] = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
            rows.append(Row(tenant, values, version, int(rng.random() < 0.1)))
    return rows


def sql_string(text: str) -> str:
    """A ClickHouse string literal, escaped here rather than by the code under test."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char == "'":
            out.append("\\'")
        elif ord(char) < 0x20 or char == "\x7f":
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "'" + "".join(out) + "'"


def sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else "inf")
    if isinstance(value, dt.datetime):
        return "'" + value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "'"
    if isinstance(value, dt.date | uuid.UUID):
        return f"'{value}'"
    assert isinstance(value, str)
    return sql_string(value)


def insert_statement(catalog: Catalog, model: Model, rows: list[Row]) -> str:
    columns = [model.tenant_column, *model.fields, "_version", "_is_deleted"]
    tuples = []
    for row in rows:
        values = [
            row.tenant,
            *(row.values[name] for name in model.fields),
            row.version,
            row.is_deleted,
        ]
        tuples.append("(" + ", ".join(sql_literal(v) for v in values) + ")")
    # Identifiers from the catalog, values escaped by sql_literal (independent of the service).
    return (
        f"INSERT INTO `{catalog.database}`.`{model.table}` "
        f"({', '.join(f'`{c}`' for c in columns)}) VALUES " + ", ".join(tuples)
    )


def primary_key(model: Model, key: int) -> Any:
    """The ``key``-th primary key value of ``model``: the integer, or a UUID (event models)."""
    if model.fields[model.primary_key[0]].type is FieldType.INT:
        return key
    return str(uuid.UUID(int=key))


def latest(model: Model, rows: Iterable[Row]) -> list[Row]:
    """The highest version of each (tenant, primary key): what FINAL keeps."""
    best: dict[tuple[str, Any], Row] = {}
    for row in rows:
        key = (row.tenant, row.values[model.primary_key[0]])
        if key not in best or row.version > best[key].version:
            best[key] = row
    return list(best.values())


@dataclass
class DataSet:
    """Both databases and the rows written to them."""

    backend: EmbeddedBackend
    full: Catalog
    only_a: Catalog
    rows: dict[str, list[Row]]  # model table -> every row version in `full`

    def live(self, model: Model, tenant: str, *, soft_delete_guard: bool = True) -> list[Row]:
        """Rows a query for ``tenant`` may see: latest, not deleted, not soft-deleted."""
        rows = [
            r
            for r in latest(model, self.rows[model.table])
            if r.tenant == tenant and not r.is_deleted
        ]
        if soft_delete_guard and model.soft_delete_column:
            rows = [r for r in rows if r.values[model.soft_delete_column] is None]
        return rows


async def create(backend: EmbeddedBackend, catalog: Catalog, rows: dict[str, list[Row]]) -> None:
    for statement in all_ddl(catalog):
        await backend.command(statement)
    for model in catalog.models.values():
        by_tenant: dict[str, list[Row]] = {}
        for row in rows[model.table]:
            by_tenant.setdefault(row.tenant, []).append(row)
        for tenant_rows in by_tenant.values():
            await backend.command(insert_statement(catalog, model, tenant_rows))


@pytest_asyncio.fixture(scope="module")
async def dataset(embedded_backend: EmbeddedBackend, catalog: Catalog) -> AsyncIterator[DataSet]:
    full = catalog_in_database(catalog, unique_database("compiler_full"))
    only_a = catalog_in_database(catalog, unique_database("compiler_a"))
    rows: dict[str, list[Row]] = {}
    for index, model in enumerate(catalog.models.values()):
        rows[model.table] = [
            row
            for number, (tenant, keys) in enumerate(KEYS_PER_TENANT.items())
            for row in generate_rows(model, tenant, keys, seed=1000 * index + number)
        ]
    await create(embedded_backend, full, rows)
    await create(
        embedded_backend,
        only_a,
        {
            table: [r for r in table_rows if r.tenant == TENANT_A]
            for table, table_rows in rows.items()
        },
    )
    yield DataSet(embedded_backend, full, only_a, rows)
    for database in (full.database, only_a.database):
        await embedded_backend.command(f"DROP DATABASE IF EXISTS `{database}`")


async def run(backend: EmbeddedBackend, compiled: CompiledQuery) -> list[dict[str, Any]]:
    result = await backend.execute(compiled, timeout_seconds=30, query_id=uuid.uuid4().hex)
    names = {column.alias: column.key for column in compiled.columns}
    return [{names[k]: v for k, v in row.items()} for row in result.table.to_pylist()]


async def count(data: DataSet, catalog: Catalog, tenant: str, **request: Any) -> int:
    compiled = compile_query(QueryRequest(**request), catalog, tenant)
    rows = await run(data.backend, compiled)
    assert len(rows) == 1
    value = rows[0]["count"]
    assert isinstance(value, int)
    return value


def same_value(left: Any, right: Any) -> bool:
    if isinstance(left, float) and isinstance(right, float):
        return math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-6)
    return bool(left == right)


def same_rows(left: list[dict[str, Any]], right: list[dict[str, Any]]) -> bool:
    return len(left) == len(right) and all(
        a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
        for a, b in zip(left, right, strict=True)
    )


# --- the data set as written --------------------------------------------------------------------


async def test_rows_read_back_as_written(dataset: DataSet) -> None:
    model = CATALOG.models[("crm", "contacts")]
    rows = await dataset.backend.query_rows(
        "SELECT tenant_id, id, email, status, lead_source FROM "
        f"`{dataset.full.database}`.`{model.table}` FINAL WHERE _is_deleted = 0"
    )
    got = sorted((r["tenant_id"], r["id"], r["email"], r["status"], r["lead_source"]) for r in rows)
    expected = sorted(
        (r.tenant, r.values["id"], r.values["email"], r.values["status"], r.values["lead_source"])
        for r in latest(model, dataset.rows[model.table])
        if not r.is_deleted
    )
    assert got == expected
    assert {t for t, *_ in got} == set(KEYS_PER_TENANT)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
async def test_every_tenant_counts_exactly_its_rows(dataset: DataSet, model: Model) -> None:
    for tenant in KEYS_PER_TENANT:
        expected = len(dataset.live(model, tenant))
        assert await count(dataset, dataset.full, tenant, model=model.name) == expected, tenant
    for tenant in EMPTY_TENANTS:
        assert await count(dataset, dataset.full, tenant, model=model.name) == 0, tenant
    assert len(dataset.live(model, TENANT_A)) > 10
    assert await count(dataset, dataset.only_a, TENANT_B, model=model.name) == 0


async def test_hostile_tenants_group_exactly_their_rows(dataset: DataSet) -> None:
    model = CATALOG.models[("crm", "contacts")]
    for tenant in (TENANT_A, TENANT_B, *HOSTILE_TENANTS):
        compiled = compile_query(
            QueryRequest(model="contacts", group_by="status", limit=10_000), dataset.full, tenant
        )
        rows = await run(dataset.backend, compiled)
        expected: dict[str, int] = {}
        for row in dataset.live(model, tenant):
            expected[row.values["status"]] = expected.get(row.values["status"], 0) + 1
        assert {r["status"]: r["count"] for r in rows} == expected, tenant
        assert [r["status"] for r in rows] == sorted(expected, key=lambda s: s.encode())


@pytest.mark.parametrize(
    ("model_name", "field"),
    [
        ("contacts", "email"),
        ("contacts", "lead_source"),
        ("deals", "title"),
        ("invoices", "status"),
    ],
)
async def test_string_equality_with_hostile_values(
    dataset: DataSet, model_name: str, field: str
) -> None:
    model = CATALOG.find(model_name)[0]
    for tenant in (TENANT_A, TENANT_B):
        live = dataset.live(model, tenant)
        for value in STRING_POOL:
            quoted = quote_value(value)
            eq = sum(1 for r in live if r.values[field] == value)
            neq = sum(1 for r in live if r.values[field] is not None and r.values[field] != value)
            # a top-level value is literal; inside and/or it is quoted (PostgREST)
            got_eq = await count(
                dataset, dataset.full, tenant, model=model_name, filters={field: f"eq.{value}"}
            )
            got_neq = await count(
                dataset, dataset.full, tenant, model=model_name, filters={field: f"neq.{value}"}
            )
            in_tree = await count(
                dataset,
                dataset.full,
                tenant,
                model=model_name,
                filters={"or": f"({field}.eq.{quoted})"},
            )
            assert (got_eq, got_neq, in_tree) == (eq, neq, eq), (tenant, value)


# --- random requests ------------------------------------------------------------------------


def _check_counts(shape: Shape, rows: list[dict[str, Any]], ceiling: int) -> None:
    counted = [m for m in shape.metrics if m.aggregate in ("count", "count_distinct")]
    keys = [m.alias or ("count" if not m.field else f"{m.aggregate}_{m.field}") for m in counted]
    if shape.aggregate in ("count", "count_distinct", "") and (shape.aggregate or shape.field):
        keys.append(f"{shape.aggregate or 'count'}_{shape.field}" if shape.field else "count")
    for row in rows:
        for key in keys:
            assert 0 <= row[key] <= ceiling, (key, row)


async def _run_both(data: DataSet, shape: Shape, tenant: str = TENANT_A) -> list[dict[str, Any]]:
    request = to_request(shape)
    on_full = compile_query(request, data.full, tenant)
    on_a = compile_query(request, data.only_a, tenant)
    rows_full = await run(data.backend, on_full)
    rows_a = await run(data.backend, on_a)
    assert same_rows(rows_full, rows_a), (request, rows_full, rows_a)
    assert len(rows_full) <= on_full.limit
    if not shape.group_by:
        assert len(rows_full) == (1 if shape.offset == 0 else 0)
    visible = sum(
        1
        for r in latest(shape.model, data.rows[shape.model.table])
        if r.tenant == tenant and not r.is_deleted
    )
    _check_counts(shape, rows_full, visible)
    return rows_full


@ENGINE
@given(shape=shapes(engine=True))
async def test_random_requests_run_and_ignore_other_tenants(dataset: DataSet, shape: Shape) -> None:
    await _run_both(dataset, shape)


@ENGINE
@given(shape=shapes(engine=True), hostile=st.sampled_from(STRING_POOL[6:]))
async def test_hostile_filter_values_cannot_reach_other_tenants(
    dataset: DataSet, shape: Shape, hostile: str
) -> None:
    # Every string filter gets a value that tenant B's rows actually contain.
    await _run_both(dataset, map_string_values(shape, lambda _: hostile))


# --- string filter trees against a Python evaluation -----------------------------------------


def _string_fields(model: Model) -> list[FieldSpec]:
    return [s for s in model.fields.values() if s.type in (FieldType.STRING, FieldType.ENUM)]


@st.composite
def _string_condition(draw: st.DrawFn, model: Model) -> Cond:
    spec = draw(st.sampled_from(_string_fields(model)))
    operator = draw(st.sampled_from(["eq", "neq", "in", "is"]))
    negated = draw(st.booleans())
    if operator == "is":
        return Cond(spec, "is", negated, ("null",))
    size = draw(st.integers(1, 3)) if operator == "in" else 1
    values = draw(st.lists(st.sampled_from(STRING_POOL[1:]), min_size=size, max_size=size))
    return Cond(spec, operator, negated, tuple(values))


def _string_node(model: Model, depth: int) -> st.SearchStrategy[Node]:
    leaf = _string_condition(model)
    if depth == 0:
        return leaf
    junction = st.builds(
        Junc,
        st.sampled_from(["and", "or"]),
        st.booleans(),
        st.lists(_string_node(model, depth - 1), min_size=1, max_size=3).map(tuple),
    )
    return st.one_of(leaf, junction)


@st.composite
def string_filters(draw: st.DrawFn) -> tuple[Model, tuple[tuple[str, Node], ...]]:
    model = draw(st.sampled_from(MODELS))
    conditions = draw(
        st.lists(_string_condition(model), max_size=2, unique_by=lambda c: c.spec.name)
    )
    entries: list[tuple[str, Node]] = [(c.spec.name, c) for c in conditions]
    for key in draw(
        st.lists(st.sampled_from(["and", "or", "not.and", "not.or"]), max_size=2, unique=True)
    ):
        children = draw(st.lists(_string_node(model, 2), min_size=1, max_size=3))
        entries.append(
            (key, Junc(key.removeprefix("not."), key.startswith("not."), tuple(children)))
        )
    return model, tuple(entries)


def evaluate(node: Node, row: Row) -> bool | None:
    """SQL three-valued logic: True, False or None (unknown)."""
    result: bool | None
    if isinstance(node, Cond):
        value = row.values[node.spec.name]
        if node.operator == "is":
            result = value is None
        elif value is None:
            result = None
        elif node.operator == "eq":
            result = value == node.values[0]
        elif node.operator == "neq":
            result = value != node.values[0]
        else:
            result = value in node.values
    else:
        results = [evaluate(child, row) for child in node.children]
        if node.kind == "and":
            result = False if False in results else (None if None in results else True)
        else:
            result = True if True in results else (None if None in results else False)
    if node.negated and result is not None:
        return not result
    return result


@ENGINE
@given(spec=string_filters())
async def test_string_filter_trees_match_python(
    dataset: DataSet, spec: tuple[Model, tuple[tuple[str, Node], ...]]
) -> None:
    model, filters = spec
    request = {"model": model.name, "filters": render_filters(filters)}
    for tenant in (TENANT_A, TENANT_B):
        expected = sum(
            1
            for row in dataset.live(model, tenant)
            if all(evaluate(node, row) is True for _, node in filters)
        )
        assert await count(dataset, dataset.full, tenant, **request) == expected, tenant


# --- time zones ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_every_available_time_zone_runs(dataset: DataSet) -> None:
    failures = []
    for name in sorted(zoneinfo.available_timezones()):
        try:
            zone = parse_time_zone(name)
        except AnalyticsError:
            continue
        compiled = compile_query(
            QueryRequest(
                model="deals",
                group_by="created_at",
                group_by_interval="week",
                time_zone=zone,
                limit=1,
            ),
            dataset.full,
            TENANT_A,
        )
        try:
            await run(dataset.backend, compiled)
        except AnalyticsError as error:
            failures.append((name, error.metadata.get("engine_message", "")[:80]))
    assert failures == []


async def test_interval_buckets_in_a_time_zone(dataset: DataSet) -> None:
    model = CATALOG.models[("crm", "deals")]
    compiled = compile_query(
        QueryRequest(
            model="deals",
            group_by="created_at",
            group_by_interval="month",
            time_zone="Asia/Kolkata",
            limit=10_000,
        ),
        dataset.full,
        TENANT_A,
    )
    rows = await run(dataset.backend, compiled)
    zone = zoneinfo.ZoneInfo("Asia/Kolkata")
    expected: dict[str, int] = {}
    for row in dataset.live(model, TENANT_A):
        local = row.values["created_at"].astimezone(zone)
        bucket = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).isoformat()
        expected[bucket] = expected.get(bucket, 0) + 1
    assert {r["created_at"]: r["count"] for r in rows} == expected
    assert [r["created_at"] for r in rows] == sorted(expected)


# --- edge values: rejected up front, or handled correctly by the engine ------------------------


async def _outcome(
    data: DataSet, request: QueryRequest, tenant: str = TENANT_A
) -> list[dict[str, Any]] | AnalyticsError:
    try:
        compiled = compile_query(request, data.full, tenant)
        return await run(data.backend, compiled)
    except AnalyticsError as error:
        return error


@pytest.mark.parametrize("pattern", ["abc\\", "\\", "*\\", "a\\\\\\"])
async def test_like_pattern_ending_in_an_unpaired_backslash(dataset: DataSet, pattern: str) -> None:
    # The engine cannot read such a pattern; the caller gets a validation error, not INTERNAL.
    for operator in ("like", "ilike", "not.like"):
        filters = {"email": f"{operator}.{pattern}"}
        outcome = await _outcome(dataset, QueryRequest(model="contacts", filters=filters))
        assert isinstance(outcome, AnalyticsError)
        assert outcome.kind is ErrorKind.VALIDATION
        assert outcome.violations[0].field == "filters.email"


async def test_like_patterns_with_backslashes_and_wildcards(dataset: DataSet) -> None:
    model = CATALOG.models[("crm", "contacts")]
    live = dataset.live(model, TENANT_B)
    emails = [r.values["email"] for r in live if r.values["email"] is not None]
    cases: list[tuple[str, Callable[[str], bool]]] = [
        # (pattern as sent, Python predicate for the same LIKE)
        ("\\\\", lambda e: e == "\\"),
        ("*\\\\*", lambda e: "\\" in e),
        ("\\%", lambda e: e == "%"),
        # before any other character a backslash makes it literal, as in PostgreSQL
        ("\\a*", lambda e: e.startswith("a")),
        ("\\_", lambda e: e == "_"),
        ("*'*", lambda e: "'" in e),
        ("*", lambda _: True),
    ]
    for pattern, predicate in cases:
        got = await count(
            dataset,
            dataset.full,
            TENANT_B,
            model="contacts",
            filters={"email": f"like.{pattern}"},
        )
        assert got == sum(1 for e in emails if predicate(e)), pattern
    assert any("\\" in e for e in emails)


async def test_min_max_sum_over_no_rows(dataset: DataSet) -> None:
    request = QueryRequest(
        model="deals",
        metrics=(
            MetricRequest("count"),
            MetricRequest("sum", "amount"),
            MetricRequest("min", "created_at"),
            MetricRequest("max", "amount"),
            MetricRequest("max", "title"),
            MetricRequest("avg", "probability"),
        ),
    )
    rows = await run(dataset.backend, compile_query(request, dataset.full, "nobody"))
    assert rows == [
        {
            "count": 0,
            "sum_amount": None,  # SQL: sum over no rows is NULL
            "min_created_at": None,
            "max_amount": None,
            "max_title": None,
            "avg_probability": None,
        }
    ]


@pytest.mark.parametrize("value", ["99999999999999999", "1e20", "-99999999999999999.99"])
async def test_decimal_in_list_outside_the_column_range(dataset: DataSet, value: str) -> None:
    eq = await _outcome(dataset, QueryRequest(model="deals", filters={"amount": f"eq.{value}"}))
    assert eq == [{"count": 0}]
    outcome = await _outcome(
        dataset, QueryRequest(model="deals", filters={"amount": f"in.({value},1)"})
    )
    if isinstance(outcome, AnalyticsError):
        assert outcome.kind is ErrorKind.VALIDATION, outcome.metadata
    else:
        expected = sum(
            1
            for r in dataset.live(CATALOG.models[("crm", "deals")], TENANT_A)
            if r.values["amount"] == 1
        )
        assert outcome == [{"count": expected}]


async def test_decimal_in_list_inside_the_storage_range(dataset: DataSet) -> None:
    # Wider than Decimal(18,2) but still within its Int64 storage: no error, nothing matches.
    outcome = await _outcome(
        dataset, QueryRequest(model="deals", filters={"amount": "in.(12345678901234567.5,0.001)"})
    )
    assert outcome == [{"count": 0}]


@pytest_asyncio.fixture(scope="module")
async def epoch_tenant(dataset: DataSet) -> str:
    """A tenant whose deals lie before 1970 and after 2106 (the range reaches 1900-2299)."""
    tenant = "tenant_epoch"
    model = CATALOG.models[("crm", "deals")]
    template = dataset.rows[model.table][0].values
    moments = [
        (dt.datetime(1969, 12, 31, 12, tzinfo=dt.UTC), dt.date(1969, 12, 31)),
        (dt.datetime(1950, 3, 15, 8, tzinfo=dt.UTC), dt.date(1950, 3, 15)),
        (dt.datetime(2200, 7, 4, 23, 30, tzinfo=dt.UTC), dt.date(2200, 7, 4)),
    ]
    rows = [
        Row(
            tenant,
            {
                **template,
                "id": i + 1,
                "created_at": moment,
                "expected_close_date": day,
                "deleted_at": None,
            },
            1,
            0,
        )
        for i, (moment, day) in enumerate(moments)
    ]
    await dataset.backend.command(insert_statement(dataset.full, model, rows))
    return tenant


@pytest.mark.parametrize(
    ("group_by", "interval", "time_zone", "buckets"),
    [
        (
            "created_at",
            "day",
            "",
            ["1950-03-15T00:00:00Z", "1969-12-31T00:00:00Z", "2200-07-04T00:00:00Z"],
        ),
        (
            "created_at",
            "month",
            "",
            ["1950-03-01T00:00:00Z", "1969-12-01T00:00:00Z", "2200-07-01T00:00:00Z"],
        ),
        (
            "created_at",
            "week",
            "",
            ["1950-03-13T00:00:00Z", "1969-12-29T00:00:00Z", "2200-06-30T00:00:00Z"],
        ),
        (
            "created_at",
            "day",
            "Asia/Tokyo",
            [
                "1950-03-15T00:00:00+09:00",
                "1969-12-31T00:00:00+09:00",
                "2200-07-05T00:00:00+09:00",
            ],
        ),
        ("expected_close_date", "month", "", ["1950-03-01", "1969-12-01", "2200-07-01"]),
        ("expected_close_date", "year", "", ["1950-01-01", "1969-01-01", "2200-01-01"]),
    ],
)
async def test_interval_buckets_outside_1970_to_2106(
    dataset: DataSet,
    epoch_tenant: str,
    group_by: str,
    interval: str,
    time_zone: str,
    buckets: list[str],
) -> None:
    request = QueryRequest(
        model="deals", group_by=group_by, group_by_interval=interval, time_zone=time_zone
    )
    rows = await _outcome(dataset, request, epoch_tenant)
    assert rows == [{group_by: bucket, "count": 1} for bucket in buckets]


async def test_timestamps_before_1970_are_filtered_correctly(
    dataset: DataSet, epoch_tenant: str
) -> None:
    for text, expected in [
        ("lt.1960-01-01T00:00:00Z", 1),
        ("lt.1970-01-01", 2),
        ("gte.1969-12-31T12:00:00Z", 2),
        ("gt.2106-02-08", 1),
    ]:
        got = await count(
            dataset, dataset.full, epoch_tenant, model="deals", filters={"created_at": text}
        )
        assert got == expected, text


async def test_time_zones_outside_the_iana_list_are_refused(dataset: DataSet) -> None:
    """right/UTC loads in Python but not in the engine: validation refuses it up front."""
    request = QueryRequest(
        model="deals", group_by="created_at", group_by_interval="day", time_zone="right/UTC"
    )
    outcome = await _outcome(dataset, request)
    assert isinstance(outcome, AnalyticsError)
    assert (outcome.kind, outcome.reason) == (ErrorKind.VALIDATION, "INVALID_TIME_ZONE")


async def test_engine_error_does_not_empty_the_next_result(dataset: DataSet) -> None:
    model = CATALOG.models[("crm", "deals")]
    columns = (OutputColumn("count", "c0", "int"),)
    failing = CompiledQuery(
        "SELECT throwIf(number = 3, 'boom') AS c0 FROM numbers(10)", {}, columns, model, 10
    )
    good = CompiledQuery("SELECT count() AS c0 FROM numbers(10)", {}, columns, model, 10)
    for _ in range(3):
        with pytest.raises(AnalyticsError) as info:
            await run(dataset.backend, failing)
        assert info.value.kind is ErrorKind.INTERNAL
        assert await run(dataset.backend, good) == [{"count": 10}]
        assert await dataset.backend.query_rows("SELECT 1 AS one") == [{"one": 1}]


async def test_the_duration_includes_work_before_the_first_block(dataset: DataSet) -> None:
    """A scalar subquery (a funnel's first pass, a trend's ranking) runs before the first
    block: chDB's own figures leave it out, the reported duration must not."""
    model = CATALOG.models[("crm", "deals")]
    columns = (OutputColumn("count", "c0", "int"),)
    slow = CompiledQuery(
        "WITH (SELECT sum(sleepEachRow(0.01)) FROM numbers(30) SETTINGS max_block_size = 1) "
        "AS s SELECT s + 1 AS c0",
        {},
        columns,
        model,
        10,
    )
    result = await dataset.backend.execute(slow, timeout_seconds=30, query_id="slow-scalar")
    assert result.stats.elapsed_ms >= 250


# --- requests built from MetricRequest directly ----------------------------------------------


async def test_every_aggregate_on_every_field(dataset: DataSet) -> None:
    rejected: list[str] = []
    for model in MODELS:
        live = dataset.live(model, TENANT_A)
        for spec in model.fields.values():
            values = [r.values[spec.name] for r in live if r.values[spec.name] is not None]
            for aggregate in ("count", "count_distinct", "sum", "avg", "min", "max", "p50"):
                request = QueryRequest(
                    model=model.name, metrics=(MetricRequest(aggregate, spec.name),)
                )
                try:
                    compiled = compile_query(request, dataset.full, TENANT_A)
                except AnalyticsError as error:
                    rejected.append(error.reason)
                    continue
                rows = await run(dataset.backend, compiled)
                assert len(rows) == 1
                got = rows[0][compiled.columns[0].key]
                if aggregate == "count":
                    assert got == len(values)
                elif aggregate == "count_distinct":
                    assert got == len(set(values))
                elif spec.type in (FieldType.INT, FieldType.DECIMAL) and aggregate in (
                    "sum",
                    "min",
                    "max",
                ):
                    expected = (
                        sum(values)
                        if aggregate == "sum"
                        else (min(values) if aggregate == "min" else max(values))
                    )
                    assert got == expected, (model.name, spec.name, aggregate)
                elif spec.type is FieldType.DATE and aggregate in ("min", "max"):
                    day = min(values) if aggregate == "min" else max(values)
                    assert got == day.isoformat()
    # bool, uuid and the text types cannot be summed, averaged or take percentiles; bools and
    # uuids have no order either.
    assert set(rejected) == {"INVALID_AGGREGATE_FIELD"}
