"""Random event histories for the actor insights' engine tests (retention, lifecycle).

Each history belongs to a fresh pair of tenants sharing actor ids, one of them hostile; its
events lie on a grid of steps around a change of offset of the chosen zone (a step is a fraction
of the period, so periods hold several events and some events sit on period bounds, or a
microsecond off them), with some far older events (first-ever ones before the range). Some
events are re-sent (same id and day, a later version with another name or another instant of the
day, or an older version written late) and some erased.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import uuid
from dataclasses import dataclass
from typing import Any

from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, Model
from tests.sql_shape import event_arrow

HOSTILE = "x' OR '1'='1"
NAMES = ("signed_up", "viewed", "purchased")
PLATFORMS = ("web", "ios", None)
REFS = ("a", HOSTILE, "b")
#: Zones and an instant near one of their changes of offset (UTC's is arbitrary).
ANCHORS = {
    "": dt.datetime(2026, 3, 29, 0, tzinfo=dt.UTC),
    "Europe/Berlin": dt.datetime(2026, 3, 29, 1, tzinfo=dt.UTC),
    "America/New_York": dt.datetime(2026, 11, 1, 6, tzinfo=dt.UTC),
    "Australia/Lord_Howe": dt.datetime(2026, 4, 4, 15, tzinfo=dt.UTC),
}
#: A step of the grid per period: several to a period, never a divisor of a period's length.
STEPS = {
    "hour": dt.timedelta(minutes=20),
    "day": dt.timedelta(hours=7),
    "week": dt.timedelta(days=2),
    "month": dt.timedelta(days=9),
}
_serials = itertools.count()


@dataclass(frozen=True)
class History:
    """The rows of one example, the tenant to query, and the grid they lie on."""

    rows: list[dict[str, Any]]
    tenant: str
    anchor: dt.datetime
    step: dt.timedelta


def history(rng: random.Random, zone: str, period: str, count: int, *, actors: int = 10) -> History:
    """``count`` events (and their re-sends) of ``actors`` actors of two tenants; the one to
    query is either. Fewer actors put more of an actor's events in one period."""
    serial = next(_serials)
    tenants = (f"acme-{serial}", f"{HOSTILE}-{serial}")
    tenant = rng.choice(tenants)
    anchor, step = ANCHORS[zone], STEPS[period]
    rows: list[dict[str, Any]] = []
    version = itertools.count(1)

    def moment() -> dt.datetime:
        if rng.random() < 0.08:
            return anchor - step * rng.randint(200, 400)
        nudge = rng.choice((0, 0, 0, 1, -1)) * dt.timedelta(microseconds=1)
        return anchor + rng.randint(-15, 15) * step + nudge

    for _ in range(count):
        keys = ["ref"] if rng.random() < 0.5 else []
        row: dict[str, Any] = {
            "tenant_id": tenant if rng.random() < 0.8 else rng.choice(tenants),
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "event": rng.choice(NAMES),
            "contact_id": rng.randint(1, actors),
            "timestamp": moment(),
            "platform": rng.choice(PLATFORMS),
            "country": None,
            "plan": None,
            "revenue": None,
            "properties_keys": keys,
            "properties_values": [rng.choice(REFS)] * len(keys),
            "_version": next(version) * 10,
            "_is_deleted": 0,
        }
        rows.append(row)
        fate = rng.random()
        if fate < 0.1:  # re-sent later: another name, or another instant of the same UTC day
            changed: dict[str, Any] = {"event": rng.choice(NAMES)}
            later = moment()
            if later.date() == row["timestamp"].date():
                changed["timestamp"] = later
            rows.append(row | changed | {"_version": next(version) * 10})
        elif fate < 0.15:  # an older version written after the current one
            rows.append(row | {"event": rng.choice(NAMES), "_version": row["_version"] - 5})
        elif fate < 0.2:  # erased
            rows.append(row | {"_is_deleted": 1, "_version": next(version) * 10})
    return History(rows, tenant, anchor, step)


async def write(backend: EmbeddedBackend, catalog: Catalog, model: Model, rows: list[Any]) -> None:
    """The rows in two inserts, shuffled, so that versions of one event may sit in two parts."""
    shuffled = random.Random(len(rows)).sample(rows, len(rows))
    for part in (shuffled[::2], shuffled[1::2]):
        if part:
            await backend.insert_arrow(catalog.database, model.table, event_arrow(model, part))
