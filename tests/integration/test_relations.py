"""Related models on the real engine: dotted paths against a Python evaluator that joins rows.

A catalog of its own, with every relation shape: deals -> contacts -> accounts (two hops, the
accounts' soft delete a bool, the contacts' a timestamp), and an event model whose actor relates
to the contacts. Tenants reuse the same ids, so a join that escaped its tenant condition would
find another tenant's row; foreign keys point at live, superseded, deleted, soft-deleted and
missing rows, and some are NULL. The reference below joins the rows as written, by the README's
definitions (LEFT JOIN of the live related row; a missing one reads NULL), without any SQL.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.auth import Principal
from service.backends.embedded import EmbeddedBackend
from service.backends.http import HttpBackend
from service.catalog import Catalog, CatalogError, Model, parse_catalog
from service.errors import AnalyticsError, ErrorKind
from service.insights.trend_request import TrendRequest, TrendSeries
from service.insights.trend_service import TrendService
from service.query.compiler import QueryLimits, compile_query
from service.query.request import MetricRequest, QueryRequest
from service.query_service import QueryService
from service.schema import SYNC_STATE_TABLE, all_ddl, sync_state_table
from tests.chdb_http import ChdbOverHttp
from tests.conftest import unique_database
from tests.integration.test_compiler_on_engine import Row, insert_statement, latest
from tests.relation_models import CATALOG, CATALOG_DOCUMENT

pytestmark = pytest.mark.integration

ENGINE = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

ACCOUNTS = CATALOG.models[("sales", "accounts")]
CONTACTS = CATALOG.models[("sales", "contacts")]
DEALS = CATALOG.models[("sales", "deals")]
EVENTS = CATALOG.models[("sales", "events")]

TENANT_A = "tenant_a"
TENANT_B = "tenant_b"
TENANT_X = "x' OR '1'='1"
TENANTS = (TENANT_A, TENANT_B, TENANT_X)
#: Keys per model; foreign keys range a little beyond, so some point at no row at all.
KEYS = {ACCOUNTS.table: 6, CONTACTS.table: 30, DEALS.table: 160, EVENTS.table: 200}
#: A contact whose latest version is a delete, and deal 1 points at it (random data may not).
DELETED_CONTACT = 2
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAYS = 90

#: Each tenant has values of its own: an answer showing another tenant's value leaked it.
POOLS = {
    "plan": {TENANT_A: ["free", "pro", "team"], TENANT_B: ["B-free", "B-pro"]},
    "region": {TENANT_A: ["eu", "us", ""], TENANT_B: ["B-eu"]},
    "country": {TENANT_A: ["DE", "FR", "US", "GB"], TENANT_B: ["B-DE", "B-US"]},
    "status": {TENANT_A: ["active", "lead", "churned"], TENANT_B: ["B-active"]},
    "stage": {TENANT_A: ["open", "won", "lost"], TENANT_B: ["B-won"]},
    "event": {TENANT_A: ["signed_up", "invited", "purchased"], TENANT_B: ["B-signed_up"]},
}


def _pool(name: str, tenant: str) -> list[str]:
    return POOLS[name].get(tenant) or [f"{tenant}-{value}" for value in POOLS[name][TENANT_A]]


def _maybe(rng: random.Random, value: Any, null_share: float = 0.15) -> Any:
    return None if rng.random() < null_share else value


def _values(model: Model, tenant: str, key: int, rng: random.Random) -> dict[str, Any]:
    moment = START + dt.timedelta(seconds=rng.randint(0, DAYS * 86400 - 1))
    if model is ACCOUNTS:
        return {
            "id": key,
            "plan": rng.choice(_pool("plan", tenant)),
            "region": _maybe(rng, rng.choice(_pool("region", tenant))),
            "archived": rng.choice([None, None, None, False, True]),
        }
    if model is CONTACTS:
        return {
            "id": key,
            "account_id": _maybe(rng, rng.randint(1, KEYS[ACCOUNTS.table] + 2)),
            "country": _maybe(rng, rng.choice(_pool("country", tenant))),
            "status": rng.choice(_pool("status", tenant)),
            "score": _maybe(rng, rng.choice([0.5, 1.25, -3.0, 10.0])),
            "deleted_at": moment if rng.random() < 0.15 else None,
        }
    if model is DEALS:
        return {
            "id": key,
            "contact_id": _maybe(rng, rng.randint(1, KEYS[CONTACTS.table] + 4)),
            "amount": _maybe(rng, Decimal(rng.randint(-5000, 900000)) / 100, 0.1),
            "stage": rng.choice(_pool("stage", tenant)),
            "created_at": moment,
            "deleted_at": moment if rng.random() < 0.1 else None,
        }
    return {
        "event_id": str(uuid.UUID(int=key)),
        "event": rng.choice(_pool("event", tenant)),
        "contact_id": rng.randint(1, KEYS[CONTACTS.table] + 4),
        "timestamp": moment,
    }


def generate(model: Model, tenant: str, seed: int) -> list[Row]:
    """Versions of every key: superseded ones, hard deletes, soft deletes (events: resends)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for key in range(1, KEYS[model.table] + 1):
        first: dict[str, Any] | None = None
        for version in range(1, rng.choice([1, 1, 2, 3]) + 1):
            values = _values(model, tenant, key, rng)
            if model.is_events:
                first = first or values
                values = first  # a resent event is the same event
            if model is DEALS and key == 1:
                values = {**values, "contact_id": DELETED_CONTACT}
            rows.append(Row(tenant, values, version, int(rng.random() < 0.08)))
        if model is CONTACTS and key == DELETED_CONTACT:
            rows[-1] = Row(tenant, rows[-1].values, rows[-1].version, 1)
        if model is DEALS and key == 1:
            rows[-1] = Row(tenant, rows[-1].values, rows[-1].version, 0)
    return rows


@dataclass
class Data:
    """The database, its catalog and every row version written to it."""

    backend: EmbeddedBackend
    catalog: Catalog
    rows: dict[str, list[Row]]

    def live(self, model: Model, tenant: str, *, guard: bool = True) -> list[Row]:
        """What FINAL, the deleted-row guard and (``guard``) the soft-delete guard leave."""
        kept = [
            r
            for r in latest(model, self.rows[model.table])
            if r.tenant == tenant and not r.is_deleted
        ]
        column = model.soft_delete_column
        if guard and column:
            kept = [r for r in kept if r.values[column] in (None, False)]
        return kept


@pytest_asyncio.fixture(scope="module")
async def data(embedded_backend: EmbeddedBackend) -> AsyncIterator[Data]:
    catalog = Catalog(unique_database("relations"), CATALOG.models)
    rows = {
        model.table: [
            row
            for number, tenant in enumerate(TENANTS)
            for row in generate(model, tenant, seed=100 * index + number)
        ]
        for index, model in enumerate(catalog.models.values())
    }
    for statement in all_ddl(catalog):
        await embedded_backend.command(statement)
    for model in catalog.models.values():
        for tenant in TENANTS:
            mine = [r for r in rows[model.table] if r.tenant == tenant]
            await embedded_backend.command(insert_statement(catalog, model, mine))
    yield Data(embedded_backend, catalog, rows)
    await embedded_backend.command(f"DROP DATABASE IF EXISTS `{catalog.database}`")


# --- the reference ------------------------------------------------------------------------------

#: Paths through relations from each model, with the models they end on.
PATHS: dict[str, list[tuple[str, ...]]] = {
    DEALS.table: [(), ("contact",), ("contact", "account")],
    EVENTS.table: [(), ("contact",), ("contact", "account")],
}


def _target(model: Model, path: tuple[str, ...]) -> Model:
    for hop in path:
        model = model.relations[hop].target
    return model


def related_values(
    data: Data, model: Model, tenant: str, row: Row, filter_names: set[str]
) -> dict[str, Any]:
    """Every field a request on ``model`` may name for ``row``, dotted paths included."""
    values = dict(row.values)
    current: dict[str, Any] | None = row.values
    current_model = model
    path: tuple[str, ...] = ()
    for hop in ("contact", "account"):
        if hop not in current_model.relations:
            break
        relation = current_model.relations[hop]
        path = (*path, hop)
        target = relation.target
        soft = ".".join((*path, target.soft_delete_column or ""))
        keyed = {
            r.values[target.primary_key[0]]: r.values
            for r in data.live(target, tenant, guard=soft not in filter_names)
        }
        found = keyed.get(current[relation.field]) if current is not None else None
        for name in target.fields:
            values[".".join((*path, name))] = None if found is None else found[name]
        current, current_model = found, target
    return values


def _matches(values: dict[str, Any], field: str, operator: str, value: Any) -> bool:
    """SQL's three-valued comparison, where unknown (a NULL operand) leaves the row out."""
    got = values[field]
    if operator == "is":
        return got is None
    if operator == "not.is":
        return got is not None
    if got is None:
        return False
    if operator == "eq":
        return bool(got == value)
    if operator in ("neq", "not.eq"):
        return bool(got != value)
    if operator == "like":
        return fnmatch.fnmatchcase(got, value)
    if operator == "in":
        return got in value
    if operator == "gt":
        return bool(got > value)
    raise AssertionError(operator)


@dataclass(frozen=True)
class Case:
    """A random request and what the reference needs to answer it."""

    model: Model
    group_by: tuple[str, ...]
    filters: tuple[tuple[str, str, Any], ...]  # (field, operator, python value)
    metrics: tuple[tuple[str, str], ...]  # (aggregate, field)

    def request(self) -> QueryRequest:
        filters: dict[str, str] = {}
        for field, operator, value in self.filters:
            if operator in ("is", "not.is"):
                filters[field] = f"{operator}.null"
            elif operator == "in":
                filters[field] = "in.(" + ",".join(f'"{v}"' for v in value) + ")"
            else:
                filters[field] = f"{operator}.{value}"
        return self._request(filters)

    def tree_request(self, kind: str) -> QueryRequest:
        """The same filters as one tree: ``and=(...)`` or ``or=(and(...))`` (same meaning)."""
        items = []
        for field, operator, value in self.filters:
            if operator in ("is", "not.is"):
                items.append(f"{field}.{operator}.null")
            elif operator == "in":
                items.append(f"{field}.in.(" + ",".join(f'"{v}"' for v in value) + ")")
            elif isinstance(value, str):
                items.append(f'{field}.{operator}."{value}"')
            else:
                items.append(f"{field}.{operator}.{value}")
        body = ",".join(items)
        return self._request({"and": f"({body})"} if kind == "and" else {"or": f"(and({body}))"})

    def _request(self, filters: dict[str, str]) -> QueryRequest:
        return QueryRequest(
            model=self.model.qualified_name,
            group_by=",".join(self.group_by),
            metrics=tuple(
                MetricRequest(aggregate, field, alias=f"m{index}")
                for index, (aggregate, field) in enumerate(self.metrics)
            ),
            filters=filters,
            limit=10_000,
        )


def reference(data: Data, case: Case, tenant: str) -> list[dict[str, Any]]:
    """The answer by the README's definitions, computed from the rows as written."""
    filter_names = {field for field, _, _ in case.filters}
    guard = (case.model.soft_delete_column or "-") not in filter_names
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in data.live(case.model, tenant, guard=guard):
        values = related_values(data, case.model, tenant, row, filter_names)
        if all(_matches(values, *condition) for condition in case.filters):
            groups.setdefault(tuple(values[g] for g in case.group_by), []).append(values)
    if not case.group_by and not groups:
        groups[()] = []
    answer = []
    for key, members in groups.items():
        out: dict[str, Any] = dict(zip(case.group_by, key, strict=True))
        for index, (aggregate, field) in enumerate(case.metrics):
            present = [m[field] for m in members if field and m[field] is not None]
            if aggregate == "count":
                out[f"m{index}"] = len(members) if not field else len(present)
            elif aggregate == "sum":
                out[f"m{index}"] = sum(present) if present else None
            elif aggregate == "count_distinct":
                out[f"m{index}"] = len(set(present))
            elif aggregate == "min":
                out[f"m{index}"] = min(present, default=None)
            else:
                out[f"m{index}"] = max(present, default=None)
        answer.append(out)
    return answer


def canonical(rows: Iterable[dict[str, Any]]) -> list[tuple[tuple[str, str], ...]]:
    """Rows in a comparable order, values as text (timestamps in UTC, floats rounded)."""

    def text(value: Any) -> str:
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if isinstance(value, float):
            return f"{value:.9g}"
        if isinstance(value, Decimal):
            return f"{value.normalize():f}"
        return repr(value)

    return sorted(tuple(sorted((k, text(v)) for k, v in row.items())) for row in rows)


def engine_rows(result_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The service's answer with timestamps parsed back (they arrive as ISO text)."""
    out = []
    for row in result_rows:
        fixed = {}
        for key, value in row.items():
            is_time = isinstance(value, str) and key.endswith(("created_at", "deleted_at"))
            fixed[key] = (
                dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if is_time else value
            )
        out.append(fixed)
    return out


async def run(data: Data, request: QueryRequest, tenant: str) -> list[dict[str, Any]]:
    compiled = compile_query(request, data.catalog, tenant, QueryLimits(max_limit=10_000))
    result = await data.backend.execute(compiled, timeout_seconds=60, query_id=uuid.uuid4().hex)
    names = {column.alias: column.key for column in compiled.columns}
    return engine_rows([{names[k]: v for k, v in row.items()} for row in result.table.to_pylist()])


# --- random requests ----------------------------------------------------------------------------

_FIELDS_BY_PATH: dict[tuple[str, ...], list[str]] = {
    ("contact",): ["country", "status", "id", "score", "account_id"],
    ("contact", "account"): ["plan", "region", "archived", "id"],
}
_FILTER_VALUES: dict[str, list[Any]] = {
    "country": ["DE", "US", "B-DE"],
    "status": ["active", "churned", "B-active"],
    "plan": ["pro", "free", "B-pro"],
    "region": ["eu", "", "B-eu"],
    "stage": ["won", "open", "B-won"],
    "event": ["signed_up", "purchased"],
}


@st.composite
def cases(draw: st.DrawFn) -> Case:
    model = draw(st.sampled_from([DEALS, EVENTS]))
    own = ["stage"] if model is DEALS else ["event"]
    related = [".".join((*path, name)) for path, names in _FIELDS_BY_PATH.items() for name in names]
    group_by = tuple(draw(st.lists(st.sampled_from(own + related), unique=True, max_size=2)))
    filterable = [name for name in own + related if name.rsplit(".", 1)[-1] in _FILTER_VALUES] + [
        "contact.deleted_at",
        "contact.account.archived",
        "contact.score",
    ]
    filters: list[tuple[str, str, Any]] = []
    for field in draw(st.lists(st.sampled_from(filterable), unique=True, max_size=3)):
        leaf = field.rsplit(".", 1)[-1]
        if leaf in ("deleted_at", "archived"):
            operator = draw(st.sampled_from(["is", "not.is"]))
            filters.append((field, operator, None))
        elif leaf == "score":
            filters.append((field, "gt", draw(st.sampled_from([0.0, 1.0]))))
        else:
            operator = draw(st.sampled_from(["eq", "neq", "not.eq", "in", "like", "is", "not.is"]))
            pool = _FILTER_VALUES[leaf]
            if operator == "in":
                value: Any = tuple(draw(st.lists(st.sampled_from(pool), min_size=1, unique=True)))
            elif operator in ("eq", "neq", "not.eq"):
                value = draw(st.sampled_from(pool))
            elif operator == "like":
                value = draw(st.sampled_from(["*E", "B-*", "*u*"]))
            else:
                value = None
            filters.append((field, operator, value))
    numeric = ["amount"] if model is DEALS else []
    metric = st.one_of(
        st.just(("count", "")),
        st.tuples(st.just("count_distinct"), st.sampled_from(related)),
        st.tuples(
            st.sampled_from(["min", "max"]), st.sampled_from(["contact.score", "contact.id"])
        ),
        *([st.tuples(st.just("sum"), st.sampled_from(numeric))] if numeric else []),
        st.tuples(st.just("sum"), st.just("contact.score")),
    )
    metrics = tuple(draw(st.lists(metric, min_size=1, max_size=3)))
    return Case(model, group_by, tuple(filters), metrics)


@ENGINE
@given(case=cases(), tenant=st.sampled_from(TENANTS))
async def test_random_requests_equal_the_joining_reference(
    data: Data, case: Case, tenant: str
) -> None:
    got = await run(data, case.request(), tenant)
    assert canonical(got) == canonical(reference(data, case, tenant)), case.request()


#: Operators whose top-level filter on a related field moves into the joined subquery.
_PUSHED = ("eq", "in", "like", "gt")


@ENGINE
@given(case=cases(), tenant=st.sampled_from(TENANTS))
async def test_pushed_filters_answer_as_filters_after_the_join_do(
    data: Data, case: Case, tenant: str
) -> None:
    """A null-rejecting filter on a related field runs inside the joined subquery, its join INNER.

    The same filters in one ``and`` tree are pushed the same way; inside ``or=(and(...))`` none
    is (they stay in the outer WHERE, over the LEFT JOIN's NULLs). All three answers equal the
    reference. ``is.null``, ``neq``, ``not.`` stay outside in every form.
    """
    expected = canonical(reference(data, case, tenant))
    forms = {
        "map": case.request(),
        "and": case.tree_request("and"),
        "or": case.tree_request("or"),
    }
    pushes = any("." in field and operator in _PUSHED for field, operator, _ in case.filters)
    for form, request in forms.items():
        if not case.filters and form != "map":
            continue
        compiled = compile_query(request, data.catalog, tenant, QueryLimits(max_limit=10_000))
        assert ("INNER JOIN" in compiled.sql) == (pushes and form != "or"), (form, compiled.sql)
        assert canonical(await run(data, request, tenant)) == expected, (form, request)


def test_only_null_rejecting_filters_move_into_the_join() -> None:
    def sql(filters: dict[str, str]) -> str:
        return compile_query(
            QueryRequest(model="deals", group_by="stage", filters=filters), CATALOG, TENANT_A
        ).sql

    for kept in (
        {"contact.status": "is.null"},
        {"contact.status": "neq.active"},
        {"contact.status": "not.eq.active"},
        {"not.and": "(contact.status.eq.active)"},
        {"or": "(contact.status.eq.active,stage.eq.won)"},
        {"contact.account.archived": "not.is.true"},
    ):
        assert "INNER JOIN" not in sql(kept), kept
    two_hops = sql({"contact.account.plan": "eq.pro", "contact.status": "is.null"})
    assert two_hops.count("INNER JOIN") == 2, two_hops
    assert "j_7contact.`status` IS NULL" in two_hops
    assert "(t.`plan` = " in two_hops
    mixed = sql({"and": "(contact.status.eq.active,contact.country.is.null,stage.eq.won)"})
    assert "INNER JOIN" in mixed
    assert "(t.`status` = " in mixed
    assert "j_7contact.`country` IS NULL" in mixed


def test_a_pushed_filter_keeps_its_validation_errors() -> None:
    with pytest.raises(AnalyticsError) as caught:
        compile_query(
            QueryRequest(model="deals", filters={"contact.status": "is.true", "stage": "eq.won"}),
            CATALOG,
            TENANT_A,
        )
    assert caught.value.message.startswith("filters.contact.status:")
    assert "'contact.status'" in caught.value.message


async def test_sums_are_unchanged_by_joining(data: Data) -> None:
    """Grouping by a related field splits the requested rows; it never multiplies them."""
    for tenant in TENANTS:
        plain = await run(
            data,
            QueryRequest(
                model="deals", metrics=(MetricRequest("sum", "amount"), MetricRequest("count"))
            ),
            tenant,
        )
        for group_by in ("contact.country", "contact.account.plan", "contact.id,contact.status"):
            split = await run(
                data,
                QueryRequest(
                    model="deals",
                    group_by=group_by,
                    metrics=(MetricRequest("sum", "amount"), MetricRequest("count")),
                ),
                tenant,
            )
            assert sum(r["count"] for r in split) == plain[0]["count"]
            assert sum(r["sum_amount"] or 0 for r in split) == plain[0]["sum_amount"]


async def test_other_tenants_rows_with_equal_ids_are_never_joined(data: Data) -> None:
    """Both tenants have contact 1..30: tenant A's answer shows none of tenant B's values."""
    for group_by in ("contact.country", "contact.status", "contact.account.plan"):
        rows = await run(data, QueryRequest(model="deals", group_by=group_by), TENANT_A)
        values = {row[group_by] for row in rows}
        assert values, group_by
        assert not any(isinstance(v, str) and (v.startswith("B-") or "'" in v) for v in values)
        assert None in values  # deals without a (live) contact read NULL there


async def test_missing_deleted_and_soft_deleted_rows_read_null(data: Data) -> None:
    tenant = TENANT_A
    live = {r.values["id"]: r.values for r in data.live(CONTACTS, tenant)}
    every = {
        r.values["id"]: r for r in latest(CONTACTS, data.rows[CONTACTS.table]) if r.tenant == tenant
    }
    got = await run(
        data, QueryRequest(model="deals", group_by="id,contact.id,contact.status"), tenant
    )
    by_deal = {row["id"]: row for row in got}
    kinds = set()
    for deal in data.live(DEALS, tenant):
        contact = deal.values["contact_id"]
        row = by_deal[deal.values["id"]]
        if contact in live:
            assert (row["contact.id"], row["contact.status"]) == (contact, live[contact]["status"])
            kinds.add("live")
            continue
        assert row["contact.id"] is None
        assert row["contact.status"] is None
        if contact is None:
            kinds.add("null key")
        elif contact not in every:
            kinds.add("missing")
        elif every[contact].is_deleted:
            kinds.add("deleted")
        else:
            kinds.add("soft-deleted")
    assert kinds == {"live", "null key", "missing", "deleted", "soft-deleted"}


async def test_naming_the_related_soft_delete_column_shows_soft_deleted_rows(data: Data) -> None:
    got = await run(
        data,
        QueryRequest(
            model="deals",
            group_by="contact.id",
            filters={"contact.deleted_at": "not.is.null"},
        ),
        TENANT_A,
    )
    soft = {
        r.values["id"]
        for r in data.live(CONTACTS, TENANT_A, guard=False)
        if r.values["deleted_at"] is not None
    }
    assert soft
    assert {row["contact.id"] for row in got} <= soft
    assert {row["contact.id"] for row in got}


async def test_a_trend_breaks_down_by_a_related_field(data: Data) -> None:
    request = TrendRequest(
        model="sales.deals",
        series=(
            TrendSeries(aggregate="sum", field="amount"),
            TrendSeries(filters={"contact.status": "eq.active"}),
        ),
        date_from="2026-01-01",
        date_to="2026-03-31",
        interval="month",
        breakdown="contact.account.plan",
    )
    service = TrendService(data.catalog, data.backend, timeout_seconds=60)
    principal = Principal("t", TENANT_A, frozenset({"sales.*.read"}))
    answer = (await service.run(principal, request, remaining=None, rpc="Trend")).answer
    expected: dict[tuple[str, Any], list[Any]] = {}
    for deal in data.live(DEALS, TENANT_A):
        values = related_values(data, DEALS, TENANT_A, deal, set())
        month = deal.values["created_at"].month - 1
        plan = values["contact.account.plan"]
        sums = expected.setdefault(("A", plan), [Decimal(0)] * 3)
        sums[month] += deal.values["amount"] or 0
        counts = expected.setdefault(("B", plan), [0] * 3)
        counts[month] += values["contact.status"] == "active"
    got = {
        (line.series, line.breakdown_value): line.values
        for line in answer.lines
        if not line.is_other
    }
    assert got == expected


async def test_the_http_backend_answers_joins_identically(
    data: Data, chdb_front: ChdbOverHttp
) -> None:
    http = HttpBackend(chdb_front.url, pool_size=2)
    try:
        for request in (
            QueryRequest(
                model="deals", group_by="contact.country", aggregate="sum", field="amount"
            ),
            QueryRequest(
                model="events",
                group_by="contact.account.plan",
                filters={"contact.status": "neq.lead"},
            ),
        ):
            compiled = compile_query(request, data.catalog, TENANT_A)
            embedded = await data.backend.execute(
                compiled, timeout_seconds=30, query_id=uuid.uuid4().hex
            )
            over_http = await http.execute(compiled, timeout_seconds=30, query_id=uuid.uuid4().hex)
            assert over_http.table.to_pylist() == embedded.table.to_pylist()
    finally:
        await http.close()


# --- permissions, freshness and refusals --------------------------------------------------------


def _service(data: Data) -> QueryService:
    return QueryService(
        data.catalog,
        data.backend,
        limits=QueryLimits(),
        stream_limits=QueryLimits(),
        timeout_seconds=30,
    )


async def test_a_related_model_needs_its_own_read_permission(data: Data) -> None:
    principal = Principal("t", TENANT_A, frozenset({"sales.deals.read"}))
    service = _service(data)
    await service.run(
        principal, QueryRequest(model="deals", group_by="stage"), remaining=None, rpc="Query"
    )
    with pytest.raises(AnalyticsError) as caught:
        await service.run(
            principal,
            QueryRequest(model="deals", group_by="contact.account.plan"),
            remaining=None,
            rpc="Query",
        )
    assert caught.value.kind is ErrorKind.FORBIDDEN
    assert "sales.contacts.read" in caught.value.message


async def test_last_sync_at_is_the_oldest_of_the_tables_read(data: Data) -> None:
    service = _service(data)
    principal = Principal("t", TENANT_A, frozenset({"sales.*.read"}))
    deals_synced = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
    contacts_synced = dt.datetime(2026, 5, 1, 11, tzinfo=dt.UTC)
    accounts_synced = dt.datetime(2026, 5, 1, 10, tzinfo=dt.UTC)

    async def last_sync(group_by: str) -> dt.datetime | None:
        request = QueryRequest(model="deals", group_by=group_by)
        outcome = await service.run(principal, request, remaining=None, rpc="Query")
        return outcome.last_sync_at

    synced = [(DEALS, deals_synced), (CONTACTS, contacts_synced)]
    await data.backend.insert_arrow(
        data.catalog.database,
        SYNC_STATE_TABLE,
        sync_state_table(
            [
                {
                    "table_name": model.table,
                    "source": "loader",
                    "last_sync_at": at,
                    "updated_at": at,
                }
                for model, at in synced
            ]
        ),
    )
    assert await last_sync("stage") == deals_synced
    assert await last_sync("contact.country") == contacts_synced
    # accounts never synced: an answer reading them promises nothing
    assert await last_sync("contact.account.plan") is None
    await data.backend.insert_arrow(
        data.catalog.database,
        SYNC_STATE_TABLE,
        sync_state_table(
            [
                {
                    "table_name": ACCOUNTS.table,
                    "source": "loader",
                    "last_sync_at": accounts_synced,
                    "updated_at": accounts_synced,
                }
            ]
        ),
    )
    assert await last_sync("contact.account.plan") == accounts_synced


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("nobody.country", "UNKNOWN_RELATION"),
        ("stage.country", "NOT_A_RELATION"),
        ("contact.tenant_id", "TENANT_COLUMN"),
        ("contact.account.contact.id", "TOO_MANY_HOPS"),
        ("contact.nothing", "UNKNOWN_FIELD"),
        ("contact.account.nothing", "UNKNOWN_FIELD"),
        ("contact.country.x", "NOT_A_RELATION"),
    ],
)
@pytest.mark.parametrize("place", ["groupBy", "filters", "field"])
def test_hostile_paths_are_refused_naming_the_field(path: str, reason: str, place: str) -> None:
    request: Callable[[], QueryRequest] = {
        "groupBy": lambda: QueryRequest(model="deals", group_by=path),
        "filters": lambda: QueryRequest(model="deals", filters={path: "eq.1"}),
        "field": lambda: QueryRequest(model="deals", aggregate="count_distinct", field=path),
    }[place]
    with pytest.raises(AnalyticsError) as caught:
        compile_query(request(), CATALOG, TENANT_A)
    assert caught.value.kind is ErrorKind.VALIDATION
    assert caught.value.reason == reason
    assert caught.value.message.startswith(f"{place if place != 'filters' else 'filters.' + path}:")


def test_catalog_relations_are_validated() -> None:
    def broken(relations: dict[str, Any]) -> str:
        document = {**CATALOG_DOCUMENT, "models": [dict(m) for m in CATALOG_DOCUMENT["models"]]}
        document["models"][2] = {**document["models"][2], "relations": relations}
        with pytest.raises(CatalogError) as caught:
            parse_catalog(document)
        return str(caught.value)

    assert "'owner_id' is not a field" in broken(
        {"owner": {"field": "owner_id", "target": "sales.contacts.id"}}
    )
    assert "not the primary key" in broken(
        {"contact": {"field": "contact_id", "target": "sales.contacts.account_id"}}
    )
    assert "no model sales.people" in broken(
        {"contact": {"field": "contact_id", "target": "sales.people.id"}}
    )
    assert "is decimal but sales.contacts.id is int" in broken(
        {"contact": {"field": "amount", "target": "sales.contacts.id"}}
    )
    assert "event model" in broken(
        {"e": {"field": "contact_id", "target": "sales.events.event_id"}}
    )
    assert "also a field" in broken(
        {"stage": {"field": "contact_id", "target": "sales.contacts.id"}}
    )
    assert "module.model.key" in broken(
        {"contact": {"field": "contact_id", "target": "sales.contacts"}}
    )
    assert "unknown keys" in broken(
        {"contact": {"field": "contact_id", "target": "sales.contacts.id", "on": "x"}}
    )


async def test_stream_query_takes_dotted_paths(data: Data) -> None:
    service = _service(data)
    principal = Principal("t", TENANT_A, frozenset({"sales.*.read"}))
    request = QueryRequest(
        model="deals",
        group_by="id,contact.account.plan",
        filters={"contact.status": "neq.lead"},
        order="id",
    )
    unary = await service.run(principal, request, remaining=None, rpc="Query")
    meta: list[Any] = []
    streamed = [
        row
        async for _, batch in service.stream(
            principal, request, remaining=None, rpc="StreamQuery", meta_sink=meta
        )
        for row in batch.to_pylist()
    ]
    assert streamed == unary.table.to_pylist()
    assert len(streamed) > 10
    assert meta
