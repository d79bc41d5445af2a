"""`harness run` end to end, as a user runs it: trials on mmengine, results in Optuna storage,
a leaderboard, a third-party norm from a local file on it, a diverging norm recorded as failed,
and a second run that trains nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest

from conftest import SCALED_BN, assert_every_trial_complete, run_cli, write_suite

NAN_NORM = '''
import torch
from harness import Norm, hookimpl

class NanNorm(torch.nn.Module):
    """Poisons its input from the third training step on: the pre-flight check's one step passes,
    the trial diverges."""
    def __init__(self, num_features, **kwargs):
        super().__init__()
        self.steps = 0
    def forward(self, x):
        self.steps += self.training
        return x * float("nan") if self.steps > 2 else x

@hookimpl
def harness_register_norms(register):
    register(Norm(name="nan_norm", make=NanNorm, summary="always NaN"))
'''


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("e2e")
    (root / "my_norm.py").write_text(SCALED_BN)
    (root / "nan_norm.py").write_text(NAN_NORM)
    suite = write_suite(root, header='plugins = ["my_norm.py", "nan_norm.py"]\n', norms=("batchnorm", "groupnorm"),
                        body="""
        [[norm]]
        use = "scaled_bn"
        factor = 0.25

        [[norm]]
        use = "nan_norm"
    """)
    work = root / "work"
    work.mkdir()
    first = run_cli("run", str(suite), cwd=work)
    return {"suite": suite, "work": work, "first": first}


def test_run_writes_a_leaderboard_with_every_norm(finished: dict) -> None:
    first, work = finished["first"], finished["work"]
    assert first.returncode == 1, first.stderr + first.stdout  # nan_norm's trials failed, the leaderboard is there
    assert "2 trial(s) failed" in first.stderr and "--retry-failed" in first.stderr
    md = (work / "leaderboard" / "tiny.md").read_text()
    for norm in ("batchnorm", "groupnorm", "scaled_bn", "nan_norm"):
        assert f"`{norm}`" in md
    assert "| 1 |" in md and "baseline" in md
    data = json.loads((work / "leaderboard" / "tiny.json").read_text())
    assert data["suite"]["sha256"] and data["versions"]["optuna"] == optuna.__version__
    rows = {r["norm"]: r for r in data["variants"]["spiral"]}
    assert rows["scaled_bn"]["n"] == 2 and rows["scaled_bn"]["vs_baseline"] is not None
    assert rows["batchnorm"]["costs"]["parameters"][0] > 0
    assert data["environment"]["torch"]


def test_a_diverging_trial_is_recorded_and_the_suite_goes_on(finished: dict) -> None:
    work = finished["work"]
    with open(work / "leaderboard" / "tiny.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 4 * 2  # every (norm, seed) has a row
    failed = [t for t in trials if t["state"] == "fail"]
    assert {t["norm"] for t in failed} == {"nan_norm"}
    assert all(t["fail_kind"] == "diverged" and "loss is nan" in t["fail_reason"] for t in failed)
    assert all(t["state"] == "complete" for t in trials if t["norm"] != "nan_norm")
    md = (work / "leaderboard" / "tiny.md").read_text()
    assert "Failed trials:" in md and "`nan_norm` seed 0: diverged" in md
    assert "failed" in finished["first"].stderr


def test_tensorboard_logs_and_checkpoints_per_trial(finished: dict) -> None:
    runs = finished["work"] / "runs" / "tiny"
    events = list(runs.rglob("events.out.tfevents.*"))
    assert len(events) >= 6  # every trial that trained logged
    assert list(runs.rglob("epoch_2.pth")), "the last epoch's checkpoint is kept for resuming"
    assert (runs / "storage.db").is_file()


def test_running_again_trains_nothing(finished: dict) -> None:
    suite, work = finished["suite"], finished["work"]
    storage = f"sqlite:///{work / 'runs' / 'tiny' / 'storage.db'}"
    before = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    again = run_cli("run", str(suite), cwd=work)
    assert again.returncode == 1, again.stderr  # the failed trials stay failed
    assert "2 trial(s) failed" in again.stderr
    assert "8 of 8 trials already in storage" in again.stderr
    after = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert after == before
    assert "`scaled_bn`" in (work / "leaderboard" / "tiny.md").read_text()


def test_leaderboard_and_status_read_storage(finished: dict) -> None:
    suite, work = finished["suite"], finished["work"]
    (work / "leaderboard" / "tiny.md").unlink()
    result = run_cli("leaderboard", str(suite), cwd=work)
    assert result.returncode == 0 and (work / "leaderboard" / "tiny.md").is_file()
    status = run_cli("status", str(suite), cwd=work)
    assert "8 planned trial(s); 6 complete, 2 fail" in status.stdout


def test_an_edited_suite_starts_new_studies_and_keeps_the_old(finished: dict, tmp_path: Path) -> None:
    suite, work = finished["suite"], finished["work"]
    status = run_cli("status", str(suite), cwd=work)
    edited = tmp_path / "tiny.toml"
    here = Path(suite).parent
    edited.write_text(Path(suite).read_text().replace("epochs = 2", "epochs = 3").replace(
        '"my_norm.py", "nan_norm.py"', f'"{here / "my_norm.py"}", "{here / "nan_norm.py"}"'))
    changed = run_cli("status", str(edited), cwd=work)
    assert "8 not started" in changed.stdout and "6 complete" in status.stdout


def test_runs_repeat_to_the_last_digit(finished: dict, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, name="again", norms=("batchnorm", "groupnorm"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    results = []
    for out in ("a", "b"):
        result = run_cli("run", str(suite), "--quiet", cwd=tmp_path / out)
        assert result.returncode == 0, result.stderr
        assert_every_trial_complete(tmp_path / out, "again", 4)
        with open(tmp_path / out / "leaderboard" / "again.csv") as f:
            results.append([(r["norm"], r["seed"], r["metric.accuracy"], r["metric.nll"]) for r in csv.DictReader(f)])
    assert results[0] == results[1]


def test_a_smoke_run_with_a_failed_trial_exits_1_after_its_leaderboard(tmp_path: Path) -> None:
    (tmp_path / "nan_norm.py").write_text(NAN_NORM)
    suite = write_suite(tmp_path, name="nan", header='plugins = ["nan_norm.py"]\n', norms=("batchnorm", "nan_norm"))
    result = run_cli("run", str(suite), "--smoke", "--quiet", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "1 trial(s) failed" in result.stderr and "--smoke --retry-failed" in result.stderr
    trials = json.loads((tmp_path / "leaderboard" / "nan-smoke.json").read_text())["trials"]
    assert sorted((t["norm"], t["state"], t["fail_kind"]) for t in trials) == [
        ("batchnorm", "complete", ""), ("nan_norm", "fail", "diverged")]
