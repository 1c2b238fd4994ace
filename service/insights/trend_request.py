"""The Trend request as the domain sees it, independent of gRPC and REST (nothing validated)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TrendSeries:
    """One series: an aggregate over the rows its filters (and optional event name) select."""

    aggregate: str = ""
    field: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    label: str = ""
    event: str = ""


@dataclass(frozen=True)
class TrendRequest:
    """Series over the buckets of a date range; see README "Trends" for every option."""

    model: str
    series: tuple[TrendSeries, ...] = ()
    date_from: str = ""
    date_to: str = ""
    interval: str = ""
    time_zone: str = ""
    week_start: str = ""
    date_field: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    breakdown: str = ""
    breakdown_limit: int = 0
    compare: str = ""
    formula: str = ""
    display: str = ""
    rolling_window: int = 0
