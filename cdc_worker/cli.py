"""The ``analytics`` console script: the service's commands plus the replication worker.

This is the composition root: it may import both packages, while ``service`` never imports
``cdc_worker``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.abc
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

import asyncpg
import structlog

from cdc_worker.backfill_command import add_backfill_command, backfill_launchers
from cdc_worker.incremental_loader import run_loader
from cdc_worker.runner import run_worker
from cdc_worker.source_schema import source_schema_ddl
from service import cli as service_cli
from service.backends.base import AnalyticsBackend
from service.backends.selection import open_backend
from service.catalog import Catalog, load_catalog
from service.settings import Settings

log = structlog.get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``analytics``."""
    return service_cli.main(
        argv,
        serve_worker=_serve_worker,
        add_commands=_add_worker_command,
        backfills=backfill_launchers,
    )


def _serve_worker(settings: Settings) -> service_cli.BackgroundTask | None:
    """What ``serve`` runs in-process on its engine: the CDC worker, else the incremental loader.

    With Kafka configured the CDC worker runs (and the loader does not, even with a source
    database set: two writers would only duplicate work); with only a source database the
    incremental loader runs. The embedded engine can be opened by one process only, so on it
    this is the only way to keep it in sync.
    """
    if settings.kafka_bootstrap_servers:
        if settings.source_database_url is not None:
            log.info(
                "both Kafka and a source database are configured: the CDC worker runs, "
                "the incremental loader does not"
            )

        async def worker(catalog: Catalog, backend: AnalyticsBackend, stop: asyncio.Event) -> None:
            await run_worker(settings, catalog, backend, stop)

        return worker
    if settings.source_database_url is not None:

        async def loader(catalog: Catalog, backend: AnalyticsBackend, stop: asyncio.Event) -> None:
            await run_loader(settings, catalog, backend, stop)

        return loader
    return None


def _add_worker_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    add_backfill_command(commands)
    worker = commands.add_parser(
        "worker", help="run the CDC worker: Debezium topics into the ClickHouse replicas"
    )
    worker.add_argument("--data-dir", type=Path, default=None, help="embedded engine data")
    worker.add_argument("--catalog", type=Path, default=None, help="model catalog file")
    worker.set_defaults(handler=_worker)

    loader = commands.add_parser(
        "loader",
        help="run the incremental loader: PostgreSQL (ANALYTICS_SOURCE_DATABASE_URL) polled "
        "into the ClickHouse replicas, for deployments without Kafka",
    )
    loader.add_argument("--data-dir", type=Path, default=None, help="embedded engine data")
    loader.add_argument("--catalog", type=Path, default=None, help="model catalog file")
    loader.set_defaults(handler=_loader)

    schema = commands.add_parser(
        "source-schema",
        help="print (or apply to a PostgreSQL) the source tables the catalog describes",
    )
    schema.add_argument("--catalog", type=Path, default=None, help="model catalog file")
    schema.add_argument("--apply", metavar="DSN", default=None, help="apply to this database")
    schema.set_defaults(handler=_source_schema)


def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    if settings.clickhouse_url:
        _without_pandas()
    return _run_until_signal(settings, run_worker)


def _without_pandas() -> None:
    """Make pandas unimportable in this process, so pyarrow stops looking for it.

    pyarrow imports pandas on its first conversion of a Python list (to recognise pandas
    objects), which the worker's first decoded batch does: about 0.2-0.3 s between a restarted
    worker's partitions coming back and its first write (bench/README.md, "Restart to first
    write"). Nothing the worker runs on a ClickHouse server uses pandas; chDB (the embedded
    engine) might, so this applies only to a server.
    """
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())


class _NoPandas(importlib.abc.MetaPathFinder):
    """An import finder that reports pandas as not installed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _loader(settings: Settings, _args: argparse.Namespace) -> int:
    if settings.source_database_url is None:
        print("analytics loader: set ANALYTICS_SOURCE_DATABASE_URL", file=sys.stderr)
        return 2
    return _run_until_signal(settings, run_loader)


def _run_until_signal(
    settings: Settings,
    task: Callable[[Settings, Catalog, AnalyticsBackend, asyncio.Event], Awaitable[None]],
) -> int:
    """Run ``task`` on the engine the settings select until SIGTERM or SIGINT."""

    async def run() -> None:
        catalog = load_catalog(settings.catalog_path)
        backend = open_backend(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await task(settings, catalog, backend, stop)
        finally:
            await backend.close()

    service_cli.freeze_startup_heap()
    asyncio.run(run())
    return 0


def _source_schema(settings: Settings, args: argparse.Namespace) -> int:
    statements = source_schema_ddl(load_catalog(settings.catalog_path))
    if args.apply is None:
        print(";\n\n".join(statements) + ";")
        return 0

    async def apply() -> None:
        connection = await asyncpg.connect(args.apply)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(apply())
    return 0


if __name__ == "__main__":
    sys.exit(main())
