"""Date ranges of trends (service/insights/date_range.py): bounds, offsets and ranges."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import AnalyticsError, ErrorKind
from service.insights.date_range import (
    CalendarOffset,
    CalendarUnit,
    date_range,
    parse_date_bound,
    parse_offset,
)

UTC = dt.UTC
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
LORD_HOWE = "Australia/Lord_Howe"  # +10:30 in winter, +11 in summer: half-hour changes
# Zones whose offset changes never fall on midnight, so every local day starts at 00:00.
ZONES = ["UTC", BERLIN, NEW_YORK, LORD_HOWE, "Asia/Kolkata", "Pacific/Chatham"]
NOWS = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(UTC)
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def bound(text: str, now: dt.datetime, time_zone: str = "UTC") -> dt.datetime:
    return parse_date_bound(text, "dateFrom", now, time_zone)


def rejected_bound(text: str, field: str = "dateFrom") -> AnalyticsError:
    with pytest.raises(AnalyticsError) as caught:
        parse_date_bound(text, field, utc(2026, 3, 30, 10), BERLIN)
    return caught.value


def assert_validation(error: AnalyticsError, field: str, reason: str) -> None:
    assert error.kind is ErrorKind.VALIDATION
    assert error.reason == reason
    assert [violation.field for violation in error.violations] == [field]
    assert error.message.startswith(f"{field}: ")


def months_back(day: dt.date, months: int) -> dt.date:
    """Step back month by month from the first, then take the day or the month's last day."""
    first = day.replace(day=1)
    for _ in range(months):
        first = (first - dt.timedelta(days=1)).replace(day=1)
    for candidate in range(day.day, 27, -1):
        try:
            return first.replace(day=candidate)
        except ValueError:
            continue
    return first.replace(day=day.day)


# Absolute bounds


@pytest.mark.parametrize(
    ("text", "time_zone", "expected"),
    [
        ("2026-01-31", BERLIN, utc(2026, 1, 30, 23)),
        ("2026-01-31", NEW_YORK, utc(2026, 1, 31, 5)),
        ("2026-07-31", BERLIN, utc(2026, 7, 30, 22)),
        ("2026-01-31T10:00:00Z", BERLIN, utc(2026, 1, 31, 10)),
        ("2026-01-31T10:00:00+02:00", NEW_YORK, utc(2026, 1, 31, 8)),
        ("2026-01-31T10:00:00", BERLIN, utc(2026, 1, 31, 9)),
        ("2026-01-31T10:00:00", NEW_YORK, utc(2026, 1, 31, 15)),
        ("2026-01-31T10:00:00", "UTC", utc(2026, 1, 31, 10)),
        # A naive time in the spring-forward gap takes the offset before the change (CET)...
        ("2026-03-29T02:30:00", BERLIN, utc(2026, 3, 29, 1, 30)),
        # ... and one that occurs twice is the later occurrence (CET again), as in PostgreSQL.
        ("2026-10-25T02:30:00", BERLIN, utc(2026, 10, 25, 1, 30)),
        ("2026-10-04T02:15:00", LORD_HOWE, utc(2026, 10, 3, 15, 45)),
    ],
)
def test_iso_bounds(text: str, time_zone: str, expected: dt.datetime) -> None:
    moment = bound(text, utc(2026, 3, 30, 10), time_zone)
    assert moment == expected
    assert moment.tzinfo is UTC


def test_now_is_now_in_utc() -> None:
    now = dt.datetime(2026, 3, 30, 12, tzinfo=ZoneInfo(BERLIN))
    moment = bound("now", now, BERLIN)
    assert moment == now
    assert moment.tzinfo is UTC


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        bound("-7d", dt.datetime(2026, 3, 30, 12))


# Relative bounds


@pytest.mark.parametrize(
    ("text", "now", "time_zone", "expected"),
    [
        # Berlin springs forward on 29 March 2026: that day has 23 hours.
        ("-0d", utc(2026, 3, 30, 10), BERLIN, utc(2026, 3, 29, 22)),
        ("-1d", utc(2026, 3, 30, 10), BERLIN, utc(2026, 3, 28, 23)),
        ("-2d", utc(2026, 3, 30, 10), BERLIN, utc(2026, 3, 27, 23)),
        ("-1w", utc(2026, 4, 2, 10), BERLIN, utc(2026, 3, 25, 23)),
        # The local day, not the UTC day: 23:30 UTC is already tomorrow in Berlin.
        ("-0d", utc(2026, 1, 31, 23, 30), BERLIN, utc(2026, 1, 31, 23)),
        ("-0d", utc(2026, 1, 31, 23, 30), NEW_YORK, utc(2026, 1, 31, 5)),
        # New York falls back on 1 November 2026: a week earlier is still daylight time.
        ("-1w", utc(2026, 11, 3, 15), NEW_YORK, utc(2026, 10, 27, 4)),
        ("-2d", utc(2026, 11, 2, 15), NEW_YORK, utc(2026, 10, 31, 4)),
        # Lord Howe's summer time ends on 5 April 2026 (02:00 +11 becomes 01:30 +10:30), so
        # that day has 24.5 hours.
        ("-0d", utc(2026, 4, 6, 12), LORD_HOWE, utc(2026, 4, 5, 13, 30)),
        ("-1d", utc(2026, 4, 6, 12), LORD_HOWE, utc(2026, 4, 4, 13)),
        # Hours: elapsed time back, then the start of that local hour.
        ("-12h", utc(2026, 3, 29, 6, 30), BERLIN, utc(2026, 3, 28, 18)),
        ("-1h", utc(2026, 3, 29, 1, 10), BERLIN, utc(2026, 3, 29, 0)),
        ("-0h", utc(2026, 3, 29, 1, 10), BERLIN, utc(2026, 3, 29, 1)),
        ("-3h", utc(2026, 1, 31, 10, 59), "Asia/Kolkata", utc(2026, 1, 31, 7, 30)),
        # Berlin's 02:00-03:00 occurs twice on 25 October: each occurrence starts its own hour.
        ("-0h", utc(2026, 10, 25, 0, 30), BERLIN, utc(2026, 10, 25, 0)),
        ("-0h", utc(2026, 10, 25, 1, 30), BERLIN, utc(2026, 10, 25, 1)),
        # Lord Howe springs forward on 4 October 2026 from 02:00 +10:30 to 02:30 +11: the local
        # hour 02 starts at the change itself.
        ("-1h", utc(2026, 10, 3, 16, 40), LORD_HOWE, utc(2026, 10, 3, 15, 30)),
        # 01:45 +11 and 01:45 +10:30 on 5 April both belong to the hour starting 01:00 +11.
        ("-0h", utc(2026, 4, 4, 14, 45), LORD_HOWE, utc(2026, 4, 4, 14)),
        ("-0h", utc(2026, 4, 4, 15, 15), LORD_HOWE, utc(2026, 4, 4, 14)),
        # Months, quarters and years clamp to the month's end.
        ("-1m", utc(2026, 3, 31, 12), "UTC", utc(2026, 2, 28)),
        ("-1m", utc(2024, 3, 31, 12), "UTC", utc(2024, 2, 29)),
        ("-6m", utc(2026, 8, 31, 12), "UTC", utc(2026, 2, 28)),
        ("-1q", utc(2026, 5, 31, 12), "UTC", utc(2026, 2, 28)),
        ("-1y", utc(2024, 2, 29, 12), "UTC", utc(2023, 2, 28)),
        ("-4y", utc(2024, 2, 29, 12), "UTC", utc(2020, 2, 29)),
        ("-13m", utc(2026, 1, 15, 12), "UTC", utc(2024, 12, 15)),
        # 31 March 23:30 UTC is 1 April in Berlin, so a month back is 1 March.
        ("-1m", utc(2026, 3, 31, 23, 30), BERLIN, utc(2026, 2, 28, 23)),
        ("-1m", utc(2026, 4, 30, 12), BERLIN, utc(2026, 3, 29, 22)),
    ],
)
def test_relative_bounds(
    text: str, now: dt.datetime, time_zone: str, expected: dt.datetime
) -> None:
    moment = bound(text, now, time_zone)
    assert moment == expected
    assert moment.tzinfo is UTC


@given(now=NOWS, days=st.integers(0, 4000), time_zone=st.sampled_from(ZONES))
def test_relative_days_start_the_local_day(now: dt.datetime, days: int, time_zone: str) -> None:
    zone = ZoneInfo(time_zone)
    local = bound(f"-{days}d", now, time_zone).astimezone(zone)
    assert local.date() == now.astimezone(zone).date() - dt.timedelta(days=days)
    assert local.time() == dt.time()


@given(
    now=NOWS,
    amount=st.integers(0, 40),
    unit=st.sampled_from([("m", 1), ("q", 3), ("y", 12)]),
    time_zone=st.sampled_from(ZONES),
)
def test_relative_months_start_the_clamped_local_day(
    now: dt.datetime, amount: int, unit: tuple[str, int], time_zone: str
) -> None:
    letter, months = unit
    zone = ZoneInfo(time_zone)
    local = bound(f"-{amount}{letter}", now, time_zone).astimezone(zone)
    assert local.date() == months_back(now.astimezone(zone).date(), amount * months)
    assert local.time() == dt.time()


@given(
    now=NOWS,
    hours=st.integers(0, 10_000),
    time_zone=st.sampled_from(["UTC", BERLIN, NEW_YORK, "Asia/Kolkata"]),
)
def test_relative_hours_start_the_local_hour(now: dt.datetime, hours: int, time_zone: str) -> None:
    moment = bound(f"-{hours}h", now, time_zone)
    back = now - dt.timedelta(hours=hours)
    assert dt.timedelta(0) <= back - moment < dt.timedelta(hours=1)
    local = moment.astimezone(ZoneInfo(time_zone))
    assert (local.minute, local.second, local.microsecond) == (0, 0, 0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "NOW",
        " now",
        "-7D",
        "-7x",
        "-7",
        "7",
        "-1.5d",
        "- 7d",
        "-7d ",
        "-1234567d",
        "2026-13-01",
        "2026-02-30",
        "2026-01-31T25:00:00",
        "1899-12-31",
        "2300-01-02",
        "-200y",
        "-999999y",
        "-999999d",
        "-2000m",
        "2026-01-31T10:00:00Z" + "0" * 60,
        "\x00",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-05:00",
        "0001-01-01",
    ],
)
def test_bad_bounds_are_rejected(text: str) -> None:
    assert_validation(rejected_bound(text), "dateFrom", "INVALID_DATE")


@pytest.mark.parametrize("text", ["+7d", "7d", "+1h"])
def test_relative_bounds_look_back(text: str) -> None:
    error = rejected_bound(text, "dateTo")
    assert_validation(error, "dateTo", "INVALID_DATE")
    assert "looks forward" in error.message


def parsed_or_rejected(text: str, time_zone: str) -> dt.datetime | AnalyticsError:
    try:
        return parse_date_bound(text, "dateTo", utc(2026, 3, 30, 10), time_zone)
    except AnalyticsError as error:
        return error


@given(
    text=st.one_of(
        st.text(max_size=40),
        st.text(alphabet="-+0123456789hdwmqyT:Z. ", max_size=30),
        st.datetimes(timezones=st.timezones()).map(dt.datetime.isoformat),
    ),
    time_zone=st.sampled_from(ZONES),
)
def test_any_text_is_a_bound_or_rejected_as_invalid_date(text: str, time_zone: str) -> None:
    outcome = parsed_or_rejected(text, time_zone)
    if isinstance(outcome, AnalyticsError):
        assert_validation(outcome, "dateTo", "INVALID_DATE")
    else:
        assert outcome.tzinfo is UTC
        assert dt.datetime(1900, 1, 1, tzinfo=UTC) <= outcome < dt.datetime(2300, 1, 1, tzinfo=UTC)


def test_bad_bound_message_lists_the_accepted_forms() -> None:
    message = rejected_bound("yesterday").message
    assert message.startswith("dateFrom: 'yesterday' is not a date")
    assert "2026-01-31" in message
    assert "-7d" in message


# Compare offsets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-1y", CalendarOffset(-1, CalendarUnit.YEAR)),
        ("-1q", CalendarOffset(-1, CalendarUnit.QUARTER)),
        ("-1m", CalendarOffset(-1, CalendarUnit.MONTH)),
        ("-4w", CalendarOffset(-4, CalendarUnit.WEEK)),
        ("-7d", CalendarOffset(-7, CalendarUnit.DAY)),
        ("-24h", CalendarOffset(-24, CalendarUnit.HOUR)),
        ("-10y", CalendarOffset(-10, CalendarUnit.YEAR)),
        ("-3653d", CalendarOffset(-3653, CalendarUnit.DAY)),
    ],
)
def test_parse_offset(text: str, expected: CalendarOffset) -> None:
    assert parse_offset(text, "compare.offset") == expected


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("+1d", "looks forward"),
        ("1d", "looks forward"),
        ("-0d", "zero"),
        ("-11y", "more than 10 years"),
        ("-41q", "more than 10 years"),
        ("-121m", "more than 10 years"),
        ("-523w", "more than 10 years"),
        ("-3654d", "more than 10 years"),
        ("-87661h", "more than 10 years"),
        ("", "not an offset"),
        ("-1", "not an offset"),
        ("y", "not an offset"),
        ("-1.5m", "not an offset"),
        ("-1 y", "not an offset"),
        ("-1Y", "not an offset"),
        ("previous_period", "not an offset"),
    ],
)
def test_bad_offsets_are_rejected(text: str, detail: str) -> None:
    with pytest.raises(AnalyticsError) as caught:
        parse_offset(text, "compare.offset")
    assert_validation(caught.value, "compare.offset", "INVALID_OFFSET")
    assert detail in caught.value.message


def berlin(
    year: int, month: int, day: int, hour: int, minute: int = 0, fold: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(BERLIN), fold=fold)


@pytest.mark.parametrize(
    ("offset", "local", "expected"),
    [
        # Calendar units keep the wall time, across the spring-forward night.
        ("-1d", berlin(2026, 3, 29, 12), berlin(2026, 3, 28, 12)),
        ("-1w", berlin(2026, 4, 1, 9, 30), berlin(2026, 3, 25, 9, 30)),
        ("-1m", berlin(2026, 3, 31, 12), berlin(2026, 2, 28, 12)),
        ("-1q", berlin(2024, 5, 31, 8), berlin(2024, 2, 29, 8)),
        ("-1y", berlin(2024, 2, 29, 23, 59), berlin(2023, 2, 28, 23, 59)),
        # Hours are elapsed: 24 hours before noon after the change is 11:00 the day before.
        ("-24h", berlin(2026, 3, 29, 12), berlin(2026, 3, 28, 11)),
        ("-1h", berlin(2026, 10, 25, 2, 30, fold=1), berlin(2026, 10, 25, 2, 30, fold=0)),
        # A wall time that lands in the gap takes the offset before the change.
        ("-1d", berlin(2026, 3, 30, 2, 30), berlin(2026, 3, 29, 3, 30)),
    ],
)
def test_offset_shift(offset: str, local: dt.datetime, expected: dt.datetime) -> None:
    shifted = parse_offset(offset, "compare.offset").shift(local)
    assert shifted == expected
    assert shifted.utcoffset() == expected.utcoffset()
    assert shifted.tzinfo == local.tzinfo


def test_offset_shift_needs_a_zoneinfo_datetime() -> None:
    offset = parse_offset("-1d", "compare.offset")
    with pytest.raises(TypeError, match="ZoneInfo"):
        offset.shift(utc(2026, 3, 30))
    with pytest.raises(TypeError, match="ZoneInfo"):
        offset.shift(dt.datetime(2026, 3, 30))


@given(
    local=st.datetimes(
        min_value=dt.datetime(1990, 1, 1),
        max_value=dt.datetime(2100, 1, 1),
        timezones=st.sampled_from(ZONES).map(ZoneInfo),
    ),
    amount=st.integers(1, 120),
)
def test_month_offsets_move_the_wall_date(local: dt.datetime, amount: int) -> None:
    shifted = CalendarOffset(-amount, CalendarUnit.MONTH).shift(local)
    assert shifted.date() == months_back(local.date(), amount)


# Ranges


def test_range_defaults_to_the_last_seven_local_days_until_now() -> None:
    now = utc(2026, 3, 30, 10)
    assert date_range("", "", now, BERLIN) == (utc(2026, 3, 22, 23), now)
    assert date_range("", "", now, BERLIN, default_from="-1m") == (utc(2026, 2, 27, 23), now)


def test_range_of_dates_is_half_open_at_local_midnights() -> None:
    start, end = date_range("2026-01-01", "2026-02-01", utc(2026, 3, 30, 10), NEW_YORK)
    assert (start, end) == (utc(2026, 1, 1, 5), utc(2026, 2, 1, 5))


def test_range_mixes_relative_and_absolute_bounds() -> None:
    now = utc(2026, 3, 30, 10)
    assert date_range("2026-03-01T00:00:00Z", "-1d", now, "UTC") == (
        utc(2026, 3, 1),
        utc(2026, 3, 29),
    )
    assert date_range("-2w", "now", now, "UTC") == (utc(2026, 3, 16), now)


@pytest.mark.parametrize(
    ("date_from", "date_to"),
    [
        ("2026-02-01", "2026-01-01"),
        ("2026-01-01", "2026-01-01"),
        ("2026-01-01T00:00:00+01:00", "2026-01-01"),
        ("-0d", "-1d"),
        ("now", ""),
        ("2027-01-01", ""),
    ],
)
def test_range_must_start_before_it_ends(date_from: str, date_to: str) -> None:
    with pytest.raises(AnalyticsError) as caught:
        date_range(date_from, date_to, utc(2026, 3, 30, 10), BERLIN)
    assert_validation(caught.value, "dateFrom", "INVALID_DATE_RANGE")
    assert "before the end" in caught.value.message


def test_range_spans_at_most_ten_calendar_years() -> None:
    now = utc(2026, 3, 30, 10)
    assert date_range("2016-02-29", "2026-02-28", now, BERLIN)[0] == utc(2016, 2, 28, 23)
    assert date_range("2014-03-29", "2024-03-29", now, BERLIN)[1] == utc(2024, 3, 28, 23)
    with pytest.raises(AnalyticsError) as caught:
        date_range("2014-03-28", "2024-03-29", now, BERLIN)
    assert_validation(caught.value, "dateFrom", "INVALID_DATE_RANGE")
    assert "longer than 10 years" in caught.value.message
    with pytest.raises(AnalyticsError):
        date_range("-11y", "", now, BERLIN)


def test_range_names_the_bound_that_does_not_parse() -> None:
    now = utc(2026, 3, 30, 10)
    with pytest.raises(AnalyticsError) as caught:
        date_range("-7d", "tomorrow", now, BERLIN)
    assert_validation(caught.value, "dateTo", "INVALID_DATE")
    with pytest.raises(AnalyticsError) as caught:
        date_range("last week", "", now, BERLIN)
    assert_validation(caught.value, "dateFrom", "INVALID_DATE")
