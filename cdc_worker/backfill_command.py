"""``analytics backfill <module.model>``: a backfill from the command line, with a progress bar.

It runs against the engine the settings select. The embedded engine can be opened by one
process only: while ``analytics serve`` runs on it, use ``SyncService.StartBackfill`` instead.

The backfill machinery is imported when a backfill starts, not with the command line: every
``analytics`` command builds this parser, and ``analytics worker`` must start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING

from service.backends.base import AnalyticsBackend
from service.backends.selection import open_backend
from service.backfill_jobs import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_PARALLELISM,
    BackfillLauncherFactory,
    BackfillProgress,
    BackfillRequest,
    BackfillState,
)
from service.catalog import Catalog, load_catalog
from service.errors import AnalyticsError
from service.settings import Settings

if TYPE_CHECKING:
    from cdc_worker.backfill import BackfillRunner

_BAR_WIDTH = 25


def backfill_launchers(settings: Settings) -> BackfillLauncherFactory:
    """What ``serve`` gives its SyncService: a runner reading ``source_database_url``."""

    def launcher(catalog: Catalog, backend: AnalyticsBackend) -> BackfillRunner:
        from cdc_worker.backfill import BackfillRunner  # noqa: PLC0415 (see module docstring)

        return BackfillRunner(settings, catalog, backend)

    return launcher


def add_backfill_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``backfill``."""
    command = commands.add_parser(
        "backfill",
        help="copy a table from PostgreSQL (ANALYTICS_SOURCE_DATABASE_URL) into its replica",
    )
    command.add_argument("model", help="module.model (or a unique model name)")
    command.add_argument(
        "--parallel", type=int, default=DEFAULT_PARALLELISM, help="key ranges copied at once"
    )
    command.add_argument(
        "--batch-rows", type=int, default=DEFAULT_BATCH_ROWS, help="rows per read and insert"
    )
    command.add_argument(
        "--resume", action="store_true", help="continue the table's unfinished backfill"
    )
    command.add_argument("--data-dir", type=Path, default=None, help="embedded engine data")
    command.add_argument("--catalog", type=Path, default=None, help="model catalog file")
    command.set_defaults(handler=_backfill)


def _backfill(settings: Settings, args: argparse.Namespace) -> int:
    catalog = load_catalog(settings.catalog_path)
    found = catalog.find(args.model)
    if len(found) != 1:
        print(f"analytics backfill: unknown model {args.model!r}", file=sys.stderr)
        return 2
    try:
        request = BackfillRequest.validated(
            found[0], parallelism=args.parallel, batch_rows=args.batch_rows, resume=args.resume
        )
    except AnalyticsError as error:
        print(f"analytics backfill: {error.message}", file=sys.stderr)
        return 2

    async def run() -> BackfillProgress | None:
        backend = open_backend(settings)
        last = None
        try:
            from cdc_worker.backfill import BackfillRunner  # noqa: PLC0415 (see module docstring)

            runner = BackfillRunner(settings, catalog, backend)
            async with aclosing(runner.run(request)) as progress:
                async for last in progress:
                    _show(last)
        finally:
            await backend.close()
        return last

    try:
        final = asyncio.run(run())
    except AnalyticsError as error:
        print(f"\nanalytics backfill: {error.message}", file=sys.stderr)
        return 1
    print(file=sys.stderr)
    return 0 if final is not None and final.state is BackfillState.DONE else 1


def _show(progress: BackfillProgress) -> None:
    filled = int(progress.percent * _BAR_WIDTH / 100)
    eta = f"ETA {progress.eta_seconds:,.0f}s" if progress.eta_seconds else ""
    removed = f", {progress.rows_removed:,} removed" if progress.rows_removed else ""
    print(
        f"\r  {progress.model:<18} [{'#' * filled:<{_BAR_WIDTH}}] {progress.percent:5.1f}% "
        f"{progress.rows_copied:>11,}/{progress.rows_total:,} rows "
        f"{progress.rows_per_second:>9,.0f} rows/s {eta:<12} {progress.state.value}{removed}",
        end="",
        file=sys.stderr,
    )
