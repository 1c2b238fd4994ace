"""Segments on the embedded engine: SegmentService over gRPC, and segments as filters.

A behavioral segment (actors with at least N events of a kind within a window before the query)
and a properties segment (contacts of a country) of one tenant are created over gRPC, listed,
replaced and deleted; used in Query on the event model, on the contacts themselves and on deals
(through their relation to the contacts), and in Trend. Another tenant with the same actor ids
neither sees nor uses them, and its own segment of the same name selects its own actors. A
hypothesis property compares segment membership with a Python count over random histories.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.v1 import analytics_pb2, analytics_pb2_grpc, segments_pb2, segments_pb2_grpc
from service.api.server import RunningServer, start_server
from service.auth import mint_token
from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog
from service.errors import AnalyticsError
from service.insights.funnel_request import FunnelRequest, FunnelStep
from service.insights.funnels import assemble_funnel, compile_funnel
from service.insights.lifecycle import assemble_lifecycle, compile_lifecycle
from service.insights.lifecycle_request import LifecycleRequest
from service.insights.retention import assemble_retention, compile_retention
from service.insights.retention_request import RetentionEvent, RetentionRequest
from service.query.compiler import compile_query
from service.query.request import QueryRequest
from service.schema import all_ddl
from service.segments.definition import SegmentDefinition, resolve_segment, validate_segment
from service.segments.store import SegmentStore
from service.settings import Settings
from tests.conftest import catalog_in_database, unique_database
from tests.grpc_errors import error_details
from tests.integration.test_compiler_on_engine import Row, insert_statement
from tests.sql_shape import assert_tenant_first, event_arrow

pytestmark = pytest.mark.integration

ACME = "acme"
GLOBEX = "x' OR '1'='1"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
#: (tenant, actor, event, days ago): acme's actor 1 bought three times this week, actor 2 once
#: this week and twice long ago, actor 3 only signed up; globex's actor 3 bought five times.
HISTORY = [
    *((ACME, 1, "purchased", days) for days in (1, 2, 3)),
    (ACME, 2, "purchased", 2),
    *((ACME, 2, "purchased", days) for days in (40, 41)),
    *((ACME, 3, "signed_up", days) for days in (1, 2, 3, 4, 5)),
    *((GLOBEX, 3, "purchased", days) for days in (1, 2, 3, 4, 5)),
]
POWER_BUYERS = {
    "name": "power_buyers",
    "kind": "behavioral",
    "model": "product.events",
    "event": "purchased",
    "minCount": 2,
    "window": "30d",
}
GERMANS = {
    "name": "germans",
    "kind": "properties",
    "model": "crm.contacts",
    "filters": {"country": "eq.DE"},
}


def _event(tenant: str, actor: int, name: str, at: dt.datetime) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "event_id": str(uuid.uuid4()),
        "event": name,
        "contact_id": actor,
        "timestamp": at,
        "platform": None,
        "country": None,
        "plan": None,
        "revenue": None,
        "properties_keys": [],
        "properties_values": [],
        "_version": 1,
        "_is_deleted": 0,
    }


def _contact(tenant: str, key: int, country: str) -> Row:
    values = {
        "id": key,
        "email": f"c{key}@example.com",
        "status": "active",
        "country": country,
        "lead_source": None,
        "lifetime_value": Decimal("1.00"),
        "score": None,
        "is_subscribed": True,
        "created_at": NOW - 90 * DAY,
        "updated_at": NOW - 90 * DAY,
        "deleted_at": None,
    }
    return Row(tenant, values, 1, 0)


def _deal(tenant: str, key: int, contact: int) -> Row:
    values = {
        "id": key,
        "contact_id": contact,
        "owner_id": 1,
        "title": "d",
        "stage": "lead",
        "amount": Decimal("1.00"),
        "currency": "EUR",
        "probability": 0.5,
        "created_at": NOW - 10 * DAY,
        "closed_at": None,
        "expected_close_date": None,
        "updated_at": NOW - 10 * DAY,
        "deleted_at": None,
    }
    return Row(tenant, values, 1, 0)


@pytest_asyncio.fixture(scope="module")
async def catalog_with_data(
    catalog: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[Catalog]:
    mine = catalog_in_database(catalog, unique_database("segments"))
    for statement in all_ddl(mine):
        await embedded_backend.command(statement)
    events = mine.models[("product", "events")]
    rows = [_event(t, a, n, NOW - days * DAY) for t, a, n, days in HISTORY]
    await embedded_backend.insert_arrow(mine.database, events.table, event_arrow(events, rows))
    contacts = mine.models[("crm", "contacts")]
    deals = mine.models[("crm", "deals")]
    for tenant in (ACME, GLOBEX):
        countries = ("DE", "DE", "FR", "FR") if tenant == ACME else ("FR", "FR", "DE", "DE")
        await embedded_backend.command(
            insert_statement(
                mine, contacts, [_contact(tenant, k, c) for k, c in enumerate(countries, 1)]
            )
        )
        await embedded_backend.command(
            insert_statement(
                mine, deals, [_deal(tenant, k, c) for k, c in ((10, 1), (11, 3), (12, 3), (13, 2))]
            )
        )
    yield mine
    await embedded_backend.command(f"DROP DATABASE IF EXISTS `{mine.database}`")


@pytest.fixture(scope="module")
def served_settings() -> Settings:
    return Settings(port=0, rest_port=None, query_timeout_seconds=30)


@pytest_asyncio.fixture(scope="module")
async def server(
    served_settings: Settings, catalog_with_data: Catalog, embedded_backend: EmbeddedBackend
) -> AsyncIterator[RunningServer]:
    running = await start_server(
        served_settings, catalog=catalog_with_data, backend=embedded_backend
    )
    yield running
    await running.stop(1.0)


def _metadata(settings_: Settings, tenant: str, *permissions: str) -> tuple[tuple[str, str], ...]:
    token = mint_token(settings_, subject="tester", tenant=tenant, permissions=permissions)
    return (("authorization", f"Bearer {token}"),)


EVERYTHING = ("segments.read", "segments.write", "crm.*.read", "product.events.read")


async def _count(
    stub: analytics_pb2_grpc.AnalyticsServiceStub,
    metadata: tuple[tuple[str, str], ...],
    model: str,
    filters: dict[str, str],
) -> int:
    request = analytics_pb2.QueryRequest(model=model, aggregate="count", filters=filters)
    response = await stub.Query(request, metadata=metadata)
    return int(response.data[0]["count"]) if response.data else 0


async def test_segments_are_kept_listed_and_used_per_tenant(
    server: RunningServer, served_settings: Settings, catalog_with_data: Catalog
) -> None:
    acme = _metadata(served_settings, ACME, *EVERYTHING)
    globex = _metadata(served_settings, GLOBEX, *EVERYTHING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        segments = segments_pb2_grpc.SegmentServiceStub(channel)
        analytics = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        for body in (POWER_BUYERS, GERMANS):
            created = await segments.CreateSegment(
                segments_pb2.CreateSegmentRequest(
                    segment=json_format.ParseDict(body, segments_pb2.Segment())
                ),
                metadata=acme,
            )
            assert created.segment.name == body["name"]
        listed = await segments.ListSegments(segments_pb2.ListSegmentsRequest(), metadata=acme)
        assert [s.name for s in listed.segments] == ["germans", "power_buyers"]
        assert [s.min_count for s in listed.segments] == [0, 2]
        assert not (
            await segments.ListSegments(segments_pb2.ListSegmentsRequest(), metadata=globex)
        ).segments

        # Actor 1 bought 3 times within 30 days; actor 2 once (twice more 40 days ago).
        assert await _count(analytics, acme, "product.events", {"segment": "power_buyers"}) == 3
        assert await _count(analytics, acme, "crm.contacts", {"segment": "eq.power_buyers"}) == 1
        # Contacts 1 and 2 are German: their deals 10 and 13.
        assert await _count(analytics, acme, "crm.deals", {"segment": "germans"}) == 2
        assert (
            await _count(analytics, acme, "crm.deals", {"segment": "germans", "id": "gt.10"}) == 1
        )
        trend = await analytics.Trend(
            json_format.ParseDict(
                {
                    "model": "product.events",
                    "series": [{"aggregate": "count"}],
                    "dateFrom": "-7d",
                    "filters": {"segment": "power_buyers"},
                },
                analytics_pb2.TrendRequest(),
            ),
            metadata=acme,
        )
        assert sum(v.number_value for v in trend.lines[0].values.values) == 3

        # The other tenant sees no segment of that name, then makes its own.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _count(analytics, globex, "product.events", {"segment": "power_buyers"})
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        info, fields = error_details(caught.value)
        assert (info.reason, fields) == ("UNKNOWN_SEGMENT", ["filters.segment"])
        await segments.CreateSegment(
            segments_pb2.CreateSegmentRequest(
                segment=json_format.ParseDict(POWER_BUYERS, segments_pb2.Segment())
            ),
            metadata=globex,
        )
        assert await _count(analytics, globex, "product.events", {"segment": "power_buyers"}) == 5
        assert await _count(analytics, acme, "product.events", {"segment": "power_buyers"}) == 3

        # An existing name is refused unless replaced; a replaced one answers anew.
        stricter = {**POWER_BUYERS, "minCount": 3}
        request = segments_pb2.CreateSegmentRequest(
            segment=json_format.ParseDict(stricter, segments_pb2.Segment())
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await segments.CreateSegment(request, metadata=acme)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        request.replace = True
        await segments.CreateSegment(request, metadata=acme)
        assert await _count(analytics, acme, "product.events", {"segment": "power_buyers"}) == 3
        await segments.DeleteSegment(
            segments_pb2.DeleteSegmentRequest(name="germans"), metadata=acme
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _count(analytics, acme, "crm.deals", {"segment": "germans"})
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await segments.DeleteSegment(
                segments_pb2.DeleteSegmentRequest(name="germans"), metadata=acme
            )
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    # Kept in the engine: a new store (as after a restart) reads the same definitions.
    store = SegmentStore(catalog_with_data, server.backend)
    assert sorted(await store.definitions(ACME)) == ["power_buyers"]
    assert (await store.definitions(ACME))["power_buyers"].min_count == 3


async def test_segment_errors_and_permissions(
    server: RunningServer, served_settings: Settings
) -> None:
    everything = _metadata(served_settings, ACME, *EVERYTHING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        segments = segments_pb2_grpc.SegmentServiceStub(channel)
        analytics = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        for body, field in (
            ({**POWER_BUYERS, "name": "Power Buyers"}, "name"),
            ({**POWER_BUYERS, "kind": "magic"}, "kind"),
            ({**POWER_BUYERS, "model": "crm.contacts"}, "model"),
            ({**POWER_BUYERS, "window": "0d"}, "window"),
            ({**POWER_BUYERS, "filters": {"nope": "eq.1"}}, "filters.nope"),
            ({**POWER_BUYERS, "filters": {"segment": "x"}}, "filters.segment"),
            ({**GERMANS, "minCount": 2}, "minCount"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await segments.CreateSegment(
                    segments_pb2.CreateSegmentRequest(
                        segment=json_format.ParseDict(body, segments_pb2.Segment())
                    ),
                    metadata=everything,
                )
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, body
            assert error_details(caught.value)[1] == [field], body
        for permissions in (("segments.read", "product.events.read"), ("segments.write",)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await segments.CreateSegment(
                    segments_pb2.CreateSegmentRequest(
                        segment=json_format.ParseDict(POWER_BUYERS, segments_pb2.Segment())
                    ),
                    metadata=_metadata(served_settings, ACME, *permissions),
                )
            assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED, permissions
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await segments.ListSegments(
                segments_pb2.ListSegmentsRequest(),
                metadata=_metadata(served_settings, ACME, "product.events.read"),
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        await segments.CreateSegment(
            segments_pb2.CreateSegmentRequest(
                segment=json_format.ParseDict(
                    {**GERMANS, "name": "german_contacts"}, segments_pb2.Segment()
                ),
                replace=True,
            ),
            metadata=everything,
        )
        # Using a segment reads its model: the caller needs crm.contacts.read too.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _count(
                analytics,
                _metadata(served_settings, ACME, "product.events.read"),
                "product.events",
                {"segment": "german_contacts"},
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _count(analytics, everything, "product.events", {"segment": "not.a.name"})
        assert error_details(caught.value)[1] == ["filters.segment"]


ENGINE = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_serials = itertools.count()


@ENGINE
@given(
    history=st.lists(
        st.tuples(
            st.integers(1, 4),
            st.sampled_from(("purchased", "signed_up")),
            # Half a day or more from every window's bound: the engine's clock is not ours.
            # Negative: dated after the query (a skewed clock), in no window.
            st.sampled_from((-40.5, -0.5, 0.2, 1.5, 9.5, 10.5, 29.5, 30.5, 60.5)),
        ),
        max_size=25,
    ),
    event=st.sampled_from(("", "purchased")),
    min_count=st.integers(1, 3),
    window=st.sampled_from(("10d", "30d")),
    filters=st.sampled_from(({}, {"event": "neq.signed_up"})),
)
async def test_behavioral_membership_equals_a_count(
    embedded_backend: EmbeddedBackend,
    catalog_with_data: Catalog,
    history: list[tuple[int, str, float]],
    event: str,
    min_count: int,
    window: str,
    filters: dict[str, str],
) -> None:
    tenant = f"members-{next(_serials)}"
    other = f"{GLOBEX}-{tenant}"
    now = dt.datetime.now(dt.UTC)
    rows = [_event(tenant, a, n, now - d * DAY) for a, n, d in history]
    rows += [_event(other, a, "purchased", now - DAY) for a in (1, 2, 3, 4) for _ in range(3)]
    events = catalog_with_data.models[("product", "events")]
    if rows:
        await embedded_backend.insert_arrow(
            catalog_with_data.database, events.table, event_arrow(events, rows)
        )
    definition = validate_segment(
        SegmentDefinition(
            "members",
            "behavioral",
            "product.events",
            event=event,
            filters=filters,
            min_count=min_count,
            window=window,
        ),
        catalog_with_data,
    )
    seen = catalog_with_data.with_segments(
        {"members": resolve_segment(definition, catalog_with_data)}
    )
    limit = float(window[:-1])
    counts: dict[int, int] = {}
    for actor, name, days in history:
        if (
            0 < days < limit
            and (not event or name == event)
            and name != filters.get("event", "")[4:]
        ):
            counts[actor] = counts.get(actor, 0) + 1
    expected = sorted(actor for actor, n in counts.items() if n >= min_count)
    compiled = compile_query(
        QueryRequest(model="product.events", group_by="contact_id", filters={"segment": "members"}),
        seen,
        tenant,
    )
    assert_tenant_first(compiled, tenant)
    result = await embedded_backend.execute(compiled, timeout_seconds=30, query_id="members")
    assert sorted(result.table.column(0).to_pylist()) == expected


async def test_a_segment_filter_on_a_related_soft_delete_column_shows_deleted_rows(
    embedded_backend: EmbeddedBackend, catalog_with_data: Catalog
) -> None:
    """As in Query, naming the related model's soft-delete column lifts its guard (found by a
    review: the segment's subquery kept it, so the segment was always empty)."""
    tenant = f"related-deleted-{next(_serials)}"
    contacts = catalog_with_data.models[("crm", "contacts")]
    gone = _contact(tenant, 6, "DE")
    gone = Row(tenant, {**gone.values, "deleted_at": NOW - 5 * DAY}, 1, 0)
    await embedded_backend.command(
        insert_statement(catalog_with_data, contacts, [_contact(tenant, 1, "DE"), gone])
    )
    events = catalog_with_data.models[("product", "events")]
    rows = [_event(tenant, actor, "purchased", NOW - DAY) for actor in (1, 6)]
    await embedded_backend.insert_arrow(
        catalog_with_data.database, events.table, event_arrow(events, rows)
    )
    filters = {"contact.deleted_at": "not.is.null"}
    definition = validate_segment(
        SegmentDefinition("left", "behavioral", "product.events", filters=filters),
        catalog_with_data,
    )
    seen = catalog_with_data.with_segments({"left": resolve_segment(definition, catalog_with_data)})
    answers = []
    for request_filters in (filters, {"segment": "left"}):
        compiled = compile_query(
            QueryRequest(model="product.events", group_by="contact_id", filters=request_filters),
            seen,
            tenant,
        )
        result = await embedded_backend.execute(compiled, timeout_seconds=30, query_id="left")
        answers.append(sorted(result.table.column(0).to_pylist()))
    assert answers == [[6], [6]]


def test_a_segment_of_another_kind_of_actor_is_refused(catalog: Catalog) -> None:
    """Deals' keys are not what the events' actors are (contacts): naming it is refused."""
    definition = validate_segment(SegmentDefinition("big", "properties", "crm.deals"), catalog)
    seen = catalog.with_segments({"big": resolve_segment(definition, catalog)})
    with pytest.raises(AnalyticsError) as caught:
        compile_query(QueryRequest(model="product.events", filters={"segment": "big"}), seen, "t")
    assert caught.value.violations[0].field == "filters.segment"
    assert caught.value.reason == "ACTOR_MISMATCH"


async def test_segments_filter_funnels_retention_and_lifecycle(
    embedded_backend: EmbeddedBackend, catalog_with_data: Catalog
) -> None:
    """power_buyers keeps acme's actor 1 only, in every insight, across models too."""
    definition = validate_segment(
        SegmentDefinition.from_json(
            json.dumps(
                {
                    "name": "power_buyers",
                    "kind": "behavioral",
                    "model": "product.events",
                    "event": "purchased",
                    "min_count": 2,
                    "window": "30d",
                }
            )
        ),
        catalog_with_data,
    )
    seen = catalog_with_data.with_segments(
        {"power_buyers": resolve_segment(definition, catalog_with_data)}
    )
    now = dt.datetime.now(dt.UTC)

    async def run(compiled: Any) -> Any:
        assert_tenant_first(compiled, ACME)
        return (
            await embedded_backend.execute(compiled, timeout_seconds=30, query_id="segment")
        ).table

    for filters, expected in (({}, [2, 1]), ({"segment": "power_buyers"}, [1, 1])):
        funnel = FunnelRequest(
            model="product.events",
            steps=(FunnelStep("purchased"), FunnelStep("purchased")),
            date_from="-7d",
            filters=filters,
        )
        plan = compile_funnel(funnel, seen, ACME, now)
        answer = assemble_funnel(plan, await run(plan.compiled))
        assert [s.actors for s in answer.steps] == expected, filters
    across = FunnelRequest(
        model="crm.contacts",
        steps=(
            FunnelStep(date_field="created_at"),
            FunnelStep("purchased", model="product.events"),
        ),
        date_from="-100d",
        window="100d",
        filters={"segment": "power_buyers"},
    )
    plan = compile_funnel(across, seen, ACME, now)
    answer = assemble_funnel(plan, await run(plan.compiled))
    assert [s.actors for s in answer.steps] == [1, 1]
    assert "product.events" in {m.qualified_name for m in plan.compiled.joined}
    for filters, expected_size in (({}, 2), ({"segment": "power_buyers"}, 1)):
        retention = RetentionRequest(
            model="product.events",
            target=RetentionEvent("purchased"),
            period="week",
            intervals=2,
            date_from="-60d",
            filters=filters,
        )
        retention_plan = compile_retention(retention, seen, ACME, now)
        table = assemble_retention(retention_plan, await run(retention_plan.compiled))
        assert sum(c.size for c in table.tables[0].cohorts) == expected_size, filters
        lifecycle = LifecycleRequest(
            model="product.events",
            event="purchased",
            period="month",
            date_from="-90d",
            filters=filters,
        )
        lifecycle_plan = compile_lifecycle(lifecycle, seen, ACME, now)
        lines = assemble_lifecycle(lifecycle_plan, await run(lifecycle_plan.compiled))
        active = {line.status: sum(line.values) for line in lines.lines}
        # Actors 1 and 2 first bought in the range (actor 2 41 days ago): new once each, and
        # each actor's first purchase starts its cohort.
        assert active["new"] == expected_size, filters
