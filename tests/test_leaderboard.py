"""The leaderboard's statistics: differences to the baseline with scipy's tests, and ranks."""

from __future__ import annotations

import pytest
from scipy import stats

from harness.leaderboard import Row, compare, rank


def test_paired_over_shared_seeds() -> None:
    a, b = {0: 0.91, 1: 0.93, 2: 0.92}, {0: 0.90, 1: 0.90, 2: 0.91}
    c = compare(a, b)
    expected = stats.ttest_rel([0.91, 0.93, 0.92], [0.90, 0.90, 0.91])
    ci = expected.confidence_interval(0.95)
    assert c.test == "paired t"
    assert c.diff == pytest.approx(0.05 / 3)
    assert (c.low, c.high, c.p) == pytest.approx((ci.low, ci.high, expected.pvalue))


def test_welch_when_seeds_differ() -> None:
    c = compare({0: 1.0, 1: 2.0, 2: 3.0}, {3: 1.5, 4: 1.0})
    expected = stats.ttest_ind([1.0, 2.0, 3.0], [1.5, 1.0], equal_var=False)
    assert c.test == "Welch t" and c.p == pytest.approx(expected.pvalue)


def test_one_seed_gives_a_difference_without_interval() -> None:
    c = compare({0: 0.8}, {0: 0.7})
    assert c.diff == pytest.approx(0.1) and c.low is None and c.significant is None


def test_identical_differences_have_no_p_value() -> None:
    c = compare({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})
    assert c.diff == pytest.approx(0.5) and c.p is None


def rows(*means: float) -> list[Row]:
    return [Row(norm=f"n{i}", norm_use="x", params={}, values={0: m}, metrics={}, costs={})
            for i, m in enumerate(means)]


def test_ranks_follow_the_direction_and_share_ties() -> None:
    high = rows(0.5, 0.9, 0.9, 0.1)
    rank(high, "max")
    assert [r.rank for r in high] == [3, 1, 1, 4]
    low = rows(0.5, 0.9, 0.1)
    rank(low, "min")
    assert [r.rank for r in low] == [2, 3, 1]
