"""The Funnel request as the domain sees it, independent of gRPC and REST (nothing validated).

``service.insights.funnels.compile_funnel`` validates it; its module docstring is the contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FunnelStep:
    """One step: the events with this name (if given) that pass these filters (if any)."""

    event: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class FunnelRequest:
    """Ordered steps over one event model's events of a date range.

    ``window``: ``<n><unit>`` with the units ``s``, ``m``, ``h``, ``d`` and ``w`` (``14d`` when
    empty), the longest time from an attempt's first step to its last.
    """

    model: str
    steps: tuple[FunnelStep, ...] = ()
    date_from: str = ""
    date_to: str = ""
    time_zone: str = ""
    window: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
