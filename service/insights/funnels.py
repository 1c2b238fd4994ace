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
one row per attempt (``arrayJoin`` over the starting positions); each step's position with
``arrayFirstIndex``, one subquery level per step; per actor the furthest step and the deciding
attempt's figures (``argMin`` on (-furthest, time, text)); then counts, sums and exact medians
per step (and per breakdown class, ranked with window functions). Only functions of ClickHouse
23.8.

No text from the request reaches the SQL: identifiers come from the catalog, values (dates, the
window, event names, filter values, the breakdown limit) are bound parameters; the SQL depends
only on the request's shape (steps and sources, which have event names, the filters' structure,
the order, exclusion spans, the breakdown's attribution and step).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from service.catalog import Catalog, FieldSpec, FieldType, Model
from service.errors import AnalyticsError, ErrorKind, validation_error
from service.insights.date_range import date_range, inclusive_date_to
from service.insights.funnel_request import FunnelActorsRequest, FunnelRequest, FunnelStep
from service.insights.funnel_sources import FunnelSource, StepOrigin, same_actors, step_origin
from service.insights.trend_results import OTHER
from service.query.compiler import (
    CompiledQuery,
    OutputColumn,
    ParameterBuilder,
    filter_conditions,
    group_expression,
    render_value,
    resolve_model,
    where_conditions,
)
from service.query.field_paths import column_sql, resolve_field
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
DEFAULT_BREAKDOWN_LIMIT = 25
MAX_BREAKDOWN_LIMIT = 1000
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


def compile_funnel(
    request: FunnelRequest, catalog: Catalog, tenant: str, now: dt.datetime
) -> FunnelPlan:
    """Validate ``request`` against the catalog and compile it for ``tenant`` at time ``now``.

    Raises AnalyticsError: NOT_FOUND for an unknown model, VALIDATION naming the request field.
    """
    prepared = _prepare(request, catalog, tenant, now)
    breakdown = prepared.checked.breakdown
    sql, columns = _outputs(
        _funnel_sql(prepared.per_actor, prepared.shape, breakdown),
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
    attempts = _attempts_sql(prepared.per_actor, prepared.shape)
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
        f"SELECT {rendered} AS c0, f1 AS c1 FROM (SELECT a0, max(s0) AS f1 "  # noqa: S608
        f"FROM ({attempts}) GROUP BY a0 HAVING {condition}) ORDER BY a0{page}"
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

    def compiled(self, sql: str, columns: tuple[OutputColumn, ...], tenant: str) -> CompiledQuery:
        """``sql`` over the per-actor arrays as a query a backend runs."""
        return CompiledQuery(
            sql,
            self.builder.parameters,
            columns,
            self.model,
            limit=0,
            tenant=tenant,
            joined=self.joined,
        )


def _prepare(request: FunnelRequest, catalog: Catalog, tenant: str, now: dt.datetime) -> _Prepared:
    if not tenant:
        raise AnalyticsError(ErrorKind.UNAUTHORIZED, "no tenant in the token", "NO_TENANT")
    model = resolve_model(catalog, request.model)
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
    bounds = (_instant(builder, start), _instant(builder, end))
    scans: list[str] = []
    joined: dict[str, Model] = {}
    for source in sources.values():
        scan = _Scan(
            request,
            source,
            source.origin.model.qualified_name == model.qualified_name,
            checked,
            [request_filters, step_filters, exclusion_filters],
        )
        sql, used = scan.sql(catalog, builder, tenant_placeholder, bounds, time_zone)
        scans.append(sql)
        if not scan.on_request_model:
            joined.setdefault(source.origin.model.qualified_name, source.origin.model)
        for related in related_models(source.origin.model, used):
            joined.setdefault(related.qualified_name, related)
    keys, group, element = "a0", "a0", "tuple(t0, i0, m0"
    if checked.breakdown is not None and checked.attribution == "all_events":
        keys, group = "a0, v0 AS b0", "a0, b0"
    elif checked.breakdown is not None:
        element += ", v0"
    rows = scans[0] if len(scans) == 1 else " UNION ALL ".join(f"({scan})" for scan in scans)
    per_actor = (
        f"SELECT {keys}, arraySort(groupArray({element}))) AS e0 "  # noqa: S608 (aliases only)
        f"FROM ({rows}) GROUP BY {group}"
    )
    shape = _Shape(
        steps=len(request.steps),
        order=checked.order,
        exclusions=checked.spans,
        attribution=checked.attribution,
        breakdown_step=checked.breakdown_step,
        window=builder.bind("Int64", str(_whole_micros(checked.window))),
        limit=builder.bind("UInt64", str(checked.limit)),
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
    )


@dataclass(frozen=True)
class _Scan:
    """The rows of one source: (a0 actor, t0 micros, i0 id text, m0 step mask[, v0 value])."""

    request: FunnelRequest
    source: FunnelSource
    on_request_model: bool
    checked: _Checked
    parsed: Sequence[Sequence[Any]]
    """The request's filters, each step's, each exclusion's (as _parsed_filters returns)."""

    def sql(
        self,
        catalog: Catalog,
        builder: ParameterBuilder,
        tenant: str,
        bounds: tuple[str, str],
        time_zone: str,
    ) -> tuple[str, list[FieldSpec]]:
        """The scan's SELECT, its tenant condition first, and the fields it reads."""
        origin = self.source.origin
        model = origin.model
        request_filters, step_filters, exclusion_filters = self.parsed
        own = [step_filters[i] for i in self.source.steps]
        own += [exclusion_filters[i] for i in self.source.exclusions]
        # The request's filters apply to the steps on its own model only.
        shared = request_filters if self.on_request_model else []
        used = _used_fields(model, [shared, *own])
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
        event_column = model.events.event if model.events is not None else ""
        conditions = [
            (
                1 << index,
                _match_condition(
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
                _match_condition(
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
        return select, used

    def _id(self, model: Model, builder: ParameterBuilder) -> str:
        """A row's text among the actor's events: an event's id; else source and key."""
        origin = self.source.origin
        roles = model.events
        if origin.is_event_source and roles is not None:
            return f"toString({column_sql(model.fields[roles.event_id], model, builder.bind)})"
        key = ", ".join(f"t.`{name}`" for name in model.primary_key)
        key = key if len(model.primary_key) == 1 else f"tuple({key})"
        prefix = builder.bind(
            "String", encode_text_parameter(f"{model.qualified_name}.{origin.date_field}/")
        )
        return f"concat({prefix}, toString({key}))"


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
        _breakdown_limit(request),
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
    spec = resolve_field(model, request.breakdown, "breakdown")
    if spec.type.is_temporal:
        raise validation_error(
            "breakdown",
            "breakdown: a timestamp or date field has too many values; break down by a category",
            "INVALID_BREAKDOWN",
        )
    return spec


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


def _breakdown_limit(request: FunnelRequest) -> int:
    limit = request.breakdown_limit or DEFAULT_BREAKDOWN_LIMIT
    if not 1 <= limit <= MAX_BREAKDOWN_LIMIT:
        raise validation_error(
            "breakdownLimit",
            f"breakdownLimit: between 1 and {MAX_BREAKDOWN_LIMIT}",
            "INVALID_VALUE",
        )
    return limit


def _match_condition(  # noqa: PLR0917 (one condition's every input)
    event: str,
    parsed: Sequence[Filter],
    event_column: str,
    model: Model,
    builder: ParameterBuilder,
    time_zone: str,
) -> str:
    """SQL true for the events a step (or an exclusion) matches."""
    parts = filter_conditions(parsed, model, builder, time_zone)
    if event:
        name = builder.bind("String", encode_text_parameter(event))
        parts.insert(0, f"t.`{event_column}` = {name}")
    return " AND ".join(parts)


def _used_fields(model: Model, filter_lists: Sequence[Sequence[Filter]]) -> list[FieldSpec]:
    """Every field the filters read (related ones make the joins), each once."""
    found: dict[str, FieldSpec] = {}
    for parsed in filter_lists:
        for item_name in sorted(mentioned_fields(list(parsed))):
            found.setdefault(item_name, resolve_field(model, item_name, "filters"))
    return list(found.values())


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
    attempts = _attempts_sql(per_actor, shape)
    # In a tuple, so that a null value is chosen like any other (aggregates skip nulls).
    value = "b0" if shape.attribution == "all_events" else "argMin(tuple(v1), key0).1"
    by_actor = (
        "SELECT a0, max(s0) AS f1, argMin(d0, key0) AS d1, min(key0) AS key1"  # noqa: S608
        + (f", {value} AS bv" if breakdown is not None else "")
        + f" FROM ({attempts}) GROUP BY a0"
        + (", b0" if shape.attribution == "all_events" else "")
        + " HAVING f1 > 0"
    )
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
        f"{tie}) AS r FROM (SELECT *, count() OVER (PARTITION BY bv) AS n FROM ({by_actor}))"
    )
    classed = (
        f"SELECT a0, if(r <= {shape.limit}, r, 0) AS k1, "  # noqa: S608
        "any(if(k1 = 0, NULL, bv)) AS k2, max(f1) AS f1, argMin(d1, key1) AS d1 "
        f"FROM ({ranked}) GROUP BY a0, k1"
    )
    return f"SELECT k1, any(k2) AS k2, {', '.join(select)} FROM ({classed}) GROUP BY k1"  # noqa: S608


def _attempts_sql(per_actor: str, shape: _Shape) -> str:
    """One row per attempt: its furthest step s0, time differences d0, deciding key key0.

    Each step's position is computed one subquery deeper than the one before it: an alias used
    in the same SELECT is expanded where it is used, so positions that read the previous ones
    would grow the query's tree exponentially with the steps.
    """
    count = shape.steps
    columns = [
        "a0",
        "arrayMap(x -> x.1, e0) AS ts0",
        "arrayMap(x -> x.2, e0) AS i0",
        "arrayMap(x -> x.3, e0) AS m0",
    ]
    if shape.attribution == "all_events":
        columns.append("b0")
    elif shape.attribution:
        columns.append("arrayMap(x -> x.4, e0) AS v0")
    unordered = shape.order == "unordered"
    if unordered:
        levels, reached, deltas = _unordered_positions(count)
    else:
        levels, reached, deltas = _ordered_positions(count, shape.order == "strict")
    start = "p0" if unordered else "p1"
    columns += [*levels[0], f"{start} AS st0", f"ts0[st0] + {shape.window} AS w0"]
    sql = f"SELECT {', '.join(columns)} FROM ({per_actor})"  # noqa: S608 (aliases only)
    for level in levels[1:]:
        sql = f"SELECT *, {', '.join(level)} FROM ({sql})"  # noqa: S608 (aliases only)
    excluded = [
        f"(p{last} != 0 AND arrayExists(i -> bitTest(m0[i], {_EXCLUSION_BIT + index}) AND "
        f"ts0[i] > ts0[p{first}] AND ts0[i] < ts0[p{last}], arrayEnumerate(m0)))"
        for index, (first, last) in enumerate(shape.exclusions)
    ]
    final = [
        (f"if({' OR '.join(excluded)}, 0, {reached})" if excluded else reached) + " AS s0",
        f"[{', '.join(deltas)}] AS d0",
        "tuple(-toInt64(s0), ts0[st0], i0[st0]) AS key0",
    ]
    prefix = "q" if unordered else "p"
    if shape.attribution == "first_touch":
        final.append("v0[st0] AS v1")
    elif shape.attribution == "last_touch":
        filled = ", ".join(f"{prefix}{k}" for k in range(1, count + 1))
        final.append(f"v0[arrayMax([{filled}])] AS v1")
    elif shape.attribution == "step":
        own = f"{prefix}{shape.breakdown_step}"
        final.append(f"if({own} = 0, NULL, v0[{own}]) AS v1")
    return f"SELECT *, {', '.join(final)} FROM ({sql})"  # noqa: S608 (aliases only)


def _ordered_positions(count: int, strict: bool) -> tuple[list[list[str]], str, list[str]]:
    """Positions p1..pn of an ordered (or strict) funnel's attempt, a level each.

    Also its reach and time differences.
    """
    levels = [["arrayJoin(arrayFilter(i -> bitTest(m0[i], 0), arrayEnumerate(m0))) AS p1"]]
    for k in range(2, count + 1):
        unused = " AND ".join(f"i != p{j}" for j in range(1, k))
        level = []
        adjacent = ""
        if strict:
            # Nothing strictly between: the same instant as the previous step, or the next one.
            level.append(
                f"if(p{k - 1} = 0, 0, arrayFirstIndex(x -> x > ts0[p{k - 1}], ts0)) AS n{k}"
            )
            adjacent = f" AND (ts0[i] = ts0[p{k - 1}] OR (n{k} != 0 AND ts0[i] = ts0[n{k}]))"
        found = (
            f"arrayFirstIndex(i -> bitTest(m0[i], {k - 1}) AND ts0[i] >= ts0[p{k - 1}] "
            f"AND ts0[i] <= w0 AND {unused}{adjacent}, arrayEnumerate(m0))"
        )
        level.append(f"if(p{k - 1} = 0, 0, {found}) AS p{k}")
        levels.append(level)
    reached = "toUInt8(" + " + ".join(["1", *(f"(p{k} != 0)" for k in range(2, count + 1))]) + ")"
    deltas = [f"if(p{k} = 0, toInt64(0), ts0[p{k}] - ts0[p{k - 1}])" for k in range(2, count + 1)]
    return levels, reached, deltas


def _unordered_positions(count: int) -> tuple[list[list[str]], str, list[str]]:
    """Positions q1..qn filling each step of an unordered attempt started at p0, a level each.

    Also its reach and time differences (between its events in time order).
    """
    every = (1 << count) - 1
    levels = [
        [f"arrayJoin(arrayFilter(i -> bitAnd(m0[i], {every}) != 0, arrayEnumerate(m0))) AS p0"]
    ]
    for j in range(1, count + 1):
        unused = " AND ".join(["i != p0", *(f"i != q{m}" for m in range(1, j))])
        # The starting event fills the first step it matches; the others, in step order, the
        # first unused event of the window matching them.
        lower = (1 << (j - 1)) - 1
        levels.append(
            [
                f"if(bitTest(m0[p0], {j - 1}) AND bitAnd(m0[p0], {lower}) = 0, p0, "
                f"arrayFirstIndex(i -> bitTest(m0[i], {j - 1}) AND ts0[i] >= ts0[p0] "
                f"AND ts0[i] <= w0 AND {unused}, arrayEnumerate(m0))) AS q{j}"
            ]
        )
    filled = ", ".join(f"q{j}" for j in range(1, count + 1))
    levels.append(
        [f"arraySort(arrayMap(q -> ts0[q], arrayFilter(q -> q != 0, [{filled}]))) AS tf0"]
    )
    reached = "toUInt8(" + " + ".join(f"(q{j} != 0)" for j in range(1, count + 1)) + ")"
    deltas = [
        f"if(length(tf0) >= {k}, tf0[{k}] - tf0[{k - 1}], toInt64(0))" for k in range(2, count + 1)
    ]
    return levels, reached, deltas


def _whole_micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * _MICROS + delta.microseconds


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _instant(builder: ParameterBuilder, moment: dt.datetime) -> str:
    text = moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return builder.bind("DateTime64(6, 'UTC')", text)
