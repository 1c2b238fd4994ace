"""Starting aiokafka clients, shared by the CDC worker and the events topic consumer.

A client whose ``start()`` fails has already opened connections and tasks: it is stopped again
before the failure is raised, so that a retry after an outage does not leak one per attempt.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from aiokafka import AIOKafkaProducer


class _Client(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


C = TypeVar("C", bound=_Client)


async def started(client: C) -> C:
    """``client`` started, or stopped again and the failure raised."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise
    return client


async def dead_letter_producer(bootstrap: str) -> AIOKafkaProducer:
    """A started producer for a dead-letter topic: every message acknowledged by all replicas."""
    return await started(AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all"))
