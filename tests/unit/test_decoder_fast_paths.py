"""The decoder's fast paths (isostring timestamps, plain ``source.sequence``) agree with the truth.

The fast paths (added for ingestion speed, see bench/README.md) read the shapes Debezium's
isostring mode writes by slicing and ``fromisoformat``; anything else goes to the general parser.
The oracle here is ``datetime`` arithmetic, independent of both.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_worker import decoder
from cdc_worker.events import DecodeError
from service.catalog import FieldSpec, FieldType

_TIMESTAMP = FieldSpec("at", FieldType.TIMESTAMP)
_DATE = FieldSpec("on", FieldType.DATE)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@given(
    moment=st.datetimes(
        min_value=dt.datetime(1900, 1, 1),
        max_value=dt.datetime(2299, 12, 31, 23, 59, 59, 999_999),
    ),
    digits=st.integers(min_value=0, max_value=9),
    extra=st.text(alphabet="0123456789", min_size=9, max_size=9),
)
def test_isostring_timestamps_decode_to_the_instant(
    moment: dt.datetime, digits: int, extra: str
) -> None:
    fraction = (f"{moment.microsecond:06d}" + extra)[:digits]
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + "Z"
    micros = int(fraction.ljust(6, "0")[:6]) if digits else 0
    expected = moment.replace(microsecond=micros, tzinfo=dt.UTC)
    assert decoder._to_timestamp(_TIMESTAMP, text, None, "at") == expected


@given(day=st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2299, 12, 31)))
def test_isostring_dates_decode_to_the_day(day: dt.date) -> None:
    assert decoder._to_date(_DATE, f"{day.isoformat()}Z", None, "on") == day
    assert decoder._to_date(_DATE, day.isoformat(), None, "on") == day
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    assert decoder._to_timestamp(_TIMESTAMP, f"{day.isoformat()}Z", None, "at") == midnight


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-30T00:00:00Z",  # no such day
        "2026-13-01T00:00:00Z",
        "2026-02-01T24:00:00Z",  # fromisoformat would take hour 24 in newer Pythons
        "2026-02-01T08:60:00Z",
        "2026-02-01T08:30:00.Z",
        "2026-02-01T08:30:00.1234567890Z",  # ten fraction digits
        "2026-W05-1T08:30:00Z",  # an ISO week date
        "2026-02-01T08:30:0٣Z",  # a non-ASCII digit
    ],
)
def test_malformed_timestamps_are_rejected(text: str) -> None:
    with pytest.raises(DecodeError, match="at:"):
        decoder._to_timestamp(_TIMESTAMP, text, None, "at")


def test_other_iso_forms_still_take_the_general_parser() -> None:
    at = dt.datetime(2026, 2, 1, 6, 30, tzinfo=dt.UTC)
    for text in ("2026-02-01T08:30:00+02:00", "2026-02-01t06:30:00z", "2026-02-01 06:30:00"):
        assert decoder._to_timestamp(_TIMESTAMP, text, None, "at") == at
    assert decoder._to_timestamp(_TIMESTAMP, "infinity", None, "at") == decoder.MAX_TIMESTAMP
    assert decoder._to_timestamp(_TIMESTAMP, "1800-01-01T00:00:00Z", None, "at") == (
        decoder.MIN_TIMESTAMP
    )


@given(
    first=st.none() | st.integers(min_value=0, max_value=2**64),
    second=st.none() | st.integers(min_value=0, max_value=2**64),
)
def test_sequence_fast_path_matches_the_json_reading(first: int | None, second: int | None) -> None:
    text = json.dumps(
        [None if first is None else str(first), None if second is None else str(second)]
    )
    compact = text.replace(", ", ",")
    results: list[int | str | None] = []
    for candidate in (text, compact):
        try:
            results.append(decoder._last_commit_lsn({"sequence": candidate}))
        except DecodeError as error:
            results.append(str(error))
    assert results[0] == results[1]
    if first is not None and first < decoder.MAX_LSN:
        assert results[1] == first
