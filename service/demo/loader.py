"""Load a generated demo dataset into the embedded engine, once per dataset.

Loading creates the catalog's database and tables, empties the model tables, appends every row
version in batches, records per table the time the data is complete up to (the sync state the
service reports as ``lastSyncAt``) and finally the dataset's fingerprint. The fingerprint is
written last and cleared first, so an interrupted load is never taken for a complete one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from service.backends.base import AnalyticsBackend
from service.backends.dialect import backend_dialect
from service.catalog import Catalog, Model
from service.demo.generator import (
    DEFAULT_END,
    DEFAULT_ROWS,
    DEFAULT_SEED,
    DEFAULT_START,
    DELETED_COLUMN,
    DEMO_TENANTS,
    VERSION_COLUMN,
    DemoDataset,
    dataset_fingerprint,
    generate_dataset,
)
from service.schema import SYNC_STATE_TABLE, all_ddl, sync_state_table

DEMO_SOURCE = "demo"
DEMO_STATE_TABLE = "_demo_state"
DEFAULT_BATCH_ROWS = 100_000
Progress = Callable[[str, int, int], None]
"""Called after every batch with the model's qualified name, rows written so far, total rows."""

_TIMESTAMP = pa.timestamp("us", tz="UTC")


def demo_state_ddl(catalog: Catalog) -> str:
    """The one-row table naming the dataset the database holds (empty while a load runs)."""
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{DEMO_STATE_TABLE}` (\n"
        "    `name` String,\n"
        "    `fingerprint` String,\n"
        "    `updated_at` DateTime64(6, 'UTC')\n"
        ") ENGINE = ReplacingMergeTree(updated_at)\n"
        "ORDER BY name"
    )


async def load_dataset(
    backend: AnalyticsBackend,
    catalog: Catalog,
    dataset: DemoDataset,
    progress: Progress | None = None,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> None:
    """Replace the catalog's model tables by ``dataset`` and record its sync state and fingerprint.

    A model of the catalog the dataset has no table for is emptied and left empty.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be positive")
    dialect = await backend_dialect(backend)
    for statement in [*all_ddl(catalog, dialect=dialect), demo_state_ddl(catalog)]:
        await backend.command(statement)
    await _record_fingerprint(backend, catalog, "")
    for model in catalog.models.values():
        await backend.command(f"TRUNCATE TABLE `{catalog.database}`.`{model.table}`")

    completed: list[tuple[str, dt.datetime]] = []
    for model in catalog.models.values():
        data = dataset.tables.get(model.qualified_name)
        total = data.num_rows if data is not None else 0
        if data is not None and total:
            data = data.select(_columns(model))
            written = 0
            for offset in range(0, total, batch_rows):
                batch = data.slice(offset, batch_rows)
                written += await backend.insert_arrow(catalog.database, model.table, batch)
                if progress is not None:
                    progress(model.qualified_name, written, total)
        elif progress is not None:
            progress(model.qualified_name, 0, 0)
        completed.append((model.table, _complete_up_to(model, data)))

    now = _now()
    await backend.insert_arrow(
        catalog.database,
        SYNC_STATE_TABLE,
        sync_state_table(
            [
                {
                    "table_name": table,
                    "source": DEMO_SOURCE,
                    "last_sync_at": moment,
                    "updated_at": now,
                }
                for table, moment in completed
            ]
        ),
    )
    await _record_fingerprint(backend, catalog, dataset.fingerprint)


async def dataset_fingerprint_loaded(
    backend: AnalyticsBackend, catalog: Catalog, fingerprint: str
) -> bool:
    """Whether the catalog's database holds the completely loaded dataset named ``fingerprint``."""
    exists = await backend.query_rows(
        "SELECT count() AS n FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": catalog.database, "t": DEMO_STATE_TABLE},
    )
    if not exists[0]["n"]:
        return False
    # The database name comes from the validated catalog, never from a caller.
    rows = await backend.query_rows(
        f"SELECT fingerprint FROM `{catalog.database}`.`{DEMO_STATE_TABLE}` FINAL "  # noqa: S608
        "WHERE name = 'dataset'"
    )
    return bool(fingerprint) and bool(rows) and rows[0]["fingerprint"] == fingerprint


async def ensure_demo_loaded(
    backend: AnalyticsBackend,
    catalog: Catalog,
    *,
    seed: int = DEFAULT_SEED,
    rows: int = DEFAULT_ROWS,
    tenants: Sequence[str] = DEMO_TENANTS,
    start: dt.datetime = DEFAULT_START,
    end: dt.datetime = DEFAULT_END,
    events: int | None = None,
    progress: Progress | None = None,
) -> bool:
    """Generate and load the demo dataset unless exactly that one is loaded; True if it loaded.

    The parameters are ``generate_dataset``'s.
    """
    fingerprint = dataset_fingerprint(
        catalog, seed=seed, rows=rows, tenants=tenants, start=start, end=end, events=events
    )
    if await dataset_fingerprint_loaded(backend, catalog, fingerprint):
        return False
    dataset = generate_dataset(
        catalog, seed=seed, rows=rows, tenants=tenants, start=start, end=end, events=events
    )
    await load_dataset(backend, catalog, dataset, progress)
    return True


def _columns(model: Model) -> list[str]:
    columns = [model.tenant_column, *model.fields]
    if model.events is not None:
        columns += [model.events.key_column, model.events.value_column]
    return [*columns, VERSION_COLUMN, DELETED_COLUMN]


def _complete_up_to(model: Model, data: pa.Table | None) -> dt.datetime:
    """The source time the data is complete up to: its newest ``updated_at``, or event time."""
    column = "updated_at" if model.events is None else model.events.timestamp
    if data is None or not data.num_rows or column not in data.column_names:
        return _now()
    newest = pc.max(data.column(column)).as_py()
    return newest if isinstance(newest, dt.datetime) else _now()


async def _record_fingerprint(
    backend: AnalyticsBackend, catalog: Catalog, fingerprint: str
) -> None:
    await backend.insert_arrow(
        catalog.database,
        DEMO_STATE_TABLE,
        pa.table(
            {
                "name": pa.array(["dataset"], pa.string()),
                "fingerprint": pa.array([fingerprint], pa.string()),
                "updated_at": pa.array([_now()], _TIMESTAMP),
            }
        ),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
