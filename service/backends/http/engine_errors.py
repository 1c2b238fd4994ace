"""What a ClickHouse server's failures mean, as the service's ``AnalyticsError``.

The server's timeout codes -> TIMEOUT; any other server error -> INTERNAL with
``engine_message`` (secrets redacted, see ``redact_secrets``). On the read path a missing table
or database (codes 60, 81) is the ``REPLICA_MISSING`` UNAVAILABLE error of the embedded backend
instead: no loader has created the replica yet; and a tenant's user the server refuses to let in
is FORBIDDEN ``TENANT_NOT_PROVISIONED``. Failures of the connection itself are mapped where the
request is made (``client``, ``results``): only there is the query to kill known.
"""

from __future__ import annotations

import contextvars
import re

import aiohttp
import structlog

from service.errors import (
    ROWS_LIMIT_CODE,
    AnalyticsError,
    ErrorKind,
    query_timeout,
    rows_limit_exceeded,
)

log = structlog.get_logger(__name__)

#: ClickHouse error codes that mean "the query ran out of time".
TIMEOUT_CODES = frozenset({"159", "160", "209"})
#: ClickHouse error codes for a missing table or database.
MISSING_TABLE_CODES = frozenset({"60", "81"})
#: ClickHouse error codes a tenant user gets when it was never provisioned (or lost a grant):
#: UNKNOWN_USER, AUTHENTICATION_FAILED, ACCESS_DENIED, REQUIRED_PASSWORD, WRONG_PASSWORD.
TENANT_LOGIN_CODES = frozenset({"192", "516", "497", "194", "193"})
#: The first line of a server's exception in a response body (18.16's and current wording).
EXCEPTION_LINE = re.compile(rb"^Code: \d+, e\.displayText\(\) = |^Code: \d+\. DB::Exception")
#: Set while probing a server's features: failures are the answer there, not errors to log.
PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar("probing", default=False)
# What engine messages must never show when logged: passwords and password hashes in access
# statements (the provisioner redacts its own errors too; this covers the log line written here).
_SECRET_IN_STATEMENT = re.compile(
    r"(IDENTIFIED\s+(?:WITH\s+\w+\s+)?BY\s+)'(?:[^'\\]|\\.)*'", re.IGNORECASE
)
_HEX_DIGEST = re.compile(r"\b[0-9a-fA-F]{64}\b")
_ERROR_CODE = re.compile(r"Code: (\d+)")


def read_path_error(error: AnalyticsError, *, as_tenant: bool = False) -> AnalyticsError:
    """``error`` as the read path reports it: a missing table is ``REPLICA_MISSING``.

    Nothing has created the replica yet (no loader has run): not ready rather than broken, the
    same error the embedded backend gives. A read sent as a tenant's user that the server
    refuses to let in means the tenant was never provisioned (or lost its grants).
    """
    code = error.metadata.get("engine_code", "")
    if as_tenant and error.kind is ErrorKind.INTERNAL and code in TENANT_LOGIN_CODES:
        return AnalyticsError(
            ErrorKind.FORBIDDEN,
            "the tenant is not provisioned on the analytics engine; provision it with "
            "TenantService.Provision or `analytics tenants provision`",
            "TENANT_NOT_PROVISIONED",
            metadata={"engine_code": code},
        )
    if error.kind is not ErrorKind.INTERNAL or code not in MISSING_TABLE_CODES:
        return error
    return AnalyticsError(
        ErrorKind.UNAVAILABLE,
        "the model's replica table does not exist yet: no loader has created it",
        "REPLICA_MISSING",
        metadata=dict(error.metadata),
    )


def server_error(
    response: aiohttp.ClientResponse, payload: bytes, timeout: float, query_id: str
) -> AnalyticsError:
    """The error a non-200 response means: its exception code, from the header or the text."""
    message = payload.decode("utf-8", "replace").strip() or f"HTTP {response.status}"
    code = response.headers.get("X-ClickHouse-Exception-Code", "")
    if not code:
        match = _ERROR_CODE.search(message)
        code = match.group(1) if match else ""
    if code in TIMEOUT_CODES:
        return query_timeout(timeout, message)
    if code == ROWS_LIMIT_CODE:
        return rows_limit_exceeded(message)
    return engine_error(message, code, query_id)


def engine_error(message: str, code: str, query_id: str) -> AnalyticsError:
    """INTERNAL ``ENGINE_ERROR`` carrying the server's (redacted) message; logged once here."""
    # A missing table is routine (last_sync_at before the first load); anything else is not,
    # except where a failure is what a probe looks for.
    if PROBING.get():
        level = log.debug
    else:
        level = log.warning if code in MISSING_TABLE_CODES else log.error
    message = redact_secrets(message)
    level("engine error", engine_message=message[:2000], engine_code=code, query_id=query_id)
    return AnalyticsError(
        ErrorKind.INTERNAL,
        "the analytics engine failed to run the query",
        "ENGINE_ERROR",
        metadata={"engine_message": message[:500], "engine_code": code, "query_id": query_id},
    )


def redact_secrets(message: str) -> str:
    """An engine message with any password or 64-digit hex digest replaced by ``[HIDDEN]``.

    Servers quote the failing statement in their errors; for ``CREATE USER``/``ALTER USER`` that
    statement holds a tenant's password hash, which must reach neither logs nor callers.
    """
    message = _SECRET_IN_STATEMENT.sub(r"\1'[HIDDEN]'", message)
    return _HEX_DIGEST.sub("[HIDDEN]", message)


def code_of(line: bytes) -> str:
    """The error code in a line of the server's exception text (empty when it names none)."""
    match = _ERROR_CODE.search(line.decode("utf-8", "replace"))
    return match.group(1) if match else ""
