"""The ``analytics`` console script: the service's commands plus the replication worker.

This is the composition root: it may import both packages, while ``service`` never imports
``cdc_worker``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from cdc_worker.runner import run_worker
from cdc_worker.source_schema import source_schema_ddl
from service import cli as service_cli
from service.api.server import open_backend
from service.backends.base import AnalyticsBackend
from service.catalog import Catalog, load_catalog
from service.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``analytics``."""
    return service_cli.main(argv, serve_worker=_serve_worker, add_commands=_add_worker_command)


def _serve_worker(settings: Settings) -> service_cli.BackgroundTask | None:
    """With Kafka configured, ``serve`` runs the CDC worker in-process on the same engine.

    The embedded engine can be opened by one process only, so on it this is the only way.
    """
    if not settings.kafka_bootstrap_servers:
        return None

    async def worker(catalog: Catalog, backend: AnalyticsBackend, stop: asyncio.Event) -> None:
        await run_worker(settings, catalog, backend, stop)

    return worker


def _add_worker_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    worker = commands.add_parser(
        "worker", help="run the CDC worker: Debezium topics into the ClickHouse replicas"
    )
    worker.add_argument("--data-dir", type=Path, default=None, help="embedded engine data")
    worker.add_argument("--catalog", type=Path, default=None, help="model catalog file")
    worker.set_defaults(handler=_worker)

    schema = commands.add_parser(
        "source-schema",
        help="print (or apply to a PostgreSQL) the source tables the catalog describes",
    )
    schema.add_argument("--catalog", type=Path, default=None, help="model catalog file")
    schema.add_argument("--apply", metavar="DSN", default=None, help="apply to this database")
    schema.set_defaults(handler=_source_schema)


def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    async def run() -> None:
        catalog = load_catalog(settings.catalog_path)
        backend = open_backend(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await run_worker(settings, catalog, backend, stop)
        finally:
            await backend.close()

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
