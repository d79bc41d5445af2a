"""What the Markdown and the page both show, written once so that the two files say the same
thing: how a number, a mean, an interval and a difference to the baseline read, and which matrix
axes are numeric (the ones a metric is tabled and plotted against)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

#: the cost columns of a variant's table: the trial's cost key, its header, significant digits
COSTS = (("train_seconds", "train s", 3), ("samples_per_second", "samples/s", 4),
         ("peak_memory_mb", "peak MB", 4), ("parameters", "params", 6))


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def mean(values: Sequence[float] | None) -> float | None:
    return statistics.fmean(values) if values else None


def mean_std(values: Sequence[float] | None) -> str:
    if not values:
        return "–"
    return f"{statistics.fmean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def interval(ci: Sequence[float] | None) -> str:
    return "–" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def delta(diff: float, low: float | None, high: float | None, significant: bool | None) -> str:
    """A difference to the baseline with its interval, starred when significant."""
    text = f"{diff:+.3g}"
    if low is not None and high is not None:
        text += f" [{low:+.3g}, {high:+.3g}]"
    return text + ("*" if significant else "")


def option(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def params(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {fmt(v) if isinstance(v, float) else v}" for k, v in values.items())


def numeric_axes(variant_axes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The matrix axes whose values are numbers (not booleans), with two or more of them: batch
    size, labeled fraction."""
    found: dict[str, list[Any]] = {}
    for axes in variant_axes.values():
        for axis, value in axes.items():
            found.setdefault(axis, []).append(value)
    return [a for a, values in found.items()
            if len(set(values)) > 1 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)]
