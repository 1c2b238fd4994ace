"""The rows the API tests (gRPC and REST) query, with answers worked out by hand.

A handful of deals with superseded versions, a soft delete, a tombstone, a row before the date
filter and another tenant's row matching every filter, so DESIGN.md's example has one right answer.
"""

from __future__ import annotations

from service.backends.base import AnalyticsBackend
from service.catalog import Catalog
from service.schema import SYNC_STATE_TABLE, all_ddl

DESIGN_EXAMPLE = {
    "model": "deals",
    "aggregate": "sum",
    "field": "amount",
    "groupBy": "created_at",
    "groupByInterval": "day",
    "filters": {
        "stage": "eq.closed_won",
        "created_at": "gte.2026-01-01T00:00:00Z",
        "deleted_at": "is.null",
    },
    "metrics": [{"aggregate": "count"}, {"aggregate": "avg", "field": "amount"}],
    "order": "created_at.asc",
    "limit": 100,
}

# (tenant, id, stage, amount, created_at, deleted_at, version, is_deleted)
DEALS = [
    ("acme", 1, "closed_won", "100.50", "2026-01-02 10:00:00", None, 1, 0),
    ("acme", 2, "closed_won", "200.25", "2026-01-02 23:30:00", None, 1, 0),
    ("acme", 3, "closed_won", "50.00", "2026-01-03 08:00:00", None, 1, 0),
    # Superseded: version 1 was closed_won 9999, version 2 is lost; only version 2 counts.
    ("acme", 4, "closed_won", "9999.00", "2026-01-03 09:00:00", None, 1, 0),
    ("acme", 4, "closed_lost", "9999.00", "2026-01-03 09:00:00", None, 2, 0),
    # Soft-deleted: excluded by the explicit deleted_at filter.
    ("acme", 5, "closed_won", "7777.00", "2026-01-03 10:00:00", "2026-02-01 00:00:00", 1, 0),
    # Hard-deleted by a tombstone version.
    ("acme", 6, "closed_won", "5555.00", "2026-01-03 11:00:00", None, 1, 0),
    ("acme", 6, "closed_won", "5555.00", "2026-01-03 11:00:00", None, 2, 1),
    # Before the date filter.
    ("acme", 7, "closed_won", "1.00", "2025-12-31 23:59:59", None, 1, 0),
    # Another tenant, matching every filter: must never be seen by acme.
    ("globex", 8, "closed_won", "123456.00", "2026-01-02 12:00:00", None, 1, 0),
]


async def load_deals(backend: AnalyticsBackend, catalog: Catalog) -> None:
    """Create the catalog's tables and write DEALS and the deals table's sync state."""
    for statement in all_ddl(catalog):
        await backend.command(statement)
    values = ", ".join(
        f"('{t}', {i}, 1, 1, 'deal {i}', '{s}', {a}, 'EUR', 0.5, '{c}', NULL, NULL, '{c}', "
        f"{'NULL' if d is None else repr(d)}, {v}, {x})"
        for t, i, s, a, c, d, v, x in DEALS
    )
    await backend.command(
        f"INSERT INTO `{catalog.database}`.crm_deals (tenant_id, id, contact_id, owner_id, title, "
        "stage, amount, currency, probability, created_at, closed_at, expected_close_date, "
        f"updated_at, deleted_at, _version, _is_deleted) VALUES {values}"
    )
    await backend.command(
        f"INSERT INTO `{catalog.database}`.`{SYNC_STATE_TABLE}` "
        "(table_name, source, last_sync_at, updated_at) "
        "VALUES ('crm_deals', 'test', '2026-04-15 10:29:55', now64(6))"
    )


async def load_slow_contacts(backend: AnalyticsBackend, catalog: Catalog, rows: int) -> str:
    """``rows`` contacts of tenant 'slow': enough work to outlast a tiny time budget."""
    await backend.command(
        f"INSERT INTO `{catalog.database}`.crm_contacts (tenant_id, id, email, status, "
        "country, lifetime_value, is_subscribed, created_at, updated_at, _version, _is_deleted) "
        "SELECT 'slow', number, concat('c', toString(number), '@example.com'), 'active', 'DE', "
        f"number % 1000, true, now64(6) - number, now64(6), 1, 0 FROM numbers({rows})"
    )
    return "slow"
