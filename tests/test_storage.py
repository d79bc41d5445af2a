"""Trial bookkeeping on a real Optuna SQLite storage: one enqueued trial per seed, atomic claims,
dead workers found, failures kept or retried as asked."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from harness.plan import make_plan
from harness.plugins import load_registry
from harness.storage import TrialBook, open_storage
from harness.suite import load_suite

from conftest import write_suite


@pytest.fixture
def book(tmp_path: Path) -> TrialBook:
    suite = load_suite(write_suite(tmp_path, seeds="[0, 1, 2]"), load_registry())
    return TrialBook(open_storage(f"sqlite:///{tmp_path / 'storage.db'}", heartbeat=1), make_plan(suite))


def states(book: TrialBook) -> list[tuple[int, str]]:
    return sorted((t.user_attrs["seed"], t.state.name) for p in book.plans for t in book.trials(p))


def test_sync_enqueues_each_seed_once(book: TrialBook) -> None:
    book.sync()
    book.sync()
    assert states(book) == [(0, "WAITING"), (1, "WAITING"), (2, "WAITING")]


def test_claims_are_exclusive_and_run_out(book: TrialBook) -> None:
    book.sync()
    seeds = [book.claim().seed for _ in range(3)]
    assert sorted(seeds) == [0, 1, 2]
    assert book.claim() is None
    assert book.in_flight() == 3


def test_a_seed_enqueued_twice_runs_once(book: TrialBook) -> None:
    book.sync()
    study = book.study(book.plans[0])
    study.enqueue_trial({}, user_attrs={"seed": 0, "resume": False})  # a racing worker
    claimed = [book.claim() for _ in range(4)]
    assert sorted(c.seed for c in claimed if c) == [0, 1, 2]
    dropped = [t for t in study.get_trials() if t.user_attrs.get("fail_kind") == "duplicate"]
    assert len(dropped) == 1


def test_a_dead_local_worker_is_found_and_its_trial_resumed(book: TrialBook) -> None:
    book.sync()
    claim = book.claim()
    book.storage.set_trial_user_attr(claim.trial_id, "worker", f"{socket.gethostname()}:999999999")
    book.sync()
    failed = [t for t in book.trials(claim.plan) if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_kind"] for t in failed] == ["worker-died"]
    again = [t for t in book.trials(claim.plan) if t.state == TrialState.WAITING and t.user_attrs["seed"] == claim.seed]
    assert len(again) == 1 and again[0].user_attrs["resume"] is True


def test_a_silent_remote_worker_is_failed_by_its_heartbeat(book: TrialBook) -> None:
    book.sync()
    claim = book.claim()
    book.storage.set_trial_user_attr(claim.trial_id, "worker", "elsewhere:1")
    time.sleep(4)  # past the grace of two one-second intervals (SQLite times have 1 s resolution)
    book.sync()
    trial = book.storage.get_trial(claim.trial_id)
    assert trial.state == TrialState.FAIL
    assert (claim.seed, "WAITING") in states(book)


def test_failures_stay_failed_unless_retry_is_asked(book: TrialBook) -> None:
    book.sync()
    claim = book.claim()
    book.fail(claim, "error", "ValueError: bad")
    book.sync()
    assert states(book).count((claim.seed, "WAITING")) == 0
    book.sync(retry_failed=True)
    assert states(book).count((claim.seed, "WAITING")) == 1
    book.sync(retry_failed=True)
    assert states(book).count((claim.seed, "WAITING")) == 1


def test_interrupted_trials_are_run_again(book: TrialBook) -> None:
    book.sync()
    claim = book.claim()
    book.fail(claim, "interrupted", "stopped by the user")
    book.sync()
    assert states(book).count((claim.seed, "WAITING")) == 1
