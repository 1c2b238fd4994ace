"""Differential test against PostgreSQL: the served API answers what PostgreSQL computes.

GitHub issue 13, item 1. PostgreSQL is the source of truth, so every analytics answer must equal
the same aggregate over the source rows computed by PostgreSQL itself.

1. A PostgreSQL 15 of the local stack gets a database with ``LC_COLLATE 'C'`` (text orders by
   bytes) and ``LC_CTYPE 'C.UTF-8'`` (``lower()`` and ``ILIKE`` fold non-ASCII letters as glibc
   does), holding the source tables of ``tests/parity_catalog.toml`` (every field type, nullable
   variants, a soft-delete column, an ``updated_at`` trigger).
2. Edge-value rows (``tests/pg_parity.py``, deterministic from the seed) are written in two rounds
   while the incremental loader runs into the session's embedded engine: inserts first (some
   rows stale), then updates, soft deletes and hard deletes; each round ends when the replica
   equals the source.
3. Seeded random requests (and the pinned ones below, one per known edge) are answered by
   PostgreSQL through SQL written by ``tests/pg_parity.translate`` from the request, and by the
   service over Query, StreamQuery and REST, each on two servers: one on the embedded engine,
   one on ``HttpBackend`` through ``ChdbOverHttp`` to the same engine. All six answers must equal
   PostgreSQL's (see ``tests/pg_parity.py`` for the contract and the comparison).

Every request runs to the end; a failure lists how many disagree, the first few in full (request
JSON, PostgreSQL SQL, PostgreSQL's rows, each disagreeing surface's rows or error and its first
difference) and the other requests' JSON.

Quick by default: 2000 random requests over 2000 rows, about two minutes on two cores.
Environment variables select more: ``ANALYTICS_PARITY_REQUESTS`` (random requests),
``ANALYTICS_PARITY_ROWS`` (source rows), ``ANALYTICS_PARITY_SEED`` (default 13, for other
requests and rows), and ``ANALYTICS_PARITY_REPORT`` (a file that receives every mismatch in
full). The nightly run::

    ANALYTICS_PARITY_REQUESTS=5000 ANALYTICS_PARITY_ROWS=20000 \\
        .venv/bin/pytest tests/integration/test_pg_parity.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from google.protobuf import json_format

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from cdc_worker.incremental_loader import run_loader
from local_stack import LocalStack
from service.api import convert
from service.api.server import start_server
from service.auth import mint_token
from service.backends.base import AnalyticsBackend
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.catalog import Catalog, Model, load_catalog
from service.errors import AnalyticsError
from service.settings import Settings
from tests.chdb_http import ChdbOverHttp
from tests.conftest import catalog_in_database, unique_database
from tests.integration.conftest import comparable, loader_source_ddl
from tests.pg_parity import (
    QUERY_DEFAULT_LIMIT,
    Answer,
    ModelRows,
    RequestGenerator,
    compare,
    describe,
    generate_dataset,
    ident,
    translate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATALOG_PATH = Path(__file__).parents[1] / "parity_catalog.toml"
REQUESTS = int(os.environ.get("ANALYTICS_PARITY_REQUESTS", "2000"))
ROWS = int(os.environ.get("ANALYTICS_PARITY_ROWS", "2000"))
SEED = int(os.environ.get("ANALYTICS_PARITY_SEED", "13"))
REPORT = os.environ.get("ANALYTICS_PARITY_REPORT", "")
SHOWN = 5
IN_FLIGHT = 4


#: One request per edge the contract pins down, with the tenant that sends it.
PINNED: list[tuple[dict[str, Any], str]] = [
    # Integer sums past 2^63 (seven 1.5e18 per tenant) and decimal sums past 38 digits.
    (
        {
            "model": "events",
            "aggregate": "sum",
            "field": "qty",
            "metrics": [
                {"aggregate": "sum", "field": "qty_opt"},
                {"aggregate": "avg", "field": "qty"},
                {"aggregate": "sum", "field": "wide"},
            ],
        },
        "acme",
    ),
    ({"model": "events", "groupBy": "kind", "aggregate": "sum", "field": "wide"}, "globex"),
    # Lord_Howe moves by 30 minutes: hour buckets around both changes of 2025.
    (
        {
            "model": "events",
            "groupBy": "happened_at",
            "groupByInterval": "hour",
            "timeZone": "Australia/Lord_Howe",
            "filters": {
                "and": "(happened_at.gte.2025-04-05T12:00:00Z,happened_at.lt.2025-04-05T18:00:00Z)"
            },
        },
        "acme",
    ),
    (
        {
            "model": "events",
            "groupBy": "happened_at",
            "groupByInterval": "hour",
            "timeZone": "Australia/Lord_Howe",
            "filters": {
                "and": "(happened_at.gte.2025-10-04T12:00:00Z,happened_at.lt.2025-10-04T18:00:00Z)"
            },
        },
        "globex",
    ),
    # Chatham's 45-minute offset, newest day buckets first.
    (
        {
            "model": "events",
            "groupBy": "happened_at",
            "groupByInterval": "day",
            "timeZone": "Pacific/Chatham",
            "filters": {"happened_at": "gte.2025-09-20T00:00:00Z"},
            "order": "happened_at.desc",
            "limit": 10,
        },
        "initech",
    ),
    # Pre-1970 instants with fractions of a second.
    (
        {
            "model": "events",
            "groupBy": "happened_at",
            "groupByInterval": "minute",
            "filters": {"happened_at": "lt.1970-01-01T00:00:00Z"},
            "order": "happened_at.asc",
        },
        "acme",
    ),
    (
        {
            "model": "events",
            "aggregate": "min",
            "field": "happened_at",
            "metrics": [{"aggregate": "max", "field": "happened_at"}],
            "filters": {"happened_at": "lt.1970-01-01T00:00:00Z"},
        },
        "globex",
    ),
    # -0.0 and 0.0 are one value.
    ({"model": "events", "groupBy": "ratio", "filters": {"ratio": "in.(0,-0.0)"}}, "acme"),
    (
        {
            "model": "events",
            "aggregate": "count_distinct",
            "field": "ratio",
            "filters": {"ratio": "eq.0"},
        },
        "globex",
    ),
    # UUIDs order by their text form.
    ({"model": "events", "groupBy": "ref", "order": "ref.asc"}, "acme"),
    ({"model": "events", "groupBy": "ref_opt", "order": "ref_opt.desc", "limit": 5}, "initech"),
    # A top-level value is literal, quotes included; in lists quotes delimit and escape.
    ({"model": "events", "groupBy": "label", "filters": {"label": 'eq."quoted"'}}, "acme"),
    (
        {
            "model": "events",
            "groupBy": "label",
            "filters": {"label": 'in.("a,b","\\"quoted\\"","C:\\\\temp","(paren)",x)'},
        },
        "globex",
    ),
    # In LIKE a backslash escapes the next character; * and % match any run, _ one character.
    ({"model": "events", "groupBy": "label", "filters": {"label": "like.C:\\\\*"}}, "acme"),
    ({"model": "events", "groupBy": "label", "filters": {"label": "like.*\\\\"}}, "globex"),
    ({"model": "events", "groupBy": "label", "filters": {"label": "like.100\\%"}}, "initech"),
    ({"model": "events", "groupBy": "label", "filters": {"label": "like.a_b"}}, "acme"),
    # ILIKE folds as lower() does in C.UTF-8.
    (
        {
            "model": "events",
            "groupBy": "label",
            "filters": {
                "or": "(label.ilike.istanbul,label.ilike.KELVIN,label.ilike.ǆemal,"
                "label.ilike.ß,label.ilike.σας,label.ilike.ärger)"
            },
        },
        "acme",
    ),
    # Aggregates over no rows: NULL, and count 0.
    (
        {
            "model": "events",
            "aggregate": "sum",
            "field": "qty",
            "metrics": [
                {"aggregate": "sum", "field": "price"},
                {"aggregate": "sum", "field": "ratio"},
                {"aggregate": "avg", "field": "ratio"},
                {"aggregate": "min", "field": "label"},
                {"aggregate": "max", "field": "day"},
                {"aggregate": "p50", "field": "wide"},
                {"aggregate": "count"},
            ],
            "filters": {"id": "lt.0"},
        },
        "acme",
    ),
    # Descending puts NULLs first, ascending last, unless told otherwise.
    ({"model": "events", "groupBy": "label_opt", "order": "label_opt.desc"}, "globex"),
    (
        {"model": "events", "groupBy": "day_opt", "groupByInterval": "year", "order": "day_opt"},
        "initech",
    ),
    (
        {"model": "lines", "groupBy": "ship_day", "order": "ship_day.desc.nullslast", "limit": 3},
        "acme",
    ),
    # Naive timestamps in an overlap and in a gap of the request's zone.
    (
        {
            "model": "events",
            "timeZone": "America/New_York",
            "filters": {"happened_at": "gte.2025-11-02T01:30:00"},
        },
        "acme",
    ),
    (
        {
            "model": "events",
            "timeZone": "Australia/Lord_Howe",
            "filters": {
                "and": "(happened_at.gte.2025-04-06T01:45:00,happened_at.lt.2025-04-06T03:00:00)"
            },
        },
        "globex",
    ),
    (
        {
            "model": "events",
            "timeZone": "Australia/Lord_Howe",
            "filters": {"happened_at": "lt.2025-10-05T02:15:00"},
        },
        "initech",
    ),
    # The README's and/or shape, and soft-deleted rows shown by a filter deep in a tree.
    (
        {
            "model": "events",
            "groupBy": "kind",
            "filters": {"or": "(kind.eq.alpha,and(price.gte.1000,kind_opt.is.null))"},
        },
        "globex",
    ),
    ({"model": "events", "filters": {"or": "(id.lt.0,and(deleted_at.not.is.null))"}}, "acme"),
    # Week buckets of dates start on Monday; quarters in a +05:45 zone.
    (
        {
            "model": "events",
            "groupBy": "day,happened_at",
            "groupByInterval": "week",
            "timeZone": "Asia/Kathmandu",
            "order": "day.desc",
            "limit": 20,
        },
        "initech",
    ),
    (
        {
            "model": "parity.lines",
            "groupBy": "sku,shipped_at",
            "groupByInterval": "quarter",
            "aggregate": "sum",
            "field": "unit_price",
        },
        "globex",
    ),
    # Every row its own group: the default limit and percentiles of one value.
    ({"model": "events", "groupBy": "id", "aggregate": "p90", "field": "qty"}, "acme"),
]


# --- PostgreSQL and the replica ------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_catalog() -> Catalog:
    return catalog_in_database(load_catalog(CATALOG_PATH), unique_database("parity"))


@pytest.fixture(scope="module")
def dataset(parity_catalog: Catalog) -> dict[str, ModelRows]:
    return generate_dataset(parity_catalog, SEED, ROWS)


@pytest.fixture(scope="module")
async def source(
    postgres: LocalStack,
    parity_catalog: Catalog,
    dataset: dict[str, ModelRows],
    embedded_backend: EmbeddedBackend,
) -> AsyncIterator[asyncpg.Pool]:
    """The source database, its rows replicated by the incremental loader; a pool onto it."""
    name = f"parity_{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(
        postgres.postgres.execute,
        f"CREATE DATABASE {name} OWNER analytics TEMPLATE template0 ENCODING 'UTF8' "
        "LC_COLLATE 'C' LC_CTYPE 'C.UTF-8'",
    )
    dsn = postgres.postgres.dsn_for(name)
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=IN_FLIGHT, server_settings={"timezone": "UTC"}
    )
    try:
        assert await pool.fetchval("SHOW standard_conforming_strings") == "on"
        for statement in loader_source_ddl(parity_catalog):
            await pool.execute(statement)
        await replicate(pool, dsn, parity_catalog, dataset, embedded_backend)
        yield pool
    finally:
        await pool.close()


async def replicate(
    pool: asyncpg.Pool,
    dsn: str,
    catalog: Catalog,
    dataset: dict[str, ModelRows],
    backend: EmbeddedBackend,
) -> None:
    """Write the rows in two rounds with the loader running; each ends in an equal replica."""
    for rows in dataset.values():
        changed = set(rows.changed)
        first = [rows.stale(r) if i in changed else r for i, r in enumerate(rows.rows)]
        schema, table = rows.model.source.split(".")
        await pool.copy_records_to_table(
            table,
            schema_name=schema,
            columns=rows.columns,
            records=[tuple(r[c] for c in rows.columns) for r in [*first, *rows.doomed]],
        )
    settings = Settings(
        source_database_url=dsn,
        loader_poll_seconds=0.1,
        loader_lookback_seconds=0.0,
        loader_reconcile_seconds=0.5,
    )
    stop = asyncio.Event()
    loader = asyncio.create_task(run_loader(settings, catalog, backend, stop))
    try:
        await until_replicated(pool, catalog, backend)
        for rows in dataset.values():
            await update_and_delete(pool, rows)
        await until_replicated(pool, catalog, backend)
    finally:
        stop.set()
        await asyncio.wait_for(loader, 30)


async def update_and_delete(pool: asyncpg.Pool, rows: ModelRows) -> None:
    """The second round: stale rows get their final values, doomed rows are deleted."""
    model = rows.model
    keys = [model.tenant_column, *model.primary_key]
    values = [f for f in rows.written_fields if f not in model.primary_key]
    match = " AND ".join(f"{ident(k)} = ${len(values) + i + 1}" for i, k in enumerate(keys))
    assignments = ", ".join(f"{ident(f)} = ${i + 1}" for i, f in enumerate(values))
    await pool.executemany(
        f"UPDATE {model.source} SET {assignments} WHERE {match}",
        [tuple(rows.rows[i][c] for c in [*values, *keys]) for i in rows.changed],
    )
    deleting = " AND ".join(f"{ident(k)} = ${i + 1}" for i, k in enumerate(keys))
    await pool.executemany(
        f"DELETE FROM {model.source} WHERE {deleting}",
        [tuple(r[k] for k in keys) for r in rows.doomed],
    )


async def until_replicated(
    pool: asyncpg.Pool, catalog: Catalog, backend: AnalyticsBackend, within: float = 60.0
) -> None:
    """Wait until every model's live replica rows equal the source rows."""
    started = time.monotonic()
    while True:
        try:
            difference = await replica_difference(pool, catalog, backend)
        except AnalyticsError as error:  # the loader has not created the replica yet
            difference = str(error)
        if difference is None:
            return
        assert time.monotonic() - started < within, difference
        await asyncio.sleep(0.1)


async def replica_difference(
    pool: asyncpg.Pool, catalog: Catalog, backend: AnalyticsBackend
) -> str | None:
    """What differs first between the source and the replica, or None."""
    for model in catalog.models.values():
        source = await source_rows(pool, model)
        replica = await replica_rows(backend, catalog, model)
        if source != replica:
            pairs = zip(source, replica, strict=False)
            first = next(((s, r) for s, r in pairs if s != r), None)
            return (
                f"{model.qualified_name}: {len(replica)} replica rows, {len(source)} source "
                f"rows; first differing (source, replica): {first}"
            )
    return None


async def source_rows(pool: asyncpg.Pool, model: Model) -> list[tuple[Any, ...]]:
    columns = [model.tenant_column, *model.fields]
    key = ", ".join(ident(c) for c in (model.tenant_column, *model.primary_key))
    records = await pool.fetch(
        f"SELECT {', '.join(map(ident, columns))} FROM {model.source} ORDER BY {key}"
    )
    return [tuple(comparable(v) for v in record) for record in records]


async def replica_rows(
    backend: AnalyticsBackend, catalog: Catalog, model: Model
) -> list[tuple[Any, ...]]:
    columns = [model.tenant_column, *model.fields]
    key = ", ".join(f"`{c}`" for c in (model.tenant_column, *model.primary_key))
    rows = await backend.query_rows(
        f"SELECT {', '.join(f'`{c}`' for c in columns)} "
        f"FROM `{catalog.database}`.`{model.table}` FINAL "
        f"WHERE _is_deleted = 0 ORDER BY {key}"
    )
    return [tuple(comparable(row[c]) for c in columns) for row in rows]


# --- the service ---------------------------------------------------------------------------------


#: Asks one surface (request, tenant, index of the request in its run) for an answer.
Ask = Callable[[dict[str, Any], str, int], Awaitable[Answer]]
#: The bearer token of a tenant.
Token = Callable[[str], str]


@dataclass(frozen=True)
class Surface:
    """One way to ask the service: an RPC (or REST) on one server, and its default limit."""

    name: str
    ask: Ask
    default_limit: int | None


@pytest.fixture(scope="module")
async def surfaces(
    parity_catalog: Catalog, embedded_backend: EmbeddedBackend, chdb_front: ChdbOverHttp
) -> AsyncIterator[list[Surface]]:
    """Query, StreamQuery and REST of a server on the embedded engine and of one on
    ``HttpBackend`` to the same engine through its HTTP front."""
    settings = Settings(port=0, rest_port=0, query_timeout_seconds=30)
    tokens: dict[str, str] = {}

    def token(tenant: str) -> str:
        if tenant not in tokens:
            tokens[tenant] = mint_token(
                settings, subject="parity", tenant=tenant, permissions=("parity.*.read",)
            )
        return tokens[tenant]

    async with contextlib.AsyncExitStack() as stack:
        http_backend = HttpBackend(chdb_front.url, pool_size=4)
        stack.push_async_callback(http_backend.close)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        found: list[Surface] = []
        for kind, backend in (("chdb", embedded_backend), ("http", http_backend)):
            server = await start_server(settings, catalog=parity_catalog, backend=backend)
            stack.push_async_callback(server.stop, 1.0)
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            )
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            url = f"http://127.0.0.1:{server.rest_port}/v1/data/parity/analytics"
            found += [
                Surface(f"{kind} Query", _query_of(stub, token), QUERY_DEFAULT_LIMIT),
                Surface(f"{kind} StreamQuery", _stream_of(stub, token), None),
                Surface(f"{kind} REST", _rest_of(session, url, token), QUERY_DEFAULT_LIMIT),
            ]
        yield found


def _metadata(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def _query_of(stub: analytics_pb2_grpc.AnalyticsServiceStub, token: Token) -> Ask:
    async def ask(request: dict[str, Any], tenant: str, _index: int) -> Answer:
        message = json_format.ParseDict(request, analytics_pb2.QueryRequest())
        try:
            response = await stub.Query(message, metadata=_metadata(token(tenant)), timeout=60)
        except grpc.aio.AioRpcError as error:
            return Answer(error=f"{error.code().name}: {error.details()}")
        return Answer(convert.response_json(response)["data"])

    return ask


def _stream_of(stub: analytics_pb2_grpc.AnalyticsServiceStub, token: Token) -> Ask:
    async def ask(request: dict[str, Any], tenant: str, index: int) -> Answer:
        # Chunks of 3 rows, of 50 and of the default size, by turns.
        chunk_rows = (3, 50, 0)[index % 3]
        message = json_format.ParseDict(
            {**request, "chunkRows": chunk_rows}, analytics_pb2.StreamQueryRequest()
        )
        rows: list[dict[str, Any]] = []
        metas = 0
        try:
            async for reply in stub.StreamQuery(
                message, metadata=_metadata(token(tenant)), timeout=60
            ):
                if reply.WhichOneof("payload") == "chunk":
                    rows += convert.chunk_rows(reply.chunk)
                else:
                    metas += 1
        except grpc.aio.AioRpcError as error:
            return Answer(error=f"{error.code().name}: {error.details()}")
        if metas != 1:
            return Answer(error=f"{metas} meta messages, expected one after the chunks")
        return Answer(rows)

    return ask


def _rest_of(session: aiohttp.ClientSession, url: str, token: Token) -> Ask:
    async def ask(request: dict[str, Any], tenant: str, _index: int) -> Answer:
        headers = {"Authorization": f"Bearer {token(tenant)}"}
        async with session.post(url, json=request, headers=headers) as reply:
            text = await reply.text()
        if reply.status != 200 or reply.content_type != "application/json":
            return Answer(error=f"HTTP {reply.status} {reply.content_type}: {text[:500]}")
        return Answer(json.loads(text)["data"])

    return ask


# --- the comparison ------------------------------------------------------------------------------


async def mismatch(
    pool: asyncpg.Pool,
    catalog: Catalog,
    surfaces: Sequence[Surface],
    index: int,
    request: dict[str, Any],
    tenant: str,
) -> str | None:
    """Ask PostgreSQL and every surface; None if all agree, else the report of who does not."""
    translation = translate(request, catalog, tenant)
    answers = await asyncio.gather(*(s.ask(request, tenant, index) for s in surfaces))
    expected = Answer([dict(r) for r in await pool.fetch(translation.sql)])
    differing = {
        s.name: (answer, difference)
        for s, answer in zip(surfaces, answers, strict=True)
        if (difference := compare(translation, expected, answer, s.default_limit)) is not None
    }
    if not differing:
        return None
    return "\n".join(
        [
            f"request (tenant {tenant!r}): {json.dumps(request, ensure_ascii=False)}",
            describe(translation, expected, differing),
        ]
    )


async def assert_all_agree(
    pool: asyncpg.Pool,
    catalog: Catalog,
    surfaces: Sequence[Surface],
    requests: Sequence[tuple[dict[str, Any], str]],
) -> None:
    """Check every request (a few at a time); fail listing those that disagree."""
    in_flight = asyncio.Semaphore(IN_FLIGHT)

    async def check(index: int, request: dict[str, Any], tenant: str) -> str | None:
        async with in_flight:
            return await mismatch(pool, catalog, surfaces, index, request, tenant)

    reports = await asyncio.gather(*(check(i, r, t) for i, (r, t) in enumerate(requests)))
    failed = [(i, report) for i, report in enumerate(reports) if report is not None]
    if REPORT and failed:
        text = "".join(f"#{i}\n{report}\n\n" for i, report in failed)
        await asyncio.to_thread(_append, Path(REPORT), text)
    others = [
        f"  #{i} {json.dumps(requests[i][0], ensure_ascii=False)} as {requests[i][1]}"
        for i, _ in failed[SHOWN : SHOWN + 100]
    ]
    assert not failed, "\n".join(
        [
            f"{len(failed)} of {len(requests)} requests disagree with PostgreSQL; the first "
            f"{min(len(failed), SHOWN)} in full:",
            *(f"\n#{i}\n{report}" for i, report in failed[:SHOWN]),
            *(["\nThe other requests that disagree:", *others] if others else []),
        ]
    )


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(text)


async def test_pinned_requests_agree_with_postgres(
    source: asyncpg.Pool, parity_catalog: Catalog, surfaces: list[Surface]
) -> None:
    await assert_all_agree(source, parity_catalog, surfaces, PINNED)


async def test_random_requests_agree_with_postgres(
    source: asyncpg.Pool,
    parity_catalog: Catalog,
    dataset: dict[str, ModelRows],
    surfaces: list[Surface],
) -> None:
    generator = RequestGenerator(parity_catalog, dataset, random.Random(SEED))
    requests = [generator.request() for _ in range(REQUESTS)]
    await assert_all_agree(source, parity_catalog, surfaces, requests)
