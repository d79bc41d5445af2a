"""The statistics of a leaderboard: ranks, and a norm's difference to the baseline over seeds
with its 95% confidence interval and p-value."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any


@dataclass
class Comparison:
    """The difference of a norm's primary metric to the baseline's, over seeds."""

    diff: float
    low: float | None = None
    high: float | None = None
    p: float | None = None
    test: str = ""

    @property
    def significant(self) -> bool | None:
        return None if self.p is None else self.p < 0.05


def rank(rows: list[Any], direction: str) -> None:
    """Rank rows (with a ``mean`` and a ``rank``) by mean, ties sharing a rank."""
    scored = sorted((r for r in rows if r.mean is not None), key=lambda r: r.mean, reverse=direction == "max")
    rank = 0
    previous = None
    for i, row in enumerate(scored):
        if row.mean != previous:
            rank = i + 1
        row.rank, previous = rank, row.mean


def compare(values: dict[int, float], baseline: dict[int, float]) -> Comparison | None:
    """Mean difference to the baseline; paired over shared seeds, otherwise Welch's t-test."""
    from scipy import stats

    if not values or not baseline:
        return None
    diff = statistics.fmean(values.values()) - statistics.fmean(baseline.values())
    shared = sorted(set(values) & set(baseline))
    if len(shared) == len(values) == len(baseline) and len(shared) > 1:
        a, b = [values[s] for s in shared], [baseline[s] for s in shared]
        if len({x - y for x, y in zip(a, b, strict=True)}) == 1:  # identical differences: no spread
            return Comparison(diff, diff, diff, None, "paired t")
        result, test = stats.ttest_rel(a, b), "paired t"
    elif len(values) > 1 and len(baseline) > 1:
        result, test = stats.ttest_ind(list(values.values()), list(baseline.values()), equal_var=False), "Welch t"
    else:
        return Comparison(diff)
    ci = result.confidence_interval(0.95)
    p = float(result.pvalue)
    return Comparison(diff, float(ci.low), float(ci.high), None if math.isnan(p) else p, test)
