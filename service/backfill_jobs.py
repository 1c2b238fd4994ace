"""What the SyncService needs to run a backfill, without knowing how one is done.

The copy engine lives in the replication package (``cdc_worker.backfill``), which the service
never imports; the composition root (``cdc_worker.cli``) hands a ``BackfillLauncher`` factory to
the server. A launcher turns a ``BackfillRequest`` into a stream of ``BackfillProgress`` records;
closing the stream (a cancelled call) stops the copy.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol

from service.backends.base import AnalyticsBackend
from service.catalog import Catalog, Model
from service.errors import AnalyticsError, ErrorKind, validation_error

DEFAULT_PARALLELISM = 2
MAX_PARALLELISM = 16
DEFAULT_BATCH_ROWS = 50_000
MIN_BATCH_ROWS = 1_000
MAX_BATCH_ROWS = 500_000


class BackfillState(enum.Enum):
    """Where a backfill stands."""

    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class BackfillRequest:
    """A validated request: the model, key ranges at once, rows per batch, resume or not."""

    model: Model
    parallelism: int = DEFAULT_PARALLELISM
    batch_rows: int = DEFAULT_BATCH_ROWS
    resume: bool = False

    @classmethod
    def validated(
        cls, model: Model, *, parallelism: int, batch_rows: int, resume: bool
    ) -> BackfillRequest:
        """Apply defaults (0 means default) and bounds; a bad value names its field."""
        if parallelism < 0 or parallelism > MAX_PARALLELISM:
            raise validation_error(
                "parallelism", f"parallelism must be between 1 and {MAX_PARALLELISM}"
            )
        if batch_rows and not MIN_BATCH_ROWS <= batch_rows <= MAX_BATCH_ROWS:
            raise validation_error(
                "batchRows", f"batchRows must be between {MIN_BATCH_ROWS} and {MAX_BATCH_ROWS}"
            )
        return cls(
            model,
            parallelism=parallelism or DEFAULT_PARALLELISM,
            batch_rows=batch_rows or DEFAULT_BATCH_ROWS,
            resume=resume,
        )


@dataclass(frozen=True)
class BackfillProgress:
    """One progress report; the last one of a stream has a final state."""

    model: str
    backfill_id: str
    state: BackfillState
    rows_copied: int
    rows_total: int
    rows_per_second: float
    resumed: bool = False
    ranges_done: int = 0
    ranges_total: int = 0
    rows_removed: int = 0
    error: str = ""

    @property
    def percent(self) -> float:
        """Share of the estimate copied, 0..100; 100 only once done (estimates can be low)."""
        if self.state is BackfillState.DONE:
            return 100.0
        if self.rows_total <= 0:
            return 0.0
        return min(100.0 * self.rows_copied / self.rows_total, 99.9)

    @property
    def eta_seconds(self) -> float:
        """Seconds left at the current rate; 0 when unknown or finished."""
        if self.state is not BackfillState.RUNNING or self.rows_per_second <= 0:
            return 0.0
        return max(self.rows_total - self.rows_copied, 0) / self.rows_per_second


class BackfillLauncher(Protocol):
    """Runs backfills."""

    def run(self, request: BackfillRequest) -> AsyncGenerator[BackfillProgress, None]:
        """Copy the table, yielding progress about every half second and a final record.

        Raises ``AnalyticsError`` before the first record when the backfill cannot start (no
        source database, an unsupported key, a backfill of the table already running) and after
        the final FAILED record when the copy fails. Closing the iterator stops the copy; the
        checkpoints then hold only what was written.
        """
        ...


BackfillLauncherFactory = Callable[[Catalog, AnalyticsBackend], BackfillLauncher]
"""Given the server's catalog and engine, the launcher its SyncService uses."""


def backfills_unavailable() -> AnalyticsError:
    """The server was started without a backfill engine."""
    return precondition_failed(
        "backfills are not available in this server (start it with the `analytics` command)",
        "BACKFILL_UNAVAILABLE",
    )


def precondition_failed(message: str, reason: str, **metadata: str) -> AnalyticsError:
    """The system is not in a state that allows the request (FAILED_PRECONDITION)."""
    return AnalyticsError(ErrorKind.PRECONDITION, message, reason, metadata=metadata)
