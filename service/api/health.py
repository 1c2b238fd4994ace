"""The health service, telling callers how tenants are isolated on this engine.

``grpc.health.v1`` responses have no room for details, so every Check and Watch answer carries
the isolation status in the ``x-tenant-isolation`` response header (grpcurl -v shows it):
whether the engine enforces per-tenant row policies or the query compiler's tenant filter is the
only layer (DESIGN.md section 6). The service never claims a layer it does not have.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2

ISOLATION_HEADER = "x-tenant-isolation"


class IsolationReportingHealth(health.aio.HealthServicer):
    """The standard health servicer, plus the isolation status in the response headers."""

    def __init__(self) -> None:
        """Start with no status known: the header says so until the engine was asked."""
        super().__init__()
        self.isolation = "not yet determined: the engine has not been asked"

    async def Check(  # noqa: N802 - the generated service's method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        """Answer as the standard servicer does, after sending the isolation header."""
        await context.send_initial_metadata(((ISOLATION_HEADER, self.isolation),))
        response: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return response

    async def Watch(  # noqa: N802 - the generated service's method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Stream as the standard servicer does (it writes to the context), after the header."""
        await context.send_initial_metadata(((ISOLATION_HEADER, self.isolation),))
        await super().Watch(request, context)
