"""Date ranges of trend requests: absolute and relative bounds, and compare offsets.

A bound is an ISO date (midnight in the request's time zone), an ISO date-time (with an offset or
``Z``, or naive and then wall time in the request's time zone), ``now``, or a relative date that
looks back from ``now``: ``-<n><unit>`` with the units ``h`` hours, ``d`` days, ``w`` weeks,
``m`` months, ``q`` quarters and ``y`` years. As in PostHog, a relative bound starts a local day
(``-7d`` is midnight seven days before today) or, for hours, a local hour (``-12h`` is the start of
the hour twelve hours ago).

Day, week, month, quarter and year steps are calendar steps on local wall time, clamped to the
month's end (a month back from 31 March is 28 or 29 February); hour steps are elapsed hours. This
is how PostgreSQL adds an interval to a ``timestamptz``. A wall time that a change of offset
skipped or repeated is resolved as PostgreSQL resolves it (``service.query.values.local_time``):
in a gap it takes the offset before the change, in an overlap the later occurrence.

Bounds come back as aware UTC datetimes; a range is half-open, ``[start, end)``.
"""

from __future__ import annotations

import calendar
import datetime as dt
import enum
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from service.errors import AnalyticsError, validation_error
from service.query.values import local_time, parse_timestamp

DATE_FROM_FIELD = "dateFrom"
DATE_TO_FIELD = "dateTo"
INVALID_DATE = "INVALID_DATE"
INVALID_OFFSET = "INVALID_OFFSET"
INVALID_DATE_RANGE = "INVALID_DATE_RANGE"
MAX_RANGE_YEARS = 10

_RELATIVE = re.compile(r"([+-]?)([0-9]{1,6})([hdwmqy])")
# The instants parse_timestamp accepts, so that relative bounds fit the same parameter types.
_EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
_LATEST = dt.datetime(2300, 1, 1, tzinfo=dt.UTC)
_OUT_OF_RANGE = "outside the supported range 1900-2299"
_ACCEPTED_BOUNDS = (
    "expected an ISO date (2026-01-31), an ISO date-time (2026-01-31T10:00:00Z), now, "
    "or a relative date such as -7d (units h, d, w, m, q, y)"
)


class CalendarUnit(enum.Enum):
    """A unit of relative dates and offsets, valued by its letter."""

    HOUR = "h"
    DAY = "d"
    WEEK = "w"
    MONTH = "m"
    QUARTER = "q"
    YEAR = "y"


_MONTHS_PER_UNIT = {CalendarUnit.MONTH: 1, CalendarUnit.QUARTER: 3, CalendarUnit.YEAR: 12}
# How many of each unit make up MAX_RANGE_YEARS (days and hours with the leap days): a compare
# offset never reaches further back than the longest range.
_MAX_OFFSET_AMOUNT = {
    CalendarUnit.HOUR: 87_660,
    CalendarUnit.DAY: 3_653,
    CalendarUnit.WEEK: 522,
    CalendarUnit.MONTH: 120,
    CalendarUnit.QUARTER: 40,
    CalendarUnit.YEAR: MAX_RANGE_YEARS,
}


@dataclass(frozen=True)
class CalendarOffset:
    """A step in time such as ``-1y``: ``amount`` units (negative: back in time)."""

    amount: int
    unit: CalendarUnit

    def shift(self, local: dt.datetime) -> dt.datetime:
        """``local`` moved by the offset, in ``local``'s own time zone.

        Hours are elapsed time; the other units move the wall time by calendar steps, clamped to
        the month's end, and the result is resolved in the zone as PostgreSQL does.

        Raises:
            TypeError: ``local`` is not in a ``ZoneInfo`` time zone.
            ValueError, OverflowError: the result is outside the years 1 to 9999.
        """
        zone = local.tzinfo
        if not isinstance(zone, ZoneInfo):
            raise TypeError("shift needs a datetime in a ZoneInfo time zone")
        if self.unit is CalendarUnit.HOUR:
            return (local.astimezone(dt.UTC) + dt.timedelta(hours=self.amount)).astimezone(zone)
        wall = _shift_wall_time(local.replace(tzinfo=None), self.amount, self.unit)
        # Through UTC and back, so that a wall time in a gap comes back as the existing wall
        # time of the same instant: datetimes in one zone compare by their wall times.
        return local_time(wall, zone).astimezone(dt.UTC).astimezone(zone)


def parse_date_bound(text: str, field: str, now: dt.datetime, time_zone: str) -> dt.datetime:
    """Resolve one bound of a date range to an aware UTC datetime.

    ``now`` must be aware; ``time_zone`` is an IANA name validated by the caller.

    Raises:
        AnalyticsError: a validation error on ``field`` (reason ``INVALID_DATE``) when the text is
            none of the forms the module's docstring lists, is a relative date that looks
            forward, or lies outside the years 1900 to 2299.
        ValueError: ``now`` is naive.
    """
    now_utc = _aware_utc(now)
    if text == "now":
        return now_utc
    relative = _RELATIVE.fullmatch(text)
    if relative is None:
        try:
            return parse_timestamp(text, time_zone)
        # OverflowError: an offset that moves year 1 or 9999 out of datetime's range.
        except (ValueError, OverflowError) as exc:
            raise _invalid_date(field, text, str(exc)) from None
    sign, digits, unit_letter = relative.groups()
    if sign != "-":
        raise validation_error(
            field,
            f"{field}: {text!r} looks forward; relative dates look back, "
            f"as in -{digits}{unit_letter}",
            INVALID_DATE,
        )
    offset = CalendarOffset(-int(digits), CalendarUnit(unit_letter))
    try:
        moment = _relative_bound(offset, now_utc, ZoneInfo(time_zone))
    except (ValueError, OverflowError):
        raise _invalid_date(field, text, _OUT_OF_RANGE) from None
    if not _EARLIEST <= moment < _LATEST:
        raise _invalid_date(field, text, _OUT_OF_RANGE)
    return moment


def parse_offset(text: str, field: str) -> CalendarOffset:
    """Read a compare offset such as ``-1y``, ``-1m``, ``-4w``, ``-7d`` or ``-24h``.

    Raises:
        AnalyticsError: a validation error on ``field`` (reason ``INVALID_OFFSET``) when the text
            is not ``-<n><unit>``, looks forward (compare looks back), is zero, or reaches back
            further than the longest date range (10 years).
    """
    relative = _RELATIVE.fullmatch(text)
    if relative is None:
        raise _invalid_offset(
            field,
            f"{_preview(text)} is not an offset; expected a step back such as "
            "-1y, -1q, -1m, -4w, -7d or -24h",
        )
    sign, digits, unit_letter = relative.groups()
    if sign != "-":
        raise _invalid_offset(
            field, f"{text!r} looks forward; compare looks back, as in -{digits}{unit_letter}"
        )
    amount = int(digits)
    unit = CalendarUnit(unit_letter)
    if amount == 0:
        raise _invalid_offset(field, f"{text!r} is zero; compare needs a step back")
    if amount > _MAX_OFFSET_AMOUNT[unit]:
        raise _invalid_offset(field, f"{text!r} reaches back more than {MAX_RANGE_YEARS} years")
    return CalendarOffset(-amount, unit)


def date_range(
    date_from: str,
    date_to: str,
    now: dt.datetime,
    time_zone: str,
    default_from: str = "-7d",
) -> tuple[dt.datetime, dt.datetime]:
    """The half-open UTC range ``[start, end)`` of a request's ``dateFrom`` and ``dateTo``.

    An empty ``date_to`` means ``now``; an empty ``date_from`` means ``default_from``. A
    ``dateTo`` given as a date ends the range at that day's first instant, so that day is not
    in the range.

    Raises:
        AnalyticsError: a validation error on ``dateFrom`` or ``dateTo`` (``INVALID_DATE``) for a
            bound that does not parse, and on ``dateFrom`` (``INVALID_DATE_RANGE``) when the
            start is not before the end or the range spans more than 10 calendar years.
        ValueError: ``now`` is naive.
    """
    end = parse_date_bound(date_to, DATE_TO_FIELD, now, time_zone) if date_to else _aware_utc(now)
    start = parse_date_bound(date_from or default_from, DATE_FROM_FIELD, now, time_zone)
    if start >= end:
        raise validation_error(
            DATE_FROM_FIELD,
            f"{DATE_FROM_FIELD}: the range would start at {start.isoformat()} and end at "
            f"{end.isoformat()}; the start must come before the end",
            INVALID_DATE_RANGE,
        )
    longest = CalendarOffset(-MAX_RANGE_YEARS, CalendarUnit.YEAR)
    if start < longest.shift(end.astimezone(ZoneInfo(time_zone))):
        raise validation_error(
            DATE_FROM_FIELD,
            f"{DATE_FROM_FIELD}: the range from {start.isoformat()} to {end.isoformat()} is "
            f"longer than {MAX_RANGE_YEARS} years",
            INVALID_DATE_RANGE,
        )
    return start, end


def inclusive_date_to(text: str) -> str:
    """A date-only ``dateTo`` includes that day: ``2026-01-31`` ends where February starts.

    Moved to the next day before the range is read and checked (not after), so that
    ``dateFrom`` and ``dateTo`` naming the same date are that one day rather than an empty range;
    any spelling ``date_range`` reads as a date alone (``20260131`` too) counts as date-only.
    """
    try:
        day = dt.date.fromisoformat(text)
        return (day + dt.timedelta(days=1)).isoformat()
    except (ValueError, OverflowError):  # not a date alone, or 9999-12-31: date_range decides
        return text


def _relative_bound(offset: CalendarOffset, now_utc: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    now_local = now_utc.astimezone(zone)
    if offset.unit is CalendarUnit.HOUR:
        # replace() keeps the fold, so an hour inside a repeated span starts in its own
        # occurrence; an hour start that a gap skipped resolves to the end of the gap.
        hour = offset.shift(now_local).replace(minute=0, second=0, microsecond=0)
        return hour.astimezone(dt.UTC)
    midnight = dt.datetime.combine(now_local.date(), dt.time())
    day = _shift_wall_time(midnight, offset.amount, offset.unit)
    return local_time(day, zone).astimezone(dt.UTC)


def _shift_wall_time(wall: dt.datetime, amount: int, unit: CalendarUnit) -> dt.datetime:
    if unit is CalendarUnit.DAY:
        return wall + dt.timedelta(days=amount)
    if unit is CalendarUnit.WEEK:
        return wall + dt.timedelta(weeks=amount)
    year, month_index = divmod(
        wall.year * 12 + wall.month - 1 + amount * _MONTHS_PER_UNIT[unit], 12
    )
    month = month_index + 1
    day = min(wall.day, calendar.monthrange(year, month)[1])
    return wall.replace(year=year, month=month, day=day)


def _aware_utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return now.astimezone(dt.UTC)


def _preview(text: str) -> str:
    return repr(text[:60] + ("..." if len(text) > 60 else ""))


def _invalid_date(field: str, text: str, detail: str) -> AnalyticsError:
    return validation_error(
        field,
        f"{field}: {_preview(text)} is not a date ({detail}); {_ACCEPTED_BOUNDS}",
        INVALID_DATE,
    )


def _invalid_offset(field: str, reason: str) -> AnalyticsError:
    return validation_error(field, f"{field}: {reason}", INVALID_OFFSET)
