"""The auth interceptor: every call but health and reflection needs a valid bearer token.

It wraps the method handler rather than checking before it, so that the principal and trace id
it binds (contextvars) live in the task that runs the handler. The trace id is taken from a W3C
``traceparent`` header when the caller sends one, generated otherwise, and returned to the caller
in the ``x-trace-id`` response header.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError

from service import audit
from service.api.status import abort_with_error
from service.auth import Principal, TokenVerifier
from service.errors import AnalyticsError, ErrorKind, validation_error

_log = structlog.get_logger(__name__)
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
TRACE_HEADER = "x-trace-id"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")

current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("current_principal")

# grpc ships no types; the aio servicer context is untyped here.
Context: TypeAlias = Any


def trace_id_from(metadata: dict[str, str]) -> str:
    """The caller's W3C trace id, or a new one."""
    match = _TRACEPARENT.match(metadata.get("traceparent", "").strip().lower())
    if match and match["trace"] != "0" * 32:
        return match["trace"]
    return uuid.uuid4().hex


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates calls and binds principal and trace id for the handler."""

    def __init__(self, verifier: TokenVerifier) -> None:
        """Use ``verifier`` for every non-public method."""
        self._verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the handlers of our services (unary, server- and client-streaming)."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Bidirectional streams would pass unauthenticated: refuse them until one is wrapped.
        raise NotImplementedError(f"{method}: no authentication wrapper for this kind of RPC")

    async def _authenticate(self, context: Context, method: str) -> Principal:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        trace_id = trace_id_from(metadata)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(trace_id=trace_id, rpc=method)
        await context.send_initial_metadata(((TRACE_HEADER, trace_id),))
        started = time.perf_counter()
        try:
            principal = self._verifier.verify_header(metadata.get("authorization"))
        except AnalyticsError as error:
            audit.record_unauthenticated(method, error, started)
            await abort_with_error(context, error)
        structlog.contextvars.bind_contextvars(tenant=principal.tenant, subject=principal.subject)
        current_principal.set(principal)
        return principal

    def _wrap_unary(
        self, behavior: Callable[[Any, Context], Awaitable[Any]], method: str
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def wrapped(request: Any, context: Context) -> Any:
            await self._authenticate(context, method)
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await abort_with_error(context, _unexpected(error, method))

        return wrapped

    def _wrap_stream(
        self, behavior: Callable[[Any, Context], AsyncIterator[Any]], method: str
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            await self._authenticate(context, method)
            try:
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await abort_with_error(context, _unexpected(error, method))

        return wrapped


def _unexpected(error: Exception, method: str) -> AnalyticsError:
    """What a call answers for an exception its handler did not turn into an AnalyticsError.

    A request stream's message that protobuf cannot read (a string field not UTF-8) is the
    caller's; anything else is ours, logged with its traceback and answered INTERNAL without
    the exception's text (grpc's default, UNKNOWN, would show the Python class and message).
    """
    if isinstance(error, DecodeError):
        return validation_error(
            "request",
            "request: a message of the stream is not valid protobuf (a string field that is "
            "not UTF-8?)",
            "INVALID_MESSAGE",
        )
    _log.exception("call failed", method=method)
    return AnalyticsError(ErrorKind.INTERNAL, "internal error", "INTERNAL")
