"""The result cache's key: pure, no I/O.

An entry is addressed by everything its answer depends on: the tenant, the engine and database,
the compiled SQL with its parameters and settings, and the position of every table the query
reads (``TablePosition``). Two requests with the same key read the same rows of the same tables
through the same statement, so they have the same answer: a value stored under a key never has
to change, and nothing is ever invalidated; new data makes new keys and the old entries age out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.query.compiler import CompiledQuery

#: Bumped whenever the key's input or the stored format changes: old entries are then unreachable.
KEY_VERSION = 2

#: SQL functions whose value depends on when or how often they run, not only on the data: a
#: statement using one is never cached (a behavioural segment's window ends at ``now64()``).
_VOLATILE = re.compile(
    r"\b(now|now64|nowInBlock|today|yesterday|rand|rand32|rand64|randConstant|randCanonical|"
    r"generateUUIDv4|generateUUIDv7|generateULID|generateSnowflakeID|currentUser|queryID|"
    r"initialQueryID|uptime|rowNumberInAllBlocks|blockNumber|timezone|serverTimeZone|hostName|"
    r"version)\s*\(",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class TablePosition:
    """Where one table stands: its replication report and the data the engine holds.

    ``last_sync_at`` is the table's own ``lastSyncAt`` (the newest report in the sync-state
    table, None if none); ``parts`` and ``fingerprint`` are the count of the table's active data
    parts and a hash of their paths. Every write to a MergeTree table (insert, merge, mutation)
    adds a part with a new name, so the fingerprint moves with every write, including the event
    sink's flushes between two of its sync-state reports.
    """

    table: str
    last_sync_at: dt.datetime | None
    parts: int
    fingerprint: int

    @property
    def synced(self) -> bool:
        """Whether anything has ever reported the table (an unreported one is never cached)."""
        return self.last_sync_at is not None


def volatile(sql: str) -> bool:
    """Whether ``sql`` calls a function whose value is not determined by the data it reads."""
    return _VOLATILE.search(sql) is not None


def cache_key(
    tenant: str,
    scope: str,
    query: CompiledQuery,
    positions: Mapping[str, TablePosition],
) -> str | None:
    """The hex key of ``query``'s answer for ``tenant``, or None when it must not be cached.

    ``scope`` names the engine and database (``chdb:analytics``): one Redis may serve several.
    None when a table the query reads has never been synced (``lastSyncAt`` unknown: nothing to
    promise), is missing from ``positions``, or when the SQL is volatile (``volatile``).
    """
    tables = _ordered(query.tables)
    if not tables or volatile(query.sql):
        return None
    chosen = [positions.get(table) for table in tables]
    if any(position is None or not position.synced for position in chosen):
        return None
    document = {
        "v": KEY_VERSION,
        "tenant": tenant,
        "scope": scope,
        "sql": query.sql,
        "parameters": sorted(query.parameters.items()),
        "settings": sorted(query.settings.items()),
        "positions": [_position_json(p) for p in chosen if p is not None],
    }
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def oldest_sync_at(
    positions: Mapping[str, TablePosition], tables: Sequence[str]
) -> dt.datetime | None:
    """The ``lastSyncAt`` of an answer read from ``tables``: the oldest of theirs.

    None if any of them is unknown, as in ``service.sync_status.oldest_sync``.
    """
    found = [positions[t].last_sync_at if t in positions else None for t in tables]
    if not found or any(at is None for at in found):
        return None
    return min(at for at in found if at is not None)


def _ordered(tables: Sequence[str]) -> list[str]:
    """Each table once, in a fixed order (the key must not depend on the join order's spelling)."""
    return sorted(set(tables))


def _position_json(position: TablePosition) -> list[object]:
    at = position.last_sync_at
    stamp = at.astimezone(dt.UTC).isoformat() if at is not None else None
    return [position.table, stamp, position.parts, position.fingerprint]
