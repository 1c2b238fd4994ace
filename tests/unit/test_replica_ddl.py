"""The replica table's DDL per server version: which merge settings each server is given.

A table setting a server does not know fails the whole ``CREATE TABLE``, so each one is gated by
the version that introduced it; the engine-side effect of ``merge_selector_base`` is held in
tests/integration/test_replica_partitions.py.
"""

from __future__ import annotations

import pytest

from service.backends.dialect import MODERN, Dialect, backend_dialect
from service.catalog import Catalog
from service.schema import FORCE_MERGE_AFTER_SECONDS, MERGE_SELECTOR_BASE, replica_table_ddl


def _settings_clause(catalog: Catalog, version: tuple[int, ...]) -> str:
    model = catalog.get("crm", "deals")
    assert model is not None
    ddl = replica_table_ddl(catalog, model, dialect=Dialect.for_server(version))
    _, _, settings = ddl.partition("\nSETTINGS ")
    return settings


FORCED_MERGE = (
    f"min_age_to_force_merge_seconds = {FORCE_MERGE_AFTER_SECONDS}, "
    "min_age_to_force_merge_on_partition_only = 1"
)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ((18, 16, 1), ""),
        ((23, 8), FORCED_MERGE),
        ((24, 11, 5), FORCED_MERGE),
        ((24, 12), f"{FORCED_MERGE}, merge_selector_base = {MERGE_SELECTOR_BASE}"),
        ((26, 9, 2, 1), f"{FORCED_MERGE}, merge_selector_base = {MERGE_SELECTOR_BASE}"),
    ],
)
def test_each_server_gets_the_merge_settings_it_knows(
    catalog: Catalog, version: tuple[int, ...], expected: str
) -> None:
    assert _settings_clause(catalog, version) == expected


def test_the_default_dialect_is_the_production_minimum_without_the_selector_base(
    catalog: Catalog,
) -> None:
    model = catalog.get("crm", "deals")
    assert model is not None
    assert not MODERN.merge_selector_base
    assert replica_table_ddl(catalog, model) == replica_table_ddl(catalog, model, dialect=MODERN)


class _Reporting:
    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect

    async def dialect(self) -> Dialect:
        return self._dialect


async def test_a_backend_without_a_dialect_is_taken_for_the_production_minimum() -> None:
    newer = Dialect.for_server((25, 3))
    assert await backend_dialect(object()) is MODERN
    assert await backend_dialect(_Reporting(newer)) is newer
