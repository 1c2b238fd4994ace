"""An independent evaluator of lifecycle, from the definitions in service/insights/lifecycle.py.

``reference_lifecycle(request, rows, tenant, now, model)`` works in plain Python over the rows as
written (every version; the current ones picked as FINAL picks them) and shares nothing with the
compiler: each actor's active periods are a set of period keys, its first period the key of its
earliest row, and each period's statuses are read off those sets. Reused, because each has tests
of its own: the range and its buckets, the bucket of an instant and its label, the filter
evaluation and FINAL's choice of rows (``tests.trend_reference``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo

from service.catalog import Model
from service.insights.lifecycle_request import LifecycleRequest
from tests.retention_reference import MICROSECOND, period_start
from tests.trend_reference import (
    Row,
    _bucket_key,
    _bucket_keys,
    _label,
    _predicate,
    _range,
    current_rows,
)


def reference_lifecycle(
    request: LifecycleRequest, rows: Iterable[Row], tenant: str, now: dt.datetime, model: Model
) -> tuple[list[str], dict[str, list[int]]]:
    """(bucket labels, values per status) the service must answer."""
    roles = model.events
    assert roles is not None
    zone_name = request.time_zone or "UTC"
    zone = ZoneInfo(zone_name)
    period = request.period or "day"
    sunday = request.week_start == "sunday"

    def key_of(moment: dt.datetime) -> Any:
        return _bucket_key(moment, period, zone, sunday)

    start, end = _range(request, now, zone_name, zone)  # type: ignore[arg-type]
    keys = _bucket_keys(start, end, period, zone, sunday, "period")
    before = key_of(period_start(keys[0], zone) - MICROSECOND)
    passes = _predicate(request.filters, model, zone)
    times: dict[Any, list[dt.datetime]] = {}
    for row in current_rows(rows, model):
        if (
            row[model.tenant_column] == tenant
            and row[roles.actor] is not None
            and (not request.event or row[roles.event] == request.event)
            and passes(row)
        ):
            times.setdefault(row[roles.actor], []).append(row[roles.timestamp])
    active = {actor: {key_of(t) for t in moments} for actor, moments in times.items()}
    first = {actor: key_of(min(moments)) for actor, moments in times.items()}

    lines: dict[str, list[int]] = {s: [] for s in ("new", "returning", "resurrecting", "dormant")}
    for index, key in enumerate(keys):
        previous = keys[index - 1] if index else before
        counts = dict.fromkeys(lines, 0)
        for actor, periods in active.items():
            if key in periods:
                if first[actor] == key:
                    counts["new"] += 1
                elif previous in periods:
                    counts["returning"] += 1
                else:
                    counts["resurrecting"] += 1
            elif previous in periods:
                counts["dormant"] -= 1
        for status, value in counts.items():
            lines[status].append(value)
    return [_label(key, zone, zone_name) for key in keys], lines
