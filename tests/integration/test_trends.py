"""Trends on the embedded engine, against the independent evaluator of tests/trend_reference.py.

The data set: product events of three tenants (one with a hostile id; two share some event ids)
around every change of offset of Europe/Berlin, America/New_York and Australia/Lord_Howe in 2026
(and a sparser copy of spring 2025 for year-over-year compares), many of them on local midnights
and on the instants of the changes themselves; null and present declared properties, free-form
properties with hostile keys and values, events re-sent with another timestamp and a higher (or,
written later, a lower) version, and erased events; a fourth tenant has five events made by hand
for ties, sums over no values and nulls in lists. Checks:

* random valid requests (every option of README "Trends") answer exactly what the reference
  computes, and every WHERE of every query starts with the tenant condition;
* zero-fill, compare shifts, formula arithmetic, rows before ``dateFrom``, breakdown ties and
  nulls in filters as explicit properties; hostile strings never change the SQL's shape nor
  reach its text; tenants see only their own events;
* a replicated model (crm.deals, dated by ``closed_at``) with superseded, soft- and hard-deleted
  rows; validation errors naming the field; the REST endpoint.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from service.api.problem import PROBLEM_TYPE_BASE
from service.api.server import RunningServer, start_server
from service.auth import Principal, mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog
from service.errors import AnalyticsError, ErrorKind
from service.insights.trend_request import TrendRequest, TrendSeries
from service.insights.trend_results import TrendAnswer
from service.insights.trend_service import TrendService
from service.insights.trends import TrendPlan, compile_trend
from service.schema import all_ddl, arrow_type
from service.settings import Settings
from tests.conftest import catalog_in_database, unique_database
from tests.sql_shape import assert_tenant_first as assert_shared_tenant_first
from tests.sql_shape import event_arrow
from tests.strategies import CATALOG, HOSTILE_STRINGS, quote_value
from tests.trend_reference import (
    ReferenceLine,
    Rejected,
    compare_range,
    current_rows,
    reference_trend,
)

pytestmark = pytest.mark.integration

ENGINE = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
COMPILE_ONLY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

EVENTS = CATALOG.models[("product", "events")]
DEALS = CATALOG.models[("crm", "deals")]
ACME = "acme"
GLOBEX = "globex"
HOSTILE_TENANT = "x' OR '1'='1"
GHOST = "ghost"
TENANTS = {ACME: 650, GLOBEX: 300, HOSTILE_TENANT: 120}
UTC = dt.UTC
DST_ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe")
ZONES = ("", "UTC", *DST_ZONES)

EVENT_NAMES = ("signed_up", "activated", "purchased", "page view", "'; DROP TABLE t; --", "")
PLATFORMS = ("web", "ios", "android", None, None, "Web", "x' OR '1'='1")
COUNTRIES = ("DE", "US", "AU", None)
PLANS = ("free", "pro", None, "'", "{p0:String}")
#: Free-form property keys; "plan" also names a declared field, "" cannot be asked for.
PROPERTY_KEYS = ("utm_source", "ref", "plan", "a.b", "x'y", "{p0:String}", "eq", "日本語", "\\", "")
PROPERTY_VALUES = (
    "newsletter",
    "google",
    "",
    "NULL",
    "\\N",
    "'",
    "x' OR '1'='1",
    "{p1:UInt64}",
    "日本語",
    "a,b",
    '"quoted"',
    "nul\0byte",
)
QUERYABLE_KEYS = tuple(key for key in PROPERTY_KEYS if key)

#: Clocks of the random requests: in the data's two seasons, one on a change of offset.
NOWS = (
    dt.datetime(2026, 4, 12, 9, 17, 31, tzinfo=UTC),
    dt.datetime(2026, 11, 3, 22, 5, tzinfo=UTC),
    dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
    dt.datetime(2026, 10, 3, 15, 40, 12, 345678, tzinfo=UTC),
)
#: Where events are: two seasons of 2026 and a sparse spring 2025 (for year-over-year).
WINDOWS = (
    (dt.datetime(2026, 1, 20, tzinfo=UTC), dt.datetime(2026, 4, 20, tzinfo=UTC), 0.55),
    (dt.datetime(2026, 9, 20, tzinfo=UTC), dt.datetime(2026, 11, 10, tzinfo=UTC), 0.35),
    (dt.datetime(2025, 3, 1, tzinfo=UTC), dt.datetime(2025, 4, 20, tzinfo=UTC), 0.10),
)


def _changes_of_offset() -> list[dt.datetime]:
    """Every instant at which one of DST_ZONES changed its offset in the windows."""
    found: list[dt.datetime] = []
    for name in DST_ZONES:
        zone = ZoneInfo(name)
        for first, last, _ in WINDOWS:
            moment = first
            offset = moment.astimezone(zone).utcoffset()
            while moment < last:
                moment += dt.timedelta(minutes=30)
                current = moment.astimezone(zone).utcoffset()
                if current != offset:
                    found.append(moment)
                    offset = current
    return found


CHANGES = _changes_of_offset()


def _special_instants() -> list[dt.datetime]:
    """Changes of offset, and local midnights of their days and of month and week starts."""
    days = {change.date() for change in CHANGES}
    days |= {dt.date(2026, m, 1) for m in (2, 3, 4, 10, 11)} | {dt.date(2025, 4, 1)}
    days |= {day + dt.timedelta(days=k) for day in list(days) for k in (-1, 1)}
    midnights = [
        dt.datetime.combine(day, dt.time(), ZoneInfo(name)).astimezone(UTC)
        for name in ("UTC", *DST_ZONES)
        for day in days
    ]
    return sorted({*CHANGES, *midnights})


SPECIAL = _special_instants()


# --- the data set -----------------------------------------------------------------------------


def _timestamp(rng: random.Random) -> dt.datetime:
    if rng.random() < 0.35:
        base = rng.choice(SPECIAL)
        if rng.random() < 0.15:
            return base  # exactly on a bucket boundary or a change of offset
        return base + dt.timedelta(
            seconds=rng.randint(-5400, 5400), microseconds=rng.randint(0, 999_999)
        )
    first, last, _ = rng.choices(WINDOWS, weights=[w for _, _, w in WINDOWS])[0]
    span = int((last - first).total_seconds())
    return first + dt.timedelta(seconds=rng.randint(0, span), microseconds=rng.randint(0, 999_999))


def _event(rng: random.Random, tenant: str, event_id: str) -> dict[str, Any]:
    keys = rng.sample(PROPERTY_KEYS, rng.choice((0, 1, 1, 2, 3)))
    contact = rng.randint(1, 30) if rng.random() < 0.95 else rng.choice((2**62 + 7, 2**53 + 1))
    revenue = None
    if rng.random() < 0.5:
        revenue = Decimal(rng.randint(-5000, 99_999)).scaleb(-2)
    return {
        "tenant_id": tenant,
        "event_id": event_id,
        "event": rng.choice(EVENT_NAMES),
        "contact_id": contact,
        "timestamp": _timestamp(rng),
        "platform": rng.choice(PLATFORMS),
        "country": rng.choice(COUNTRIES),
        "plan": rng.choice(PLANS),
        "revenue": revenue,
        "properties_keys": keys,
        "properties_values": [rng.choice(PROPERTY_VALUES) for _ in keys],
    }


HANDMADE = "handmade"
#: Event ids whose text order is not the engine's UUID order (it compares the halves swapped).
HANDMADE_IDS = (
    "ffffffff-0000-0000-0000-000000000001",
    "00000000-0000-0000-ffff-000000000000",
    "10000000-0000-0000-0000-00000000000f",
    "00000000-0000-0001-0000-000000000000",
    "f0000000-0000-0000-0000-000000000000",
)


def handmade_events() -> list[dict[str, Any]]:
    """Five events of one tenant on 2026-05-05 for the explicit breakdown and filter checks:
    platforms a, b, c, null and web with revenue -5.00, null, 3.00, 1.00 and 2.00."""
    platforms = ("a", "b", "c", None, "web")
    revenues = (Decimal("-5.00"), None, Decimal("3.00"), Decimal("1.00"), Decimal("2.00"))
    return [
        {
            "tenant_id": HANDMADE,
            "event_id": event_id,
            "event": "purchased",
            "contact_id": index + 1,
            "timestamp": dt.datetime(2026, 5, 5, 10 + index, tzinfo=UTC),
            "platform": platform,
            "country": None,
            "plan": None,
            "revenue": revenue,
            "properties_keys": [],
            "properties_values": [],
        }
        for index, (event_id, platform, revenue) in enumerate(
            zip(HANDMADE_IDS, platforms, revenues, strict=True)
        )
    ]


def make_events(seed: int = 20261207) -> list[dict[str, Any]]:
    """Every written version of every event, with ``_version`` and ``_is_deleted``."""
    rng = random.Random(seed)
    written: list[dict[str, Any]] = []
    acme_ids: list[str] = []
    for tenant, count in TENANTS.items():
        for index in range(count):
            if tenant == GLOBEX and index % 10 == 0 and acme_ids:
                event_id = rng.choice(acme_ids)  # the same event id in another tenant
            else:
                event_id = str(uuid.UUID(int=rng.getrandbits(128)))
            if tenant == ACME:
                acme_ids.append(event_id)
            written.append(_event(rng, tenant, event_id))
            roll = rng.random()
            if roll < 0.12:  # re-sent, maybe in another month, maybe with other properties
                resent = _event(rng, tenant, event_id)
                if rng.random() < 0.5:
                    resent |= {k: written[-1][k] for k in ("event", "contact_id", "platform")}
                written.append(resent)
            elif roll < 0.15:  # erased
                written.append(written[-1] | {"_is_deleted": 1})
    # Rows before a dateFrom of 12:00 inside its first bucket (test_rows_before_date_from...).
    written.extend(
        _event(rng, ACME, str(uuid.UUID(int=rng.getrandbits(128))))
        | {"timestamp": dt.datetime(2026, 3, 10, hour, 59, 59, 999_999, tzinfo=UTC)}
        for hour in (0, 5, 11)
    )
    written.extend(handmade_events())
    versions = rng.sample(range(1, 10 * len(written)), len(written))
    seen: dict[tuple[str, str], int] = {}
    for row, drawn in zip(written, versions, strict=True):
        row.setdefault("_is_deleted", 0)
        key = (row["tenant_id"], row["event_id"])
        # A re-send usually carries a later version; a tenth of them arrive late with an older one.
        version = drawn
        if key in seen and drawn < seen[key] and rng.random() < 0.9:
            version = seen[key] + 1 + drawn % 7
        row["_version"] = version
        seen[key] = max(seen.get(key, 0), version)
    if len({(r["tenant_id"], r["event_id"], r["_version"]) for r in written}) != len(written):
        raise AssertionError("two versions of one event share a version number")
    return written


def _deal(
    tenant: str,
    key: int,
    stage: str,
    amount: str,
    closed_at: str | None,
    *,
    deleted_at: str | None = None,
    version: int = 1,
    is_deleted: int = 0,
) -> dict[str, Any]:
    created = dt.datetime(2025, 11, 1, tzinfo=UTC)
    return {
        "tenant_id": tenant,
        "id": key,
        "contact_id": key,
        "owner_id": 1,
        "title": f"deal {key}",
        "stage": stage,
        "amount": Decimal(amount),
        "currency": "EUR",
        "probability": 0.5,
        "created_at": created,
        "closed_at": None if closed_at is None else dt.datetime.fromisoformat(closed_at),
        "expected_close_date": None,
        "updated_at": created,
        "deleted_at": None if deleted_at is None else dt.datetime.fromisoformat(deleted_at),
        "_version": version,
        "_is_deleted": is_deleted,
    }


#: Won deals of 2026 by closing time, worked out by hand in test_won_deal_amount_per_month.
DEAL_ROWS = [
    # Superseded: version 1 closed in February for 100, version 2 in March for 250.50.
    _deal(ACME, 1, "closed_won", "100.00", "2026-02-10T10:00:00+00:00"),
    _deal(ACME, 1, "closed_won", "250.50", "2026-03-05T10:00:00+00:00", version=2),
    _deal(ACME, 2, "closed_won", "1000.00", "2026-01-15T12:00:00+00:00"),
    # 23:30 UTC on 31 January: January in UTC, February in Berlin.
    _deal(ACME, 3, "closed_won", "99.99", "2026-01-31T23:30:00+00:00"),
    _deal(ACME, 4, "closed_lost", "500.00", "2026-02-01T10:00:00+00:00"),
    # Soft-deleted: left out unless a filter names deleted_at.
    _deal(
        ACME,
        5,
        "closed_won",
        "7777.00",
        "2026-02-02T10:00:00+00:00",
        deleted_at="2026-02-03T00:00:00+00:00",
    ),
    # Hard-deleted by a tombstone version.
    _deal(ACME, 6, "closed_won", "5555.00", "2026-02-04T10:00:00+00:00"),
    _deal(ACME, 6, "closed_won", "5555.00", "2026-02-04T10:00:00+00:00", version=2, is_deleted=1),
    # A second before the range in UTC, inside January in Berlin.
    _deal(ACME, 7, "closed_won", "1.00", "2025-12-31T23:59:59+00:00"),
    # Never closed: no date, in no bucket.
    _deal(ACME, 8, "closed_won", "42.42", None),
    # The last day of a date-only dateTo is in the range.
    _deal(ACME, 9, "closed_won", "300.00", "2026-12-31T20:00:00+00:00"),
    _deal(ACME, 10, "closed_won", "0.01", "2027-01-01T00:00:00+00:00"),
    # Another tenant's deal matching every filter.
    _deal(GLOBEX, 11, "closed_won", "123456.00", "2026-03-03T10:00:00+00:00"),
    # The later version (3) is written first; the older one (2), written after it, loses.
    _deal(ACME, 12, "closed_won", "10.00", "2026-07-04T10:00:00+00:00", version=3),
    _deal(ACME, 12, "closed_won", "999.00", "2026-06-01T10:00:00+00:00", version=2),
    # 22:30 UTC on 31 March: March in UTC, April in Berlin.
    _deal(ACME, 13, "closed_won", "0.49", "2026-03-31T22:30:00+00:00"),
]


def deal_arrow(rows: Sequence[dict[str, Any]]) -> pa.Table:
    columns: dict[str, pa.Array] = {"tenant_id": pa.array([r["tenant_id"] for r in rows])}
    for name, spec in DEALS.fields.items():
        columns[name] = pa.array([r[name] for r in rows], arrow_type(spec))
    columns["_version"] = pa.array([r["_version"] for r in rows], pa.uint64())
    columns["_is_deleted"] = pa.array([r["_is_deleted"] for r in rows], pa.uint8())
    return pa.table(columns)


class DataSet:
    """The databases and every written row (not a dataclass: hypothesis prints it briefly)."""

    def __init__(
        self,
        backend: EmbeddedBackend,
        catalog: Catalog,
        only_acme: Catalog,
        rows: list[dict[str, Any]],
    ) -> None:
        self.backend = backend
        self.catalog = catalog
        self.only_acme = only_acme
        self.rows = rows

    def __repr__(self) -> str:
        return f"DataSet({self.catalog.database}, {len(self.rows)} written rows)"


async def _create(backend: EmbeddedBackend, catalog: Catalog) -> None:
    for statement in all_ddl(catalog):
        await backend.command(statement)


@pytest.fixture(scope="module")
async def dataset(embedded_backend: EmbeddedBackend, catalog: Catalog) -> DataSet:
    rows = make_events()
    full = catalog_in_database(catalog, unique_database("trends"))
    only_acme = catalog_in_database(catalog, unique_database("trends_acme"))
    await _create(embedded_backend, full)
    await _create(embedded_backend, only_acme)
    model = full.models[("product", "events")]
    shuffled = random.Random(7).sample(rows, len(rows))
    # Several inserts, so that versions of one event sit in different parts.
    for part in range(3):
        batch = shuffled[part::3]
        await embedded_backend.insert_arrow(full.database, model.table, event_arrow(model, batch))
        mine = [r for r in batch if r["tenant_id"] == ACME]
        await embedded_backend.insert_arrow(
            only_acme.database, model.table, event_arrow(model, mine)
        )
    await embedded_backend.insert_arrow(full.database, DEALS.table, deal_arrow(DEAL_ROWS))
    return DataSet(embedded_backend, full, only_acme, rows)


def principal(tenant: str) -> Principal:
    return Principal("tester", tenant, frozenset({"product.events.read", "crm.deals.read"}))


async def run_trend(
    data: DataSet,
    request: TrendRequest,
    tenant: str,
    now: dt.datetime,
    catalog: Catalog | None = None,
) -> TrendAnswer:
    service = TrendService(
        catalog or data.catalog, data.backend, timeout_seconds=60, clock=lambda: now
    )
    outcome = await service.run(principal(tenant), request, remaining=None, rpc="Trend")
    return outcome.answer


# --- comparing answers --------------------------------------------------------------------------


def same_value(kind: str, got: Any, want: Any, *, abs_tol: float = 1e-12) -> bool:
    if got is None or want is None:
        return got is None and want is None
    if kind == "float":
        return (
            isinstance(got, float)
            and isinstance(want, float)
            and math.isclose(got, want, rel_tol=1e-9, abs_tol=abs_tol)
        )
    exact = (int, Decimal)
    return (
        isinstance(got, exact)
        and not isinstance(got, bool)
        and isinstance(want, exact)
        and not isinstance(want, bool)
        and got == want
    )


def same_breakdown_value(got: Any, want: Any) -> bool:
    if isinstance(want, (int, Decimal)) and not isinstance(want, bool):
        return isinstance(got, (int, Decimal)) and not isinstance(got, bool) and got == want
    return type(got) is type(want) and got == want


def assert_same_answer(
    answer: TrendAnswer, expected: tuple[list[str], list[str], list[ReferenceLine]], context: Any
) -> None:
    buckets, compare_buckets, lines = expected
    assert answer.buckets == buckets, context
    assert answer.compare_buckets == compare_buckets, context
    got = [(g.series, g.compare, g.is_other, g.breakdown_value) for g in answer.lines]
    want = [(w.series, w.compare, w.is_other, w.breakdown_value) for w in lines]
    assert len(got) == len(want), (context, got, want)
    for index, (line, wanted) in enumerate(zip(answer.lines, lines, strict=True)):
        where = (context, index, wanted)
        assert (line.series, line.label, line.is_other, line.compare, line.output_type) == (
            wanted.series,
            wanted.label,
            wanted.is_other,
            wanted.compare,
            wanted.output_type,
        ), (where, line)
        assert same_breakdown_value(line.breakdown_value, wanted.breakdown_value), (where, line)
        assert len(line.values) == len(wanted.values), (where, line.values)
        tolerance = 1e-9 if line.series == "formula" else 1e-12
        bad = [
            (position, got_value, want_value)
            for position, (got_value, want_value) in enumerate(
                zip(line.values, wanted.values, strict=True)
            )
            if not same_value(line.output_type, got_value, want_value, abs_tol=tolerance)
        ]
        assert not bad, (where, bad[:5], line.values, wanted.values)


def assert_tenant_first(plan: TrendPlan, tenant: str) -> None:
    """Every WHERE of every query of the plan begins with the tenant condition."""
    for query in plan.queries:
        assert_shared_tenant_first(query.compiled, tenant)


# --- random requests ----------------------------------------------------------------------------

#: Longest range generated per interval, and the relative bounds that fit it.
LONGEST = {
    "minute": dt.timedelta(days=2),
    "hour": dt.timedelta(days=12),
    "day": dt.timedelta(days=70),
    "week": dt.timedelta(days=150),
    "month": dt.timedelta(days=300),
    "quarter": dt.timedelta(days=300),
    "year": dt.timedelta(days=400),
}
RELATIVE = {
    "minute": ("h",),
    "hour": ("h", "d"),
    "day": ("h", "d", "w", "m"),
    "week": ("d", "w", "m"),
    "month": ("d", "w", "m", "q"),
    "quarter": ("m", "q"),
    "year": ("m", "q", "y"),
}
UNIT_LENGTH = {"h": 1 / 24, "d": 1, "w": 7, "m": 31, "q": 92, "y": 366}


def _relative(draw: st.DrawFn, interval: str) -> tuple[str, int]:
    unit = draw(st.sampled_from(RELATIVE[interval]))
    most = max(1, int(LONGEST[interval].days / UNIT_LENGTH[unit]))
    # sampled_from draws evenly; integers() would favour 1 and leave most ranges nearly empty
    amount = draw(st.sampled_from(sorted({1, 2, max(1, most // 4), max(1, most // 2), most})))
    return f"-{amount}{unit}", amount


def _render_bound(draw: st.DrawFn, moment: dt.datetime, form: str, zone: ZoneInfo) -> str:
    if form == "instant":
        offset = draw(st.sampled_from((0, 330, -180, 630)))
        if offset == 0:
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        fixed = dt.timezone(dt.timedelta(minutes=offset))
        return moment.astimezone(fixed).isoformat()
    local = moment.astimezone(zone)
    if form == "naive":
        return local.replace(tzinfo=None).isoformat(timespec="seconds")
    return local.date().isoformat()


@st.composite
def date_bounds(draw: st.DrawFn, interval: str, zone_name: str) -> tuple[str, str]:
    zone = ZoneInfo(zone_name or "UTC")
    form = draw(st.sampled_from(("instant", "naive", "date", "relative", "mixed", "default")))
    if form == "default":
        return "", ""
    if form == "relative":
        date_from, amount = _relative(draw, interval)
        date_to = draw(st.sampled_from(("", "now", "back")))
        if date_to == "back":
            date_to = f"-{draw(st.integers(0, amount))}{date_from[-1]}"
            if date_to.startswith("-0"):
                date_to = "now"
        return date_from, date_to
    anchor = draw(st.sampled_from(SPECIAL)) + dt.timedelta(
        seconds=draw(st.integers(-3 * 86400, 3 * 86400))
    )
    fraction = draw(st.sampled_from((0.01, 0.1, 0.3, 0.6, 1.0)))
    length = LONGEST[interval] * fraction + dt.timedelta(seconds=draw(st.integers(0, 3599)))
    start, end = anchor - length / 2, anchor + length / 2
    if form == "mixed":
        forms = draw(st.tuples(*[st.sampled_from(("instant", "naive", "date"))] * 2))
    else:
        forms = (form, form)
    date_from = _render_bound(draw, start, forms[0], zone)
    date_to = _render_bound(draw, end, forms[1], zone)
    if forms[1] == "date" and draw(st.integers(0, 9)) == 0:
        date_to = date_to.replace("-", "")  # the basic ISO spelling of a date
    return date_from, date_to


DECLARED_FILTER_FIELDS = ("platform", "country", "plan", "event", "contact_id", "revenue")
STRING_POOLS = {
    "platform": [p for p in PLATFORMS if p],
    "country": [c for c in COUNTRIES if c],
    "plan": [p for p in PLANS if p],
    "event": list(EVENT_NAMES),
}


@st.composite
def condition(draw: st.DrawFn, *, in_tree: bool = False) -> tuple[str, str]:
    """(field, ``operator.value``) of one filter; values from the data so that they match."""
    fields = DECLARED_FILTER_FIELDS if in_tree else DECLARED_FILTER_FIELDS + ("properties",) * 3
    name = draw(st.sampled_from(fields))
    if name == "properties":
        name = f"properties.{draw(st.sampled_from(QUERYABLE_KEYS))}"
    negated = "not." if draw(st.integers(0, 4)) == 0 else ""
    if name in ("contact_id", "revenue"):
        operator = draw(st.sampled_from(("gt", "lte", "eq", "is")))
        if operator == "is":
            return name, f"{negated}is.null"
        value = (
            str(draw(st.integers(0, 30)))
            if name == "contact_id"
            else f"{draw(st.integers(-50, 999))}.5"
        )
        return name, f"{negated}{operator}.{value}"
    pool = STRING_POOLS.get(name, list(PROPERTY_VALUES))
    operator = draw(st.sampled_from(("eq", "neq", "in", "is", "like")))
    if operator == "is":
        return name, f"{negated}is.null"
    if operator == "in":
        values = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
        return name, f"{negated}in.({','.join(quote_value(v) for v in values)})"
    value = draw(st.sampled_from(pool))
    if operator == "like":
        value = value[:1].replace("\\", "\\\\") + "*"
    return name, f"{negated}{operator}.{quote_value(value) if in_tree else value}"


@st.composite
def filter_maps(draw: st.DrawFn, most: int) -> dict[str, str]:
    # Mostly none: each filter keeps a part of the rows, and empty answers prove little.
    count = draw(st.sampled_from((0, 0, 0, 1, most)))
    filters: dict[str, str] = {}
    for _ in range(count):
        if draw(st.integers(0, 4)) == 0:
            kind = draw(st.sampled_from(("or", "and", "not.or")))
            items = draw(st.lists(condition(in_tree=True), min_size=2, max_size=3))
            filters[kind] = "(" + ",".join(f"{f}.{e}" for f, e in items) + ")"
        else:
            name, expression = draw(condition())
            filters[name] = expression
    return filters


COUNT_FIELDS = ("platform", "revenue", "properties.utm_source", "properties.plan")
DISTINCT_FIELDS = (
    "event",
    "platform",
    "country",
    "plan",
    "contact_id",
    "revenue",
    "event_id",
    "timestamp",
    "properties.utm_source",
    "properties.a.b",
)
NUMERIC_FIELDS = ("contact_id", "revenue")
BREAKDOWNS = (
    "platform",
    "country",
    "plan",
    "event",
    "contact_id",
    "revenue",
    "event_id",
    "properties.utm_source",
    "properties.x'y",
    "properties.plan",
)
LABELS = st.one_of(
    st.just(""),
    st.just(""),
    st.sampled_from([s for s in HOSTILE_STRINGS if len(s) <= 40]),
    st.text(max_size=20),
)


@st.composite
def series_items(draw: st.DrawFn, display: str) -> TrendSeries:
    aggregates = ["count", "count", "unique_actors", "count_distinct", "sum", "avg", "min", "max"]
    if not display:
        aggregates += ["p50", "p90"]
    aggregate = draw(st.sampled_from(aggregates))
    field = ""
    if aggregate == "count" and draw(st.integers(0, 3)) == 0:
        field = draw(st.sampled_from(COUNT_FIELDS))
    elif aggregate == "count_distinct":
        field = draw(st.sampled_from(DISTINCT_FIELDS))
    elif aggregate not in ("count", "unique_actors"):
        field = draw(st.sampled_from(NUMERIC_FIELDS))
    event = draw(st.sampled_from(("", "", "", "", "", *EVENT_NAMES[:5], "never_sent")))
    filters = draw(filter_maps(1))
    return TrendSeries(
        aggregate=draw(st.sampled_from((aggregate, aggregate, "")))
        if aggregate == "count"
        else aggregate,
        field=field,
        filters=filters,
        label=draw(LABELS),
        event=event,
    )


def formula_texts(series: int) -> st.SearchStrategy[str]:
    letters = [chr(ord("A") + i) for i in range(series)]
    atoms = st.sampled_from([*letters, letters[0].lower(), "100", "2", "0.5", "0"])
    return st.recursive(
        atoms,
        lambda inner: st.one_of(
            st.builds(
                lambda left, op, right: f"{left} {op} {right}",
                inner,
                st.sampled_from("+-*/"),
                inner,
            ),
            inner.map(lambda text: f"({text})"),
            inner.map(lambda text: f"-{text}"),
        ),
        max_leaves=4,
    )


@st.composite
def trend_cases(draw: st.DrawFn) -> tuple[str, dt.datetime, TrendRequest]:
    tenant = draw(st.sampled_from((ACME,) * 6 + (GLOBEX, GLOBEX, HOSTILE_TENANT, GHOST)))
    now = draw(st.sampled_from(NOWS))
    zone = draw(st.sampled_from(ZONES))
    interval = draw(
        st.sampled_from(
            ("", "day", "day", "hour", "hour", "week", "month", "minute", "quarter", "year")
        )
    )
    date_from, date_to = draw(date_bounds(interval or "day", zone))
    display = draw(st.sampled_from(("", "", "cumulative", "rolling")))
    count = draw(st.integers(1, 3))
    series = tuple(draw(series_items(display)) for _ in range(count))
    breakdown = draw(st.sampled_from(("", "", *BREAKDOWNS)))
    compare = draw(
        st.sampled_from(("", "", "previous", "previous", "-1w", "-1m", "-1y", "-3d", "-24h", "-1q"))
    )
    return (
        tenant,
        now,
        TrendRequest(
            model=draw(st.sampled_from(("product.events", "events"))),
            series=series,
            date_from=date_from,
            date_to=date_to,
            interval=interval,
            time_zone=zone,
            week_start=draw(st.sampled_from(("", "monday", "sunday", "sunday"))),
            date_field=draw(st.sampled_from(("", "timestamp"))),
            filters=draw(filter_maps(2)),
            breakdown=breakdown,
            breakdown_limit=draw(st.sampled_from((0, 1, 2, 3))) if breakdown else 0,
            compare=compare,
            formula=draw(formula_texts(count)) if draw(st.booleans()) else "",
            display=display,
            rolling_window=draw(st.integers(1, 6)) if display == "rolling" else 0,
        ),
    )


@ENGINE
@given(case=trend_cases())
async def test_random_trends_equal_the_reference(dataset: DataSet, case: Any) -> None:
    tenant, now, request = case
    note(f"tenant={tenant!r} now={now.isoformat()} request={request!r}")
    refusal: tuple[str, str] | None = None
    try:
        expected = reference_trend(request, dataset.rows, tenant, now, EVENTS)
    except Rejected as rejected:
        refusal = (rejected.field, rejected.reason)
    if refusal is not None:
        with pytest.raises(AnalyticsError) as caught:
            await run_trend(dataset, request, tenant, now)
        error = caught.value
        assert (error.kind, error.violations[0].field, error.reason) == (
            ErrorKind.VALIDATION,
            *refusal,
        )
        return
    assert_tenant_first(compile_trend(request, dataset.catalog, tenant, now), tenant)
    answer = await run_trend(dataset, request, tenant, now)
    assert_same_answer(answer, expected, request)


# --- explicit properties ------------------------------------------------------------------------

ALL_AGGREGATES = (
    TrendSeries(),
    TrendSeries(aggregate="unique_actors"),
    TrendSeries(aggregate="count_distinct", field="platform"),
    TrendSeries(aggregate="sum", field="revenue"),
    TrendSeries(aggregate="sum", field="contact_id"),
    TrendSeries(aggregate="avg", field="revenue"),
    TrendSeries(aggregate="min", field="revenue"),
    TrendSeries(aggregate="max", field="contact_id"),
    TrendSeries(aggregate="p50", field="revenue"),
)
#: What an empty bucket reads, series by series (README: 0 for counts and sums, else null).
EMPTY = (0, 0, 0, 0, 0, None, None, None, None)
NOW = NOWS[0]


@pytest.mark.parametrize(
    ("zone", "interval", "week_start", "day_from", "day_to", "count", "first", "last"),
    [
        # 23 local hours when Berlin springs forward, 25 when New York falls back.
        (
            "Europe/Berlin",
            "hour",
            "",
            "2026-03-29",
            "2026-03-29",
            23,
            "2026-03-29T00:00:00+01:00",
            "2026-03-29T23:00:00+02:00",
        ),
        (
            "America/New_York",
            "hour",
            "",
            "2026-11-01",
            "2026-11-01",
            25,
            "2026-11-01T00:00:00-04:00",
            "2026-11-01T23:00:00-05:00",
        ),
        # Lord Howe moves by 30 minutes: 24.5 hours in 25 local hours, 23.5 in 24.
        (
            "Australia/Lord_Howe",
            "hour",
            "",
            "2026-04-05",
            "2026-04-05",
            25,
            "2026-04-05T00:00:00+11:00",
            "2026-04-05T23:00:00+10:30",
        ),
        (
            "Australia/Lord_Howe",
            "hour",
            "",
            "2026-10-04",
            "2026-10-04",
            24,
            "2026-10-04T00:00:00+10:30",
            "2026-10-04T23:00:00+11:00",
        ),
        (
            "UTC",
            "day",
            "",
            "2026-06-01",
            "2026-06-30",
            30,
            "2026-06-01T00:00:00Z",
            "2026-06-30T00:00:00Z",
        ),
        (
            "Europe/Berlin",
            "week",
            "",
            "2026-03-01",
            "2026-04-30",
            10,
            "2026-02-23T00:00:00+01:00",
            "2026-04-27T00:00:00+02:00",
        ),
        (
            "Europe/Berlin",
            "week",
            "sunday",
            "2026-03-01",
            "2026-04-30",
            9,
            "2026-03-01T00:00:00+01:00",
            "2026-04-26T00:00:00+02:00",
        ),
        (
            "",
            "month",
            "",
            "2026-01-01",
            "2026-12-31",
            12,
            "2026-01-01T00:00:00Z",
            "2026-12-01T00:00:00Z",
        ),
    ],
)
async def test_every_bucket_of_the_range_is_there_and_empty_ones_read_zero_or_null(
    dataset: DataSet,
    zone: str,
    interval: str,
    week_start: str,
    day_from: str,
    day_to: str,
    count: int,
    first: str,
    last: str,
) -> None:
    request = TrendRequest(
        model="product.events",
        series=ALL_AGGREGATES,
        date_from=day_from,
        date_to=day_to,
        interval=interval,
        time_zone=zone,
        week_start=week_start,
    )
    answer = await run_trend(dataset, request, ACME, NOW)
    assert (len(answer.buckets), answer.buckets[0], answer.buckets[-1]) == (count, first, last)
    assert len(answer.lines) == len(ALL_AGGREGATES)
    assert all(len(line.values) == count for line in answer.lines)
    counts = answer.lines[0].values
    empty = [index for index, value in enumerate(counts) if value == 0]
    assert empty, "the range should have empty buckets"
    for index in empty:
        assert tuple(line.values[index] for line in answer.lines) == EMPTY, (
            index,
            answer.buckets[index],
        )
    if interval == "hour":
        assert any(counts), "a day of a change of offset has events in the data set"
    assert_same_answer(answer, reference_trend(request, dataset.rows, ACME, NOW, EVENTS), request)


def _instant(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(
    ("zone", "interval", "date_from", "date_to", "compare"),
    [
        (
            "Europe/Berlin",
            "day",
            "2026-03-25T10:00:00+01:00",
            "2026-04-08T10:00:00+02:00",
            "previous",
        ),
        ("Europe/Berlin", "hour", "2026-03-29", "2026-03-29", "previous"),
        ("America/New_York", "week", "2026-10-20T00:00:00", "2026-11-10T00:00:00", "previous"),
        ("UTC", "day", "2026-03-01", "2026-04-15", "-1y"),
        ("Australia/Lord_Howe", "month", "2026-03-15T12:00:00", "2026-04-20", "-1m"),
        ("America/New_York", "hour", "2026-11-01T12:00:00Z", "2026-11-02T00:00:00Z", "-24h"),
        # A month back from March is February: 28 compare buckets against 31.
        ("UTC", "day", "2026-03-01", "2026-03-31", "-1m"),
    ],
)
async def test_compare_lines_are_the_trend_of_the_shifted_range(
    dataset: DataSet, zone: str, interval: str, date_from: str, date_to: str, compare: str
) -> None:
    series = (
        TrendSeries(),
        TrendSeries(aggregate="unique_actors"),
        TrendSeries(aggregate="sum", field="revenue"),
        TrendSeries(aggregate="avg", field="revenue"),
    )
    request = TrendRequest(
        model="product.events",
        series=series,
        date_from=date_from,
        date_to=date_to,
        interval=interval,
        time_zone=zone,
        compare=compare,
    )
    answer = await run_trend(dataset, request, ACME, NOW)
    plan = compile_trend(request, dataset.catalog, ACME, NOW)
    start, end = compare_range(
        compare, plan.date_from, plan.date_to, len(plan.buckets), interval, ZoneInfo(zone)
    )
    shifted = await run_trend(
        dataset,
        dataclasses.replace(request, date_from=_instant(start), date_to=_instant(end), compare=""),
        ACME,
        NOW,
    )
    if compare == "previous":
        assert len(answer.compare_buckets) == len(answer.buckets)
    if compare == "-1m" and interval == "day":
        assert (len(answer.buckets), len(answer.compare_buckets)) == (31, 28)
    assert answer.compare_buckets == shifted.buckets
    compared = [line for line in answer.lines if line.compare]
    assert [line.values for line in compared] == [line.values for line in shifted.lines]
    assert any(value for line in compared for value in line.values), "compare an empty period"
    assert_same_answer(answer, reference_trend(request, dataset.rows, ACME, NOW, EVENTS), request)


def _formula_operand(value: Any) -> Decimal | None:
    if value is None:
        return None
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


async def test_formula_values_are_the_series_arithmetic(dataset: DataSet) -> None:
    request = TrendRequest(
        model="product.events",
        series=(
            TrendSeries(),
            TrendSeries(aggregate="unique_actors"),
            TrendSeries(aggregate="sum", field="revenue"),
            TrendSeries(aggregate="avg", field="revenue"),
        ),
        date_from="2026-03-20",
        date_to="2026-04-10",
        time_zone="Europe/Berlin",
        breakdown="platform",
        breakdown_limit=2,
        compare="previous",
        formula="(A - B) * 100 / C + d",
    )
    answer = await run_trend(dataset, request, ACME, NOW)
    groups = [answer.lines[i : i + 5] for i in range(0, len(answer.lines), 5)]
    assert len(groups) == 6  # two values and Other, in both periods
    checked = 0
    for *series, formula in groups:
        assert (formula.series, formula.label) == ("formula", "(A - B) * 100 / C + D")
        assert [s.series for s in series] == ["A", "B", "C", "D"]
        for index, value in enumerate(formula.values):
            a, b, c, d = (_formula_operand(s.values[index]) for s in series)
            if a is None or b is None or c is None or d is None or c == 0:
                assert value is None, (index, a, b, c, d)
                continue
            expected = float((a - b) * 100 / c + d)
            assert value is not None
            assert math.isclose(value, expected, rel_tol=1e-12), (index, value, expected)
            checked += 1
    assert checked > 10


async def test_rows_before_date_from_never_count_even_in_the_first_bucket(dataset: DataSet) -> None:
    start = dt.datetime(2026, 3, 10, 12, tzinfo=UTC)
    live = [r["timestamp"] for r in current_rows(dataset.rows, EVENTS) if r["tenant_id"] == ACME]
    morning = sum(1 for t in live if start - dt.timedelta(hours=12) <= t < start)
    afternoon = sum(1 for t in live if start <= t < start + dt.timedelta(hours=12))
    march = sum(1 for t in live if start <= t < dt.datetime(2026, 4, 1, tzinfo=UTC))
    assert morning >= 3, "the data set has rows on the morning before dateFrom"
    for interval, date_to, expected in (
        ("day", "2026-03-11T00:00:00Z", [afternoon]),
        ("month", "2026-04-01T00:00:00Z", [march]),
        ("week", "2026-03-11T00:00:00Z", [afternoon]),
    ):
        request = TrendRequest(
            model="product.events",
            series=(TrendSeries(),),
            date_from="2026-03-10T12:00:00Z",
            date_to=date_to,
            interval=interval,
        )
        answer = await run_trend(dataset, request, ACME, NOW)
        assert answer.lines[0].values == expected, interval
    day = await run_trend(
        dataset,
        TrendRequest(model="product.events", date_from="2026-03-10", date_to="2026-03-10"),
        ACME,
        NOW,
    )
    assert day.lines[0].values == [morning + afternoon]


MAY_5 = TrendRequest(
    model="product.events", date_from="2026-05-05", date_to="2026-05-05", interval="day"
)


async def test_breakdown_ties_go_to_the_smaller_value_uuids_by_their_text(dataset: DataSet) -> None:
    request = dataclasses.replace(MAY_5, breakdown="event_id", breakdown_limit=2)
    answer = await run_trend(dataset, request, HANDMADE, NOW)
    # Every event counts 1: the two smallest ids as text (not as the engine compares UUIDs).
    assert [(line.breakdown_value, line.values) for line in answer.lines] == [
        ("00000000-0000-0000-ffff-000000000000", [1]),
        ("00000000-0000-0001-0000-000000000000", [1]),
        ("Other", [3]),
    ]


async def test_a_sum_over_no_values_ranks_as_zero(dataset: DataSet) -> None:
    request = dataclasses.replace(
        MAY_5,
        series=(TrendSeries(aggregate="sum", field="revenue"),),
        breakdown="platform",
        breakdown_limit=4,
    )
    answer = await run_trend(dataset, request, HANDMADE, NOW)
    # b has no revenue at all: its sum shows 0 and ranks as 0, above a's -5.00.
    assert [(line.breakdown_value, line.values) for line in answer.lines] == [
        ("c", [Decimal("3.00")]),
        ("web", [Decimal("2.00")]),
        (None, [Decimal("1.00")]),
        ("b", [0]),
        ("Other", [Decimal("-5.00")]),
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"platform": "not.in.(web)"}, 3),
        ({"platform": "not.eq.web"}, 3),
        ({"or": '(platform.not.in.("web"),platform.eq."b")'}, 3),
        ({"platform": "in.(a,b)"}, 2),
        ({"platform": "is.null"}, 1),
    ],
)
async def test_filters_leave_null_out_as_sql_does(
    dataset: DataSet, filters: dict[str, str], expected: int
) -> None:
    # A null platform is neither in nor not in a list: SQL (and Query) leave the event out.
    for request in (
        dataclasses.replace(MAY_5, filters=filters),
        dataclasses.replace(MAY_5, series=(TrendSeries(filters=filters),)),
    ):
        answer = await run_trend(dataset, request, HANDMADE, NOW)
        assert answer.lines[0].values == [expected], request


# --- SQL shape and tenants ----------------------------------------------------------------------

#: Marks every hostile string, so that finding it in SQL text is unambiguous.
POISON = "\u2603zq\u2603"


def hostile_strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=30)).map(
        lambda text: text + POISON
    )


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[TrendRequest, tuple[str, ...]]:
    """One fixed shape whose strings (property keys and values, an event name, labels, the
    formula) are all drawn, and the strings among them that the engine must see (as values)."""
    key = [draw(hostile_strings()) for _ in range(4)]
    value = [draw(hostile_strings()) for _ in range(4)]
    event = draw(hostile_strings())
    request = TrendRequest(
        model="product.events",
        series=(
            TrendSeries(
                filters={f"properties.{key[0]}": f"eq.{value[0]}"},
                label=draw(hostile_strings()),
                event=event,
            ),
            TrendSeries(
                aggregate="count_distinct",
                field=f"properties.{key[1]}",
                filters={"platform": f"in.({quote_value(value[1])},{quote_value(value[2])})"},
                label=draw(hostile_strings()),
            ),
        ),
        date_from="2026-03-01",
        date_to="2026-03-31",
        time_zone="Europe/Berlin",
        filters={f"properties.{key[2]}": f"neq.{value[3]}"},
        breakdown=f"properties.{key[3]}",
        breakdown_limit=3,
        compare="previous",
        formula=draw(formula_texts(2)),
        display="cumulative",
    )
    return request, (*key, *value, event)


@COMPILE_ONLY
@given(first=hostile_requests(), second=hostile_requests())
def test_hostile_strings_never_change_the_sql_nor_reach_it(
    catalog: Catalog,
    first: tuple[TrendRequest, tuple[str, ...]],
    second: tuple[TrendRequest, tuple[str, ...]],
) -> None:
    plans = [compile_trend(request, catalog, ACME, NOW) for request, _ in (first, second)]
    # One bucket query for both periods, and per period the cumulative unique count's own query
    assert [len(plan.queries) for plan in plans] == [3, 3]
    for one, other in zip(plans[0].queries, plans[1].queries, strict=True):
        assert one.compiled.sql == other.compiled.sql
        assert POISON not in one.compiled.sql
        # Labels and formulas are not parameters either: they never reach the engine.
        same_values = first[1] == second[1]
        assert (one.compiled.parameters == other.compiled.parameters) == same_values
    for plan in plans:
        assert_tenant_first(plan, ACME)


@pytest.mark.parametrize("display", ["", "cumulative", "rolling"])
@pytest.mark.parametrize("tenant", [ACME, HOSTILE_TENANT])
def test_every_where_of_every_query_starts_with_the_tenant(
    catalog: Catalog, display: str, tenant: str
) -> None:
    request = TrendRequest(
        model="product.events",
        series=(
            TrendSeries(aggregate="unique_actors", filters={"platform": "eq.web"}),
            TrendSeries(aggregate="count_distinct", field="properties.utm_source", event="x"),
            TrendSeries(aggregate="avg", field="revenue"),
        ),
        filters={"or": "(country.eq.DE,plan.is.null)"},
        breakdown="properties.plan",
        compare="previous",
        display=display,
        rolling_window=3 if display == "rolling" else 0,
    )
    plan = compile_trend(request, catalog, tenant, NOW)
    # one bucket query for both periods, plus a unique count query per unique series and period
    assert len(plan.queries) == (5 if display else 1)
    assert_tenant_first(plan, tenant)


ISOLATION_REQUESTS = (
    TrendRequest(
        model="product.events",
        series=(TrendSeries(), TrendSeries(aggregate="unique_actors", event="signed_up")),
        date_from="2026-03-01",
        date_to="2026-04-15",
        breakdown="platform",
        breakdown_limit=2,
        compare="previous",
        display="cumulative",
    ),
    TrendRequest(
        model="product.events",
        series=(TrendSeries(aggregate="sum", field="revenue"),),
        date_from="2026-09-20",
        date_to="2026-11-10",
        interval="week",
        time_zone="America/New_York",
        breakdown="properties.utm_source",
    ),
    TrendRequest(
        model="product.events",
        series=(TrendSeries(aggregate="count_distinct", field="event_id"),),
        date_from="-60d",
    ),
)


@pytest.mark.parametrize("request_", ISOLATION_REQUESTS)
async def test_a_tenant_never_sees_another_tenants_events(
    dataset: DataSet, request_: TrendRequest
) -> None:
    alone = await run_trend(dataset, request_, ACME, NOW, catalog=dataset.only_acme)
    among_others = await run_trend(dataset, request_, ACME, NOW)
    assert among_others == alone
    assert any(value for line in alone.lines for value in line.values)
    ghost = await run_trend(dataset, request_, GHOST, NOW)
    if request_.breakdown:
        assert ghost.lines == []
    else:
        assert all(value == 0 for line in ghost.lines for value in line.values)
    # The other tenants, among them one with a hostile id and one sharing event ids with acme.
    for tenant in (GLOBEX, HOSTILE_TENANT):
        answer = await run_trend(dataset, request_, tenant, NOW)
        expected = reference_trend(request_, dataset.rows, tenant, NOW, EVENTS)
        assert_same_answer(answer, expected, (tenant, request_))
        assert answer != alone


# --- a replicated model -------------------------------------------------------------------------

WON = {"stage": "eq.closed_won"}


def _decimals(*values: str) -> list[Decimal]:
    return [Decimal(value) for value in values]


@pytest.mark.parametrize(
    ("zone", "display", "filters", "expected"),
    [
        (
            "",
            "",
            WON,
            _decimals(
                "1099.99", "0", "250.99", "0", "0", "0", "10.00", "0", "0", "0", "0", "300.00"
            ),
        ),
        (
            "",
            "cumulative",
            WON,
            _decimals(
                "1099.99",
                "1099.99",
                "1350.98",
                "1350.98",
                "1350.98",
                "1350.98",
                "1360.98",
                "1360.98",
                "1360.98",
                "1360.98",
                "1360.98",
                "1660.98",
            ),
        ),
        # Berlin: deal 7 (a second before 2026 in UTC) is in January, deal 3 in February and
        # deal 13 in April.
        (
            "Europe/Berlin",
            "",
            WON,
            _decimals(
                "1001.00",
                "99.99",
                "250.50",
                "0.49",
                "0",
                "0",
                "10.00",
                "0",
                "0",
                "0",
                "0",
                "300.00",
            ),
        ),
        # A filter naming deleted_at decides about soft-deleted rows itself.
        (
            "",
            "",
            {**WON, "deleted_at": "not.is.null"},
            _decimals("0", "7777.00", *["0"] * 10),
        ),
    ],
)
async def test_won_deal_amount_per_month(
    dataset: DataSet, zone: str, display: str, filters: dict[str, str], expected: list[Decimal]
) -> None:
    request = TrendRequest(
        model="crm.deals",
        date_field="closed_at",
        date_from="2026-01-01",
        date_to="2026-12-31",
        interval="month",
        time_zone=zone,
        series=(TrendSeries(aggregate="sum", field="amount", filters=filters, label="won"),),
        display=display,
    )
    answer = await run_trend(dataset, request, ACME, NOW)
    assert len(answer.buckets) == 12
    assert answer.buckets[0] == ("2026-01-01T00:00:00+01:00" if zone else "2026-01-01T00:00:00Z")
    [line] = answer.lines
    assert (line.series, line.label, line.output_type, line.compare) == (
        "A",
        "won",
        "decimal",
        False,
    )
    assert all(isinstance(value, Decimal) for value in line.values)
    assert line.values == expected
    assert_same_answer(answer, reference_trend(request, DEAL_ROWS, ACME, NOW, DEALS), request)


# --- validation ---------------------------------------------------------------------------------

BAD_REQUESTS = [
    ({"series": (TrendSeries(aggregate="median"),)}, "series[0].aggregate", "UNKNOWN_AGGREGATE"),
    (
        {"model": "crm.deals", "series": (TrendSeries(aggregate="unique_actors"),)},
        "series[0].aggregate",
        "INVALID_AGGREGATE",
    ),
    ({"interval": "fortnight"}, "interval", "INVALID_INTERVAL"),
    ({"week_start": "saturday"}, "weekStart", "INVALID_VALUE"),
    ({"date_from": "2026-03-10", "date_to": "2026-03-09"}, "dateFrom", "INVALID_DATE_RANGE"),
    (
        {"date_from": "2026-03-10T12:00:00Z", "date_to": "2026-03-10T11:00:00Z"},
        "dateFrom",
        "INVALID_DATE_RANGE",
    ),
    (
        {"interval": "minute", "date_from": "2026-01-01", "date_to": "2026-03-01"},
        "interval",
        "TOO_MANY_BUCKETS",
    ),
    ({"formula": "A +* 2"}, "formula", "INVALID_FORMULA"),
    ({"formula": "A / B"}, "formula", "INVALID_FORMULA"),
    ({"rolling_window": 3}, "rollingWindow", "INVALID_VALUE"),
    (
        {"series": (TrendSeries(aggregate="p90", field="revenue"),), "display": "cumulative"},
        "series[0].aggregate",
        "INVALID_AGGREGATE",
    ),
    ({"breakdown": "timestamp"}, "breakdown", "INVALID_BREAKDOWN"),
    ({"breakdown": "colour"}, "breakdown", "UNKNOWN_FIELD"),
    ({"date_field": "revenue"}, "dateField", "INVALID_DATE_FIELD"),
    (
        {"model": "crm.deals", "date_field": "expected_close_date"},
        "dateField",
        "INVALID_DATE_FIELD",
    ),
]


@pytest.mark.parametrize(("changes", "field", "reason"), BAD_REQUESTS)
def test_invalid_requests_name_the_field(
    catalog: Catalog, changes: dict[str, Any], field: str, reason: str
) -> None:
    request = dataclasses.replace(TrendRequest(model="product.events"), **changes)
    with pytest.raises(AnalyticsError) as caught:
        compile_trend(request, catalog, ACME, NOW)
    error = caught.value
    assert (error.kind, error.reason) == (ErrorKind.VALIDATION, reason)
    assert [violation.field for violation in error.violations] == [field]
    assert error.message.startswith(f"{field}: "), error.message


@COMPILE_ONLY
@given(text=hostile_strings())
def test_a_hostile_formula_is_refused_naming_its_field(catalog: Catalog, text: str) -> None:
    request = TrendRequest(model="product.events", series=(TrendSeries(),) * 2, formula=text)
    with pytest.raises(AnalyticsError) as caught:
        compile_trend(request, catalog, ACME, NOW)
    assert (caught.value.reason, caught.value.violations[0].field) == ("INVALID_FORMULA", "formula")


# --- REST ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rest_settings() -> Settings:
    return Settings(port=0, rest_port=0, query_timeout_seconds=30)


@pytest.fixture(scope="module")
async def server(
    rest_settings: Settings, dataset: DataSet, embedded_backend: EmbeddedBackend
) -> AsyncIterator[RunningServer]:
    running = await start_server(rest_settings, catalog=dataset.catalog, backend=embedded_backend)
    yield running
    await running.stop(1.0)


async def _post_trend(
    server: RunningServer, settings_: Settings, module: str, body: dict[str, Any]
) -> tuple[int, str, dict[str, Any]]:
    token = mint_token(settings_, subject="tester", tenant=ACME, permissions=("crm.deals.read",))
    url = f"http://127.0.0.1:{server.rest_port}/v1/data/{module}/trends"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as reply,
    ):
        return reply.status, reply.content_type, await reply.json(content_type=None)


async def test_rest_answers_json_and_problem_documents(
    server: RunningServer, rest_settings: Settings
) -> None:
    body = {
        "model": "deals",
        "dateField": "closed_at",
        "dateFrom": "2026-01-01",
        "dateTo": "2026-12-31",
        "interval": "month",
        "series": [
            {"aggregate": "sum", "field": "amount", "filters": WON, "label": "won"},
            {"filters": WON},
        ],
        "formula": "A / B",
    }
    status, content_type, document = await _post_trend(server, rest_settings, "crm", body)
    assert (status, content_type) == (200, "application/json"), document
    months = [f"2026-{month:02d}-01T00:00:00Z" for month in range(1, 13)]
    won = [1099.99, 0, 250.99, 0, 0, 0, 10, 0, 0, 0, 0, 300]
    deals = [2, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert document["buckets"] == months
    assert "compareBuckets" not in document
    assert document["lines"] == [
        {"series": "A", "label": "won", "values": won, "type": "decimal"},
        {"series": "B", "label": "count", "values": deals, "type": "int"},
        {
            "series": "formula",
            "label": "A / B",
            "values": [549.995, None, 125.495, None, None, None, 10, None, None, None, None, 300],
            "type": "float",
        },
    ]
    assert set(document["meta"]) == {"lastSyncAt", "rowsScanned", "durationMs", "cacheHit"}

    status, content_type, problem = await _post_trend(
        server, rest_settings, "crm", {**body, "interval": "fortnight"}
    )
    assert (status, content_type) == (400, "application/problem+json")
    assert problem["type"] == PROBLEM_TYPE_BASE + "validation-error"
    assert (problem["code"], problem["field"]) == ("INVALID_INTERVAL", "interval")
    assert [v["field"] for v in problem["violations"]] == ["interval"]
