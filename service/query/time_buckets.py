"""Time buckets as SQL: PostgreSQL's ``date_trunc(unit, ts, zone)``, written for ClickHouse.

Shared by every compiler that buckets time. The contract, for a timestamp ``ts`` and an IANA
zone:

* ``minute`` and ``hour``: the local wall-clock time of ``ts`` cut to the minute or hour, at the
  UTC offset ``ts`` itself has. In a zone whose offset moved by 30 or 45 minutes (Lord Howe,
  Chatham, or any zone before 1980 with an odd offset) this is still a local hour; ClickHouse's
  ``toStartOfHour`` cuts the UTC-relative hour there instead. The local minute and second are
  subtracted, which keeps the instant's own offset, as PostgreSQL does.
* ``day`` and longer: the local date (Monday-based week, month, quarter, year) at local midnight.
  Where midnight does not exist (a DST gap), the offset before the gap applies, so the bucket
  starts at the first instant of that local day; where it exists twice, the later one (the
  offset after the change).
* Fractions of a second floor: before 1970 a timestamp's fraction counts backwards from the
  next second, and ClickHouse's ``toStartOf...`` functions round such times up
  (``1969-12-31 23:59:59.5`` to the next day); ``toStartOfSecond`` floors, and the local minute
  and second (or the local date) of such a time are right, so buckets are cut from those.

Queries group on ``timestamp_bucket_key`` (an instant, or a local date for calendar units, so
that the per-row work stays one date function) and turn each group's key into the bucket's first
instant with ``bucket_start``; ``render_local`` writes one as ISO 8601 in the zone with the
offset it has there (``+10:30``, ``-03:00``, ``+00:19:32`` for a local mean time).

Two differences are the engine's own and remain: its time zone tables keep the moment of a day's
change of offset in whole quarter hours, so where a zone changed at another minute (St. John's at
00:01, 1987-2010) the offset written for the minutes between is the other side's; and around
Antarctica/Casey's change from +11 to +08 on 2010-03-05 its local-time functions read a few
instants an hour or a day off (tests/integration/test_time_buckets.py names both).
"""

from __future__ import annotations

INTERVALS = ("minute", "hour", "day", "week", "month", "quarter", "year")
#: Units whose buckets are local calendar days: grouped by the local date (cheap), turned into
#: the instant of local midnight once per group.
CALENDAR_UNITS = ("day", "week", "month", "quarter", "year")

#: The zone as the SQL literal callers pass when a query is in UTC (no offset ever changes).
UTC = "'UTC'"
_WHOLE_SECOND = "toStartOfSecond({c})"
_CLOCK_BUCKETS = {
    "minute": f"subtractSeconds({_WHOLE_SECOND}, toSecond({{c}}, {{tz}}))",
    "hour": (
        f"subtractSeconds({_WHOLE_SECOND}, toMinute({{c}}, {{tz}}) * 60 + toSecond({{c}}, {{tz}}))"
    ),
}
_LOCAL_DATES = {
    "day": "toDate32({c}, {tz})",
    "week": "toMonday({c}, {tz})",
    "month": "toStartOfMonth({c}, {tz})",
    "quarter": "toStartOfQuarter({c}, {tz})",
    "year": "toStartOfYear({c}, {tz})",
}
_DATE_BUCKETS = {
    "day": "{c}",
    "week": "toMonday({c})",
    "month": "toStartOfMonth({c})",
    "quarter": "toStartOfQuarter({c})",
    "year": "toStartOfYear({c})",
}

#: Engine settings every bucketing query needs: without extended results, date functions clamp
#: or wrap outside 1970-2106 instead of bucketing the 1900-2299 range columns and filters accept.
BUCKET_SETTINGS = {"enable_extended_results_for_datetime_functions": "1"}


def timestamp_bucket_key(column: str, unit: str, zone: str) -> str:
    """SQL for the group key of timestamp ``column``'s bucket in ``zone`` (SQL expressions).

    The bucket's first instant for minutes and hours; the local date of its first day for days
    and longer, which ``bucket_start`` turns into an instant.
    """
    if unit in CALENDAR_UNITS:
        return _LOCAL_DATES[unit].format(c=column, tz=zone)
    return _CLOCK_BUCKETS[unit].format(c=column, tz=zone)


def bucket_start(key: str, unit: str, zone: str) -> str:
    """SQL for the first instant (``DateTime64(6)``) of the bucket whose group key is ``key``.

    For a local date: local midnight, with the offset after the day's change of offset where
    that reading of midnight exists (the later of a repeated midnight), else the offset before
    it (a midnight skipped by a gap), as PostgreSQL decides; ClickHouse's own conversion takes
    the earlier of a repeated midnight (Amman, Havana, and many zones before 1990). The offsets
    before and after are read a day away from midnight.
    """
    if unit not in CALENDAR_UNITS:
        return key
    if zone == UTC:
        return f"toDateTime64({key}, 6, {UTC})"
    naive = f"(toInt64(toDate32({key})) * 86400)"

    def offset_at(seconds: str) -> str:
        return f"timeZoneOffset(toDateTime64({seconds}, 0, {zone}))"

    after = offset_at(f"{naive} + 86400")
    before = offset_at(f"{naive} - 86400")
    later = f"{naive} - {after}"
    start = f"if({offset_at(later)} = {after}, {later}, {naive} - {before})"
    return f"toDateTime64({start}, 6, {zone})"


def date_bucket(column: str, unit: str) -> str:
    """SQL for the first day of ``unit`` (day or longer) holding date ``column``."""
    return _DATE_BUCKETS[unit].format(c=column)


def render_local(value: str, zone: str) -> str:
    """SQL writing timestamp ``value`` as local ISO 8601 in ``zone`` with its exact UTC offset.

    ``formatDateTime``'s ``%z`` drops the seconds of an offset such as Amsterdam's +00:19:32 of
    1937, which would name another instant, so the offset is written from ``timeZoneOffset``.
    """
    offset = f"timeZoneOffset(toTimeZone({value}, {zone}))"
    magnitude = f"abs({offset})"
    return (
        f"concat(formatDateTime({value}, '%Y-%m-%dT%H:%i:%S', {zone}), "
        f"if({offset} < 0, '-', '+'), "
        f"leftPad(toString(intDiv({magnitude}, 3600)), 2, '0'), ':', "
        f"leftPad(toString(intDiv({magnitude} % 3600, 60)), 2, '0'), "
        f"if({magnitude} % 60 = 0, '', concat(':', leftPad(toString({magnitude} % 60), 2, '0'))))"
    )
