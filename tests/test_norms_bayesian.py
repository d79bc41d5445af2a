"""The norms of "Stochastic Normalizations as Bayesian Learning" against their specification.

Expected values are written out with plain torch ops (or sampled), never computed by the code
under test; protocols run on real small models, loaders and optimizers.
"""

from __future__ import annotations

import copy
import csv
import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.testing import assert_close
from torch.utils.data import TensorDataset

from harness import Norm, Splits, TaskConfig
from harness.engine import TaskModel
from harness.protocol import TrialContext
from harness_plugins.norms import harness_register_norms as register_baselines
from harness_plugins.norms.baselines import BatchNorm
from harness_plugins.norms.bayesian import harness_register_norms
from harness_plugins.norms.bayesian.layers import AnalyticNorm, BayesianScale, BNNoise, WeightNorm
from harness_plugins.norms.bayesian.moments import (
    Moments,
    UnsupportedOpError,
    clark_max_moments,
    dataset_moments,
    leaky_relu_moments,
    max_pool_moments,
    relu_moments,
)
from harness_plugins.norms.bayesian.protocols import MonteCarlo, Projection
from harness_plugins.tasks.toy import ToyConfig
from harness_plugins.tasks.toy.task import ToyTask

from conftest import run_cli

FAMILY = ("weightnorm", "analytic_norm", "bn_noise", "bayesian_scale", "normbatch_bn")


def _registered() -> dict[str, Norm]:
    found: dict[str, Norm] = {}
    harness_register_norms(lambda n: found.setdefault(n.name, n))
    register_baselines(lambda n: found.setdefault(n.name, n))
    return found


NORMS = _registered()
LAYERS = {WeightNorm: "weightnorm", AnalyticNorm: "analytic_norm", BNNoise: "bn_noise", BayesianScale: "bayesian_scale"}


def _layer(name: str, **values: Any) -> Callable[..., nn.Module]:
    """The ``norm_layer`` of a registered norm with these config values (its defaults otherwise)."""
    return NORMS[name].layer(NORMS[name].config(**values))


def _protocol(name: str, **values: Any) -> Any:
    return NORMS[name].make_protocol(NORMS[name].config(**values))


def _make(cls: type[nn.Module], num_features: int, **values: Any) -> nn.Module:
    """``cls`` with these keyword values and its registered config's layer defaults for the others."""
    return cls(num_features, **{**NORMS[LAYERS[cls]].config().layer_kwargs(), **values})


def _ctx(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None = None, seed: int = 0) -> TrialContext:
    targets = torch.zeros(len(inputs), dtype=torch.long) if targets is None else targets
    data = TensorDataset(inputs, targets)
    return TrialContext(net=net, splits=Splits(train=data, test=data), config=TaskConfig(), seed=seed,
                        provides=frozenset(), generator=torch.Generator().manual_seed(seed))


def _inputs(*shape: int, seed: int = 0) -> torch.Tensor:
    """Inputs with a non-zero mean and non-unit scale per channel."""
    g = torch.Generator().manual_seed(seed)
    channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    return torch.randn(shape, generator=g) * (torch.rand(channel, generator=g) * 2 + 0.5) + torch.randn(
        channel, generator=g)


def _randomize(*params: torch.Tensor, seed: int = 1, positive: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.rand(p.shape, generator=g) + 0.5 if positive else torch.randn(p.shape, generator=g))


def _digits() -> tuple[ToyTask, ToyConfig]:
    config = ToyConfig(dataset="digits", channels=4, batch_size=32)
    return ToyTask(config, Path("/nonexistent"), 0), config


# -- registration --------------------------------------------------------------------------------


def test_registered_norms_and_batchnorm_projection() -> None:
    for name in FAMILY:
        norm = NORMS[name]
        assert norm.summary and "Shekhovtsov" in norm.citation and norm.dims == {"1d", "2d"}
    assert NORMS["bayesian_scale"].config().mc_samples == [10, 30]
    assert NORMS["normbatch_bn"].config().extra == 992
    assert NORMS["batchnorm"].config().projection is False
    assert _protocol("batchnorm") is None
    assert isinstance(_protocol("batchnorm", projection=True), Projection)
    only = {name: NORMS[name].config.protocol_only for name in (*FAMILY, "batchnorm")}
    assert only == {"weightnorm": {"projection", "init_batch"}, "analytic_norm": {"projection"},
                    "bn_noise": {"projection", "init_batch"},
                    "bayesian_scale": {"projection", "init_batch", "kl_factor", "mc_samples"},
                    "normbatch_bn": {"extra"}, "batchnorm": {"projection"}}


@pytest.mark.parametrize(("name", "params"), [
    ("weightnorm", {}), ("analytic_norm", {}), ("bn_noise", {}), ("bn_noise", {"base": "analytic_norm"}),
    ("bayesian_scale", {}), ("bayesian_scale", {"base": "batchnorm", "per": "layer"}), ("normbatch_bn", {}),
])
@pytest.mark.parametrize("shape", [(8, 6), (4, 6, 5, 3)])
def test_layers_on_their_own(name: str, params: dict, shape: tuple[int, ...]) -> None:
    """Shape, gradients to every parameter, state round trip and seeded determinism."""
    make = _layer(name, **params)
    torch.manual_seed(0)
    layer = make(6)
    x = _inputs(*shape)
    torch.manual_seed(0)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    (y * _inputs(*shape, seed=5)).sum().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    torch.manual_seed(0)
    again = make(6)
    torch.manual_seed(0)
    assert_close(again(x), y)
    fresh = make(6)
    fresh.load_state_dict(layer.state_dict())
    layer.eval()
    fresh.eval()
    assert_close(fresh(x), layer(x))


# -- weight normalization ------------------------------------------------------------------------


@pytest.mark.parametrize("dims", ["1d", "2d"])
def test_weightnorm_output_by_hand(dims: str) -> None:
    feed = nn.Conv2d(2, 3, 3, padding=1) if dims == "2d" else nn.Linear(2, 3)
    net = nn.Sequential(feed, _make(WeightNorm, 3))
    shape = (20, 2, 5, 5) if dims == "2d" else (20, 2)
    _protocol("weightnorm").setup(_ctx(net, _inputs(*shape)))
    _randomize(net[1].weight, net[1].bias)
    w = feed.parametrizations.weight.original.detach()
    rows = w.flatten(1)
    unit = (rows / rows.square().sum(1, keepdim=True).sqrt()).view_as(w)
    x = _inputs(*shape, seed=3)
    s, b = net[1].weight.detach(), net[1].bias.detach()
    if dims == "2d":
        expected = F.conv2d(x, unit, padding=1) * s.view(1, 3, 1, 1) + b.view(1, 3, 1, 1)
    else:
        expected = x @ unit.t() * s + b
    assert_close(net(x), expected)
    assert not feed.bias.requires_grad and (feed.bias == 0).all()


@pytest.mark.parametrize("make", [
    lambda c: _make(WeightNorm, c), lambda c: _make(BNNoise, c), lambda c: _make(BayesianScale, c, base="weightnorm"),
])
def test_weightnorm_data_init_normalizes_the_init_batch(make) -> None:  # noqa: ANN001
    net = nn.Sequential(nn.Conv2d(2, 4, 3), make(4), nn.ReLU(), nn.Conv2d(4, 3, 3), make(3))
    data = _inputs(64, 2, 7, 7)
    protocol = _protocol("weightnorm", init_batch=64)  # the whole data set is the init batch
    protocol.setup(_ctx(net, data))
    outputs = []
    for norm in (net[1], net[4]):
        norm.register_forward_hook(lambda m, a, out: outputs.append(out))
    net.eval()
    with torch.no_grad():
        net(data)
    for out in outputs:
        assert_close(out.mean((0, 2, 3)), torch.zeros(out.shape[1]), atol=1e-4, rtol=0)
        assert_close(out.var((0, 2, 3), unbiased=False), torch.ones(out.shape[1]), atol=1e-3, rtol=0)


# -- projection ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["batchnorm", "weightnorm", "analytic_norm"])
def test_projection_after_a_real_optimizer_step(name: str) -> None:
    norm = NORMS[name]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), norm.layer()(4), nn.ReLU(), nn.Conv2d(4, 3, 3), norm.layer()(3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(27, 5))
    x, y = _inputs(16, 2, 7, 7), torch.randint(0, 5, (16,))
    protocol = norm.make_protocol(norm.config(projection=True))
    ctx = _ctx(net, x, y)
    protocol.setup(ctx)
    feeding = [net[0], net[3]]
    weights = [m.parametrizations.weight.original if name == "weightnorm" else m.weight for m in feeding]
    no_decay = {id(p) for p in protocol.no_weight_decay(net)}
    assert no_decay == {id(w) for w in weights}, "exactly the projected weights go without weight decay"
    groups = [{"params": [p for p in net.parameters() if p.requires_grad and id(p) not in no_decay]},
              {"params": [p for p in net.parameters() if id(p) in no_decay], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=0.5, momentum=0.9, weight_decay=0.1)
    net.train()
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(protocol.train_forward(net, x), y).backward()
        optimizer.step()
        protocol.after_optimizer_step(net)
    for w in weights:
        assert_close(w.detach().flatten(1).norm(dim=1), torch.ones(w.shape[0]))
    assert not torch.allclose(net[7].weight.detach().norm(dim=1), torch.ones(5))


# -- analytic normalization ----------------------------------------------------------------------


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (1.5, 0.7), (-2.0, 1.3), (0.3, 2.5)])
def test_relu_and_leaky_relu_moments_match_sampling(mean: float, std: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=g, dtype=torch.float64) * std + mean
    m, v = torch.tensor([mean], dtype=torch.float64), torch.tensor([std**2], dtype=torch.float64)
    sampled = x.clamp_min(0)
    got = relu_moments(m, v)
    assert_close(got.mean, sampled.mean().view(1), atol=0.01 * std, rtol=0)
    assert_close(got.var, sampled.var().view(1), atol=0.01 * std**2, rtol=0.01)
    for slope in (0.01, 0.2):
        sampled = torch.where(x > 0, x, slope * x)
        got = leaky_relu_moments(m, v, slope)
        assert_close(got.mean, sampled.mean().view(1), atol=0.01 * std, rtol=0)
        assert_close(got.var, sampled.var().view(1), atol=0.01 * std**2, rtol=0.01)


def test_analytic_statistics_match_monte_carlo() -> None:
    """conv → analytic norm → ReLU → conv → analytic norm on Gaussian inputs, where the
    independence assumptions hold (depthwise first conv, 1×1 second conv, no padding): the
    propagated statistics bound in each norm are the sampled moments of its input."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 3, groups=3), _make(AnalyticNorm, 3), nn.ReLU(), nn.Conv2d(3, 4, 1),
                        _make(AnalyticNorm, 4))
    _randomize(net[1].weight, positive=True)
    _randomize(net[1].bias, seed=2)
    data = _inputs(6000, 3, 5, 5)
    _protocol("analytic_norm").setup(_ctx(net, data))
    seen = {}
    for i in (0, 1, 3):
        net[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
    net.eval()
    with torch.no_grad():
        net(data)
    for conv, norm in ((0, net[1]), (3, net[4])):
        out = seen[conv]
        sampled_mean, sampled_var = out.mean((0, 2, 3)), out.var((0, 2, 3))
        scale = sampled_var.sqrt()
        assert_close(norm.stats.mean / scale, sampled_mean / scale, atol=0.03, rtol=0)
        assert_close(norm.stats.var, sampled_var, rtol=0.05, atol=0)
    normed = seen[1]  # analytically normalized, then the affine: mean b, variance s²
    assert_close(normed.mean((0, 2, 3)), net[1].bias.detach(), atol=0.05 * net[1].weight.detach().max().item(),
                 rtol=0)
    assert_close(normed.var((0, 2, 3)), net[1].weight.detach().square(), rtol=0.05, atol=0)


def _clark_by_hand(mu1: float, var1: float, mu2: float, var2: float) -> tuple[float, float]:
    """METHODS.md's rule for max(X1, X2), written out with the math module."""
    theta = math.sqrt(var1 + var2)
    alpha = (mu1 - mu2) / theta
    cdf = 0.5 * (1 + math.erf(alpha / math.sqrt(2)))
    pdf = math.exp(-alpha * alpha / 2) / math.sqrt(2 * math.pi)
    first = mu1 * cdf + mu2 * (1 - cdf) + theta * pdf
    second = (mu1**2 + var1) * cdf + (mu2**2 + var2) * (1 - cdf) + (mu1 + mu2) * theta * pdf
    return first, second - first**2


@pytest.mark.parametrize(("mu1", "var1", "mu2", "var2"), [(0.0, 1.0, 0.0, 1.0), (1.2, 0.5, -0.3, 2.0),
                                                          (-1.0, 0.1, 2.0, 0.3), (0.5, 4.0, 0.4, 0.01)])
def test_clark_max_of_two_gaussians_is_the_formula_and_matches_sampling(mu1: float, var1: float, mu2: float,
                                                                        var2: float) -> None:
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    got = clark_max_moments(Moments(t(mu1), t(var1)), Moments(t(mu2), t(var2)))
    mean, var = _clark_by_hand(mu1, var1, mu2, var2)
    assert_close(got.mean, t(mean))
    assert_close(got.var, t(var))
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(400_000, generator=g, dtype=torch.float64) * math.sqrt(var1) + mu1
    x2 = torch.randn(400_000, generator=g, dtype=torch.float64) * math.sqrt(var2) + mu2
    sampled = torch.maximum(x1, x2)  # exact for two: Clark's first two moments are the true ones
    scale = math.sqrt(var1 + var2)
    assert_close(got.mean, sampled.mean().view(1), atol=0.01 * scale, rtol=0)
    assert_close(got.var, sampled.var().view(1), atol=0.01 * scale**2, rtol=0.02)


@pytest.mark.parametrize("window", [2, 4, 9])
def test_max_pool_moments_pair_the_running_maximum_with_each_next_input(window: int) -> None:
    """By hand: the running maximum, taken as Gaussian, paired with the next input; then against
    the sampled maximum of ``window`` independent Gaussians (Clark's pairing is an approximation
    beyond two: loose tolerances)."""
    mean, var = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.0, 0.25, 3.0])
    got = max_pool_moments(Moments(mean, var), window)
    for c in range(3):
        m, v = mean[c].item(), var[c].item()
        for _ in range(window - 1):
            m, v = _clark_by_hand(m, v, mean[c].item(), var[c].item())
        assert got.mean[c].item() == pytest.approx(m, rel=1e-5, abs=1e-6)
        assert got.var[c].item() == pytest.approx(v, rel=1e-4, abs=1e-6)
    g = torch.Generator().manual_seed(2)
    samples = torch.randn(200_000, window, 3, generator=g) * var.sqrt() + mean
    sampled = samples.max(dim=1).values
    std = var.sqrt()
    assert_close(got.mean / std, sampled.mean(0) / std, atol=0.05, rtol=0)
    assert_close(got.var / var, sampled.var(0) / var, atol=0.15, rtol=0)


def test_analytic_propagation_passes_max_pool_modules_and_functions() -> None:
    class Functional(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(x, kernel_size=(2, 3), stride=1)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), _make(AnalyticNorm, 3), nn.ReLU(inplace=True),
                        nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(3, 3, 1), _make(AnalyticNorm, 3), Functional(),
                        nn.Conv2d(3, 4, 1), _make(AnalyticNorm, 4))
    _protocol("analytic_norm").setup(_ctx(net, _inputs(8, 2, 8, 8)))
    after_relu = relu_moments(torch.zeros(3), torch.ones(3))  # the first norm standardizes, affine at init
    pooled = max_pool_moments(after_relu, 9)
    w = net[4].weight.detach()
    expected = Moments(w.sum((2, 3)) @ pooled.mean + net[4].bias.detach(), w.square().sum((2, 3)) @ pooled.var)
    assert_close(net[5].stats.mean.detach(), expected.mean)
    assert_close(net[5].stats.var.detach(), expected.var)
    pooled = max_pool_moments(Moments(torch.zeros(3), torch.ones(3)), 6)
    w = net[7].weight.detach()
    assert_close(net[8].stats.var.detach(), w.square().sum((2, 3)) @ pooled.var)
    net.train()
    net(_inputs(4, 2, 8, 8)).sum().backward()  # gradients flow through the max-pool rule too
    assert net[0].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()


def test_analytic_propagation_passes_spatial_slicing_and_channel_padding() -> None:
    """The option-A shortcut of CIFAR ResNets: x[:, :, ::2, ::2] keeps the moments, the channels
    padded on are constants (mean 0, variance 0); indexing that mixes channels is refused."""

    class Shortcut(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 1, 2))

    class Picks(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :2]

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), _make(AnalyticNorm, 3), Shortcut(), nn.Conv2d(6, 2, 1),
                        _make(AnalyticNorm, 2))
    _protocol("analytic_norm").setup(_ctx(net, _inputs(8, 2, 8, 8)))
    w = net[3].weight.detach()
    padded = Moments(torch.tensor([0.0, 0, 0, 0, 0, 0]), torch.tensor([0.0, 1, 1, 1, 0, 0]))
    assert_close(net[4].stats.mean.detach(), w.sum((2, 3)) @ padded.mean + net[3].bias.detach())
    assert_close(net[4].stats.var.detach(), w.square().sum((2, 3)) @ padded.var)
    bad = nn.Sequential(nn.Conv2d(2, 3, 3), _make(AnalyticNorm, 3), Picks())
    with pytest.raises(UnsupportedOpError, match="keeps channels apart"):
        _protocol("analytic_norm").setup(_ctx(bad, _inputs(8, 2, 6, 6)))


def test_dataset_moments_are_float32_and_stable() -> None:
    """Chan's combination of per-batch moments in float32: a large offset costs no precision."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1000, 2, 3, 3, generator=g, dtype=torch.float64) * torch.tensor([0.01, 2.0]).view(1, 2, 1, 1) \
        + torch.tensor([1000.0, -3.0], dtype=torch.float64).view(1, 2, 1, 1)
    got = dataset_moments(TensorDataset(x.float(), torch.zeros(1000)), batch_size=64)
    assert got.mean.dtype == torch.float32 and got.var.dtype == torch.float32
    exact = x.float().double()
    assert_close(got.mean.double(), exact.mean((0, 2, 3)), rtol=1e-6, atol=0)
    assert_close(got.var.double(), exact.var((0, 2, 3), correction=0), rtol=1e-3, atol=0)


def test_analytic_gradients_flow_through_the_statistics() -> None:
    """The normalized output is invariant to the scale of each filter feeding it only if
    gradients flow through μ̂ and σ̂: then every filter's gradient is orthogonal to it. Eval
    computes the statistics once, without gradients."""
    task, _ = _digits()
    torch.manual_seed(0)
    net = task.model(NORMS["analytic_norm"].layer())
    splits = task.datasets()
    x, y = splits.train.tensors[0][:32], splits.train.tensors[1][:32]
    protocol = _protocol("analytic_norm")
    protocol.setup(_ctx(net, splits.train.tensors[0], splits.train.tensors[1]))
    net.train()
    F.cross_entropy(protocol.train_forward(net, x), y).backward()
    for conv in (net[0], net[3], net[6]):
        w, g = conv.weight.detach().flatten(1), conv.weight.grad.flatten(1)
        cosine = (w * g).sum(1) / (w.norm(dim=1) * g.norm(dim=1))
        assert cosine.abs().max() < 1e-3  # not exactly 0: eps in σ̂ = √(v + eps)
    assert net[1].stats.mean.requires_grad
    net.eval()
    net(x)
    stats = net[4].stats
    net(x)
    assert net[4].stats is stats and not stats.mean.requires_grad


def test_analytic_traces_residuals_and_names_unsupported_ops() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.norm = _make(AnalyticNorm, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + F.leaky_relu(self.norm(self.conv(x)), 0.1)

    net = nn.Sequential(nn.Conv2d(2, 3, 3), _make(AnalyticNorm, 3), nn.ReLU(), Block(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(12, 4), _make(AnalyticNorm, 4))
    _protocol("analytic_norm").setup(_ctx(net, _inputs(8, 2, 6, 6)))
    for norm in (net[1], net[3].norm, net[7]):
        assert torch.isfinite(norm.stats.var).all() and (norm.stats.var > 0).all()
    bad = nn.Sequential(nn.Conv2d(2, 3, 3), _make(AnalyticNorm, 3), nn.Sigmoid())
    with pytest.raises(UnsupportedOpError, match="module '2' of type Sigmoid") as refused:
        _protocol("analytic_norm").setup(_ctx(bad, _inputs(8, 2, 6, 6)))
    assert "Sigmoid has no moment rule" in str(refused.value) and "supported:" in str(refused.value)


# -- BN-like noise -------------------------------------------------------------------------------


def test_bn_noise_train_and_eval() -> None:
    """Eval: x̂·s + b. Train: ((x̂ + V)·U)·s + b with one V, U per sample and channel, shared over
    positions: (y − b)/s is affine in x̂ across positions, with slope U and intercept V·U."""
    layer = _make(BNNoise, 4, base="weightnorm", sigma_u=0.1, sigma_v=0.2)  # on its own, x̂ = x
    _randomize(layer.weight, positive=True)
    _randomize(layer.bias, seed=2)
    s, b = layer.weight.detach().view(1, 4, 1, 1), layer.bias.detach().view(1, 4, 1, 1)
    x = _inputs(3000, 4, 3, 3)
    layer.eval()
    assert_close(layer(x), x * s + b)
    layer.train()
    z = ((layer(x) - b) / s).flatten(2).double()
    xs = x.flatten(2).double()
    xc = xs - xs.mean(2, keepdim=True)  # least squares per sample and channel over the 9 positions
    u = (xc * z).sum(2) / xc.square().sum(2)
    v = z.mean(2) / u - xs.mean(2)
    assert_close(z, (xs + v.unsqueeze(2)) * u.unsqueeze(2), atol=1e-4, rtol=1e-4)
    assert abs(u.mean().item() - 1) < 0.01 and abs(u.std().item() - 0.1) < 0.01
    assert abs(v.mean().item()) < 0.02 and abs(v.std().item() - 0.2) < 0.02


# -- Bayesian scale ------------------------------------------------------------------------------


def test_sigma_parametrization_and_kl() -> None:
    layer = _make(BayesianScale, 5, prior_sigma=10.0)
    u = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0])
    with torch.no_grad():
        layer.u.copy_(u)
        layer.weight.copy_(torch.tensor([1.0, 0.5, 2.0, -1.0, 1.3]))
    expected_sigma = torch.tensor([math.exp(-2.0), math.exp(-0.5), 1.0, 1.5, 4.0])
    assert_close(layer.sigma, expected_sigma)
    s, sigma = layer.weight.detach(), expected_sigma
    by_formula = (torch.log(10.0 / sigma) + (sigma**2 + (s - 1) ** 2) / (2 * 10.0**2) - 0.5).sum()
    assert_close(layer.kl(), by_formula)
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(s, sigma),
                                              torch.distributions.Normal(torch.ones(5), 10.0 * torch.ones(5)))
    assert_close(layer.kl(), exact.sum())
    assert _make(BayesianScale, 5, per="layer").u.shape == (1,)
    assert_close(_make(BayesianScale, 5, init_sigma=0.3).sigma, torch.full((5,), 0.3))
    assert_close(_make(BayesianScale, 5, init_sigma=2.5).sigma, torch.full((5,), 2.5))


def test_bayesian_scale_draws_one_scale_per_sample_and_channel() -> None:
    layer = _make(BayesianScale, 3, base="weightnorm", init_sigma=0.3)  # on its own, x̂ = x
    _randomize(layer.weight, positive=True)
    _randomize(layer.bias, seed=2)
    s, b = layer.weight.detach(), layer.bias.detach().view(1, 3, 1, 1)
    x = _inputs(4000, 3, 2, 2)
    layer.eval()
    assert_close(layer(x), (x + b) * s.view(1, 3, 1, 1))
    layer.train()
    scale = (layer(x) / (x + b)).flatten(2)
    assert_close(scale, scale[..., :1].expand_as(scale), rtol=1e-4, atol=1e-4)
    assert_close(scale[..., 0].mean(0), s, atol=0.03, rtol=0)
    assert_close(scale[..., 0].std(0), torch.full((3,), 0.3), atol=0.02, rtol=0)


def test_kl_term_enters_the_training_loss() -> None:
    task, config = _digits()
    splits = task.datasets()
    norm = NORMS["bayesian_scale"]
    params = {"base": "weightnorm", "kl_factor": 0.5}
    torch.manual_seed(0)
    net = task.model(norm.layer(norm.config(**params)))
    protocol = norm.make_protocol(norm.config(**params))
    ctx = _ctx(net, splits.train.tensors[0], splits.train.tensors[1])
    protocol.setup(ctx)
    model = TaskModel(net, task, protocol, ctx)
    model.train()
    losses = model(splits.train.tensors[0][:16], splits.train.tensors[1][:16], mode="loss")
    kl = 0.0
    for layer in (net[1], net[4], net[7]):
        sigma = layer.u.detach().exp()  # init_sigma < 1, so u < 0
        s = layer.weight.detach()
        kl += (torch.log(10.0 / sigma) + (sigma**2 + (s - 1) ** 2) / 200 - 0.5).sum()
    assert_close(losses["loss_norm"], 0.5 * kl / len(splits.train))
    losses["loss_norm"].backward()
    assert (net[1].u.grad < 0).all()  # the KL pushes σ_S up


def test_mc_evaluation_averages_the_softmax_of_noisy_passes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), _make(BayesianScale, 6, base="batchnorm", init_sigma=0.5), nn.ReLU(),
                        nn.Linear(6, 3))
    x = _inputs(10, 4)
    net.train()
    net(x)  # some running statistics
    evaluation = MonteCarlo(7)
    assert evaluation.name == "mc7"
    evaluation.prepare(net, _ctx(net, x))
    torch.manual_seed(3)
    got = evaluation.predict(net, x)
    torch.manual_seed(3)
    passes = [net(x).softmax(1) for _ in range(7)]
    assert not torch.allclose(passes[0], passes[1])
    assert_close(got, torch.stack(passes).mean(0).log())
    evaluation.finish(net)
    assert_close(net(x), net(x))  # back to S = s


# -- normalization batch -------------------------------------------------------------------------


def test_normbatch_statistics_cover_the_concatenated_batch() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), BatchNorm(4, momentum=0.3, eps=1e-5))
    reference = copy.deepcopy(net)
    inputs = _inputs(40, 3)
    targets = torch.arange(40)
    protocol = _protocol("normbatch_bn", extra=12)
    ctx = _ctx(net, inputs, targets)
    protocol.setup(ctx)
    loader = protocol.train_loader(ctx, 8)
    assert len(loader) == 5
    batch, labels, extra = next(iter(loader))
    assert batch.shape == (8, 3) and labels.shape == (8,) and extra.shape == (12, 3)
    assert_close(batch, inputs[labels])
    extra_ids = {int(i) for i in (extra.unsqueeze(1) == inputs).all(2).nonzero()[:, 1]}
    assert len(extra_ids) == 12 and not extra_ids & set(labels.tolist())
    net.train()
    out = protocol.train_forward(net, batch, extra)
    features = reference[0](torch.cat([batch, extra])).detach()
    mean, var = features.mean(0), features.var(0, unbiased=False)
    assert_close(out, ((features - mean) / (var + 1e-5).sqrt())[:8])
    bn = net[1]
    assert_close(bn.running_mean, 0.3 * mean)
    assert_close(bn.running_var, 0.7 + 0.3 * features.var(0, unbiased=True))
    assert bn.num_batches_tracked.item() == 1


# -- end to end ----------------------------------------------------------------------------------


def test_cli_run_reports_mc_metrics(tmp_path: Path) -> None:
    suite = tmp_path / "bayes_tiny.toml"
    suite.write_text(textwrap.dedent("""
        [suite]
        name = "bayes_tiny"
        version = 1
        seeds = [0]
        metric = "accuracy"

        [task]
        use = "toy"
        dataset = "digits"
        epochs = 1
        batch_size = 64
        channels = 4

        [[norm]]
        use = "bayesian_scale"
        base = "analytic_norm"
        projection = true
        mc_samples = [3, 5]
    """))
    result = run_cli("run", str(suite), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    with open(tmp_path / "leaderboard" / "bayes_tiny.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["norm"] == "bayesian_scale" and row["state"] == "complete"
    for metric in ("accuracy", "nll", "mc3/accuracy", "mc3/nll", "mc5/accuracy", "mc5/nll"):
        assert 0 <= float(row[f"metric.{metric}"]) < math.inf
    md = (tmp_path / "leaderboard" / "bayes_tiny.md").read_text()
    assert "mc5/nll" in md


def test_protocol_factories_compose() -> None:
    """Projection goes last in a chain so that it sees the weight-normed layers' raw weights."""
    protocol = _protocol("bayesian_scale", base="weightnorm", projection=True)
    assert isinstance(protocol.parts[-1], Projection)
    assert [e.name for e in _protocol("bayesian_scale", base="batchnorm").evaluations(None)] == [
        "mc10", "mc30"]


def test_normbatch_trains_through_the_engine(tmp_path: Path) -> None:
    """The composed loader runs under mmengine's loop (which reads ``batch_sampler.sampler``)."""
    from harness.engine import TrialRequest, run_trial
    from harness.plugins import load_registry

    registry = load_registry()
    config = ToyConfig(dataset="digits", channels=4, epochs=1, batch_size=128)
    norm = NORMS["normbatch_bn"]
    request = TrialRequest(task=registry.tasks["toy"], config=config, norm=norm, norm_config=norm.config(extra=64),
                           seed=0, work_dir=tmp_path / "trial", data_root=tmp_path)
    result = run_trial(request)
    assert len(result.curves["train_loss"]) == 1 and 0 <= result.metrics["accuracy"] <= 1
