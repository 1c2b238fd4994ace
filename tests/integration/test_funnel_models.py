"""Funnels whose steps are on several models, tied to one actor through the catalog's relations.

Contact created (crm.contacts by created_at) -> deal created (crm.deals by created_at, actor
through the relation ``contact``) -> signed up (product.events, actor contact_id) -> deal won
(crm.deals by closed_at): each hypothesis example writes contacts, deals and events of a fresh
pair of tenants (one hostile) on a time grid of half windows, with soft-deleted, re-versioned
and erased rows, and compares the engine's answer with tests/funnel_reference.py's. Every scan
of the query starts with its tenant condition, and reading a step's model needs its permission.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, Model
from service.errors import AnalyticsError
from service.insights.funnel_request import FunnelExclusion, FunnelRequest, FunnelStep
from service.insights.funnels import ATTRIBUTIONS, FunnelAnswer, assemble_funnel, compile_funnel
from service.schema import all_ddl
from tests.conftest import catalog_in_database, unique_database
from tests.funnel_reference import reference_breakdowns, window_of
from tests.integration.test_compiler_on_engine import Row, insert_statement
from tests.integration.test_funnels import assert_same, assert_same_breakdowns
from tests.sql_shape import assert_tenant_first, event_arrow

pytestmark = pytest.mark.integration

ENGINE = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
T0 = dt.datetime(2026, 3, 10, 11, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
HOSTILE = "x' OR '1'='1"
WINDOWS = ("1h", "1d")
CONTACT_CREATED = FunnelStep(model="crm.contacts", date_field="created_at", label="contact")
DEAL_CREATED = FunnelStep(model="crm.deals", date_field="created_at", actor="contact")
DEAL_WON = FunnelStep(
    model="crm.deals", date_field="closed_at", actor="contact_id", filters={"stage": "eq.won"}
)
SIGNED_UP = FunnelStep("signed_up", model="product.events")
MENU = (CONTACT_CREATED, DEAL_CREATED, DEAL_WON, SIGNED_UP)
_examples = itertools.count()


class Tables:
    """The database of the examples (tables made once; each example its own tenants)."""

    def __init__(self, backend: EmbeddedBackend, catalog: Catalog) -> None:
        self.backend = backend
        self.catalog = catalog

    def __repr__(self) -> str:
        return f"Tables({self.catalog.database})"

    def model(self, name: str) -> Model:
        module, _, model = name.partition(".")
        return self.catalog.models[(module, model)]


@pytest.fixture(scope="module")
async def tables(embedded_backend: EmbeddedBackend, catalog: Catalog) -> Tables:
    mine = catalog_in_database(catalog, unique_database("funnel_models"))
    for statement in all_ddl(mine):
        await embedded_backend.command(statement)
    return Tables(embedded_backend, mine)


def _contact(tenant: str, key: int, at: dt.datetime, rng: random.Random) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "id": key,
        "email": f"c{key}@example.com",
        "status": rng.choice(("lead", "customer")),
        "country": rng.choice(("DE", "FR")),
        "lead_source": None,
        "lifetime_value": Decimal("0.00"),
        "score": None,
        "is_subscribed": False,
        "created_at": at,
        "updated_at": at,
        "deleted_at": None,
    }


def _deal(
    tenant: str, key: int, contact: int, at: dt.datetime, won: dt.datetime | None, stage: str
) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "id": key,
        "contact_id": contact,
        "owner_id": 1,
        "title": HOSTILE,
        "stage": stage,
        "amount": Decimal("10.00"),
        "currency": "EUR",
        "probability": 0.5,
        "created_at": at,
        "closed_at": won,
        "expected_close_date": None,
        "updated_at": at,
        "deleted_at": None,
    }


@st.composite
def cases(
    draw: st.DrawFn, order: str
) -> tuple[FunnelRequest, dict[str, list[dict[str, Any]]], str]:
    serial = next(_examples)
    tenant, other = f"acme-{serial}", f"{HOSTILE}-{serial}"
    window_text = draw(st.sampled_from(WINDOWS))
    half = window_of(window_text) / 2
    rng = draw(st.randoms(use_true_random=False))
    version = itertools.count(1)

    def moment() -> dt.datetime:
        micro = rng.choice((0, 0, 1, -1)) * dt.timedelta(microseconds=1)
        return T0 + rng.randint(0, 5) * half + micro

    rows: dict[str, list[dict[str, Any]]] = {"crm.contacts": [], "crm.deals": [], "events": []}
    deal_keys = itertools.count(1)
    for contact in range(1, rng.randint(3, 7)):
        owner = tenant if rng.random() < 0.8 else other
        born = moment()
        rows["crm.contacts"].append(_contact(owner, contact, born, rng))
        if rng.random() < 0.15:  # soft-deleted later: no longer a step
            rows["crm.contacts"].append(
                _contact(owner, contact, born, rng) | {"deleted_at": NOW, "_version": 2}
            )
        for _ in range(rng.randint(0, 3)):
            created = born + rng.randint(0, 2) * half / 2
            won = created + rng.randint(0, 3) * half / 2 if rng.random() < 0.6 else None
            stage = "won" if won is not None and rng.random() < 0.8 else "open"
            rows["crm.deals"].append(
                _deal(owner, next(deal_keys), contact, created, won, stage)
                | {"_version": next(version)}
            )
            if rng.random() < 0.15:  # erased: a hard delete replicated as a tombstone
                rows["crm.deals"].append(
                    rows["crm.deals"][-1] | {"_is_deleted": 1, "_version": 10**6}
                )
        for _ in range(rng.randint(0, 2)):
            rows["events"].append(
                {
                    "tenant_id": owner,
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "event": rng.choice(("signed_up", "signed_up", "purchased")),
                    "contact_id": contact,
                    "timestamp": born + rng.randint(0, 2) * half / 2,
                    "platform": rng.choice(("web", None)),
                    "country": None,
                    "plan": None,
                    "revenue": None,
                    "properties_keys": [],
                    "properties_values": [],
                    "_version": next(version),
                    "_is_deleted": 0,
                }
            )
    for table in ("crm.contacts", "crm.deals"):
        for row in rows[table]:
            row.setdefault("_version", 1)
            row.setdefault("_is_deleted", 0)
    # Mostly the journey's order from a first step (so that many actors go far), else any.
    if draw(st.sampled_from((True, True, False))):
        first = draw(st.integers(0, 2))
        later = draw(st.lists(st.integers(first, 3), min_size=1, max_size=3))
        steps = [MENU[first], *(MENU[k] for k in sorted(later))]
    else:
        steps = draw(st.lists(st.sampled_from(MENU), min_size=2, max_size=4))
    exclusions: tuple[FunnelExclusion, ...] = ()
    if order != "unordered" and draw(st.booleans()):
        exclusions = (FunnelExclusion("purchased", model="product.events"),)
    on_events = draw(st.booleans())
    breakdown = draw(st.sampled_from(("", "platform"))) if on_events else ""
    attribution = draw(st.sampled_from(ATTRIBUTIONS)) if breakdown else ""
    request = FunnelRequest(
        model="product.events" if on_events else "crm.contacts",
        steps=tuple(steps),
        date_from=draw(st.sampled_from(("2026-03-01", (T0 + half).isoformat()))),
        date_to="2026-03-31",
        window=window_text,
        filters={"platform": "eq.web"} if on_events and draw(st.booleans()) else {},
        order=order,
        exclusions=exclusions,
        breakdown=breakdown,
        breakdown_attribution=attribution,
        breakdown_step=draw(st.integers(1, len(steps))) if attribution == "step" else 0,
    )
    return request, rows, tenant


async def _write(tables: Tables, rows: dict[str, list[dict[str, Any]]]) -> None:
    events = tables.model("product.events")
    if rows["events"]:
        await tables.backend.insert_arrow(
            tables.catalog.database, events.table, event_arrow(events, rows["events"])
        )
    for name in ("crm.contacts", "crm.deals"):
        model = tables.model(name)
        written = [
            Row(
                row["tenant_id"],
                {field: row[field] for field in model.fields},
                row["_version"],
                row["_is_deleted"],
            )
            for row in rows[name]
        ]
        if written:
            await tables.backend.command(insert_statement(tables.catalog, model, written))


async def _run(tables: Tables, request: FunnelRequest, tenant: str) -> FunnelAnswer:
    plan = compile_funnel(request, tables.catalog, tenant, NOW)
    assert_tenant_first(plan.compiled, tenant)
    result = await tables.backend.execute(
        plan.compiled, timeout_seconds=60, query_id=uuid.uuid4().hex
    )
    return assemble_funnel(plan, result.table)


@pytest.mark.parametrize("order", ["ordered", "strict", "unordered"])
@ENGINE
@given(data=st.data())
async def test_steps_on_several_models_equal_the_reference(
    tables: Tables, order: str, data: st.DataObject
) -> None:
    request, rows, tenant = data.draw(cases(order))
    note(f"request={request!r}")
    note(f"rows={rows!r}")
    await _write(tables, rows)
    answer = await _run(tables, request, tenant)
    model = tables.model(request.model)
    others = {"crm.contacts": rows["crm.contacts"], "crm.deals": rows["crm.deals"]}
    others["product.events"] = rows["events"]
    mine = others.pop(request.model)
    expected = reference_breakdowns(request, mine, tenant, NOW, model, tables.catalog, others)
    if request.breakdown:
        assert_same_breakdowns(answer, expected, request)
    else:
        assert_same(answer.steps, expected[0].steps, request)


async def test_contact_to_won_deal_by_hand(tables: Tables) -> None:
    """Contact created -> deal created -> deal won, three contacts worked out by hand."""
    tenant = "models-by-hand"
    hour = dt.timedelta(hours=1)
    rng = random.Random(1)
    contacts = [_contact(tenant, key, T0, rng) for key in (1, 2, 3)]
    deals = [
        _deal(tenant, 1, 1, T0 + hour, T0 + 3 * hour, "won"),  # all the way: 1 h, then 2 h
        _deal(tenant, 2, 2, T0 + 2 * hour, None, "open"),  # a deal, not won
        _deal(tenant, 3, 3, T0 + 30 * hour, T0 + 31 * hour, "won"),  # outside the 1-day window
    ]
    for row in (*contacts, *deals):
        row.update(_version=1, _is_deleted=0)
    await _write(tables, {"crm.contacts": contacts, "crm.deals": deals, "events": []})
    request = FunnelRequest(
        model="crm.contacts",
        steps=(CONTACT_CREATED, DEAL_CREATED, DEAL_WON),
        date_from="2026-03-01",
        date_to="2026-03-31",
        window="1d",
    )
    answer = await _run(tables, request, tenant)
    assert [(s.actors, s.median_seconds) for s in answer.steps] == [
        (3, None),
        (2, 5400.0),
        (1, 7200.0),
    ]


@pytest.mark.parametrize(
    ("step", "field", "reason"),
    [
        (FunnelStep(model="crm.deals"), "steps[1].dateField", "REQUIRED"),
        (FunnelStep(model="crm.deals", date_field="stage"), "steps[1].dateField", ""),
        (
            FunnelStep(model="crm.deals", date_field="created_at"),
            "steps[1].actor",
            "ACTOR_MISMATCH",
        ),
        (
            FunnelStep(model="crm.deals", date_field="created_at", actor="owner_id"),
            "steps[1].actor",
            "ACTOR_MISMATCH",
        ),
        (FunnelStep(model="crm.deals", date_field="created_at", actor="x"), "steps[1].actor", ""),
        (
            FunnelStep("won", model="crm.deals", date_field="created_at", actor="contact"),
            "steps[1].event",
            "",
        ),
        (FunnelStep(model="crm.nothing"), "steps[1].model", "UNKNOWN_MODEL"),
        (
            FunnelStep(
                model="crm.deals", date_field="created_at", actor="contact", filters={"x": "eq.1"}
            ),
            "steps[1].filters.x",
            "UNKNOWN_FIELD",
        ),
    ],
)
def test_bad_steps_are_refused_naming_the_field(
    catalog: Catalog, step: FunnelStep, field: str, reason: str
) -> None:
    request = FunnelRequest(model="product.events", steps=(SIGNED_UP, step))
    with pytest.raises(AnalyticsError) as caught:
        compile_funnel(request, catalog, "acme", NOW)
    assert caught.value.violations[0].field == field
    if reason:
        assert caught.value.reason == reason
