"""The one place domain errors become gRPC statuses with ``google.rpc`` details."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.errors import AnalyticsError, ErrorKind

ERROR_DOMAIN = "analytics.v1"
_CODES = {
    ErrorKind.NOT_FOUND: code_pb2.NOT_FOUND,
    ErrorKind.VALIDATION: code_pb2.INVALID_ARGUMENT,
    ErrorKind.FORBIDDEN: code_pb2.PERMISSION_DENIED,
    ErrorKind.UNAUTHORIZED: code_pb2.UNAUTHENTICATED,
    ErrorKind.TIMEOUT: code_pb2.DEADLINE_EXCEEDED,
    ErrorKind.UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorKind.PRECONDITION: code_pb2.FAILED_PRECONDITION,
    ErrorKind.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    ErrorKind.INTERNAL: code_pb2.INTERNAL,
}


def error_status(error: AnalyticsError) -> grpc.Status:
    """A gRPC status carrying ErrorInfo (reason, type suffix) and, for bad fields, BadRequest."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=ERROR_DOMAIN,
        metadata={"type": error.kind.value, **error.metadata},
    )
    details = [_pack(info)]
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=error.reason
                )
                for v in error.violations
            ]
        )
        details.append(_pack(bad_request))
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(error.retry_after_seconds * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    if error.quota_violations:
        failure = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=v.subject, description=f"{v.limit}: {v.description}"
                )
                for v in error.quota_violations
            ]
        )
        details.append(_pack(failure))
    status = status_pb2.Status(code=_CODES[error.kind], message=error.message, details=details)
    return rpc_status.to_status(status)


async def abort_with_error(
    context: grpc.aio.ServicerContext[object, object], error: AnalyticsError
) -> NoReturn:
    """End the call with the error's status."""
    await context.abort_with_status(error_status(error))
    raise AssertionError("abort_with_status returned")  # it always raises


def _pack(
    message: error_details_pb2.ErrorInfo
    | error_details_pb2.BadRequest
    | error_details_pb2.RetryInfo
    | error_details_pb2.QuotaFailure,
) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
