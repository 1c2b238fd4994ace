"""compile_funnel: (request, catalog, tenant, now) -> one SQL query; assemble_funnel: the answer.

Definitions (ordered funnels on one event model; the contract the README copies):

* **rows**: the model's current events of the tenant (FINAL, not deleted) whose actor is not null,
  whose timestamp is in ``[dateFrom, dateTo)`` (bounds as in trends: absolute or relative, read in
  ``timeZone``; a date-only ``dateTo`` includes that day) and which pass the request's
  ``filters``. Events outside the range take no part, not even as later steps.
* **steps**: 2 to 20. An event *matches* step ``k`` when it has the step's event name (if one is
  given) and passes the step's filters (if any; at least one of the two is required). An event
  may match several steps.
* **order of an actor's events**: by timestamp, then by the event id's text (lower-case UUID),
  which is unique among the rows of one instant (an event's identity is its id and UTC day).
* **attempts**: every event matching step 1 starts an attempt at its time ``t1``. Step ``k > 1``
  of an attempt is filled by the first event, in the order above, that (a) matches step ``k``,
  (b) has a timestamp at or after the event that filled step ``k - 1``, (c) has a timestamp at
  most ``t1 + window`` (inclusive bound; ``window`` defaults to 14 days, at most 365 days), and
  (d) filled none of the attempt's earlier steps. So one event fills one step (a repeated
  identical step needs another, possibly simultaneous, event), and events at one instant
  advance in step order whatever their ids: an event at the same instant as the previous
  step's event may fill the next step if it is a different event. Each step is taken greedily:
  an attempt never revisits an earlier step's choice. The attempt reaches the last step filled.
* **actors**: an actor counts at its *furthest* step, the furthest any of its attempts reaches,
  and so at every step up to it. ``actors`` of step ``k``: the actors whose furthest step is at
  least ``k``.
* **conversion**: ``actors[k] / actors[1]`` from the first step and ``actors[k] / actors[k-1]``
  from the previous one (1.0 for step 1), 0.0 when the denominator is 0. ``dropOff`` of step
  ``k``: ``actors[k] - actors[k+1]``, the actors who reached step ``k`` and no further (0 at the
  last step).
* **time to convert** of step ``k > 1``, in seconds: over the actors counted at step ``k``, the
  time from the event filling step ``k - 1`` to the event filling step ``k`` in the actor's
  *deciding attempt*: the earliest (by its step-1 event, in the order above) of the actor's
  attempts that reach its furthest step. ``median`` is the middle value (the mean of the two
  middle values for an even count), ``average`` the mean; both null when no actor reached step
  ``k``; step 1 has none.

The engine does it in one query: per actor, the sorted array of (time in microseconds, event id
text, bitmask of matching steps); one row per attempt (``arrayJoin`` over the positions of step-1
events); the position of each next step with ``arrayFirstIndex`` under the rules above; per actor
the furthest step and the deciding attempt's time differences (``argMax`` on (furthest step,
-position)); then counts, sums and exact medians per step. Only functions of ClickHouse 23.8.

No text from the request reaches the SQL: identifiers come from the catalog, values (dates, the
window, event names, filter values) are bound parameters; the SQL depends only on the request's
shape (the number of steps, which steps have an event name, the filters' structure).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from service.catalog import Catalog, FieldSpec, Model
from service.errors import AnalyticsError, ErrorKind, validation_error
from service.insights.date_range import date_range, inclusive_date_to
from service.insights.funnel_request import FunnelRequest, FunnelStep
from service.query.compiler import (
    CompiledQuery,
    OutputColumn,
    ParameterBuilder,
    filter_conditions,
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
class FunnelAnswer:
    """Every step's figures, in step order."""

    steps: tuple[FunnelStepResult, ...]


def compile_funnel(
    request: FunnelRequest, catalog: Catalog, tenant: str, now: dt.datetime
) -> FunnelPlan:
    """Validate ``request`` against the catalog and compile it for ``tenant`` at time ``now``.

    Raises AnalyticsError: NOT_FOUND for an unknown model, VALIDATION naming the request field.
    """
    if not tenant:
        raise AnalyticsError(ErrorKind.UNAUTHORIZED, "no tenant in the token", "NO_TENANT")
    model = resolve_model(catalog, request.model)
    roles = model.events
    if roles is None:
        raise validation_error(
            "model",
            f"model: {model.qualified_name} is not an event model; a funnel's steps are events",
            "NOT_AN_EVENT_MODEL",
        )
    time_zone = parse_time_zone(request.time_zone)
    steps = request.steps
    if not MIN_STEPS <= len(steps) <= MAX_STEPS:
        raise validation_error(
            "steps",
            f"steps: a funnel has {MIN_STEPS} to {MAX_STEPS} steps, got {len(steps)}",
            "INVALID_STEP_COUNT",
        )
    labels = tuple(_label(index, step) for index, step in enumerate(steps))
    window = parse_window(request.window)
    start, end = date_range(request.date_from, inclusive_date_to(request.date_to), now, time_zone)

    # Every filter is checked (and its fields resolved) as the request names it, in order.
    request_filters = parse_filters(request.filters)
    step_filters = [
        parse_filters(step.filters, f"steps[{index}].filters") for index, step in enumerate(steps)
    ]
    scratch = ParameterBuilder()
    for parsed in (request_filters, *step_filters):
        filter_conditions(parsed, model, scratch, time_zone)
    used = _used_fields(model, [request_filters, *step_filters])
    step_names = {name for parsed in step_filters for name in mentioned_fields(parsed)}

    builder = ParameterBuilder()
    tenant_placeholder = builder.bind("String", encode_text_parameter(tenant))
    where = where_conditions(
        request.filters, model, builder, tenant_placeholder, time_zone, guard_fields=step_names
    )
    timestamp = column_sql(model.fields[roles.timestamp], model, builder.bind)
    actor_spec = model.fields[roles.actor]
    actor = column_sql(actor_spec, model, builder.bind)
    # After the guards, before the filters: the range is what the sorting key can skip on.
    where[2:2] = [
        f"{timestamp} >= {_instant(builder, start)}",
        f"{timestamp} < {_instant(builder, end)}",
    ]
    if actor_spec.nullable:
        where.append(f"{actor} IS NOT NULL")
    conditions = []
    for index, step in enumerate(steps):
        parts = filter_conditions(step_filters[index], model, builder, time_zone)
        if step.event:
            name = builder.bind("String", encode_text_parameter(step.event))
            parts.insert(0, f"t.`{roles.event}` = {name}")
        conditions.append(" AND ".join(parts))
    where.append("(" + " OR ".join(f"({c})" for c in conditions) + ")")
    mask = " + ".join(f"if({c}, {1 << i}, 0)" for i, c in enumerate(conditions))
    event_id = column_sql(model.fields[roles.event_id], model, builder.bind)
    micros = f"toUnixTimestamp64Micro({timestamp})"
    if model.fields[roles.timestamp].nullable:
        micros = f"assumeNotNull({micros})"
    table = from_clause(catalog, model, used, tenant_placeholder, guard_fields=step_names)
    # Identifiers from the catalog, values bound: nothing of the request's text is in the SQL.
    per_actor = (
        f"SELECT {actor} AS a0, arraySort(groupArray(tuple({micros}, toString({event_id}), "  # noqa: S608
        f"toUInt32({mask})))) AS e0 FROM {table} WHERE {' AND '.join(where)} GROUP BY a0"
    )
    window_micros = builder.bind("Int64", str(_whole_micros(window)))
    sql = _attempts_sql(per_actor, len(steps), window_micros)
    columns = [OutputColumn(f"actors_{k}", f"c{k - 1}", "int") for k in range(1, len(steps) + 1)]
    columns += [
        OutputColumn(f"{name}_{k}", f"{prefix}{k - 1}", kind)
        for k in range(2, len(steps) + 1)
        for name, prefix, kind in (("sum_micros", "s", "int"), ("median_micros", "q", "float"))
    ]
    compiled = CompiledQuery(
        sql,
        builder.parameters,
        tuple(columns),
        model,
        limit=0,
        tenant=tenant,
        joined=related_models(model, used),
    )
    return FunnelPlan(model, labels, window, start, end, time_zone, compiled)


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
    """The answer from the one row the plan's query returns."""
    if table.num_rows != 1:
        raise ValueError(f"a funnel query returns one row, got {table.num_rows}")
    row = {
        column: values[0]
        for column, values in zip(table.column_names, table.to_pydict().values(), strict=True)
    }
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
                conversion_from_first=_ratio(reached, actors[0])
                if index
                else _ratio(reached, reached),
                conversion_from_previous=_ratio(reached, actors[index - 1] if index else reached),
                drop_off=reached - actors[index + 1] if index + 1 < count else 0,
                median_seconds=median,
                average_seconds=average,
            )
        )
    return FunnelAnswer(tuple(steps))


def _label(index: int, step: FunnelStep) -> str:
    source = f"steps[{index}]"
    if not step.event and not step.filters:
        raise validation_error(
            source,
            f"{source}: a step needs an event name, filters, or both",
            "EMPTY_STEP",
        )
    if len(step.label) > MAX_LABEL_CHARS:
        raise validation_error(
            f"{source}.label", f"{source}.label: at most {MAX_LABEL_CHARS} characters"
        )
    return step.label or step.event or f"step {index + 1}"


def _used_fields(model: Model, filter_lists: Sequence[Sequence[Filter]]) -> list[FieldSpec]:
    """Every field the filters read (related ones make the joins), each once."""
    found: dict[str, FieldSpec] = {}
    for parsed in filter_lists:
        for item_name in sorted(mentioned_fields(list(parsed))):
            found.setdefault(item_name, resolve_field(model, item_name, "filters"))
    return list(found.values())


def _attempts_sql(per_actor: str, count: int, window: str) -> str:
    """The query over ``per_actor`` (a0: actor, e0: its sorted (micros, id, mask) tuples)."""
    positions = ["arrayJoin(arrayFilter(i -> bitTest(m0[i], 0), arrayEnumerate(m0))) AS p1"]
    for k in range(2, count + 1):
        unused = " AND ".join(f"i != p{j}" for j in range(1, k))
        found = (
            f"arrayFirstIndex(i -> bitTest(m0[i], {k - 1}) AND ts0[i] >= ts0[p{k - 1}] "
            f"AND ts0[i] <= w0 AND {unused}, arrayEnumerate(m0))"
        )
        positions.append(found + f" AS p{k}" if k == 2 else f"if(p{k - 1} = 0, 0, {found}) AS p{k}")
    furthest = " + ".join(["1", *(f"(p{k} != 0)" for k in range(2, count + 1))])
    deltas = ", ".join(
        f"if(p{k} = 0, toInt64(0), ts0[p{k}] - ts0[p{k - 1}])" for k in range(2, count + 1)
    )
    # Aliases, step numbers and placeholders only.
    attempts = (
        "SELECT a0, arrayMap(x -> x.1, e0) AS ts0, arrayMap(x -> x.3, e0) AS m0, "  # noqa: S608
        f"{', '.join(positions)}, ts0[p1] + {window} AS w0, toUInt8({furthest}) AS s0, "
        f"[{deltas}] AS d0 FROM ({per_actor})"
    )
    actors = (
        "SELECT a0, max(s0) AS f1, argMax(d0, tuple(s0, -toInt64(p1))) AS d1 "  # noqa: S608
        f"FROM ({attempts}) GROUP BY a0"
    )
    select = [f"countIf(f1 >= {k}) AS c{k - 1}" for k in range(1, count + 1)]
    for k in range(2, count + 1):
        select.append(f"sumIf(d1[{k - 1}], f1 >= {k}) AS s{k - 1}")
        select.append(
            f"quantileExactInclusiveIf(0.5)(toFloat64(d1[{k - 1}]), f1 >= {k}) AS q{k - 1}"
        )
    return f"SELECT {', '.join(select)} FROM ({actors})"  # noqa: S608 (aliases only)


def _whole_micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * _MICROS + delta.microseconds


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _instant(builder: ParameterBuilder, moment: dt.datetime) -> str:
    text = moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return builder.bind("DateTime64(6, 'UTC')", text)
