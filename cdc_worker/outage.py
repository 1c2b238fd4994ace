"""Waiting out an unreachable ClickHouse or Kafka instead of exiting.

A worker started while the engine or the brokers are away (a restart during an outage, a stack
coming up in another order) waits for them with back-off: it logs once when a dependency goes
away and once when it is back, counts each outage in the metrics and reports itself not ready
meanwhile. Only errors that say something is misconfigured (bad credentials, DDL the server
refuses, an invalid topic pattern) end the worker, with their own message.

The waiting itself is ``service.outage``'s, shared with the events topic consumer of the service
(which may not import this package); ``WorkerMetrics`` is the worker's listener.
"""

from __future__ import annotations

from service.outage import FIRST_DELAY_SECONDS, OutageListener, OutageWaiter, is_transient

__all__ = ["FIRST_DELAY_SECONDS", "OutageListener", "OutageWaiter", "is_transient"]
