"""The statistics of a leaderboard.

Within a variant: ranks, each norm's 95% interval over seeds, and its difference to the baseline
with a p-value, Holm-corrected over the norms of the variant (a suite of ten norms would
otherwise find a "significant" one by chance). Across variants (:func:`across`): mean ranks,
Friedman's test with Nemenyi's post-hoc test (Demšar 2006), and performance profiles.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ALPHA = 0.05
PROFILE_TAUS = (0.0, 0.01, 0.05, 0.1)  # the relative gaps a performance profile is read at in the tables


@dataclass
class Comparison:
    """The difference of a norm's primary metric to the baseline's, over seeds."""

    diff: float
    low: float | None = None
    high: float | None = None
    p: float | None = None  # uncorrected
    test: str = ""
    p_holm: float | None = None  # corrected over the variant's norms; decides significance

    @property
    def significant(self) -> bool | None:
        p = self.p if self.p_holm is None else self.p_holm
        return None if p is None else p < ALPHA


def rank(rows: list[Any], direction: str) -> None:
    """Rank rows (with a ``mean`` and a ``rank``) by mean, ties sharing a rank."""
    scored = sorted((r for r in rows if r.mean is not None), key=lambda r: r.mean, reverse=direction == "max")
    rank = 0
    previous = None
    for i, row in enumerate(scored):
        if row.mean != previous:
            rank = i + 1
        row.rank, previous = rank, row.mean


def interval(values: Sequence[float]) -> tuple[float, float] | None:
    """The 95% t-interval of the mean of ``values`` (None below two values)."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean, sem = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(1 - ALPHA, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


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
    ci = result.confidence_interval(1 - ALPHA)
    p = float(result.pvalue)
    return Comparison(diff, float(ci.low), float(ci.high), None if math.isnan(p) else p, test)


def holm(comparisons: Sequence[Comparison | None]) -> None:
    """Set ``p_holm`` on the comparisons that have a p-value: Holm's step-down correction over them."""
    tested = [c for c in comparisons if c is not None and c.p is not None]
    if tested:
        from statsmodels.stats.multitest import multipletests

        corrected = multipletests([c.p for c in tested], alpha=ALPHA, method="holm")[1]
        for c, p in zip(tested, corrected, strict=True):
            c.p_holm = float(p)


@dataclass
class Across:
    """How the norms compare over variants, each variant one block: only the norms measured in
    every variant used take part (a norm left out of a variant would have no rank there)."""

    norms: list[str]
    variants: list[str]
    mean_rank: dict[str, float]
    left_out: list[str] = field(default_factory=list)  # norms measured in too few of the variants
    friedman: dict[str, float] | None = None  # statistic, p (needs three norms or more)
    posthoc: dict[str, Any] | None = None  # Nemenyi: pairwise p, critical difference of mean ranks
    profiles: dict[str, Any] | None = None


def across(means: Mapping[str, Mapping[str, float]], direction: str) -> Across | None:
    """Statistics over variants from ``means[variant][norm]``; None below two variants or two norms."""
    norms, variants, left_out = _blocks(means)
    if len(norms) < 2 or len(variants) < 2:
        return None
    import numpy as np
    from scipy import stats

    table = np.array([[means[v][n] for n in norms] for v in variants])  # rows: variants (blocks)
    ranks = stats.rankdata(-table if direction == "max" else table, axis=1)  # 1 = best, ties averaged
    result = Across(norms, variants, dict(zip(norms, ranks.mean(axis=0).tolist(), strict=True)), left_out)
    if len(norms) >= 3:
        friedman = stats.friedmanchisquare(*table.T)
        if not math.isnan(friedman.pvalue):
            result.friedman = {"statistic": float(friedman.statistic), "p": float(friedman.pvalue)}
            result.posthoc = _nemenyi(table, norms)
    result.profiles = _profiles(table, norms, direction)
    return result


def _blocks(means: Mapping[str, Mapping[str, float]]) -> tuple[list[str], list[str], list[str]]:
    """The largest complete block design found greedily: drop the norm measured in the fewest
    variants until at least two variants hold every remaining norm."""
    order = list(dict.fromkeys(n for row in means.values() for n in row))
    norms = list(order)
    while len(norms) >= 2:
        variants = [v for v, row in means.items() if all(n in row for n in norms)]
        if len(variants) >= 2:
            return norms, variants, [n for n in order if n not in norms]
        norms.remove(min(norms, key=lambda n: sum(n in row for row in means.values())))
    return norms, [], [n for n in order if n not in norms]


def _nemenyi(table: Any, norms: list[str]) -> dict[str, Any]:
    import scikit_posthocs
    from scipy import stats

    p = scikit_posthocs.posthoc_nemenyi_friedman(table)
    blocks, k = table.shape
    q = stats.studentized_range.ppf(1 - ALPHA, k, math.inf) / math.sqrt(2)
    return {"test": "nemenyi", "alpha": ALPHA, "critical_difference": float(q * math.sqrt(k * (k + 1) / (6 * blocks))),
            "p": {a: {b: float(p.iloc[i, j]) for j, b in enumerate(norms)} for i, a in enumerate(norms)}}


def _profiles(table: Any, norms: list[str], direction: str) -> dict[str, Any]:
    """Performance profiles (Dolan & Moré 2002, as DeepOBS and AlgoPerf report them): for each τ,
    the fraction of variants where a norm's relative gap to the variant's best is at most τ."""
    import numpy as np

    best = table.max(axis=1, keepdims=True) if direction == "max" else table.min(axis=1, keepdims=True)
    gaps = np.round(np.abs(table - best) / np.maximum(np.abs(best), 1e-12), 12)  # equal gaps stay equal
    taus = np.unique(np.concatenate([[0.0], gaps.ravel()]))
    fractions = (gaps[:, :, None] <= taus[None, None, :]).mean(axis=0)
    at = {str(tau): {n: float((gaps[:, i] <= tau).mean()) for i, n in enumerate(norms)} for tau in PROFILE_TAUS}
    return {"taus": taus.tolist(), "fractions": {n: fractions[i].tolist() for i, n in enumerate(norms)}, "at": at,
            "definition": "fraction of variants where |metric − best| ≤ τ·|best|"}
