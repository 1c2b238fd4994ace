"""QueryService: the one path every analytics call takes, whatever the transport.

authorise -> compile (tenant filter, FINAL) -> execute within the time budget -> freshness ->
audit. Transports (gRPC now, REST later) only translate requests and results.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from service import audit
from service.auth import Principal
from service.backends.base import AnalyticsBackend, QueryStats
from service.budgets import Budgets
from service.cache.execution import Equivalent, answer_queries, served
from service.catalog import Catalog, Model
from service.errors import AnalyticsError, forbidden
from service.query.compiler import (
    CompiledQuery,
    OutputColumn,
    QueryLimits,
    compile_query,
    resolve_model,
)
from service.query.request import QueryRequest
from service.rollups.routing import choose_rollup
from service.sync_status import oldest_sync

if TYPE_CHECKING:
    from service.cache.result_cache import ResultCache
    from service.rollups.keeper import RollupKeeper
    from service.segments.segment_service import SegmentService

#: Rows per granule of the replica tables (ClickHouse's ``index_granularity``, left at its
#: default by ``service.schema``): the unit ``meta.rowsScanned`` is reported in.
GRANULE_ROWS = 8192


@dataclass
class QueryOutcome:
    """A whole result with its meta."""

    columns: tuple[OutputColumn, ...]
    table: pa.Table
    stats: QueryStats
    last_sync_at: dt.datetime | None
    #: The rollup that answered ("" for the model's own rows).
    rollup: str = ""


@dataclass
class StreamMeta:
    """What a stream reports once its last chunk is sent."""

    columns: tuple[OutputColumn, ...]
    stats: QueryStats
    last_sync_at: dt.datetime | None
    #: The rollup whose rows were streamed ("" for the model's own rows).
    rollup: str = ""


class QueryService:
    """Runs analytics requests for authenticated principals."""

    def __init__(
        self,
        catalog: Catalog,
        backend: AnalyticsBackend,
        *,
        limits: QueryLimits,
        stream_limits: QueryLimits,
        timeout_seconds: float,
        segments: SegmentService | None = None,
        cache: ResultCache | None = None,
        budgets: Budgets | None = None,
        rollups: RollupKeeper | None = None,
    ) -> None:
        """Wire the catalog, the engine and the limits from settings.

        ``segments``: where the tenants' segments are read when a request names one.
        ``cache``: where ``run`` keeps and finds answers (``stream`` is never cached).
        ``budgets``: the tenants' budgets every request runs within (None: unlimited).
        ``rollups``: the keeper of the catalog's rollups, which answer the requests they can.
        """
        self.catalog = catalog
        self.backend = backend
        self._limits = limits
        self._stream_limits = stream_limits
        self._timeout = timeout_seconds
        self._segments = segments
        self.cache = cache
        self.budgets = budgets or Budgets.unlimited()
        self._rollups = rollups

    def _budget(self, remaining: float | None) -> float:
        if remaining is None:
            return self._timeout
        return max(min(self._timeout, remaining), 0.001)

    async def _authorise_and_compile(
        self, principal: Principal, request: QueryRequest, limits: QueryLimits
    ) -> CompiledQuery:
        authorise_reads(principal, [resolve_model(self.catalog, request.model)])
        catalog = self.catalog
        if self._segments is not None:
            catalog = await self._segments.catalog_for(principal.tenant, request.filters)
        compiled = compile_query(request, catalog, principal.tenant, limits)
        authorise_reads(principal, compiled.joined)
        return compiled

    async def run(
        self, principal: Principal, request: QueryRequest, *, remaining: float | None, rpc: str
    ) -> QueryOutcome:
        """Run a request to completion (bounded by the unary row limit)."""
        started = time.perf_counter()
        model_name = request.model[:200]
        try:
            compiled = await self._authorise_and_compile(principal, request, self._limits)
            model_name = compiled.model.qualified_name
            async with self.budgets.admit(principal.tenant) as admission:
                call_seconds = self._budget(remaining)
                try:
                    answered = await answer_queries(
                        self.backend,
                        self.catalog.database,
                        principal.tenant,
                        [admission.bound(compiled)],
                        timeout_seconds=admission.timeout(call_seconds),
                        cache=self.cache,
                        equivalent=self._rollup_equivalent(request, principal.tenant, self._limits),
                    )
                except AnalyticsError as error:
                    raise admission.translate(error, call_seconds) from None
                admission.scanned(answered.engine_rows_scanned)
        except AnalyticsError as error:
            audit_failure(principal, model_name, rpc, started, error)
            raise
        result = answered.results[0]
        audit.record_query(
            tenant=principal.tenant,
            subject=principal.subject,
            model=model_name,
            rpc=rpc,
            outcome="ok",
            duration_ms=(time.perf_counter() - started) * 1000,
            rows=result.table.num_rows,
            rows_scanned=answered.engine_rows_scanned,
        )
        return QueryOutcome(
            compiled.columns,
            result.table,
            served(caller_stats(result.stats), answered.cache_hit),
            answered.last_sync_at,
            result.rollup,
        )

    async def _streamed(self, principal: Principal, request: QueryRequest) -> CompiledQuery:
        """What StreamQuery runs: the request compiled, for its rollup when one answers it."""
        compiled = await self._authorise_and_compile(principal, request, self._stream_limits)
        equivalent = self._rollup_equivalent(request, principal.tenant, self._stream_limits)
        return compiled if equivalent is None else await equivalent(compiled)

    def _rollup_equivalent(
        self, request: QueryRequest, tenant: str, limits: QueryLimits
    ) -> Equivalent | None:
        """The request compiled for the rollup that answers it, planned when the engine runs.

        Planned only on a cache miss: the key is the base query's, and a rollup's answer is
        the base query's by construction (``service.rollups``).
        """
        keeper = self._rollups
        model = resolve_model(self.catalog, request.model)
        rollup = choose_rollup(request, model) if keeper is not None else None
        if keeper is None or rollup is None:
            return None

        async def equivalent(query: CompiledQuery) -> CompiledQuery:
            plan = await keeper.plan(model, rollup)
            if plan is None:
                return query
            routed = compile_query(request, self.catalog, tenant, limits, aggregated=plan)
            return dataclasses.replace(routed, settings={**routed.settings, **query.settings})

        return equivalent

    def stream(
        self,
        principal: Principal,
        request: QueryRequest,
        *,
        remaining: float | None,
        rpc: str,
        meta_sink: list[StreamMeta],
    ) -> AsyncGenerator[tuple[tuple[OutputColumn, ...], pa.RecordBatch]]:
        """Yield the result's record batches as the engine produces them (``stream_answer``)."""
        return stream_answer(
            self.backend,
            self.catalog.database,
            principal,
            request.model,
            lambda: self._streamed(principal, request),
            timeout_seconds=self._budget(remaining),
            rpc=rpc,
            meta_sink=meta_sink,
            budgets=self.budgets,
        )


async def stream_answer(
    backend: AnalyticsBackend,
    database: str,
    principal: Principal,
    reference: str,
    prepare: Callable[[], Awaitable[CompiledQuery]],
    *,
    timeout_seconds: float,
    rpc: str,
    meta_sink: list[StreamMeta],
    budgets: Budgets,
) -> AsyncGenerator[tuple[tuple[OutputColumn, ...], pa.RecordBatch]]:
    """Yield the record batches of the query ``prepare`` authorises and compiles, as they come.

    ``reference``: the model the request names (for the audit record of a refusal). Leaving the
    iteration early (client cancel, deadline) closes the engine's stream. The meta is appended
    to ``meta_sink`` after the last batch; one audit record either way. The whole stream runs
    within one admission of the tenant's ``budgets`` (one request, one running slot).
    """
    started = time.perf_counter()
    model_name = reference[:200]
    rows = 0
    stats = QueryStats()
    outcome = "cancelled"
    try:
        compiled = await prepare()
        model_name = compiled.model.qualified_name
        async with budgets.admit(principal.tenant) as admission:
            try:
                async with backend.stream(
                    admission.bound(compiled),
                    timeout_seconds=admission.timeout(timeout_seconds),
                    query_id=uuid.uuid4().hex,
                ) as stream:
                    async for batch in stream:
                        rows += batch.num_rows
                        yield compiled.columns, batch
                    stats = stream.stats
            except AnalyticsError as error:
                raise admission.translate(error, timeout_seconds) from None
            admission.scanned(stats.rows_scanned)
        last_sync = await oldest_sync(backend, database, compiled.tables)
        meta_sink.append(
            StreamMeta(compiled.columns, caller_stats(stats), last_sync, compiled.rollup)
        )
        outcome = "ok"
    except AnalyticsError as error:
        outcome = "failed"
        audit_failure(principal, model_name, rpc, started, error, rows=rows)
        raise
    finally:
        if outcome != "failed":
            audit.record_query(
                tenant=principal.tenant,
                subject=principal.subject,
                model=model_name,
                rpc=rpc,
                outcome=outcome,
                duration_ms=(time.perf_counter() - started) * 1000,
                rows=rows,
                rows_scanned=stats.rows_scanned,
            )


def authorise_reads(principal: Principal, models: Iterable[Model]) -> None:
    """Raise PERMISSION_DENIED unless ``principal`` may read every one of ``models``.

    A related model's fields are that model's data: joining them needs its read permission too.
    """
    for model in models:
        if not principal.has_permission(model.read_permission):
            raise forbidden(
                f"permission {model.read_permission!r} is required to read {model.qualified_name}",
                model.read_permission,
            )


def caller_stats(stats: QueryStats) -> QueryStats:
    """The engine's figures as the caller sees them: rows scanned in whole granules.

    The engine's ``read_rows`` counts every row of the granules it read, and tenants share
    granules where their rows meet (the sort key starts with the tenant), so the exact figure
    would tell a tenant how many rows its neighbours keep there. Rounded up to whole granules,
    it says only how many granules the query read; the audit log keeps the exact figure.
    """
    granules = -(-stats.rows_scanned // GRANULE_ROWS)
    return dataclasses.replace(stats, rows_scanned=granules * GRANULE_ROWS)


def audit_failure(
    principal: Principal,
    model: str,
    rpc: str,
    started: float,
    error: AnalyticsError,
    *,
    rows: int = 0,
) -> None:
    """The audit record of a call that failed with ``error`` (``started``: its perf_counter)."""
    audit.record_query(
        tenant=principal.tenant,
        subject=principal.subject,
        model=model,
        rpc=rpc,
        outcome=error.kind.value,
        reason=error.reason,
        duration_ms=(time.perf_counter() - started) * 1000,
        rows=rows,
    )
