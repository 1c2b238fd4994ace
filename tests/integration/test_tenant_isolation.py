"""Tenant isolation through the real gRPC API, against per-tenant ground truth.

A gRPC server runs in this module over a database of its own, once per backend of
``api_backend`` (the embedded engine; ``HttpBackend`` through the HTTP front to the same engine;
the installed ClickHouse server, skipped naming what it lacks). Every call carries a bearer token
minted for one tenant, exactly as a client sends it.

The dataset is built so that a leak cannot hide (``build_dataset``): the demo generator's history
(older versions, tombstones, soft deletes, hostile strings) for ten tenants, rewritten per tenant so
that every value names its owner. Tenant *i* (1-based):

* strings and enums carry the marker ``«Tii»`` (``acme``'s ``title`` is ``«T01» Contoso ...``,
  its ``stage`` is ``closed_won«T01»``);
* ints, decimals and floats lie in ``[i * 1e6, i * 1e6 + 1e5)``, UUIDs start with ``i`` in eight
  hex digits, timestamps and dates are moved ``i * 1000`` days, so each tenant has its own window.

So a single foreign row changes a count, a sum, a minimum, a maximum or a distinct count, puts a
foreign marker in a group key, or moves a time bucket into another tenant's window. The tenants'
ids are hostile on purpose: ``acme`` and ``acme2`` (a prefix), ``acme' OR '1'='1``, ``%``, ``*``,
``a\\b``, non-ASCII, ``ACME`` (case), a 128-character id and a 300-character id that starts with
the 128-character one.

Every answer is checked twice: it must equal what ``tests.reference`` computes from *only the
caller's rows*, and no value in it may come from another tenant (no foreign marker in any string,
every numeric value, bucket or UUID inside the caller's own range). Errors must be the documented
ones (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, with ``google.rpc`` details)
and never quote another tenant's data. ``meta.lastSyncAt`` is per table by design (DESIGN.md
section 5) and not checked; ``meta.rowsScanned`` is reported in whole granules, since the engine's
exact figure counted neighbours' rows (checked at the end of this module, beside a test of
Lord Howe's hour buckets, a bug found on the way that has nothing to do with tenants).

Decision: a request naming the tenant column is rejected. The tenant comes from the verified
token only and the tenant column is not a field of any model, so naming it anywhere in a request
is an error, not a no-op and not a narrowing: ``filters`` (top level or at any depth of and/or,
negated or not, with any operator), ``groupBy`` (surrounding spaces included), ``order``,
``field`` and ``metrics[].field`` get INVALID_ARGUMENT with ``ErrorInfo.reason`` TENANT_COLUMN and
a ``BadRequest`` field violation naming the request field (``filters.or``, ``groupBy``, ...); a
metric ``alias`` equal to the tenant column gets INVALID_ARGUMENT at ``metrics[i].alias``. Near
misses (``TENANT_ID``, ``t.tenant_id``, a filter key with a space, the engine's ``_version`` and
``_is_deleted``) are unknown fields (UNKNOWN_FIELD). Rejecting rather than ignoring means a client
that tries to pick a tenant learns at once that it cannot, and no request can ever be read as
"rows of that tenant". Token tenant ids longer than 128 characters are refused at authentication
(UNAUTHENTICATED); the 300-character tenant's rows are in the data as a bystander that must never
show up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import grpc
import hypothesis
import jwt
import pyarrow as pa
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from service.api.server import RunningServer, start_server
from service.auth import mint_token
from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.demo.generator import DemoDataset, current_rows, generate_dataset
from service.demo.loader import load_dataset
from service.query.request import MetricRequest, QueryRequest
from service.query_service import GRANULE_ROWS
from service.settings import Settings
from tests.conftest import ApiBackend, catalog_in_database, unique_database
from tests.reference import assert_results_equal, evaluate, metric_requests
from tests.strategies import (
    HOSTILE_STRINGS,
    MODELS,
    hostile_names,
    odd_trailing_backslashes,
    poisoned,
    quote_value,
    shapes,
    to_request,
)

pytestmark = pytest.mark.integration

# --- the dataset --------------------------------------------------------------------------------

LONG_TENANT = "long-tenant-" + "x" * 116
TENANTS: tuple[str, ...] = (
    "acme",
    "acme2",
    "acme' OR '1'='1",
    "%",
    "*",
    "a\\b",
    "日本語-テナント-ü",
    "ACME",
    LONG_TENANT,
    LONG_TENANT + "y" * 172,
)
#: Tenants a token can name (the service refuses tenant claims over 128 characters).
QUERYABLE = TENANTS[:-1]
BYSTANDER = TENANTS[-1]
#: Tenant ids without any rows, several of them near misses of real ones.
GHOSTS = ("acm", "acme ", "acme\n", "acme%", "acme*", "%%", "' OR 1=1 --", "a\\\\b", "Acme")
INDEX = {tenant: number for number, tenant in enumerate(TENANTS, 1)}

SEED = 23
ROWS = 6_000
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)
SPAN = 1_000_000  # tenant i's numbers lie in [i * SPAN, i * SPAN + WIDTH)
WIDTH = 100_000
DAYS_APART = 1_000  # tenant i's times are moved i * DAYS_APART days
# Own rows lie between START and END (dates up to 150 days later) after the move; a bucket may
# start up to a year before (year intervals) and a time zone shifts by at most a day.
WINDOW_BEFORE = dt.timedelta(days=370)
WINDOW_AFTER = dt.timedelta(days=160)
ALL_PERMISSIONS = ("crm.*.read", "billing.*.read", "product.*.read")
TENANT_COLUMN = "tenant_id"


def marker(number: int) -> str:
    """The text every string of tenant ``number`` carries."""
    return f"«T{number:02d}»"


MARKERS = {tenant: marker(number) for tenant, number in INDEX.items()}
FOREIGN_MARKER = re.compile(r"«T(\d\d)»")


def _own_value(spec: FieldSpec, value: Any, number: int) -> Any:
    """``value`` moved into tenant ``number``'s own range (see the module docstring)."""
    if value is None:
        return None
    kind = spec.type
    if kind is FieldType.STRING:
        return f"{marker(number)} {value}"
    if kind is FieldType.ENUM:
        return f"{value}{marker(number)}"
    if kind is FieldType.UUID:
        return f"{number:08x}{value[8:]}"
    if kind is FieldType.INT:
        return number * SPAN + value % WIDTH
    if kind is FieldType.DECIMAL:
        return Decimal(number * SPAN) + value % WIDTH
    if kind is FieldType.FLOAT:
        return float(number * SPAN) + value * 100
    if kind in (FieldType.TIMESTAMP, FieldType.DATE):
        return value + dt.timedelta(days=number * DAYS_APART)
    return value


def build_dataset(catalog: Catalog) -> DemoDataset:
    """The demo history for TENANTS, every value rewritten into its tenant's own range."""
    demo = generate_dataset(catalog, seed=SEED, rows=ROWS, tenants=TENANTS, start=START, end=END)
    tables: dict[str, pa.Table] = {}
    for model in catalog.models.values():
        table = demo.tables[model.qualified_name]
        rows = table.to_pylist()
        for row in rows:
            number = INDEX[row[model.tenant_column]]
            for spec in model.fields.values():
                row[spec.name] = _own_value(spec, row[spec.name], number)
        tables[model.qualified_name] = pa.Table.from_pylist(rows, schema=table.schema)
    return dataclasses.replace(demo, tables=tables, fingerprint=demo.fingerprint + "-isolation")


@dataclass(frozen=True, repr=False)
class Isolated:
    """The loaded database and its ground truth."""

    catalog: Catalog
    rows: Mapping[str, Mapping[str, list[dict[str, Any]]]]
    """Model -> tenant -> the current rows of that tenant (soft-deleted ones included)."""
    samples: Mapping[tuple[str, str], Mapping[str, tuple[Any, ...]]]
    """(model, field) -> tenant -> some distinct non-null values of that tenant."""
    versions: Mapping[str, Mapping[str, int]]
    """Model -> tenant -> row versions stored (older versions and tombstones included)."""

    def own_rows(self, model: Model, tenant: str) -> list[dict[str, Any]]:
        return self.rows[model.qualified_name].get(tenant, [])

    def __repr__(self) -> str:
        # Short: Hypothesis and pytest print the arguments of strategies and fixtures, and a
        # repr of megabytes is a HypothesisWarning (an error here) that hides the real failure.
        return f"Isolated({self.catalog.database!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _distinct(rows: list[dict[str, Any]], name: str, count: int = 25) -> tuple[Any, ...]:
    """The first ``count`` distinct non-null values of a field."""
    return tuple(dict.fromkeys(row[name] for row in rows if row[name] is not None))[:count]


@pytest_asyncio.fixture(scope="module")
async def isolated(api_backend: ApiBackend, catalog: Catalog) -> AsyncIterator[Isolated]:
    moved = catalog_in_database(catalog, unique_database("tenant_isolation"))
    dataset = build_dataset(moved)
    await load_dataset(api_backend.writer, moved, dataset)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    samples: dict[tuple[str, str], dict[str, tuple[Any, ...]]] = {}
    versions: dict[str, dict[str, int]] = {}
    for model in moved.models.values():
        stored = dataset.tables[model.qualified_name].column(model.tenant_column).to_pylist()
        versions[model.qualified_name] = {t: stored.count(t) for t in TENANTS}
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for row in current_rows(dataset, model.qualified_name):
            by_tenant.setdefault(row[model.tenant_column], []).append(row)
        rows[model.qualified_name] = by_tenant
        for spec in model.fields.values():
            samples[model.qualified_name, spec.name] = {
                tenant: _distinct(own, spec.name) for tenant, own in by_tenant.items()
            }
    yield Isolated(moved, rows, samples, versions)
    await api_backend.writer.command(f"DROP DATABASE IF EXISTS `{moved.database}`")


@pytest.fixture(scope="module")
def server_settings() -> Settings:
    return Settings(port=0, rest_port=0, query_timeout_seconds=30)


@pytest_asyncio.fixture(scope="module")
async def stub(
    isolated: Isolated, server_settings: Settings, api_backend: ApiBackend
) -> AsyncIterator[Any]:
    running: RunningServer = await start_server(
        server_settings, catalog=isolated.catalog, backend=api_backend.backend
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield analytics_pb2_grpc.AnalyticsServiceStub(channel)
    finally:
        await running.stop(1.0)


# --- calling the API ------------------------------------------------------------------------------

_TOKENS: dict[tuple[str, tuple[str, ...]], str] = {}


def bearer(settings: Settings, tenant: str, permissions: tuple[str, ...] = ALL_PERMISSIONS) -> str:
    key = (tenant, permissions)
    if key not in _TOKENS:
        _TOKENS[key] = mint_token(
            settings,
            subject=f"isolation-{INDEX.get(tenant, 0)}",
            tenant=tenant,
            permissions=permissions,
        )
    return f"Bearer {_TOKENS[key]}"


@dataclass(frozen=True)
class Answer:
    """Rows (keys in the response's column order) or the call's error."""

    rows: list[dict[str, Any]] | None
    error: grpc.aio.AioRpcError | None


def _message_fields(request: QueryRequest) -> dict[str, Any]:
    return {
        "model": request.model,
        "aggregate": request.aggregate,
        "field": request.field,
        "metrics": [
            analytics_pb2.Metric(aggregate=m.aggregate, field=m.field, alias=m.alias)
            for m in request.metrics
        ],
        "group_by": request.group_by,
        "group_by_interval": request.group_by_interval,
        "filters": dict(request.filters),
        "order": request.order,
        "limit": request.limit,
        "offset": request.offset,
        "time_zone": request.time_zone,
    }


def _struct_value(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind in ("number_value", "string_value", "bool_value"):
        return getattr(value, kind)
    assert kind in ("null_value", None), kind
    return None


def _query_rows(response: analytics_pb2.QueryResponse) -> list[dict[str, Any]]:
    names = [column.name for column in response.meta.columns]
    rows = []
    for struct in response.data:
        assert sorted(struct.fields) == sorted(names), (list(struct.fields), names)
        rows.append({name: _struct_value(struct.fields[name]) for name in names})
    return rows


def _chunk_rows(chunk: analytics_pb2.ColumnChunk) -> list[dict[str, Any]]:
    columns: list[tuple[str, list[Any]]] = []
    for column in chunk.columns:
        which = column.WhichOneof("values")
        values: list[Any] = list(getattr(column, which).values) if which else []
        values += [None] * (chunk.row_count - len(values))
        for position in column.null_positions:
            values[position] = None
        columns.append((column.name, values))
    return [{name: values[i] for name, values in columns} for i in range(chunk.row_count)]


async def ask(
    stub: Any,
    settings: Settings,
    request: QueryRequest,
    tenant: str,
    *,
    rpc: str = "Query",
    permissions: tuple[str, ...] = ALL_PERMISSIONS,
    metadata: Sequence[tuple[str, str | bytes]] = (),
    token: str | None = None,
) -> Answer:
    """Send ``request`` with a token for ``tenant`` (or ``token``) through Query or StreamQuery."""
    authorization = f"Bearer {token}" if token else bearer(settings, tenant, permissions)
    headers = (("authorization", authorization), *metadata)
    try:
        if rpc == "Query":
            message = analytics_pb2.QueryRequest(**_message_fields(request))
            response = await stub.Query(message, metadata=headers, timeout=60)
            return Answer(_query_rows(response), None)
        stream_message = analytics_pb2.StreamQueryRequest(**_message_fields(request), chunk_rows=7)
        rows: list[dict[str, Any]] = []
        metas = 0
        async for part in stub.StreamQuery(stream_message, metadata=headers, timeout=60):
            if part.HasField("chunk"):
                rows.extend(_chunk_rows(part.chunk))
            else:
                metas += 1
        assert metas == 1
        return Answer(rows, None)
    except grpc.aio.AioRpcError as error:
        return Answer(None, error)


# --- checking answers ---------------------------------------------------------------------------

DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT: "validation-error",
    grpc.StatusCode.NOT_FOUND: "not-found",
    grpc.StatusCode.PERMISSION_DENIED: "forbidden",
    grpc.StatusCode.UNAUTHENTICATED: "unauthorized",
}


@dataclass(frozen=True)
class Expect:
    """What a request must get: rows (``code`` None) or an error of this code, reason and field."""

    code: grpc.StatusCode | None = None
    reasons: frozenset[str] = frozenset()
    field: str | None = None


OK = Expect()


#: A dotted near miss (``not.tenant_id``) reads as a path through a relation: refused as one.
PATH_REASONS = ("UNKNOWN_RELATION", "NOT_A_RELATION")


def invalid(field: str | None, *reasons: str) -> Expect:
    return Expect(grpc.StatusCode.INVALID_ARGUMENT, frozenset(reasons), field)


def _details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[str], str]:
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code()} without google.rpc details: {error.details()}"
    info = error_details_pb2.ErrorInfo()
    fields: list[str] = []
    found_info = False
    text = status.message
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
            found_info = True
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
            text += "".join(v.description for v in bad.field_violations)
    assert found_info, "no ErrorInfo detail"
    return info, fields, text + "".join(info.metadata.values())


def check_error(
    error: grpc.aio.AioRpcError, expect: Expect, tenant: str, request: QueryRequest
) -> None:
    """A documented error with details, as expected, quoting no other tenant's data."""
    code = error.code()
    assert code in DOCUMENTED, f"undocumented {code}: {error.details()} for {request!r}"
    info, fields, text = _details(error)
    assert info.domain == "analytics.v1"
    assert info.metadata["type"] == DOCUMENTED[code]
    assert code == expect.code, f"{code} {info.reason} {fields}, expected {expect} for {request!r}"
    if expect.reasons:
        assert info.reason in expect.reasons, (info.reason, expect, request)
    if expect.field is not None:
        assert fields == [expect.field], (fields, expect, request)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert fields, "a validation error names the request field at fault"
    asked = repr(request)
    for found in FOREIGN_MARKER.finditer(text):
        assert found.group(0) == MARKERS[tenant] or found.group(0) in asked, (text, tenant)


def _as_expected(actual: Any, expected: Any) -> Any:
    """An API value in the reference's Python type (the API sends decimals as numbers or text)."""
    if actual is None or expected is None or isinstance(expected, bool):
        return actual
    if isinstance(expected, int) and isinstance(actual, float) and actual.is_integer():
        return int(actual)
    if isinstance(expected, int) and isinstance(actual, str) and re.fullmatch(r"-?\d+", actual):
        return int(actual)
    if isinstance(expected, Decimal) and isinstance(actual, float):
        return Decimal(repr(actual))
    if isinstance(expected, Decimal) and isinstance(actual, str):
        return Decimal(actual)
    return actual


def _number(value: Any) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


def _moment(value: Any) -> dt.datetime:
    """An API's ISO text (or a dataset's date or datetime) as an aware datetime."""
    if isinstance(value, str):
        value = (
            dt.date.fromisoformat(value) if len(value) == 10 else dt.datetime.fromisoformat(value)
        )
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.combine(value, dt.time(), tzinfo=dt.UTC)


def _check_own_value(
    value: Any, spec: FieldSpec | None, aggregate: str, tenant: str, own: int, context: str
) -> None:
    """A value derived from ``tenant``'s rows only: its own range, window, marker, prefix."""
    number = INDEX[tenant]
    if isinstance(value, str):
        for found in FOREIGN_MARKER.finditer(value):
            assert found.group(0) == MARKERS[tenant], f"foreign value {value!r}: {context}"
    if value is None:
        return
    if aggregate in ("count", "count_distinct"):
        assert 0 <= _number(value) <= own, f"{aggregate} {value} > {own} own rows: {context}"
        return
    assert spec is not None
    low, high = Decimal(number * SPAN), Decimal(number * SPAN + WIDTH)
    if spec.type.is_numeric and aggregate == "sum":
        assert 0 <= _number(value) <= own * high, f"foreign sum {value}: {context}"
    elif spec.type.is_numeric and aggregate != "sum":
        # avg and percentiles of values in the range stay in it (up to float rounding)
        assert low * Decimal("0.999999") <= _number(value) <= high, f"foreign {value}: {context}"
    elif spec.type.is_temporal:
        moved = dt.timedelta(days=number * DAYS_APART)
        moment = _moment(value)
        assert START + moved - WINDOW_BEFORE <= moment <= END + moved + WINDOW_AFTER, (
            f"foreign moment {value}: {context}"
        )
    elif spec.type is FieldType.UUID:
        assert value.startswith(f"{number:08x}"), f"foreign uuid {value}: {context}"
    elif spec.type in (FieldType.STRING, FieldType.ENUM):
        assert MARKERS[tenant] in value, f"unmarked value {value!r}: {context}"


def check_rows(
    isolated: Isolated,
    request: QueryRequest,
    tenant: str,
    rows: list[dict[str, Any]],
    *,
    rpc: str,
    settings: Settings,
) -> None:
    """Rows equal the reference over the tenant's own rows, and hold nothing of anyone else."""
    (model,) = isolated.catalog.find(request.model)
    own_rows = isolated.own_rows(model, tenant)
    default_limit = settings.default_limit if rpc == "Query" else settings.max_stream_limit
    expected = evaluate(request, model, tenant, own_rows, default_limit=default_limit)
    context = f"{rpc} by {tenant!r}: {request!r}"
    converted = [
        {key: _as_expected(value, want.get(key)) for key, value in got.items()}
        for got, want in zip(rows, expected, strict=False)
    ]
    assert_results_equal(converted + rows[len(converted) :], expected, context=context)
    keys = [name.strip() for name in request.group_by.split(",")] if request.group_by else []
    described: dict[str, tuple[FieldSpec | None, str]] = {
        name: (model.fields[name], "key") for name in keys
    }
    for key, metric in metric_requests(request):
        described[key] = (model.fields.get(metric.field), metric.aggregate)
    for row in rows:
        for key, value in row.items():
            spec, aggregate = described[key]
            if aggregate == "key" and request.group_by_interval and spec is not None:
                aggregate = "bucket"
            _check_own_value(value, spec, aggregate, tenant, len(own_rows), context)


async def check(
    stub: Any,
    settings: Settings,
    isolated: Isolated,
    request: QueryRequest,
    tenant: str,
    expect: Expect = OK,
    *,
    rpc: str = "Query",
) -> list[dict[str, Any]] | None:
    """Send ``request`` as ``tenant`` and check the answer; return the rows, if any."""
    answer = await ask(stub, settings, request, tenant, rpc=rpc)
    if answer.error is not None:
        assert expect.code is not None, (
            f"{answer.error.code()} {answer.error.details()} for a valid {rpc} by {tenant!r}: "
            f"{request!r}"
        )
        check_error(answer.error, expect, tenant, request)
        return None
    assert expect.code is None, f"{rpc} by {tenant!r} answered, expected {expect}: {request!r}"
    assert answer.rows is not None
    check_rows(isolated, request, tenant, answer.rows, rpc=rpc, settings=settings)
    return answer.rows


# --- request strategies -----------------------------------------------------------------------


def literal(value: Any) -> str:
    """A filter value as the request writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote_value(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _bounds(spec: FieldSpec, number: int) -> list[str]:
    """Texts at the edges of tenant ``number``'s range for ``spec``."""
    if spec.type.is_numeric:
        return [str(number * SPAN), str(number * SPAN + WIDTH), str((number + 1) * SPAN)]
    moved = dt.timedelta(days=number * DAYS_APART)
    if spec.type is FieldType.DATE:
        return [(START + moved).date().isoformat(), (END + moved).date().isoformat()]
    return [(START + moved).isoformat(), (END + moved).isoformat().replace("+00:00", "Z")]


@st.composite
def like_pattern(draw: st.DrawFn, samples: tuple[Any, ...], number: int) -> str:
    """Wildcard patterns: markers of any tenant, bare wildcards, long and non-ASCII text."""
    options = [
        f"*{marker(number)}*",
        f"%{marker(number)}%",
        f"{marker(number)}*",
        f"*{marker(number)}",
        f"%{marker(number).lower()}%",
        "*",
        "%",
        "_%",
        "%_",
        "___%",
        "*«T*",
        "%«T__»%",
        "%日本語%",
        "%ü%",
        "%" + "é" * 3000 + "%",
        "*" + "'\\\\" * 500 + "*",
        "100\\%\\_real\\*%",
    ]
    pattern = draw(st.sampled_from(options))
    from_sample = draw(st.booleans())
    if samples and from_sample:
        sample = str(draw(st.sampled_from(samples)))
        pattern = draw(st.sampled_from([sample, f"{sample}%", f"%{sample[-6:]}", sample[:7] + "*"]))
    return pattern + "\\" if odd_trailing_backslashes(pattern) else pattern


@st.composite
def probe(
    draw: st.DrawFn,
    isolated: Isolated,
    model: Model,
    favoured: str | None = None,
    *,
    top_level: bool = False,
) -> str:
    """A valid ``field.op.value`` condition on values of some tenants (half the time
    ``favoured``'s, when given), for an and/or tree or (``top_level``) the filters map, where
    a value is literal rather than quoted (PostgREST)."""

    def scalar(value: Any) -> str:
        return value if top_level and isinstance(value, str) else literal(value)

    spec = draw(st.sampled_from(list(model.fields.values())))
    owners = st.sampled_from(TENANTS)
    if favoured is not None:
        owners = st.one_of(st.just(favoured), owners)
    owner = draw(owners)
    samples = isolated.samples[model.qualified_name, spec.name].get(owner, ())
    negate = draw(st.sampled_from(["", "not."]))
    kind = spec.type
    choice = draw(st.integers(0, 9))
    if choice == 0 or not samples:
        operands = ["null", "true", "false"] if kind is FieldType.BOOL else ["null"]
        return f"{spec.name}.{negate}is.{draw(st.sampled_from(operands))}"
    if kind in (FieldType.STRING, FieldType.ENUM) and choice <= 4:
        operator = draw(st.sampled_from(["like", "ilike"]))
        pattern = draw(like_pattern(samples, INDEX[owner]))
        return f"{spec.name}.{negate}{operator}.{scalar(pattern)}"
    ordered = kind.is_ordered and kind not in (FieldType.UUID, FieldType.BOOL)
    if choice <= 6 or not ordered:
        operator = draw(st.sampled_from(["eq", "neq", "in"]))
        if operator == "in":
            mixed = samples + isolated.samples[model.qualified_name, spec.name][draw(owners)]
            values = draw(st.lists(st.sampled_from(mixed), min_size=1, max_size=4))
            return f"{spec.name}.{negate}in.({','.join(literal(v) for v in values)})"
        return f"{spec.name}.{negate}{operator}.{scalar(draw(st.sampled_from(samples)))}"
    operator = draw(st.sampled_from(["gt", "gte", "lt", "lte"]))
    bound = draw(
        st.one_of(
            st.sampled_from(samples).map(scalar),
            st.sampled_from(_bounds(spec, INDEX[owner])),
        )
    )
    return f"{spec.name}.{negate}{operator}.{bound}"


@st.composite
def junction_body(
    draw: st.DrawFn,
    isolated: Isolated,
    model: Model,
    depth: int,
    planted: str | None = None,
    favoured: str | None = None,
) -> str:
    """``(item,item,...)`` of probes and nested junctions; ``planted`` is put in somewhere."""
    items = draw(
        st.lists(probe(isolated, model, favoured), min_size=0 if planted else 1, max_size=3)
    )
    if depth > 0 and draw(st.booleans()):
        kind = draw(st.sampled_from(["and", "or", "not.and", "not.or"]))
        nested = junction_body(isolated, model, depth - 1, planted, favoured)
        items.append(kind + draw(nested))
    elif planted is not None:
        items.insert(draw(st.integers(0, len(items))), planted)
    return "(" + ",".join(items) + ")"


@st.composite
def extra_filters(
    draw: st.DrawFn,
    isolated: Isolated,
    model: Model,
    taken: Mapping[str, str],
    favoured: str | None = None,
) -> dict[str, str]:
    """Filters probing own and other tenants' values, beside those a request already has."""
    extra: dict[str, str] = {}
    free = [k for k in ("and", "or", "not.and", "not.or") if k not in taken]
    for key in draw(st.lists(st.sampled_from(free), max_size=2, unique=True)) if free else []:
        extra[key] = draw(junction_body(isolated, model, 2, favoured=favoured))
    if draw(st.booleans()):
        field, _, expression = draw(probe(isolated, model, favoured, top_level=True)).partition(".")
        if field not in taken:
            extra[field] = expression
    return extra


@st.composite
def valid_request(draw: st.DrawFn, isolated: Isolated, favoured: str | None = None) -> QueryRequest:
    """A valid request (tests/strategies.py: hostile, long and non-ASCII values, wildcards,
    intervals, time zones) with extra filters on own and other tenants' values.

    Half of them keep only the extra filters and start at offset 0, so that they match rows.
    """
    model = draw(st.sampled_from(MODELS))
    request = to_request(draw(shapes(engine=True, model=model)))
    if draw(st.booleans()):
        request = dataclasses.replace(request, filters={}, offset=0)
    extra = draw(extra_filters(isolated, model, request.filters, favoured))
    return dataclasses.replace(request, filters={**request.filters, **extra})


def _tenant_condition(draw: st.DrawFn) -> str:
    """An operator expression on the tenant column, aimed at widening or switching the tenant."""
    other = draw(st.sampled_from(TENANTS))
    return draw(
        st.sampled_from(
            [
                f"eq.{other}",
                f"neq.{other}",
                f"not.eq.{other}",
                "in.(" + ",".join(quote_value(t) for t in TENANTS) + ")",
                "like.*",
                "ilike.%",
                "is.null",
                "not.is.null",
                f"gt.{quote_value('')}",
                "eq." + quote_value(other + "' OR '1'='1"),
            ]
        )
    )


NEAR_MISSES = (
    "TENANT_ID",
    "Tenant_Id",
    "tenantid",
    "tenant",
    "t.tenant_id",
    "`tenant_id`",
    '"tenant_id"',
    "tenant_id\0",
    "tenant_id;",
    "_is_deleted",
    "_version",
    "k0",
    "m0",
    "c0",
    "t",
    "p0",
    "not.tenant_id",
)


@st.composite
def hostile_case(draw: st.DrawFn, isolated: Isolated, rpc: str) -> tuple[QueryRequest, Expect]:
    """A valid base request with one hostile change, and what that change must get."""
    model = draw(st.sampled_from(MODELS))
    base = to_request(draw(shapes(engine=True, model=model)))
    kind = draw(st.integers(0, 14))
    replace = dataclasses.replace
    if kind == 0:  # the tenant column as a filter key
        return (
            replace(base, filters={**base.filters, TENANT_COLUMN: _tenant_condition(draw)}),
            invalid(f"filters.{TENANT_COLUMN}", "TENANT_COLUMN"),
        )
    if kind == 1:  # the tenant column somewhere in an and/or tree
        key = draw(st.sampled_from(["and", "or", "not.and", "not.or"]))
        planted = f"{TENANT_COLUMN}.{_tenant_condition(draw)}"
        number = next(n for n, f in model.fields.items() if f.type is FieldType.INT)
        body = draw(
            st.one_of(
                st.just(f"({number}.gt.0,{planted})"),
                st.just(f"({planted},{number}.gt.0)"),
                junction_body(isolated, model, 3, planted),
            )
        )
        return (
            replace(base, filters={**base.filters, key: body}),
            invalid(f"filters.{key}", "TENANT_COLUMN"),
        )
    if kind == 2:  # groupBy
        names = [n for n in base.group_by.split(",") if n.strip()]
        spelled = draw(st.sampled_from([TENANT_COLUMN, f" {TENANT_COLUMN} ", f"{TENANT_COLUMN}\t"]))
        names.insert(draw(st.integers(0, len(names))), spelled)
        return replace(base, group_by=",".join(names)), invalid("groupBy", "TENANT_COLUMN")
    if kind == 3:  # field
        aggregate = draw(st.sampled_from(["", "count", "count_distinct", "min", "max", "sum"]))
        return (
            replace(base, aggregate=aggregate, field=TENANT_COLUMN),
            invalid("field", "TENANT_COLUMN"),
        )
    if kind == 4:  # metrics[].field
        aggregate = draw(st.sampled_from(["count", "count_distinct", "min", "max", "avg", "p50"]))
        index = len(base.metrics)
        metrics = (*base.metrics, MetricRequest(aggregate, TENANT_COLUMN))
        return (
            replace(base, metrics=metrics),
            invalid(f"metrics[{index}].field", "TENANT_COLUMN"),
        )
    if kind == 5:  # metrics[].alias
        index = len(base.metrics)
        metrics = (*base.metrics, MetricRequest("count", "", TENANT_COLUMN))
        return replace(base, metrics=metrics), invalid(f"metrics[{index}].alias")
    if kind == 6:  # order
        terms = [t for t in base.order.split(",") if t.strip()]
        term = TENANT_COLUMN + draw(st.sampled_from(["", ".asc", ".desc", ".desc.nullsfirst"]))
        terms.insert(draw(st.integers(0, len(terms))), term)
        return replace(base, order=",".join(terms)), invalid("order", "TENANT_COLUMN")
    if kind == 7:  # near misses of the tenant column and the engine's own columns
        name = draw(st.sampled_from(NEAR_MISSES))
        where = draw(st.sampled_from(["filters", "groupBy", "field"]))
        if where == "filters":
            key = name if draw(st.booleans()) else f"{TENANT_COLUMN} "
            return (
                replace(base, filters={**base.filters, key: "in.(0,1)"}),
                invalid(f"filters.{key}", "UNKNOWN_FIELD", *PATH_REASONS),
            )
        if where == "groupBy":
            return replace(base, group_by=name), invalid("groupBy", "UNKNOWN_FIELD", *PATH_REASONS)
        return (
            replace(base, aggregate="count", field=name),
            invalid("field", "UNKNOWN_FIELD", *PATH_REASONS),
        )
    if kind == 8:  # another module's model, the table, the tenant column, SQL
        name = draw(
            st.one_of(
                st.sampled_from(
                    [
                        "billing.deals",
                        "billing.contacts",
                        "crm.invoices",
                        "crm.tenant_id",
                        TENANT_COLUMN,
                        model.table,
                        f"{isolated.catalog.database}.{model.table}",
                        f"{model.qualified_name}; --",
                        f"{model.qualified_name} FINAL",
                        f"{model.qualified_name}.{TENANT_COLUMN}",
                        model.qualified_name.upper(),
                        f"{model.name} ",
                        "system.tables",
                        "crm.*",
                        "*",
                    ]
                ),
                poisoned(st.sampled_from([m.qualified_name for m in MODELS])),
            )
        )
        return replace(base, model=name), Expect(
            grpc.StatusCode.NOT_FOUND, frozenset({"NOT_FOUND"})
        )
    if kind == 9:  # huge limits and offsets
        which = draw(st.sampled_from(["limit", "offset", "offset_ok"]))
        if which == "limit":
            too_large = [10_001, 2**31, 2**32 - 1] if rpc == "Query" else [10**9 + 1, 2**40]
            limit = draw(st.sampled_from(too_large))
            return replace(base, limit=limit), invalid("limit", "LIMIT_TOO_LARGE")
        if which == "offset":
            offset = draw(st.sampled_from([1_000_001, 2**31, 2**32 - 1]))
            return replace(base, offset=offset), invalid("offset", "OFFSET_TOO_LARGE")
        return replace(base, offset=draw(st.integers(10_000, 1_000_000))), OK
    if kind == 10:  # comments, quotes and injections in the time zone
        zone = draw(
            st.one_of(
                st.sampled_from(
                    [
                        "UTC' OR '1'='1",
                        "UTC/*",
                        "UTC -- x",
                        "UTC#",
                        "Europe/Paris'); DROP TABLE crm_deals; --",
                        "'UTC'",
                        '"UTC"',
                        "UTC\n",
                        "../UTC",
                        "Etc/UTC;",
                        "{p0:String}",
                        "UTC\0",
                        "utc",
                        "Europe/" + "x" * 200,
                        "right/UTC",
                    ]
                ),
                poisoned(st.sampled_from(["UTC", "Europe/Paris", "Asia/Kolkata"])),
            )
        )
        return (
            replace(base, time_zone=zone),
            invalid("timeZone", "INVALID_ARGUMENT", "INVALID_TIME_ZONE"),
        )
    if kind == 11:  # SQL fragments and other tenants' ids and markers as string values: valid
        strings = [s for s in model.fields.values() if s.type in (FieldType.STRING, FieldType.ENUM)]
        spec = draw(st.sampled_from(strings))
        value = draw(
            st.one_of(
                st.sampled_from(TENANTS),
                st.sampled_from(list(MARKERS.values())),
                st.sampled_from(
                    [
                        "x' OR tenant_id != '",
                        "') OR 1=1 --",
                        "%' OR '1'='1",
                        "{tenant:String}",
                        "' UNION ALL SELECT * FROM crm_deals --",
                        "\\' OR 1=1 #",
                    ]
                ),
                st.sampled_from(HOSTILE_STRINGS),
            )
        )
        operator = draw(st.sampled_from(["eq", "neq", "not.eq", "like", "ilike", "in"]))
        if operator in ("like", "ilike") and odd_trailing_backslashes(value):
            value += "\\"
        # top-level values are literal (PostgREST); only list values are quoted
        operand = f"({quote_value(value)})" if operator == "in" else value
        if operator == "in" and value == "":
            operand = '("","")'
        return replace(base, filters={**base.filters, spec.name: f"{operator}.{operand}"}), OK
    if kind == 12:  # operator tricks that break the grammar or the value's type
        key, expression = draw(
            st.sampled_from(
                [
                    ("id", "gt.0 OR 1=1"),
                    ("id", "eq.1;--"),
                    ("id", "gt.0) OR (1=1"),
                    ("id", "is.true"),
                    ("id", "in.(1,2"),
                    ("id", "not.not.eq.1"),
                    ("id", "eq"),
                    ("id", "between.1.2"),
                    ("id", "is.tenant_id"),
                    ("or", "id.gt.0,tenant_id.neq.x"),
                    ("or", "(id.gt.0)) OR ((1=1"),
                    ("and", "(" * 10 + "id.gt.0" + ")" * 10),
                    ("and", "(or(and(or(and(or(and(or(and(id.gt.0)))))))))"),
                    ("or", "()"),
                    ("or", "(tenant_id)"),
                    ("not.or", '(id.gt.0,"tenant_id".eq.x)'),
                ]
            )
        )
        return (
            replace(base, filters={**base.filters, key: expression}),
            invalid(f"filters.{key}", "INVALID_FILTER", "INVALID_VALUE", "UNKNOWN_FIELD"),
        )
    if kind == 13:  # aggregates and intervals with SQL in them
        which = draw(st.sampled_from(["aggregate", "groupByInterval"]))
        text = draw(
            st.sampled_from(["sum) FROM crm_deals --", "count(*)", "p100", "p0", "day') --", "*"])
        )
        if which == "aggregate":
            return (
                replace(base, aggregate=text, field="id"),
                invalid("aggregate", "UNKNOWN_AGGREGATE"),
            )
        return (
            replace(base, group_by_interval=text),
            invalid("groupByInterval", "INVALID_INTERVAL"),
        )
    # random invalid names (with a character no name has) where a field or model is named
    names = sorted({*model.fields, TENANT_COLUMN})
    name = draw(hostile_names(names))
    where = draw(st.sampled_from(["filters", "groupBy", "field", "order"]))
    if where == "filters":
        key = name
        return (
            replace(base, filters={**base.filters, key: "eq.1"}),
            invalid(f"filters.{key}"[:240]),
        )
    if where == "groupBy":
        return replace(base, group_by=name), invalid("groupBy")
    if where == "field":
        return replace(base, aggregate="count", field=name), invalid("field")
    return replace(base, order=name), invalid("order")


ISOLATION = hypothesis.settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
)
RPCS = st.sampled_from(["Query", "Query", "StreamQuery"])


# --- the dataset is what the checks rely on -------------------------------------------------


async def test_dataset_is_built_for_leak_detection(
    isolated: Isolated, api_backend: ApiBackend
) -> None:
    for model in isolated.catalog.models.values():
        stored = await api_backend.backend.query_rows(
            f"SELECT tenant_id, count() AS n FROM `{isolated.catalog.database}`.`{model.table}` "
            "FINAL WHERE _is_deleted = 0 GROUP BY tenant_id"
        )
        assert {r["tenant_id"]: r["n"] for r in stored} == {
            tenant: len(isolated.own_rows(model, tenant)) for tenant in TENANTS
        }
        for tenant in TENANTS:
            own = isolated.own_rows(model, tenant)
            assert len(own) >= 20, (model.qualified_name, tenant)
            for row in own:
                for spec in model.fields.values():
                    _check_own_value(row[spec.name], spec, "key", tenant, len(own), "dataset")
    # the string checks find every marker: none is a part of another
    assert all(a == b or a not in b for a in MARKERS.values() for b in MARKERS.values())


async def test_every_tenant_counts_exactly_its_own_rows(
    stub: Any, server_settings: Settings, isolated: Isolated
) -> None:
    requests = [
        QueryRequest(model=m.qualified_name, filters={m.soft_delete_column: "not.is.null"})
        if m.soft_delete_column
        else QueryRequest(model=m.qualified_name)
        for m in MODELS
    ]
    requests += [QueryRequest(model=m.name) for m in MODELS]
    await asyncio.gather(
        *(
            check(stub, server_settings, isolated, request, tenant)
            for tenant in QUERYABLE
            for request in requests
        )
    )


async def test_tenants_without_rows_see_nothing(stub: Any, server_settings: Settings) -> None:
    for tenant in GHOSTS:
        for model in MODELS:
            answer = await ask(stub, server_settings, QueryRequest(model=model.name), tenant)
            assert answer.rows == [{"count": 0}], (tenant, answer)
            category = next(n for n, f in model.fields.items() if f.type is FieldType.ENUM)
            grouped = QueryRequest(model=model.name, group_by=f"{model.primary_key[0]},{category}")
            answer = await ask(stub, server_settings, grouped, tenant, rpc="StreamQuery")
            assert answer.rows == [], (tenant, answer)


async def test_the_longest_tenant_ids_are_refused_at_authentication(
    stub: Any, server_settings: Settings
) -> None:
    answer = await ask(stub, server_settings, QueryRequest(model="deals"), BYSTANDER)
    assert answer.error is not None
    assert answer.error.code() == grpc.StatusCode.UNAUTHENTICATED
    info, _, _ = _details(answer.error)
    assert info.metadata["type"] == "unauthorized"
    assert len(LONG_TENANT) == 128
    assert BYSTANDER.startswith(LONG_TENANT)


def _signed(settings: Settings, tenant_claim: object, *, algorithm: str = "HS256") -> str:
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, object] = {
        "sub": "isolation",
        "permissions": list(ALL_PERMISSIONS),
        "iat": now,
        "exp": now + dt.timedelta(hours=1),
    }
    if tenant_claim is not None:
        claims[settings.tenant_claim] = tenant_claim
    assert settings.jwt_secret is not None
    key = settings.jwt_secret.get_secret_value() if algorithm == "HS256" else ""
    return jwt.encode(claims, key, algorithm=algorithm)


@pytest.mark.parametrize(
    "tenant_claim",
    [["acme", "acme2"], {"tenant_id": "acme"}, "", 1, True, None],
    ids=["list", "object", "empty", "number", "bool", "missing"],
)
async def test_a_token_without_one_tenant_is_unauthenticated(
    stub: Any, server_settings: Settings, tenant_claim: object
) -> None:
    token = _signed(server_settings, tenant_claim)
    for rpc in ("Query", "StreamQuery"):
        answer = await ask(
            stub, server_settings, QueryRequest(model="deals"), "", rpc=rpc, token=token
        )
        assert answer.error is not None, answer
        assert answer.error.code() == grpc.StatusCode.UNAUTHENTICATED
        info, _, _ = _details(answer.error)
        assert info.metadata["type"] == "unauthorized"


async def test_an_unsigned_token_naming_another_tenant_is_unauthenticated(
    stub: Any, server_settings: Settings
) -> None:
    token = _signed(server_settings, "acme2", algorithm="none")
    answer = await ask(stub, server_settings, QueryRequest(model="deals"), "acme2", token=token)
    assert answer.error is not None, answer
    assert answer.error.code() == grpc.StatusCode.UNAUTHENTICATED


# --- the tenant column: the documented decision ---------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"filters": {"tenant_id": "eq.acme2"}}, "filters.tenant_id"),
        ({"filters": {"tenant_id": "not.is.null"}}, "filters.tenant_id"),
        ({"filters": {"or": "(id.gt.0,tenant_id.neq.x)"}}, "filters.or"),
        ({"filters": {"not.and": "(or(stage.eq.x,and(tenant_id.like.*)))"}}, "filters.not.and"),
        ({"group_by": "tenant_id"}, "groupBy"),
        ({"group_by": "stage, tenant_id "}, "groupBy"),
        ({"order": "tenant_id.desc", "group_by": "stage"}, "order"),
        ({"aggregate": "count_distinct", "field": "tenant_id"}, "field"),
        ({"field": "tenant_id"}, "field"),
        ({"metrics": (MetricRequest("max", "tenant_id"),)}, "metrics[0].field"),
    ],
)
async def test_naming_the_tenant_column_is_invalid_argument(
    stub: Any, server_settings: Settings, request_fields: dict[str, Any], field: str
) -> None:
    request = QueryRequest(model="deals", **request_fields)
    for rpc in ("Query", "StreamQuery"):
        answer = await ask(stub, server_settings, request, "acme", rpc=rpc)
        assert answer.error is not None, answer
        check_error(answer.error, invalid(field, "TENANT_COLUMN"), "acme", request)


async def test_an_alias_named_like_the_tenant_column_is_invalid_argument(
    stub: Any, server_settings: Settings
) -> None:
    request = QueryRequest(model="deals", metrics=(MetricRequest("count", "", TENANT_COLUMN),))
    answer = await ask(stub, server_settings, request, "acme")
    assert answer.error is not None
    check_error(answer.error, invalid("metrics[0].alias"), "acme", request)


# --- the token alone decides the tenant ---------------------------------------------------------


async def test_same_request_gives_each_tenant_its_own_answer(
    stub: Any, server_settings: Settings, isolated: Isolated
) -> None:
    request = QueryRequest(
        model="deals",
        group_by="stage",
        metrics=(
            MetricRequest("count"),
            MetricRequest("sum", "amount"),
            MetricRequest("min", "created_at"),
            MetricRequest("count_distinct", "title"),
        ),
    )
    answers = await asyncio.gather(
        *(check(stub, server_settings, isolated, request, tenant) for tenant in QUERYABLE)
    )
    stages = [{row["stage"] for row in rows or []} for rows in answers]
    for tenant, own in zip(QUERYABLE, stages, strict=True):
        assert own, tenant
        assert all(stage.endswith(MARKERS[tenant]) for stage in own)
    assert len({frozenset(s) for s in stages}) == len(QUERYABLE)


async def test_no_request_field_or_header_switches_the_tenant(
    stub: Any, server_settings: Settings, isolated: Isolated
) -> None:
    """Tenant A names tenant B every way a request can; A only ever gets A's answer."""
    for tenant in QUERYABLE:
        for other in TENANTS:
            if other == tenant:
                continue
            number = INDEX[other]
            probes = [
                QueryRequest(model="deals", filters={"title": f"like.*{marker(number)}*"}),
                QueryRequest(
                    model="deals",
                    filters={"or": f"(stage.ilike.*{marker(number)},id.gte.{number * SPAN})"},
                    group_by="stage",
                ),
                QueryRequest(
                    model="billing.invoices",
                    filters={"total": f"gte.{number * SPAN}", "id": f"lt.{(number + 1) * SPAN}"},
                ),
                QueryRequest(model="contacts", filters={"email": f"eq.{other}"}),
            ]
            headers: list[tuple[str, str | bytes]] = [
                ("x-tenant-id-bin", other.encode()),
                ("tenant-bin", other.encode()),
            ]
            if other.isascii() and other.isprintable():
                headers += [("x-tenant-id", other), ("tenant_id", other)]
            answers = await asyncio.gather(
                *(
                    ask(stub, server_settings, request, tenant, metadata=headers)
                    for request in probes
                )
            )
            for request, answer in zip(probes, answers, strict=True):
                assert answer.rows is not None, answer
                check_rows(
                    isolated, request, tenant, answer.rows, rpc="Query", settings=server_settings
                )
            # the own-range probes find nothing: every foreign row lies outside
            assert answers[0].rows == [{"count": 0}]
            assert answers[2].rows == [{"count": 0}]


async def test_permissions_are_per_module(stub: Any, server_settings: Settings) -> None:
    cases = [
        (("crm.*.read",), "billing.invoices"),
        (("crm.*.read",), "invoices"),
        (("crm.deals.read",), "crm.contacts"),
        (("billing.*.read",), "deals"),
        (("crm.deals.read", "billing.invoices.write"), "invoices"),
        (("*.deals.read",), "contacts"),
        ((), "deals"),
    ]
    for permissions, model in cases:
        request = QueryRequest(
            model=model, filters={"tenant_id": "eq.acme2"}, group_by="tenant_id", limit=2**32 - 1
        )
        for tenant in ("acme", "%"):
            for rpc in ("Query", "StreamQuery"):
                answer = await ask(
                    stub, server_settings, request, tenant, rpc=rpc, permissions=permissions
                )
                assert answer.error is not None, (permissions, model)
                # permission is checked before anything else of the request is read
                check_error(
                    answer.error,
                    Expect(grpc.StatusCode.PERMISSION_DENIED, frozenset({"PERMISSION_DENIED"})),
                    tenant,
                    request,
                )
    allowed = await ask(
        stub,
        server_settings,
        QueryRequest(model="contacts"),
        "acme",
        permissions=("crm.contacts.read",),
    )
    assert allowed.rows is not None
    wildcard = await ask(
        stub,
        server_settings,
        QueryRequest(model="billing.invoices"),
        "acme",
        permissions=("*.*.read",),
    )
    assert wildcard.rows is not None


def _substantial(rows: list[dict[str, Any]]) -> bool:
    """Whether a result holds something other than zero counts and NULLs."""
    return any(value not in (None, 0) for row in rows for value in row.values())


# --- random requests per tenant ---------------------------------------------------------------


@hypothesis.settings(ISOLATION, max_examples=200)
@given(data=st.data())
async def test_random_requests_see_only_their_own_rows(
    stub: Any, server_settings: Settings, isolated: Isolated, data: st.DataObject
) -> None:
    tenant = data.draw(st.sampled_from(QUERYABLE), label="tenant")
    request = data.draw(valid_request(isolated, tenant), label="request")
    rpc = data.draw(RPCS, label="rpc")
    rows = await check(stub, server_settings, isolated, request, tenant, rpc=rpc)
    hypothesis.event("no rows" if not rows else "rows" if _substantial(rows) else "zero rows")


@hypothesis.settings(ISOLATION, max_examples=250)
@given(data=st.data())
async def test_hostile_requests_get_documented_errors_or_their_own_rows(
    stub: Any, server_settings: Settings, isolated: Isolated, data: st.DataObject
) -> None:
    tenant = data.draw(st.sampled_from(QUERYABLE), label="tenant")
    rpc = data.draw(RPCS, label="rpc")
    request, expect = data.draw(hostile_case(isolated, rpc), label="case")
    await check(stub, server_settings, isolated, request, tenant, expect, rpc=rpc)
    hypothesis.event(f"{expect.code.name if expect.code else 'OK'} {sorted(expect.reasons)}")


@hypothesis.settings(ISOLATION, max_examples=25)
@given(data=st.data())
async def test_same_random_request_from_every_tenant_at_once(
    stub: Any, server_settings: Settings, isolated: Isolated, data: st.DataObject
) -> None:
    """Concurrent calls of all tenants: each gets the answer over its own rows only."""
    request = data.draw(valid_request(isolated), label="request")
    rpc = data.draw(RPCS, label="rpc")
    await asyncio.gather(
        *(check(stub, server_settings, isolated, request, tenant, rpc=rpc) for tenant in QUERYABLE)
    )


# --- engine statistics in the response meta -----------------------------------------------------


async def test_rows_scanned_says_only_how_many_granules_were_read(
    stub: Any, server_settings: Settings, isolated: Isolated, api_backend: ApiBackend
) -> None:
    """``meta.rowsScanned`` is a value of the response: it must not count others' rows.

    The engine's ``read_rows`` counts every row of the granules a query read, and tenants share
    the granules where their rows meet: reported exactly, ACME (80 deals) was told 1165, its
    neighbours' rows included. The service reports whole granules instead (``caller_stats``):
    at most the granules that hold the caller's own rows, plus one at each end of its run of rows
    in every part, whatever the neighbours store.
    """
    database = isolated.catalog.database
    over = []
    for model in MODELS:
        parts = await api_backend.writer.query_rows(
            "SELECT count() AS n FROM system.parts "
            f"WHERE database = '{database}' AND table = '{model.table}' AND active"
        )
        for tenant in QUERYABLE:
            headers = (("authorization", bearer(server_settings, tenant)),)
            response = await stub.Query(
                analytics_pb2.QueryRequest(model=model.qualified_name), metadata=headers
            )
            scanned = int(response.meta.rows_scanned)
            assert scanned % GRANULE_ROWS == 0, scanned
            own = isolated.versions[model.qualified_name][tenant]
            bound = (-(-own // GRANULE_ROWS) + 2 * int(parts[0]["n"])) * GRANULE_ROWS
            if scanned > bound:
                over.append((model.qualified_name, tenant, scanned, bound))
    assert not over, f"rowsScanned beyond the caller's own granules: {over}"


# --- found on the way: not isolation -----------------------------------------------------------


async def test_hour_buckets_on_a_lord_howe_dst_day(
    stub: Any, server_settings: Settings, isolated: Isolated
) -> None:
    """Lord Howe moves its clocks by 30 minutes: hour buckets are still local hours there
    (ClickHouse's toStartOfHour put them at HH:30 local for the rest of a transition day)."""
    request = QueryRequest(
        model="contacts",
        group_by="created_at",
        group_by_interval="hour",
        time_zone="Australia/Lord_Howe",
        filters={
            "created_at": "gte.2027-10-03T03:00:00+11:00",
            "and": "(created_at.lt.2027-10-04T00:00:00+11:00)",
        },
    )
    (model,) = isolated.catalog.find("contacts")
    if not evaluate(request, model, "acme", isolated.own_rows(model, "acme")):
        raise RuntimeError("acme has no contacts on the transition day: the test shows nothing")
    await check(stub, server_settings, isolated, request, "acme")
