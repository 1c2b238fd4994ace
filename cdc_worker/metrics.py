"""The worker's Prometheus text endpoint: events, batches, lag and freshness per table."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from cdc_worker.sync_tracker import TableProgress


@dataclass
class WorkerMetrics:
    """Counters the worker updates as it goes; rendered on demand."""

    events: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    batch_rows_total: int = 0
    last_batch_rows: int = 0
    dead_letters: int = 0
    write_errors: int = 0
    uncommitted_batches: int = 0
    """Written batches whose offsets a rebalance kept from being committed (they replay)."""
    tables: dict[str, TableProgress] = field(default_factory=dict)
    outages: dict[str, int] = field(default_factory=dict)
    """Times each dependency (clickhouse, kafka) was found unreachable and waited for."""
    away: set[str] = field(default_factory=set)
    """Dependencies unreachable now."""
    started: bool = False
    """Whether the worker has its tables and its Kafka clients (it consumes)."""

    @property
    def ready(self) -> bool:
        """Consuming, with every dependency reachable as far as the worker knows."""
        return self.started and not self.away

    def dependency_away(self, dependency: str) -> None:
        """``dependency`` was found unreachable: one more outage, not ready until it is back."""
        self.outages[dependency] = self.outages.get(dependency, 0) + 1
        self.away.add(dependency)

    def dependency_back(self, dependency: str) -> None:
        """``dependency`` answered again."""
        self.away.discard(dependency)

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4), one group per metric."""
        now = time.time()
        tables = sorted(self.tables.items())
        per_table: list[tuple[str, str, str, list[tuple[str, float]]]] = [
            (
                "cdc_events_total",
                "counter",
                "Change events written, per replica table.",
                sorted((t, float(n)) for t, n in self.events.items()),
            ),
            (
                "cdc_events_per_second",
                "gauge",
                "Events applied per second over the last interval.",
                [(t, p.events_per_second) for t, p in tables],
            ),
            (
                "cdc_consumer_lag_events",
                "gauge",
                "Events published but not yet written, per table.",
                [(t, float(p.pending_events)) for t, p in tables],
            ),
            (
                "cdc_last_sync_timestamp_seconds",
                "gauge",
                "Source time up to which a table is complete.",
                [(t, p.last_sync_ms / 1000) for t, p in tables if p.last_sync_ms],
            ),
            (
                "cdc_lag_seconds",
                "gauge",
                "Seconds between now and the table's last sync time.",
                [(t, max(now - p.last_sync_ms / 1000, 0.0)) for t, p in tables if p.last_sync_ms],
            ),
        ]
        lines: list[str] = []
        for name, kind, help_text, samples in per_table:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f'{name}{{table="{table}"}} {_number(value)}' for table, value in samples]
        lines += [
            "# HELP cdc_batches_total Batches written.",
            "# TYPE cdc_batches_total counter",
            f"cdc_batches_total {self.batches}",
            "# HELP cdc_batch_rows Events per written batch.",
            "# TYPE cdc_batch_rows summary",
            f"cdc_batch_rows_sum {self.batch_rows_total}",
            f"cdc_batch_rows_count {self.batches}",
            "# HELP cdc_last_batch_rows Events in the last written batch.",
            "# TYPE cdc_last_batch_rows gauge",
            f"cdc_last_batch_rows {self.last_batch_rows}",
            "# HELP cdc_dead_letters_total Messages sent to the dead-letter topic.",
            "# TYPE cdc_dead_letters_total counter",
            f"cdc_dead_letters_total {self.dead_letters}",
            "# HELP cdc_write_errors_total Failed replica writes (each retried).",
            "# TYPE cdc_write_errors_total counter",
            f"cdc_write_errors_total {self.write_errors}",
            "# HELP cdc_uncommitted_batches_total Written batches a rebalance kept uncommitted.",
            "# TYPE cdc_uncommitted_batches_total counter",
            f"cdc_uncommitted_batches_total {self.uncommitted_batches}",
            "# HELP cdc_dependency_outages_total Times a dependency was found unreachable.",
            "# TYPE cdc_dependency_outages_total counter",
            *(
                f'cdc_dependency_outages_total{{dependency="{name}"}} {count}'
                for name, count in sorted(self.outages.items())
            ),
            "# HELP cdc_ready Whether the worker consumes with its dependencies reachable.",
            "# TYPE cdc_ready gauge",
            f"cdc_ready {int(self.ready)}",
        ]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:.3f}"


async def serve_metrics(metrics: WorkerMetrics, host: str, port: int) -> web.AppRunner:
    """Serve ``GET /metrics`` and ``GET /ready`` on ``host:port``; the caller cleans up.

    ``/ready`` answers 200 while the worker consumes with its dependencies reachable and 503
    (naming what it waits for) otherwise, for a readiness probe.
    """

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain", charset="utf-8")

    async def ready(_request: web.Request) -> web.Response:
        waiting = ", ".join(sorted(metrics.away)) or ("starting" if not metrics.started else "")
        status = 200 if metrics.ready else 503
        return web.Response(status=status, text=f"waiting for {waiting}" if waiting else "ready")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
