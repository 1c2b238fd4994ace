"""Shared fixtures. chDB allows one data directory per process, so the embedded engine is one
session-wide backend; tests isolate themselves with their own database names instead.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.backends.embedded import EmbeddedBackend
from service.catalog import Catalog, load_catalog
from service.settings import DEFAULT_CATALOG


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    """The demo catalog shipped in deploy/."""
    return load_catalog(DEFAULT_CATALOG)


def catalog_in_database(catalog: Catalog, database: str) -> Catalog:
    """The same models in another database, so tests sharing the engine do not collide."""
    return dataclasses.replace(catalog, database=database)


def unique_database(prefix: str) -> str:
    """A database name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded engine's data directory for this test session."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(scope="session")
async def embedded_backend(engine_dir: Path) -> AsyncIterator[EmbeddedBackend]:
    """The one embedded engine of this test session."""
    backend = EmbeddedBackend(engine_dir, pool_size=4)
    yield backend
    await backend.close()
