"""The audit trail: one structured record per query and per denial.

Records go to the ``audit`` logger as JSON (with the trace id and tenant bound by the transport)
so that a log pipeline can route them apart from operational logs.
"""

from __future__ import annotations

import time

import structlog

from service.errors import AnalyticsError

_audit = structlog.get_logger("audit")


def record_query(
    *,
    tenant: str,
    subject: str,
    model: str,
    outcome: str,
    duration_ms: float,
    rows: int = 0,
    rows_scanned: int = 0,
    rpc: str = "",
    reason: str = "",
) -> None:
    """Log one audit record; ``outcome`` is ``ok`` or the error kind (``forbidden``, ...)."""
    _audit.info(
        "audit",
        audit=True,
        tenant=tenant,
        subject=subject,
        model=model,
        rpc=rpc,
        outcome=outcome,
        reason=reason,
        duration_ms=round(duration_ms, 3),
        rows=rows,
        rows_scanned=rows_scanned,
    )


def record_unauthenticated(rpc: str, error: AnalyticsError, started: float) -> None:
    """Log the audit record of a call refused before any tenant was known (bad or no token).

    ``started`` is the call's ``time.perf_counter()`` at arrival.
    """
    record_query(
        tenant="",
        subject="",
        model="",
        rpc=rpc,
        outcome=error.kind.value,
        reason=error.reason,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def record_change(*, tenant: str, subject: str, action: str, name: str) -> None:
    """Log the audit record of a change to a tenant's own configuration (a segment saved)."""
    _audit.info(
        "audit", audit=True, tenant=tenant, subject=subject, action=action, name=name, outcome="ok"
    )
