"""EventIngestion: the one path events take from any transport to the sink.

authorise (``{module}.{model}.write``, event models only) -> validate each event -> submit the
valid ones to the sink -> audit. gRPC's Ingest, REST and (for trusted producers) the Kafka
consumer differ only in how they read events and answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from service import audit
from service.auth import Principal
from service.catalog import Catalog, Model
from service.errors import AnalyticsError, ErrorKind, FieldViolation, forbidden, validation_error
from service.events.columnar import EventBatch, validate_batch
from service.events.sink import EventSink
from service.events.validation import EventLimits, RawEvent, Rejection
from service.query.compiler import resolve_model

_EVENT_FIELDS = frozenset({"eventId", "event", "actor", "timestamp", "properties"})
"""The fields of an event in its JSON naming, as rejections name them."""


@dataclass(frozen=True)
class Submitted:
    """One batch handed to the sink: its write, how many it carries, and what was refused."""

    written: asyncio.Future[None]
    accepted: int
    rejected: list[Rejection]


class EventIngestion:
    """Authorises, validates and submits events; see the module docstring."""

    def __init__(
        self,
        catalog: Catalog,
        sink: EventSink,
        *,
        max_request_events: int,
        limits: EventLimits,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        """Send events of ``catalog``'s event models to ``sink``."""
        self.catalog = catalog
        self.sink = sink
        self.max_request_events = max_request_events
        self._limits = limits
        self._clock = clock

    def resolve(self, principal: Principal, reference: str) -> Model:
        """The event model ``reference`` names, if the caller may write to it."""
        model = resolve_model(self.catalog, reference)
        if not model.is_events:
            names = ", ".join(m.qualified_name for m in self.catalog.event_models()) or "none"
            raise validation_error(
                "model",
                f"model: {model.qualified_name} is replicated from PostgreSQL and takes no "
                f"events; event models: {names}",
                "NOT_AN_EVENT_MODEL",
            )
        if not principal.has_permission(model.write_permission):
            raise forbidden(
                f"permission {model.write_permission!r} is required to send events to "
                f"{model.qualified_name}",
                model.write_permission,
            )
        return model

    def submit(
        self,
        tenant: str,
        model: Model,
        events: Sequence[RawEvent] | EventBatch,
        *,
        first_index: int = 0,
        source: str = "events",
    ) -> Submitted:
        """Validate ``events`` (numbered from ``first_index``) and hand the valid ones over.

        Raises for the batch as a whole: too many events, a full or closing sink.
        """
        if len(events) > self.max_request_events:
            raise validation_error(
                source,
                f"{source}: {len(events)} events in one request; at most "
                f"{self.max_request_events} (split the batch)",
                "TOO_MANY_EVENTS",
            )
        batch = events if isinstance(events, EventBatch) else EventBatch.of(events)
        columns, rejected = validate_batch(
            model,
            tenant,
            batch,
            now=self._clock(),
            limits=self._limits,
            first_index=first_index,
        )
        self.count_rejected(model, rejected)
        written = self.sink.submit(columns)
        return Submitted(written, len(columns), rejected)

    def count_rejected(self, model: Model, rejected: Iterable[Rejection]) -> None:
        """Count refused events in the sink's metrics (also those a transport could not read)."""
        for rejection in rejected:
            self.sink.metrics.rejected.labels(
                model.qualified_name, _metric_field(model, rejection)
            ).inc()


def all_rejected(rejected: Sequence[Rejection], source: str = "events") -> AnalyticsError:
    """The error of a request none of whose events could be written (each one named)."""
    violations = [
        FieldViolation(f"{source}[{r.index}].{r.field}", f"{r.field}: {r.reason}")
        for r in rejected[:100]
    ]
    first = violations[0]
    return AnalyticsError(
        ErrorKind.VALIDATION,
        f"no event was written: {first.field}: {rejected[0].reason}"
        + (f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""),
        "INVALID_EVENTS",
        violations,
    )


def audit_ingest(
    principal: Principal,
    model: str,
    rpc: str,
    started: float,
    *,
    accepted: int,
    error: AnalyticsError | None = None,
) -> None:
    """The audit record of one ingestion call (``rows``: events written)."""
    audit.record_query(
        tenant=principal.tenant,
        subject=principal.subject,
        model=model[:200],
        rpc=rpc,
        outcome="ok" if error is None else error.kind.value,
        reason="" if error is None else error.reason,
        duration_ms=(time.perf_counter() - started) * 1000,
        rows=accepted,
    )


def _metric_field(model: Model, rejection: Rejection) -> str:
    # Labels must stay few: the event's fields and declared properties keep their names, but
    # a free-form property key or an unknown key of a JSON event is the caller's text and
    # would make the label unbounded, so they count as "properties" and "json".
    field = rejection.field
    key = field.removeprefix("properties.")
    if key != field:
        return field if key in model.fields else "properties"
    return field if field in _EVENT_FIELDS else "json"
