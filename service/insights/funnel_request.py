"""The Funnel request as the domain sees it, independent of gRPC and REST (nothing validated).

``service.insights.funnels.compile_funnel`` validates it; its module docstring is the contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FunnelStep:
    """One step: the events with this name (if given) that pass these filters (if any).

    ``model``, ``date_field`` and ``actor``: where the step's events come from when not from
    the request's event model (``service.insights.funnel_sources``).
    """

    event: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    label: str = ""
    model: str = ""
    date_field: str = ""
    actor: str = ""


@dataclass(frozen=True)
class FunnelExclusion:
    """Events (of a name, if given, passing filters) that void an attempt between two steps.

    ``from_step`` and ``to_step`` are step numbers (1 is the first step); 0 means the first and
    the last step.
    """

    event: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    from_step: int = 0
    to_step: int = 0
    model: str = ""
    date_field: str = ""
    actor: str = ""


@dataclass(frozen=True)
class FunnelRequest:
    """Steps over one event model's events of a date range.

    ``window``: ``<n><unit>`` with the units ``s``, ``m``, ``h``, ``d`` and ``w`` (``14d`` when
    empty), the longest time from an attempt's first step to its last. ``order``: ``ordered``
    (when empty), ``strict`` or ``unordered``. ``breakdown_attribution``: ``first_touch`` (when
    empty), ``last_touch``, ``all_events`` or ``step`` (with ``breakdown_step``, a step number).
    """

    model: str
    steps: tuple[FunnelStep, ...] = ()
    date_from: str = ""
    date_to: str = ""
    time_zone: str = ""
    window: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    order: str = ""
    exclusions: tuple[FunnelExclusion, ...] = ()
    breakdown: str = ""
    breakdown_limit: int = 0
    breakdown_attribution: str = ""
    breakdown_step: int = 0


@dataclass(frozen=True)
class FunnelActorsRequest:
    """The actors of ``funnel`` at step ``step`` (1 is the first).

    ``status``: ``reached`` (when empty: the actors counted at the step) or ``dropped`` (those
    whose furthest step it is). ``limit`` (0: all) and ``offset`` page the actors, ordered by
    actor.
    """

    funnel: FunnelRequest
    step: int = 0
    status: str = ""
    limit: int = 0
    offset: int = 0
