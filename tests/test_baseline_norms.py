"""The baseline norms compute what torch's own layers compute, and register without torch."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.testing import assert_close

from harness import Norm
from harness_plugins.norms import harness_register_norms
from harness_plugins.norms.baselines import BatchNorm, GroupNorm, Identity, InstanceNorm, LayerNorm

from conftest import randomize_affine

C = 6


def _input(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random input with a non-zero mean and non-unit scale per channel."""
    g = torch.Generator().manual_seed(seed)
    channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    mean = torch.randn(channel, generator=g) * 3
    scale = torch.rand(channel, generator=g) * 4 + 0.5
    return torch.randn(shape, generator=g) * scale + mean



def _assert_same(ours: nn.Module, ref: nn.Module, shape: tuple[int, ...], steps: int = 3) -> None:
    """Train-mode outputs and gradients for a few steps, running stats, then eval-mode outputs."""
    ours.train()
    ref.train()
    for step in range(steps):
        x = _input(*shape, seed=10 + step)
        x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y_ref = ours(x_ours), ref(x_ref)
        assert_close(y_ours, y_ref)
        g = _input(*shape, seed=100 + step)
        (y_ours * g).sum().backward()
        (y_ref * g).sum().backward()
        assert_close(x_ours.grad, x_ref.grad)
        for (name, p_ours), (_, p_ref) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
            assert_close(p_ours.grad, p_ref.grad, msg=f"grad of {name}")
    assert_close(ours.state_dict(), ref.state_dict())
    ours.eval()
    ref.eval()
    x = _input(*shape, seed=1000)
    assert_close(ours(x), ref(x))


@pytest.mark.parametrize(
    ("ref_cls", "shape"),
    [(nn.BatchNorm1d, (8, C)), (nn.BatchNorm1d, (8, C, 5)), (nn.BatchNorm2d, (4, C, 5, 3))],
)
def test_batchnorm_equals_torch(ref_cls: type[nn.Module], shape: tuple[int, ...]) -> None:
    ours, ref = BatchNorm(C, momentum=0.2), ref_cls(C, momentum=0.2)
    randomize_affine(ours, ref)
    _assert_same(ours, ref, shape)
    assert ours.num_batches_tracked.item() == 3


def test_batchnorm_rejects_other_ranks() -> None:
    with pytest.raises(ValueError, match="batchnorm needs"):
        BatchNorm(C)(torch.randn(C))


@pytest.mark.parametrize(
    ("num_features", "groups", "expected"), [(24, 32, 24), (48, 32, 24), (10, 4, 2), (7, 32, 7)]
)
def test_groupnorm_clips_groups(num_features: int, groups: int, expected: int) -> None:
    assert GroupNorm(num_features, groups=groups).num_groups == expected


def test_groupnorm_default_is_32() -> None:
    assert GroupNorm(64).num_groups == 32


@pytest.mark.parametrize("shape", [(4, 12), (4, 12, 5, 3)])
def test_groupnorm_equals_torch(shape: tuple[int, ...]) -> None:
    ours, ref = GroupNorm(12, groups=8), nn.GroupNorm(6, 12)
    randomize_affine(ours, ref)
    _assert_same(ours, ref, shape)


@pytest.mark.parametrize("shape", [(4, C), (4, C, 5, 3)])
def test_layernorm_at_init_is_plain_layer_norm(shape: tuple[int, ...]) -> None:
    x = _input(*shape)
    assert_close(LayerNorm(C)(x), F.layer_norm(x, x.shape[1:]))


@pytest.mark.parametrize("shape", [(4, C), (4, C, 5, 3)])
def test_layernorm_equals_groupnorm_with_one_group(shape: tuple[int, ...]) -> None:
    ours, ref = LayerNorm(C), nn.GroupNorm(1, C)
    randomize_affine(ours, ref)
    _assert_same(ours, ref, shape)
    x = _input(*shape)
    channel = (1, C) + (1,) * (len(shape) - 2)
    expected = F.layer_norm(x, x.shape[1:]) * ours.weight.view(channel) + ours.bias.view(channel)
    assert_close(ours(x), expected)


def test_instancenorm_equals_torch() -> None:
    ours, ref = InstanceNorm(C), nn.InstanceNorm2d(C, affine=True)
    randomize_affine(ours, ref)
    _assert_same(ours, ref, (4, C, 5, 3))
    assert not ours.track_running_stats
    assert set(ours.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("shape", [(4, C), (C, 5, 3)])
def test_instancenorm_needs_nchw(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"instancenorm needs N×C×H×W input .*got shape"):
        InstanceNorm(C)(torch.randn(shape))


def test_identity() -> None:
    x = _input(4, C, 5, 3)
    assert Identity(C)(x) is x
    assert Identity(C).state_dict() == {}


ALL = [BatchNorm, GroupNorm, LayerNorm, InstanceNorm, Identity]


@pytest.mark.parametrize("cls", ALL)
def test_extra_kwargs_are_accepted(cls: type[nn.Module]) -> None:
    layer = cls(C, device="cpu", dtype=torch.float64, eps=1e-3, unknown_option=True)
    x = _input(4, C, 5, 3).double()
    assert layer(x).dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in layer.parameters())


@pytest.mark.parametrize("cls", [BatchNorm, GroupNorm, LayerNorm, InstanceNorm])
def test_eps_is_honoured(cls: type[nn.Module]) -> None:
    layer = cls(C, eps=1e-3)
    assert layer.eps == 1e-3
    # Against a spread of about 1e-2 (variance 1e-4), eps=1e-3 visibly damps the output.
    x = _input(4, C, 5, 3) * 1e-2
    assert not torch.allclose(layer(x), cls(C)(x))


@pytest.mark.parametrize("cls", ALL)
def test_state_dict_round_trip(cls: type[nn.Module]) -> None:
    layer = cls(C)
    for p in layer.parameters():
        nn.init.normal_(p)
    layer(_input(4, C, 5, 3))  # moves batchnorm's running stats away from their init
    clone = cls(C)
    clone.load_state_dict(copy.deepcopy(layer.state_dict()))
    assert_close(clone.state_dict(), layer.state_dict())
    layer.eval()
    clone.eval()
    x = _input(4, C, 5, 3, seed=7)
    assert_close(clone(x), layer(x))


def test_registration_imports_no_torch() -> None:
    code = "import sys, harness_plugins.norms; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_norms() -> None:
    norms: list[Norm] = []
    harness_register_norms(norms.append)
    by_name = {n.name: n for n in norms}
    assert [n.name for n in norms] == ["batchnorm", "groupnorm", "layernorm", "instancenorm", "none"]
    assert by_name["instancenorm"].dims == {"2d"}
    for norm in norms:
        assert norm.summary and norm.citation
        layer = norm.layer()(C)  # the string targets resolve and the declared defaults fit
        x = _input(4, C, 5, 3)
        assert layer(x).shape == x.shape
