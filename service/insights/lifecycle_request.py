"""The Lifecycle request as the domain sees it, independent of gRPC and REST (nothing validated).

``service.insights.lifecycle.compile_lifecycle`` validates it; its module docstring is the
contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LifecycleRequest:
    """New, returning, resurrecting and dormant actors per period of a date range.

    ``event``: the event name that makes an actor active (any event when empty); ``filters``:
    what else such an event must pass; ``period``: ``hour``, ``day`` (when empty), ``week`` or
    ``month``.
    """

    model: str
    event: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    period: str = ""
    date_from: str = ""
    date_to: str = ""
    time_zone: str = ""
    week_start: str = ""
