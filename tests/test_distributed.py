"""A trial on several processes: torchrun starts them, mmengine's launcher joins them (gloo on
CPU), and the evaluation gathers every rank's share of the test set exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import assert_every_trial_complete, run_cli, write_suite


def test_a_two_process_trial_evaluates_the_whole_test_set(tmp_path: Path) -> None:
    # 3 classes x 41 = 123 test points over 2 ranks: one rank's share is padded, and a padded
    # sample counted twice would show in the denominator. The second norm projects the weights
    # feeding it after every step: the training step is the harness's under DDP too.
    suite = write_suite(tmp_path, name="ddp", seeds="[0]", epochs=2, body="""
        [[norm]]
        use = "batchnorm"
        label = "projected"
        projection = true
    """)
    text = suite.read_text().replace("test_points_per_class = 24", "test_points_per_class = 41")
    suite.write_text(text.replace("hidden = [8, 8]", "hidden = [8, 8]\nclasses = 3\ndevices = 2"))
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("run", str(suite), "--quiet", cwd=work, timeout=600)
    assert result.returncode == 0, result.stderr
    assert_every_trial_complete(work, "ddp", 2)
    board = json.loads((work / "leaderboard" / "ddp.json").read_text())
    for trial in board["trials"]:
        correct = trial["metric.accuracy"] * 123
        assert abs(correct - round(correct)) < 1e-6, "accuracy is a count over exactly the 123 test points"
    assert len(list((work / "runs" / "ddp").rglob("result.json"))) == 2, "rank 0 wrote the result for the worker"
    for label, projected in (("batchnorm", False), ("projected", True)):
        (checkpoint,) = (work / "runs" / "ddp").glob(f"*/{label}-*/seed-0/epoch_2.pth")
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        first = next(v for k, v in state.items() if k.endswith("weight") and v.dim() == 2)  # the first Linear
        unit = torch.allclose(first.norm(dim=1), torch.ones(len(first)), atol=1e-5)
        assert unit == projected, (label, first.norm(dim=1))
