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
  offset after the change). ClickHouse's conversion of a local date to a time in a zone does both.
* Fractions of a second floor: before 1970 a timestamp's fraction counts backwards from the
  next second, and ClickHouse's ``toStartOf...`` functions round such times up
  (``1969-12-31 23:59:59.5`` to the next day); ``toStartOfSecond`` floors, so everything is cut
  from it.

Buckets of timestamps are ``DateTime64(6)`` values; ``render_local`` writes one as ISO 8601 in the
zone with the offset it has there (``+10:30``, ``-03:00``, ``+00:19:32`` for a local mean time).
"""

from __future__ import annotations

INTERVALS = ("minute", "hour", "day", "week", "month", "quarter", "year")

_WHOLE_SECOND = "toStartOfSecond({c})"
_TIMESTAMP_BUCKETS = {
    "minute": f"subtractSeconds({_WHOLE_SECOND}, toSecond({{c}}, {{tz}}))",
    "hour": (
        f"subtractSeconds({_WHOLE_SECOND}, toMinute({{c}}, {{tz}}) * 60 + toSecond({{c}}, {{tz}}))"
    ),
    "day": "toDateTime64(toDate32({c}, {tz}), 6, {tz})",
    "week": "toDateTime64(toMonday({c}, {tz}), 6, {tz})",
    "month": "toDateTime64(toStartOfMonth({c}, {tz}), 6, {tz})",
    "quarter": "toDateTime64(toStartOfQuarter({c}, {tz}), 6, {tz})",
    "year": "toDateTime64(toStartOfYear({c}, {tz}), 6, {tz})",
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


def timestamp_bucket(column: str, unit: str, zone: str) -> str:
    """SQL for the start of ``unit`` holding timestamp ``column`` in ``zone`` (SQL expressions)."""
    return _TIMESTAMP_BUCKETS[unit].format(c=column, tz=zone)


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
