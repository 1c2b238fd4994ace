"""The buckets of a date range, computed in Python exactly as the engine cuts them.

Every insight over time is zero-filled: each bucket of the range is in the answer whether or not
anything happened in it. The engine groups rows by the bucket keys of
``service.query.time_buckets`` (an instant for minutes and hours, a local date for days and
longer); this module lists the same keys for a range, so the runner can place each group and
fill the rest. Bucket starts follow the same contract: hours are local hours cut at the instant's
own offset, days and longer start at local midnight (PostgreSQL's reading of a skipped or
repeated midnight). Weeks start on Monday, or on Sunday on request.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from service.errors import validation_error
from service.query.values import local_time

TREND_INTERVALS = ("minute", "hour", "day", "week", "month", "quarter", "year")
WEEK_STARTS = ("monday", "sunday")
MAX_BUCKETS = 5000


@dataclass(frozen=True)
class Bucket:
    """One bucket: the engine's group key, and its first instant (aware, in the zone)."""

    key: dt.date | dt.datetime
    start: dt.datetime

    def label(self) -> str:
        """The bucket's start as ISO 8601 with its offset (``Z`` in UTC)."""
        if str(self.start.tzinfo) == "UTC":
            return self.start.strftime("%Y-%m-%dT%H:%M:%SZ")
        return self.start.isoformat(timespec="seconds")


def range_buckets(
    start: dt.datetime,
    end: dt.datetime,
    interval: str,
    time_zone: str,
    week_start: str = "monday",
    *,
    source: str = "interval",
) -> list[Bucket]:
    """Every bucket that holds an instant of ``[start, end)``, in order.

    The first bucket may start before ``start`` (a range from 10:00 in day buckets); rows before
    ``start`` never count, which is the compiler's filter, not the bucket's business.
    """
    zone = ZoneInfo(time_zone)
    if interval in ("minute", "hour"):
        buckets = _clock_buckets(start, end, interval, zone)
    else:
        buckets = _calendar_buckets(start, end, interval, zone, week_start)
    if len(buckets) > MAX_BUCKETS:
        raise validation_error(
            source,
            f"{source}: the range has {len(buckets)} {interval} buckets; at most {MAX_BUCKETS} "
            "(choose a longer interval or a shorter range)",
            "TOO_MANY_BUCKETS",
        )
    return buckets


def clock_bucket_key(moment: dt.datetime, interval: str, zone: ZoneInfo) -> dt.datetime:
    """The first instant of the local minute or hour holding ``moment`` (UTC, aware)."""
    local = moment.astimezone(zone)
    cut = dt.timedelta(seconds=local.second, microseconds=local.microsecond)
    if interval == "hour":
        cut += dt.timedelta(minutes=local.minute)
    return (moment - cut).astimezone(dt.UTC)


def calendar_bucket_key(day: dt.date, interval: str, week_start: str) -> dt.date:
    """The first local date of the day, week, month, quarter or year holding ``day``."""
    if interval == "day":
        return day
    if interval == "week":
        back = day.weekday() if week_start == "monday" else (day.weekday() + 1) % 7
        return day - dt.timedelta(days=back)
    if interval == "month":
        return day.replace(day=1)
    if interval == "quarter":
        return dt.date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
    return dt.date(day.year, 1, 1)


def local_midnight(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    """The first instant of local ``day`` (PostgreSQL's reading of a skipped or repeated one)."""
    return local_time(dt.datetime(day.year, day.month, day.day), zone)


def _clock_buckets(
    start: dt.datetime, end: dt.datetime, interval: str, zone: ZoneInfo
) -> list[Bucket]:
    step = dt.timedelta(hours=1) if interval == "hour" else dt.timedelta(minutes=1)
    buckets: list[Bucket] = []
    key = clock_bucket_key(start, interval, zone)
    begins = start
    while begins < end and len(buckets) <= MAX_BUCKETS:
        buckets.append(Bucket(key, key.astimezone(zone)))
        # The next bucket begins where this one ends, which is not always at its key: where an
        # offset falls back by 30 minutes (Lord Howe) the hour after 01:00-01:59 +11:00 is keyed
        # at 01:00 +10:30, half an hour before its first instant; a range ending in between does
        # not hold it.
        begins = key + step
        following = clock_bucket_key(key + step, interval, zone)
        # A half-hour change of offset (Lord Howe) makes a local hour 30 minutes long; the next
        # cut is then the one after it.
        key = following if following > key else clock_bucket_key(key + 2 * step, interval, zone)
    return buckets


def _calendar_buckets(
    start: dt.datetime, end: dt.datetime, interval: str, zone: ZoneInfo, week_start: str
) -> list[Bucket]:
    day = calendar_bucket_key(start.astimezone(zone).date(), interval, week_start)
    buckets: list[Bucket] = []
    while len(buckets) <= MAX_BUCKETS:
        midnight = local_midnight(day, zone)
        if midnight >= end:
            break
        buckets.append(Bucket(day, midnight))
        day = _next_calendar_key(day, interval)
    return buckets


def _next_calendar_key(day: dt.date, interval: str) -> dt.date:
    if interval == "day":
        return day + dt.timedelta(days=1)
    if interval == "week":
        return day + dt.timedelta(days=7)
    months = {"month": 1, "quarter": 3}.get(interval, 12)
    total = day.year * 12 + day.month - 1 + months
    return dt.date(total // 12, total % 12 + 1, 1)
