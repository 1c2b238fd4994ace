"""SegmentService: create, list and delete a tenant's segments; the catalog a request sees.

Permissions: ``segments.write`` to create or delete, ``segments.read`` to list, and the read
permission of a segment's model to create it (its members are that model's data). Using a
segment in a request needs the segment model's read permission too: the compilers count the
segment's model among the models a query reads.
"""

from __future__ import annotations

from collections.abc import Mapping

from service import audit
from service.auth import Principal
from service.catalog import Catalog
from service.errors import AnalyticsError, ErrorKind, forbidden, not_found
from service.query.compiler import SEGMENT_KEY, resolve_model
from service.query_service import authorise_reads
from service.segments.definition import SegmentDefinition, validate_segment
from service.segments.store import SegmentStore

READ_PERMISSION = "segments.read"
WRITE_PERMISSION = "segments.write"


class SegmentService:
    """The segments of the caller's tenant, and the tenant's view of the catalog."""

    def __init__(self, catalog: Catalog, store: SegmentStore) -> None:
        """Validate against ``catalog``, keep definitions in ``store``."""
        self.catalog = catalog
        self._store = store

    async def create(
        self, principal: Principal, definition: SegmentDefinition, *, replace: bool
    ) -> SegmentDefinition:
        """Store a new segment (or replace one, with ``replace``); the stored definition."""
        _require(principal, WRITE_PERMISSION)
        valid = validate_segment(definition, self.catalog)
        authorise_reads(principal, [resolve_model(self.catalog, valid.model)])
        existing = await self._store.definitions(principal.tenant)
        if valid.name in existing and not replace:
            raise AnalyticsError(
                ErrorKind.PRECONDITION,
                f"name: the tenant already has a segment {valid.name!r}; set replace to change it",
                "SEGMENT_EXISTS",
            )
        await self._store.save(principal.tenant, valid)
        audit.record_change(
            tenant=principal.tenant,
            subject=principal.subject,
            action="segment.save",
            name=valid.name,
        )
        return valid

    async def list(self, principal: Principal) -> list[SegmentDefinition]:
        """The tenant's segments, by name."""
        _require(principal, READ_PERMISSION)
        return list((await self._store.definitions(principal.tenant)).values())

    async def delete(self, principal: Principal, name: str) -> None:
        """Remove the tenant's segment ``name``; NOT_FOUND if it has none of that name."""
        _require(principal, WRITE_PERMISSION)
        if name[:100] not in await self._store.definitions(principal.tenant):
            raise not_found(f"name: the tenant has no segment {name[:100]!r}", segment=name[:100])
        await self._store.delete(principal.tenant, name)
        audit.record_change(
            tenant=principal.tenant, subject=principal.subject, action="segment.delete", name=name
        )

    async def catalog_for(self, tenant: str, *filter_maps: Mapping[str, str]) -> Catalog:
        """The catalog a request of ``tenant`` compiles against.

        With the tenant's segments when any of ``filter_maps`` names one (read only then).
        """
        if not any(SEGMENT_KEY in filters for filters in filter_maps):
            return self.catalog
        return self.catalog.with_segments(await self._store.resolved(tenant))


def _require(principal: Principal, permission: str) -> None:
    if not principal.has_permission(permission):
        raise forbidden(f"permission {permission!r} is required", permission)
