"""The figures a benchmark reports and the one table they are printed as."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured comparison: A (the service) against B (the raw engine or a baseline).

    ``ratio`` is whatever the target judges (A time / B time for latencies, B rate / A rate for
    throughputs); ``passed`` is None where the row is informative and has no target.
    """

    metric: str
    a: str
    b: str
    ratio: float | None
    target: str
    passed: bool | None
    note: str = ""


def percentile(samples: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1) of non-empty ``samples``."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(math.ceil(share * len(ordered)), 1)
    return ordered[rank - 1]


def median(samples: Sequence[float]) -> float:
    """The median of non-empty ``samples``."""
    return statistics.median(samples)


def milliseconds(seconds: float) -> str:
    """A duration for the table."""
    return f"{seconds * 1000:.1f} ms"


def rate(per_second: float, unit: str) -> str:
    """A throughput for the table, in thousands or millions."""
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f} M {unit}/s"
    return f"{per_second / 1e3:.1f} k {unit}/s"


def render(figures: Sequence[Figure], heading: str = "") -> str:
    """The figures as one Markdown table (it reads as plain text on a terminal too)."""
    header = ("metric", "A (service)", "B (raw engine / baseline)", "ratio", "target", "result")
    rows = [
        (
            f.metric + (f" ({f.note})" if f.note else ""),
            f.a,
            f.b,
            "" if f.ratio is None else f"{f.ratio:.2f}",
            f.target,
            {True: "pass", False: "FAIL", None: ""}[f.passed],
        )
        for f in figures
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    lines = [heading, ""] if heading else []
    lines += [line(header), line(["-" * w for w in widths])]
    lines += [line(r) for r in rows]
    return "\n".join(lines)


def at_most(ratio: float, limit: float) -> bool:
    """Whether a ratio meets an upper-bound target."""
    return ratio <= limit


def at_least_rate(per_second: float, floor: float) -> bool:
    """Whether a throughput meets a lower-bound target."""
    return per_second >= floor
