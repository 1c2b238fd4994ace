"""compile_lifecycle: (request, catalog, tenant, now) -> one query; assemble_lifecycle: the lines.

Definitions (one event model; the contract the README copies):

* **rows**: the model's current events of the tenant (FINAL, not deleted) whose actor is not
  null, with the request's ``event`` name (any name when empty) and passing its ``filters``.
* **periods**: ``hour``, ``day`` (default), ``week`` or ``month``, cut as trends cut buckets in
  ``timeZone`` (local hours at the instant's own offset, local midnights, weeks from Monday or,
  with ``weekStart: sunday``, from Sunday). The answer has every period holding an instant of
  ``[dateFrom, dateTo)`` (as trends: ``dateFrom`` defaults to ``-7d``, a date-only ``dateTo``
  includes its day, no ``dateTo`` means now), zero-filled. Periods count whole: an event before
  ``dateFrom`` inside the first period, or after ``dateTo`` inside the last, counts.
* an actor is **active** in a period when it has a row in it; its **first period** is the period
  of its first row of all the tenant's history (not only the range).
* per period ``p`` (``p - 1``: the period before it, for the first one the period before the
  range, which is read but not reported):

  * ``new``: active in ``p``, which is its first period;
  * ``returning``: active in ``p`` and in ``p - 1``;
  * ``resurrecting``: active in ``p``, not in ``p - 1``, and active before ``p - 1`` (its first
    period is earlier);
  * ``dormant``: active in ``p - 1`` and not in ``p``, reported as a negative count.

  So every active actor of ``p`` is exactly one of new, returning and resurrecting, and
  ``returning(p) - dormant(p)`` (dormant being negative) is the number of actors active in
  ``p - 1``.

The engine does it in one query: per actor, the positions of its active periods in a bound array
of bucket keys (the period before the range first) and the position of its first row (0: before
that period); one row per (actor, period, status) through ``arrayJoin``; counts per (period,
status). It reads the rows of all history before the end of the last period. Only functions of
ClickHouse 23.8.

No text from the request reaches the SQL: identifiers come from the catalog, values (dates,
bucket keys, the event name, filter values) are bound parameters; the SQL depends only on the
request's shape.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import pyarrow as pa

from service.catalog import Catalog, Model
from service.errors import AnalyticsError, ErrorKind
from service.insights.buckets import Bucket, range_buckets
from service.insights.date_range import date_range, inclusive_date_to
from service.insights.lifecycle_request import LifecycleRequest
from service.insights.periods import (
    bound_instant,
    event_roles,
    parse_period,
    parse_week_start,
    period_before,
    period_end,
    period_index_sql,
    period_key_sql,
    period_keys,
)
from service.insights.retention import FINAL_WITHIN_PARTITIONS
from service.query.compiler import (
    CompiledQuery,
    OutputColumn,
    ParameterBuilder,
    filter_conditions,
    resolve_model,
    segment_condition,
    split_segment,
    where_conditions,
    with_model,
)
from service.query.field_paths import column_sql, fields_read
from service.query.filters import parse_filters
from service.query.joins import from_clause, related_models
from service.query.time_buckets import BUCKET_SETTINGS
from service.query.values import encode_text_parameter, parse_time_zone

#: The statuses in the order of the answer's lines; the query numbers them from 1.
STATUSES = ("new", "returning", "resurrecting", "dormant")


@dataclass(frozen=True)
class LifecyclePlan:
    """The validated request and its one query (run by a backend like any CompiledQuery)."""

    model: Model
    period: str
    buckets: tuple[Bucket, ...]
    date_from: dt.datetime
    date_to: dt.datetime
    time_zone: str
    compiled: CompiledQuery


@dataclass(frozen=True)
class LifecycleLine:
    """One status's actors per period (``dormant`` negative)."""

    status: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class LifecycleAnswer:
    """The periods' labels (ISO 8601 first instants) and a line per status, in STATUSES order."""

    period: str
    buckets: tuple[str, ...]
    lines: tuple[LifecycleLine, ...]


def compile_lifecycle(
    request: LifecycleRequest, catalog: Catalog, tenant: str, now: dt.datetime
) -> LifecyclePlan:
    """Validate ``request`` against the catalog and compile it for ``tenant`` at time ``now``.

    Raises AnalyticsError: NOT_FOUND for an unknown model, VALIDATION naming the request field.
    """
    if not tenant:
        raise AnalyticsError(ErrorKind.UNAUTHORIZED, "no tenant in the token", "NO_TENANT")
    model = resolve_model(catalog, request.model)
    plain, segment = split_segment(request.filters)
    request = dataclasses.replace(request, filters=plain)
    roles = event_roles(model, "lifecycle")
    time_zone = parse_time_zone(request.time_zone)
    period = parse_period(request.period)
    week_start = parse_week_start(request.week_start)
    start, end = date_range(request.date_from, inclusive_date_to(request.date_to), now, time_zone)
    buckets = range_buckets(start, end, period, time_zone, week_start, source="period")
    keys = [period_before(buckets[0], period, time_zone, week_start), *buckets]
    read_end = period_end(buckets[-1], period, time_zone, week_start)
    parsed = parse_filters(request.filters)
    # Checked (and their fields resolved) as the request names them, so errors say which.
    filter_conditions(parsed, model, ParameterBuilder(), time_zone)
    used = fields_read(model, [parsed])

    builder = ParameterBuilder()
    tenant_placeholder = builder.bind("String", encode_text_parameter(tenant))
    where = where_conditions(request.filters, model, builder, tenant_placeholder, time_zone)
    timestamp_spec = model.fields[roles.timestamp]
    timestamp = column_sql(timestamp_spec, model, builder.bind)
    actor_spec = model.fields[roles.actor]
    actor = column_sql(actor_spec, model, builder.bind)
    # After the guards, before the filters: the bound is what the sorting key can skip on. No
    # lower bound: an actor's first period is that of its first row of all history.
    where.insert(2, f"{timestamp} < {bound_instant(builder, read_end)}")
    if request.event:
        name = builder.bind("String", encode_text_parameter(request.event))
        where.append(f"t.`{roles.event}` = {name}")
    if actor_spec.nullable:
        where.append(f"{actor} IS NOT NULL")
    if timestamp_spec.nullable:
        where.append(f"{timestamp} IS NOT NULL")
    joined = related_models(model, used)
    if segment:
        kept, members = segment_condition(catalog, model, segment, builder, tenant_placeholder)
        where.append(kept)
        joined = with_model(joined, members, model)
    zone = builder.bind("String", time_zone)
    key = period_key_sql(timestamp, period, week_start, zone)
    table = from_clause(catalog, model, used, tenant_placeholder)
    # Identifiers from the catalog, values bound: nothing of the request's text is in the SQL.
    per_period = (
        f"SELECT {actor} AS a0, {key} AS k0, min({timestamp}) AS m0 FROM {table} "  # noqa: S608
        f"WHERE {' AND '.join(where)} GROUP BY a0, k0"
    )
    # Each (actor, period) group finds its period's position, not each row.
    index = period_index_sql(period_keys(builder, period, keys), "k0", period)
    per_actor = (
        f"SELECT a0, groupArrayIf({index} AS i0, i0 > 0) AS ap, "  # noqa: S608
        f"argMin(i0, m0) AS fi FROM ({per_period}) GROUP BY a0"
    )
    last = builder.bind("UInt64", str(len(buckets)))
    # Positions: 1 is the period before the range, 2.. the range's. Status numbers: STATUSES.
    active = "arrayMap(j -> tuple(j, multiIf(j = fi, 1, has(ap, j - 1), 2, 3)), " + (
        "arrayFilter(j -> j >= 2, ap))"
    )
    dormant = (
        f"arrayMap(j -> tuple(j + 1, 4), arrayFilter(j -> j <= {last} AND NOT has(ap, j + 1), ap))"
    )
    statuses = f"SELECT arrayJoin(arrayConcat({active}, {dormant})) AS s0 FROM ({per_actor})"  # noqa: S608
    sql = (
        "SELECT toInt64(s0.1 - 1) AS c0, toInt64(s0.2) AS c1, toInt64(count()) AS c2 "  # noqa: S608
        f"FROM ({statuses}) GROUP BY c0, c1"
    )
    compiled = CompiledQuery(
        sql,
        builder.parameters,
        (
            OutputColumn("bucket", "c0", "int"),
            OutputColumn("status", "c1", "int"),
            OutputColumn("actors", "c2", "int"),
        ),
        model,
        limit=0,
        settings={**BUCKET_SETTINGS, **FINAL_WITHIN_PARTITIONS},
        tenant=tenant,
        joined=joined,
    )
    return LifecyclePlan(model, period, tuple(buckets), start, end, time_zone, compiled)


def assemble_lifecycle(plan: LifecyclePlan, table: pa.Table) -> LifecycleAnswer:
    """The answer from the rows of the plan's query (bucket, status, actors)."""
    values = [[0] * len(plan.buckets) for _ in STATUSES]
    rows = zip(*(table.column(c.alias).to_pylist() for c in plan.compiled.columns), strict=True)
    for bucket, status, actors in rows:
        sign = -1 if STATUSES[status - 1] == "dormant" else 1
        values[status - 1][bucket - 1] = sign * int(actors)
    return LifecycleAnswer(
        plan.period,
        tuple(bucket.label() for bucket in plan.buckets),
        tuple(
            LifecycleLine(status, tuple(line))
            for status, line in zip(STATUSES, values, strict=True)
        ),
    )
