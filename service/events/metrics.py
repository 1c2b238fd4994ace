"""The event sink's Prometheus metrics, in a registry of their own (one per service process).

A registry per sink, not the library's global one, so that several sinks in one process (tests,
benchmarks) do not collide; the service exposes it at ``GET /metrics`` of the REST port.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class SinkMetrics:
    """Counters, gauges and histograms of one event sink."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Register the sink's metrics in ``registry`` (a new one if not given)."""
        self.registry = registry or CollectorRegistry()
        self.written = Counter(
            "analytics_events_written",
            "Events written to event models (rate() of it is events per second).",
            ["model"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "analytics_events_rejected",
            "Events refused by validation, by model and the field at fault.",
            ["model", "field"],
            registry=self.registry,
        )
        self.refused = Counter(
            "analytics_event_requests_refused",
            "Event batches refused whole: buffer_full (RESOURCE_EXHAUSTED) or closing.",
            ["reason"],
            registry=self.registry,
        )
        self.flush_events = Histogram(
            "analytics_event_sink_flush_events",
            "Events per flush (one group commit across callers).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.flush_seconds = Histogram(
            "analytics_event_sink_flush_seconds",
            "Time to write one flush to the engine.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.acknowledge_seconds = Histogram(
            "analytics_event_sink_acknowledge_seconds",
            "From a batch entering the sink to its caller's acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.flush_failures = Counter(
            "analytics_event_sink_flush_failures",
            "Flushes the engine refused; their callers got UNAVAILABLE, nothing acknowledged.",
            registry=self.registry,
        )
        self.buffered = Gauge(
            "analytics_event_sink_buffered_events",
            "Events held, not yet written.",
            registry=self.registry,
        )
        self.capacity = Gauge(
            "analytics_event_sink_capacity_events",
            "Events the sink holds before refusing (buffered / capacity is the fill).",
            registry=self.registry,
        )

        # The events topic consumer (service/events/topic_consumer.py), when one runs.
        self.topic_messages = Counter(
            "analytics_event_topic_messages",
            "Messages of the events topic handled: their valid events written and their faults "
            "dead-lettered (only then are their offsets committed).",
            registry=self.registry,
        )
        self.topic_dead_letters = Counter(
            "analytics_event_topic_dead_letters",
            "Dead letters sent for the events topic: a whole message (cause=message: not JSON, "
            "no tenant, not an event model) or one event of a message (cause=event).",
            ["cause"],
            registry=self.registry,
        )
        self.topic_write_retries = Counter(
            "analytics_event_topic_write_retries",
            "Writes of consumed events retried: the sink was full (buffer_full) or could not "
            "write (unavailable); nothing is committed meanwhile.",
            ["reason"],
            registry=self.registry,
        )
        self.topic_outages = Counter(
            "analytics_event_topic_dependency_outages",
            "Times the events topic consumer found a dependency (kafka) unreachable.",
            ["dependency"],
            registry=self.registry,
        )
        self.topic_ready = Gauge(
            "analytics_event_topic_ready",
            "1 while the events topic consumer consumes with Kafka reachable, else 0.",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric in the registry."""
        return generate_latest(self.registry)
