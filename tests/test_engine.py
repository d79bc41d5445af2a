"""The engine's translation of suite settings into mmengine's optimizer and scheduler configs."""

from __future__ import annotations

import pytest

from harness.engine import optimizer_cfg, scheduler_cfg
from harness.task import TaskConfig


def test_sgd_and_adamw_configs() -> None:
    sgd = TaskConfig(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True})
    assert optimizer_cfg(sgd) == dict(type="SGD", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    adamw = TaskConfig(optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.05})
    assert optimizer_cfg(adamw) == dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05)


def test_multistep_after_warmup() -> None:
    config = TaskConfig(epochs=90, schedule={"name": "multistep", "milestones": [30, 60], "gamma": 0.1,
                                             "warmup_epochs": 5})
    warm, main = scheduler_cfg(config)
    assert warm["type"] == "LinearLR" and (warm["begin"], warm["end"]) == (0, 5)
    assert main == dict(type="MultiStepLR", milestones=[30, 60], gamma=0.1, by_epoch=True, begin=0, end=90)


def test_learning_rate_follows_the_papers_epochs() -> None:
    """Drive mmengine's own schedulers: lr is 0.1 until epoch 30, 0.01 until 60, then 0.001."""
    import torch
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS

    config = TaskConfig(epochs=90, schedule={"name": "multistep", "milestones": [30, 60], "gamma": 0.1,
                                             "warmup_epochs": 2})
    wrapper = OptimWrapper(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    schedulers = [PARAM_SCHEDULERS.build({**cfg, "convert_to_iter_based": False, "optimizer": wrapper})
                  for cfg in scheduler_cfg(config)]
    lrs = []
    for _ in range(90):
        lrs.append(wrapper.param_groups[0]["lr"])
        for scheduler in schedulers:
            scheduler.step()
    assert lrs[0] < 0.05  # warming up
    assert lrs[2] == pytest.approx(0.1) and lrs[29] == pytest.approx(0.1)
    assert lrs[30] == pytest.approx(0.01) and lrs[59] == pytest.approx(0.01) and lrs[60] == pytest.approx(0.001)


def test_cosine_and_constant() -> None:
    (cosine,) = scheduler_cfg(TaskConfig(epochs=20, schedule={"name": "cosine"}))
    assert cosine["type"] == "CosineAnnealingLR" and cosine["T_max"] == 20
    assert scheduler_cfg(TaskConfig(epochs=5)) == []
