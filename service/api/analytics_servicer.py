"""AnalyticsService: translates protobuf requests to the domain and results back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import pyarrow as pa

from analytics.v1 import analytics_pb2, analytics_pb2_grpc
from service.api import convert
from service.api.interceptors import Context, current_principal
from service.api.status import abort_with_error
from service.errors import AnalyticsError
from service.insights.insight_services import InsightServices
from service.query_service import QueryService, StreamMeta


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    """Query (unary), StreamQuery (columnar chunks, then meta once) and the insights."""

    def __init__(
        self,
        queries: QueryService,
        default_chunk_rows: int,
        insights: InsightServices,
    ) -> None:
        """Serve through the services; chunks default to ``default_chunk_rows``."""
        self._queries = queries
        self._default_chunk_rows = default_chunk_rows
        self._insights = insights

    async def Funnel(  # noqa: N802
        self, request: analytics_pb2.FunnelRequest, context: Context
    ) -> analytics_pb2.FunnelResponse:
        """Count the actors through a funnel's steps."""
        try:
            outcome = await self._insights.funnels.run(
                current_principal.get(),
                convert.funnel_request(request),
                remaining=context.time_remaining(),
                rpc="Funnel",
            )
        except AnalyticsError as error:
            await abort_with_error(context, error)
        return convert.funnel_response(outcome.answer, outcome.stats, outcome.last_sync_at)

    async def FunnelActors(  # noqa: N802
        self, request: analytics_pb2.FunnelActorsRequest, context: Context
    ) -> AsyncIterator[analytics_pb2.FunnelActorsResponse]:
        """Stream the actors at a funnel's step in chunks; a cancelled call stops the query."""
        chunk_rows = min(request.chunk_rows or self._default_chunk_rows, 65536)
        meta: list[StreamMeta] = []
        batches = self._insights.funnels.actors(
            current_principal.get(),
            convert.funnel_actors_request(request),
            remaining=context.time_remaining(),
            rpc="FunnelActors",
            meta_sink=meta,
        )
        try:
            # aclosing: a cancelled call must close the engine stream now, not at GC time.
            async with aclosing(batches):
                async for columns, batch in batches:
                    for offset in range(0, batch.num_rows, chunk_rows):
                        response = analytics_pb2.FunnelActorsResponse()
                        convert.column_chunk(
                            columns, batch.slice(offset, chunk_rows), into=response.chunk
                        )
                        yield response
        except AnalyticsError as error:
            await abort_with_error(context, error)
        final = meta[0]
        yield analytics_pb2.FunnelActorsResponse(
            meta=convert.query_meta(
                final.columns, final.stats, final.last_sync_at, rollup=final.rollup
            )
        )

    async def Retention(  # noqa: N802
        self, request: analytics_pb2.RetentionRequest, context: Context
    ) -> analytics_pb2.RetentionResponse:
        """Answer a retention cohort table."""
        try:
            outcome = await self._insights.retention.run(
                current_principal.get(),
                convert.retention_request(request),
                remaining=context.time_remaining(),
                rpc="Retention",
            )
        except AnalyticsError as error:
            await abort_with_error(context, error)
        return convert.retention_response(
            outcome.answer, outcome.stats, outcome.last_sync_at, breakdown=bool(request.breakdown)
        )

    async def Lifecycle(  # noqa: N802
        self, request: analytics_pb2.LifecycleRequest, context: Context
    ) -> analytics_pb2.LifecycleResponse:
        """Count new, returning, resurrecting and dormant actors per period."""
        try:
            outcome = await self._insights.lifecycle.run(
                current_principal.get(),
                convert.lifecycle_request(request),
                remaining=context.time_remaining(),
                rpc="Lifecycle",
            )
        except AnalyticsError as error:
            await abort_with_error(context, error)
        return convert.lifecycle_response(outcome.answer, outcome.stats, outcome.last_sync_at)

    async def Trend(  # noqa: N802
        self, request: analytics_pb2.TrendRequest, context: Context
    ) -> analytics_pb2.TrendResponse:
        """Compute a trend's zero-filled series."""
        try:
            outcome = await self._insights.trends.run(
                current_principal.get(),
                convert.trend_request(request),
                remaining=context.time_remaining(),
                rpc="Trend",
            )
        except AnalyticsError as error:
            await abort_with_error(context, error)
        return convert.trend_response(
            outcome.answer,
            outcome.stats,
            outcome.last_sync_at,
            breakdown=bool(request.breakdown),
            rollup=outcome.rollup,
        )

    async def Query(  # noqa: N802 (the generated base class names it)
        self, request: analytics_pb2.QueryRequest, context: Context
    ) -> analytics_pb2.QueryResponse:
        """Run one aggregation and return every row."""
        try:
            outcome = await self._queries.run(
                current_principal.get(),
                convert.query_request(request),
                remaining=context.time_remaining(),
                rpc="Query",
            )
        except AnalyticsError as error:
            await abort_with_error(context, error)
        return analytics_pb2.QueryResponse(
            data=convert.struct_rows(outcome.columns, outcome.table),
            meta=convert.query_meta(
                outcome.columns, outcome.stats, outcome.last_sync_at, rollup=outcome.rollup
            ),
        )

    async def StreamQuery(  # noqa: N802
        self, request: analytics_pb2.StreamQueryRequest, context: Context
    ) -> AsyncIterator[analytics_pb2.StreamQueryResponse]:
        """Stream the rows in chunks of ``chunk_rows``; a cancelled call stops the query."""
        chunk_rows = request.chunk_rows or self._default_chunk_rows
        chunk_rows = min(chunk_rows, 65536)
        meta: list[StreamMeta] = []
        batches = self._queries.stream(
            current_principal.get(),
            convert.query_request(request),
            remaining=context.time_remaining(),
            rpc="StreamQuery",
            meta_sink=meta,
        )
        try:
            # aclosing: a cancelled call must close the engine stream now, not at GC time.
            async with aclosing(batches):
                async for columns, batch in batches:
                    for offset in range(0, batch.num_rows, chunk_rows):
                        part: pa.RecordBatch = batch.slice(offset, chunk_rows)
                        response = analytics_pb2.StreamQueryResponse()
                        convert.column_chunk(columns, part, into=response.chunk)
                        yield response
        except AnalyticsError as error:
            await abort_with_error(context, error)
        final = meta[0]
        yield analytics_pb2.StreamQueryResponse(
            meta=convert.query_meta(
                final.columns, final.stats, final.last_sync_at, rollup=final.rollup
            )
        )
