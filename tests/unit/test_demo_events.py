"""The demo's product events: journeys, retention, seasonality and incidents, checked on the rows.

Every expectation is computed here in plain Python from the generated rows and the contacts,
not with the generator's own arithmetic.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import re
import statistics
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from service.catalog import Catalog, FieldSpec, FieldType
from service.demo.events import (
    DROP_DAYS,
    DROP_KEPT,
    EVENT_NAMES,
    EVENTS_PER_ROW,
    JOURNEY,
    PLANS,
    PLATFORMS,
    SIGNED_UP,
    SPIKE_DAY,
    SPIKE_FACTOR,
    SPIKE_SOURCE,
    STEP_RATES,
)
from service.demo.generator import (
    DEMO_TENANTS,
    MODEL_SHARES,
    DemoDataset,
    DemoError,
    current_rows,
    generate_dataset,
)

EVENTS, CONTACTS = "product.events", "crm.contacts"
ROWS = 20_000
FIRST_TENANT = DEMO_TENANTS[0]
UUID_V4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
Event = dict[str, Any]


@pytest.fixture(scope="module")
def dataset(catalog: Catalog) -> DemoDataset:
    return generate_dataset(catalog, seed=11, rows=ROWS)


@pytest.fixture(scope="module")
def events(dataset: DemoDataset) -> list[Event]:
    rows: list[Event] = dataset.tables[EVENTS].to_pylist()
    return rows


@pytest.fixture(scope="module")
def journeys(events: list[Event]) -> dict[tuple[str, int], dict[str, list[dt.datetime]]]:
    """(tenant, actor) -> event name -> the moments of those events, in time order."""
    by_actor: dict[tuple[str, int], dict[str, list[dt.datetime]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for event in sorted(events, key=lambda e: e["timestamp"]):
        by_actor[event["tenant_id"], event["contact_id"]][event["event"]].append(event["timestamp"])
    return by_actor


@pytest.fixture(scope="module")
def incident_events(catalog: Catalog) -> list[Event]:
    """Enough events that a day of the first tenant has a few hundred."""
    table = generate_dataset(catalog, seed=11, rows=3 * ROWS).tables[EVENTS]
    columns = ["tenant_id", "contact_id", "event", "timestamp"]
    rows: list[Event] = table.select([*columns, "properties_keys", "properties_values"]).to_pylist()
    return rows


def usual(counts: Counter[dt.date], day: dt.date) -> float:
    """The same weekday one to three weeks around ``day``: what the day would have looked like."""
    return statistics.mean(counts[day + dt.timedelta(weeks=w)] for w in (-3, -2, -1, 1, 2, 3))


def test_same_seed_same_events_and_events_leave_the_rest_alone(catalog: Catalog) -> None:
    first = generate_dataset(catalog, seed=3, rows=3_000)
    again = generate_dataset(catalog, seed=3, rows=3_000)
    other = generate_dataset(catalog, seed=4, rows=3_000)
    fewer = generate_dataset(catalog, seed=3, rows=3_000, events=500)
    assert first.tables[EVENTS].num_rows > 0
    assert first.tables[EVENTS].equals(again.tables[EVENTS])
    assert not first.tables[EVENTS].equals(other.tables[EVENTS])
    assert fewer.tables[EVENTS].num_rows < first.tables[EVENTS].num_rows
    for name in MODEL_SHARES:
        assert fewer.tables[name].equals(first.tables[name]), name


@pytest.mark.parametrize(("rows", "events"), [(ROWS, None), (2_000, 30_000), (2_000, 800)])
def test_event_count_follows_the_parameter(catalog: Catalog, rows: int, events: int | None) -> None:
    wanted = rows * EVENTS_PER_ROW if events is None else events
    generated = generate_dataset(catalog, seed=1, rows=rows, events=events)
    assert generated.tables[EVENTS].num_rows == pytest.approx(wanted, rel=0.1)


def test_no_events_without_contacts_or_when_none_are_asked(catalog: Catalog) -> None:
    assert generate_dataset(catalog, rows=0, events=1_000).tables[EVENTS].num_rows == 0
    empty = generate_dataset(catalog, rows=1_000, events=0).tables[EVENTS]
    assert empty.num_rows == 0
    assert empty.schema == generate_dataset(catalog, rows=100).tables[EVENTS].schema


def test_actors_are_live_contacts_of_their_tenant_and_events_in_the_period(
    dataset: DemoDataset, events: list[Event]
) -> None:
    created = {(c["tenant_id"], c["id"]): c["created_at"] for c in current_rows(dataset, CONTACTS)}
    for event in events:
        contact = (event["tenant_id"], event["contact_id"])
        assert contact in created, event
        assert created[contact] <= event["timestamp"], event
        assert dataset.start <= event["timestamp"] < dataset.end, event
    assert {e["tenant_id"] for e in events} == set(DEMO_TENANTS)
    tenants = Counter(e["tenant_id"] for e in events)
    assert tenants[DEMO_TENANTS[0]] > 3 * tenants[DEMO_TENANTS[-1]]


def test_event_ids_are_unique_uuids_and_every_event_is_current(
    dataset: DemoDataset, events: list[Event]
) -> None:
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    assert all(UUID_V4.match(i) for i in ids)
    assert {(e["_version"], e["_is_deleted"]) for e in events} == {(1, 0)}
    assert dataset.keys[EVENTS] == ("tenant_id", "event_id")
    assert len(current_rows(dataset, EVENTS)) == len(events)
    assert {e["event"] for e in events} == set(EVENT_NAMES)
    moments = [e["timestamp"] for e in events]
    assert moments == sorted(moments)


def test_funnel_narrows_and_steps_follow_each_other(
    journeys: dict[tuple[str, int], dict[str, list[dt.datetime]]],
) -> None:
    reached = Counter(name for steps in journeys.values() for name in steps if name in JOURNEY)
    counts = [reached[name] for name in JOURNEY]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] > 0
    # Each step taken by about its rate of those at the step before; fewer at the end of the
    # period, where there was no time left to convert.
    for (before, after), rate in zip(itertools.pairwise(counts), STEP_RATES, strict=True):
        assert 0.6 * rate < after / before <= 1.1 * rate, (before, after, rate)
    lags: dict[str, list[float]] = defaultdict(list)
    for (tenant, _), steps in journeys.items():
        for name in JOURNEY:
            assert len(steps.get(name, [])) <= 1, (tenant, name)
        if SIGNED_UP not in steps:
            # Only the first tenant's drop lost sign-ups.
            assert tenant == FIRST_TENANT
            continue
        assert min(m for moments in steps.values() for m in moments) == steps[SIGNED_UP][0]
        for earlier, later in itertools.pairwise(JOURNEY):
            if later in steps and earlier in steps:
                lag = steps[later][0] - steps[earlier][0]
                assert lag > dt.timedelta(0)
                lags[later].append(lag.total_seconds() / 3600)
    # Times to convert are hours to days, with a long tail.
    for name, (low, high) in zip(JOURNEY[1:], ((6, 48), (24, 150), (48, 300)), strict=True):
        median = statistics.median(lags[name])
        assert low < median < high, (name, median)
        assert max(lags[name]) > 5 * median


def test_missing_sign_ups_are_the_drop(incident_events: list[Event]) -> None:
    first_moments: dict[tuple[str, int], dt.datetime] = {}
    signed_up = set()
    for event in incident_events:
        actor = (event["tenant_id"], event["contact_id"])
        first_moments.setdefault(actor, event["timestamp"])
        if event["event"] == SIGNED_UP:
            signed_up.add(actor)
    lost = [(actor, moment) for actor, moment in first_moments.items() if actor not in signed_up]
    assert lost
    for (tenant, _), moment in lost:
        assert tenant == FIRST_TENANT
        assert moment.date() >= DROP_DAYS[0]


def test_weekly_retention_decays(
    dataset: DemoDataset, journeys: dict[tuple[str, int], dict[str, list[dt.datetime]]]
) -> None:
    horizon = dataset.end - dt.timedelta(weeks=13)
    cohort = [s for s in journeys.values() if SIGNED_UP in s and s[SIGNED_UP][0] < horizon]
    retained = []
    for week in range(13):
        active = 0
        for steps in cohort:
            signed_up = steps[SIGNED_UP][0]
            days = {(m - signed_up).days // 7 for m in steps.get("session_started", [])}
            active += week in days
        retained.append(active / len(cohort))
    assert retained[0] > 0.95
    assert 0.3 < retained[1] < 0.65
    assert retained[1] > retained[2] > retained[4] > retained[8] > retained[12] > 0.02


def test_weekends_are_quieter(events: list[Event]) -> None:
    counts = Counter(e["timestamp"].date() for e in events)
    weekdays = [n for day, n in counts.items() if day.weekday() < 5]
    weekends = [n for day, n in counts.items() if day.weekday() >= 5]
    assert statistics.mean(weekends) < 0.6 * statistics.mean(weekdays)


def test_activity_grows(events: list[Event]) -> None:
    months = Counter((e["timestamp"].year, e["timestamp"].month) for e in events)
    ordered = [months[key] for key in sorted(months)]
    assert len(ordered) == 13
    assert sum(ordered[-3:]) > 2.5 * sum(ordered[:3])
    quarters = [sum(ordered[i : i + 3]) for i in range(0, 12, 3)]
    assert quarters == sorted(quarters)


def test_incidents_show_against_the_usual_days(incident_events: list[Event]) -> None:
    events = incident_events
    first = Counter(e["timestamp"].date() for e in events if e["tenant_id"] == FIRST_TENANT)
    # A few hundred events a day vary by a fifth or so from the usual.
    for day in DROP_DAYS:
        assert day.weekday() < 5
        assert first[day] < (DROP_KEPT + 0.2) * usual(first, day), day
    assert SPIKE_DAY.weekday() < 5
    assert first[SPIKE_DAY] > (SPIKE_FACTOR - 0.8) * usual(first, SPIKE_DAY)
    # The days around them, and the other tenants on those days, look normal.
    for day in (DROP_DAYS[0] - dt.timedelta(days=1), SPIKE_DAY + dt.timedelta(days=1)):
        assert 0.6 < first[day] / usual(first, day) < 1.6, day
    others = Counter(e["timestamp"].date() for e in events if e["tenant_id"] != FIRST_TENANT)
    for day in (*DROP_DAYS, SPIKE_DAY):
        assert 0.6 < others[day] / usual(others, day) < 1.6, day
    campaign = [
        e
        for e in events
        if SPIKE_SOURCE
        in dict(zip(e["properties_keys"], e["properties_values"], strict=True)).get(
            "utm_source", ""
        )
    ]
    assert SPIKE_FACTOR * len(campaign) == (SPIKE_FACTOR - 1) * first[SPIKE_DAY]
    assert {e["timestamp"].date() for e in campaign} == {SPIKE_DAY}
    assert {e["tenant_id"] for e in campaign} == {FIRST_TENANT}


def test_typed_properties(
    dataset: DemoDataset,
    events: list[Event],
    journeys: dict[tuple[str, int], dict[str, list[dt.datetime]]],
) -> None:
    countries = {(c["tenant_id"], c["id"]): c["country"] for c in current_rows(dataset, CONTACTS)}
    plans: dict[tuple[str, int], str] = {}
    for event in events:
        actor = (event["tenant_id"], event["contact_id"])
        assert event["platform"] in (*PLATFORMS, None)
        assert event["country"] in (countries[actor], None)
        assert event["plan"] in PLANS
        if event["event"] == "purchased":
            assert event["plan"] in ("pro", "enterprise")
            assert event["revenue"] > 0
            assert event["revenue"] == event["revenue"].quantize(Decimal("0.01"))
            plans[actor] = event["plan"]
        else:
            assert event["revenue"] is None
    # The plan is the actor's at the time: free before the purchase, the plan bought after.
    for event in events:
        actor = (event["tenant_id"], event["contact_id"])
        purchases = journeys[actor].get("purchased")
        if purchases and event["timestamp"] >= purchases[0]:
            assert event["plan"] == plans[actor]
        else:
            assert event["plan"] == "free"
    platforms = Counter(e["platform"] for e in events)
    assert platforms.most_common(1)[0][0] == "web"
    assert 0 < platforms[None] < 0.03 * len(events)
    assert 0 < sum(e["country"] is None for e in events) < 0.05 * len(events)


def test_free_form_properties(events: list[Event]) -> None:
    without = 0
    for event in events:
        keys, values = event["properties_keys"], event["properties_values"]
        assert len(keys) == len(values)
        assert len(set(keys)) == len(keys)
        assert all(isinstance(v, str) and v for v in values)
        properties = dict(zip(keys, values, strict=True))
        without += not properties
        name = event["event"]
        assert ("path" in properties) == (name == "page_viewed")
        assert ("feature" in properties) == (name == "feature_used")
        assert ("role" in properties) == (name == "invited_teammate")
        assert ("billing_period" in properties) == (name == "purchased")
        if "browser" in properties:
            assert event["platform"] == "web"
        if "app_version" in properties:
            assert event["platform"] in ("ios", "android")
    assert 0 < without < 0.2 * len(events)
    paths = Counter(
        dict(zip(e["properties_keys"], e["properties_values"], strict=True))["path"]
        for e in events
        if e["event"] == "page_viewed"
    )
    assert paths.most_common(1)[0][0] == "/dashboard"
    assert any("'" in path for path in paths)


def test_event_models_of_other_shapes(catalog: Catalog) -> None:
    model = catalog.models[("product", "events")]
    assert model.events is not None
    # The actor renamed, platform gone, a field the generator does not know, revenue a float.
    fields: dict[str, FieldSpec] = {}
    for name, spec in model.fields.items():
        if name == model.events.actor:
            fields["user_id"] = dataclasses.replace(spec, name="user_id")
        elif name != "platform":
            fields[name] = spec
    fields["referrer"] = FieldSpec("referrer", FieldType.STRING, nullable=True)
    fields["revenue"] = FieldSpec("revenue", FieldType.FLOAT, nullable=True)
    roles = dataclasses.replace(model.events, actor="user_id", properties="props")
    other = dataclasses.replace(
        model, module="app", name="clicks", table="app_clicks", fields=fields, events=roles
    )

    def generated(shape: Any) -> pa.Table:
        models = {**catalog.models, ("app", "clicks"): shape}
        table: pa.Table = generate_dataset(
            dataclasses.replace(catalog, models=models), rows=1_000
        ).tables["app.clicks"]
        return table

    table = generated(other)
    assert table.num_rows > 0
    assert table.column_names == [
        "tenant_id",
        *fields,
        "props_keys",
        "props_values",
        "_version",
        "_is_deleted",
    ]
    assert table.column("referrer").null_count == table.num_rows
    assert table.schema.field("revenue").type == pa.float64()
    assert table.column("user_id").null_count == 0

    required = {**fields, "referrer": FieldSpec("referrer", FieldType.STRING)}
    with pytest.raises(DemoError, match=r"app\.clicks\.referrer"):
        generated(dataclasses.replace(other, fields=required))
    uuid_actor = {**fields, "user_id": FieldSpec("user_id", FieldType.UUID)}
    with pytest.raises(DemoError, match=r"app\.clicks\.user_id"):
        generated(dataclasses.replace(other, fields=uuid_actor))
    numeric_plan = {**fields, "plan": FieldSpec("plan", FieldType.INT, nullable=True)}
    with pytest.raises(DemoError, match=r"app\.clicks\.plan"):
        generated(dataclasses.replace(other, fields=numeric_plan))
