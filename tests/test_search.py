"""The search phase on the real path (CLI in a subprocess, SQLite or PostgreSQL storage): each
comparison is tuned on the validation split in its own study, pruned trials are recorded as
pruned, and only then do its final trials run, each seed once, with the best setting."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from conftest import assert_every_trial_complete, run_cli, run_together, write_suite
from postgres_server import PostgresServer

SEARCH = """
[search]
trials = {trials}
sampler = "{sampler}"
pruner = "{pruner}"
space = {{ "optimizer.lr" = {{ low = 0.001, high = 0.5, log = true }}, "norm.momentum" = {{}} }}
"""


def search_suite(directory: Path, trials: int = 3, sampler: str = "random", pruner: str = "none",
                 epochs: int = 3) -> Path:
    return write_suite(directory, name="tuned", seeds="[0, 1]", epochs=epochs, norms=("batchnorm", "layernorm"),
                       body=SEARCH.format(trials=trials, sampler=sampler, pruner=pruner))


def studies(url: str) -> dict[str, list[FrozenTrial]]:
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=url).get_trials()
            for s in optuna.get_all_study_summaries(url)}


def sqlite(work: Path) -> str:
    return f"sqlite:///{work / 'runs' / 'tuned' / 'storage.db'}"


def assert_searched_then_finals(found: dict[str, list[FrozenTrial]], trials: int) -> None:
    """Per comparison: every search slot finished once, no final started before the search
    ended, each seed completed once with the best search point."""
    finals = {name: ts for name, ts in found.items() if not name.endswith("/search")}
    assert len(finals) == 2
    for name, final in finals.items():
        search = [t for t in found[f"{name}/search"] if t.user_attrs.get("fail_kind") != "duplicate"]
        assert sorted(t.user_attrs["slot"] for t in search) == list(range(trials))
        assert {t.state for t in search} <= {TrialState.COMPLETE, TrialState.PRUNED}
        done = [t for t in search if t.state == TrialState.COMPLETE]
        best = max(done, key=lambda t: t.value)
        complete = [t for t in final if t.state == TrialState.COMPLETE]
        assert Counter(t.user_attrs["seed"] for t in complete) == Counter({0: 1, 1: 1})
        assert all(t.user_attrs["params"] == best.params for t in complete)
        assert min(t.datetime_start for t in final) > max(t.datetime_complete for t in search)
        for trial in done:  # scored on the validation split: its last validation, not the test
            assert trial.value == trial.intermediate_values[max(trial.intermediate_values)]
            assert trial.value == trial.user_attrs["curves"]["val_accuracy"][-1]


def test_each_norm_is_tuned_then_its_finals_run_the_best_setting(tmp_path: Path) -> None:
    suite, work = search_suite(tmp_path), tmp_path / "work"
    work.mkdir()
    result = run_cli("run", str(suite), cwd=work)
    assert result.returncode == 0, result.stderr
    found = studies(sqlite(work))
    assert_searched_then_finals(found, 3)
    search = found[next(n for n in found if n.endswith("/search") and "/batchnorm/" in n)]
    assert len({tuple(sorted(t.params.items())) for t in search}) == 3, "three different points"
    assert {"optimizer.lr", "norm.momentum"} == set(search[0].params)
    assert_every_trial_complete(work, "tuned", 4)
    board = (work / "leaderboard" / "tuned.md").read_text()
    assert "tuned: optimizer.lr" in board and "3 random search trial(s) on the validation split" in board

    status = run_cli("status", str(suite), cwd=work)
    rows = [line.split() for line in status.stdout.splitlines() if line.startswith("spiral")]
    assert [row[:8] for row in rows] == [
        ["spiral", norm, phase, done, "0", "0", "0", "0"]
        for norm in ("batchnorm", "layernorm") for phase, done in (("search", "3"), ("finals", "2"))], status.stdout
    assert [row[8:10] for row in rows][:2] == [["best", "val"], ["mean", "test"]]

    # A new space is a new search (and new finals); the old one stays in storage.
    suite.write_text(suite.read_text().replace("trials = 3", "trials = 2"))
    again = run_cli("run", str(suite), cwd=work)
    assert again.returncode == 0, again.stderr
    assert len([n for n in studies(sqlite(work)) if n.endswith("/search")]) == 4


def test_the_median_pruner_stops_trials_and_records_them_as_pruned(tmp_path: Path) -> None:
    suite, work = search_suite(tmp_path, trials=8, pruner="median", epochs=4), tmp_path / "work"
    work.mkdir()
    result = run_cli("run", str(suite), "--quiet", cwd=work)
    assert result.returncode == 0, result.stderr
    found = studies(sqlite(work))
    assert_searched_then_finals(found, 8)
    pruned = [t for name, ts in found.items() if name.endswith("/search") for t in ts
              if t.state == TrialState.PRUNED]
    assert pruned, "no trial was pruned"
    for trial in pruned:  # stopped early: fewer validations than epochs, the epoch recorded
        assert len(trial.intermediate_values) < 4
        assert trial.user_attrs["pruned_after_epoch"] == max(trial.intermediate_values)


def test_two_runs_on_postgresql_search_then_finals_each_trial_once(tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.new_database()
    suite, work = search_suite(tmp_path, trials=4), tmp_path / "work"
    work.mkdir()
    run_together(2, "run", str(suite), "--storage", url, "--quiet", cwd=work)
    found = studies(url)
    assert_searched_then_finals(found, 4)
    workers = {t.user_attrs["worker"] for ts in found.values() for t in ts if t.state == TrialState.COMPLETE}
    assert len(workers) == 2, "the two runs did not share the work"


def test_a_smoke_run_searches_too(tmp_path: Path) -> None:
    suite, work = search_suite(tmp_path), tmp_path / "work"
    work.mkdir()
    result = run_cli("run", str(suite), "--smoke", "--quiet", cwd=work)
    assert result.returncode == 0, result.stderr
    url = f"sqlite:///{work / 'runs' / 'tuned-smoke' / 'storage.db'}"
    search = [ts for name, ts in studies(url).items() if name.endswith("/search")]
    assert [len(ts) for ts in search] == [2, 2]


def test_a_grid_search_runs_each_point_once_and_refuses_more_trials_than_points(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, name="tuned", seeds="[0]", norms=("batchnorm",), body="""
        [search]
        trials = 4
        sampler = "grid"
        pruner = "none"
        [search.space]
        "optimizer.lr" = { choices = [0.01, 0.1] }
        "norm.momentum" = { choices = [0.1, 0.3] }
    """)
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("run", str(suite), "--quiet", "--workers", "2", cwd=work)
    assert result.returncode == 0, result.stderr
    [search] = [ts for name, ts in studies(sqlite(work)).items() if name.endswith("/search")]
    points = sorted((t.params["optimizer.lr"], t.params["norm.momentum"]) for t in search)
    assert points == [(0.01, 0.1), (0.01, 0.3), (0.1, 0.1), (0.1, 0.3)]

    suite.write_text(suite.read_text().replace("trials = 4", "trials = 5"))
    refused = run_cli("check", str(suite), cwd=work)
    assert refused.returncode == 2
    assert "search.trials: the grid of norm 'batchnorm' has 4 point(s), fewer than trials = 5" in refused.stderr


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes"])
def test_each_sampler_picks_the_points_of_claimed_slots_and_finals_wait_for_all(tmp_path: Path, sampler: str) -> None:
    """On the storage API: slots are claimed one by one with the sampler's points, and the
    finals are enqueued only when the last slot has finished, with the best point."""
    from harness.plan import make_plan
    from harness.plugins import load_registry
    from harness.storage import TrialBook, open_storage
    from harness.suite import load_suite

    suite = load_suite(search_suite(tmp_path, trials=4, sampler=sampler), load_registry())
    plan = make_plan(suite)[0]
    book = TrialBook(open_storage(f"sqlite:///{tmp_path / 'storage.db'}"), [plan])
    book.sync()
    scores = [0.2, 0.9, 0.5, 0.4]
    claims = []
    for score in scores:
        claim = book.claim()
        assert claim is not None and claim.search and set(claim.params) == {"optimizer.lr", "norm.momentum"}
        claims.append(claim)
        book.complete(claim, score, {})
        book.sync()
        if len(claims) < len(scores):
            assert not list(book.trials(plan)), "finals enqueued before the search finished"
    assert len({tuple(c.params.items()) for c in claims}) == 4
    finals = list(book.trials(plan))
    assert sorted(t.user_attrs["seed"] for t in finals) == [0, 1]
    assert all(t.user_attrs["params"] == claims[1].params for t in finals)
    assert book.claim().label == "seed 0"
