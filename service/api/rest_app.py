"""The REST transport: ``POST /v1/data/{module}/analytics`` and its OpenAPI document.

It runs in the gRPC server's process and event loop (aiohttp.web) and shares its QueryService,
TokenVerifier and audit trail. The body is the proto3 JSON of the gRPC ``QueryRequest``, parsed
into that same message, so REST and grpcurl accept the same documents; the response is the JSON
the gRPC ``Query`` returns. Every failure is an ``application/problem+json`` document, never a
stack trace.

``{module}`` scopes the model: ``"model": "deals"`` under ``/v1/data/crm/analytics`` is
``crm.deals``; ``"model": "crm.deals"`` is accepted there too, but under any other module it is
404 ``not-found``, like every model the module does not have.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import pyarrow as pa
import structlog
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from analytics.v1 import analytics_pb2
from service import audit
from service.api import convert
from service.api.interceptors import TRACE_HEADER, trace_id_from
from service.api.openapi import OPENAPI_PATH, QUERY_PATH, openapi_document
from service.api.problem import (
    PROBLEM_CONTENT_TYPE,
    http_problem_document,
    problem_document,
    www_authenticate,
)
from service.auth import Principal, TokenVerifier
from service.catalog import Catalog
from service.errors import AnalyticsError, ErrorKind, not_found, validation_error
from service.events.ingestion import EventIngestion, all_rejected, audit_ingest
from service.events.json_events import BodyError, read_body
from service.events.validation import EventError, RawEvent, Rejection
from service.insights.funnel_request import FunnelRequest
from service.insights.insight_services import InsightServices
from service.insights.lifecycle_request import LifecycleRequest
from service.insights.retention_request import RetentionRequest
from service.insights.trend_request import TrendRequest
from service.query.request import QueryRequest
from service.query_service import QueryService, StreamMeta, audit_failure

if TYPE_CHECKING:
    from google._upb._message import FieldDescriptor as UpbFieldDescriptor

# The stubs give descriptors of generated messages as either implementation's class.
_Field: TypeAlias = "FieldDescriptor | UpbFieldDescriptor"
log = structlog.get_logger(__name__)
# The audit records' `rpc` of REST calls, beside gRPC's method names.
REST_RPC = "POST " + QUERY_PATH
TRENDS_PATH = "/v1/data/{module}/trends"
TRENDS_RPC = "POST " + TRENDS_PATH
FUNNELS_PATH = "/v1/data/{module}/funnels"
FUNNELS_RPC = "POST " + FUNNELS_PATH
RETENTION_PATH = "/v1/data/{module}/retention"
RETENTION_RPC = "POST " + RETENTION_PATH
LIFECYCLE_PATH = "/v1/data/{module}/lifecycle"
LIFECYCLE_RPC = "POST " + LIFECYCLE_PATH
FUNNEL_ACTORS_PATH = "/v1/data/{module}/funnels/actors"
FUNNEL_ACTORS_RPC = "POST " + FUNNEL_ACTORS_PATH
REST_ACTORS_DEFAULT_LIMIT = 10_000
"""Actors a REST FunnelActors answer holds without a limit (one JSON document; gRPC streams)."""
REST_ACTORS_MAX_LIMIT = 100_000
EVENTS_PATH = "/v1/events/{module}/{model}"
EVENTS_RPC = "POST " + EVENTS_PATH
METRICS_PATH = "/metrics"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_InsightMessage = TypeVar(
    "_InsightMessage",
    analytics_pb2.TrendRequest,
    analytics_pb2.FunnelRequest,
    analytics_pb2.RetentionRequest,
    analytics_pb2.LifecycleRequest,
)
_Insight = TypeVar("_Insight", TrendRequest, FunnelRequest, RetentionRequest, LifecycleRequest)


class RestServer:
    """The aiohttp application and its site, started and stopped with the gRPC server."""

    def __init__(
        self,
        queries: QueryService,
        verifier: TokenVerifier,
        *,
        max_body_bytes: int,
        ingestion: EventIngestion | None = None,
        insights: InsightServices | None = None,
    ) -> None:
        """Serve ``queries`` to callers ``verifier`` accepts; bodies up to ``max_body_bytes``.

        With ``ingestion``, also ``POST /v1/events/{module}/{model}`` and the sink's metrics at
        ``GET /metrics``.
        """
        self._queries = queries
        self._verifier = verifier
        self._ingestion = ingestion
        self._insights = insights
        self._openapi = openapi_document(queries.catalog)
        self._app = web.Application(middlewares=[self._problems], client_max_size=max_body_bytes)
        self._app.router.add_post(QUERY_PATH, self._query)
        self._app.router.add_get(OPENAPI_PATH, self._openapi_json)
        if insights is not None:
            self._app.router.add_post(TRENDS_PATH, self._trend)
            self._app.router.add_post(FUNNELS_PATH, self._funnel)
            self._app.router.add_post(FUNNEL_ACTORS_PATH, self._funnel_actors)
            self._app.router.add_post(RETENTION_PATH, self._retention)
            self._app.router.add_post(LIFECYCLE_PATH, self._lifecycle)
        if ingestion is not None:
            self._app.router.add_post(EVENTS_PATH, self._events)
            self._app.router.add_get(METRICS_PATH, self._metrics)
        self._runner: web.AppRunner | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0: a free port) and serve; return the bound port."""
        # handler_cancellation: a client that hangs up cancels its handler, and so its engine
        # query, as a cancelled gRPC call does. The access log is off: the audit records every
        # query. Shutdown waits in stop(), so aiohttp's own wait is zero.
        runner = web.AppRunner(
            self._app, access_log=None, handler_cancellation=True, shutdown_timeout=0.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, reuse_port=False)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return int(runner.addresses[0][1])

    async def stop(self, grace: float) -> None:
        """Stop accepting, give in-flight requests ``grace`` seconds, then close everything."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        if not self._idle.is_set():
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                log.warning("REST requests still running after the grace period are cancelled")
        await runner.cleanup()

    @web.middleware
    async def _problems(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Trace id in and out, and every failure as a problem document."""
        trace_id = trace_id_from({"traceparent": request.headers.get("traceparent", "")})
        # Requests on one keep-alive connection share a task, so its context is reset here.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(trace_id=trace_id, rpc=REST_RPC)
        self._in_flight += 1
        self._idle.clear()
        try:
            response = await handler(request)
        except AnalyticsError as error:
            response = _problem_response(problem_document(error, trace_id))
            if error.kind is ErrorKind.UNAUTHORIZED:
                sent = bool(request.headers.get("Authorization"))
                response.headers["WWW-Authenticate"] = www_authenticate(sent)
            if error.retry_after_seconds is not None:
                # Retry-After takes whole seconds (RFC 9110); never 0, which invites a hot loop.
                response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_seconds)))
        except web.HTTPException as exc:
            response = _problem_response(
                http_problem_document(exc.status, _http_detail(request, exc), trace_id)
            )
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except Exception:
            log.exception("REST request failed")
            response = _problem_response(
                problem_document(
                    AnalyticsError(ErrorKind.INTERNAL, "internal error", "INTERNAL"), trace_id
                )
            )
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        response.headers[TRACE_HEADER] = trace_id
        return response

    async def _openapi_json(self, _request: web.Request) -> web.Response:
        return web.json_response(self._openapi)

    async def _query(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        principal = self._authenticate(request, started)
        model = ""
        try:
            message = parse_query_body(request.content_type, await request.read())
            model = message.model
            scoped = scope_to_module(
                convert.query_request(message), request.match_info["module"], self._queries.catalog
            )
        except AnalyticsError as error:
            # The QueryService audits the failures it sees; these happen before it.
            audit_failure(principal, model[:200], REST_RPC, started, error)
            raise
        outcome = await self._queries.run(principal, scoped, remaining=None, rpc=REST_RPC)
        response = analytics_pb2.QueryResponse(
            data=convert.struct_rows(outcome.columns, outcome.table),
            meta=convert.query_meta(
                outcome.columns, outcome.stats, outcome.last_sync_at, rollup=outcome.rollup
            ),
        )
        return web.json_response(convert.response_json(response))

    async def _trend(self, request: web.Request) -> web.Response:
        trends = self._services().trends
        message = analytics_pb2.TrendRequest()
        principal, domain = await self._insight_request(
            request, message, TRENDS_RPC, convert.trend_request, trends.catalog
        )
        outcome = await trends.run(principal, domain, remaining=None, rpc=TRENDS_RPC)
        response = convert.trend_response(
            outcome.answer,
            outcome.stats,
            outcome.last_sync_at,
            breakdown=bool(message.breakdown),
            rollup=outcome.rollup,
        )
        return web.json_response(convert.trend_json(response))

    async def _funnel(self, request: web.Request) -> web.Response:
        funnels = self._services().funnels
        message = analytics_pb2.FunnelRequest()
        principal, domain = await self._insight_request(
            request, message, FUNNELS_RPC, convert.funnel_request, funnels.catalog
        )
        outcome = await funnels.run(principal, domain, remaining=None, rpc=FUNNELS_RPC)
        response = convert.funnel_response(outcome.answer, outcome.stats, outcome.last_sync_at)
        return web.json_response(convert.funnel_json(response))

    async def _funnel_actors(self, request: web.Request) -> web.Response:
        funnels = self._services().funnels
        started = time.perf_counter()
        principal = self._authenticate(request, started)
        structlog.contextvars.bind_contextvars(rpc=FUNNEL_ACTORS_RPC)
        message = analytics_pb2.FunnelActorsRequest()
        try:
            parse_body(request.content_type, await request.read(), message)
            domain = convert.funnel_actors_request(message)
            if domain.limit > REST_ACTORS_MAX_LIMIT:
                raise validation_error(
                    "limit",
                    f"limit: at most {REST_ACTORS_MAX_LIMIT} actors in one REST answer; page "
                    "with offset, or stream them with the gRPC FunnelActors",
                    "INVALID_VALUE",
                )
            model = scoped_model(domain.funnel.model, request.match_info["module"], funnels.catalog)
        except AnalyticsError as error:
            audit_failure(principal, message.funnel.model[:200], FUNNEL_ACTORS_RPC, started, error)
            raise
        domain = dataclasses.replace(
            domain,
            funnel=dataclasses.replace(domain.funnel, model=model),
            limit=domain.limit or REST_ACTORS_DEFAULT_LIMIT,
        )
        meta: list[StreamMeta] = []
        batches = []
        stream = funnels.actors(
            principal, domain, remaining=None, rpc=FUNNEL_ACTORS_RPC, meta_sink=meta
        )
        async with aclosing(stream):
            async for _, batch in stream:
                batches.append(batch)
        final = meta[0]
        table = pa.Table.from_batches(batches) if batches else None
        response = analytics_pb2.QueryResponse(
            data=convert.struct_rows(final.columns, table) if table is not None else [],
            meta=convert.query_meta(
                final.columns, final.stats, final.last_sync_at, rollup=final.rollup
            ),
        )
        return web.json_response(convert.response_json(response))

    async def _retention(self, request: web.Request) -> web.Response:
        retention = self._services().retention
        message = analytics_pb2.RetentionRequest()
        principal, domain = await self._insight_request(
            request, message, RETENTION_RPC, convert.retention_request, retention.catalog
        )
        outcome = await retention.run(principal, domain, remaining=None, rpc=RETENTION_RPC)
        response = convert.retention_response(
            outcome.answer, outcome.stats, outcome.last_sync_at, breakdown=bool(message.breakdown)
        )
        return web.json_response(convert.retention_json(response))

    async def _lifecycle(self, request: web.Request) -> web.Response:
        lifecycle = self._services().lifecycle
        message = analytics_pb2.LifecycleRequest()
        principal, domain = await self._insight_request(
            request, message, LIFECYCLE_RPC, convert.lifecycle_request, lifecycle.catalog
        )
        outcome = await lifecycle.run(principal, domain, remaining=None, rpc=LIFECYCLE_RPC)
        response = convert.lifecycle_response(outcome.answer, outcome.stats, outcome.last_sync_at)
        return web.json_response(convert.lifecycle_json(response))

    def _services(self) -> InsightServices:
        if self._insights is None:
            raise web.HTTPNotFound
        return self._insights

    async def _insight_request(
        self,
        request: web.Request,
        message: _InsightMessage,
        rpc: str,
        to_domain: Callable[[_InsightMessage], _Insight],
        catalog: Catalog,
    ) -> tuple[Principal, _Insight]:
        """The caller, and the body read into ``message`` as a domain request.

        The model is scoped to the path's module (a bare name is looked up there); a bad body
        is audited and raised.
        """
        started = time.perf_counter()
        principal = self._authenticate(request, started)
        structlog.contextvars.bind_contextvars(rpc=rpc)
        try:
            parse_body(request.content_type, await request.read(), message)
            domain = to_domain(message)
            model = scoped_model(domain.model, request.match_info["module"], catalog)
        except AnalyticsError as error:
            audit_failure(principal, message.model[:200], rpc, started, error)
            raise
        return principal, dataclasses.replace(domain, model=model)

    async def _events(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        principal = self._authenticate(request, started)
        ingestion = self._ingestion
        if ingestion is None:
            raise web.HTTPNotFound
        module, name = request.match_info["module"], request.match_info["model"]
        reference = f"{module}.{name}"
        structlog.contextvars.bind_contextvars(rpc=EVENTS_RPC)
        try:
            if ingestion.catalog.get(module, name) is None:
                raise not_found(
                    f"model: module {module[:100]!r} has no model {name[:200]!r}",
                    model=reference[:300],
                )
            model = ingestion.resolve(principal, reference)
            try:
                items = read_body(request.content_type, await request.read())
            except BodyError as error:
                raise validation_error(
                    error.field, f"{error.field}: {error.reason}", "INVALID_BODY"
                ) from None
            events = [item for item in items if isinstance(item, RawEvent)]
            unreadable = [
                Rejection(index, item.field, item.reason)
                for index, item in enumerate(items)
                if isinstance(item, EventError)
            ]
            # Indexes are positions in the body: readable events are renumbered back below.
            positions = [index for index, item in enumerate(items) if isinstance(item, RawEvent)]
            if len(items) > ingestion.max_request_events:
                raise validation_error(
                    "body",
                    f"body: {len(items)} events in one request; at most "
                    f"{ingestion.max_request_events} (split the batch)",
                    "TOO_MANY_EVENTS",
                )
            # Events that could not even be read are refused as much as invalid ones.
            ingestion.count_rejected(model, unreadable)
            submitted = ingestion.submit(principal.tenant, model, events, source="body")
            rejected = sorted(
                [
                    *unreadable,
                    *(Rejection(positions[r.index], r.field, r.reason) for r in submitted.rejected),
                ],
                key=lambda r: r.index,
            )
            # Shielded: a caller that hangs up does not stop events already handed over.
            await asyncio.shield(submitted.written)
            if rejected and not submitted.accepted:
                raise all_rejected(rejected)
        except AnalyticsError as error:
            audit_ingest(principal, reference, EVENTS_RPC, started, accepted=0, error=error)
            raise
        audit_ingest(principal, reference, EVENTS_RPC, started, accepted=submitted.accepted)
        return web.json_response(
            {
                "accepted": submitted.accepted,
                "rejected": [
                    {"index": r.index, "field": r.field, "reason": r.reason} for r in rejected
                ],
            }
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self._ingestion is None:
            raise web.HTTPNotFound
        return web.Response(
            body=self._ingestion.sink.metrics.exposition(),
            headers={"Content-Type": PROMETHEUS_CONTENT_TYPE},
        )

    def _authenticate(self, request: web.Request, started: float) -> Principal:
        try:
            principal = self._verifier.verify_header(request.headers.get("Authorization"))
        except AnalyticsError as error:
            audit.record_unauthenticated(REST_RPC, error, started)
            raise
        structlog.contextvars.bind_contextvars(tenant=principal.tenant, subject=principal.subject)
        return principal


def parse_query_body(content_type: str, body: bytes) -> analytics_pb2.QueryRequest:
    """The ``QueryRequest`` a JSON body holds; a validation error naming the fault otherwise."""
    message = analytics_pb2.QueryRequest()
    parse_body(content_type, body, message)
    return message


def parse_body(content_type: str, body: bytes, message: Message) -> None:
    """Fill ``message`` from a JSON body; a validation error naming the fault otherwise.

    The proto3 JSON mapping decides what is accepted (camelCase or proto field names, integers
    also as strings); the body is checked property by property first so that an error names
    the offending property (``limit``, ``metrics[0].alias``).
    """
    if content_type != "application/json":
        raise validation_error(
            "Content-Type",
            f"Content-Type: send the body as application/json, not {content_type or 'nothing'}",
            "UNSUPPORTED_CONTENT_TYPE",
        )
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except UnicodeDecodeError:
        raise validation_error("body", "body: not UTF-8 text", "INVALID_JSON") from None
    except (ValueError, RecursionError) as exc:
        raise validation_error("body", f"body: not valid JSON: {exc}", "INVALID_JSON") from None
    _parse_object(document, message, "")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the property {key!r} is given twice")
        result[key] = value
    return result


def _parse_object(document: object, message: Message, path: str) -> None:
    where = path or "body"
    descriptor = message.DESCRIPTOR
    if not isinstance(document, dict):
        raise validation_error(
            where, f"{where}: must be a JSON object ({descriptor.name})", "INVALID_JSON"
        )
    fields = _json_fields(message)
    seen: set[str] = set()
    for key, value in document.items():
        name = f"{path}.{key}" if path else key
        field = fields.get(key)
        if field is None:
            known = ", ".join(f.json_name for f in descriptor.fields)
            raise validation_error(
                name, f"{name}: unknown property; {descriptor.name} has {known}", "UNKNOWN_PROPERTY"
            )
        if field.name in seen:
            raise validation_error(
                name, f"{name}: given twice (as {field.name} and {field.json_name})", "INVALID_JSON"
            )
        seen.add(field.name)
        if _is_message_list(field) and isinstance(value, list):
            for index, item in enumerate(value):
                _parse_object(item, getattr(message, field.name).add(), f"{name}[{index}]")
            continue
        if _is_map(field) and isinstance(value, dict):
            for entry, text in value.items():
                if not isinstance(text, str):
                    raise validation_error(
                        f"{name}.{entry}",
                        f"{name}.{entry}: must be a string such as eq.closed_won",
                        "INVALID_TYPE",
                    )
        try:
            json_format.ParseDict({key: value}, message)
        except json_format.ParseError as exc:
            reason = str(exc).split("\n", 1)[0]
            raise validation_error(name, f"{name}: {reason}", "INVALID_TYPE") from None


def _is_map(field: _Field) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def _is_message_list(field: _Field) -> bool:
    return field.is_repeated and field.message_type is not None and not _is_map(field)


def _json_fields(message: Message) -> dict[str, _Field]:
    fields: dict[str, _Field] = {}
    for field in message.DESCRIPTOR.fields:
        fields[field.name] = field
        fields[field.json_name] = field
    return fields


def scope_to_module(request: QueryRequest, module: str, catalog: Catalog) -> QueryRequest:
    """The request with its model qualified by the path's module.

    A bare name is looked up in the module; ``module.model`` must name the path's module. Either
    way a model the module lacks is ``not-found``. An empty model is left to the compiler, which
    reports it as required.
    """
    return dataclasses.replace(request, model=scoped_model(request.model, module, catalog))


def scoped_model(model: str, module: str, catalog: Catalog) -> str:
    """``model`` qualified by the path's module (empty stays empty); see ``scope_to_module``."""
    if not model:
        return model
    prefix, dot, name = model.partition(".")
    if not dot:
        name = prefix
    elif prefix != module:
        raise not_found(
            f"model: {model[:200]!r} is not a model of module {module[:100]!r}",
            model=model[:200],
        )
    if catalog.get(module, name) is None:
        raise not_found(
            f"model: module {module[:100]!r} has no model {name[:200]!r}",
            model=f"{module[:100]}.{name[:200]}",
        )
    return f"{module}.{name}"


def _http_detail(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPNotFound):
        return f"no endpoint at {request.path[:200]}; queries go to POST {QUERY_PATH}"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"{request.method} is not allowed here; use {', '.join(sorted(exc.allowed_methods))}"
    return exc.text or exc.reason


def _problem_response(document: dict[str, Any]) -> web.Response:
    return web.json_response(
        document, status=int(document["status"]), content_type=PROBLEM_CONTENT_TYPE
    )
