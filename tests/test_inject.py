"""Injecting a norm into a model: by the builder's ``norm_layer``, or by swapping its batch norms."""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import resnet18

from harness_plugins.tasks.classification.inject import build_with_norm, swap_batchnorm


class Recorder:
    """A norm factory that remembers the widths it was asked for."""

    def __init__(self) -> None:
        self.widths: list[int] = []

    def __call__(self, num_features: int) -> nn.Module:
        self.widths.append(num_features)
        return nn.GroupNorm(1, num_features)


def _batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def test_swap_replaces_every_batchnorm_of_a_torchvision_resnet() -> None:
    model = resnet18(num_classes=10)
    widths = [bn.num_features for bn in _batchnorms(model)]
    recorder = Recorder()
    assert swap_batchnorm(model, recorder) is model
    assert _batchnorms(model) == []
    assert recorder.widths == widths
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == len(widths)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_swap_keeps_timm_norm_act_activation() -> None:
    torch.manual_seed(0)
    original = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10)
    fused = [m for m in original.modules() if isinstance(m, BatchNormAct2d)]
    assert any(not isinstance(m.act, nn.Identity) for m in fused)
    with torch.no_grad():  # make every BN a non-trivial affine map in eval mode
        for bn in fused:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    states = [bn.state_dict() for bn in _batchnorms(original)]
    x = torch.randn(2, 3, 64, 64)
    expected = original.eval()(x)

    swapped = swap_batchnorm(original, lambda c: nn.BatchNorm2d(c))
    new = _batchnorms(swapped)
    assert all(type(bn) is nn.BatchNorm2d for bn in new)
    for bn, state in zip(new, states, strict=True):
        bn.load_state_dict(state)
    torch.testing.assert_close(swapped.eval()(x), expected)


def test_swap_matches_device_and_dtype() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    swap_batchnorm(model, lambda c: nn.GroupNorm(2, c))
    assert isinstance(model[1], nn.GroupNorm)
    assert model[1].weight.dtype == torch.float64


def test_swap_keeps_a_shared_module_shared() -> None:
    bn = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(4, 4), bn, nn.Linear(4, 4), bn)
    swap_batchnorm(model, nn.LayerNorm)
    assert model[1] is model[3]
    assert isinstance(model[1], nn.LayerNorm)


def _builder_with_norm(num_classes: int, norm_layer: type[nn.Module] = nn.BatchNorm1d) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), norm_layer(8), nn.Linear(8, num_classes))


def _builder_without_norm(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, num_classes))


def test_build_passes_norm_layer_to_a_builder_that_takes_it() -> None:
    recorder = Recorder()
    model = build_with_norm(_builder_with_norm, recorder, num_classes=2)
    assert recorder.widths == [8]
    assert isinstance(model[1], nn.GroupNorm)


def test_build_swaps_when_the_builder_has_no_norm_layer() -> None:
    recorder = Recorder()
    model = build_with_norm(_builder_without_norm, recorder, num_classes=2)
    assert recorder.widths == [8]
    assert isinstance(model[1], nn.GroupNorm)
    assert _batchnorms(model) == []


def test_build_passes_norm_layer_to_a_kwargs_only_builder_only_when_told() -> None:
    received: list[bool] = []

    def builder(**kwargs: Any) -> nn.Module:
        received.append("norm_layer" in kwargs)
        return _builder_with_norm(**kwargs)

    for passes in (None, False, True):
        model = build_with_norm(builder, Recorder(), passes_norm_layer=passes, num_classes=2)
        assert isinstance(model[1], nn.GroupNorm)
    assert received == [False, False, True]
