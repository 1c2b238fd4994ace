"""Waiting out an unreachable ClickHouse or Kafka instead of exiting.

A consumer started while the engine or the brokers are away (a restart during an outage, a stack
coming up in another order) waits for them with back-off: it logs once when a dependency goes
away and once when it is back, tells its listener (metrics, readiness) each time, and tries
again. Only errors that say something is misconfigured (bad credentials, DDL the server refuses,
an invalid topic pattern) propagate, with their own message.

Shared by the CDC worker (``cdc_worker``) and the events topic consumer
(``service/events/topic_consumer.py``); it lives in ``service`` because ``service`` never imports
``cdc_worker``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NoBrokersAvailable

from service.errors import AnalyticsError, ErrorKind

log = structlog.get_logger(__name__)

FIRST_DELAY_SECONDS = 0.2
T = TypeVar("T")


class OutageListener(Protocol):
    """What is told when a dependency goes away and comes back (metrics, readiness)."""

    def dependency_away(self, dependency: str) -> None:
        """``dependency`` was found unreachable."""
        ...

    def dependency_back(self, dependency: str) -> None:
        """``dependency`` answered again."""
        ...


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` means "not reachable now" rather than "configured wrongly"."""
    if isinstance(error, AnalyticsError):
        return error.kind is ErrorKind.UNAVAILABLE
    return isinstance(
        error,
        KafkaConnectionError
        | KafkaTimeoutError
        | NoBrokersAvailable
        | ConnectionError
        | TimeoutError,
    )


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(seconds, 0.0))


@dataclass(frozen=True)
class OutageWaiter:
    """Runs start-up steps until their dependency answers, or until ``stop`` is set."""

    stop: asyncio.Event
    metrics: OutageListener
    max_delay_seconds: float

    async def until_available(
        self, operation: Callable[[], Awaitable[T]], dependency: str
    ) -> T | None:
        """Run ``operation`` until it succeeds (its result) or ``stop`` is set (None).

        A transient failure waits 0.2 s, doubling up to ``max_delay_seconds``, and tries again;
        any other error propagates.
        """
        delay = FIRST_DELAY_SECONDS
        away = False
        while not self.stop.is_set():
            try:
                result = await operation()
            except Exception as error:
                if not is_transient(error):
                    raise
                if not away:
                    away = True
                    self.metrics.dependency_away(dependency)
                    log.warning(
                        "dependency unavailable; waiting for it",
                        dependency=dependency,
                        error=str(error)[:300],
                    )
                await wait_or_stop(self.stop, delay)
                delay = min(delay * 2, self.max_delay_seconds)
                continue
            if away:
                self.metrics.dependency_back(dependency)
                log.info("dependency available again", dependency=dependency)
            return result
        return None
