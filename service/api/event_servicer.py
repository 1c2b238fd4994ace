"""EventService: translates Ingest streams to the domain's EventIngestion and answers once."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator

from analytics.v1 import events_pb2, events_pb2_grpc
from service.api.interceptors import Context, current_principal
from service.api.status import abort_with_error
from service.catalog import Model
from service.errors import AnalyticsError, validation_error
from service.events.columnar import EventBatch, FlatProperties
from service.events.ingestion import EventIngestion, all_rejected, audit_ingest
from service.events.validation import Rejection

INGEST_RPC = "Ingest"


class EventServicer(events_pb2_grpc.EventServiceServicer):
    """Ingest: every batch of the stream goes to the sink as it arrives; one answer at the end."""

    def __init__(self, ingestion: EventIngestion, window_events: int) -> None:
        """Serve through ``ingestion``; one stream holds at most ``window_events`` unwritten."""
        self._ingestion = ingestion
        self._window = window_events

    async def Ingest(  # noqa: N802 (the generated base class names it)
        self, request_iterator: AsyncIterator[events_pb2.IngestRequest], context: Context
    ) -> events_pb2.IngestResponse:
        """Validate and submit each batch; answer when every accepted event is written."""
        principal = current_principal.get()
        started = time.perf_counter()
        model: Model | None = None
        reference = ""
        writes: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()
        in_flight = 0
        accepted = 0
        rejected: list[Rejection] = []
        index = 0
        try:
            async for message in request_iterator:
                if model is None:
                    reference = message.model
                    model = self._ingestion.resolve(principal, reference)
                elif message.model and message.model != reference:
                    raise validation_error(
                        "model",
                        f"model: every batch of a stream names the same model "
                        f"({reference[:100]!r}, then {message.model[:100]!r})",
                        "MODEL_CHANGED",
                    )
                events = _batch(message)
                submitted = self._ingestion.submit(
                    principal.tenant, model, events, first_index=index
                )
                index += len(events)
                writes.append((submitted.written, submitted.accepted))
                in_flight += submitted.accepted
                accepted += submitted.accepted
                rejected.extend(submitted.rejected)
                # Flow control: past its window a stream waits for its oldest write before it
                # reads on, so a fast producer slows down instead of filling the shared buffer.
                while in_flight > self._window and writes:
                    oldest, count = writes.popleft()
                    await asyncio.shield(oldest)
                    in_flight -= count
            # Shielded: a caller that hangs up does not stop events already handed over.
            for written, _ in writes:
                await asyncio.shield(written)
            if rejected and not accepted:
                raise all_rejected(rejected)
        except AnalyticsError as error:
            audit_ingest(
                principal, _name(model, reference), INGEST_RPC, started, accepted=0, error=error
            )
            await abort_with_error(context, error)
        audit_ingest(principal, _name(model, reference), INGEST_RPC, started, accepted=accepted)
        return events_pb2.IngestResponse(
            accepted=accepted,
            rejected=[
                events_pb2.RejectedEvent(index=r.index, field=r.field, reason=r.reason)
                for r in rejected
            ],
        )


def _batch(message: events_pb2.IngestRequest) -> EventBatch:
    """The message's events as lists, from either wire form."""
    if message.HasField("columns"):
        if message.events:
            raise validation_error(
                "columns", "columns: send events or columns in one message, not both"
            )
        c = message.columns
        batch = EventBatch(
            list(c.event_ids),
            list(c.events),
            list(c.actors),
            list(c.timestamps),
            flat=FlatProperties(
                list(c.property_counts), list(c.property_keys), list(c.property_values)
            ),
        )
        problem = batch.problem()
        if problem is not None:
            raise validation_error("columns", f"columns: {problem}", "INVALID_COLUMNS")
        return batch
    # Column by column straight from the messages: no object per event on the hot path.
    sent = message.events
    return EventBatch(
        [e.event_id for e in sent],
        [e.event for e in sent],
        [e.actor for e in sent],
        [e.timestamp for e in sent],
        [dict(e.properties) for e in sent],
    )


def _name(model: Model | None, reference: str) -> str:
    return model.qualified_name if model is not None else reference
