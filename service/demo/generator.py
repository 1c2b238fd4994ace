"""A deterministic, realistic demo history for the catalog's CRM, billing and event models.

The data is generated column-wise with numpy from one seed, so 1.2 M rows take a few seconds and
the same seed always yields the same rows. It is shaped like what the replication pipeline writes:
every model's table holds *all row versions* (``_version`` increasing per key, ``_is_deleted`` for
tombstones), so that a reader who forgets ``FINAL`` or the deleted-row guard gets visibly wrong
answers. About 10 % of keys have older versions, about 3 % of contacts and deals are soft-deleted in
their latest version, and about 1 % of keys end with a tombstone. A few hostile but valid strings
(quotes, backslashes, wildcard characters, non-ASCII, control characters) sit in ``email`` and
``title`` so that escaping is exercised by every query that touches them. Event models get the
product events of ``service.demo.events``, one version per event, about their tenants' contacts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from service.catalog import Catalog, FieldType, Model
from service.demo.arrow_columns import (
    DAY,
    HOUR,
    SECOND,
    Array,
    category_array,
    date_array,
    decimal_array,
    timestamp_array,
    uuid_array,
)
from service.demo.crm_vocabulary import (
    COMPANIES,
    COUNTRIES,
    COUNTRY_WEIGHTS,
    EMAIL_DOMAINS,
    FIRST_NAMES,
    HOSTILE_EMAILS,
    HOSTILE_TITLES,
    LAST_NAMES,
    PRODUCTS,
    TITLE_SUFFIXES,
)
from service.demo.events import EVENTS_PER_ROW, ContactPool, generate_events
from service.schema import arrow_type

# Part of the fingerprint: bump it whenever a change here changes the generated rows, so that a
# loaded demo database is recognised as stale.
GENERATOR_VERSION = 3
DEMO_TENANTS: tuple[str, ...] = ("acme", "globex", "initech", "umbrella", "hooli")
DEFAULT_SEED = 7
DEFAULT_ROWS = 1_200_000
DEFAULT_START = dt.datetime(2025, 10, 1, tzinfo=dt.UTC)
DEFAULT_END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
VERSION_COLUMN = "_version"
DELETED_COLUMN = "_is_deleted"

SUPERSEDED_SHARE = 0.10
SOFT_DELETED_SHARE = 0.03
TOMBSTONED_SHARE = 0.01
_TWO_OLDER_SHARE = 0.3
# Share of the requested current rows per model; contacts and deals are the bulk.
MODEL_SHARES: Mapping[str, float] = {
    "crm.contacts": 0.45,
    "crm.deals": 0.40,
    "billing.invoices": 0.15,
}
# Tenant sizes follow a Zipf-like law, so the largest tenant is several times the smallest.
_TENANT_SKEW = 1.1

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PROPERTY_LIST = pa.list_(pa.string())
# Activity grows threefold over the period, is low at weekends and follows office hours in
# Europe and the Americas (UTC hours).
_GROWTH = 3.0
_WEEKDAY_WEIGHTS = np.array([1.0, 1.06, 1.05, 1.0, 0.86, 0.3, 0.24])

_CONTACT_STATUSES = ("lead", "active", "inactive", "churned")
_LEAD_SOURCES = ("web", "referral", "ads", "event", "partner", "outbound")
_OPEN_STAGES = ("lead", "qualified", "proposal", "negotiation")
_DEAL_STAGES = (*_OPEN_STAGES, "closed_won", "closed_lost")
_STAGE_PROBABILITY = np.array([0.1, 0.25, 0.5, 0.75, 1.0, 0.0])
_CURRENCIES = ("USD", "EUR", "GBP", "CAD", "AUD", "JPY")
_CURRENCY_WEIGHTS = (52, 24, 12, 5, 4, 3)
_INVOICE_STATUSES = ("draft", "open", "paid", "overdue", "void")


class DemoError(ValueError):
    """The generator cannot produce data for the catalog or the parameters given."""


@dataclass(frozen=True)
class DemoDataset:
    """Every row version of every model, as the replication pipeline would have written them."""

    tables: Mapping[str, pa.Table]
    """Qualified model name -> tenant column, every catalog field (for an event model then its
    property key and value arrays), ``_version``, ``_is_deleted``."""
    keys: Mapping[str, tuple[str, ...]]
    """Qualified model name -> the columns identifying a row: tenant column, then primary key."""
    fingerprint: str
    start: dt.datetime
    end: dt.datetime

    def row_count(self) -> int:
        """Rows of all versions across all models."""
        return sum(table.num_rows for table in self.tables.values())


def dataset_fingerprint(
    catalog: Catalog,
    *,
    seed: int = DEFAULT_SEED,
    rows: int = DEFAULT_ROWS,
    tenants: Sequence[str] = DEMO_TENANTS,
    start: dt.datetime = DEFAULT_START,
    end: dt.datetime = DEFAULT_END,
    events: int | None = None,
) -> str:
    """A short digest naming the dataset these parameters generate, without generating it.

    The catalog's models (not its database) are part of it: a new field means new data.
    """
    description = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "rows": rows,
        "events": _event_count(rows, events),
        "tenants": list(tenants),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "models": {
            model.qualified_name: [
                model.table,
                model.tenant_column,
                list(model.primary_key),
                model.soft_delete_column,
                [
                    [f.name, f.type.value, f.nullable, f.precision, f.scale]
                    for f in model.fields.values()
                ],
                model.kind.value,
                None if model.events is None else dataclasses.asdict(model.events),
            ]
            for model in catalog.models.values()
        },
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return f"demo-v{GENERATOR_VERSION}-{digest[:20]}"


def generate_dataset(
    catalog: Catalog,
    *,
    seed: int = DEFAULT_SEED,
    rows: int = DEFAULT_ROWS,
    tenants: Sequence[str] = DEMO_TENANTS,
    start: dt.datetime = DEFAULT_START,
    end: dt.datetime = DEFAULT_END,
    events: int | None = None,
) -> DemoDataset:
    """Generate the demo history for the catalog's models.

    ``rows`` is the number of current rows (latest versions that are not tombstones) across the
    CDC models, split by ``MODEL_SHARES``; older versions and tombstones come on top. ``events``
    is the number of product events, about, split evenly over the catalog's event models;
    None means ``EVENTS_PER_ROW`` per row (3.6 M for the default rows). Events are about live
    contacts, so there are none without contacts. Models of the catalog the generator does not
    know get an empty table. Raises DemoError for bad parameters or a catalog whose required
    fields the generator cannot fill.
    """
    tenants = tuple(tenants)
    if rows < 0:
        raise DemoError("rows must not be negative")
    if events is not None and events < 0:
        raise DemoError("events must not be negative")
    if not tenants or len(set(tenants)) != len(tenants) or not all(tenants):
        raise DemoError("tenants must be distinct non-empty names")
    if start.tzinfo is None or end.tzinfo is None or end - start < dt.timedelta(days=1):
        raise DemoError("start and end must be time-zone aware and at least a day apart")
    clock = _Clock(_to_us(start), _to_us(end))
    weights = 1 / np.arange(1, len(tenants) + 1) ** _TENANT_SKEW
    world = _World(tenants, weights / weights.sum(), clock)
    sizes = _split(rows)
    rngs = {name: np.random.default_rng([seed, index]) for index, name in enumerate(MODEL_SHARES)}

    contacts = _contacts(world, rngs["crm.contacts"], sizes["crm.contacts"])
    parents = _Parents(contacts.tenant, contacts.created, contacts.ids)
    generated = {
        "crm.contacts": contacts,
        "crm.deals": _deals(world, rngs["crm.deals"], sizes["crm.deals"], parents),
        "billing.invoices": _invoices(
            world, rngs["billing.invoices"], sizes["billing.invoices"], parents
        ),
    }
    tables: dict[str, pa.Table] = {}
    keys: dict[str, tuple[str, ...]] = {}
    gone_contacts = np.zeros(len(contacts.ids), bool)
    for model in catalog.models.values():
        name = model.qualified_name
        keys[name] = (model.tenant_column, *model.primary_key)
        if name in generated and model.events is None:
            tables[name], tombstoned = _with_history(model, generated[name], world, rngs[name])
            if name == "crm.contacts":
                gone_contacts[tombstoned] = True
        else:
            tables[name] = _schema(model).empty_table()

    live = np.flatnonzero(~gone_contacts)
    pool = ContactPool(
        contacts.tenant[live],
        contacts.ids[live],
        contacts.created[live],
        contacts.columns["country"].take(pa.array(live)),
    )
    event_models = catalog.event_models()
    for index, model in enumerate(event_models):
        count = _event_count(rows, events) // len(event_models)
        # Streams of their own, after the CDC models': the CDC rows do not depend on events.
        rng = np.random.default_rng([seed, len(MODEL_SHARES) + index])
        columns = generate_events(
            model, pool, tenants=tenants, start=clock.start, end=clock.end, count=count, rng=rng
        )
        tables[model.qualified_name] = _event_table(model, columns)
    fingerprint = dataset_fingerprint(
        catalog, seed=seed, rows=rows, tenants=tenants, start=start, end=end, events=events
    )
    return DemoDataset(tables, keys, fingerprint, start, end)


def current_rows(dataset: DemoDataset, model_name: str) -> list[dict[str, Any]]:
    """The rows a correct engine sees for a model: per key, the highest version unless a tombstone.

    Soft-deleted rows are included (hiding them is the query's business). Rows are dicts of the
    tenant column and every field (no ``_version``/``_is_deleted``), ordered by key.
    """
    table = dataset.tables[model_name]
    key_columns = dataset.keys[model_name]
    value_columns = [c for c in table.column_names if c not in (VERSION_COLUMN, DELETED_COLUMN)]
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    versions = columns[VERSION_COLUMN]
    latest: dict[tuple[Any, ...], int] = {}
    for index in range(table.num_rows):
        key = tuple(columns[c][index] for c in key_columns)
        best = latest.get(key)
        if best is None or versions[index] > versions[best]:
            latest[key] = index
    return [
        {name: columns[name][index] for name in value_columns}
        for key, index in sorted(latest.items())
        if not columns[DELETED_COLUMN][index]
    ]


@dataclass(frozen=True)
class _Clock:
    """The period, in microseconds since the epoch (UTC)."""

    start: int
    end: int

    def sample(self, rng: np.random.Generator, count: int) -> Array:
        """Sorted moments with growth, weekly and daily seasonality."""
        hours = max((self.end - self.start) // HOUR, 1)
        index = np.arange(hours)
        absolute_hour = self.start // HOUR + index
        # 1970-01-01 was a Thursday: shift so that 0 is Monday.
        weekday = (absolute_hour // 24 + 3) % 7
        hour_of_day = absolute_hour % 24
        daily = (
            0.12
            + np.exp(-(((hour_of_day - 10) / 3.0) ** 2))
            + 0.9 * np.exp(-(((hour_of_day - 16) / 3.0) ** 2))
        )
        weight = _GROWTH ** (index / hours) * _WEEKDAY_WEIGHTS[weekday] * daily
        chosen = rng.choice(hours, size=count, p=weight / weight.sum())
        offsets = chosen * HOUR + rng.integers(0, HOUR, size=count)
        moments: Array = np.minimum(self.start + offsets, self.end - 1)
        moments.sort()
        return moments

    def between(self, base: Array, fraction: Array) -> Array:
        """The moment ``fraction`` (0 to 1) of the way from ``base`` to the end of the period."""
        room = self.end - 1 - base
        moment: Array = base + (room * fraction).astype(np.int64)
        return moment

    def after(self, rng: np.random.Generator, base: Array, mean: float) -> Array:
        """A moment an exponentially distributed lag after ``base``, within the period.

        A lag that would run past the end is drawn again uniformly from the time left, so that
        no moments pile up at the end of the period.
        """
        lag = rng.exponential(mean, size=len(base))
        room = self.end - 1 - base
        lag = np.where(lag < room, lag, rng.random(len(base)) * room)
        moment: Array = base + lag.astype(np.int64)
        return moment


@dataclass(frozen=True)
class _World:
    tenants: tuple[str, ...]
    weights: Array
    clock: _Clock


@dataclass(frozen=True)
class _Parents:
    """Rows others refer to (contacts), sorted by creation time."""

    tenant: Array
    created: Array
    ids: Array


@dataclass
class _Generated:
    """The latest version of every key of one model, before history is added."""

    tenant: Array
    ids: Array
    created: Array
    updated: Array
    tombstones: int
    columns: dict[str, pa.Array]
    revise: Callable[[Array, np.random.Generator], dict[str, pa.Array]]
    """Given key positions, the columns that differ in an older version of those keys."""


def _event_count(rows: int, events: int | None) -> int:
    return round(rows * EVENTS_PER_ROW) if events is None else events


def _split(rows: int) -> dict[str, int]:
    sizes = {name: round(rows * share) for name, share in MODEL_SHARES.items()}
    largest = max(sizes, key=lambda name: sizes[name])
    sizes[largest] += rows - sum(sizes.values())
    return sizes


def _keys(
    world: _World, rng: np.random.Generator, current: int
) -> tuple[int, int, Array, Array, Array]:
    """Key count, tombstone count, tenant per key, creation time and id.

    Tombstoned keys come on top of the current ones, so that exactly ``current`` rows remain.
    """
    tombstones = round(current * TOMBSTONED_SHARE / (1 - TOMBSTONED_SHARE))
    count = current + tombstones
    tenant = rng.choice(len(world.tenants), size=count, p=world.weights)
    created = world.clock.sample(rng, count)
    # Ids are a global serial, assigned in creation order as PostgreSQL would.
    ids = np.arange(1, count + 1, dtype=np.int64)
    return count, tombstones, tenant, created, ids


def _contacts(world: _World, rng: np.random.Generator, current: int) -> _Generated:
    count, tombstones, tenant, created, ids = _keys(world, rng, current)
    clock = world.clock
    status = rng.choice(len(_CONTACT_STATUSES), size=count, p=[0.18, 0.52, 0.20, 0.10])
    value = np.round(rng.lognormal(np.log(850), 1.25, size=count) * 100).astype(np.int64)
    value = np.where(status == 0, 0, value)
    score_missing = rng.random(count) < 0.18
    score = np.round(rng.beta(2.2, 3.5, size=count) * 100, 1)
    subscribed = rng.random(count) < np.where(status == 3, 0.2, 0.65)
    updated = clock.after(rng, created, 25 * DAY)
    deleted, updated = _soft_delete(rng, clock, updated)
    email = pc.utf8_lower(
        pc.binary_join_element_wise(
            _pick(rng, FIRST_NAMES, count),
            ".",
            _pick(rng, LAST_NAMES, count),
            pc.cast(pa.array(ids), pa.string()),
            "@",
            _pick(rng, EMAIL_DOMAINS, count),
            "",
        )
    )
    columns = {
        "id": pa.array(ids),
        "email": _hostile(rng, email, tenant, ids, HOSTILE_EMAILS),
        "status": category_array(_CONTACT_STATUSES, status),
        "country": category_array(COUNTRIES, _weighted(rng, COUNTRY_WEIGHTS, count)),
        "lead_source": category_array(
            _LEAD_SOURCES,
            rng.choice(len(_LEAD_SOURCES), size=count, p=[0.34, 0.2, 0.18, 0.1, 0.1, 0.08]),
            rng.random(count) < 0.12,
        ),
        "lifetime_value": decimal_array(value),
        "score": pa.array(score, mask=score_missing),
        "is_subscribed": pa.array(subscribed),
        "created_at": timestamp_array(created),
        "updated_at": timestamp_array(updated),
        "deleted_at": timestamp_array(deleted, deleted < 0),
    }

    def revise(key: Array, rng: np.random.Generator) -> dict[str, pa.Array]:
        # An earlier state: still a lead, worth less, scored lower, not deleted yet.
        rows = len(key)
        earlier_score = np.round(np.maximum(score[key] - rng.uniform(5, 20, rows), 0), 1)
        return {
            "status": category_array(_CONTACT_STATUSES, np.zeros(rows, np.int64)),
            "lifetime_value": decimal_array(np.round(value[key] * rng.uniform(0.3, 0.9, rows))),
            "score": pa.array(earlier_score, mask=score_missing[key]),
            "deleted_at": timestamp_array(np.zeros(rows), np.ones(rows, bool)),
        }

    return _Generated(tenant, ids, created, updated, tombstones, columns, revise)


def _deals(world: _World, rng: np.random.Generator, current: int, parents: _Parents) -> _Generated:
    count, tombstones, tenant, created, ids = _keys(world, rng, current)
    clock = world.clock
    age = (clock.end - created).astype(np.float64)
    closed = rng.random(count) < 1 - np.exp(-age / (75 * DAY))
    won = rng.random(count) < 0.37
    stage = np.where(
        closed,
        np.where(won, 4, 5),
        rng.choice(len(_OPEN_STAGES), size=count, p=[0.34, 0.28, 0.22, 0.16]),
    )
    noise = np.round(rng.normal(0, 0.05, size=count), 2)
    probability = np.where(
        closed, _STAGE_PROBABILITY[stage], np.clip(_STAGE_PROBABILITY[stage] + noise, 0.01, 0.99)
    )
    closed_at = clock.between(created, rng.beta(1.6, 3.0, size=count))
    updated = np.where(
        closed,
        clock.after(rng, closed_at, 0.5 * DAY),
        clock.after(rng, created, 12 * DAY),
    )
    deleted, updated = _soft_delete(rng, clock, updated)
    expected_close = created // DAY + rng.integers(21, 150, size=count)
    amount = np.round(rng.lognormal(np.log(14_000), 1.05, size=count) * 100).astype(np.int64)
    title = pc.binary_join_element_wise(
        _pick(rng, COMPANIES, count),
        " \u2013 ",
        _pick(rng, PRODUCTS, count),
        _pick(rng, TITLE_SUFFIXES, count),
        "",
    )
    columns = {
        "id": pa.array(ids),
        "contact_id": pa.array(_pick_parents(rng, tenant, created, parents)),
        "owner_id": pa.array(_owners(rng, world, tenant)),
        "title": _hostile(rng, title, tenant, ids, HOSTILE_TITLES),
        "stage": category_array(_DEAL_STAGES, stage),
        "amount": decimal_array(amount),
        "currency": category_array(_CURRENCIES, _weighted(rng, _CURRENCY_WEIGHTS, count)),
        "probability": pa.array(probability.astype(np.float64)),
        "created_at": timestamp_array(created),
        "closed_at": timestamp_array(closed_at, ~closed),
        "expected_close_date": date_array(expected_close, rng.random(count) < 0.15),
        "updated_at": timestamp_array(updated),
        "deleted_at": timestamp_array(deleted, deleted < 0),
    }

    def revise(key: Array, rng: np.random.Generator) -> dict[str, pa.Array]:
        # An earlier point in the pipeline: an open stage before the current one, another amount.
        rows = len(key)
        later = stage[key]
        earlier = np.where(
            later >= len(_OPEN_STAGES),
            rng.integers(0, len(_OPEN_STAGES), rows),
            (rng.random(rows) * later).astype(np.int64),
        )
        return {
            "stage": category_array(_DEAL_STAGES, earlier),
            "probability": pa.array(_STAGE_PROBABILITY[earlier]),
            "amount": decimal_array(np.round(amount[key] * rng.uniform(0.6, 1.25, rows))),
            "closed_at": timestamp_array(np.zeros(rows), np.ones(rows, bool)),
            "deleted_at": timestamp_array(np.zeros(rows), np.ones(rows, bool)),
        }

    return _Generated(tenant, ids, created, updated, tombstones, columns, revise)


def _invoices(
    world: _World, rng: np.random.Generator, current: int, parents: _Parents
) -> _Generated:
    count, tombstones, tenant, issued, ids = _keys(world, rng, current)
    clock = world.clock
    age = (clock.end - issued).astype(np.float64)
    due = issued // DAY + rng.choice(np.array([14, 30, 30, 45, 60]), size=count)
    void = rng.random(count) < 0.03
    paid = ~void & (rng.random(count) < 1 - np.exp(-age / (18 * DAY)))
    draft = ~void & ~paid & (age < 3 * DAY) & (rng.random(count) < 0.5)
    overdue = ~void & ~paid & ~draft & (due < clock.end // DAY)
    status = np.select([draft, paid, overdue, void], [0, 2, 3, 4], default=1)
    paid_at = clock.after(rng, issued, 10 * DAY)
    updated = np.where(
        paid,
        paid_at,
        np.where(void, clock.after(rng, issued, 5 * DAY), clock.after(rng, issued, 0.3 * DAY)),
    )
    total = np.round(rng.lognormal(np.log(1_200), 0.95, size=count) * 100).astype(np.int64)
    columns = {
        "id": pa.array(ids),
        "customer_id": pa.array(_pick_parents(rng, tenant, issued, parents)),
        "external_ref": uuid_array(rng, count),
        "status": category_array(_INVOICE_STATUSES, status),
        "total": decimal_array(total),
        "currency": category_array(_CURRENCIES, _weighted(rng, _CURRENCY_WEIGHTS, count)),
        "issued_at": timestamp_array(issued),
        "due_date": date_array(due),
        "paid_at": timestamp_array(paid_at, ~paid),
        "updated_at": timestamp_array(updated),
    }

    def revise(key: Array, rng: np.random.Generator) -> dict[str, pa.Array]:
        # A draft, or an invoice still open before it was paid, voided or fell overdue; its
        # total was corrected since.
        rows = len(key)
        return {
            "status": category_array(_INVOICE_STATUSES, np.where(status[key] >= 2, 1, 0)),
            "total": decimal_array(np.round(total[key] * rng.uniform(0.85, 1.15, rows))),
            "paid_at": timestamp_array(np.zeros(rows), np.ones(rows, bool)),
        }

    return _Generated(tenant, ids, issued, updated, tombstones, columns, revise)


def _with_history(
    model: Model, generated: _Generated, world: _World, rng: np.random.Generator
) -> tuple[pa.Table, Array]:
    """Latest versions plus older versions and tombstones, in the order a CDC log has them.

    Also the positions of the keys that end with a tombstone.
    """
    count = len(generated.ids)
    clock = world.clock
    latest_version = generated.updated.astype(np.uint64) * 4 + 2
    latest = _to_table(model, generated, world, latest_version, np.zeros(count, np.uint8))

    # Older versions: ordinal 0 (and 1) before the latest (2); a tombstone is 3. Versions are
    # updated_at in microseconds times four plus the ordinal: increasing per key, like an LSN.
    superseded = np.flatnonzero(rng.random(count) < SUPERSEDED_SHARE)
    older_count = 1 + (rng.random(len(superseded)) < _TWO_OLDER_SHARE)
    key = np.repeat(superseded, older_count)
    ordinal = np.arange(len(key)) - np.repeat(np.cumsum(older_count) - older_count, older_count)
    fraction = (ordinal + rng.random(len(key))) / np.repeat(older_count, older_count) * 0.95
    created, updated = generated.created[key], generated.updated[key]
    older_updated = created + (fraction * (updated - created)).astype(np.int64)
    order = np.argsort(older_updated, kind="stable")
    key, ordinal, older_updated = key[order], ordinal[order], older_updated[order]
    older = latest.take(pa.array(key))
    replacements = generated.revise(key, rng)
    replacements["updated_at"] = timestamp_array(older_updated)
    replacements[VERSION_COLUMN] = pa.array(
        older_updated.astype(np.uint64) * 4 + ordinal.astype(np.uint64)
    )
    older = _replace(older, replacements)

    tombstoned = np.sort(rng.choice(count, size=generated.tombstones, replace=False))
    last = generated.updated[tombstoned]
    deleted_at = clock.between(last, rng.random(len(tombstoned)))
    tombstones = _replace(
        latest.take(pa.array(tombstoned)),
        {
            VERSION_COLUMN: pa.array(deleted_at.astype(np.uint64) * 4 + 3),
            DELETED_COLUMN: pa.array(np.ones(len(tombstoned), np.uint8)),
        },
    )
    return pa.concat_tables([older, latest, tombstones]), tombstoned


def _schema(model: Model) -> pa.Schema:
    fields = [pa.field(model.tenant_column, pa.string(), nullable=False)]
    fields += [pa.field(s.name, arrow_type(s), nullable=s.nullable) for s in model.fields.values()]
    if model.events is not None:
        fields += [
            pa.field(model.events.key_column, _PROPERTY_LIST, nullable=False),
            pa.field(model.events.value_column, _PROPERTY_LIST, nullable=False),
        ]
    fields += [
        pa.field(VERSION_COLUMN, pa.uint64(), nullable=False),
        pa.field(DELETED_COLUMN, pa.uint8(), nullable=False),
    ]
    return pa.schema(fields)


def _to_table(
    model: Model, generated: _Generated, world: _World, version: Array, deleted: Array
) -> pa.Table:
    """The catalog's columns in its order and types; fields the generator lacks must be nullable."""
    count = len(generated.ids)
    arrays = [category_array(world.tenants, generated.tenant)]
    arrays += [
        _field_array(model, spec.name, generated.columns.get(spec.name), count)
        for spec in model.fields.values()
    ]
    arrays += [pa.array(version), pa.array(deleted)]
    return pa.Table.from_arrays(arrays, schema=_schema(model))


def _event_table(model: Model, columns: Mapping[str, pa.Array]) -> pa.Table:
    """Generated events in the catalog's columns: fields it does not know must be nullable.

    Every event is written once: version 1, never deleted.
    """
    roles = model.events
    if roles is None:
        raise ValueError(f"{model.qualified_name} is not an event model")
    if model.fields[roles.actor].type is FieldType.UUID:
        raise DemoError(
            f"{model.qualified_name}.{roles.actor}: the demo's actors are contact ids, not UUIDs"
        )
    count = len(columns[model.tenant_column])
    arrays = [columns[model.tenant_column]]
    arrays += [_field_array(model, name, columns.get(name), count) for name in model.fields]
    arrays += [
        columns[roles.key_column],
        columns[roles.value_column],
        pa.array(np.ones(count, np.uint64)),
        pa.array(np.zeros(count, np.uint8)),
    ]
    return pa.Table.from_arrays(arrays, schema=_schema(model))


def _field_array(model: Model, name: str, array: pa.Array | None, count: int) -> pa.Array:
    """``array`` in the field's type, or nulls if the generator has none; DemoError if it can't."""
    spec = model.fields[name]
    target = arrow_type(spec)
    if array is None:
        if not spec.nullable:
            raise DemoError(f"the demo generator has no values for {model.qualified_name}.{name}")
        return pa.nulls(count, target)
    if array.type != target:
        try:
            array = array.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DemoError(
                f"{model.qualified_name}.{name}: the demo's {array.type} values are no {target}"
            ) from exc
    if not spec.nullable and array.null_count:
        raise DemoError(f"{model.qualified_name}.{name} is not nullable in the catalog")
    return array


def _replace(table: pa.Table, columns: Mapping[str, pa.Array]) -> pa.Table:
    """``table`` with some columns swapped; names the catalog does not have are ignored."""
    for name, array in columns.items():
        index = table.schema.get_field_index(name)
        if index >= 0:
            field = table.schema.field(index)
            table = table.set_column(index, field, array.cast(field.type))
    return table


def _soft_delete(rng: np.random.Generator, clock: _Clock, updated: Array) -> tuple[Array, Array]:
    """Deletion times (-1 where not deleted) and updated_at moved to the deletion."""
    deleted_mask = rng.random(len(updated)) < SOFT_DELETED_SHARE
    moment = clock.between(updated, rng.random(len(updated)))
    deleted = np.where(deleted_mask, moment, -1)
    return deleted, np.where(deleted_mask, moment, updated)


def _pick_parents(
    rng: np.random.Generator, tenant: Array, moment: Array, parents: _Parents
) -> Array:
    """For each child, a parent of the same tenant that existed by then, favouring recent ones.

    A child whose tenant has no parents at all (only in tiny datasets) refers to id 0.
    """
    picked = np.zeros(len(tenant), np.int64)
    for value in np.unique(tenant):
        children = np.flatnonzero(tenant == value)
        own = parents.tenant == value
        times, ids = parents.created[own], parents.ids[own]
        if not len(ids):
            continue
        known = np.maximum(np.searchsorted(times, moment[children], side="right"), 1)
        position = np.minimum(
            (known * rng.random(len(children)) ** 0.7).astype(np.int64), known - 1
        )
        picked[children] = ids[position]
    return picked


def _owners(rng: np.random.Generator, world: _World, tenant: Array) -> Array:
    """Sales reps: more of them at larger tenants, a few of them closing most deals."""
    owner = np.zeros(len(tenant), np.int64)
    for index, weight in enumerate(world.weights):
        members = np.flatnonzero(tenant == index)
        staff = max(3, round(60 * weight))
        share = 1 / np.arange(1, staff + 1) ** 0.8
        owner[members] = (
            (index + 1) * 1000 + 1 + rng.choice(staff, size=len(members), p=share / share.sum())
        )
    return owner


def _hostile(
    rng: np.random.Generator,
    values: pa.Array,
    tenant: Array,
    ids: Array,
    templates: Sequence[str],
) -> pa.Array:
    """Replace a few values of every tenant by hostile ones, each template several times.

    Each hostile value carries its row's id, so it stays unique like the value it replaces.
    """
    chosen: dict[int, str] = {}
    for value in np.unique(tenant):
        members = np.flatnonzero(tenant == value)
        count = min(len(members), max(3 * len(templates), len(members) // 300))
        positions = np.sort(rng.choice(members, size=count, replace=False))
        for number, position in enumerate(positions.tolist()):
            chosen[position] = templates[number % len(templates)].format(id=int(ids[position]))
    if not chosen:
        return values
    mask = np.zeros(len(values), bool)
    mask[list(chosen)] = True
    replacements = pa.array([chosen[position] for position in sorted(chosen)], pa.string())
    return pc.replace_with_mask(values, pa.array(mask), replacements)


def _pick(rng: np.random.Generator, choices: Sequence[str], count: int) -> pa.Array:
    return category_array(choices, rng.integers(0, len(choices), size=count))


def _weighted(rng: np.random.Generator, weights: Sequence[float], count: int) -> Array:
    probabilities = np.asarray(weights, np.float64)
    return rng.choice(len(weights), size=count, p=probabilities / probabilities.sum())


def _to_us(moment: dt.datetime) -> int:
    delta = moment.astimezone(dt.UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND + delta.microseconds
