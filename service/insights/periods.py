"""What the actor insights (retention, lifecycle) share: periods, their neighbours and SQL keys.

A period is a bucket of ``service.insights.buckets`` (hour, day, week or month, cut as trends
cut them: local hours at the instant's own offset, local midnights, Monday or Sunday weeks). The
actor insights look one period past the buckets of a range (the period before the first, for
lifecycle; the end of the last, for retention's reads), and place each event in its period in
the engine by looking its bucket key up in a bound array of the range's keys, as trends do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from service.catalog import EventFields, Model
from service.errors import validation_error
from service.insights.buckets import WEEK_STARTS, Bucket, range_buckets
from service.query.compiler import ParameterBuilder
from service.query.time_buckets import timestamp_bucket_key

#: The periods the actor insights offer.
PERIODS = ("hour", "day", "week", "month")
#: Longer than any one period of its kind in any zone (a day of 25 hours, a month of 31 days
#: with a change of offset), so that a span of two of them always holds the next period's start.
_LONGEST = {
    "hour": dt.timedelta(hours=1),
    "day": dt.timedelta(hours=26),
    "week": dt.timedelta(days=7, hours=2),
    "month": dt.timedelta(days=31, hours=2),
}
_MICROSECOND = dt.timedelta(microseconds=1)


def period_holding(moment: dt.datetime, period: str, time_zone: str, week_start: str) -> Bucket:
    """The period that holds instant ``moment``."""
    return range_buckets(moment, moment + _MICROSECOND, period, time_zone, week_start)[0]


def period_before(bucket: Bucket, period: str, time_zone: str, week_start: str) -> Bucket:
    """The period just before ``bucket``."""
    return period_holding(_utc(bucket) - _MICROSECOND, period, time_zone, week_start)


def period_end(bucket: Bucket, period: str, time_zone: str, week_start: str) -> dt.datetime:
    """The first instant after ``bucket`` (the next period's start, aware UTC)."""
    start = _utc(bucket)
    if period == "hour":
        # An hour ends an hour after its key, even where the next one is keyed earlier (an
        # offset falling back by 30 minutes: see buckets.range_buckets).
        return start + dt.timedelta(hours=1)
    following = range_buckets(start, start + 2 * _LONGEST[period], period, time_zone, week_start)
    return following[1].start.astimezone(dt.UTC)


def periods_back(
    last: Bucket, count: int, period: str, time_zone: str, week_start: str
) -> list[Bucket]:
    """``count`` consecutive periods ending with ``last``, in order."""
    end = period_end(last, period, time_zone, week_start)
    start = _utc(last) - (count + 1) * _LONGEST[period]
    return range_buckets(start, end, period, time_zone, week_start)[-count:]


def _utc(bucket: Bucket) -> dt.datetime:
    """The bucket's start in UTC.

    Arithmetic on a local time is on the wall clock, and loses which of a repeated hour it is.
    """
    return bucket.start.astimezone(dt.UTC)


def period_key_sql(column: str, period: str, week_start: str, zone: str) -> str:
    """SQL of the bucket key (as ``buckets.Bucket.key``) of timestamp ``column``.

    ``zone``: the bound time zone placeholder.
    """
    if period == "week" and week_start == "sunday":
        return f"toStartOfWeek({column}, 0, {zone})"
    return timestamp_bucket_key(column, period, zone)


def period_keys(builder: ParameterBuilder, period: str, buckets: Sequence[Bucket]) -> str:
    """The bound array of ``buckets``' keys, in the type ``period_index_sql`` compares."""
    if period == "hour":
        texts = ", ".join(
            f"'{bucket.start.astimezone(dt.UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}'"
            for bucket in buckets
        )
        return builder.bind("Array(DateTime64(6, 'UTC'))", f"[{texts}]")
    texts = ", ".join(f"'{bucket.key.isoformat()}'" for bucket in buckets)
    return builder.bind("Array(Date32)", f"[{texts}]")


def period_index_sql(keys: str, key: str, period: str) -> str:
    """SQL of the 1-based position of bucket key ``key`` in the bound ``keys`` (0: not there)."""
    if period == "hour":
        return f"indexOf({keys}, toDateTime64({key}, 6, 'UTC'))"
    return f"indexOf({keys}, toDate32({key}))"


def parse_period(text: str) -> str:
    """The request's ``period`` (``day`` when empty).

    Raises AnalyticsError: a validation error on ``period`` for anything else.
    """
    period = text or "day"
    if period not in PERIODS:
        raise validation_error(
            "period",
            f"period: {period[:40]!r} is not one of {', '.join(PERIODS)}",
            "INVALID_PERIOD",
        )
    return period


def parse_week_start(text: str) -> str:
    """The request's ``weekStart`` (``monday`` when empty).

    Raises AnalyticsError: a validation error on ``weekStart`` for anything else.
    """
    week_start = text or "monday"
    if week_start not in WEEK_STARTS:
        raise validation_error(
            "weekStart", f"weekStart: {week_start[:20]!r} is not monday or sunday", "INVALID_VALUE"
        )
    return week_start


def event_roles(model: Model, insight: str) -> EventFields:
    """The event roles of ``model``, which an actor insight needs.

    Raises AnalyticsError: a validation error on ``model`` when it is not an event model.
    """
    if model.events is None:
        raise validation_error(
            "model",
            f"model: {model.qualified_name} is not an event model; {insight} counts actors' events",
            "NOT_AN_EVENT_MODEL",
        )
    return model.events


def bound_instant(builder: ParameterBuilder, moment: dt.datetime) -> str:
    """``moment`` as a bound ``DateTime64(6, 'UTC')`` placeholder."""
    text = moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return builder.bind("DateTime64(6, 'UTC')", text)
