"""Running the worker: on its own (``analytics worker``) or inside ``analytics serve``."""

from __future__ import annotations

import asyncio

import structlog

from cdc_worker.metrics import WorkerMetrics, serve_metrics
from cdc_worker.worker import CdcWorker, ReplicaSink
from service.catalog import Catalog
from service.settings import Settings

log = structlog.get_logger(__name__)


async def run_worker(
    settings: Settings, catalog: Catalog, sink: ReplicaSink, stop: asyncio.Event
) -> None:
    """Run the CDC worker (and its metrics endpoint, if configured) until ``stop`` is set."""
    metrics = WorkerMetrics()
    runner = None
    if settings.metrics_port is not None:
        runner = await serve_metrics(metrics, settings.host, settings.metrics_port)
        log.info("metrics endpoint", url=f"http://{settings.host}:{settings.metrics_port}/metrics")
    try:
        await CdcWorker(settings, catalog, sink, metrics).run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
