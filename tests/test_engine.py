"""The engine's translation of suite settings into mmengine's optimizer and scheduler configs."""

from __future__ import annotations

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

from harness.engine import TaskModel, optim_wrapper_cfg, scheduler_cfg
from harness.protocol import NormProtocol
from harness.task import TaskConfig


class Projecting(NormProtocol):
    """A protocol that exempts the first layer's weight from weight decay (as projection does)."""

    def no_weight_decay(self, net: nn.Module) -> list[nn.Parameter]:
        return [net[0].weight]


def model(protocol: NormProtocol | None = None) -> TaskModel:
    torch.manual_seed(0)
    return TaskModel(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), None, protocol or NormProtocol(), None)


def test_sgd_and_adamw_configs_build_torchs_optimizers() -> None:
    sgd = TaskConfig(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True})
    cfg = optim_wrapper_cfg(sgd, model(), "cpu")
    assert cfg == dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1, momentum=0.9, nesterov=True,
                                                           weight_decay=5e-4))
    built = build_optim_wrapper(model(), cfg).optimizer
    assert isinstance(built, torch.optim.SGD) and built.defaults["nesterov"] and built.defaults["momentum"] == 0.9
    adamw = TaskConfig(optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.05})
    built = build_optim_wrapper(model(), optim_wrapper_cfg(adamw, model(), "cpu")).optimizer
    assert isinstance(built, torch.optim.AdamW)
    assert (built.defaults["lr"], built.defaults["betas"], built.defaults["weight_decay"]) == (1e-3, (0.9, 0.999), 0.05)


def test_the_protocols_parameters_alone_get_no_weight_decay_in_one_group() -> None:
    """Two groups, not one per parameter: a GPU's multi-tensor optimizer step runs once per group."""
    config = TaskConfig(optimizer={"name": "sgd", "lr": 0.1, "weight_decay": 5e-4})
    net = model(Projecting())
    optimizer = build_optim_wrapper(net, optim_wrapper_cfg(config, net, "cpu")).optimizer
    groups = [([id(p) for p in group["params"]], group["weight_decay"]) for group in optimizer.param_groups]
    others = [id(net.net[0].bias), id(net.net[1].weight), id(net.net[1].bias)]
    assert groups == [(others, 5e-4), ([id(net.net[0].weight)], 0.0)]


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
