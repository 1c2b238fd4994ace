"""A tenant's budget: the limits (defaults from settings), an override per tenant, their merge.

Zero means "no limit" for every field, so an override can lift a limit as well as change it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any

from service.errors import validation_error

#: The names the limits go by in errors (QuotaFailure), metrics and the tenant records.
REQUESTS_PER_SECOND = "requests_per_second"
CONCURRENT_QUERIES = "concurrent_queries"
ROWS_PER_QUERY = "rows_per_query"
SECONDS_PER_QUERY = "seconds_per_query"


@dataclass(frozen=True)
class BudgetLimits:
    """One tenant's limits; 0 in any field: unlimited."""

    requests_per_second: float = 0.0
    """Sustained requests per second (token bucket refill rate)."""
    burst: int = 0
    """Requests the bucket holds (0: one second's worth, at least 1)."""
    concurrent_queries: int = 0
    """Requests of the tenant running at once (across every service process sharing Redis)."""
    rows_per_query: int = 0
    """Rows one query may read; the engine stops it past that (``max_rows_to_read``)."""
    seconds_per_query: float = 0.0
    """Time one query may run; the engine stops it past that (``max_execution_time``)."""

    @property
    def bucket_size(self) -> int:
        """Tokens the bucket holds: ``burst``, or one second's worth (at least one)."""
        if self.burst > 0:
            return self.burst
        return max(1, round(self.requests_per_second))

    def engine_settings(self) -> dict[str, str]:
        """The ClickHouse settings (SQL literals) that make the engine enforce the rows limit."""
        if self.rows_per_query <= 0:
            return {}
        return {"max_rows_to_read": str(self.rows_per_query), "read_overflow_mode": "'throw'"}


@dataclass(frozen=True)
class BudgetOverride:
    """A tenant's override of some limits (None: the default applies)."""

    requests_per_second: float | None = None
    burst: int | None = None
    concurrent_queries: int | None = None
    rows_per_query: int | None = None
    seconds_per_query: float | None = None

    def __post_init__(self) -> None:
        """Refuse negative limits, naming the field."""
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None and value < 0:
                raise validation_error(
                    f"budget.{_camel(item.name)}", f"{item.name} must not be negative"
                )

    @property
    def empty(self) -> bool:
        """Whether the override changes nothing."""
        return all(getattr(self, item.name) is None for item in fields(self))

    def apply(self, defaults: BudgetLimits) -> BudgetLimits:
        """``defaults`` with this override's limits in place."""
        changes = {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if getattr(self, item.name) is not None
        }
        return replace(defaults, **changes)

    def to_json(self) -> str:
        """The override as stored (only the fields it sets)."""
        return json.dumps(
            {
                item.name: getattr(self, item.name)
                for item in fields(self)
                if getattr(self, item.name) is not None
            },
            sort_keys=True,
        )

    def json_fields(self) -> dict[str, float | int]:
        """The fields it sets, in the proto3 JSON naming of ``analytics.v1.TenantBudget``."""
        return {
            _camel(item.name): getattr(self, item.name)
            for item in fields(self)
            if getattr(self, item.name) is not None
        }

    @classmethod
    def from_json(cls, text: str) -> BudgetOverride:
        """The override ``to_json`` wrote (unknown keys ignored: written by a newer version)."""
        data: dict[str, Any] = json.loads(text) if text else {}
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
