"""Domain errors, independent of any transport.

Each names its kind (which fixes the gRPC status and the REST problem type), a machine-readable
reason, and the request fields at fault. The transport layers map them in one place each.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ErrorKind(enum.Enum):
    """The error rows of DESIGN.md section 5, plus internal failures."""

    NOT_FOUND = "not-found"
    VALIDATION = "validation-error"
    FORBIDDEN = "forbidden"
    UNAUTHORIZED = "unauthorized"
    TIMEOUT = "gateway-timeout"
    UNAVAILABLE = "unavailable"
    PRECONDITION = "failed-precondition"
    RESOURCE_EXHAUSTED = "too-many-requests"
    INTERNAL = "internal"


@dataclass(frozen=True)
class FieldViolation:
    """One offending request field, in the request's JSON naming (``filters.stage``)."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One limit a request went over (sent as a ``google.rpc.QuotaFailure`` violation).

    ``subject``: whose quota (``tenant:<id>``); ``limit``: the limit's name
    (``requests_per_second``, ``concurrent_queries``, ``rows_per_query``, ``seconds_per_query``).
    """

    subject: str
    limit: str
    description: str


@dataclass
class AnalyticsError(Exception):
    """An error a caller receives: the kind, a human message, a reason code and offending fields."""

    kind: ErrorKind
    message: str
    reason: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_seconds: float | None = None
    """When to try again, for errors that pass (a full buffer); sent as RetryInfo/Retry-After."""
    quota_violations: list[QuotaViolation] = field(default_factory=list)
    """The limits the request went over (a tenant's budget); sent as QuotaFailure."""

    def __str__(self) -> str:
        return self.message


def validation_error(
    field_name: str, message: str, reason: str = "INVALID_ARGUMENT"
) -> AnalyticsError:
    """A request value that cannot be accepted, naming the field."""
    return AnalyticsError(
        ErrorKind.VALIDATION, message, reason, [FieldViolation(field_name, message)]
    )


def unknown_field(field_name: str, name: str, model: str) -> AnalyticsError:
    """A field name the model does not have."""
    message = f"{field_name}: unknown field {name!r} in model {model!r}"
    return AnalyticsError(
        ErrorKind.VALIDATION,
        message,
        "UNKNOWN_FIELD",
        [FieldViolation(field_name, message)],
        {"field": name[:200], "model": model},
    )


def not_found(message: str, **metadata: str) -> AnalyticsError:
    """Something the request names does not exist (for example the model)."""
    return AnalyticsError(ErrorKind.NOT_FOUND, message, "NOT_FOUND", metadata=metadata)


def forbidden(message: str, permission: str) -> AnalyticsError:
    """The caller is authenticated but lacks the permission."""
    return AnalyticsError(
        ErrorKind.FORBIDDEN, message, "PERMISSION_DENIED", metadata={"permission": permission}
    )


def unauthorized(message: str) -> AnalyticsError:
    """No token, or one that does not verify."""
    return AnalyticsError(ErrorKind.UNAUTHORIZED, message, "UNAUTHENTICATED")


def query_timeout(seconds: float, detail: str) -> AnalyticsError:
    """The engine gave up on the query after its time budget."""
    return AnalyticsError(
        ErrorKind.TIMEOUT,
        f"query exceeded its time budget of {seconds:.1f}s",
        "QUERY_TIMEOUT",
        metadata={"engine_message": detail[:500]},
    )


def engine_unavailable(detail: str) -> AnalyticsError:
    """The engine cannot be reached."""
    return AnalyticsError(
        ErrorKind.UNAVAILABLE,
        "the analytics engine is unavailable",
        "ENGINE_UNAVAILABLE",
        metadata={"engine_message": detail[:500]},
    )


def resource_exhausted(
    message: str,
    reason: str,
    retry_after_seconds: float | None,
    quota: QuotaViolation | None = None,
) -> AnalyticsError:
    """The service is at a limit; the caller may retry after the delay (None: not as it is).

    ``quota``: the tenant's limit that was hit (QuotaFailure), for budget refusals.
    """
    metadata = {}
    if retry_after_seconds is not None:
        metadata["retry_after_seconds"] = f"{retry_after_seconds:.3f}"
    if quota is not None:
        metadata["limit"] = quota.limit
    return AnalyticsError(
        ErrorKind.RESOURCE_EXHAUSTED,
        message,
        reason,
        metadata=metadata,
        retry_after_seconds=retry_after_seconds,
        quota_violations=[quota] if quota is not None else [],
    )


#: ClickHouse's TOO_MANY_ROWS: ``max_rows_to_read`` with ``read_overflow_mode='throw'`` hit.
ROWS_LIMIT_CODE = "158"


def rows_limit_exceeded(detail: str) -> AnalyticsError:
    """The engine stopped a query at its ``max_rows_to_read`` (the rows-scanned budget).

    The budget layer (``service.budgets``) turns it into the tenant's ``rows_per_query`` refusal.
    """
    return AnalyticsError(
        ErrorKind.RESOURCE_EXHAUSTED,
        "the query read more rows than its budget allows",
        "ENGINE_ROWS_LIMIT",
        metadata={"engine_message": detail[:500]},
    )
