"""Assembles and runs the gRPC server: interceptors, servicers, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from analytics.v1 import (
    analytics_pb2,
    analytics_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    segments_pb2,
    segments_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)
from service.api.analytics_servicer import AnalyticsServicer
from service.api.event_servicer import EventServicer
from service.api.health import IsolationReportingHealth
from service.api.interceptors import AuthInterceptor
from service.api.rest_app import RestServer
from service.api.segment_servicer import SegmentServicer
from service.api.sync_servicer import SyncServicer
from service.api.tenant_servicer import TenantServicer
from service.auth import TokenVerifier
from service.backends.base import AnalyticsBackend
from service.backends.http import HttpBackend
from service.backends.selection import open_backend
from service.backfill_jobs import BackfillLauncherFactory
from service.budgets import Budgets, build_budgets
from service.cache import ResultCache, build_result_cache
from service.catalog import Catalog, load_catalog
from service.events.ingestion import EventIngestion
from service.events.metrics import SinkMetrics
from service.events.sink import EventSink, create_event_tables
from service.events.topic_consumer import EventTopicConsumer, start_topic_consumer
from service.events.validation import EventLimits
from service.insights.insight_services import InsightServices
from service.query.compiler import QueryLimits
from service.query_service import QueryService
from service.rollups.keeper import RollupKeeper
from service.segments.segment_service import SegmentService
from service.segments.store import SegmentStore
from service.settings import Settings
from service.tenants import TenantProvisioner, engine_detail

log = structlog.get_logger(__name__)
ANALYTICS_SERVICE = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name
SYNC_SERVICE = sync_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name
EVENT_SERVICE = events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
TENANT_SERVICE = tenant_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name
SEGMENT_SERVICE = segments_pb2.DESCRIPTOR.services_by_name["SegmentService"].full_name
SERVED = (ANALYTICS_SERVICE, EVENT_SERVICE, SYNC_SERVICE, TENANT_SERVICE, SEGMENT_SERVICE)
"""The services this server answers (health and reflection report them)."""


@dataclass
class RunningServer:
    """A started server, the ports it bound (gRPC, REST) and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    backend: AnalyticsBackend
    owns_backend: bool
    rest: RestServer | None = None
    rest_port: int | None = None
    sink: EventSink | None = None
    event_topic: EventTopicConsumer | None = None
    cache: ResultCache | None = None
    budgets: Budgets | None = None
    rollup_refresher: asyncio.Task[None] | None = None

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish, then release an engine it opened.

        The event sink closes first: it stops taking events, writes what it holds and answers
        those callers, so no acknowledged event is lost and none is left unanswered. The events
        topic consumer stops before it (it commits what the sink wrote for it).
        """
        await self.health.enter_graceful_shutdown()
        if self.rollup_refresher is not None:
            self.rollup_refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.rollup_refresher
        if self.event_topic is not None:
            await self.event_topic.stop()
        if self.sink is not None:
            await self.sink.close()
        stopping = [self.server.stop(grace)]
        if self.rest is not None:
            stopping.append(self.rest.stop(grace))
        await asyncio.gather(*stopping)
        if self.cache is not None:
            await self.cache.close()
        if self.budgets is not None:
            await self.budgets.close()
        if self.owns_backend:
            await self.backend.close()


def tenant_provisioner(
    settings: Settings, catalog: Catalog, backend: AnalyticsBackend
) -> TenantProvisioner:
    """The provisioner of tenant users and row policies, with the configured credential key."""
    secret = settings.tenant_credential_secret
    return TenantProvisioner(catalog, backend, secret.get_secret_value() if secret else None)


async def check_query_features(backend: AnalyticsBackend) -> None:
    """Refuse to serve queries on a server too old for the compiler's SQL (minimum: 23.8).

    Every query would fail there; a clear error at start beats an INTERNAL on every call.
    """
    if isinstance(backend, HttpBackend):
        missing = await backend.missing_compiler_features()
        if missing:
            version = ".".join(map(str, await backend.server_version()))
            raise RuntimeError(
                f"ClickHouse server {version} lacks what the query compiler needs "
                f"({', '.join(missing)}); the service needs ClickHouse 23.8 or newer"
            )


async def start_server(  # noqa: PLR0915 (the composition root: a statement per part wired)
    settings: Settings,
    *,
    catalog: Catalog | None = None,
    backend: AnalyticsBackend | None = None,
    backfills: BackfillLauncherFactory | None = None,
) -> RunningServer:
    """Build and start the server on ``settings.host:settings.port`` (port 0: a free one).

    ``backfills`` makes the launcher SyncService.StartBackfill uses (the replication package's,
    injected by the composition root); without it StartBackfill answers FAILED_PRECONDITION.
    """
    catalog = catalog or load_catalog(settings.catalog_path)
    owns_backend = backend is None
    backend = backend or open_backend(settings)
    segment_store = SegmentStore(catalog, backend)
    segments = SegmentService(catalog, segment_store)
    # One registry for the process's metrics (served at GET /metrics): the sink's and the cache's.
    sink_metrics = SinkMetrics()
    cache = build_result_cache(settings, sink_metrics.registry)
    provisioner = tenant_provisioner(settings, catalog, backend)
    # Defaults from settings, overrides from the tenant records, counters in Redis if set.
    budgets = build_budgets(settings, sink_metrics.registry, provisioner)
    rollups = RollupKeeper(catalog, backend)
    queries = QueryService(
        catalog,
        backend,
        limits=QueryLimits(settings.default_limit, settings.max_limit, settings.max_offset),
        stream_limits=QueryLimits(
            settings.max_stream_limit, settings.max_stream_limit, settings.max_offset
        ),
        timeout_seconds=settings.query_timeout_seconds,
        segments=segments,
        cache=cache,
        budgets=budgets,
        rollups=rollups,
    )
    verifier = TokenVerifier(settings)
    sink = EventSink(
        backend,
        catalog.database,
        flush_events=settings.event_flush_events,
        flush_seconds=settings.event_flush_milliseconds / 1000,
        capacity=settings.event_buffer_events,
        metrics=sink_metrics,
    )
    ingestion = EventIngestion(
        catalog,
        sink,
        max_request_events=settings.event_max_request_events,
        limits=EventLimits(max_future=dt.timedelta(seconds=settings.event_max_future_seconds)),
    )
    server = _grpc_server(settings, verifier)
    insights = InsightServices.build(
        catalog,
        backend,
        timeout_seconds=settings.query_timeout_seconds,
        segments=segments,
        cache=cache,
        budgets=budgets,
        rollups=rollups,
    )
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(
        AnalyticsServicer(queries, settings.stream_chunk_rows, insights), server
    )
    events_pb2_grpc.add_EventServiceServicer_to_server(
        EventServicer(ingestion, window_events=max(settings.event_buffer_events // 8, 1)), server
    )
    launcher = backfills(catalog, backend) if backfills is not None else None
    sync_pb2_grpc.add_SyncServiceServicer_to_server(
        SyncServicer(catalog, backend, launcher), server
    )
    tenant_pb2_grpc.add_TenantServiceServicer_to_server(
        TenantServicer(provisioner, budgets), server
    )
    segments_pb2_grpc.add_SegmentServiceServicer_to_server(SegmentServicer(segments), server)
    health_servicer = IsolationReportingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVED,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot bind {settings.host}:{settings.port}")
    await backend.ping()
    await check_query_features(backend)
    if isinstance(backend, HttpBackend):
        await backend.detect_row_policies()
    health_servicer.isolation = engine_detail(backend)
    # Before the tenants' grants and row policies, which cover these tables too: the event
    # models' (the sink writes them) and the rollups'.
    await create_event_tables(backend, catalog)
    await rollups.prepare()
    # A catalog that gained a table gets every tenant's grants and row policies re-applied.
    await provisioner.reconcile()
    await segment_store.prepare()
    refresher = None
    if rollups.enabled and settings.rollup_refresh_seconds > 0:
        refresher = asyncio.create_task(rollups.run(settings.rollup_refresh_seconds))
    sink.start()
    # After the sink it writes to; it waits for Kafka by itself, never holding up the start.
    event_topic = start_topic_consumer(settings, ingestion)
    await server.start()
    rest: RestServer | None = None
    rest_port: int | None = None
    if settings.rest_port is not None:
        rest = RestServer(
            queries,
            verifier,
            max_body_bytes=settings.max_message_bytes,
            ingestion=ingestion,
            insights=insights,
        )
        try:
            rest_port = await rest.start(settings.host, settings.rest_port)
        except OSError:
            if refresher is not None:
                refresher.cancel()
            await server.stop(None)
            if event_topic is not None:
                await event_topic.stop()
            await sink.close()
            if cache is not None:
                await cache.close()
            await budgets.close()
            raise
    for service_name in ("", *SERVED):
        await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    _warn_about_setup(settings, backend)
    log.info(
        "serving",
        address=f"{settings.host}:{port}",
        rest_address=f"http://{settings.host}:{rest_port}" if rest_port is not None else None,
        backend=backend.name,
        models=sorted(m.qualified_name for m in catalog.models.values()),
    )
    return RunningServer(
        server,
        port,
        health_servicer,
        backend,
        owns_backend,
        rest,
        rest_port,
        sink,
        event_topic=event_topic,
        cache=cache,
        budgets=budgets,
        rollup_refresher=refresher,
    )


def _warn_about_setup(settings: Settings, backend: AnalyticsBackend) -> None:
    """Say once at start what a production setup must not keep."""
    if settings.uses_development_secret:
        log.warning(
            "tokens are verified with the built-in development secret; "
            "set ANALYTICS_JWT_SECRET or ANALYTICS_JWT_PUBLIC_KEY in production"
        )
    if not backend.enforces_row_policies:
        log.warning("tenant isolation: " + engine_detail(backend), backend=backend.name)


def _grpc_server(settings: Settings, verifier: TokenVerifier) -> grpc.aio.Server:
    return grpc.aio.server(
        interceptors=[AuthInterceptor(verifier)],
        options=[
            # With reuseport a second server on the same port would silently take traffic.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )


async def serve(
    settings: Settings,
    *,
    catalog: Catalog | None = None,
    backend: AnalyticsBackend | None = None,
    worker: Callable[[Catalog, AnalyticsBackend, asyncio.Event], Coroutine[Any, Any, None]]
    | None = None,
    backfills: BackfillLauncherFactory | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully.

    ``worker``, when given, runs beside the server on the same engine (the CDC worker on the
    embedded engine, which only one process can open) and is stopped first on shutdown, so that
    it writes and commits what it holds.
    """
    catalog = catalog or load_catalog(settings.catalog_path)
    running = await start_server(settings, catalog=catalog, backend=backend, backfills=backfills)
    running.owns_backend = True
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    background: asyncio.Task[None] | None = None
    if worker is not None:
        background = asyncio.create_task(worker(catalog, running.backend, stop))
        # A worker that dies ends the process (its error is raised below) rather than leaving
        # a server whose data silently stops moving.
        background.add_done_callback(lambda _: stop.set())
    await stop.wait()
    log.info("shutting down", grace_seconds=settings.grace_seconds)
    if background is not None:
        await background
    await running.stop(settings.grace_seconds)
    log.info("stopped")
