"""Every built-in 2-d norm trains inside every built-in model.

One real training step per (norm, model), through the pre-flight's path, which is the trial's:
the task's model with the norm in it, the norm's protocol set up on a trial context, the
protocol's loader and forward, the task's loss plus the protocol's extra loss, backward, the
optimizer step and the protocol's after-step hook. Batches of 2 random images at small sizes.

The models: timm's ``resnet18`` (ImageNet stem: 7×7 stride-2 conv, max-pool, in-place ReLU after
every norm) at 64×64, where its last maps are 2×2; ``cifar_resnet20`` (He et al.'s CIFAR
network); the balanced-batch paper's variant of it with a max-pool between stages; and
``allcnn_c`` (leaky ReLU, stride-2 convolutions, a norm at the head).
"""

from __future__ import annotations

import math

import pytest

from harness.plugins import load_registry
from harness.preflight import check_pair

REGISTRY = load_registry()
TASK = REGISTRY.tasks["classification"]
BUILT_IN = {name: norm for name, norm in REGISTRY.norms.items() if "harness_plugins" in norm.source}
NORMS_2D = sorted(name for name, norm in BUILT_IN.items() if "2d" in norm.dims)
#: model id -> classification keys (CIFAR-10 shaped inputs; ``resize`` only lets the config take a
#: larger image_size: no data is read). ``unlabeled_fraction`` gives unsupervised_bn its split.
MODELS: dict[str, dict] = {
    "resnet18": {"model": "resnet18", "image_size": 64, "resize": 64},
    "cifar_resnet20": {"model": "cifar_resnet20", "image_size": 32},
    "cifar_resnet20_maxpool": {"model": "cifar_resnet20", "image_size": 16, "resize": 16,
                               "model_kwargs": {"widths": [16, 32, 64], "downsample": "maxpool"}},
    "allcnn_c": {"model": "allcnn_c", "image_size": 16, "resize": 16},
}


def test_every_registered_2d_norm_is_covered() -> None:
    assert len(NORMS_2D) >= 20, NORMS_2D


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("norm", NORMS_2D)
def test_norm_trains_one_step_in_model(norm: str, model: str, tmp_path) -> None:
    config = TASK.config(dataset="cifar10", batch_size=2, unlabeled_fraction=0.25, **MODELS[model])
    result = check_pair(TASK, config, REGISTRY.norms[norm], data_root=tmp_path)
    assert result.failure is None, f"{norm} in {model}: {result.failure}"
    assert math.isfinite(result.loss), f"{norm} in {model}: loss {result.loss}"
    assert not result.no_grad, f"{norm} in {model}: no gradient reached {result.no_grad}"
