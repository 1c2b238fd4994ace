"""Time buckets in every IANA zone equal PostgreSQL's ``date_trunc(unit, ts, zone)``.

The SQL of ``service/query/time_buckets.py`` runs on the embedded engine for instants around
every change of UTC offset between 1900 and 2037 in every zone (DST gaps and overlaps, 30- and
45-minute shifts, local mean times with offsets in seconds, days skipped by a date-line move),
and before 1970 with fractions of a second. The expected buckets are computed in Python from
PostgreSQL's rule (``pg_date_trunc`` in tests/reference.py): minutes and hours cut the local
time and keep the instant's own offset; days and longer start at local midnight, read with the
offset before a gap or the later offset of an overlap. The differential test against
PostgreSQL itself checks a few zones end to end (tests/integration/test_pg_parity.py); this one
covers them all.

ClickHouse carries its own copy of the time zone database and Python reads the system's: where
the two disagree about an offset that a bucket depends on (a rule changed between their releases)
the bucket is left out, and the test asserts that this happens only rarely. The engine's tables
also keep a change of offset at whole quarter hours, so St. John's changes at 00:01 (1987-2010)
show up here as such a disagreement. So are the few
instants where the engine's local-time functions are wrong (``ENGINE_LOCAL_TIME_BUGS``).
"""

from __future__ import annotations

import datetime as dt
import importlib
import zoneinfo
from zoneinfo import ZoneInfo

import pytest

from service.backends.embedded import EmbeddedBackend
from service.query.time_buckets import bucket_start, render_local, timestamp_bucket_key
from tests.reference import pg_date_trunc

pytestmark = pytest.mark.integration

UNITS = ("minute", "hour", "day", "week", "month", "quarter", "year")
LOW, HIGH = dt.datetime(1900, 1, 2, tzinfo=dt.UTC), dt.datetime(2037, 12, 30, tzinfo=dt.UTC)
#: Around each change of offset: before, at and after it, with and without fractions.
AROUND = (-86_399.5, -3_601.0, -1.5, 0.0, 0.25, 1_799.0, 3_600.0, 5_399.999_999, 86_399.0)
TRANSITIONS_PER_ZONE = 16
#: Where ClickHouse's own local-time functions are wrong (its toMinute/toDate read a few instants
#: around Casey's change from +11 to +08 an hour or a day off, while its offsets are right):
#: zone and the UTC days left out.
ENGINE_LOCAL_TIME_BUGS = {"Antarctica/Casey": (dt.date(2010, 3, 4), dt.date(2010, 3, 5))}


def iso_local(moment: dt.datetime, zone: ZoneInfo) -> str:
    """ISO 8601 in ``zone`` with the exact offset (seconds too, where a local mean time has)."""
    return moment.astimezone(zone).isoformat(timespec="seconds")


def instants(zone_name: str) -> list[dt.datetime]:
    """Instants around the zone's changes of offset in 1900-2037, a bounded spread of them."""
    # The pure-Python implementation exposes the zone's transitions; the C one does not.
    pure = importlib.import_module("zoneinfo._zoneinfo").ZoneInfo.no_cache(zone_name)
    transitions = [
        dt.datetime.fromtimestamp(second, dt.UTC)
        for second in pure._trans_utc
        if LOW.timestamp() + 86_400 < second < HIGH.timestamp() - 86_400
    ]
    stride = max(1, len(transitions) // TRANSITIONS_PER_ZONE)
    chosen = transitions[::stride]
    found = [t + dt.timedelta(seconds=delta) for t in chosen for delta in AROUND]
    return [*found, dt.datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=dt.UTC)]


def _micros(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


async def _offsets(backend: EmbeddedBackend, zone: str, micros: list[int]) -> dict[int, int]:
    """ClickHouse's UTC offset in ``zone`` at each instant (microseconds since 1970)."""
    rows = await backend.query_rows(
        f"SELECT m, timeZoneOffset(toTimeZone(fromUnixTimestamp64Micro(m, 'UTC'), '{zone}')) AS o "
        f"FROM (SELECT arrayJoin([{', '.join(map(str, micros))}]) AS m) "
        "SETTINGS enable_extended_results_for_datetime_functions = 1"
    )
    return {row["m"]: row["o"] for row in rows}


def _python_offset(micros: int, zone: ZoneInfo) -> int:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    offset = moment.astimezone(zone).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


async def test_buckets_equal_date_trunc_in_every_zone(embedded_backend: EmbeddedBackend) -> None:
    zones = sorted(zoneinfo.available_timezones() - {"localtime", "Factory"})
    checked = skipped = 0
    mismatches: list[str] = []
    for zone_name in zones:
        zone = ZoneInfo(zone_name)
        moments = instants(zone_name)
        values = ", ".join(str(_micros(moment)) for moment in moments)
        quoted = f"'{zone_name}'"
        column = "fromUnixTimestamp64Micro(m, 'UTC')"
        starts = {
            unit: bucket_start(timestamp_bucket_key("ts", unit, quoted), unit, quoted)
            for unit in UNITS
        }
        selects = ", ".join(
            f"toUnixTimestamp64Micro({start}) AS {unit}, "
            f"{render_local(start, quoted)} AS {unit}_text"
            for unit, start in starts.items()
        )
        rows = await embedded_backend.query_rows(
            f"SELECT m, {selects} FROM (SELECT arrayJoin([{values}]) AS m, {column} AS ts) "
            "ORDER BY m SETTINGS enable_extended_results_for_datetime_functions = 1"
        )
        suspects: list[tuple[str, dt.datetime, int, str, dt.datetime]] = []
        for row, moment in zip(rows, sorted(moments, key=_micros), strict=True):
            for unit in UNITS:
                expected = pg_date_trunc(unit, moment, zone)
                checked += 1
                if row[unit] != _micros(expected) or row[f"{unit}_text"] != iso_local(
                    expected, zone
                ):
                    suspects.append((unit, moment, row[unit], row[f"{unit}_text"], expected))
        if not suspects:
            continue
        # Where the two time zone databases disagree on an offset that the bucket depends on
        # (at the instant, the bucket found, the bucket expected, or a day either side of it),
        # the difference is theirs, not the compiler's.
        probes = sorted(
            {
                _micros(moment) + day * 86_400_000_000
                for _, moment, _, _, expected in suspects
                for day in (-1, 0, 1)
            }
            | {
                _micros(expected) + day * 86_400_000_000
                for *_, expected in suspects
                for day in (-1, 1)
            }
            | {_micros(expected) for *_, expected in suspects}
            | {got for _, _, got, _, _ in suspects}
        )
        engine = await _offsets(embedded_backend, zone_name, probes)
        disagree = {m for m in probes if engine[m] != _python_offset(m, zone)}
        for unit, moment, got, text, expected in suspects:
            if moment.date() in ENGINE_LOCAL_TIME_BUGS.get(zone_name, ()):
                skipped += 1
                continue
            near = {_micros(moment), _micros(expected), got}
            near |= {_micros(moment) + d * 86_400_000_000 for d in (-1, 1)}
            near |= {_micros(expected) + d * 86_400_000_000 for d in (-1, 1)}
            if near & disagree:
                skipped += 1
                continue
            mismatches.append(
                f"{zone_name} {unit} of {moment.isoformat()}: {text}, "
                f"expected {iso_local(expected, zone)}"
            )
    assert checked > 400_000
    assert skipped <= checked / 25, f"{skipped} buckets left out of {checked}"
    assert not mismatches, f"{len(mismatches)} of {checked}:\n" + "\n".join(mismatches[:40])
