"""The one place domain errors become REST problems (RFC 9457 ``application/problem+json``).

The ``type`` is ``PROBLEM_TYPE_BASE`` plus the DESIGN.md section 5 suffix of the error's kind, so
that a client can switch on the suffix alone; ``code`` is the same reason the gRPC ErrorInfo
carries, and ``field`` the first offending request field (``violations`` lists them all).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from service.errors import AnalyticsError, ErrorKind

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://analytics.internal/problems/"
# RFC 6750: the realm a 401's WWW-Authenticate challenge names.
AUTH_REALM = "analytics"

_STATUS = {
    ErrorKind.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorKind.VALIDATION: HTTPStatus.BAD_REQUEST,
    ErrorKind.FORBIDDEN: HTTPStatus.FORBIDDEN,
    ErrorKind.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    ErrorKind.TIMEOUT: HTTPStatus.GATEWAY_TIMEOUT,
    ErrorKind.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorKind.PRECONDITION: HTTPStatus.CONFLICT,
    ErrorKind.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorKind.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}
_TITLES = {
    ErrorKind.NOT_FOUND: "Not found",
    ErrorKind.VALIDATION: "Invalid request",
    ErrorKind.FORBIDDEN: "Permission denied",
    ErrorKind.UNAUTHORIZED: "Missing or invalid bearer token",
    ErrorKind.TIMEOUT: "Query exceeded its time budget",
    ErrorKind.UNAVAILABLE: "Analytics engine unavailable",
    ErrorKind.PRECONDITION: "Failed precondition",
    ErrorKind.RESOURCE_EXHAUSTED: "Too many requests",
    ErrorKind.INTERNAL: "Internal error",
}


def http_status(kind: ErrorKind) -> int:
    """The HTTP status of an error kind (the table of DESIGN.md section 5)."""
    return int(_STATUS[kind])


def problem_type(suffix: str) -> str:
    """The problem ``type`` URI for a type suffix such as ``validation-error``."""
    return PROBLEM_TYPE_BASE + suffix


def problem_document(error: AnalyticsError, trace_id: str) -> dict[str, Any]:
    """The problem+json body of a domain error."""
    document: dict[str, Any] = {
        "type": problem_type(error.kind.value),
        "title": _TITLES[error.kind],
        "status": http_status(error.kind),
        "detail": error.message,
        "code": error.reason,
        "traceId": trace_id,
    }
    if error.violations:
        document["field"] = error.violations[0].field
        document["violations"] = [
            {"field": v.field, "description": v.description} for v in error.violations
        ]
    if error.metadata:
        document["metadata"] = dict(error.metadata)
    if error.quota_violations:
        document["quotaViolations"] = [
            {"subject": v.subject, "limit": v.limit, "description": v.description}
            for v in error.quota_violations
        ]
    if error.retry_after_seconds is not None:
        document["retryAfterSeconds"] = round(error.retry_after_seconds, 3)
    return document


def http_problem_document(status: int, detail: str, trace_id: str) -> dict[str, Any]:
    """The problem+json body of an HTTP-level failure (unknown path, wrong method, body too big).

    These have no row in DESIGN.md's table: the type suffix and code come from the status phrase
    (``method-not-allowed``, ``METHOD_NOT_ALLOWED``); a 404 is ``not-found`` like an unknown model.
    """
    phrase = HTTPStatus(status).phrase
    return {
        "type": problem_type(phrase.lower().replace(" ", "-")),
        "title": phrase,
        "status": status,
        "detail": detail,
        "code": phrase.upper().replace(" ", "_"),
        "traceId": trace_id,
    }


def www_authenticate(token_sent: bool) -> str:
    """The RFC 6750 challenge of a 401: ``invalid_token`` only when a token was presented."""
    if not token_sent:
        return f'Bearer realm="{AUTH_REALM}"'
    return f'Bearer realm="{AUTH_REALM}", error="invalid_token"'
