"""The analytics request as the domain sees it, independent of gRPC and REST."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricRequest:
    """One aggregate: ``count``, ``sum`` of a field, ``p95`` of a field, ..."""

    aggregate: str
    field: str = ""
    alias: str = ""


@dataclass(frozen=True)
class QueryRequest:
    """The fields of DESIGN.md section 5, as sent (nothing is validated here)."""

    model: str
    aggregate: str = ""
    field: str = ""
    metrics: tuple[MetricRequest, ...] = ()
    group_by: str = ""
    group_by_interval: str = ""
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    order: str = ""
    limit: int = 0
    offset: int = 0
    time_zone: str = ""
