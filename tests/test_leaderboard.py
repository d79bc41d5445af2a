"""The leaderboard's statistics (differences to the baseline, Holm's correction, intervals, ranks,
the statistics across variants) checked by hand, and ``harness leaderboard`` merging real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from harness.leaderboard import Comparison, Row, across, compare, holm, rank
from harness.leaderboard.stats import interval

from conftest import run_cli, write_suite


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


def test_holm_steps_down_as_by_hand() -> None:
    cs = [Comparison(0.1, p=0.01), Comparison(0.2, p=0.04), None, Comparison(0.3), Comparison(0.1, p=0.03)]
    holm(cs)
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04, then made monotone: 0.03, 0.06, 0.06
    assert [cs[0].p_holm, cs[4].p_holm, cs[1].p_holm] == pytest.approx([0.03, 0.06, 0.06])
    assert cs[3].p_holm is None and cs[0].significant and not cs[4].significant and cs[4].p < 0.05


def test_interval_is_the_t_interval_of_the_mean() -> None:
    low, high = interval([1.0, 2.0, 3.0])  # mean 2, sem 1/sqrt(3), t(0.975, 2) = 4.3027
    assert (low, high) == pytest.approx((2 - 4.3027 / 3**0.5, 2 + 4.3027 / 3**0.5), abs=1e-4)
    assert interval([1.0]) is None and interval([2.0, 2.0]) == (2.0, 2.0)


# Four variants (blocks) x three norms; higher is better. Ranks per variant (1 = best):
# v1: a 1, b 2, c 3;  v2: a 1, b 3, c 2;  v3: a 1.5, b 1.5, c 3;  v4: a 1, b 2, c 3
# mean ranks a 1.125, b 2.125, c 2.75; Friedman chi2 = 12N/(k(k+1)) sum R^2 - 3N(k+1) with rank sums
# 4.5, 8.5, 11: 12*4/12 * (20.25 + 72.25 + 121) / 16 ... = 4 * 213.5 / 4 - 48 = 5.375 (ties uncorrected)
MEANS = {"v1": {"a": 0.9, "b": 0.8, "c": 0.7}, "v2": {"a": 0.6, "b": 0.4, "c": 0.5},
         "v3": {"a": 0.7, "b": 0.7, "c": 0.2}, "v4": {"a": 0.95, "b": 0.9, "c": 0.5, "d": 0.1}}


def test_across_ranks_friedman_and_nemenyi_by_hand() -> None:
    a = across(MEANS, "max")
    assert a.norms == ["a", "b", "c"] and a.variants == ["v1", "v2", "v3", "v4"] and a.left_out == ["d"]
    assert a.mean_rank == pytest.approx({"a": 1.125, "b": 2.125, "c": 2.75})
    # scipy corrects for the tie in v3: divide by 1 - sum(t^3 - t) / (N k (k^2 - 1)) = 1 - 6/96
    assert a.friedman["statistic"] == pytest.approx(5.375 / (1 - 6 / 96))
    # Demšar (2006), Table 5: q_0.05 = 2.343 for three classifiers; CD = q sqrt(k(k+1) / 6N)
    assert a.posthoc["critical_difference"] == pytest.approx(2.343 * (3 * 4 / 24) ** 0.5, abs=1e-3)
    p = a.posthoc["p"]
    assert p["a"]["c"] < p["a"]["b"] and p["a"]["c"] == p["c"]["a"]
    assert across(MEANS, "min").mean_rank["c"] == pytest.approx(4 - 2.75)


def test_across_needs_two_variants_and_two_norms() -> None:
    assert across({"v1": MEANS["v1"]}, "max") is None
    assert across({"v1": {"a": 1.0}, "v2": {"a": 2.0}}, "max") is None
    two = across({"v1": {"a": 1.0, "b": 0.5}, "v2": {"a": 2.0, "b": 3.0}}, "max")
    assert two.mean_rank == {"a": 1.5, "b": 1.5} and two.friedman is None  # Friedman needs three norms


def test_performance_profiles_by_hand() -> None:
    profiles = across(MEANS, "max").profiles
    # relative gaps to each variant's best: b 1/9, 1/3, 0, 1/19; c 2/9, 1/6, 5/7, 9/19
    assert profiles["at"]["0.0"] == {"a": 1.0, "b": 0.25, "c": 0.0}
    assert profiles["at"]["0.1"] == {"a": 1.0, "b": 0.5, "c": 0.0}
    def c_at(tau: float) -> float:
        return profiles["fractions"]["c"][[round(t, 9) for t in profiles["taus"]].index(round(tau, 9))]

    assert (c_at(1 / 6), c_at(2 / 9), c_at(9 / 19), c_at(5 / 7)) == (0.25, 0.5, 0.75, 1.0)


# -- merging several suites or storages: the real CLI on real runs ------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small suites run into their own storages: ``a`` and ``b`` share the spiral variant and
    batchnorm; ``b2`` is ``b`` (same name) with another seed; ``c`` trains that variant
    differently; ``m`` has a numeric matrix axis."""
    root = tmp_path_factory.mktemp("merge")
    work = root / "work"
    work.mkdir()
    (root / "b2").mkdir()
    suites = [write_suite(root, name="a", norms=("batchnorm", "groupnorm")),
              write_suite(root, name="b", norms=("batchnorm", "layernorm")),
              write_suite(root / "b2", name="b", seeds="[5]", norms=("batchnorm", "layernorm")),
              write_suite(root, name="c", epochs=1, norms=("batchnorm",)),
              write_suite(root, name="m", norms=("batchnorm", "groupnorm", "layernorm"),
                          body="[matrix]\npoints_per_class = [16, 24]\n")]
    for i, suite in enumerate(suites):
        result = run_cli("run", str(suite), "--quiet", "--storage", f"sqlite:///{root}/{i}.db", cwd=work)
        assert result.returncode == 0, result.stderr
    return root


def merged(root: Path, *args: str) -> str:
    result = run_cli("leaderboard", *args, cwd=root / "work")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_suites_sharing_a_variant_merge_into_one_comparison(runs: Path) -> None:
    out = merged(runs, str(runs / "a.toml"), str(runs / "b.toml"), str(runs / "c.toml"),
                 "--storage", f"sqlite:///{runs}/0.db", "--storage", f"sqlite:///{runs}/1.db",
                 "--storage", f"sqlite:///{runs}/3.db", "--format", "json", "--format", "md")
    board = json.loads((runs / "work" / "leaderboard" / "a+b+c.json").read_text())
    assert sorted(out.split()) == sorted(str(runs / "work" / "leaderboard" / f"a+b+c.{x}") for x in ("json", "md"))
    assert not (runs / "work" / "leaderboard" / "a+b+c.html").exists()
    variants = {label: [r["norm"] for r in rows] for label, rows in board["variants"].items()}
    assert variants == {"spiral": ["batchnorm", "groupnorm", "layernorm"], "spiral [c]": ["batchnorm"]}
    spiral = {r["norm"]: r for r in board["variants"]["spiral"]}
    assert spiral["batchnorm"]["n"] == 2 and spiral["layernorm"]["vs_baseline"]["p_holm"] is not None
    assert [s["name"] for s in board["sources"]] == ["a", "b", "c"]
    assert {t["suite"] for t in board["trials"]} == {"a", "b", "c"}
    assert {(t["norm"], t["suite"]) for t in board["trials"] if t["variant"] == "spiral"} == {
        ("batchnorm", "a"), ("groupnorm", "a"), ("layernorm", "b")}  # a's batchnorm seeds win


def test_one_suite_from_several_storages_pools_its_seeds(runs: Path) -> None:
    merged(runs, str(runs / "b.toml"), str(runs / "b2" / "b.toml"), "--name", "pooled", "--format", "json",
           "--storage", f"sqlite:///{runs}/1.db", "--storage", f"sqlite:///{runs}/2.db")
    board = json.loads((runs / "work" / "leaderboard" / "pooled.json").read_text())
    rows = {r["norm"]: r for r in board["variants"]["spiral"]}
    assert set(rows) == {"batchnorm", "layernorm"} and board["suite"]["seeds"] == [0, 1, 5]
    assert sorted(rows["layernorm"]["values"]) == ["0", "1", "5"] and board["complete"]
    assert len(rows["batchnorm"]["curves"]["train_loss"]["5"]) == 2  # one per epoch, from the stored trial


@pytest.mark.parametrize(("args", "says"), [
    (["--format", "pdf"], "--format: unknown format(s) ['pdf']"),
    (["--storage", "sqlite:///x.db", "--storage", "sqlite:///y.db", "--storage", "sqlite:///z.db"],
     "--storage: got 3 storages for 2 suites"),
])
def test_bad_leaderboard_arguments_exit_2(runs: Path, args: list[str], says: str) -> None:
    result = run_cli("leaderboard", str(runs / "a.toml"), str(runs / "b.toml"), *args, cwd=runs / "work")
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_suites_of_different_metrics_are_not_merged(runs: Path) -> None:
    other = runs / "other.toml"
    other.write_text((runs / "a.toml").read_text().replace('metric = "accuracy"', 'metric = "nll"'))
    before = sorted((runs / "work" / "leaderboard").iterdir())
    result = run_cli("leaderboard", str(runs / "a.toml"), str(other), cwd=runs / "work")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{other}: suite.metric: is 'nll' but 'accuracy'" in result.stderr
    assert sorted((runs / "work" / "leaderboard").iterdir()) == before


def test_a_numeric_axis_gets_its_table_and_the_variants_their_statistics(runs: Path) -> None:
    merged(runs, str(runs / "m.toml"), "--storage", f"sqlite:///{runs}/4.db", "--format", "md", "--format", "json")
    board = json.loads((runs / "work" / "leaderboard" / "m.json").read_text())
    assert board["suite"]["matrix"] == {"points_per_class": [16, 24]}
    assert board["variant_axes"] == {label: {"points_per_class": int(label.rsplit("=", 1)[-1])}
                                     for label in board["variants"]}
    rows = {r["norm"]: r for r in board["variants"][next(iter(board["variants"]))]}
    assert rows["groupnorm"]["ci"][0] <= rows["groupnorm"]["mean"] <= rows["groupnorm"]["ci"][1]
    assert sorted(board["across"]["mean_rank"]) == ["batchnorm", "groupnorm", "layernorm"]
    md = (runs / "work" / "leaderboard" / "m.md").read_text()
    table = md.split("## accuracy by points_per_class", 1)[1].split("\n\n", 2)[1].splitlines()
    assert table[0] == "| points_per_class | `batchnorm` | `groupnorm` | `layernorm` |"
    assert [line.split(" | ")[0] for line in table[2:]] == ["| 24", "| 16"]
    assert "## Across variants" in md and "Friedman χ²" in md
