"""The PostgreSQL parity harness: edge-value rows, random requests, their PostgreSQL translation.

PostgreSQL is the source of truth for the analytics API (GitHub issue 13): every answer must
equal the same aggregate computed by PostgreSQL over the source rows. This module holds the parts
of that differential test that need no server (tests/integration/test_pg_parity.py runs them):

* ``generate_dataset``: rows for the models of ``tests/parity_catalog.toml``, deterministic from a
  seed, dense in edge values (integers near +-2^63 whose sums leave 64 bits, 38-digit decimals,
  pre-1970 instants with fractions of a second, instants around the DST changes of zones with
  30- and 45-minute offsets, -0.0, UUIDs whose halves sort differently, Unicode case pairs,
  quotes, backslashes and LIKE metacharacters, NULLs in every nullable field, soft deletes);
* ``RequestGenerator``: random valid requests in their proto3 JSON form (every aggregate, 0-2
  group keys, every interval and several time zones, every filter operator with and without
  ``not.``, and/or trees, order with NULL placement, limit and offset);
* ``translate``: the request read by this module's own parser of the PostgREST grammar and
  written as PostgreSQL SQL, following the contract (README "The API"), not the compiler: nothing
  here comes from ``service/query``;
* ``compare``: the service's rows against PostgreSQL's, each value compared by its logical type.

The contract in PostgreSQL terms (the database is created with ``LC_COLLATE 'C'`` and
``LC_CTYPE 'C.UTF-8'``, so ``lower()`` folds like glibc and text orders by bytes):

* the token's tenant only; ``<soft delete column> IS NULL`` unless a filter at any depth names
  that column;
* ``count()`` = ``count(*)``, ``count`` of a field = ``count(field)``, ``sum``/``avg``/``min``/
  ``max`` as in SQL (exact ``numeric`` sums of integers and decimals, NULL over no rows),
  ``count_distinct`` = ``count(DISTINCT x)``, ``pN`` = ``percentile_cont(N/100) WITHIN GROUP
  (ORDER BY x::float8)``;
* ``groupByInterval``: ``date_trunc(unit, ts, zone)`` for timestamps, ``date_trunc(unit,
  d)::date`` for dates;
* filter values are typed literals; a timestamp without an offset is ``'...'::timestamp AT TIME
  ZONE zone``; top-level values are literal, inside ``in.(...)`` and and/or lists double quotes
  delimit a value and a backslash in quotes escapes the next character; ``like``/``ilike`` turn
  every ``*`` into ``%`` and are PostgreSQL's ``LIKE``/``ILIKE``; ``neq`` is ``<>``; ``not.`` is
  ``NOT``;
* order by the requested keys (PostgreSQL's NULL placement: last ascending, first descending,
  unless ``nullsfirst``/``nullslast``), strings by bytes, UUIDs by their text form (PostgreSQL's
  own uuid order), then every other group key ascending; then ``offset`` and ``limit`` (Query's
  default 1000, StreamQuery's none), which ``Translation.page`` applies to the whole answer.

Comparison: integers, decimals, strings, UUIDs, dates and instants exactly (time buckets also
with the UTC offset they are written with, which must be the zone's offset at that instant);
floats within 1e-9 relative to the larger of the two answers and of the magnitude of the values
aggregated (``sum(abs(x))`` for a sum, ``max(abs(x))`` for an average or percentile, selected by
the PostgreSQL query as hidden ``~scale`` columns): rounding error of a float aggregate is bounded
by its operands, not by its result. Rows are compared in order when the request has an order
(rows whose order keys agree up to a float key within that tolerance may come in either order),
as multisets otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from service.catalog import Catalog, FieldSpec, FieldType, Model

TENANTS = ("acme", "globex", "initech")
TIME_ZONES = (
    "UTC",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/New_York",
    "Asia/Kathmandu",
    "Europe/Berlin",
    "America/St_Johns",
)
INTERVALS = ("minute", "hour", "day", "week", "month", "quarter", "year")
PERCENTILES = (1, 10, 25, 50, 90, 99)
ORDER_MODIFIERS = (
    "",
    ".asc",
    ".desc",
    ".asc.nullsfirst",
    ".asc.nullslast",
    ".desc.nullsfirst",
    ".desc.nullslast",
    ".nullsfirst",
    ".nullslast",
)
QUERY_DEFAULT_LIMIT = 1000
FLOAT_TOLERANCE = 1e-9

#: Seven of these in one tenant's column sum past 2^63.
BIG = 1_500_000_000_000_000_000
EDGE_INTS = (0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1, -(2**53) - 1, 10**15, BIG, -BIG)
EDGE_FLOATS = (0.0, -0.0, 0.1, 1 / 3, -2.5, 1e-300, -1e-300, 1e15, -1e15, 2.0**53, 123456.789)
EDGE_DECIMALS = {
    18: ("0", "0.01", "-0.01", "0.50", "12.34", "9999999999999999.99", "-9999999999999999.99"),
    38: (
        "0",
        "0.0000000001",
        "-0.0000000001",
        "0.5",
        "12345678901234567890.1234567890",
        "9999999999999999999999999999.9999999999",
        "-9999999999999999999999999999.9999999999",
    ),
}
EDGE_STRINGS = (
    "İstanbul",
    "istanbul",
    "ISTANBUL",
    "ǅemal",
    "ǆemal",
    "Ǆemal",
    "\u212aelvin",  # KELVIN SIGN
    "Kelvin",
    "kelvin",
    "ß",
    "ẞ",
    "SS",
    "Σ",
    "\u03c3",  # GREEK SMALL LETTER SIGMA
    "ς",
    "ΣΑΣ",
    "σας",
    "ÄRGER",
    "ärger",
    "e\u0301",  # e + COMBINING ACUTE ACCENT
    "é",
    "日本語",
    "🙂",
    "O'Brien",
    '"quoted"',
    'say "hi"',
    "C:\\temp",
    "C:\\\\server\\share",
    "ends with \\",
    "100%",
    "50% off",
    "under_score",
    "a_b",
    "star*",
    "*",
    "a,b",
    "(paren)",
    "x)",
    "",
    " leading space",
    "trailing ",
    "tab\there",
    "line\nbreak",
    "zeta",
    "Zeta",
)
EDGE_ENUMS = (
    "alpha",
    "Beta",
    "gamma",
    "ÄRGER",
    "ärger",
    "Σ",
    "\u03c3",
    "ς",
    "50%",
    "a_b",
    "it's",
    "",
)
EDGE_UUIDS = (
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "ffffffff-0000-0000-0000-000000000000",
    "00000000-ffff-ffff-ffff-ffffffffffff",
    "00000000-0000-0000-ffff-ffffffffffff",
    "ffffffff-ffff-ffff-0000-000000000000",
    "80000000-0000-0000-0000-000000000001",
    "7fffffff-ffff-ffff-ffff-fffffffffffe",
)
EDGE_INSTANTS = tuple(
    dt.datetime.fromisoformat(text + "+00:00")
    for text in [
        "1969-12-31T23:59:59.5",
        "1969-12-31T23:59:59.999999",
        "1969-12-31T23:59:00.25",
        "1969-12-31T00:00:00.000001",
        "1969-07-20T20:17:40.123456",
        "1960-02-29T12:34:56.789",
        "1950-01-01T00:00:00",
        "1970-01-01T00:00:00",
        "2000-02-29T23:59:59.999999",
        "2024-12-30T00:00:00",
        "2025-12-31T23:59:59.999999",
    ]
)
EDGE_DATES = tuple(
    dt.date.fromisoformat(text)
    for text in [
        "1950-01-01",
        "1969-12-29",
        "1969-12-31",
        "1970-01-01",
        "2024-02-29",
        "2024-12-30",
        "2025-03-30",
        "2025-04-06",
        "2025-09-28",
        "2025-10-05",
        "2025-12-29",
        "2026-01-01",
        "2039-12-31",
    ]
)
WORDS = ("apple", "Banana", "cherry", "Dátil", "elder", "fig")

Row = dict[str, Any]


# --- rows ----------------------------------------------------------------------------------------


def dst_transitions(zone: str, year: int) -> list[dt.datetime]:
    """The instants (UTC, to the second) at which ``zone`` changes its UTC offset in ``year``."""
    tz = ZoneInfo(zone)
    start = int(dt.datetime(year, 1, 1, tzinfo=dt.UTC).timestamp())
    end = int(dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC).timestamp())

    def offset(seconds: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(seconds, tz).utcoffset()

    found = []
    for hour in range(start, end, 3600):
        if offset(hour) != offset(hour + 3600):
            low, high = hour, hour + 3600  # offset(low) is the old one, offset(high) the new
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if offset(middle) == offset(low) else (low, middle)
            found.append(dt.datetime.fromtimestamp(high, dt.UTC))
    return found


def _near_transitions() -> tuple[list[dt.datetime], dict[str, list[str]]]:
    """Instants around every 2025 DST change of the test zones, and per zone the local times
    (naive ISO text) that fall in a gap or an overlap."""
    instants: list[dt.datetime] = []
    local: dict[str, list[str]] = {}
    steps = (-90, -61, -60, -46, -45, -31, -30, -15, -1, 0, 1, 15, 29, 30, 31, 44, 45, 59, 60, 90)
    for zone in TIME_ZONES:
        tz = ZoneInfo(zone)
        for change in dst_transitions(zone, 2025):
            instants.extend(change + dt.timedelta(minutes=m) for m in steps)
            instants.extend(change + dt.timedelta(microseconds=m) for m in (-1, 1))
            before = (change - dt.timedelta(seconds=1)).astimezone(tz).utcoffset()
            after = change.astimezone(tz).utcoffset()
            assert before is not None
            assert after is not None
            naive = change.replace(tzinfo=None)
            first, last = sorted((naive + before, naive + after))
            local.setdefault(zone, []).extend(
                moment.isoformat()
                for moment in (first, first + (last - first) / 2, last - dt.timedelta(seconds=1))
            )
    return instants, local


NEAR_TRANSITIONS, LOCAL_EDGES = _near_transitions()


@dataclass(frozen=True)
class ModelRows:
    """One model's source rows: the final state, and how the test gets there.

    ``rows`` are the final rows (tenant column included, watermark left to the trigger);
    ``changed`` are indexes of rows first inserted in a stale form (``stale``) and updated to
    their final values later (every soft-deleted row among them); ``doomed`` rows are inserted,
    replicated, then deleted, so that the loader's hard-delete path runs as well.
    """

    model: Model
    rows: list[Row]
    changed: list[int]
    doomed: list[Row]

    @property
    def columns(self) -> list[str]:
        """The columns the test writes (the watermark is the trigger's)."""
        return [self.model.tenant_column, *self.written_fields]

    @property
    def written_fields(self) -> list[str]:
        """The model's fields except the watermark column."""
        return [name for name in self.model.fields if name != self.model.watermark_column]

    def stale(self, row: Row) -> Row:
        """``row`` before its update: every nullable field NULL (so not soft-deleted)."""
        return {
            k: None if k in self.model.fields and self.model.fields[k].nullable else v
            for k, v in row.items()
        }


def generate_dataset(catalog: Catalog, seed: int, rows: int) -> dict[str, ModelRows]:
    """Rows for every model of ``catalog`` (``rows`` in all, three quarters for the first model),
    spread over ``TENANTS``, deterministic from ``seed``."""
    rng = random.Random(seed)
    uuids = [*EDGE_UUIDS, *(str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(12))]
    models = list(catalog.models.values())
    dataset: dict[str, ModelRows] = {}
    for model_index, model in enumerate(models):
        share = rows * 3 // 4 if model_index == 0 else rows // (4 * max(len(models) - 1, 1))
        per_tenant = max(share // len(TENANTS), 20)
        generated: list[Row] = []
        doomed: list[Row] = []
        for tenant_index, tenant in enumerate(TENANTS):
            values = _Values(rng, tenant, uuids)
            for index in range(per_tenant + 5):
                row: Row = {model.tenant_column: tenant, **_key(model, tenant_index, index)}
                for position, (name, spec) in enumerate(model.fields.items()):
                    if name in row or name == model.watermark_column:
                        continue
                    if name == model.soft_delete_column:
                        row[name] = values.instant() if rng.random() < 0.12 else None
                    elif spec.type is FieldType.INT and index < 7:
                        row[name] = BIG if position % 2 else -BIG
                    else:
                        row[name] = values.of(spec)
                (generated if index < per_tenant else doomed).append(row)
        soft_deleted = {
            i for i, row in enumerate(generated) if row.get(model.soft_delete_column or "")
        }
        changed = sorted(soft_deleted | {i for i in range(len(generated)) if rng.random() < 0.1})
        dataset[model.name] = ModelRows(model, generated, changed, doomed)
    return dataset


def _key(model: Model, tenant_index: int, index: int) -> Row:
    """Primary key values, disjoint between tenants (one int column, or two: order and line)."""
    base = (tenant_index + 1) * 1_000_000
    if len(model.primary_key) == 1:
        return {model.primary_key[0]: base + index}
    first, second = model.primary_key
    return {first: base + index // 3, second: index % 3 + 1}


class _Values:
    """Random values by field type for one tenant: edge values often, ordinary ones otherwise."""

    def __init__(self, rng: random.Random, tenant: str, uuids: Sequence[str]) -> None:
        self.rng, self.tenant, self.uuids = rng, tenant, uuids

    def of(self, spec: FieldSpec) -> Any:
        rng = self.rng
        if spec.nullable and rng.random() < 0.2:
            return None
        edge = rng.random() < 0.3
        kind = spec.type
        if kind is FieldType.INT:
            return rng.choice(EDGE_INTS) if edge else rng.randint(-1000, 1000)
        if kind is FieldType.FLOAT:
            return rng.choice(EDGE_FLOATS) if edge else round(rng.uniform(-1e4, 1e4), 3)
        if kind is FieldType.DECIMAL:
            if edge:
                return Decimal(rng.choice(EDGE_DECIMALS[18 if spec.precision <= 18 else 38]))
            digits = 10 ** (spec.precision // 2)
            return Decimal(rng.randint(-digits, digits)).scaleb(-spec.scale)
        if kind is FieldType.STRING:
            if edge or rng.random() < 0.3:
                return rng.choice(EDGE_STRINGS)
            return f"{self.tenant}:{rng.choice(WORDS)}{rng.randint(0, 30)}"
        if kind is FieldType.ENUM:
            return rng.choice(EDGE_ENUMS) if rng.random() < 0.8 else f"only-{self.tenant}"
        if kind is FieldType.UUID:
            return rng.choice(self.uuids)
        if kind is FieldType.BOOL:
            return rng.random() < 0.5
        if kind is FieldType.TIMESTAMP:
            return self.instant()
        return self.date()

    def instant(self) -> dt.datetime:
        rng = self.rng
        roll = rng.random()
        if roll < 0.25:
            return rng.choice(NEAR_TRANSITIONS)
        if roll < 0.35:
            return rng.choice(EDGE_INSTANTS)
        low, high = (1950, 2040) if roll < 0.6 else (2025, 2025)
        start = dt.datetime(low, 1, 1, tzinfo=dt.UTC)
        span = (dt.datetime(high + 1, 1, 1, tzinfo=dt.UTC) - start).total_seconds()
        moment = start + dt.timedelta(seconds=rng.randrange(int(span)))
        return moment.replace(microsecond=rng.choice((0, 0, rng.randrange(1_000_000))))

    def date(self) -> dt.date:
        rng = self.rng
        if rng.random() < 0.3:
            return rng.choice(EDGE_DATES)
        low = dt.date(1950, 1, 1) if rng.random() < 0.5 else dt.date(2025, 1, 1)
        high = dt.date(2040, 12, 31) if low.year == 1950 else dt.date(2025, 12, 31)
        return low + dt.timedelta(days=rng.randrange((high - low).days + 1))


# --- requests ------------------------------------------------------------------------------------


def _aggregates(spec: FieldSpec) -> list[str]:
    """The aggregates the contract defines over a field of this type."""
    names = ["count", "count_distinct"]
    if spec.type.is_numeric:
        names += ["sum", "avg", *(f"p{n}" for n in PERCENTILES)]
    if spec.type not in (FieldType.BOOL, FieldType.UUID):
        names += ["min", "max"]
    return names


def _operators(spec: FieldSpec) -> list[str]:
    """The filter operators a field of this type takes."""
    names = ["eq", "neq", "in", "is.null"]
    if spec.type not in (FieldType.BOOL, FieldType.UUID):
        names += ["gt", "gte", "lt", "lte"]
    if spec.type in (FieldType.STRING, FieldType.ENUM):
        names += ["like", "ilike"]
    if spec.type is FieldType.BOOL:
        names += ["is.true", "is.false"]
    return names


def quote_item(text: str) -> str:
    """A value inside ``in.(...)`` or an and/or list: double-quoted, ``"`` and ``\\`` escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_UNICODE_CASE = str.maketrans(
    {"i": "İ", "k": "\u212a", "K": "\u212a", "ß": "ẞ", "ς": "Σ", "\u03c3": "Σ"}
)


class RequestGenerator:
    """Random valid requests (proto3 JSON dicts) over a dataset, deterministic from ``rng``."""

    def __init__(
        self, catalog: Catalog, dataset: Mapping[str, ModelRows], rng: random.Random
    ) -> None:
        self.catalog, self.rng = catalog, rng
        self.samples: dict[tuple[str, str], list[Any]] = {}
        for rows in dataset.values():
            for name in rows.model.fields:
                values = {json.dumps(r.get(name), default=str): r.get(name) for r in rows.rows}
                self.samples[rows.model.name, name] = [
                    v for _, v in sorted(values.items()) if v is not None
                ]

    def request(self) -> tuple[dict[str, Any], str]:
        """A request and the tenant whose token sends it."""
        rng = self.rng
        model = rng.choice(list(self.catalog.models.values()))
        body: dict[str, Any] = {"model": rng.choice((model.name, model.qualified_name))}
        zone = rng.choice(TIME_ZONES) if rng.random() < 0.6 else ""
        if zone:
            body["timeZone"] = zone
        keys = self._group_by(model, body)
        keys += self._metrics(model, body)
        filters = self._filters(model, zone or "UTC")
        if filters:
            body["filters"] = filters
        if keys and rng.random() < 0.6:
            chosen = rng.sample(keys, rng.randint(1, min(2, len(keys))))
            body["order"] = ",".join(key + rng.choice(ORDER_MODIFIERS) for key in chosen)
        if rng.random() < 0.35:
            body["limit"] = rng.choice((1, 2, 3, 5, 10, 25))
        if rng.random() < 0.2:
            body["offset"] = rng.choice((1, 2, 5, 20))
        return body, rng.choice(TENANTS)

    def _group_by(self, model: Model, body: dict[str, Any]) -> list[str]:
        rng = self.rng
        names = rng.sample(list(model.fields), rng.choice((0, 1, 1, 2)))
        if not names:
            return []
        body["groupBy"] = ",".join(names)
        kinds = {model.fields[n].type for n in names}
        if kinds & {FieldType.TIMESTAMP, FieldType.DATE} and rng.random() < 0.7:
            units = INTERVALS[2:] if FieldType.DATE in kinds else INTERVALS
            body["groupByInterval"] = rng.choice(units)
        return names

    def _metrics(self, model: Model, body: dict[str, Any]) -> list[str]:
        """One to three metrics with distinct keys (the first one the main metric); their keys."""
        rng = self.rng
        count = rng.choice((1, 1, 2, 3))
        keys: list[str] = []
        for position in range(count):
            if rng.random() < 0.15:
                aggregate, name = "count", ""
            else:
                name = rng.choice(list(model.fields))
                aggregate = rng.choice(_aggregates(model.fields[name]))
            key = f"{aggregate}_{name}" if name else "count"
            if position == 0:
                if count == 1 and not name and rng.random() < 0.5:
                    keys.append(key)  # no metric at all means count()
                    continue
                # An empty aggregate beside a field means count of that field.
                if aggregate != "count" or not name or rng.random() < 0.5:
                    body["aggregate"] = aggregate
                if name:
                    body["field"] = name
            else:
                metric = {"aggregate": aggregate, "field": name}
                if key in keys or rng.random() < 0.1:
                    key = metric["alias"] = f"m{position}"
                body.setdefault("metrics", []).append(metric)
            keys.append(key)
        return keys

    def _filters(self, model: Model, zone: str) -> dict[str, str]:
        rng = self.rng
        filters: dict[str, str] = {}
        names = rng.sample(list(model.fields), rng.choice((0, 0, 1, 1, 2)))
        if model.soft_delete_column and rng.random() < 0.15:
            names.append(model.soft_delete_column)
        for name in dict.fromkeys(names):
            filters[name] = self._condition(model, name, zone, nested=False)
        if rng.random() < 0.3:
            kind = rng.choice(("and", "or", "not.and", "not.or"))
            filters[kind] = self._tree(model, zone, 1)
        return filters

    def _tree(self, model: Model, zone: str, depth: int) -> str:
        rng = self.rng
        items = []
        for _ in range(rng.randint(1, 3)):
            if depth < 3 and rng.random() < 0.25:
                head = rng.choice(("and", "or", "not.and", "not.or"))
                items.append(head + self._tree(model, zone, depth + 1))
            else:
                name = rng.choice(list(model.fields))
                items.append(f"{name}.{self._condition(model, name, zone, nested=True)}")
        return "(" + ",".join(items) + ")"

    def _condition(self, model: Model, name: str, zone: str, *, nested: bool) -> str:
        rng = self.rng
        spec = model.fields[name]
        operator = rng.choice(_operators(spec))
        negation = "not." if rng.random() < 0.3 else ""
        if operator.startswith("is."):
            return negation + operator
        if operator == "in":
            values = [self._value(model, spec, zone) for _ in range(rng.randint(1, 4))]
            return f"{negation}in.({','.join(self._item(v) for v in values)})"
        if operator in ("like", "ilike"):
            text = self._pattern(model, spec, ilike=operator == "ilike")
        else:
            text = self._value(model, spec, zone)
        return f"{negation}{operator}.{self._item(text) if nested else text}"

    def _item(self, text: str) -> str:
        """A list value: quoted when it must be (and sometimes when it need not)."""
        plain = text and text == text.strip() and not any(c in text for c in ',()"')
        return text if plain and self.rng.random() < 0.7 else quote_item(text)

    def _sample(self, model: Model, spec: FieldSpec) -> Any:
        values = self.samples[model.name, spec.name]
        return self.rng.choice(values) if values else None

    def _value(self, model: Model, spec: FieldSpec, zone: str) -> str:
        """A filter value of ``spec``'s type, mostly one the rows hold, as request text."""
        rng = self.rng
        value = self._sample(model, spec)
        kind = spec.type
        if kind is FieldType.INT:
            number = value if value is not None and rng.random() < 0.8 else rng.choice(EDGE_INTS)
            return str(number + rng.choice((0, 0, 0, 1, -1)) if abs(number) < 2**62 else number)
        if kind is FieldType.FLOAT:
            number = value if value is not None and rng.random() < 0.8 else rng.choice(EDGE_FLOATS)
            return rng.choice((repr(number), repr(number), "-0.0", "0"))
        if kind is FieldType.DECIMAL:
            number = value if value is not None else Decimal(0)
            return rng.choice((f"{number:f}", f"{number:f}", f"{number:f}5", str(number)))
        if kind is FieldType.UUID:
            text = value or EDGE_UUIDS[0]
            return rng.choice((text, text, text.upper(), "{" + text + "}", text.replace("-", "")))
        if kind is FieldType.BOOL:
            return rng.choice(("true", "false"))
        if kind is FieldType.TIMESTAMP:
            return self._timestamp(value or EDGE_INSTANTS[0], zone)
        if kind is FieldType.DATE:
            day = value or EDGE_DATES[0]
            return (day + dt.timedelta(days=rng.choice((0, 0, 1, -1)))).isoformat()
        return value if value is not None else rng.choice(EDGE_STRINGS)

    def _timestamp(self, moment: dt.datetime, zone: str) -> str:
        """An instant as ISO text: with ``Z``, with an offset, or naive in the request's zone."""
        rng = self.rng
        form = rng.choice(("z", "offset", "local", "local", "edge", "date"))
        if form == "z":
            return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        if form == "offset":
            return moment.astimezone(ZoneInfo(rng.choice(TIME_ZONES))).isoformat()
        if form == "edge" and zone in LOCAL_EDGES:
            return rng.choice(LOCAL_EDGES[zone])
        local = moment.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
        return local.date().isoformat() if form == "date" else local.isoformat()

    def _pattern(self, model: Model, spec: FieldSpec, *, ilike: bool) -> str:
        """A LIKE pattern made from a value the rows hold (never ending in an odd backslash)."""
        rng = self.rng
        text = self._sample(model, spec) or rng.choice(EDGE_STRINGS)
        cut = rng.randint(0, len(text))
        low, high = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        single = text[:cut] + "_" + text[cut + 1 :] if cut < len(text) else text + "_"
        pattern = rng.choice(
            (text, escaped, text[:cut] + "*", "*" + text[cut:], f"*{text[low:high]}*", single)
        )
        if ilike:
            fold: Callable[[str], str] = rng.choice(
                (str.upper, str.lower, str.swapcase, lambda s: s.translate(_UNICODE_CASE))
            )
            pattern = fold(pattern)
        trailing = len(pattern) - len(pattern.rstrip("\\"))
        return pattern + "\\" if trailing % 2 else pattern


# --- the request in PostgreSQL -------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """``field [not.]operator values`` of a filter."""

    field: str
    operator: str
    values: tuple[str, ...]
    negated: bool


@dataclass(frozen=True)
class Junction:
    """``[not.]and(...)`` / ``[not.]or(...)``."""

    kind: str
    children: tuple[Condition | Junction, ...]
    negated: bool


class RequestError(ValueError):
    """The request is not one the contract defines (a bug of the generator or a pinned case)."""


def parse_filters(filters: Mapping[str, str]) -> list[Condition | Junction]:
    """The request's filters: field keys take a literal condition, and/or keys a list."""
    parsed: list[Condition | Junction] = []
    for key, text in filters.items():
        negated = key.startswith("not.")
        name = key.removeprefix("not.")
        if name in ("and", "or"):
            parsed.append(Junction(name, _parse_items(text), negated))
        elif negated:
            raise RequestError(f"not. prefixes only and/or keys: {key!r}")
        else:
            parsed.append(_parse_condition(name, text, in_list=False))
    return parsed


def _parse_condition(name: str, text: str, *, in_list: bool) -> Condition:
    negated = text.startswith("not.")
    operator, dot, rest = text.removeprefix("not.").partition(".")
    if not dot:
        raise RequestError(f"no operator in {text!r}")
    if operator == "in":
        return Condition(name, operator, tuple(map(_unquote, _split_list(rest))), negated)
    if operator == "is":
        if rest not in ("null", "true", "false"):
            raise RequestError(f"is.{rest}")
        return Condition(name, operator, (rest,), negated)
    return Condition(name, operator, (_unquote(rest) if in_list else rest,), negated)


def _parse_items(text: str) -> tuple[Condition | Junction, ...]:
    items: list[Condition | Junction] = []
    for item in _split_list(text):
        negated = item.startswith("not.")
        body = item.removeprefix("not.")
        head = body.split("(", 1)[0]
        if head in ("and", "or") and body.startswith(f"{head}("):
            items.append(Junction(head, _parse_items(body[len(head) :]), negated))
        else:
            name, _, condition = item.partition(".")
            items.append(_parse_condition(name, condition, in_list=True))
    return tuple(items)


def _split_list(text: str) -> list[str]:
    """``(a,"b,c",or(d,e))`` split at its top-level commas; items keep their quotes."""
    if not (text.startswith("(") and text.endswith(")")):
        raise RequestError(f"not a parenthesised list: {text!r}")
    items: list[str] = []
    current, depth, quoted = "", 0, False
    characters = iter(text[1:-1])
    for char in characters:
        if quoted and char == "\\":
            current += char + next(characters, "")
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
        elif not quoted and char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += char
    if quoted or depth:
        raise RequestError(f"unbalanced quotes or parentheses in {text!r}")
    return [*items, current]


def _unquote(text: str) -> str:
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return text
    out, characters = "", iter(text[1:-1])
    for char in characters:
        out += next(characters, "") if char == "\\" else char
    return out


def _mentioned(filters: Sequence[Condition | Junction]) -> set[str]:
    names: set[str] = set()
    for item in filters:
        names |= {item.field} if isinstance(item, Condition) else _mentioned(item.children)
    return names


@dataclass(frozen=True)
class Column:
    """A key of the answer rows, its kind for comparison, and its hidden error-scale column."""

    key: str
    kind: str
    scale: str | None = None


@dataclass(frozen=True)
class Translation:
    """The PostgreSQL query answering a request, and how to read and compare its rows.

    ``sql`` returns every row of the answer in the request's order; the page a surface returns
    is ``page(rows, default_limit)`` of them (Query and REST default to 1000 rows, StreamQuery
    to all). Leaving LIMIT and OFFSET to Python keeps the rows around the page at hand, for
    float keys that tie within the tolerance across its edge.
    """

    sql: str
    columns: tuple[Column, ...]
    group_keys: tuple[str, ...]
    #: The keys rows are ordered by: the requested ones, then the other group keys; empty when
    #: the request sets no order (its rows are then compared as a multiset).
    order_keys: tuple[str, ...]
    time_zone: str
    offset: int
    limit: int | None

    def page(self, rows: Sequence[Any], default_limit: int | None) -> list[Any]:
        """The rows of ``rows`` (the whole answer) a surface with ``default_limit`` returns."""
        limit = self.limit or default_limit
        return list(rows[self.offset : None if limit is None else self.offset + limit])


def ident(name: str) -> str:
    """A PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A PostgreSQL string literal (``standard_conforming_strings`` on: backslashes are plain)."""
    return "'" + text.replace("'", "''") + "'"


_KINDS = {
    FieldType.INT: "int",
    FieldType.FLOAT: "float",
    FieldType.DECIMAL: "decimal",
    FieldType.STRING: "string",
    FieldType.ENUM: "string",
    FieldType.UUID: "uuid",
    FieldType.BOOL: "bool",
    FieldType.TIMESTAMP: "timestamp",
    FieldType.DATE: "date",
}
_PG_TYPES = {
    FieldType.INT: "bigint",
    FieldType.FLOAT: "float8",
    FieldType.DECIMAL: "numeric",
    FieldType.STRING: "text",
    FieldType.ENUM: "text",
    FieldType.UUID: "uuid",
    FieldType.BOOL: "boolean",
    FieldType.DATE: "date",
}
_COMPARISONS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_NULLS = {"nullsfirst": " NULLS FIRST", "nullslast": " NULLS LAST"}


def resolve_model(catalog: Catalog, reference: str) -> Model:
    """The model named ``module.name`` or by a bare name unique in the catalog."""
    module, dot, name = reference.rpartition(".")
    found = [
        m for m in catalog.models.values() if m.name == name and (not dot or m.module == module)
    ]
    if len(found) != 1:
        raise RequestError(f"model {reference!r} names {len(found)} models")
    return found[0]


def translate(request: Mapping[str, Any], catalog: Catalog, tenant: str) -> Translation:
    """The PostgreSQL query of ``request`` for ``tenant`` over the source tables."""
    model = resolve_model(catalog, request["model"])
    zone = request.get("timeZone") or "UTC"
    interval = request.get("groupByInterval", "")
    names = [n.strip() for n in request.get("groupBy", "").split(",") if n.strip()]
    inner: list[str] = []
    columns: list[Column] = []
    for name in names:
        spec = model.fields[name]
        expression, kind = ident(name), _KINDS[spec.type]
        if interval and spec.type is FieldType.TIMESTAMP:
            expression, kind = f"date_trunc('{interval}', {expression}, {literal(zone)})", "bucket"
        elif interval and spec.type is FieldType.DATE:
            expression = f"date_trunc('{interval}', {expression}::timestamp)::date"
        inner.append(f"{expression} AS {ident(name)}")
        columns.append(Column(name, kind))
    for aggregate, name, key in _requested_metrics(request):
        expression, kind, scale = _metric(aggregate, model.fields.get(name))
        inner.append(f"{expression} AS {ident(key)}")
        if scale:
            inner.append(f"{scale} AS {ident(key + '~scale')}")
        columns.append(Column(key, kind, key + "~scale" if scale else None))

    filters = parse_filters(request.get("filters", {}))
    where = [f"{ident(model.tenant_column)} = {literal(tenant)}"]
    if model.soft_delete_column and model.soft_delete_column not in _mentioned(filters):
        where.append(f"{ident(model.soft_delete_column)} IS NULL")
    where += [f"({_filter(item, model, zone)})" for item in filters]
    schema, table = model.source.split(".")
    source = f"{ident(schema)}.{ident(table)}"
    sql = f"SELECT {', '.join(inner)} FROM {source} WHERE {' AND '.join(where)}"
    if names:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(names)))

    kinds = {c.key: c.kind for c in columns}
    order, used = [], []
    for term in filter(None, (t.strip() for t in request.get("order", "").split(","))):
        key, *modifiers = term.split(".")
        if key not in kinds or key in used:
            raise RequestError(f"order: {key!r}")
        used.append(key)
        direction = "DESC" if "desc" in modifiers else "ASC"
        placement = "".join(_NULLS.get(m, "") for m in modifiers)
        order.append(f"{_sort_key(key, kinds[key])} {direction}{placement}")
    tie_breaks = [k for k in names if k not in used]
    order += [f"{_sort_key(k, kinds[k])} ASC" for k in tie_breaks]
    outer = f"SELECT * FROM ({sql}) AS answer"
    if order:
        outer += " ORDER BY " + ", ".join(order)
    return Translation(
        outer,
        tuple(columns),
        tuple(names),
        tuple(used + tie_breaks) if used else (),
        zone,
        int(request.get("offset") or 0),
        int(request.get("limit") or 0) or None,
    )


def _requested_metrics(request: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(aggregate, field, result key) of the main metric and of ``metrics``."""
    metrics = []
    if request.get("aggregate") or request.get("field"):
        metrics.append((request.get("aggregate") or "count", request.get("field", ""), ""))
    metrics += [
        (m.get("aggregate", ""), m.get("field", ""), m.get("alias", ""))
        for m in request.get("metrics", [])
    ]
    if not metrics:
        metrics.append(("count", "", ""))
    return [
        (aggregate, name, alias or (f"{aggregate}_{name}" if name else "count"))
        for aggregate, name, alias in metrics
    ]


def _metric(aggregate: str, spec: FieldSpec | None) -> tuple[str, str, str | None]:
    """(expression, kind, error-scale expression) of one aggregate."""
    if spec is None:
        if aggregate != "count":
            raise RequestError(f"{aggregate} needs a field")
        return "count(*)", "int", None
    column = ident(spec.name)
    magnitude = f"max(abs({column}::float8))"
    if aggregate == "count":
        return f"count({column})", "int", None
    if aggregate == "count_distinct":
        return f"count(DISTINCT {column})", "int", None
    if aggregate == "sum":
        kind = _KINDS[spec.type]
        return f"sum({column})", kind, f"sum(abs({column}::float8))" if kind == "float" else None
    if aggregate == "avg":
        return f"avg({column})", "float", magnitude
    if aggregate in ("min", "max"):
        collate = ' COLLATE "C"' if _KINDS[spec.type] == "string" else ""
        return f"{aggregate}({column}{collate})", _KINDS[spec.type], None
    if aggregate.startswith("p") and aggregate[1:].isdigit():
        fraction = int(aggregate[1:]) / 100
        ordered = f"WITHIN GROUP (ORDER BY {column}::float8)"
        return f"percentile_cont({fraction}) {ordered}", "float", magnitude
    raise RequestError(f"unknown aggregate {aggregate!r}")


def _sort_key(key: str, kind: str) -> str:
    return ident(key) + (' COLLATE "C"' if kind == "string" else "")


def _filter(item: Condition | Junction, model: Model, zone: str) -> str:
    if isinstance(item, Junction):
        joiner = " AND " if item.kind == "and" else " OR "
        sql = joiner.join(f"({_filter(child, model, zone)})" for child in item.children)
    else:
        sql = _condition(item, model.fields[item.field], zone)
    return f"NOT ({sql})" if item.negated else sql


def _condition(item: Condition, spec: FieldSpec, zone: str) -> str:
    column = ident(spec.name)
    operator = item.operator
    if operator == "is":
        return f"{column} IS {item.values[0].upper()}"
    if operator in ("like", "ilike"):
        return f"{column} {operator.upper()} {literal(item.values[0].replace('*', '%'))}"
    values = [_typed(spec, value, zone) for value in item.values]
    if operator == "in":
        return f"{column} IN ({', '.join(values)})"
    collate = ' COLLATE "C"' if _KINDS[spec.type] == "string" else ""
    return f"{column}{collate} {_COMPARISONS[operator]} {values[0]}"


def _typed(spec: FieldSpec, text: str, zone: str) -> str:
    if spec.type is not FieldType.TIMESTAMP:
        return f"{literal(text)}::{_PG_TYPES[spec.type]}"
    if dt.datetime.fromisoformat(text).tzinfo is not None:
        return f"{literal(text)}::timestamptz"
    return f"({literal(text)}::timestamp AT TIME ZONE {literal(zone)})"


# --- comparison ----------------------------------------------------------------------------------


@dataclass
class Answer:
    """Rows as one side gave them, or the error it gave instead."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def normalize(kind: str, value: Any, zone: str) -> Any:
    """A value of either side in one comparable form per kind (None stays None).

    What cannot be read is kept as ``<unreadable ...>`` text, which equals nothing expected.
    """
    if value is None:
        return None
    try:
        return _NORMAL[kind](value, zone)
    except (ValueError, TypeError, ArithmeticError):
        return f"<unreadable {value!r}>"


def _integer(value: Any, _zone: str) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    if isinstance(value, bool):
        raise TypeError(value)
    return int(value) if not isinstance(value, str) else int(value, 10)


def _decimal(value: Any, _zone: str) -> Decimal:
    return Decimal(repr(value) if isinstance(value, float) else value)


def _float(value: Any, _zone: str) -> float:
    if isinstance(value, bool | str):
        raise TypeError(value)
    return float(value) + 0.0  # -0.0 and 0.0 are one value


def _text(value: Any, _zone: str) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _uuid(value: Any, _zone: str) -> str:
    return str(uuid.UUID(str(value)))


def _bool(value: Any, _zone: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(value)
    return value


def _instant(value: Any, _zone: str) -> str:
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return str(moment.astimezone(dt.UTC).isoformat())


def _bucket(value: Any, zone: str) -> str:
    """A time bucket as ISO text with its UTC offset: the service's as written, PostgreSQL's
    instant with the zone's offset at that instant (what the contract says to write).

    One difference is the engine's and accepted: ClickHouse keeps the moment of a day's change
    of offset in whole quarter hours, so where a zone changed at another minute (St. John's at
    00:01 from 1987 to 2010) it writes the right instant with the offset of the other side of
    the change in the minutes between (README, "Buckets").
    """
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    if not isinstance(value, str) or _engine_rounds_a_change_near(moment, ZoneInfo(zone)):
        moment = moment.astimezone(ZoneInfo(zone))
    return str(moment.isoformat())


def _engine_rounds_a_change_near(moment: dt.datetime, zone: ZoneInfo) -> bool:
    """Whether ``zone`` changes its offset within 15 minutes of ``moment`` at a local time that
    is not a whole quarter hour (what the engine's time zone tables cannot hold)."""
    start = (int(moment.timestamp()) - 900) // 60 * 60  # changes fall on whole minutes
    for second in range(start, start + 1800, 60):
        before = dt.datetime.fromtimestamp(second, zone)
        after = dt.datetime.fromtimestamp(second + 60, zone)
        if before.utcoffset() != after.utcoffset():
            local = dt.datetime.fromtimestamp(second + 60, dt.UTC) + (
                before.utcoffset() or dt.timedelta()
            )
            return local.minute % 15 != 0 or local.second != 0
    return False


def _date(value: Any, _zone: str) -> str:
    if isinstance(value, str):
        return dt.date.fromisoformat(value).isoformat()
    if isinstance(value, dt.datetime):
        raise TypeError(value)
    return str(value.isoformat())


_NORMAL: dict[str, Callable[[Any, str], Any]] = {
    "int": _integer,
    "decimal": _decimal,
    "float": _float,
    "string": _text,
    "uuid": _uuid,
    "bool": _bool,
    "timestamp": _instant,
    "bucket": _bucket,
    "date": _date,
}


def normal_rows(
    translation: Translation, rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Rows with every value normalized by its column's kind (hidden scale columns are floats)."""
    kinds = {c.key: c.kind for c in translation.columns}
    zone = translation.time_zone
    return [
        {key: normalize(kinds.get(key, "float"), value, zone) for key, value in row.items()}
        for row in rows
    ]


def compare(
    translation: Translation, expected: Answer, got: Answer, default_limit: int | None
) -> str | None:
    """None when ``got`` is the page a surface with ``default_limit`` must return of
    PostgreSQL's whole answer ``expected``, else what differs first.

    Ordered answers may swap rows whose order keys agree up to a float key that differs within
    the tolerance (the two engines round differently), across the page's edge too.
    """
    if got.error is not None:
        return f"the service failed: {got.error}"
    keys = [c.key for c in translation.columns]
    whole, have = normal_rows(translation, expected.rows), normal_rows(translation, got.rows)
    for index, row in enumerate(have):
        if list(row) != keys:
            return f"row {index} has keys {list(row)}, expected {keys}"
    want = translation.page(whole, default_limit)
    if len(want) != len(have):
        return f"{len(have)} rows, expected {len(want)}"
    if not translation.order_keys:
        pairs = zip(_by_group(translation, want), _by_group(translation, have), strict=True)
        for index, (expected_row, got_row) in enumerate(pairs):
            if difference := _row_difference(translation, index, expected_row, got_row):
                return difference
        return None
    ties = _tie_classes(translation, whole)
    positions = {_group(translation, row): position for position, row in enumerate(whole)}
    used: set[int] = set()
    for index, row in enumerate(have):
        position = positions.get(_group(translation, row))
        if (
            position in used
            or position is None
            or ties[position] != ties[translation.offset + index]
        ):
            return (
                f"row {index} is group {_group(translation, row)}, expected "
                f"{_group(translation, want[index])}"
            )
        used.add(position)
        if difference := _row_difference(translation, index, whole[position], row):
            return difference
    return None


def _group(translation: Translation, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in translation.group_keys)


def _by_group(translation: Translation, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` sorted by their group keys (any total order: it only pairs rows up)."""

    def key(row: Mapping[str, Any]) -> tuple[tuple[bool, str, Any], ...]:
        return tuple(
            (v is None, type(v).__name__, v if v is not None else 0)
            for v in _group(translation, row)
        )

    return sorted(rows, key=key)


def _row_difference(
    translation: Translation, index: int, expected: Mapping[str, Any], got: Mapping[str, Any]
) -> str | None:
    for column in translation.columns:
        scale = expected.get(column.scale) if column.scale else None
        if not _equal(column.kind, expected[column.key], got[column.key], scale):
            return (
                f"row {index} {column.key}: {got[column.key]!r}, expected {expected[column.key]!r}"
            )
    return None


def _tie_classes(translation: Translation, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """For each row of PostgreSQL's ordered answer, the first row of its run of rows that may
    come in any order: rows whose order keys are equal up to a float key within the tolerance
    (equal ones included: the service's value of either may be the larger by a rounding)."""
    columns = {c.key: c for c in translation.columns}
    classes: list[int] = []
    for position, row in enumerate(rows):
        tied = False
        for key in translation.order_keys if position else ():
            column, a, b = columns[key], rows[position - 1][key], row[key]
            if column.kind == "float" and a is not None and b is not None:
                scales = [r.get(column.scale or "") or 0.0 for r in (rows[position - 1], row)]
                scale = max(map(abs, scales))
                tied = _equal("float", a, b, scale)
                break
            if a != b or type(a) is not type(b):
                break
        classes.append(classes[-1] if tied else position)
    return classes


def _equal(kind: str, expected: Any, got: Any, scale: float | None) -> bool:
    if kind != "float" or not isinstance(expected, float) or not isinstance(got, float):
        return bool(expected == got) and type(expected) is type(got)
    bound = max(abs(expected), abs(got), abs(scale or 0.0))
    return abs(expected - got) <= FLOAT_TOLERANCE * bound


def describe(
    translation: Translation,
    expected: Answer,
    answers: Mapping[str, tuple[Answer, str]],
    max_rows: int = 30,
) -> str:
    """PostgreSQL's SQL and the page of its answer Query returns, then each disagreeing answer
    (once for the surfaces that gave the same) with what differs first."""

    def rows(answer: Answer, page: Sequence[dict[str, Any]] | None = None) -> Iterator[str]:
        if answer.error is not None:
            yield f"    error: {answer.error}"
            return
        normal = normal_rows(translation, answer.rows if page is None else page)
        for row in normal[:max_rows]:
            shown = {k: v for k, v in row.items() if not k.endswith("~scale")}
            yield "    " + json.dumps(shown, ensure_ascii=False, default=str)
        if len(normal) > max_rows:
            yield f"    ... {len(normal) - max_rows} more rows"

    page = translation.page(expected.rows, QUERY_DEFAULT_LIMIT)
    first = translation.offset
    lines = [
        f"PostgreSQL: {translation.sql}",
        f"PostgreSQL answer: {len(expected.rows)} rows, Query's page is rows "
        f"{first}..{first + len(page)}:",
        *rows(expected, page),
    ]
    alike: dict[tuple[str, ...], list[str]] = {}  # surfaces that answered the same
    for surface, (answer, difference) in answers.items():
        alike.setdefault((difference, *rows(answer)), []).append(surface)
    for (difference, *shown), surfaces in alike.items():
        lines += [f"{', '.join(surfaces)} answered ({difference}):", *shown]
    return "\n".join(lines)
