"""A segment in a request's filters, compiled without an engine: hostile values in a segment's
definition never change the SQL nor reach it, and its subquery starts with the tenant."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.catalog import Catalog
from service.query.compiler import compile_query
from service.query.request import QueryRequest
from service.segments.definition import SegmentDefinition, resolve_segment, validate_segment
from tests.sql_shape import assert_tenant_first
from tests.strategies import HOSTILE_STRINGS

POISON = "\u2603poison"
COMPILE_ONLY = settings(
    max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def _compiled(catalog: Catalog, text: str, tenant: str, model: str) -> str:
    definition = validate_segment(
        SegmentDefinition(
            "hostile",
            "behavioral",
            "product.events",
            event=text,
            filters={"platform": f"eq.{text}", f"properties.{text}": f"like.{text}"},
            min_count=3,
            window="7d",
        ),
        catalog,
    )
    seen = catalog.with_segments({"hostile": resolve_segment(definition, catalog)})
    compiled = compile_query(
        QueryRequest(
            model=model,
            filters={"segment": "hostile", "id": "gt.1"}
            if model == "crm.deals"
            else {"segment": "hostile"},
        ),
        seen,
        tenant,
    )
    assert_tenant_first(compiled, tenant)
    return compiled.sql


@COMPILE_ONLY
@given(
    first=st.sampled_from(HOSTILE_STRINGS),
    second=st.sampled_from(HOSTILE_STRINGS),
    tenant=st.sampled_from([t for t in HOSTILE_STRINGS if t]),
    model=st.sampled_from(("product.events", "crm.deals", "crm.contacts")),
)
def test_hostile_segment_values_never_change_the_sql(
    catalog: Catalog, first: str, second: str, tenant: str, model: str
) -> None:
    sql = _compiled(catalog, first + POISON, tenant, model)
    assert sql == _compiled(catalog, second + POISON, tenant, model)
    assert POISON not in sql
