"""EventTopicConsumer: events of trusted internal producers, from a Kafka topic into the sink.

Messages (``ANALYTICS_EVENTS_TOPIC``; the value is UTF-8 JSON, the key is the producer's choice
and not read: keying by tenant or actor keeps their events in order)::

    {"tenant": "acme", "model": "product.events", "event": {...}}
    {"tenant": "acme", "model": "product.events", "events": [{...}, {...}]}

Exactly one of ``event`` (one event) and ``events`` (a non-empty list) is given; an event is the
JSON form of ``json_events.py`` (the REST body's). Producers here are trusted: no token and no
permission; the tenant comes from the message (1 to 128 characters, as a token's claim) and the
model must be an event model of the catalog (``product.events`` or a unique bare name). An event
without ``eventId`` gets one derived from its message's topic, partition, offset and position,
so that a re-delivered message is still counted once.

What cannot be written goes to ``ANALYTICS_EVENTS_DEAD_LETTER_TOPIC`` as the CDC worker's
undecodable events do: the message key, and headers ``reason``, ``field`` (in the message's JSON
naming: ``tenant``, ``events[3].timestamp``), ``source.topic``, ``source.partition``,
``source.offset`` (and ``source.index``, an event's position, for one event). A message that
cannot be read as a whole (not UTF-8 JSON, not an object, an unknown key, no usable tenant, not
an event model, no events) is dead-lettered as it came and nothing of it is written. An event
that cannot be read or is invalid is dead-lettered alone (the original value for the ``event``
form; ``{"tenant", "model", "event"}`` of that event for the ``events`` form), and the other
events of its message are written.

Delivery is at least once, and offsets move only past written events: poll a batch, submit its
events to the service's one sink, await every write, send the dead letters, then commit. A full
sink (RESOURCE_EXHAUSTED) is waited out for its retry delay and the same events are submitted
again; a failed write or a closing sink is retried with back-off (0.2 s doubling up to
``cdc_retry_max_seconds``) while the partitions are paused. A crash or a stop before the commit
re-delivers the batch, and the (tenant, event id) key keeps one row of each under FINAL. Kafka
unreachable at start is waited for (``service/outage.py``); later, a commit or a dead letter
that Kafka does not answer is waited for. Each is logged once when it starts and once when it
ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from service.errors import AnalyticsError, ErrorKind
from service.events.ingestion import EventIngestion
from service.events.metrics import SinkMetrics
from service.events.topic_messages import (
    DeadLetter,
    EventMessage,
    MessageFault,
    MessageOrigin,
    event_dead_letter,
    parse_message,
)
from service.events.validation import RawEvent
from service.kafka_clients import dead_letter_producer, started
from service.outage import FIRST_DELAY_SECONDS, OutageWaiter, is_transient, wait_or_stop
from service.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: A Kafka request still unanswered after this long means the brokers are away.
_SLOW_KAFKA_SECONDS = 5.0
_POLL_MILLISECONDS = 200
_MAX_RECORDS = 5_000


@dataclass
class _Submission:
    """Events of one message handed to the sink together (at most a request's worth)."""

    message: EventMessage
    first: int
    """Position of the first of them among the message's readable events."""
    events: Sequence[RawEvent]
    record: ConsumerRecord[bytes, bytes]
    validated: bool = False
    """Whether its rejections were taken (a retry validates again; they are sent once)."""


@dataclass
class _Readiness:
    """The consumer's state in the sink's metrics: outages and ``analytics_event_topic_ready``."""

    metrics: SinkMetrics
    away: set[str] = field(default_factory=set)
    consuming: bool = False

    def dependency_away(self, dependency: str) -> None:
        """``dependency`` was found unreachable: one more outage, not ready until it is back."""
        self.metrics.topic_outages.labels(dependency).inc()
        self.away.add(dependency)
        self._show()

    def dependency_back(self, dependency: str) -> None:
        """``dependency`` answered again."""
        self.away.discard(dependency)
        self._show()

    def set_consuming(self, consuming: bool) -> None:
        """Whether the consumer has its Kafka clients and polls."""
        self.consuming = consuming
        self._show()

    @property
    def ready(self) -> bool:
        """Consuming, with Kafka reachable as far as the consumer knows."""
        return self.consuming and not self.away

    def _show(self) -> None:
        self.metrics.topic_ready.set(int(self.ready))


class EventTopicConsumer:
    """Consumes the events topic into the event sink; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        ingestion: EventIngestion,
        *,
        max_records: int = _MAX_RECORDS,
        retry_max_seconds: float | None = None,
    ) -> None:
        """Consume ``settings.events_topic`` into ``ingestion``'s sink (shared with the API)."""
        if not settings.events_topic or not settings.kafka_bootstrap_servers:
            raise ValueError("set events_topic and kafka_bootstrap_servers to consume events")
        self._settings = settings
        self._topic = settings.events_topic
        self._bootstrap = settings.kafka_bootstrap_servers
        self._ingestion = ingestion
        self._catalog = ingestion.catalog
        self._metrics = ingestion.sink.metrics
        self._max_records = max_records
        self._retry_max = retry_max_seconds or settings.cdc_retry_max_seconds
        self.readiness = _Readiness(self._metrics)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._write_failing = False
        self.batches = 0
        """Batches whose events are written and dead letters sent (their offsets committed)."""

    @property
    def metrics(self) -> SinkMetrics:
        """The sink's metrics, which hold the consumer's too."""
        return self._metrics

    def start(self) -> None:
        """Start consuming in a task of the running loop (it waits for Kafka if need be)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(self._stop))

    async def stop(self, within_seconds: float = 10.0) -> None:
        """Finish the batch in hand (write, commit) and close the Kafka clients.

        After ``within_seconds`` the task is cancelled: what it held is not committed and is
        read again by the next consumer of the group.
        """
        self._stop.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), within_seconds)
        except TimeoutError:
            log.warning(
                "events topic consumer did not stop in time; cancelled", seconds=within_seconds
            )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set.

        An error that is not a known outage (a broker refusing the group, a bug) does not end
        the consumer while the server goes on serving: it is logged and the consumer starts over
        from the last committed offsets after a back-off.
        """
        delay = FIRST_DELAY_SECONDS
        failing = False
        while not stop.is_set():
            batches = self.batches
            try:
                await self._consume(stop)
            except Exception as error:
                if self.batches != batches:
                    # It consumed since the last failure: this is a new fault, said anew.
                    delay, failing = FIRST_DELAY_SECONDS, False
                if not failing:
                    log.exception("events topic consumer failed; starting over", error=str(error))
                failing = True
                await wait_or_stop(stop, delay)
                delay = min(delay * 2, self._retry_max)
                continue
            return

    async def _consume(self, stop: asyncio.Event) -> None:
        waiter = OutageWaiter(stop, self.readiness, self._retry_max)
        consumer = await waiter.until_available(self._consumer, "kafka")
        if consumer is None:
            return
        try:
            producer = await waiter.until_available(self._producer, "kafka")
            if producer is None:
                return
            try:
                consumer.subscribe(topics=[self._topic])
                self._kafka_back()  # an outage seen before a restart ended with the start
                self.readiness.set_consuming(True)
                log.info(
                    "consuming events", topic=self._topic, group=self._settings.events_group_id
                )
                while not stop.is_set():
                    records = await consumer.getmany(
                        timeout_ms=_POLL_MILLISECONDS, max_records=self._max_records
                    )
                    if any(records.values()):
                        await self._handle(records, consumer, producer, stop)
            finally:
                await producer.stop()
        finally:
            self.readiness.set_consuming(False)
            await consumer.stop()
            log.info("events topic consumer stopped", topic=self._topic)

    async def _consumer(self) -> AIOKafkaConsumer:
        """A started consumer of the events group (closed again if it cannot start)."""
        settings = self._settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=settings.events_group_id,
            # A topic created after the consumer started is found within seconds.
            metadata_max_age_ms=5_000,
            enable_auto_commit=False,
            # A new group reads the topic from its start: every event there is written once.
            auto_offset_reset="earliest",
            max_poll_interval_ms=600_000,
            check_crcs=settings.kafka_check_crcs,
            group_instance_id=settings.kafka_group_instance_id or None,
            session_timeout_ms=int(settings.kafka_session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(settings.kafka_session_timeout_seconds * 1000 / 3),
        )
        return await started(consumer)

    async def _producer(self) -> AIOKafkaProducer:
        """A started producer for the dead-letter topic (closed again if it cannot start)."""
        return await dead_letter_producer(self._bootstrap)

    async def _handle(
        self,
        records: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> None:
        """Write one polled batch and send its dead letters; only then commit its offsets."""
        letters: list[DeadLetter] = []
        submissions: list[_Submission] = []
        chunk = self._ingestion.max_request_events
        for messages in records.values():
            for record in messages:
                parsed = self._parse(record)
                if isinstance(parsed, MessageFault):
                    letters.append(
                        DeadLetter(record, record.value, parsed.field, parsed.description)
                    )
                    continue
                letters += [event_dead_letter(record, parsed, fault) for fault in parsed.unreadable]
                submissions += [
                    _Submission(parsed, first, parsed.events[first : first + chunk], record)
                    for first in range(0, len(parsed.events), chunk)
                ]
        if not await self._write(submissions, letters, consumer, stop):
            return
        if not await self._send(letters, producer, stop):
            return
        self._metrics.topic_messages.inc(sum(len(messages) for messages in records.values()))
        self.batches += 1
        await self._commit(
            consumer,
            {
                partition: OffsetAndMetadata(messages[-1].offset + 1, "")
                for partition, messages in records.items()
                if messages
            },
            stop,
        )

    def _parse(self, record: ConsumerRecord[bytes, bytes]) -> EventMessage | MessageFault:
        origin = MessageOrigin(record.topic, record.partition, record.offset)
        try:
            return parse_message(record.value, self._catalog, origin)
        except Exception as error:
            # A message that breaks the reader itself is dead-lettered, not retried forever:
            # it would come back on every restart and hold up the partition behind it.
            log.exception("events topic message could not be read", offset=record.offset)
            return MessageFault("", f"could not be read: {type(error).__name__}: {error}"[:300])

    async def _write(
        self,
        submissions: list[_Submission],
        letters: list[DeadLetter],
        consumer: AIOKafkaConsumer,
        stop: asyncio.Event,
    ) -> bool:
        """Submit every submission and await its write, retrying until all are written.

        Invalid events found on the way join ``letters``. False: ``stop`` came while waiting to
        retry (nothing may then be committed).
        """
        remaining = submissions
        delay = FIRST_DELAY_SECONDS
        while remaining:
            again: list[_Submission] = []
            pending: list[tuple[_Submission, asyncio.Future[None]]] = []
            pause: float | None = None
            cause = ""
            for submission in remaining:
                if pause is not None:
                    # Not past a refused one: the sink takes the batch's events in their order.
                    again.append(submission)
                    continue
                try:
                    submitted = self._ingestion.submit(
                        submission.message.tenant, submission.message.model, submission.events
                    )
                except AnalyticsError as error:
                    if error.kind is ErrorKind.RESOURCE_EXHAUSTED:
                        pause, cause = error.retry_after_seconds or delay, "buffer_full"
                    elif error.kind is ErrorKind.UNAVAILABLE:
                        pause, cause = delay, "unavailable"
                    else:
                        raise
                    again.append(submission)
                    continue
                if not submission.validated:
                    submission.validated = True
                    letters += [
                        event_dead_letter(
                            submission.record,
                            submission.message,
                            submission.message.fault(rejection, submission.first),
                        )
                        for rejection in submitted.rejected
                    ]
                pending.append((submission, submitted.written))
            for submission, written in pending:
                try:
                    await written
                except Exception as error:
                    # Whatever the engine said, these events are not written: never skip them.
                    again.append(submission)
                    pause, cause = max(pause or 0.0, delay), "unavailable"
                    self._note_write_failure(error)
            if not again:
                break
            self._metrics.topic_write_retries.labels(cause).inc()
            if not await self._idle(consumer, stop, pause or delay):
                return False
            if cause == "unavailable":
                delay = min(delay * 2, self._retry_max)
            remaining = again
        if self._write_failing:
            self._write_failing = False
            log.info("consumed events written again")
        return True

    def _note_write_failure(self, error: BaseException) -> None:
        if not self._write_failing:
            self._write_failing = True
            log.warning(
                "consumed events not written; retrying with back-off, offsets not committed",
                error=str(error)[:300],
            )

    async def _idle(self, consumer: AIOKafkaConsumer, stop: asyncio.Event, seconds: float) -> bool:
        """Wait ``seconds`` with the partitions paused, polling so the group keeps us.

        False if ``stop`` was set meanwhile.
        """
        deadline = time.monotonic() + seconds
        try:
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                consumer.pause(*consumer.assignment())
                fetched = await consumer.getmany(timeout_ms=max(int(min(remaining, 1.0) * 1000), 1))
                # A rebalance can assign a partition that is not paused yet: what it returned is
                # read again after the wait, never skipped.
                for partition, messages in fetched.items():
                    if messages:
                        consumer.seek(partition, messages[0].offset)
            return False
        finally:
            consumer.resume(*consumer.assignment())

    async def _send(
        self, letters: Sequence[DeadLetter], producer: AIOKafkaProducer, stop: asyncio.Event
    ) -> bool:
        """Send every dead letter, retrying while Kafka is away; False if ``stop`` came first."""
        topic = self._settings.events_dead_letter_topic
        for letter in letters:
            delay = FIRST_DELAY_SECONDS
            while True:
                sending = producer.send_and_wait(
                    topic, value=letter.value, key=letter.record.key, headers=letter.headers()
                )
                task = await self._kafka(sending, stop)
                if task is None:
                    return False
                try:
                    task.result()
                except Exception as error:
                    if not is_transient(error):
                        raise
                    self._kafka_away(error)
                    await wait_or_stop(stop, delay)
                    if stop.is_set():
                        return False
                    delay = min(delay * 2, self._retry_max)
                    continue
                self._kafka_back()
                break
            cause = "message" if letter.index is None else "event"
            self._metrics.topic_dead_letters.labels(cause).inc()
            log.warning(
                "events topic message dead-lettered"
                if letter.index is None
                else "event dead-lettered",
                topic=letter.record.topic,
                partition=letter.record.partition,
                offset=letter.record.offset,
                index=letter.index,
                reason=letter.reason[:300],
            )
        return True

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        stop: asyncio.Event,
    ) -> None:
        """Commit the written batch's offsets of the partitions still ours.

        A rebalance can take partitions away between the fetch and the commit: their events are
        written, and whoever owns them next re-reads them from the last commit (counted once).
        """
        delay = FIRST_DELAY_SECONDS
        while True:
            assigned = consumer.assignment()
            mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
            if len(mine) < len(offsets):
                log.info(
                    "written events of partitions no longer assigned will be read again",
                    partitions=sorted(
                        f"{tp.topic}[{tp.partition}]" for tp in offsets.keys() - mine
                    ),
                )
            if not mine:
                return
            task = await self._kafka(consumer.commit(mine), stop)
            if task is None:
                return
            try:
                task.result()
            except (IllegalStateError, CommitFailedError) as error:
                log.warning("offsets not committed: the group is rebalancing", error=str(error))
                return
            except Exception as error:
                if not is_transient(error):
                    raise
                self._kafka_away(error)
                await wait_or_stop(stop, delay)
                if stop.is_set():
                    return
                delay = min(delay * 2, self._retry_max)
                offsets = mine
                continue
            self._kafka_back()
            return

    async def _kafka(self, request: Awaitable[T], stop: asyncio.Event) -> asyncio.Task[T] | None:
        """Run a Kafka request to its end (the done task) unless ``stop`` comes while it hangs.

        aiokafka waits for an unreachable broker inside a commit instead of failing, so a
        request unanswered after a few seconds marks Kafka away (logged once) until it ends.
        The first seconds are not cut short by ``stop``: the last commit before a stop counts.
        """
        task: asyncio.Task[T] = asyncio.ensure_future(request)
        done, _ = await asyncio.wait({task}, timeout=_SLOW_KAFKA_SECONDS)
        if done:
            return task
        self._kafka_away(TimeoutError(f"no answer within {_SLOW_KAFKA_SECONDS} s"))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if task.done():
            return task
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None

    def _kafka_away(self, error: BaseException) -> None:
        if "kafka" not in self.readiness.away:
            self.readiness.dependency_away("kafka")
            log.warning("kafka unavailable; waiting for it", error=str(error)[:300])

    def _kafka_back(self) -> None:
        if "kafka" in self.readiness.away:
            self.readiness.dependency_back("kafka")
            log.info("kafka available again")


def start_topic_consumer(
    settings: Settings, ingestion: EventIngestion
) -> EventTopicConsumer | None:
    """The events topic consumer, started, when the settings name a topic and brokers."""
    if not settings.events_topic or not settings.kafka_bootstrap_servers:
        return None
    consumer = EventTopicConsumer(settings, ingestion)
    consumer.start()
    return consumer
