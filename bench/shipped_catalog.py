"""The shipped catalog (``deploy/catalog.toml``) moved into a benchmark's own database."""

from __future__ import annotations

from service.settings import DEFAULT_CATALOG


def shipped_catalog_text(database: str) -> str:
    """The shipped catalog's text with ``database`` in place of its database."""
    text = DEFAULT_CATALOG.read_text(encoding="utf-8")
    shipped = 'database = "analytics"\n'
    if text.count(shipped) != 1:
        raise RuntimeError("the shipped catalog's database line moved")
    return text.replace(shipped, f'database = "{database}"\n')
