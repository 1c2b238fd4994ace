"""SegmentService over gRPC: translates messages to the domain's SegmentService and back."""

from __future__ import annotations

from analytics.v1 import segments_pb2, segments_pb2_grpc
from service.api.interceptors import Context, current_principal
from service.api.status import abort_with_error
from service.errors import AnalyticsError
from service.segments.definition import SegmentDefinition
from service.segments.segment_service import SegmentService


def segment_definition(message: segments_pb2.Segment) -> SegmentDefinition:
    """The domain definition of a Segment message."""
    return SegmentDefinition(
        name=message.name,
        kind=message.kind,
        model=message.model,
        event=message.event,
        filters=dict(message.filters),
        min_count=message.min_count,
        window=message.window,
        description=message.description,
    )


def segment_message(definition: SegmentDefinition) -> segments_pb2.Segment:
    """The Segment message of a stored definition."""
    return segments_pb2.Segment(
        name=definition.name,
        kind=definition.kind,
        model=definition.model,
        event=definition.event,
        filters=dict(definition.filters),
        min_count=definition.min_count,
        window=definition.window,
        description=definition.description,
    )


class SegmentServicer(segments_pb2_grpc.SegmentServiceServicer):
    """CreateSegment, ListSegments and DeleteSegment for the caller's tenant."""

    def __init__(self, segments: SegmentService) -> None:
        """Serve ``segments``."""
        self._segments = segments

    async def CreateSegment(  # noqa: N802 (the generated base class names it)
        self, request: segments_pb2.CreateSegmentRequest, context: Context
    ) -> segments_pb2.CreateSegmentResponse:
        """Store a segment."""
        try:
            stored = await self._segments.create(
                current_principal.get(),
                segment_definition(request.segment),
                replace=request.replace,
            )
        except AnalyticsError as error:
            await abort_with_error(context, error)
        return segments_pb2.CreateSegmentResponse(segment=segment_message(stored))

    async def ListSegments(  # noqa: N802
        self, request: segments_pb2.ListSegmentsRequest, context: Context
    ) -> segments_pb2.ListSegmentsResponse:
        """The tenant's segments."""
        try:
            found = await self._segments.list(current_principal.get())
        except AnalyticsError as error:
            await abort_with_error(context, error)
        return segments_pb2.ListSegmentsResponse(segments=[segment_message(d) for d in found])

    async def DeleteSegment(  # noqa: N802
        self, request: segments_pb2.DeleteSegmentRequest, context: Context
    ) -> segments_pb2.DeleteSegmentResponse:
        """Remove a segment."""
        try:
            await self._segments.delete(current_principal.get(), request.name)
        except AnalyticsError as error:
            await abort_with_error(context, error)
        return segments_pb2.DeleteSegmentResponse()
