"""SegmentStore: the segment definitions of every tenant, in the engine beside the data.

One ReplacingMergeTree table, ``<database>._segments``, keyed by (tenant, name): a save appends
the definition with a newer version, a delete appends a tombstone, and FINAL reads the latest.
So definitions are as durable as the replicas (the embedded engine's data directory, or the
ClickHouse server), survive restarts, and are shared by every service process on one engine.
Every read and write names the tenant; one tenant never reads another's rows.
"""

from __future__ import annotations

import time

import pyarrow as pa
import structlog

from service.backends.base import AnalyticsBackend
from service.catalog import ActorSegment, Catalog
from service.errors import AnalyticsError
from service.segments.definition import SegmentDefinition, resolve_segment

_log = structlog.get_logger(__name__)
SEGMENTS_TABLE = "_segments"
_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("name", pa.string()),
        ("definition", pa.string()),
        ("version", pa.uint64()),
        ("deleted", pa.uint8()),
    ]
)


def segments_ddl(catalog: Catalog) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the segments (types every supported server has)."""
    return (
        f"CREATE TABLE IF NOT EXISTS `{catalog.database}`.`{SEGMENTS_TABLE}` (\n"
        "    `tenant_id` String,\n"
        "    `name` String,\n"
        "    `definition` String,\n"
        "    `version` UInt64,\n"
        "    `deleted` UInt8\n"
        ") ENGINE = ReplacingMergeTree(version)\n"
        "ORDER BY (tenant_id, name)"
    )


class SegmentStore:
    """Reads and writes the segments of a catalog's database."""

    def __init__(self, catalog: Catalog, backend: AnalyticsBackend) -> None:
        """Keep segments in ``catalog``'s database on ``backend``."""
        self._catalog = catalog
        self._backend = backend
        self._last_version = 0

    async def prepare(self) -> None:
        """Create the table if it is missing."""
        await self._backend.command(segments_ddl(self._catalog))

    async def definitions(self, tenant: str) -> dict[str, SegmentDefinition]:
        """The tenant's live segments by name."""
        rows = await self._backend.query_rows(
            # Identifiers from the catalog; the tenant is a bound parameter.
            f"SELECT name, definition, deleted FROM `{self._catalog.database}`."  # noqa: S608
            f"`{SEGMENTS_TABLE}` FINAL WHERE tenant_id = {{tenant:String}} ORDER BY name",
            {"tenant": tenant},
        )
        return {
            str(row["name"]): SegmentDefinition.from_json(str(row["definition"]))
            for row in rows
            if not row["deleted"]
        }

    async def resolved(self, tenant: str) -> dict[str, ActorSegment]:
        """The tenant's segments resolved against the catalog, as compilers read them.

        A segment the catalog no longer supports (its model or a field gone) is left out: a
        request naming it is refused as naming an unknown segment.
        """
        found: dict[str, ActorSegment] = {}
        for name, definition in (await self.definitions(tenant)).items():
            try:
                found[name] = resolve_segment(definition, self._catalog)
            except AnalyticsError as error:
                _log.warning("segment no longer valid", segment=name, reason=error.message)
        return found

    async def save(self, tenant: str, definition: SegmentDefinition) -> None:
        """Write ``definition`` (replacing the tenant's segment of that name, if any)."""
        await self._write(tenant, definition.name, definition.to_json(), deleted=0)

    async def delete(self, tenant: str, name: str) -> None:
        """Remove the tenant's segment ``name``."""
        await self._write(tenant, name, "", deleted=1)

    async def _write(self, tenant: str, name: str, text: str, *, deleted: int) -> None:
        # Microseconds, strictly increasing within the process: a save and a delete of one
        # segment in the same microsecond keep their order.
        version = max(time.time_ns() // 1000, self._last_version + 1)
        self._last_version = version
        table = pa.table(
            [[tenant], [name], [text], [version], [deleted]],
            schema=_SCHEMA,
        )
        await self._backend.insert_arrow(self._catalog.database, SEGMENTS_TABLE, table)
