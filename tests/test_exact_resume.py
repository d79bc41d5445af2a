"""A trial resumed at an epoch boundary ends with the same metrics, curves and protocol state, to
the last bit, as one never interrupted (on CPU, one thread).

The interrupted run is a real process that dies with ``os._exit`` (what kill -9 leaves: no
clean-up, no flush) at a chosen point: in the middle of the next epoch, or right after a
checkpoint was written and before that epoch's validation ran."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.engine import TrialRequest, run_trial
from harness.events import EpochEnd

EPOCHS = 3


def request(tmp_path: Path, name: str, norm: str, norm_values: dict[str, Any], task_values: dict[str, Any],
            ) -> TrialRequest:
    from test_engine_options import toy_request

    from harness.plugins import load_registry

    found = load_registry().norms[norm]
    made = toy_request(tmp_path, name=name, norm=found, epochs=EPOCHS, **task_values)
    return replace(made, norm_config=found.config(**norm_values))


def _die_at(tmp_path: Path, norm: str, norm_values: dict[str, Any], task_values: dict[str, Any], epoch: int,
            where: str) -> None:
    """Train in this (spawned) process and die without clean-up at the chosen point of ``epoch``."""
    from mmengine.hooks import CheckpointHook

    if where == "before validation":  # checkpoint `epoch` written, its validation not yet run
        save = CheckpointHook.after_train_epoch

        def save_then_die(self: CheckpointHook, runner: Any) -> None:
            save(self, runner)
            if runner.epoch + 1 == epoch:
                os._exit(137)

        CheckpointHook.after_train_epoch = save_then_die
        on_epoch = None
    else:  # the whole of epoch + 1 trained, its checkpoint not yet written
        def on_epoch(event: Any) -> None:
            if isinstance(event, EpochEnd) and event.epoch == epoch + 1:
                os._exit(137)
    made = request(tmp_path, "trial", norm, norm_values, task_values)
    run_trial(made, on_epoch) if on_epoch else run_trial(made)
    os._exit(0)  # reached only if the kill point was never hit


def interrupted_then_resumed(tmp_path: Path, norm: str, norm_values: dict[str, Any], task_values: dict[str, Any],
                             epoch: int, where: str) -> Any:
    child = multiprocessing.get_context("spawn").Process(
        target=_die_at, args=(tmp_path, norm, norm_values, task_values, epoch, where))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 137, f"the interrupted run ended with {child.exitcode}, not at the kill point"
    return run_trial(replace(request(tmp_path, "trial", norm, norm_values, task_values), resume=True))


CASES = {
    # norm, its values, task values: plain BN at every boundary; below, norms that carry state
    # from epoch to epoch outside the weights (the protocol's counters, an unlabeled stream,
    # training noise drawn every step).
    "batchnorm": ("batchnorm", {}, {}),
    "bn_fct (latch counted by the protocol)": ("bn_fct", {"fct": 0.5}, {}),
    "unsupervised_bn (unlabeled stream)": ("unsupervised_bn", {"ratio": 2}, {"unlabeled_per_class": 40}),
    "bn_noise (noise every step)": ("bn_noise", {}, {}),
}
POINTS = [(1, "mid-epoch"), (1, "before validation"), (2, "mid-epoch"), (2, "before validation")]


@pytest.mark.parametrize(("case", "epoch", "where"), [
    *[("batchnorm", e, w) for e, w in POINTS],
    *[(case, 1, "before validation") for case in list(CASES)[1:]],
    *[(case, 2, "mid-epoch") for case in list(CASES)[1:]],
])
def test_a_resumed_trial_ends_exactly_as_an_uninterrupted_one(tmp_path: Path, case: str, epoch: int,
                                                              where: str) -> None:
    norm, norm_values, task_values = CASES[case]
    whole = run_trial(request(tmp_path, "whole", norm, norm_values, task_values))
    resumed = interrupted_then_resumed(tmp_path, norm, norm_values, task_values, epoch, where)
    assert resumed.resumed_from_epoch == epoch and resumed.restarted == ""
    assert resumed.metrics == whole.metrics
    assert resumed.curves == whole.curves
