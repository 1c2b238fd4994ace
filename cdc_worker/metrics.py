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
    tables: dict[str, TableProgress] = field(default_factory=dict)

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        now = time.time()
        lines = [
            "# HELP cdc_events_total Change events written, per replica table.",
            "# TYPE cdc_events_total counter",
            *(f'cdc_events_total{{table="{t}"}} {n}' for t, n in sorted(self.events.items())),
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
            "# HELP cdc_events_per_second Events applied per second over the last interval.",
            "# TYPE cdc_events_per_second gauge",
            "# HELP cdc_consumer_lag_events Events published but not yet written, per table.",
            "# TYPE cdc_consumer_lag_events gauge",
            "# HELP cdc_last_sync_timestamp_seconds Source time up to which a table is complete.",
            "# TYPE cdc_last_sync_timestamp_seconds gauge",
            "# HELP cdc_lag_seconds Seconds between now and the table's last sync time.",
            "# TYPE cdc_lag_seconds gauge",
        ]
        for table, progress in sorted(self.tables.items()):
            label = f'{{table="{table}"}}'
            lines.append(f"cdc_events_per_second{label} {progress.events_per_second:.3f}")
            lines.append(f"cdc_consumer_lag_events{label} {progress.pending_events}")
            if progress.last_sync_ms:
                last = progress.last_sync_ms / 1000
                lines.append(f"cdc_last_sync_timestamp_seconds{label} {last:.3f}")
                lines.append(f"cdc_lag_seconds{label} {max(now - last, 0):.3f}")
        return "\n".join(lines) + "\n"


async def serve_metrics(metrics: WorkerMetrics, host: str, port: int) -> web.AppRunner:
    """Serve ``GET /metrics`` on ``host:port``; the caller cleans the runner up."""

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
