"""Join speed: a ``Query`` through a relation against hand-written SQL on the raw engine.

The data: N deals (10 M) and a tenth as many contacts (1 M) of the benchmark tenant in the
shipped catalog's ``crm_deals`` and ``crm_contacts`` tables (database ``bench_join``, the
replica DDL of ``service/schema.py``), and a tenth of each for three other tenants whose ids are
the same numbers (so the tenant condition on the joined side has equal ids to keep apart).
Generated column by column with numpy and inserted as Arrow, a million rows an insert, in CDC
order: a first version of every key, then a second version of 10 % of them (another stage,
amount and contact for a deal; another status and country for a contact); 3 % of keys end
soft-deleted and 1 % in a tombstone; 1 % of deals name a contact id that no contact has. Every
partition is then merged into one part (``OPTIMIZE ... FINAL``, the settled replica), and a last
batch of recent changes (a third version of 0.5 % of each tenant's keys: updates, soft deletes
and tombstones of the newest ids) is inserted, with merges stopped so that it stays in parts of
its own: FINAL has versions to collapse on both sides of the join, and both sides read the same
parts throughout.

The requests (``VARIANTS``): deals grouped by ``contact.country`` with ``sum(amount)``, filtered
on ``contact.status = active`` alone and with a stage (a filter on each side of the join), and
one with the stage filter only (the LEFT JOIN kept: deals without a live contact are a NULL
group). A is ``QueryService.run`` in this process on the embedded backend: authorisation,
``compile_query``, the backend's execution (the same pooled chDB connections and SETTINGS the
served process uses), the freshness lookup and the audit record. B is chDB in this process
running the SQL a ClickHouse expert writes for the same answer (``raw_sql``): FINAL on both
tables, the tenant condition and deleted-row guards on both sides, the status filter inside the
contacts subquery, an INNER JOIN when the related filter drops deals without a contact and a
LEFT JOIN (``join_use_nulls``) when it does not. Both answers are first checked exactly against
the ground truth computed from the generated arrays. Runs alternate (A then B, then B then A)
after a warm-up; p50 and p95 of each, ratio at p50.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.event_ingest import COUNTRIES
from bench.raw_engine import RawEngine
from bench.report import Figure, at_most, median, milliseconds, percentile
from service.auth import Principal
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, Model, parse_catalog
from service.demo.arrow_columns import category_array, decimal_array, timestamp_array
from service.query.compiler import QueryLimits
from service.query.request import MetricRequest, QueryRequest
from service.query_service import QueryService
from service.schema import database_ddl, replica_table_ddl, sync_state_ddl
from service.settings import DEFAULT_CATALOG

TARGET = 1.2
DATABASE = "bench_join"
TENANT = "bench"
OTHER_TENANTS = ("bench-other-1", "bench-other-2", "bench-other-3")
OTHER_SHARE = 0.1
CONTACTS_PER_DEAL = 0.1
CHUNK_ROWS = 1_000_000
REVISED = 0.10
"""Share of keys with a second version."""
SOFT_DELETED = 0.03
TOMBSTONED = 0.01
MISSING_CONTACT = 0.01
"""Share of deals whose contact id no contact has."""
LATE = 0.005
"""Share of keys with a third version inserted after the merge (the newest ids)."""
STATUSES = ("lead", "active", "inactive", "churned")
_STATUS_WEIGHTS = (0.18, 0.52, 0.20, 0.10)
STAGES = ("lead", "qualified", "proposal", "negotiation", "closed_won", "closed_lost")
_CURRENCIES = ("USD", "EUR", "GBP", "CAD", "AUD", "JPY")
_TITLES = ("Renewal", "Expansion", "New business", "Upsell", "Pilot", "Migration")
_START_US = 1_735_689_600_000_000  # 2025-01-01 UTC
_SPAN_US = 365 * 86_400 * 1_000_000


@dataclass(frozen=True)
class Variant:
    """One request of the benchmark."""

    label: str
    status: str | None
    """The ``contact.status`` filter (None: no related filter, the LEFT JOIN is kept)."""
    stage: str | None
    judged: bool

    def request(self) -> QueryRequest:
        """The ``Query`` request."""
        filters = {}
        if self.status is not None:
            filters["contact.status"] = f"eq.{self.status}"
        if self.stage is not None:
            filters["stage"] = f"eq.{self.stage}"
        return QueryRequest(
            model="crm.deals",
            group_by="contact.country",
            metrics=(MetricRequest("sum", "amount"),),
            filters=filters,
        )


VARIANTS = (
    Variant("contact.status = active", "active", None, judged=True),
    Variant("contact.status = active, stage = closed_won", "active", "closed_won", judged=True),
    Variant("stage = closed_won, LEFT JOIN kept", None, "closed_won", judged=False),
)

Answer = dict[str | None, Decimal]
"""Country (None: no live contact) -> sum of amount."""


@dataclass
class _State:
    """Final column values per key of one tenant's table (numpy), as the generator keeps them."""

    columns: dict[str, np.ndarray] = field(default_factory=dict)
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    """The latest version is a tombstone."""


def raw_sql(variant: Variant, database: str = DATABASE) -> str:
    """B: the statement a ClickHouse expert writes for ``variant``."""
    status = " AND status = {status:String}" if variant.status is not None else ""
    stage = " AND d.stage = {stage:String}" if variant.stage is not None else ""
    join = "INNER JOIN" if variant.status is not None else "LEFT JOIN"
    settings = "" if variant.status is not None else " SETTINGS join_use_nulls = 1"
    # Identifiers are this module's constants; values are bound parameters.
    return (
        "SELECT c.country AS country, sum(d.amount) AS amount "  # noqa: S608
        f"FROM `{database}`.`crm_deals` AS d FINAL "
        f"{join} (SELECT id, country FROM `{database}`.`crm_contacts` FINAL "
        "WHERE tenant_id = {tenant:String} AND _is_deleted = 0 AND deleted_at IS NULL"
        f"{status}) AS c ON d.contact_id = c.id "
        "WHERE d.tenant_id = {tenant:String} AND d._is_deleted = 0 AND d.deleted_at IS NULL"
        f"{stage} GROUP BY country{settings}"
    )


def raw_parameters(variant: Variant) -> dict[str, str]:
    """The bound values of ``raw_sql``."""
    parameters = {"tenant": TENANT}
    if variant.status is not None:
        parameters["status"] = variant.status
    if variant.stage is not None:
        parameters["stage"] = variant.stage
    return parameters


def bench_catalog(database: str = DATABASE) -> Catalog:
    """The shipped catalog in the benchmark's database."""
    text = DEFAULT_CATALOG.read_text(encoding="utf-8")
    shipped = 'database = "analytics"\n'
    if text.count(shipped) != 1:
        raise RuntimeError("the shipped catalog's database line moved")
    document = tomllib.loads(text.replace(shipped, f'database = "{database}"\n'))
    return parse_catalog(document, origin="join bench catalog")


def _contact_columns(rng: np.random.Generator, ids: np.ndarray) -> dict[str, np.ndarray]:
    count = len(ids)
    created = _START_US + rng.integers(0, _SPAN_US, count)
    return {
        "id": ids,
        "status": rng.choice(len(STATUSES), count, p=_STATUS_WEIGHTS),
        "country": rng.choice(len(COUNTRIES), count, p=_country_weights()),
        "lifetime_value": rng.integers(0, 10_000_000, count),
        "score": rng.random(count) * 100,
        "is_subscribed": rng.random(count) < 0.6,
        "created_at": created,
        "updated_at": created + rng.integers(0, 86_400_000_000, count),
        "deleted_at": np.full(count, -1, np.int64),
    }


def _deal_columns(
    rng: np.random.Generator, ids: np.ndarray, contacts: int
) -> dict[str, np.ndarray]:
    count = len(ids)
    contact = rng.integers(1, contacts + 1, count)
    missing = rng.random(count) < MISSING_CONTACT
    contact[missing] = contacts + 1 + rng.integers(0, contacts, int(missing.sum()))
    created = _START_US + rng.integers(0, _SPAN_US, count)
    return {
        "id": ids,
        "contact_id": contact,
        "owner_id": rng.integers(1, 200, count),
        "title": rng.integers(0, len(_TITLES), count),
        "stage": rng.choice(len(STAGES), count, p=(0.2, 0.15, 0.15, 0.1, 0.25, 0.15)),
        "amount": rng.integers(100, 50_000_000, count),
        "currency": rng.integers(0, len(_CURRENCIES), count),
        "probability": rng.random(count),
        "created_at": created,
        "closed_at": np.where(rng.random(count) < 0.4, created + 86_400_000_000, -1),
        "updated_at": created + rng.integers(0, 86_400_000_000, count),
        "deleted_at": np.full(count, -1, np.int64),
    }


def _country_weights() -> np.ndarray:
    weights: np.ndarray = 1.0 / np.arange(1, len(COUNTRIES) + 1) ** 1.1
    return weights / weights.sum()  # type: ignore[no-any-return]


def _arrow(
    table: str, tenant: str, columns: dict[str, np.ndarray], version: int, deleted: np.ndarray
) -> pa.Table:
    count = len(columns["id"])

    def moment(name: str) -> pa.Array:
        values = columns[name]
        return timestamp_array(np.maximum(values, 0), values < 0)

    if table == "crm_contacts":
        ids = columns["id"]
        body = {
            "id": pa.array(ids),
            "email": pa.array([f"c{i}@example.com" for i in ids.tolist()], pa.string()),
            "status": category_array(STATUSES, columns["status"]),
            "country": category_array(COUNTRIES, columns["country"]),
            "lead_source": pa.nulls(count, pa.string()),
            "lifetime_value": decimal_array(columns["lifetime_value"]),
            "score": pa.array(columns["score"]),
            "is_subscribed": pa.array(columns["is_subscribed"]),
            "created_at": moment("created_at"),
            "updated_at": moment("updated_at"),
            "deleted_at": moment("deleted_at"),
        }
    else:
        body = {
            "id": pa.array(columns["id"]),
            "contact_id": pa.array(columns["contact_id"]),
            "owner_id": pa.array(columns["owner_id"]),
            "title": category_array(_TITLES, columns["title"]),
            "stage": category_array(STAGES, columns["stage"]),
            "amount": decimal_array(columns["amount"]),
            "currency": category_array(_CURRENCIES, columns["currency"]),
            "probability": pa.array(columns["probability"]),
            "created_at": moment("created_at"),
            "closed_at": moment("closed_at"),
            "expected_close_date": pa.nulls(count, pa.date32()),
            "updated_at": moment("updated_at"),
            "deleted_at": moment("deleted_at"),
        }
    return pa.table(
        {
            "tenant_id": pa.array([tenant] * count, pa.string())
            if count < 16
            else category_array([tenant], np.zeros(count, np.int32)),
            **body,
            "_version": pa.array(np.full(count, version, np.uint64)),
            "_is_deleted": pa.array(deleted.astype(np.uint8)),
        }
    )


def _revise(
    rng: np.random.Generator,
    table: str,
    state: dict[str, np.ndarray],
    chosen: np.ndarray,
    contacts: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """New values for the keys at ``chosen`` (ids and creation kept); soft deletes and tombstones.

    Returns the new rows' columns and which of them are tombstones; ``state`` is updated.
    """
    ids = state["id"][chosen]
    fresh = (
        _contact_columns(rng, ids) if table == "crm_contacts" else _deal_columns(rng, ids, contacts)
    )
    fresh["created_at"] = state["created_at"][chosen]
    draw = rng.random(len(chosen))
    soft = draw < SOFT_DELETED / REVISED
    fresh["deleted_at"] = np.where(soft, fresh["updated_at"], -1)
    tombstone = (draw >= SOFT_DELETED / REVISED) & (draw < (SOFT_DELETED + TOMBSTONED) / REVISED)
    for name, values in fresh.items():
        state[name][chosen] = values
    return fresh, tombstone


async def _load_table(
    backend: EmbeddedBackend,
    rng: np.random.Generator,
    table: str,
    plan: list[tuple[str, int, int]],
) -> tuple[dict[str, _State], list[pa.Table]]:
    """Insert versions 1 and 2 of every tenant's keys; return the states and the late batches."""
    states: dict[str, _State] = {}
    late: list[pa.Table] = []
    for tenant, count, contacts in plan:
        ids = np.arange(1, count + 1, dtype=np.int64)
        columns = (
            _contact_columns(rng, ids)
            if table == "crm_contacts"
            else _deal_columns(rng, ids, contacts)
        )
        deleted = np.zeros(count, bool)
        for offset in range(0, count, CHUNK_ROWS):
            part = {name: values[offset : offset + CHUNK_ROWS] for name, values in columns.items()}
            rows = _arrow(table, tenant, part, 1, deleted[offset : offset + CHUNK_ROWS])
            await backend.insert_arrow(DATABASE, table, rows)
        revised = np.flatnonzero(rng.random(count) < REVISED)
        fresh, tombstone = _revise(rng, table, columns, revised, contacts)
        deleted[revised] = tombstone
        await backend.insert_arrow(DATABASE, table, _arrow(table, tenant, fresh, 2, tombstone))
        # The late changes: the newest ids (where a sequence-keyed source's changes go).
        newest = np.arange(max(count - count // 10, 0), count)
        chosen = np.sort(rng.choice(newest, max(int(count * LATE), 1), replace=False))
        fresh, tombstone = _revise(rng, table, columns, chosen, contacts)
        deleted[chosen] = tombstone
        late.append(_arrow(table, tenant, fresh, 3, tombstone))
        states[tenant] = _State(columns, deleted)
    return states, late


async def load(
    backend: EmbeddedBackend, catalog: Catalog, deals: int, seed: int = 15
) -> tuple[dict[str, _State], dict[str, _State], str]:
    """Create and fill both tables; their final states per tenant and a layout note."""
    await backend.command(database_ddl(catalog))
    await backend.command(sync_state_ddl(catalog))
    dialect = await backend.dialect()
    for model in _models(catalog):
        await backend.command(f"DROP TABLE IF EXISTS `{DATABASE}`.`{model.table}` SYNC")
        await backend.command(replica_table_ddl(catalog, model, dialect=dialect))
    rng = np.random.default_rng(seed)
    contacts = max(int(deals * CONTACTS_PER_DEAL), 1)
    plan = [(TENANT, deals, contacts)] + [
        (t, max(int(deals * OTHER_SHARE), 1), max(int(contacts * OTHER_SHARE), 1))
        for t in OTHER_TENANTS
    ]
    contact_plan = [(t, c, c) for t, _, c in plan]
    contact_states, late_contacts = await _load_table(backend, rng, "crm_contacts", contact_plan)
    deal_states, late_deals = await _load_table(backend, rng, "crm_deals", plan)
    for model in _models(catalog):
        await backend.command(f"OPTIMIZE TABLE `{DATABASE}`.`{model.table}` FINAL")
        # Held as it is from here: the late changes stay in parts of their own.
        await backend.command(f"SYSTEM STOP MERGES `{DATABASE}`.`{model.table}`")
    for rows in late_contacts:
        await backend.insert_arrow(DATABASE, "crm_contacts", rows)
    for rows in late_deals:
        await backend.insert_arrow(DATABASE, "crm_deals", rows)
    layout = await backend.query_rows(
        "SELECT table, count() AS parts, uniqExact(partition_id) AS partitions, "
        "sum(rows) AS physical FROM system.parts WHERE database = {db:String} AND active "
        "GROUP BY table ORDER BY table",
        {"db": DATABASE},
    )
    note = "; ".join(
        f"{row['table']}: {int(row['physical']):,} rows in {row['parts']} parts, "
        f"{row['partitions']} partitions"
        for row in layout
    )
    return contact_states, deal_states, note


def _models(catalog: Catalog) -> list[Model]:
    found = [catalog.get("crm", "contacts"), catalog.get("crm", "deals")]
    return [m for m in found if m is not None]


def expected(contacts: _State, deals: _State, variant: Variant) -> Answer:
    """The answer from the generated arrays alone: live deals, their live contact, the filters."""
    c, d = contacts.columns, deals.columns
    live_contact = ~contacts.deleted & (c["deleted_at"] < 0)
    if variant.status is not None:
        wanted_contact = live_contact & (c["status"] == STATUSES.index(variant.status))
    else:
        wanted_contact = live_contact
    live_deal = ~deals.deleted & (d["deleted_at"] < 0)
    if variant.stage is not None:
        live_deal &= d["stage"] == STAGES.index(variant.stage)
    contact_ids = c["id"]  # 1..n in order
    index = d["contact_id"] - 1
    known = index < len(contact_ids)
    matched = np.zeros(len(index), bool)
    matched[known] = wanted_contact[index[known]]
    country = np.full(len(index), -1, np.int64)
    country[matched] = c["country"][index[matched]]
    if variant.status is not None:
        live_deal &= matched
    chosen = np.flatnonzero(live_deal)
    codes = country[chosen] + 1  # 0: no contact
    sums = np.bincount(codes, weights=None, minlength=len(COUNTRIES) + 1)
    answer: Answer = {}
    amounts = d["amount"][chosen]
    for code in np.flatnonzero(sums):
        total = int(amounts[codes == code].sum())
        answer[None if code == 0 else COUNTRIES[code - 1]] = Decimal(total).scaleb(-2)
    return answer


def as_answer(table: pa.Table) -> Answer:
    """Rows of (country, sum) as an Answer."""
    first, second = table.column_names[:2]
    return {
        country: Decimal(total)
        for country, total in zip(
            table.column(first).to_pylist(), table.column(second).to_pylist(), strict=True
        )
    }


def check(what: str, answer: Answer, truth: Answer) -> None:
    """Raise unless ``answer`` equals the ground truth exactly."""
    if answer == truth:
        return
    different = sorted(
        (str(k), answer.get(k), truth.get(k))
        for k in answer.keys() | truth.keys()
        if answer.get(k) != truth.get(k)
    )[:5]
    raise AssertionError(f"{what}: differs from the ground truth (key, answer, truth): {different}")


async def measure(
    backend: EmbeddedBackend,
    work: Path,
    *,
    deals: int,
    repetitions: int,
    warmup: int,
    judge: bool,
) -> list[Figure]:
    """Load the tables, check both sides' answers, then time A and B alternately."""
    catalog = bench_catalog()
    started = time.perf_counter()
    contacts, deal_states, layout = await load(backend, catalog, deals)
    loaded = time.perf_counter() - started
    service = QueryService(
        catalog,
        backend,
        limits=QueryLimits(),
        stream_limits=QueryLimits(),
        timeout_seconds=120.0,
    )
    principal = Principal("bench", TENANT, frozenset({"crm.*.read"}))
    engine = RawEngine(work / "raw")
    figures: list[Figure] = []
    try:
        for variant in VARIANTS:
            truth = expected(contacts[TENANT], deal_states[TENANT], variant)
            request = variant.request()
            sql, parameters = raw_sql(variant), raw_parameters(variant)

            async def served(request: QueryRequest = request) -> Answer:
                outcome = await service.run(principal, request, remaining=None, rpc="Query")
                return as_answer(outcome.table)

            def raw(sql: str = sql, parameters: dict[str, str] = parameters) -> Answer:
                return as_answer(engine.run_sql(sql, parameters))

            check(f"hand-written SQL, {variant.label}", raw(), truth)
            check(f"Query, {variant.label}", await served(), truth)
            served_times: list[float] = []
            raw_times: list[float] = []
            for repetition in range(warmup + repetitions):
                sides = ("A", "B") if repetition % 2 == 0 else ("B", "A")
                for side in sides:
                    began = time.perf_counter()
                    if side == "A":
                        await served()
                    else:
                        raw()
                    elapsed = time.perf_counter() - began
                    if repetition >= warmup:
                        (served_times if side == "A" else raw_times).append(elapsed)
            ratio = median(served_times) / median(raw_times)
            judged = judge and variant.judged
            figures.append(
                Figure(
                    metric=f"Query join, deals by contact.country, {variant.label}, "
                    f"{_label(deals)} deals",
                    a=_latencies(served_times),
                    b=_latencies(raw_times) + " (hand-written SQL)",
                    ratio=ratio,
                    target=f"<= {TARGET:g} at p50" if variant.judged else "",
                    passed=at_most(ratio, TARGET) if judged else None,
                    note=f"{len(truth)} groups, answers exact; {len(served_times)} runs each"
                    + (f"; {layout}, loaded in {loaded:.0f} s" if variant is VARIANTS[0] else ""),
                )
            )
    finally:
        engine.close()
        await backend.command(f"DROP DATABASE `{DATABASE}` SYNC")
    return figures


def _label(count: int) -> str:
    if count >= 1_000_000 and count % 1_000_000 == 0:
        return f"{count // 1_000_000}m"
    return f"{count // 1000}k"


def _latencies(samples: list[float]) -> str:
    return f"p50 {milliseconds(median(samples))}, p95 {milliseconds(percentile(samples, 0.95))}"
