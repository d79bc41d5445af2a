"""The unified family: each norm against its formula written out in plain torch, the feature
condensation rule and its per-epoch latch driven like the engine drives it, the references at
init, the conformance kit, and a digits suite through the real CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

from harness.norm import resolve
from harness.plugins import load_registry
from harness.testing import conformance_tests
from harness_plugins.norms.unified.layers import (
    BNET,
    BatchNormFCT,
    FeatureCondensationNorm,
    InstanceEnhancementBatchNorm,
    RepresentativeBatchNorm,
    UnifiedBatchNorm,
    condensation,
)

from conftest import channel_varied_input, run_cli

NAMES = ("bn_fct", "rbn", "bnet", "unified_bn", "iebn")
C = 5
EPS = 1e-5

REGISTRY = load_registry()
LAYERS = {BatchNormFCT: "bn_fct", RepresentativeBatchNorm: "rbn", BNET: "bnet", UnifiedBatchNorm: "unified_bn",
          InstanceEnhancementBatchNorm: "iebn"}

test_conforms = conformance_tests(*NAMES)
test_conforms_per_iteration = conformance_tests("bn_fct", "unified_bn", params={"latch": "iteration"})


def _make(cls: type[nn.Module], num_features: int, **values: object) -> nn.Module:
    """``cls`` with these keyword values and its registered config's defaults for the others (values
    the config would refuse, such as fct = 1.5 for "never", included)."""
    defaults = REGISTRY.norms[LAYERS[cls]].config().layer_kwargs()
    return cls(num_features, **{**defaults, **values})


def _randomize(layer: nn.Module, seed: int = 1) -> None:
    """Every parameter away from its init, so no term of a formula hides behind a 0 or a 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7 + 0.3)


def _c(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return p.detach().reshape(1, -1, *([1] * (x.dim() - 2)))


def _gap(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True) if x.dim() == 4 else x


def _batch_normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x − μ_B)/√(σ²_B + ε) with biased batch variance, and μ_B and the unbiased variance."""
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    n = x.numel() / x.shape[1]
    return (x - mean) / torch.sqrt(var + EPS), mean.flatten(), var.flatten() * n / (n - 1)


def _running_normalize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + EPS)


def _depthwise_by_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Σ_taps w[c, i, j] · x[n, c, h + i − r, w + j − r] with zero padding, plus bias[c]."""
    k = weight.shape[-1]
    r = k // 2
    padded = F.pad(x, (r, r, r, r))
    h, w = x.shape[2:]
    out = torch.zeros_like(x) + bias.detach().reshape(1, -1, 1, 1)
    for i in range(k):
        for j in range(k):
            out = out + padded[:, :, i:i + h, j:j + w] * weight.detach()[:, 0, i, j].reshape(1, -1, 1, 1)
    return out


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# -- registration ------------------------------------------------------------------------------
def test_every_norm_is_registered_with_its_facts() -> None:
    norms = REGISTRY.norms
    assert all(norms[n].summary and norms[n].citation and norms[n].reference for n in NAMES)
    assert norms["bnet"].dims == norms["unified_bn"].dims == {"2d"}
    assert norms["rbn"].dims == norms["iebn"].dims == norms["bn_fct"].dims == {"1d", "2d"}
    for name in ("bn_fct", "unified_bn"):
        config = norms[name].config
        defaults = config()
        assert defaults.fct == 0.15 and "fct" in config.search_space()
        assert defaults.beta == 0.1 and defaults.momentum == 0.1 and defaults.warmup_epochs == 1
        assert config.search_space()["latch"] == ("epoch", "iteration") and defaults.latch == "epoch"
        assert config.protocol_only == frozenset(), "the rule's parameters are all the layer's"
        assert norms[name].make_protocol() is not None
    assert norms["unified_bn"].config().kernel_size == norms["bnet"].config().kernel_size == 3


# -- feature condensation ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 3, 4, 4), (9, 6)])
def test_condensation_is_the_mean_off_diagonal_cosine_similarity(shape: tuple[int, ...]) -> None:
    x = channel_varied_input(*shape, seed=3)
    flat = x.reshape(x.shape[0], -1)
    sims = F.cosine_similarity(flat[:, None, :], flat[None, :, :], dim=-1)
    n = x.shape[0]
    expected = (sims.sum() - sims.diagonal().sum()) / (n * (n - 1))
    assert_close(condensation(x), expected.float())


def test_condensation_of_identical_samples_is_one_and_a_zero_sample_counts_as_dissimilar() -> None:
    sample = channel_varied_input(1, 4, 3, 3, seed=4)
    assert_close(condensation(sample.expand(6, -1, -1, -1)), torch.tensor(1.0))
    with_zero = torch.cat([sample, sample, torch.zeros_like(sample)])
    assert_close(condensation(with_zero), torch.tensor(2 / 6))  # one similar pair of three, both orders
    with pytest.raises(ValueError, match="at least 2 samples"):
        condensation(sample)


def test_the_running_threshold_starts_at_the_first_batch_and_moves_by_beta() -> None:
    layer = _make(BatchNormFCT, 4, beta=0.25).train()
    a, b = channel_varied_input(8, 4, 3, 3, seed=5), channel_varied_input(8, 4, 3, 3, seed=6)
    layer(a)
    assert_close(layer.tau, condensation(a))
    layer(b)
    assert_close(layer.tau, 0.75 * condensation(a) + 0.25 * condensation(b))
    layer(b[:1])  # one sample has no pairs: τ̄ stays
    assert_close(layer.tau, 0.75 * condensation(a) + 0.25 * condensation(b))
    layer.eval()(a)
    assert int(layer.tau_steps) == 2


# -- the latch, driven like the engine ---------------------------------------------------------
def _train_epochs(fct: float, epochs: int) -> tuple[BatchNormFCT, list[dict[str, object]]]:
    """A small CNN with bn_fct on random images, trained a few epochs with the registered
    protocol called at each epoch start; what the norm layer did in each epoch."""
    torch.manual_seed(0)
    norm = REGISTRY.norms["bn_fct"]
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), _make(BatchNormFCT, 4, fct=fct), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    layer = net[1]
    protocol = norm.make_protocol()
    data = TensorDataset(channel_varied_input(48, 2, 6, 6, seed=7), torch.arange(48) % 3)
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    seen = []
    for epoch in range(epochs):
        protocol.before_train_epoch(net, epoch)
        start = (layer.running_mean.clone(), layer.running_var.clone())
        net.train()
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        stats_moved = not (torch.equal(start[0], layer.running_mean) and torch.equal(start[1], layer.running_var))
        seen.append({"batch_stats": layer.batch_stats, "stats_moved": stats_moved, "tau": float(layer.tau)})
    return layer, seen


def test_epoch_zero_uses_batch_statistics_then_a_layer_below_fct_freezes_its_running_statistics() -> None:
    layer, seen = _train_epochs(fct=1.5, epochs=3)  # a cosine similarity never exceeds 1
    assert seen[0] == {"batch_stats": True, "stats_moved": True, "tau": seen[0]["tau"]}
    assert [s["batch_stats"] for s in seen[1:]] == [False, False]
    assert [s["stats_moved"] for s in seen[1:]] == [False, False]
    assert seen[2]["tau"] != seen[1]["tau"], "τ̄ keeps following the batches"
    # in training mode the frozen layer normalizes with its running statistics, as eval does
    x = channel_varied_input(8, 4, 6, 6, seed=8)
    expected = _running_normalize(x, layer.running_mean, layer.running_var) * _c(layer.weight, x) \
        + _c(layer.bias, x)
    assert_close(layer.train()(x), expected)


def test_a_condensed_layer_keeps_batch_statistics_every_epoch() -> None:
    _, seen = _train_epochs(fct=-1.0, epochs=3)
    assert all(s["batch_stats"] and s["stats_moved"] for s in seen)


def _alike(seed: int) -> torch.Tensor:
    """A batch of near-identical samples: condensation close to 1."""
    return channel_varied_input(1, 3, 4, 4, seed=seed) + 0.01 * channel_varied_input(8, 3, 4, 4, seed=seed + 1)


def _spread(seed: int) -> torch.Tensor:
    """Zero-mean samples: condensation near 0."""
    return torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [BatchNormFCT, UnifiedBatchNorm])
def test_per_iteration_latch_follows_the_threshold_batch_by_batch(cls: type[FeatureCondensationNorm]) -> None:
    layer = _make(cls, 3, fct=0.5, beta=0.5, latch="iteration").train()
    layer.latch_epoch(0)
    layer(_spread(0))
    assert layer.batch_stats, "epoch 0 always uses batch statistics"
    layer.latch_epoch(1)
    moved = []
    for batch in [_spread(1), _alike(10), _alike(20), _alike(30), _spread(2), _spread(3)]:
        before = layer.running_mean.clone()
        layer(batch)
        # after the warm-up the decision is a device tensor (read here, in the test, not by the layer)
        moved.append((bool(layer.batch_stats), float(layer.tau) > 0.5, not torch.equal(before, layer.running_mean)))
    assert [m[0] for m in moved] == [m[1] for m in moved], "the decision is τ̄ > fct after each update"
    assert all(m[0] == m[2] for m in moved), "running statistics move exactly when batch statistics are used"
    assert {m[0] for m in moved} == {True, False}, "this sequence crosses the threshold both ways"


def test_per_epoch_latch_holds_within_the_epoch() -> None:
    layer = _make(BatchNormFCT, 3, fct=0.5, beta=0.5).train()
    layer(_spread(1))
    layer.latch_epoch(1)
    assert not layer.batch_stats
    before = layer.running_mean.clone()
    for seed in (10, 20, 30, 40):
        layer(_alike(seed))
    assert float(layer.tau) > 0.5 and not layer.batch_stats
    assert torch.equal(before, layer.running_mean)
    layer.latch_epoch(2)
    assert layer.batch_stats


def test_warmup_epochs_set_how_long_batch_statistics_are_forced() -> None:
    longer = _make(BatchNormFCT, 3, fct=1.5, warmup_epochs=2).train()
    longer(_spread(1))
    longer.latch_epoch(1)
    assert longer.batch_stats
    longer.latch_epoch(2)
    assert not longer.batch_stats
    assert not _make(BatchNormFCT, 3, fct=1.5, warmup_epochs=0).batch_stats, "no warm-up: the rule from the start"


# -- formulas at random parameter values -------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, C, 4, 5), (10, C)])
def test_rbn_formula(shape: tuple[int, ...]) -> None:
    layer = _make(RepresentativeBatchNorm, C).train()
    _randomize(layer)
    x = channel_varied_input(*shape, seed=11)
    centered = x + _c(layer.center_weight, x) * _gap(x)
    x_hat, mean, var = _batch_normalize(centered)
    gate = torch.sigmoid(_c(layer.scale_weight, x) * _gap(x_hat) + _c(layer.scale_bias, x))
    assert_close(layer(x), _c(layer.weight, x) * gate * x_hat + _c(layer.bias, x))
    assert_close(layer.running_mean, 0.1 * mean)
    assert_close(layer.running_var, 0.9 + 0.1 * var)
    layer.eval()
    x_hat = _running_normalize(centered, layer.running_mean, layer.running_var)
    gate = torch.sigmoid(_c(layer.scale_weight, x) * _gap(x_hat) + _c(layer.scale_bias, x))
    assert_close(layer(x), _c(layer.weight, x) * gate * x_hat + _c(layer.bias, x))


@pytest.mark.parametrize("shape", [(6, C, 4, 5), (10, C)])
def test_iebn_formula(shape: tuple[int, ...]) -> None:
    layer = _make(InstanceEnhancementBatchNorm, C).train()
    _randomize(layer)
    x = channel_varied_input(*shape, seed=12)
    x_hat, _, _ = _batch_normalize(x)
    gate = torch.sigmoid(_c(layer.gate_weight, x) * _gap(x) + _c(layer.gate_bias, x))
    assert_close(layer(x), x_hat * (_c(layer.weight, x) * gate) + _c(layer.bias, x))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_bnet_formula(kernel_size: int) -> None:
    layer = _make(BNET, C, kernel_size=kernel_size).train()
    _randomize(layer)
    x = channel_varied_input(6, C, 5, 4, seed=13)
    x_hat, _, _ = _batch_normalize(x)
    assert_close(layer(x), _depthwise_by_taps(x_hat, layer.weight, layer.bias))


def _unified_expected(layer: UnifiedBatchNorm, x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None,
                      ) -> torch.Tensor:
    centered = x + _c(layer.center_weight, x) * _gap(x)
    x_hat = _batch_normalize(centered)[0] if stats is None else _running_normalize(centered, *stats)
    scaled = x_hat * torch.sigmoid(_c(layer.scale_weight, x) * _gap(x_hat) + _c(layer.scale_bias, x))
    return _depthwise_by_taps(scaled, layer.weight, layer.bias)


def test_unified_bn_formula_with_batch_and_with_running_statistics() -> None:
    layer = _make(UnifiedBatchNorm, C, fct=1.5).train()
    _randomize(layer)
    x = channel_varied_input(6, C, 5, 4, seed=14)
    assert_close(layer(x), _unified_expected(layer, x, None))
    centered = x + _c(layer.center_weight, x) * _gap(x)
    _, mean, var = _batch_normalize(centered)
    assert_close(layer.running_mean, 0.1 * mean, msg="running statistics track the centered input")
    assert_close(layer.running_var, 0.9 + 0.1 * var)
    layer.latch_epoch(1)  # τ̄ ≤ 1 < fct: running statistics from now on, untouched
    stats = (layer.running_mean.clone(), layer.running_var.clone())
    y = channel_varied_input(6, C, 5, 4, seed=15)
    assert_close(layer(y), _unified_expected(layer, y, stats))
    assert torch.equal(layer.running_mean, stats[0]) and torch.equal(layer.running_var, stats[1])
    assert_close(layer.eval()(y), _unified_expected(layer, y, stats))


def test_bn_fct_formula_in_training_and_eval() -> None:
    layer = _make(BatchNormFCT, C, momentum=0.3).train()
    _randomize(layer)
    x = channel_varied_input(6, C, 3, 3, seed=16)
    x_hat, mean, var = _batch_normalize(x)
    assert_close(layer(x), x_hat * _c(layer.weight, x) + _c(layer.bias, x))
    assert_close(layer.running_mean, 0.3 * mean)
    assert_close(layer.eval()(x), _running_normalize(x, layer.running_mean, layer.running_var)
                 * _c(layer.weight, x) + _c(layer.bias, x))


# -- gradients: the fused backward against finite differences ---------------------------------
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("cls", "shape"), [
    (RepresentativeBatchNorm, (5, 3, 3, 4)), (RepresentativeBatchNorm, (6, 3)),
    (InstanceEnhancementBatchNorm, (5, 3, 3, 4)), (InstanceEnhancementBatchNorm, (6, 3)),
    (BNET, (5, 3, 3, 4)), (UnifiedBatchNorm, (5, 3, 3, 4)),
])
def test_gradients_to_the_input_and_every_parameter_are_exact(cls: type[nn.Module], shape: tuple[int, ...],
                                                               training: bool) -> None:
    """The backward of the fused per-sample affine (the moments differentiated in one pass, the
    coefficient algebra by autograd) against float64 finite differences, with batch statistics
    (training) and with running ones (eval)."""
    layer = _make(cls, 3, dtype=torch.float64)
    _randomize(layer)
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    layer.train(training)
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    buffers = {name: b for name, b in layer.named_buffers()}
    x = channel_varied_input(*shape, seed=21).double().requires_grad_()

    def run(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        state = {**{k: v.clone() for k, v in buffers.items()}, **dict(zip(names, values, strict=True))}
        return torch.func.functional_call(layer, state, (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


# -- references at init ------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "scale", "shapes"), [
    ("bn_fct", 1.0, [(6, C, 4, 4), (8, C)]),
    ("rbn", _sigmoid(1.0), [(6, C, 4, 4), (8, C)]),
    ("bnet", 1.0, [(6, C, 4, 4)]),
    ("unified_bn", _sigmoid(1.0), [(6, C, 4, 4)]),
    ("iebn", _sigmoid(-1.0), [(6, C, 4, 4), (8, C)]),
])
def test_a_fresh_layer_is_scaled_batch_norm(name: str, scale: float, shapes: list[tuple[int, ...]]) -> None:
    norm = REGISTRY.norms[name]
    for shape in shapes:
        x = channel_varied_input(*shape, seed=17)
        layer = norm.layer()(C).train()
        assert_close(layer(x), _batch_normalize(x)[0] * scale)
        reference = resolve(norm.reference)(C, **norm.config().layer_kwargs())
        assert_close(reference.train()(x), _batch_normalize(x)[0] * scale)


# -- refusals ----------------------------------------------------------------------------------
def test_refusals_are_value_errors_that_say_why() -> None:
    for layer in (_make(BNET, C), _make(UnifiedBatchNorm, C)):
        with pytest.raises(ValueError, match="N×C×H×W"):
            layer(channel_varied_input(4, C))
    with pytest.raises(ValueError, match="odd"):
        _make(BNET, C, kernel_size=2)
    with pytest.raises(ValueError, match="latch"):
        _make(BatchNormFCT, C, latch="step")


# -- end to end --------------------------------------------------------------------------------
SUITE = """
[suite]
name = "tiny_unified"
version = 1
seeds = [0]
metric = "accuracy"
baseline = "batchnorm"

[task]
use = "toy"
dataset = "digits"
channels = 4
epochs = 2
batch_size = 64

[[norm]]
use = "batchnorm"

[[norm]]
use = "bn_fct"
label = "always-condensed"
fct = -1.0

[[norm]]
use = "bn_fct"
label = "never-condensed"
fct = 1.5

[[norm]]
use = "unified_bn"
"""


def test_a_digits_suite_with_unified_bn_runs_through_the_cli(tmp_path: Path) -> None:
    suite = tmp_path / "tiny_unified.toml"
    suite.write_text(SUITE)
    result = run_cli("run", str(suite), "--quiet", "--threads", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    with open(tmp_path / "leaderboard" / "tiny_unified.csv") as f:
        rows = {r["norm"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"batchnorm", "always-condensed", "never-condensed", "unified_bn"}
    assert all(r["state"] == "complete" for r in rows.values())
    assert 0.0 <= float(rows["unified_bn"]["metric.accuracy"]) <= 1.0
    nll = {name: float(r["metric.nll"]) for name, r in rows.items()}
    assert math.isfinite(nll["unified_bn"])
    # the engine latches through the protocol: above the threshold bn_fct is BN, below it is not
    # (after the warm-up epoch bn_fct's decision is a device tensor and it computes BN through the
    # per-sample moments, not torch's kernel: the same function up to float32 rounding)
    assert nll["always-condensed"] == pytest.approx(nll["batchnorm"], abs=1e-5)
    assert nll["never-condensed"] != pytest.approx(nll["batchnorm"], abs=1e-4)


def test_latch_protocol_reports_whether_the_rule_engaged() -> None:
    """The protocol's metrics say how many layer-epochs ran on running statistics."""
    from harness_plugins.norms.unified.layers import CondensationLatch

    never, always = _make(BatchNormFCT, 4, fct=2.0), _make(BatchNormFCT, 4, fct=-1.0)
    net = torch.nn.Sequential(never, always)
    protocol = CondensationLatch()
    net.train()
    for epoch in range(3):
        protocol.before_train_epoch(net, epoch)
        net(torch.randn(8, 4))
    found = protocol.metrics(net)
    assert found["running_stat_layer_epochs"] == 2.0  # the first layer, after the warm-up epoch
    assert -1.0 <= found["condensation_tau"] <= 1.0


def test_half_precision_input_is_normalized_with_float32_statistics() -> None:
    """Under mixed precision (autocast) a norm sees bfloat16 activations: the statistics and the
    affine are computed in float32 (as torch's BN does) and the output keeps the input's dtype."""
    x = channel_varied_input(8, C, 4, 4, seed=22)
    for name in ("rbn", "iebn", "unified_bn"):
        torch.manual_seed(0)
        layer = REGISTRY.norms[name].layer()(C).train()
        _randomize(layer)
        reference = layer(x.bfloat16().float())
        low = x.bfloat16().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(low)
        assert out.dtype == torch.bfloat16
        assert_close(out.float(), reference, atol=0.05, rtol=0.02)
        out.float().sum().backward()
        assert low.grad is not None and low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad).all()
