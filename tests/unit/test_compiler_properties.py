"""Properties of compile_query over random valid requests (no engine).

(a) the SQL text depends only on the request's shape: replacing every filter value by another of
    the same type class (see tests/strategies.py) and the tenant by any other non-empty string
    changes the parameters only;
(b) hostile names (fields, groupBy, order, aggregate, timeZone, model, filter keys) are rejected
    with an AnalyticsError of the documented kind, never another exception;
(c) the inner WHERE clause is the tenant guard ANDed with the deleted-row guard, the soft-delete
    guard when applicable, and one parenthesised conjunct per filter entry, so no filter can widen
    it; the tenant is bound as the first parameter;
(d) compile is deterministic and does not modify its inputs.
"""

from __future__ import annotations

import copy
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.catalog import FieldType, Model
from service.errors import AnalyticsError, ErrorKind
from service.query.compiler import CompiledQuery, compile_query
from service.query.request import MetricRequest, QueryRequest
from service.query.values import encode_text_parameter
from tests.strategies import (
    CATALOG,
    MODELS,
    Shape,
    hostile_names,
    hostile_text,
    map_string_values,
    poisoned,
    revalue,
    shapes,
    tenants,
    to_request,
    tsv_unescape,
)

UNIT = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_PLACEHOLDER = re.compile(r"\{(p\d+):([^{}]+)\}")


# --- a small SQL reader ----------------------------------------------------------------------


def _skip_quoted(sql: str, index: int) -> int:
    """Index just after the quoted token (``'...'``, `` `...` ``, ``{...}``) starting at index."""
    opener = sql[index]
    closer = "}" if opener == "{" else opener
    index += 1
    while sql[index] != closer:
        index += 2 if sql[index] == "\\" and opener == "'" else 1
    return index + 1


def inner_where(sql: str) -> str:
    """The WHERE clause of the inner query, up to its GROUP BY or closing parenthesis."""
    assert sql.count(" WHERE ") == 1
    start = sql.index(" WHERE ") + len(" WHERE ")
    index, depth = start, 0
    while True:
        char = sql[index]
        if char in "'`{":
            index = _skip_quoted(sql, index)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                return sql[start:index]
            depth -= 1
        elif depth == 0 and sql.startswith(" GROUP BY ", index):
            return sql[start:index]
        index += 1


def split_top_level(text: str, separator: str = " AND ") -> list[str]:
    """Split at ``separator`` occurrences outside parentheses and quoted tokens."""
    parts: list[str] = []
    start = index = depth = 0
    while index < len(text):
        char = text[index]
        if char in "'`{":
            index = _skip_quoted(text, index)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            assert depth >= 0, text
        elif depth == 0 and text.startswith(separator, index):
            parts.append(text[start:index])
            index += len(separator)
            start = index
            continue
        index += 1
    assert depth == 0, text
    parts.append(text[start:])
    return parts


def is_wrapped(text: str) -> bool:
    """Whether ``text`` is one parenthesised group: ``(`` ... its matching ``)`` at the end."""
    if not text.startswith("("):
        return False
    depth = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char in "'`{":
            index = _skip_quoted(text, index)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index == len(text) - 1
        index += 1
    return False


def test_reader_helpers_on_known_sql() -> None:
    where = "a = {p0:String} AND (b = 1 OR c = 2) AND (d IN ({p1:DateTime64(6, 'UTC')}))"
    sql = f"SELECT x FROM (SELECT y FROM t WHERE {where} GROUP BY k0) ORDER BY k0 ASC"
    assert inner_where(sql) == where
    ungrouped = f"SELECT x FROM (SELECT y FROM t WHERE {where}) LIMIT 1"
    assert inner_where(ungrouped) == where
    assert split_top_level(where) == [
        "a = {p0:String}",
        "(b = 1 OR c = 2)",
        "(d IN ({p1:DateTime64(6, 'UTC')}))",
    ]
    assert is_wrapped("(a) OR (b)") is False
    assert is_wrapped("((a) OR (b))") is True
    assert is_wrapped("(a = ')')") is True


# --- helpers ---------------------------------------------------------------------------------


def _compile(shape: Shape, tenant: str = "tenant_a") -> CompiledQuery:
    return compile_query(to_request(shape), CATALOG, tenant)


def _check_placeholders(compiled: CompiledQuery) -> None:
    """Every ``{`` in the SQL opens a well-formed placeholder, and they match the parameters."""
    names = [m.group(1) for m in _PLACEHOLDER.finditer(compiled.sql)]
    assert compiled.sql.count("{") == len(names)
    assert sorted(set(names)) == sorted(compiled.parameters)
    assert names.count("p0") == 1


def _check_tenant_structure(shape: Shape, compiled: CompiledQuery, tenant: str) -> None:
    model = shape.model
    conjuncts = split_top_level(inner_where(compiled.sql))
    assert conjuncts[0] == f"t.`{model.tenant_column}` = {{p0:String}}"
    assert conjuncts[1] == "t.`_is_deleted` = 0"
    rest = conjuncts[2:]
    column = model.soft_delete_column
    if column and column not in shape.mentioned_fields():
        spec = model.fields[column]
        guard = (
            f"NOT ifNull(t.`{column}`, false)"
            if spec.type is FieldType.BOOL
            else f"t.`{column}` IS NULL"
        )
        assert rest[0] == guard
        rest = rest[1:]
    assert len(rest) == len(shape.filters)
    for conjunct in rest:
        assert is_wrapped(conjunct), conjunct
    assert compiled.parameters["p0"] == encode_text_parameter(tenant)
    assert tsv_unescape(compiled.parameters["p0"]) == tenant


# --- (a) structure invariance ----------------------------------------------------------------


@UNIT
@given(data=st.data(), shape=shapes(), tenant_a=tenants(), tenant_b=tenants())
def test_sql_depends_only_on_the_shape(
    data: st.DataObject, shape: Shape, tenant_a: str, tenant_b: str
) -> None:
    other = data.draw(revalue(shape), label="same shape, new values")
    first = _compile(shape, tenant_a)
    second = _compile(other, tenant_b)
    assert first.sql == second.sql
    assert first.columns == second.columns
    assert first.parameters.keys() == second.parameters.keys()
    assert first.limit == second.limit
    _check_placeholders(first)


@UNIT
# Not empty: `in.("")` would parse as an empty list (pinned by a failing test in test_filters.py).
@given(shape=shapes(), hostile=hostile_text().filter(bool), tenant=tenants())
def test_hostile_string_values_leave_the_sql_unchanged(
    shape: Shape, hostile: str, tenant: str
) -> None:
    benign = map_string_values(shape, lambda _: "plain")
    attacked = map_string_values(shape, lambda _: hostile)
    first = _compile(benign, "tenant_a")
    second = _compile(attacked, tenant)
    assert first.sql == second.sql
    # Every string value travels as a parameter that decodes back to exactly what was sent.
    decoded = [tsv_unescape(v) for v in second.parameters.values()]
    for value in attacked.string_values():
        assert value in decoded or bool(_like_forms(value) & set(decoded)), value


def _like_forms(value: str) -> set[str]:
    """The forms a like/ilike pattern may be bound in: ``*`` as ``%``, backslash escapes that
    ClickHouse reads differently from PostgreSQL resolved, and (ilike) lowered per character."""
    pattern = re.sub(
        r"\\(.)",
        lambda m: "\\" + m[1] if m[1] in "%_\\" else m[1],
        value.replace("*", "%"),
        flags=re.DOTALL,
    )
    lowered = "".join(
        "i" if c == "\u0130" else (c.lower() if len(c.lower()) == 1 else c) for c in pattern
    )
    return {pattern, lowered}


# --- (b) hostile names -----------------------------------------------------------------------


def _expect_error(request: QueryRequest, kind: ErrorKind, field: str | None) -> AnalyticsError:
    with pytest.raises(AnalyticsError) as info:
        compile_query(request, CATALOG, "tenant_a")
    error = info.value
    assert error.kind is kind, error
    if field is not None:
        assert [v.field for v in error.violations] == [field], error
    return error


_ALL_FIELDS = sorted({name for model in MODELS for name in model.fields})
#: What a hostile dotted name may be refused as: it reads as a path through relations.
PATH_REASONS = ("UNKNOWN_RELATION", "NOT_A_RELATION", "TOO_MANY_HOPS")
_MODEL_NAMES = [m.name for m in MODELS] + [m.qualified_name for m in MODELS]


@UNIT
@given(model=st.sampled_from(MODELS), name=hostile_names(_ALL_FIELDS))
def test_hostile_group_by_is_rejected(model: Model, name: str) -> None:
    error = _expect_error(
        QueryRequest(model=model.name, group_by=name), ErrorKind.VALIDATION, "groupBy"
    )
    assert error.reason in ("UNKNOWN_FIELD", "INVALID_ARGUMENT", *PATH_REASONS)


@UNIT
@given(model=st.sampled_from(MODELS), name=hostile_names(_ALL_FIELDS))
def test_hostile_field_is_rejected(model: Model, name: str) -> None:
    error = _expect_error(
        QueryRequest(model=model.name, aggregate="count", field=name), ErrorKind.VALIDATION, "field"
    )
    assert error.reason in ("UNKNOWN_FIELD", *PATH_REASONS)


@UNIT
@given(model=st.sampled_from(MODELS), name=hostile_names(_ALL_FIELDS))
def test_hostile_metric_field_is_rejected(model: Model, name: str) -> None:
    request = QueryRequest(model=model.name, metrics=(MetricRequest("count_distinct", name),))
    error = _expect_error(request, ErrorKind.VALIDATION, "metrics[0].field")
    assert error.reason in ("UNKNOWN_FIELD", *PATH_REASONS)


@UNIT
@given(model=st.sampled_from(MODELS), name=hostile_names(_ALL_FIELDS))
def test_hostile_filter_key_is_rejected(model: Model, name: str) -> None:
    request = QueryRequest(model=model.name, filters={name: "eq.x"})
    error = _expect_error(request, ErrorKind.VALIDATION, f"filters.{name}"[:240])
    assert error.reason in ("UNKNOWN_FIELD", *PATH_REASONS)


@UNIT
@given(
    model=st.sampled_from(MODELS),
    name=hostile_names(_ALL_FIELDS).filter(lambda s: not set(s) & set('.,()"\\')),
    junction=st.sampled_from(["and", "or", "not.and", "not.or"]),
)
def test_hostile_field_inside_a_junction_is_rejected(
    model: Model, name: str, junction: str
) -> None:
    request = QueryRequest(model=model.name, filters={junction: f"(id.eq.1,{name}.eq.x)"})
    error = _expect_error(request, ErrorKind.VALIDATION, f"filters.{junction}")
    assert error.reason in ("UNKNOWN_FIELD", *PATH_REASONS)


@UNIT
@given(
    model=st.sampled_from(MODELS),
    name=hostile_names(["count", "count.desc", "stage", "stage.asc", "created_at.nullsfirst"]),
)
def test_hostile_order_is_rejected(model: Model, name: str) -> None:
    group = sorted(model.fields)[0]
    request = QueryRequest(model=model.name, group_by=group, order=name)
    error = _expect_error(request, ErrorKind.VALIDATION, "order")
    assert error.reason in ("UNKNOWN_FIELD", "INVALID_ORDER")


_AGGREGATES = ["count", "sum", "avg", "min", "max", "count_distinct", "p50", "p95", "p99"]


@UNIT
@given(name=hostile_names(_AGGREGATES))
def test_hostile_aggregate_is_rejected(name: str) -> None:
    error = _expect_error(
        QueryRequest(model="deals", aggregate=name, field="amount"),
        ErrorKind.VALIDATION,
        "aggregate",
    )
    assert error.reason == "UNKNOWN_AGGREGATE"
    request = QueryRequest(
        model="deals", metrics=(MetricRequest("count"), MetricRequest(name, "amount"))
    )
    error = _expect_error(request, ErrorKind.VALIDATION, "metrics[1].aggregate")
    assert error.reason == "UNKNOWN_AGGREGATE"


_ZONES = ["UTC", "Europe/Paris", "America/New_York", "Etc/GMT+5", "Asia/Kolkata"]


@UNIT
@given(
    name=st.one_of(
        hostile_names(_ZONES),
        st.sampled_from(
            [
                "../../../../etc/passwd",
                "/etc/localtime",
                "Europe/../../etc/passwd",
                "Europe/Paris\n",
                "UTC\0",
                "Mars/Olympus_Mons",
                "x" * 65,
                "utc; DROP TABLE t",
            ]
        ),
    )
)
def test_hostile_time_zone_is_rejected(name: str) -> None:
    request = QueryRequest(
        model="deals", group_by="created_at", group_by_interval="day", time_zone=name
    )
    error = _expect_error(request, ErrorKind.VALIDATION, "timeZone")
    assert error.reason in ("INVALID_ARGUMENT", "INVALID_TIME_ZONE")


@UNIT
@given(name=hostile_names(_MODEL_NAMES))
def test_hostile_model_is_not_found(name: str) -> None:
    error = _expect_error(QueryRequest(model=name), ErrorKind.NOT_FOUND, None)
    assert error.reason == "NOT_FOUND"


# --- (c) the tenant condition ----------------------------------------------------------------


@UNIT
@given(shape=shapes(), tenant=tenants())
def test_tenant_guard_heads_the_where_clause(shape: Shape, tenant: str) -> None:
    compiled = _compile(shape, tenant)
    _check_tenant_structure(shape, compiled, tenant)
    assert "FINAL WHERE " in compiled.sql
    assert compiled.sql.count(" FINAL ") == 1


# --- (d) determinism and purity ---------------------------------------------------------------


@UNIT
@given(shape=shapes(), tenant=tenants())
def test_compile_is_deterministic_and_pure(shape: Shape, tenant: str) -> None:
    request = to_request(shape)
    filters_before = dict(request.filters)
    catalog_before = copy.deepcopy(CATALOG)
    first = compile_query(request, CATALOG, tenant)
    second = compile_query(request, CATALOG, tenant)
    assert first == second
    assert dict(request.filters) == filters_before
    assert catalog_before == CATALOG
    # A fresh, equal request gives the same result too (no hidden state between calls).
    assert compile_query(to_request(shape), CATALOG, tenant) == first


@UNIT
@given(name=poisoned(st.text(max_size=10)))
def test_poisoned_names_never_validate_as_identifiers(name: str) -> None:
    # Guard for the strategy itself: a poisoned name is never a field of any model.
    assert all(name not in model.fields for model in MODELS)


# --- (e) free-form event properties ----------------------------------------------------------

_EVENTS = CATALOG.models[("product", "events")]
# A group key, a filter and a metric on one property key: the key is the only thing that varies.
# groupBy splits at commas and trims each name, so such keys are addressable in filters only.
_PROPERTY_KEYS = st.text(min_size=1, max_size=200).filter(
    lambda key: "," not in key and key == key.strip()
)


def _property_request(key: str, value: str) -> QueryRequest:
    return QueryRequest(
        model="product.events",
        group_by=f"properties.{key}",
        filters={f"properties.{key}": f"eq.{value}", "event": "eq.signed_up"},
        metrics=(MetricRequest("count_distinct", f"properties.{key}", alias="distinct"),),
    )


@UNIT
@given(key=_PROPERTY_KEYS, value=hostile_text(), tenant=tenants())
def test_hostile_property_keys_leave_the_sql_unchanged(key: str, value: str, tenant: str) -> None:
    first = compile_query(_property_request("plan_name", "plain"), CATALOG, "tenant_a")
    second = compile_query(_property_request(key, value), CATALOG, tenant)
    assert first.sql == second.sql
    decoded = [tsv_unescape(v) for v in second.parameters.values()]
    assert key in decoded
    assert value in decoded
    _check_placeholders(second)


def test_property_keys_read_nulls_for_missing_keys() -> None:
    compiled = compile_query(_property_request("plan", "pro"), CATALOG, "tenant_a")
    assert "if(has(t.`properties_keys`, {p" in compiled.sql
    assert "t.`properties_values`[indexOf(t.`properties_keys`, {p" in compiled.sql
    assert compiled.model is _EVENTS


@pytest.mark.parametrize("name", ["properties.", "properties." + "k" * 201])
def test_bad_property_keys_are_named(name: str) -> None:
    _expect_error(
        QueryRequest(model="product.events", group_by=name), ErrorKind.VALIDATION, "groupBy"
    )


def test_properties_exist_only_on_event_models() -> None:
    _expect_error(
        QueryRequest(model="crm.deals", group_by="properties.plan"),
        ErrorKind.VALIDATION,
        "groupBy",
    )
