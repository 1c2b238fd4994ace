"""The Retention request as the domain sees it, independent of gRPC and REST (nothing validated).

``service.insights.retention.compile_retention`` validates it; its module docstring is the
contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RetentionEvent:
    """The events with this name (if given) that pass these filters (if any)."""

    event: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class RetentionRequest:
    """A cohort table over one event model.

    ``period``: ``hour``, ``day`` (when empty), ``week`` or ``month``; ``intervals``: the columns
    of the table (8 when 0); ``retention_type``: ``first_time`` (when empty) or ``recurring``;
    ``returning``: the target event when it names neither an event nor filters.
    """

    model: str
    target: RetentionEvent = RetentionEvent()
    returning: RetentionEvent = RetentionEvent()
    period: str = ""
    intervals: int = 0
    retention_type: str = ""
    date_from: str = ""
    date_to: str = ""
    time_zone: str = ""
    week_start: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    breakdown: str = ""
    breakdown_limit: int = 0
