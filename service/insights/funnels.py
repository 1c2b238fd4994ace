"""compile_funnel: (request, catalog, tenant, now) -> one SQL query; assemble_funnel: the answer.

Definitions (the contract the README's "Funnels" section copies, with examples):

* **rows**: per step (and exclusion), its source's current rows of the tenant (FINAL, not
  deleted, not soft-deleted unless a filter names the soft-delete column) with an actor, whose
  date is in ``[dateFrom, dateTo)`` (bounds as in trends: absolute or relative, read in
  ``timeZone``; a date-only ``dateTo`` includes that day); the request's ``filters`` apply to the
  rows of the request's own model. A source is a model, the timestamp field dating its rows and
  the field holding the actor (``service.insights.funnel_sources``); an event model's events are
  dated by their timestamp and belong to their actor. Rows outside the range take no part.
* **steps**: 2 to 20. A row *matches* step ``k`` when it is of the step's source, has the step's
  event name (if one is given) and passes the step's filters (if any).
* **order of an actor's rows**: by time, then by text: an event's id (lower-case UUID); another
  row's ``<module>.<model>.<date field>/<primary key>``. Unique among an actor's rows of one
  instant.
* **attempts** (``ordered``): every row matching step 1 starts an attempt at its time ``t1``.
  Step ``k > 1`` of an attempt is filled by the first row, in the order above, that (a) matches
  step ``k``, (b) is at or after the row that filled step ``k - 1``, (c) is at most
  ``t1 + window`` (inclusive bound; ``window`` defaults to 14 days, at most 365 days), and (d)
  filled none of the attempt's earlier steps; ``strict`` adds (e): no row of the actor's
  sources lies strictly between it and the previous step's row in time. Steps are taken
  greedily. ``unordered``: every row matching any step starts an attempt; it fills the first
  step it matches, then each other step in step order takes the first unused row in
  ``[t1, t1 + window]`` matching it; the attempt reaches the number of steps filled.
* **exclusions** (ordered and strict only): an attempt that reaches ``toStep`` and has a row
  matching the exclusion strictly between (in time) its ``fromStep`` and ``toStep`` rows is
  void: it reaches nothing.
* **actors**: an actor counts at its *furthest* step, the furthest any of its attempts reaches,
  and so at every step up to it; an actor whose every attempt is void counts nowhere.
  ``actors`` of step ``k``: the actors whose furthest step is at least ``k``.
* **conversion**: ``actors[k] / actors[1]`` from the first step and ``actors[k] / actors[k-1]``
  from the previous one (1.0 for step 1), 0.0 when the denominator is 0. ``dropOff`` of step
  ``k``: ``actors[k] - actors[k+1]`` (0 at the last step).
* **time to convert** of step ``k > 1``, in seconds: over the actors counted at step ``k``, the
  time between the rows filling steps ``k - 1`` and ``k`` (unordered: the attempt's (k-1)-th and
  k-th rows in time) in the actor's *deciding attempt*: the earliest (by its first row, in the
  order above) of its attempts reaching its furthest step. ``median`` (the mean of the two
  middle values for an even count) and ``average``; null when no actor reached step ``k``.
* **breakdown**: a field of the request's model (rows of other models have no value); each
  actor's value comes from its deciding attempt: its first row (``first_touch``), its last row
  in the actor's order (``last_touch``), the row filling ``breakdownStep`` (``step``; null when
  not reached); with ``all_events`` the funnel runs per value over the rows having it. Values
  rank by actors at step 1 (ties by the value, null last); beyond ``breakdownLimit`` they merge
  into Other, where an actor counts once, by its best deciding attempt there.

The engine does it in one query: per actor, the sorted array of (time in microseconds, row text,
bitmask of matching steps and exclusions[, value]) over the UNION ALL of the sources' scans;
per actor, arrays with an element per attempt (one per starting position): each step's position
with ``arrayFirstIndex``, one subquery level per step; the furthest step (``arrayMax``) and the
deciding attempt, the first reaching it (positions follow the actor's row order); then counts,
sums and exact medians per step (and per breakdown class, ranked with window functions). No row
per attempt and no second grouping by actor: on 1 M actors that was a third of the time. An
ordered funnel without exclusions or breakdown answers its *direct* actors (one row of step 1,
each step's earliest row in order and in the window) from per-step minimum times, with no
arrays, and reads only the others' rows again into those levels (``_two_pass_sql``). Only
functions of ClickHouse 23.8.

No text from the request reaches the SQL: identifiers come from the catalog, values (dates, the
window, event names, filter values, the breakdown limit) are bound parameters; the SQL depends
only on the request's shape (steps and sources, which have event names, the filters' structure,
the order, exclusion spans, the breakdown's attribution and step).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.errors import AnalyticsError, ErrorKind, validation_error
from service.insights.breakdowns import breakdown_field, breakdown_limit
from service.insights.date_range import date_range, inclusive_date_to
from service.insights.funnel_request import FunnelActorsRequest, FunnelRequest, FunnelStep
from service.insights.funnel_sources import FunnelSource, StepOrigin, same_actors, step_origin
from service.insights.periods import bound_instant
from service.insights.retention import FINAL_WITHIN_PARTITIONS
from service.insights.trend_results import OTHER
from service.query.compiler import (
    CompiledQuery,
    OutputColumn,
    ParameterBuilder,
    event_condition,
    filter_conditions,
    group_expression,
    render_value,
    resolve_model,
    segment_condition,
    split_segment,
    where_conditions,
)
from service.query.field_paths import column_sql, fields_read
from service.query.filters import Filter, mentioned_fields, parse_filters
from service.query.joins import from_clause, related_models
from service.query.values import encode_text_parameter, parse_time_zone

MIN_STEPS = 2
MAX_STEPS = 20
MAX_LABEL_CHARS = 200
DEFAULT_WINDOW = "14d"
MAX_WINDOW = dt.timedelta(days=365)
_WINDOW = re.compile(r"([+-]?)([0-9]{1,12})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_MICROS = 1_000_000


ORDERS = ("ordered", "strict", "unordered")
ACTOR_STATUSES = ("reached", "dropped")
ATTRIBUTIONS = ("first_touch", "last_touch", "all_events", "step")
MAX_EXCLUSIONS = 10
_EXCLUSION_BIT = 32
"""Bit of the first exclusion in an event's mask (steps use bits 0 to 19)."""


@dataclass(frozen=True)
class FunnelPlan:
    """The validated funnel and its one query (run by a backend like any CompiledQuery)."""

    model: Model
    labels: tuple[str, ...]
    window: dt.timedelta
    date_from: dt.datetime
    date_to: dt.datetime
    time_zone: str
    compiled: CompiledQuery
    breakdown: FieldSpec | None = None


@dataclass(frozen=True)
class FunnelStepResult:
    """One step of the answer; see the module docstring for each figure's definition."""

    label: str
    actors: int
    conversion_from_first: float
    conversion_from_previous: float
    drop_off: int
    median_seconds: float | None
    average_seconds: float | None


@dataclass(frozen=True)
class FunnelBreakdownResult:
    """Every step's figures for the actors of one breakdown value (or of ``Other``)."""

    value: Any
    is_other: bool
    steps: tuple[FunnelStepResult, ...]


@dataclass(frozen=True)
class FunnelAnswer:
    """Every step's figures in step order; with a breakdown, per value instead (``steps`` empty)."""

    steps: tuple[FunnelStepResult, ...]
    breakdowns: tuple[FunnelBreakdownResult, ...] = ()


@dataclass(frozen=True)
class _Checked:
    """The request's validated options (filters are checked apart, as they are compiled)."""

    labels: tuple[str, ...]
    window: dt.timedelta
    order: str
    spans: tuple[tuple[int, int], ...]
    breakdown: FieldSpec | None
    attribution: str
    breakdown_step: int
    limit: int


@dataclass(frozen=True)
class _Shape:
    """What of the request the query's text depends on (never a value)."""

    steps: int
    order: str
    exclusions: tuple[tuple[int, int], ...]
    attribution: str
    breakdown_step: int
    window: str
    limit: str
    shared: frozenset[tuple[int, int]] = frozenset()
    """The step pairs ``(j, k)``, ``j < k`` (1-based), whose conditions one row may meet both of:
    only for them must a row filling step ``k`` be another than the one filling step ``j``."""
    simple: bool = False
    """Whether the per-actor rows carry c1 and z1..zn and no arrays (``_two_pass_sql``)."""


def compile_funnel(
    request: FunnelRequest, catalog: Catalog, tenant: str, now: dt.datetime
) -> FunnelPlan:
    """Validate ``request`` against the catalog and compile it for ``tenant`` at time ``now``.

    Raises AnalyticsError: NOT_FOUND for an unknown model, VALIDATION naming the request field.
    """
    prepared = _prepare(request, catalog, tenant, now, scalars=True)
    breakdown = prepared.checked.breakdown
    if prepared.shape.simple:
        funnel_sql = _two_pass_sql(prepared.per_actor, prepared.rest, prepared.shape)
    else:
        funnel_sql = _funnel_sql(prepared.per_actor, prepared.shape, breakdown)
    sql, columns = _outputs(
        funnel_sql,
        prepared.shape,
        breakdown,
        prepared.model,
        prepared.builder,
    )
    checked = prepared.checked
    return FunnelPlan(
        prepared.model,
        checked.labels,
        checked.window,
        prepared.start,
        prepared.end,
        prepared.time_zone,
        prepared.compiled(sql, columns, tenant),
        breakdown,
    )


def compile_funnel_actors(
    request: FunnelActorsRequest, catalog: Catalog, tenant: str, now: dt.datetime
) -> CompiledQuery:
    """The actors at a step of ``request.funnel`` (or dropped off there), ordered by actor.

    Columns: ``actor`` and ``furthestStep`` (the step the actor counts at). Raises
    AnalyticsError as compile_funnel does, and on ``step``, ``status``, ``limit`` and a
    breakdown (the actors of a funnel are listed whole).
    """
    funnel = request.funnel
    if funnel.breakdown:
        raise validation_error(
            "funnel.breakdown",
            "funnel.breakdown: the actors are listed for the whole funnel; leave it out",
            "INVALID_BREAKDOWN",
        )
    if not 1 <= request.step <= len(funnel.steps):
        raise validation_error(
            "step", f"step: a step number from 1 to {max(len(funnel.steps), 1)}", "INVALID_VALUE"
        )
    status = request.status or ACTOR_STATUSES[0]
    if status not in ACTOR_STATUSES:
        raise validation_error(
            "status",
            f"status: {request.status[:40]!r} is not one of {', '.join(ACTOR_STATUSES)}",
            "INVALID_VALUE",
        )
    if request.limit < 0 or request.offset < 0:
        raise validation_error("limit", "limit: and offset are at least 0", "INVALID_VALUE")
    prepared = _prepare(funnel, catalog, tenant, now)
    builder = prepared.builder
    by_actor = _by_actor_sql(prepared.per_actor, prepared.shape, broken_down=False)
    step = builder.bind("UInt8", str(request.step))
    condition = f"f1 >= {step}" if status == "reached" else f"f1 = {step}"
    actor_type = group_expression(prepared.actor_spec, prepared.actor_model, ParameterBuilder())[1]
    rendered = render_value("a0", actor_type, prepared.actor_spec, builder)
    page = ""
    if request.limit:
        page = f" LIMIT {builder.bind('UInt64', str(request.limit))}"
    if request.offset:
        page += f" OFFSET {builder.bind('UInt64', str(request.offset))}"
    # Aliases and placeholders only.
    sql = (
        f"SELECT {rendered} AS c0, f1 AS c1 FROM (SELECT a0, any(f1) AS f1 "  # noqa: S608
        f"FROM ({by_actor}) GROUP BY a0 HAVING {condition}) ORDER BY a0{page}"
    )
    columns = (
        OutputColumn("actor", "c0", actor_type),
        OutputColumn("furthestStep", "c1", "int"),
    )
    return prepared.compiled(sql, columns, tenant)


@dataclass(frozen=True)
class _Prepared:
    """A validated funnel up to its per-actor arrays (``per_actor``), the parameters bound."""

    model: Model
    checked: _Checked
    builder: ParameterBuilder
    per_actor: str
    shape: _Shape
    joined: tuple[Model, ...]
    start: dt.datetime
    end: dt.datetime
    time_zone: str
    actor_model: Model
    actor_spec: FieldSpec
    rest: str = ""
    """With ``shape.simple``: the per-actor arrays of the actors the direct part leaves (e0, o0
    as in ``per_actor`` otherwise), whose scans read ``d0``, the direct part's tuple."""

    def compiled(self, sql: str, columns: tuple[OutputColumn, ...], tenant: str) -> CompiledQuery:
        """``sql`` over the per-actor arrays as a query a backend runs."""
        return CompiledQuery(
            sql,
            self.builder.parameters,
            columns,
            self.model,
            limit=0,
            settings=dict(FINAL_WITHIN_PARTITIONS),
            tenant=tenant,
            joined=self.joined,
        )


def _prepare(
    request: FunnelRequest,
    catalog: Catalog,
    tenant: str,
    now: dt.datetime,
    *,
    scalars: bool = False,
) -> _Prepared:
    """The funnel up to its per-actor rows.

    ``scalars``: only the answer's figures are asked (not the actors), so the split of
    ``_split_sql`` may be used where it applies.
    """
    if not tenant:
        raise AnalyticsError(ErrorKind.UNAUTHORIZED, "no tenant in the token", "NO_TENANT")
    model = resolve_model(catalog, request.model)
    plain, segment = split_segment(request.filters)
    request = dataclasses.replace(request, filters=plain)
    time_zone = parse_time_zone(request.time_zone)
    checked = _check(request, model)
    step_origins, exclusion_origins = _origins(request, catalog, model)
    start, end = date_range(request.date_from, inclusive_date_to(request.date_to), now, time_zone)
    request_filters, step_filters, exclusion_filters = _parsed_filters(
        request, model, step_origins, exclusion_origins, time_zone
    )
    sources: dict[tuple[str, str, str], FunnelSource] = {}
    for index, origin in enumerate(step_origins):
        sources.setdefault(origin.key, FunnelSource(origin)).steps.append(index)
    for index, origin in enumerate(exclusion_origins):
        sources.setdefault(origin.key, FunnelSource(origin)).exclusions.append(index)

    builder = ParameterBuilder()
    tenant_placeholder = builder.bind("String", encode_text_parameter(tenant))
    bounds = (bound_instant(builder, start), bound_instant(builder, end))
    scans: list[tuple[str, str]] = []
    joined: dict[str, Model] = {}
    uuid_ids = all(_uuid_id(source.origin) for source in sources.values())
    for source in sources.values():
        scan = _Scan(
            request,
            source,
            source.origin.model.qualified_name == model.qualified_name,
            checked,
            [request_filters, step_filters, exclusion_filters],
            uuid_ids=uuid_ids,
            segment=segment,
        )
        sql, used, actor = scan.sql(catalog, builder, tenant_placeholder, bounds, time_zone)
        scans.append((sql, actor))
        if segment:
            members = catalog.segments[segment].model
            joined.setdefault(members.qualified_name, members)
        if not scan.on_request_model:
            joined.setdefault(source.origin.model.qualified_name, source.origin.model)
        for related in related_models(source.origin.model, used):
            joined.setdefault(related.qualified_name, related)
    shared = _shared_steps(step_origins)
    simple = (
        scalars and checked.order == "ordered" and not checked.spans and checked.breakdown is None
    )
    per_actor, rest = _per_actor_sql(checked, scans, len(request.steps), uuid_ids, simple)
    shape = _Shape(
        steps=len(request.steps),
        order=checked.order,
        exclusions=checked.spans,
        attribution=checked.attribution,
        breakdown_step=checked.breakdown_step,
        window=builder.bind("Int64", str(_whole_micros(checked.window))),
        limit=builder.bind("UInt64", str(checked.limit)),
        shared=shared,
        simple=simple,
    )
    first = step_origins[0]
    return _Prepared(
        model,
        checked,
        builder,
        per_actor,
        shape,
        tuple(m for name, m in joined.items() if name != model.qualified_name),
        start,
        end,
        time_zone,
        first.model,
        first.model.fields[first.actor_field],
        rest,
    )


def _per_actor_sql(
    checked: _Checked,
    scans: Sequence[tuple[str, str]],
    count: int,
    uuid_ids: bool,
    simple: bool,
) -> tuple[str, str]:
    """The per-actor rows and the second pass's (``_two_pass_sql``).

    ``scans``: each source's scan with its actor's expression. The second pass's rows are
    those of ``simple`` funnels only. Each row: a0 (with ``all_events`` b0, the value), o0
    (every step and exclusion any of the actor's rows matches) and e0, the actor's row tuples
    in their order; ``simple``: instead of e0, c1 (the rows of step 1, plus 2 for each row
    matching two steps or more: one aggregate for both, as a direct actor has 0 or 1) and
    z1..zn, each step's earliest time.
    """
    keys, group, element = "a0", "a0", "tuple(t0, i0, m0"
    if checked.breakdown is not None and checked.attribution == "all_events":
        keys, group = "a0, v0 AS b0", "a0, b0"
    elif checked.breakdown is not None:
        element += ", v0"
    order_key = ""
    if uuid_ids:
        # The ids are carried as UUIDs (16 bytes, not their 36-character text: on 1 M actors
        # that was a tenth of the funnel's time) and sorted by their text, as the rows order.
        order_key = "x.1, toString(x.2), x.3" + (", x.4" if element.endswith("v0") else "")
    aggregates = [f"{_sorted(f'groupArray({element}))', order_key)} AS e0", "groupBitOr(m0) AS o0"]
    rows = _union([scan for scan, _ in scans])
    if not simple:
        per_actor = f"SELECT {keys}, {', '.join(aggregates)} FROM ({rows}) GROUP BY {group}"  # noqa: S608
        return per_actor, ""
    # Each scan keeps the second pass's actors after its tenant condition.
    kept = _union([f"{scan} AND {actor} IN (SELECT arrayJoin(d0.1))" for scan, actor in scans])
    rest = f"SELECT {keys}, {', '.join(aggregates)} FROM ({kept}) GROUP BY {group}"  # noqa: S608
    scalar = [
        "groupBitOr(m0) AS o0",
        f"sum(toUInt64(bitTest(m0, 0)) + 2 * (bitCount(bitAnd(m0, {(1 << count) - 1})) > 1)) AS c1",
        *(f"minIf(t0, bitTest(m0, {k - 1})) AS z{k}" for k in range(1, count + 1)),
    ]
    per_actor = f"SELECT {keys}, {', '.join(scalar)} FROM ({rows}) GROUP BY {group}"  # noqa: S608
    return per_actor, rest


@dataclass(frozen=True)
class _Scan:
    """The rows of one source: (a0 actor, t0 micros, i0 id text, m0 step mask[, v0 value])."""

    request: FunnelRequest
    source: FunnelSource
    on_request_model: bool
    checked: _Checked
    parsed: Sequence[Sequence[Any]]
    """The request's filters, each step's, each exclusion's (as _parsed_filters returns)."""
    uuid_ids: bool = False
    """Whether every source's rows are events with a non-null UUID id: i0 is then the UUID."""
    segment: str = ""
    """The tenant's segment the request's filters name: every scan keeps its actors only."""

    def sql(
        self,
        catalog: Catalog,
        builder: ParameterBuilder,
        tenant: str,
        bounds: tuple[str, str],
        time_zone: str,
    ) -> tuple[str, list[FieldSpec], str]:
        """The scan's SELECT, its fields read and its actor's expression.

        The SELECT's WHERE comes last and begins with the tenant condition.
        """
        origin = self.source.origin
        model = origin.model
        request_filters, step_filters, exclusion_filters = self.parsed
        own = [step_filters[i] for i in self.source.steps]
        own += [exclusion_filters[i] for i in self.source.exclusions]
        # The request's filters apply to the steps on its own model only.
        shared = request_filters if self.on_request_model else []
        used = fields_read(model, [shared, *own])
        breakdown = self.checked.breakdown if self.on_request_model else None
        if breakdown is not None and breakdown not in used:
            used.append(breakdown)
        guarded = {name for parsed in own for name in mentioned_fields(list(parsed))}
        filters = self.request.filters if self.on_request_model else {}
        where = where_conditions(filters, model, builder, tenant, time_zone, guard_fields=guarded)
        date_spec = model.fields[origin.date_field]
        dated = column_sql(date_spec, model, builder.bind)
        # After the guards, before the filters: the range is what the sorting key can skip on.
        where[2:2] = [f"{dated} >= {bounds[0]}", f"{dated} < {bounds[1]}"]
        actor_spec = model.fields[origin.actor_field]
        actor = column_sql(actor_spec, model, builder.bind)
        if actor_spec.nullable:
            where.append(f"{actor} IS NOT NULL")
        if self.segment:
            kept, _ = segment_condition(
                catalog,
                model,
                self.segment,
                builder,
                tenant,
                actor=(origin.actor_field, origin.actors),
            )
            where.append(kept)
        event_column = model.events.event if model.events is not None else ""
        conditions = [
            (
                1 << index,
                event_condition(
                    self.request.steps[index].event,
                    step_filters[index],
                    event_column,
                    model,
                    builder,
                    time_zone,
                ),
            )
            for index in self.source.steps
        ]
        conditions += [
            (
                1 << (_EXCLUSION_BIT + index),
                event_condition(
                    self.request.exclusions[index].event,
                    exclusion_filters[index],
                    event_column,
                    model,
                    builder,
                    time_zone,
                ),
            )
            for index in self.source.exclusions
        ]
        if self.checked.order != "strict":
            # A strict funnel reads every row of its sources: any of them breaks a sequence.
            where.append("(" + " OR ".join(f"({c or 1})" for _, c in conditions) + ")")
        mask = " + ".join(f"if({c or 1}, {bit}, 0)" for bit, c in conditions)
        micros = f"toUnixTimestamp64Micro({dated})"
        if date_spec.nullable:
            micros = f"assumeNotNull({micros})"
        columns = [
            f"{actor} AS a0",
            f"{micros} AS t0",
            f"{self._id(model, builder)} AS i0",
            f"toUInt64({mask}) AS m0",
        ]
        if self.checked.breakdown is not None:
            value = "NULL"
            if breakdown is not None:
                value = f"toNullable({group_expression(breakdown, model, builder)[0]})"
            columns.append(f"{value} AS v0")
        table = from_clause(catalog, model, used, tenant, guard_fields=guarded)
        # Identifiers from the catalog, values bound: nothing of the request's text is in it.
        select = f"SELECT {', '.join(columns)} FROM {table} WHERE {' AND '.join(where)}"  # noqa: S608
        return select, used, actor

    def _id(self, model: Model, builder: ParameterBuilder) -> str:
        """A row's text among the actor's events: an event's id; else source and key."""
        origin = self.source.origin
        roles = model.events
        if origin.is_event_source and roles is not None:
            column = column_sql(model.fields[roles.event_id], model, builder.bind)
            return column if self.uuid_ids else f"toString({column})"
        key = ", ".join(f"t.`{name}`" for name in model.primary_key)
        key = key if len(model.primary_key) == 1 else f"tuple({key})"
        prefix = builder.bind(
            "String", encode_text_parameter(f"{model.qualified_name}.{origin.date_field}/")
        )
        return f"concat({prefix}, toString({key}))"


def _uuid_id(origin: StepOrigin) -> bool:
    """Whether the origin's rows are events whose id is a non-null UUID."""
    roles = origin.model.events
    if not origin.is_event_source or roles is None:
        return False
    spec = origin.model.fields[roles.event_id]
    return spec.type is FieldType.UUID and not spec.nullable


def parse_window(text: str) -> dt.timedelta:
    """A conversion window ``<n><unit>`` (s, m, h, d, w); ``14d`` when empty.

    Raises AnalyticsError: a validation error on ``window`` unless it is more than 0 and at most
    365 days.
    """
    match = _WINDOW.fullmatch(text or DEFAULT_WINDOW)
    if match is None:
        raise validation_error(
            "window",
            f"window: {text[:40]!r} is not a duration; expected <n><unit> with the units s, m, "
            "h, d, w, such as 14d",
            "INVALID_WINDOW",
        )
    sign, digits, unit = match.groups()
    seconds = int(digits) * _UNIT_SECONDS[unit]
    if sign == "-" or seconds == 0:
        raise validation_error("window", f"window: {text!r} is not longer than 0", "INVALID_WINDOW")
    if seconds > MAX_WINDOW.total_seconds():
        raise validation_error(
            "window",
            f"window: {text!r} is longer than the longest window, {MAX_WINDOW.days} days",
            "INVALID_WINDOW",
        )
    return dt.timedelta(seconds=seconds)


def assemble_funnel(plan: FunnelPlan, table: pa.Table) -> FunnelAnswer:
    """The answer from the rows the plan's query returns (one, or one per breakdown class)."""
    rows = table.to_pylist()
    if plan.breakdown is None:
        if len(rows) != 1:
            raise ValueError(f"a funnel query returns one row, got {len(rows)}")
        return FunnelAnswer(_steps(plan, rows[0]))
    # Top values by rank, then Other (rank 0).
    rows.sort(key=lambda row: (row["k1"] == 0, row["k1"]))
    return FunnelAnswer(
        (),
        tuple(
            FunnelBreakdownResult(
                OTHER if row["k1"] == 0 else row["k3"], row["k1"] == 0, _steps(plan, row)
            )
            for row in rows
        ),
    )


def _steps(plan: FunnelPlan, row: dict[str, Any]) -> tuple[FunnelStepResult, ...]:
    values = {c.key: row[c.alias] for c in plan.compiled.columns}
    count = len(plan.labels)
    actors = [int(values[f"actors_{k}"]) for k in range(1, count + 1)]
    steps: list[FunnelStepResult] = []
    for index, label in enumerate(plan.labels):
        reached = actors[index]
        median: float | None = None
        average: float | None = None
        if index > 0 and reached:
            median = float(values[f"median_micros_{index + 1}"]) / _MICROS
            average = int(values[f"sum_micros_{index + 1}"]) / reached / _MICROS
            if not math.isfinite(median):
                raise ValueError(f"step {index + 1}: no median of {reached} actors")
        steps.append(
            FunnelStepResult(
                label=label,
                actors=reached,
                conversion_from_first=_ratio(reached, actors[0]),
                conversion_from_previous=_ratio(reached, actors[index - 1] if index else reached),
                drop_off=reached - actors[index + 1] if index + 1 < count else 0,
                median_seconds=median,
                average_seconds=average,
            )
        )
    return tuple(steps)


def _label(index: int, step: FunnelStep) -> str:
    source = f"steps[{index}]"
    if not (step.event or step.filters or step.model or step.date_field):
        raise validation_error(
            source,
            f"{source}: a step needs an event name, filters, a model or a date field",
            "EMPTY_STEP",
        )
    if len(step.label) > MAX_LABEL_CHARS:
        raise validation_error(
            f"{source}.label", f"{source}.label: at most {MAX_LABEL_CHARS} characters"
        )
    return step.label or step.event or f"step {index + 1}"


def _parsed_filters(
    request: FunnelRequest,
    model: Model,
    step_origins: Sequence[StepOrigin],
    exclusion_origins: Sequence[StepOrigin],
    time_zone: str,
) -> tuple[list[Filter], list[list[Filter]], list[list[Filter]]]:
    """The request's, each step's and each exclusion's filters, checked in the request's order."""
    request_filters = parse_filters(request.filters)
    step_filters = [
        parse_filters(step.filters, f"steps[{index}].filters")
        for index, step in enumerate(request.steps)
    ]
    exclusion_filters = [
        parse_filters(item.filters, f"exclusions[{index}].filters")
        for index, item in enumerate(request.exclusions)
    ]
    # Compiled once here so that each field is resolved (and named in errors) as written.
    scratch = ParameterBuilder()
    filter_conditions(request_filters, model, scratch, time_zone)
    for parsed, origin in (
        *zip(step_filters, step_origins, strict=True),
        *zip(exclusion_filters, exclusion_origins, strict=True),
    ):
        filter_conditions(parsed, origin.model, scratch, time_zone)
    return request_filters, step_filters, exclusion_filters


def _origins(
    request: FunnelRequest, catalog: Catalog, model: Model
) -> tuple[list[StepOrigin], list[StepOrigin]]:
    """Each step's and each exclusion's origin, every one with the first step's actors."""
    steps = [
        step_origin(catalog, model, s.model, s.date_field, s.actor, s.event, f"steps[{index}]")
        for index, s in enumerate(request.steps)
    ]
    exclusions = [
        step_origin(catalog, model, x.model, x.date_field, x.actor, x.event, f"exclusions[{index}]")
        for index, x in enumerate(request.exclusions)
    ]
    for index, origin in enumerate(steps[1:], 1):
        same_actors(steps[0], origin, f"steps[{index}]")
    for index, origin in enumerate(exclusions):
        same_actors(steps[0], origin, f"exclusions[{index}]")
    return steps, exclusions


def _check(request: FunnelRequest, model: Model) -> _Checked:
    """Every option of ``request`` but its filters, validated in the order the request reads."""
    steps = request.steps
    if not MIN_STEPS <= len(steps) <= MAX_STEPS:
        raise validation_error(
            "steps",
            f"steps: a funnel has {MIN_STEPS} to {MAX_STEPS} steps, got {len(steps)}",
            "INVALID_STEP_COUNT",
        )
    labels = tuple(_label(index, step) for index, step in enumerate(steps))
    window = parse_window(request.window)
    order = _order(request)
    spans = _exclusion_spans(request, order)
    breakdown = _breakdown(request, model)
    attribution, breakdown_step = _attribution(request) if breakdown is not None else ("", 0)
    return _Checked(
        labels,
        window,
        order,
        spans,
        breakdown,
        attribution,
        breakdown_step,
        breakdown_limit(request.breakdown_limit, request.breakdown),
    )


def _order(request: FunnelRequest) -> str:
    order = request.order or ORDERS[0]
    if order not in ORDERS:
        raise validation_error(
            "order",
            f"order: {request.order[:40]!r} is not one of {', '.join(ORDERS)}",
            "INVALID_ORDER",
        )
    return order


def _exclusion_spans(request: FunnelRequest, order: str) -> tuple[tuple[int, int], ...]:
    """Each exclusion's (from, to) step numbers, checked against the steps."""
    if not request.exclusions:
        return ()
    if order == "unordered":
        raise validation_error(
            "exclusions",
            "exclusions: an unordered funnel has no steps in between; exclusions need the order "
            "ordered or strict",
            "INVALID_EXCLUSION",
        )
    if len(request.exclusions) > MAX_EXCLUSIONS:
        raise validation_error(
            "exclusions", f"exclusions: at most {MAX_EXCLUSIONS}", "INVALID_EXCLUSION"
        )
    count = len(request.steps)
    spans = []
    for index, item in enumerate(request.exclusions):
        source = f"exclusions[{index}]"
        if not (item.event or item.filters or item.model or item.date_field):
            raise validation_error(
                source,
                f"{source}: an exclusion needs an event name, filters, a model or a date field",
                "EMPTY_STEP",
            )
        first = item.from_step or 1
        last = item.to_step or count
        if not 1 <= first < last <= count:
            raise validation_error(
                f"{source}.fromStep",
                f"{source}: fromStep {first} and toStep {last} must be step numbers with "
                f"1 <= fromStep < toStep <= {count}",
                "INVALID_EXCLUSION",
            )
        spans.append((first, last))
    return tuple(spans)


def _breakdown(request: FunnelRequest, model: Model) -> FieldSpec | None:
    if not request.breakdown:
        for name, given in (
            ("breakdownLimit", request.breakdown_limit),
            ("breakdownAttribution", request.breakdown_attribution),
            ("breakdownStep", request.breakdown_step),
        ):
            if given:
                raise validation_error(name, f"{name}: only with a breakdown")
        return None
    return breakdown_field(model, request.breakdown)


def _attribution(request: FunnelRequest) -> tuple[str, int]:
    attribution = request.breakdown_attribution or ATTRIBUTIONS[0]
    if attribution not in ATTRIBUTIONS:
        raise validation_error(
            "breakdownAttribution",
            f"breakdownAttribution: {request.breakdown_attribution[:40]!r} is not one of "
            f"{', '.join(ATTRIBUTIONS)}",
            "INVALID_VALUE",
        )
    if attribution != "step":
        if request.breakdown_step:
            raise validation_error(
                "breakdownStep", "breakdownStep: only with breakdownAttribution step"
            )
        return attribution, 0
    if not 1 <= request.breakdown_step <= len(request.steps):
        raise validation_error(
            "breakdownStep",
            f"breakdownStep: a step number from 1 to {len(request.steps)}",
            "INVALID_VALUE",
        )
    return attribution, request.breakdown_step


def _outputs(
    sql: str, shape: _Shape, breakdown: FieldSpec | None, model: Model, builder: ParameterBuilder
) -> tuple[str, tuple[OutputColumn, ...]]:
    """The query with its breakdown value rendered, and the columns assemble_funnel reads."""
    columns = []
    if breakdown is not None:
        value_type = group_expression(breakdown, model, ParameterBuilder())[1]
        columns += [OutputColumn("rank", "k1", "int"), OutputColumn("value", "k3", value_type)]
        rendered = render_value("k2", value_type, breakdown, builder)
        sql = f"SELECT *, {rendered} AS k3 FROM ({sql})"  # noqa: S608 (aliases only)
    columns += [OutputColumn(f"actors_{k}", f"c{k - 1}", "int") for k in range(1, shape.steps + 1)]
    columns += [
        OutputColumn(f"{name}_{k}", f"{prefix}{k - 1}", kind)
        for k in range(2, shape.steps + 1)
        for name, prefix, kind in (("sum_micros", "s", "int"), ("median_micros", "q", "float"))
    ]
    return sql, tuple(columns)


def _funnel_sql(per_actor: str, shape: _Shape, breakdown: FieldSpec | None) -> str:
    """The query over ``per_actor`` (a0: actor, [b0: value,] e0: its sorted event tuples)."""
    by_actor = _by_actor_sql(per_actor, shape, breakdown is not None)
    count = shape.steps
    select = [f"countIf(f1 >= {k}) AS c{k - 1}" for k in range(1, count + 1)]
    for k in range(2, count + 1):
        select.append(f"sumIf(d1[{k - 1}], f1 >= {k}) AS s{k - 1}")
        select.append(
            f"quantileExactInclusiveIf(0.5)(toFloat64(d1[{k - 1}]), f1 >= {k}) AS q{k - 1}"
        )
    if breakdown is None:
        return f"SELECT {', '.join(select)} FROM ({by_actor})"  # noqa: S608 (aliases only)
    # Values ranked by their actors (ties by the value as Query orders values: a UUID by its
    # text); an actor of several values outside the top counts once in Other, at its furthest.
    tie = "toString(bv)" if breakdown.type is FieldType.UUID else "bv"
    ranked = (
        "SELECT *, dense_rank() OVER (ORDER BY n DESC, isNull(bv), "  # noqa: S608
        f"{tie}) AS r FROM (SELECT *, countIf(f1 > 0) OVER (PARTITION BY bv) AS n "
        f"FROM ({by_actor}))"
    )
    classed = (
        f"SELECT a0, if(r <= {shape.limit}, r, 0) AS k1, "  # noqa: S608
        "any(if(k1 = 0, NULL, bv)) AS k2, max(f1) AS f1, argMin(d1, key1) AS d1 "
        f"FROM ({ranked}) GROUP BY a0, k1"
    )
    # A class of actors who all count nowhere (a value ranked after every counted one, its
    # actors' attempts all void) has no row.
    return (
        f"SELECT k1, any(k2) AS k2, {', '.join(select)} FROM ({classed}) "  # noqa: S608
        "GROUP BY k1 HAVING c0 > 0"
    )


def _union(scans: Sequence[str]) -> str:
    """The rows of every source's scan."""
    return scans[0] if len(scans) == 1 else " UNION ALL ".join(f"({scan})" for scan in scans)


def _sorted(rows: str, order_key: str) -> str:
    """The array of row tuples ``rows`` in the actors' row order.

    ``order_key``: the sort key of a tuple ``x`` (time, then text); empty: the tuple itself.
    """
    return f"arraySort(x -> ({order_key}), {rows})" if order_key else f"arraySort({rows})"


def _two_pass_sql(per_actor: str, rest: str, shape: _Shape) -> str:
    """An ordered funnel (no exclusions, no breakdown) in two passes over the rows.

    A *direct* actor has one row of step 1, or none, no row matching two steps (c1), and for
    each step its earliest row (z1..zn) is at or after the previous step's, until a step with
    no row or none in the window: its one attempt fills each step with that earliest row, so its
    figures are scalar arithmetic over per-actor aggregates, with no array. The first pass
    (``per_actor``, a scalar subquery: the engine runs it once, as ``d0``) adds the direct
    actors' figures up and lists the others; the second reads the rows of those alone (``rest``)
    into the arrays and attempt levels of ``_by_actor_sql``. Building every actor's arrays cost
    a fifth of the funnel on 1 M actors, every one of them direct; an actor that is not costs
    its rows' second read, and where none is the second pass reads nothing. The answers of both
    add up: counts and sums, and the medians as merged ``quantileExactInclusiveIfState``s.
    """
    count = shape.steps
    # gk: the attempt fills step k with its earliest row.
    direct = ["c1 = 1 AS g1"]
    direct += [
        f"g{k - 1} AND bitTest(o0, {k - 1}) AND z{k} >= z{k - 1} "
        f"AND z{k} <= z1 + {shape.window} AS g{k}"
        for k in range(2, count + 1)
    ]
    # An earlier row of step k than step k - 1's row: another row of step k may be the one.
    unsure = " OR ".join(
        f"(g{k - 1} AND bitTest(o0, {k - 1}) AND z{k} < z{k - 1})" for k in range(2, count + 1)
    )
    direct.append(f"c1 = 0 OR (c1 = 1 AND NOT ({unsure})) AS s0")
    direct += [f"z{k} - z{k - 1} AS d{k}" for k in range(2, count + 1)]
    sql = f"SELECT a0, {', '.join(direct)} FROM ({per_actor})"  # noqa: S608 (aliases only)
    # d0: (the other actors, then per step k the direct actors at step k or further (the
    # attempt's steps are a prefix), then per step after the first their sum and median state).
    parts = ["groupArrayIf(a0, NOT s0)"]
    parts += [f"countIf(s0 AND g{k})" for k in range(1, count + 1)]
    for k in range(2, count + 1):
        parts.append(f"sumIf(d{k}, s0 AND g{k})")
        parts.append(f"quantileExactInclusiveIfState(0.5)(toFloat64(d{k}), s0 AND g{k})")
    direct_sql = f"SELECT tuple({', '.join(parts)}) FROM ({sql})"  # noqa: S608 (aliases only)
    by_actor = _by_actor_sql(rest, shape, False)
    select = [f"d0.{k + 1} + countIf(f1 >= {k}) AS c{k - 1}" for k in range(1, count + 1)]
    for k in range(2, count + 1):
        at = count + 2 * (k - 2) + 2
        select.append(f"d0.{at} + sumIf(d1[{k - 1}], f1 >= {k}) AS s{k - 1}")
        select.append(
            f"arrayReduce('quantileExactInclusiveIfMerge(0.5)', [d0.{at + 1}, "
            f"quantileExactInclusiveIfState(0.5)(toFloat64(d1[{k - 1}]), f1 >= {k})]) AS q{k - 1}"
        )
    # Aliases and placeholders only.
    return f"WITH ({direct_sql}) AS d0 SELECT {', '.join(select)} FROM ({by_actor})"  # noqa: S608


def _by_actor_sql(per_actor: str, shape: _Shape, broken_down: bool) -> str:
    """One row per actor (and value, with ``all_events``) with a row of the steps.

    f1 is 0 for an actor with no attempt (no row matching step 1) or whose every attempt is
    void: such an actor counts nowhere, which the callers' conditions (``f1 >= k``) see to.
    Columns: a0 actor, f1 its furthest step, d1 the deciding attempt's time differences, key1
    that attempt's (-furthest, first time[, first text]) and, with a breakdown, bv the actor's
    value. An actor's attempts are arrays, one element per attempt (no row per attempt, no
    second grouping): each step's positions one subquery deeper than the one before it, as an
    alias used in the same SELECT is expanded where it is used. The lambdas take the event
    arrays as arguments rather than capturing them, except where one lambda runs inside another.
    """
    count = shape.steps
    all_events = shape.attribution == "all_events"
    unordered = shape.order == "unordered"
    every = (1 << count) - 1
    by_step = broken_down and shape.attribution == "step"
    if unordered:
        # Every row of a single step: each attempt fills that step only.
        single, starts = f"bitCount(bitAnd(o0, {every})) <= 1", f"bitAnd(o0, {every}) != 0"
        first_starts = f"bitAnd(e0.3[1], {every}) != 0"
    else:
        # No row of step 2: no attempt goes further than step 1.
        single, starts, first_starts = "NOT bitTest(o0, 1)", "bitTest(o0, 0)", "bitTest(e0.3[1], 0)"
    # A *plain* actor (l0) is one whose attempts all reach at most step 1 and whose first row, if
    # it has an attempt at all, starts one: its figures need no search (furthest step and first
    # row: h0, 1 or 0), so its attempt arrays are left empty and the lambdas below, which cost
    # per array element, skip it. On the benchmark's 1 M actors, 41 % are plain.
    columns = [
        "a0",
        "e0",
        # The steps the actor's rows match: an unordered plain actor's breakdown step reads it.
        *(["o0"] if by_step and unordered else []),
        f"{single} AND (NOT ({starts}) OR {first_starts}) AS l0",
        f"toUInt8({starts}) AS h0",
        "arraySlice(e0, 1, if(l0, 0, length(e0))) AS r0",
        # tupleElement, not arrayMap: no lambda over every row of every actor.
        "r0.1 AS ts0",
        "r0.3 AS m0",
    ]
    if all_events:
        columns += ["b0", "e0.2 AS i0"]
    elif shape.attribution:
        columns.append("e0.4 AS v0")
    if unordered:
        levels, positions = _unordered_levels(count, shape.window)
        start, times = "P0", "T0"
    else:
        levels, positions = _ordered_levels(
            count, shape.window, shape.order == "strict", shape.shared
        )
        start, times = "P1", "T1"
        levels.append(_exclusion_level(shape.exclusions))
    sql = f"SELECT {', '.join(columns)} FROM ({per_actor})"  # noqa: S608 (aliases only)
    for level in levels:
        sql = f"SELECT *, {', '.join(level)} FROM ({sql})"  # noqa: S608 (aliases only)
    # The deciding attempt: the first (in the actors' row order) reaching the furthest step.
    sql = f"SELECT *, if(l0, h0, arrayMax(S0)) AS f1 FROM ({sql})"  # noqa: S608 (aliases only)
    sql = f"SELECT *, indexOf(S0, f1) AS j0 FROM ({sql})"  # noqa: S608 (aliases only)
    # A plain actor's deciding attempt starts at its first row (h0: position 1, or 0 for none).
    first_row = f"if(l0, h0, {start}[j0])"
    final = ["a0", "f1", f"[{', '.join(positions.deltas)}] AS d1"]
    first = f"toString(i0[{first_row}])" if all_events else first_row
    final.append(f"tuple(-toInt64(f1), if(l0, e0.1[h0], {times}[j0]), {first}) AS key1")
    if broken_down:
        filled = ", ".join(f"{name}[j0]" for name in positions.filled)
        if all_events:
            final.append("b0 AS bv")
        elif shape.attribution == "first_touch":
            final.append(f"v0[{first_row}] AS bv")
        elif shape.attribution == "last_touch":
            final.append(f"v0[if(l0, h0, arrayMax([{filled}]))] AS bv")
        else:
            # A plain actor's first row fills step 1 (ordered), or its rows' one step (unordered).
            bit = shape.breakdown_step - 1
            plain = f"if(bitTest(o0, {bit}), h0, 0)" if unordered else ("h0" if bit == 0 else "0")
            own = f"if(l0, {plain}, {positions.filled[bit]}[j0])"
            final.append(f"if({own} = 0, NULL, v0[{own}]) AS bv")
    return f"SELECT {', '.join(final)} FROM ({sql})"  # noqa: S608 (aliases only)


@dataclass(frozen=True)
class _Positions:
    """The per-attempt arrays a funnel's levels leave: the rows filling each step, the deltas."""

    filled: tuple[str, ...]
    """Per step, the array of each attempt's row filling it (0: not filled)."""
    deltas: tuple[str, ...]
    """Per step after the first, the deciding attempt's time difference (SQL over j0)."""


def _ordered_levels(
    count: int, window: str, strict: bool, shared: frozenset[tuple[int, int]]
) -> tuple[list[list[str]], _Positions]:
    """The levels computing P1..Pn (and T1..Tn, their rows' times) of an ordered funnel.

    Attempt ``j``'s row filling step ``k`` is ``Pk[j]`` (0: not filled); R0 its reach. Each
    level's one ``arrayMap`` yields (row, time) pairs, Xk, taken apart by ``tupleElement`` on the
    next level: no lambda of its own for the times. Every lambda costs per array element, so
    there are as few as the definition allows.
    """
    levels = [
        [
            "arrayFilter((i, m) -> bitTest(m, 0), arrayEnumerate(m0), m0) AS P1",
            "arrayFilter((t, m) -> bitTest(m, 0), ts0, m0) AS T1",
        ]
    ]
    for k in range(2, count + 1):
        level = [] if k == 2 else [f"X{k - 1}.1 AS P{k - 1}", f"X{k - 1}.2 AS T{k - 1}"]
        # Only a row that may also meet an earlier step's condition can be that step's row.
        earlier = [j for j in range(1, k) if (j, k) in shared]
        names = [f"p{k - 1}", "t1", "tp", *(f"p{j}" for j in earlier if j != k - 1)]
        arrays = [f"P{k - 1}", "T1", f"T{k - 1}", *(f"P{j}" for j in earlier if j != k - 1)]
        condition = f"bitTest(m, {k - 1}) AND t >= tp AND t <= t1 + {window}"
        condition += "".join(f" AND i != p{j}" for j in earlier)
        if strict:
            # Nothing strictly between: the same instant as the previous step, or the next one.
            level.append(
                f"arrayMap((p, tp) -> if(p = 0, 0, arrayFirstIndex(t -> t > tp, ts0)), "
                f"P{k - 1}, T{k - 1}) AS N{k}"
            )
            level.append(f"arrayMap(n -> if(n = 0, toInt64(0), ts0[n]), N{k}) AS U{k}")
            names += ["n", "u"]
            arrays += [f"N{k}", f"U{k}"]
            condition += " AND (t = tp OR (n != 0 AND t = u))"
        if earlier:
            found = f"arrayFirstIndex((t, m, i) -> {condition}, ts0, m0, arrayEnumerate(m0))"
        else:
            found = f"arrayFirstIndex((t, m) -> {condition}, ts0, m0)"
        row = f"if(p{k - 1} = 0, 0, {found})"
        # ts0[0] is 0: an unfilled step's time.
        level.append(
            f"arrayMap(({', '.join(names)}) -> ({row}, ts0[{row}]), {', '.join(arrays)}) AS X{k}"
        )
        levels.append(level)
    last = [f"X{count}.1 AS P{count}", f"X{count}.2 AS T{count}"]
    reached = " + ".join(["1", *(f"(p{k} != 0)" for k in range(2, count + 1))])
    steps = ", ".join(f"p{k}" for k in range(2, count + 1))
    filled = ", ".join(f"P{k}" for k in range(2, count + 1))
    levels.append(last)
    levels.append([f"arrayMap(({steps}) -> toUInt8({reached}), {filled}) AS R0"])
    deltas = tuple(
        f"if(P{k}[j0] = 0, toInt64(0), T{k}[j0] - T{k - 1}[j0])" for k in range(2, count + 1)
    )
    return levels, _Positions(tuple(f"P{k}" for k in range(1, count + 1)), deltas)


def _shared_steps(origins: Sequence[StepOrigin]) -> frozenset[tuple[int, int]]:
    """The step pairs one row may fill both of: those on one source.

    The SQL follows the request's shape, never the event names that could tell two steps apart.
    """
    return frozenset(
        (j, k)
        for k in range(2, len(origins) + 1)
        for j in range(1, k)
        if origins[j - 1].key == origins[k - 1].key
    )


def _exclusion_level(spans: Sequence[tuple[int, int]]) -> list[str]:
    """S0, each attempt's reach: 0 for an attempt an exclusion voids, else R0."""
    if not spans:
        return ["R0 AS S0"]
    excluded = [
        f"arrayMap((p, tf, tl) -> p != 0 AND arrayExists((m, t) -> "
        f"bitTest(m, {_EXCLUSION_BIT + index}) AND t > tf AND t < tl, m0, ts0), "
        f"P{last}, T{first}, T{last})"
        for index, (first, last) in enumerate(spans)
    ]
    names = [f"x{index}" for index in range(len(spans))]
    return [
        f"arrayMap((r, {', '.join(names)}) -> if({' OR '.join(names)}, 0, r), R0, "
        f"{', '.join(excluded)}) AS S0"
    ]


def _unordered_levels(count: int, window: str) -> tuple[list[list[str]], _Positions]:
    """The levels computing Q1..Qn, the rows filling each step of attempts started at P0.

    Also S0, each attempt's reach, and TF, its rows' times in order.
    """
    every = (1 << count) - 1
    levels = [
        [
            f"arrayFilter((i, m) -> bitAnd(m, {every}) != 0, arrayEnumerate(m0), m0) AS P0",
            f"arrayFilter((t, m) -> bitAnd(m, {every}) != 0, ts0, m0) AS T0",
            f"arrayFilter(m -> bitAnd(m, {every}) != 0, m0) AS M0",
            f"arrayMap(t -> t + {window}, T0) AS W0",
        ]
    ]
    for j in range(1, count + 1):
        names = ["p0", "ms", "tp", "w", *(f"q{m}" for m in range(1, j))]
        arrays = ["P0", "M0", "T0", "W0", *(f"Q{m}" for m in range(1, j))]
        unused = " AND ".join(["i != p0", *(f"i != q{m}" for m in range(1, j))])
        # The starting event fills the first step it matches; the others, in step order, the
        # first unused event of the window matching them.
        lower = (1 << (j - 1)) - 1
        levels.append(
            [
                f"arrayMap(({', '.join(names)}) -> if(bitTest(ms, {j - 1}) AND "
                f"bitAnd(ms, {lower}) = 0, p0, arrayFirstIndex((t, m, i) -> bitTest(m, {j - 1}) "
                f"AND t >= tp AND t <= w AND {unused}, ts0, m0, arrayEnumerate(m0))), "
                f"{', '.join(arrays)}) AS Q{j}"
            ]
        )
    steps = ", ".join(f"q{j}" for j in range(1, count + 1))
    filled = ", ".join(f"Q{j}" for j in range(1, count + 1))
    reached = " + ".join(f"(q{j} != 0)" for j in range(1, count + 1))
    levels.append(
        [
            f"arrayMap(({steps}) -> arraySort(arrayMap(q -> ts0[q], "
            f"arrayFilter(q -> q != 0, [{steps}]))), {filled}) AS TF",
            f"arrayMap(({steps}) -> toUInt8({reached}), {filled}) AS S0",
        ]
    )
    deltas = tuple(
        f"if(length(TF[j0]) >= {k}, TF[j0][{k}] - TF[j0][{k - 1}], toInt64(0))"
        for k in range(2, count + 1)
    )
    return levels, _Positions(tuple(f"Q{j}" for j in range(1, count + 1)), deltas)


def _whole_micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * _MICROS + delta.microseconds


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
