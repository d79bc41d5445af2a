"""Interrupted runs resume: after Ctrl-C or kill -9 the next run finishes only what is missing,
and several workers on one storage never run a seed twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from conftest import assert_every_trial_complete, run_cli, write_suite


def slow_suite(directory: Path) -> Path:
    """Digits trials of a few seconds each, so that a run can be stopped in the middle of one."""
    path = write_suite(directory, name="slow", seeds="[0, 1]", epochs=6)
    path.write_text(path.read_text().replace('dataset = "spiral"', 'dataset = "digits"\nchannels = 24'))
    return path


def trials(work: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{work / 'runs' / name / 'storage.db'}"
    found = []
    for summary in optuna.get_all_study_summaries(storage):
        found += optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    return found


def _default_sigint() -> None:
    # A command started in the background by a non-interactive shell (`pytest ... &`) inherits
    # SIGINT ignored, and so would the harness and its trials: Ctrl-C is what is tested here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_and_stop_mid_trial(suite: Path, work: Path, sig: signal.Signals) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--quiet"], cwd=work, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    while not list((work / "runs").rglob("epoch_2.pth")):  # mid-trial, with a checkpoint to resume from
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached its second epoch"
        time.sleep(0.1)
    os.killpg(process.pid, sig)
    process.wait(timeout=60)
    return process


def assert_every_seed_completed_once(work: Path, name: str) -> None:
    complete = Counter((t.user_attrs["seed"]) for t in trials(work, name) if t.state == TrialState.COMPLETE)
    assert complete == Counter({0: 1, 1: 1})


def test_kill_9_then_run_again_finishes_what_was_missing(tmp_path: Path) -> None:
    suite, work = slow_suite(tmp_path), tmp_path / "work"
    work.mkdir()
    killed = start_and_stop_mid_trial(suite, work, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert [t.state for t in trials(work, "slow")].count(TrialState.RUNNING) == 1

    again = run_cli("run", str(suite), cwd=work)
    assert again.returncode == 0, again.stderr
    assert_every_seed_completed_once(work, "slow")
    assert_every_trial_complete(work, "slow", 2)
    dead = [t for t in trials(work, "slow") if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_kind"] for t in dead] == ["worker-died"]
    resumed = [t for t in trials(work, "slow") if t.user_attrs.get("resume")]
    assert len(resumed) == 1 and resumed[0].user_attrs["resumed_from_epoch"] >= 2


def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(tmp_path: Path) -> None:
    suite, work = slow_suite(tmp_path), tmp_path / "work"
    work.mkdir()
    stopped = start_and_stop_mid_trial(suite, work, signal.SIGINT)
    _, err = stopped.communicate()
    assert stopped.returncode == 130
    assert "interrupted; run the same command again to resume" in err and "Traceback" not in err
    interrupted = [t for t in trials(work, "slow") if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_kind"] for t in interrupted] == ["interrupted"]
    assert not [t for t in trials(work, "slow") if t.state == TrialState.RUNNING]

    again = run_cli("run", str(suite), "--quiet", cwd=work)
    assert again.returncode == 0, again.stderr
    assert_every_seed_completed_once(work, "slow")
    assert_every_trial_complete(work, "slow", 2)


def test_two_workers_share_the_work_without_duplicates(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, name="shared", seeds="[0, 1, 2]", norms=("batchnorm", "groupnorm", "none"))
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("run", str(suite), "--workers", "2", cwd=work)
    assert result.returncode == 0, result.stderr
    done = [t for t in trials(work, "shared") if t.state == TrialState.COMPLETE]
    assert len(done) == 9
    assert_every_trial_complete(work, "shared", 9)
    per_study = Counter((t.user_attrs["seed"], t.user_attrs["worker"].split(":")[0]) for t in done)
    assert len(per_study) <= 9
    assert (work / "runs" / "worker-1.log").is_file()
    assert "`none`" in (work / "leaderboard" / "shared.md").read_text()


def test_a_resume_point_survives_a_kill_while_checkpoints_are_written(tmp_path: Path) -> None:
    """A checkpoint is written under a temporary name and renamed, then ``last_checkpoint`` is
    replaced, and only then is the previous checkpoint removed: a kill while the next one is
    written leaves the last one whole and named. A trial whose checkpoints are all unreadable
    trains again from epoch 0 and says so. Both end complete, on the real engine."""
    from test_engine_options import toy_request

    from harness.engine import run_trial
    from harness.engine.recipe import resume_point

    work = tmp_path / "trial"
    run_trial(toy_request(tmp_path, name="trial", epochs=3))
    assert sorted(p.name for p in work.iterdir() if p.is_file() and not p.name.startswith("20")) == [
        "epoch_3.pth", "last_checkpoint"]  # (and mmengine's dump of its config, named by the time)
    assert (work / "last_checkpoint").read_text() == str(work / "epoch_3.pth")
    (work / "epoch_4.pth.tmp").write_bytes((work / "epoch_3.pth").read_bytes()[:1000])  # killed while written
    assert resume_point(work) == work / "epoch_3.pth"
    (work / "last_checkpoint").write_text("")  # damaged otherwise: the newest readable file is found
    assert resume_point(work) == work / "epoch_3.pth"
    resumed = run_trial(replace(toy_request(tmp_path, name="trial", epochs=4), resume=True))
    assert (resumed.resumed_from_epoch, resumed.restarted) == (3, "")

    for checkpoint in work.glob("epoch_*.pth"):
        checkpoint.write_bytes(b"garbage")
    assert resume_point(work) is None
    again = run_trial(replace(toy_request(tmp_path, name="trial", epochs=3), resume=True))
    assert again.resumed_from_epoch == 0 and "trained again from epoch 0" in again.restarted


def test_a_checkpoint_a_kill_left_behind_is_removed_at_the_next_save(tmp_path: Path) -> None:
    """Killed between renaming the new checkpoint and removing the old, a trial keeps both; the
    next checkpoint it writes leaves only itself."""
    from test_engine_options import toy_request

    from harness.engine import run_trial

    work = tmp_path / "trial"
    run_trial(toy_request(tmp_path, name="trial", epochs=2))
    (work / "epoch_1.pth").write_bytes((work / "epoch_2.pth").read_bytes())  # left behind by a kill
    run_trial(replace(toy_request(tmp_path, name="trial", epochs=3), resume=True))
    assert sorted(p.name for p in work.glob("epoch_*")) == ["epoch_3.pth"]
