"""Batch-statistics norms: UBN, balanced batches, batch renorm, MC batch norm and switchable norm,
each against its specification written out with plain torch ops, their protocols on real small
models and loaders, and one run of a small suite through the real CLI."""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torch.utils.data import TensorDataset

from harness import Norm, Splits
from harness.protocol import TrialContext
from harness.testing import conformance_tests
from harness_plugins.norms.baselines import BatchNorm
from harness_plugins.norms.batchstats import harness_register_norms
from harness_plugins.norms.batchstats.balanced import BalancedBatchSampler, BalancedEvaluation, BalancedProtocol
from harness_plugins.norms.batchstats.mc import MCBatchNormEvaluation
from harness_plugins.norms.batchstats.renorm import BatchRenorm
from harness_plugins.norms.batchstats.switchable import SwitchableNorm
from harness_plugins.norms.batchstats.ubn import UnsupervisedBatchNorm, UnsupervisedProtocol
from harness_plugins.tasks.toy import ToyConfig
from harness_plugins.tasks.toy.task import ToyTask

from conftest import randomize_affine, run_cli, write_suite

EPS = 1e-5


def _registered() -> dict[str, Norm]:
    found: list[Norm] = []
    harness_register_norms(found.append)
    return {n.name: n for n in found}


NORMS = _registered()


def _layer(name: str, **values: object) -> Callable[..., nn.Module]:
    """The ``norm_layer`` of a norm of this family with these config values (defaults otherwise)."""
    norm = NORMS[name]
    return norm.layer(norm.config(**values))


def _bn(num_features: int, **placement: object) -> BatchNorm:
    return BatchNorm(num_features, momentum=0.1, eps=EPS, **placement)


def _input(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random input with a non-zero mean and non-unit scale per channel."""
    g = torch.Generator().manual_seed(seed)
    channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    return torch.randn(shape, generator=g) * (torch.rand(channel, generator=g) * 4 + 0.5) \
        + torch.randn(channel, generator=g) * 3


def _stats(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of an N×C tensor, written out."""
    mean = h.sum(0) / len(h)
    return mean, ((h - mean) ** 2).sum(0) / len(h)


def _mlp(norm_layer: Callable[[int], nn.Module], classes: int = 3, seed: int = 0) -> nn.Sequential:
    """Linear → norm → ReLU, twice, then a linear head; random affine in the norms."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 5), norm_layer(5), nn.ReLU(), nn.Linear(5, 4), norm_layer(4), nn.ReLU(),
                        nn.Linear(4, classes))
    randomize_affine(net[1], seed=seed + 1)
    randomize_affine(net[4], seed=seed + 2)
    return net


def _hand_forward(net: nn.Sequential, x: torch.Tensor, stats: list | None = None) -> tuple[torch.Tensor, list]:
    """The MLP with its BN layers by hand: each uses ``stats[k]`` or, if None, its batch's own."""
    found = []
    h = x
    for lin, bn in ((net[0], net[1]), (net[3], net[4])):
        h = lin(h)
        mean, var = _stats(h) if stats is None else stats[len(found)]
        found.append((mean, var))
        h = torch.relu((h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias)
    return net[6](h), found


def _ctx(net: nn.Module, train: object, test: object, config: ToyConfig, unlabeled: object = None) -> TrialContext:
    return TrialContext(net=net, splits=Splits(train=train, test=test, unlabeled=unlabeled), config=config, seed=0,
                        provides=frozenset(), generator=torch.Generator().manual_seed(0))


# --- registration and the common checks ------------------------------------------------------


def test_registration_names_needs_and_configs() -> None:
    norms = _registered()
    assert set(norms) == {"unsupervised_bn", "balanced_bn", "batch_renorm", "mc_batchnorm", "switchable_norm"}
    assert norms["unsupervised_bn"].needs == {"unlabeled", "input_batches"}
    assert norms["balanced_bn"].needs == {"labels", "input_batches"}
    assert norms["mc_batchnorm"].needs == {"input_batches", "class_scores"}
    assert norms["switchable_norm"].dims == {"2d"}
    for norm in norms.values():
        assert norm.summary and norm.citation
        assert {"momentum", "eps"} <= set(norm.config.model_fields)
    assert norms["unsupervised_bn"].config.protocol_only == {"ratio"}
    assert norms["mc_batchnorm"].config.protocol_only == {"mc_samples"}


def test_protocols_get_their_values_from_the_config() -> None:
    ubn, mc = NORMS["unsupervised_bn"], NORMS["mc_batchnorm"]
    assert ubn.make_protocol().ratio == 8 and ubn.make_protocol(ubn.config(ratio=3)).ratio == 3
    assert mc.make_protocol().mc_samples == 16 and mc.make_protocol(mc.config(mc_samples=4)).mc_samples == 4
    assert isinstance(NORMS["balanced_bn"].make_protocol(), BalancedProtocol)


test_batchstats_norms_conform = conformance_tests(*sorted(_registered()))


# --- unsupervised batch normalization --------------------------------------------------------


@pytest.mark.parametrize("stats_grad", ["detach", "full"])
def test_ubn_one_forward_over_the_concatenation_is_bn_of_the_concatenation(stats_grad: str) -> None:
    net = _mlp(_layer("unsupervised_bn", stats_grad=stats_grad))
    calls = []
    net[1].register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    x, u = _input(6, 2, seed=1), _input(18, 2, seed=2)
    out = UnsupervisedProtocol(ratio=3).train_forward(net, x, u)
    assert calls == [24], "one forward over labeled + unlabeled"
    expected, stats = _hand_forward(net, torch.cat([x, u]))
    assert_close(out, expected[:6])
    labeled_only, _ = _hand_forward(net, x)
    assert not torch.allclose(out, labeled_only, atol=1e-3), "x is normalized with the combined statistics"
    mean, var = stats[0]
    assert int(net[1].num_batches_tracked) == 1
    assert_close(net[1].running_mean, 0.1 * mean)
    assert_close(net[1].running_var, 0.9 + 0.1 * var * 24 / 23)


def test_ubn_detach_gradient_is_bn_with_constant_statistics_and_full_is_bn() -> None:
    x, g = _input(16, 4, seed=3).double(), _input(16, 4, seed=4).double()
    grads = {}
    for mode in ("detach", "full"):
        layer = UnsupervisedBatchNorm(4, stats_grad=mode, momentum=0.1, eps=EPS, dtype=torch.float64)
        randomize_affine(layer)
        xi = x.clone().requires_grad_()
        (layer(xi) * g).sum().backward()
        grads[mode] = [xi.grad, layer.weight.grad, layer.bias.grad]
    # detach: the batch statistics, computed from the plain tensor, enter as constants
    ref = nn.BatchNorm1d(4, dtype=torch.float64)
    randomize_affine(ref)
    w, b = ref.weight.detach().clone().requires_grad_(), ref.bias.detach().clone().requires_grad_()
    mean, var = _stats(x)
    xi = x.clone().requires_grad_()
    ((xi - mean) / torch.sqrt(var + EPS) * w + b).mul(g).sum().backward()
    for got, want in zip(grads["detach"], [xi.grad, w.grad, b.grad], strict=True):
        assert_close(got, want)
    # full: gradients through the statistics, as torch's BN
    xi = x.clone().requires_grad_()
    (ref(xi) * g).sum().backward()
    for got, want in zip(grads["full"], [xi.grad, ref.weight.grad, ref.bias.grad], strict=True):
        assert_close(got, want)
    assert not torch.allclose(grads["detach"][0], grads["full"][0], atol=1e-3)


def test_ubn_loader_yields_ratio_unlabeled_inputs_reshuffled_and_cycled(tmp_path: Path) -> None:
    config = ToyConfig(points_per_class=10, unlabeled_per_class=15, noise=0.3, batch_size=8)
    splits = ToyTask(config, tmp_path, seed=0).datasets()
    pool = torch.stack([splits.unlabeled[i] for i in range(len(splits.unlabeled))])
    assert len(pool.unique(dim=0)) == 30
    ctx = _ctx(nn.Identity(), splits.train, splits.test, config, unlabeled=splits.unlabeled)
    loader = UnsupervisedProtocol(ratio=3).train_loader(ctx, 8)
    epochs = []
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == 2  # 20 labeled points, batches of 8, the last partial one dropped
        for x, y, u in batches:
            assert x.shape == (8, 2) and y.shape == (8,) and u.shape == (24, 2)
        rows = torch.cat([u for _, _, u in batches])
        epochs.append([int((pool == row).all(dim=1).nonzero()) for row in rows])
    for drawn in epochs:  # 48 draws an epoch: one whole pass, then the start of the next
        assert sorted(drawn[:30]) == list(range(30)), "every unlabeled point once per pass"
        assert len(set(drawn[30:])) == 18 and drawn[30:] != drawn[:18], "a new order every pass"
    assert len({tuple(drawn) for drawn in epochs}) == 3, "a new order every epoch"
    assert UnsupervisedProtocol(ratio=0).train_loader(ctx, 8) is None


def test_check_refuses_ubn_on_a_toy_variant_without_unlabeled_data(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, norms=("batchnorm", "unsupervised_bn"))
    result = run_cli("check", str(suite), cwd=tmp_path)
    assert result.returncode == 2
    out = result.stdout + result.stderr
    assert "unsupervised_bn" in out and "needs ['unlabeled']" in out and "Traceback" not in out
    suite.write_text(suite.read_text().replace("noise = 0.2", "noise = 0.2\nunlabeled_per_class = 10"))
    assert run_cli("check", str(suite), cwd=tmp_path).returncode == 0


# --- balanced batches ------------------------------------------------------------------------


def test_balanced_sampler_has_each_class_once_per_batch_reshuffled_every_epoch() -> None:
    labels = torch.arange(4).repeat(5)[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    sampler = BalancedBatchSampler(labels, seed=0)
    epochs = [list(sampler) for _ in range(3)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 5
        assert all(sorted(labels[b].tolist()) == [0, 1, 2, 3] for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(20))
    assert epochs[0] != epochs[1] != epochs[2]
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1], "epoch-seeded: a resumed run sees the same batches"


def test_balanced_sampler_tops_up_smaller_classes() -> None:
    labels = torch.tensor([0] * 5 + [1] * 3 + [2])
    batches = list(BalancedBatchSampler(labels, seed=1))
    assert len(batches) == 5
    assert all(sorted(labels[b].tolist()) == [0, 1, 2] for b in batches)
    used = [i for b in batches for i in b]
    assert sorted(i for i in used if labels[i] == 0) == [0, 1, 2, 3, 4]
    assert set(used) == set(range(9))


def test_balanced_evaluation_uses_each_batch_statistics_and_leaves_the_model_as_it_was() -> None:
    net = _mlp(_bn)
    net.train()
    for seed in range(3):  # some training so the running statistics are not at their init
        net(_input(12, 2, seed=seed))
    net.eval()
    before = copy.deepcopy(net.state_dict())
    x = _input(11, 2, seed=7)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])  # counts 4, 4, 3
    evaluation = BalancedEvaluation()
    assert evaluation.oracle and evaluation.name == "balanced"
    ctx = _ctx(net, None, TensorDataset(x, y), ToyConfig())
    evaluation.prepare(net, ctx)
    scored = []
    for inputs, targets in evaluation.loader(ctx, ctx.splits.test, batch_size=5):
        rows = [int((x == r).all(dim=1).nonzero()) for r in inputs]
        assert sorted(y[rows].tolist()) == [0, 1, 2], "every batch is balanced, topped up if need be"
        assert torch.equal(y[rows[: len(targets)]], targets)
        out = evaluation.predict(net, inputs)
        assert_close(out, _hand_forward(net, inputs)[0][: len(targets)])
        scored += rows[: len(targets)]
    evaluation.finish(net)
    assert sorted(scored) == list(range(11)), "each test sample scored once"
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert net[1].momentum == 0.1 and not any(m.training for m in net.modules())


def test_balanced_protocol_trains_on_balanced_batches(tmp_path: Path) -> None:
    config = ToyConfig(classes=3, points_per_class=6)
    splits = ToyTask(config, tmp_path, seed=0).datasets()
    ctx = _ctx(nn.Identity(), splits.train, splits.test, config)
    loader = BalancedProtocol().train_loader(ctx, batch_size=32)
    batches = list(loader)
    assert len(batches) == 6 and all(sorted(t.tolist()) == [0, 1, 2] for _, t in batches)
    assert [e.name for e in BalancedProtocol().evaluations(ctx)] == ["balanced"]


# --- batch renormalization -------------------------------------------------------------------


@pytest.mark.parametrize(("step", "r_max", "d_max"), [(0, 1.0, 0.0), (25, 1.5, 1.25), (100, 3.0, 5.0), (400, 3.0, 5.0)])
def test_batch_renorm_warmup_ramps_the_limits_linearly_in_steps(step: int, r_max: float, d_max: float) -> None:
    layer = _layer("batch_renorm", r_max=3.0, d_max=5.0, warmup_steps=100)(3)
    layer.num_batches_tracked.fill_(step)
    assert layer.limits() == pytest.approx((r_max, d_max))
    layer(_input(8, 3))
    assert int(layer.num_batches_tracked) == step + 1
    assert _layer("batch_renorm", warmup_steps=0)(3).limits() == (3.0, 5.0)


def test_batch_renorm_matches_the_hand_formulas_with_clipping() -> None:
    layer = BatchRenorm(4, r_max=3.0, d_max=5.0, warmup_steps=100, momentum=0.1, eps=EPS, dtype=torch.float64)
    randomize_affine(layer)
    layer.num_batches_tracked.fill_(50)  # half way: r in [1/2, 2], d in [-2.5, 2.5]
    running_mean = torch.tensor([0.0, 10.0, -10.0, 0.5], dtype=torch.float64)
    running_var = torch.tensor([1.0, 1.0, 1.0, 100.0], dtype=torch.float64)
    layer.running_mean.copy_(running_mean)
    layer.running_var.copy_(running_var)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64) * torch.tensor([1.2, 1.0, 4.0, 0.1], dtype=torch.float64)
    x = x + torch.tensor([0.3, 0.0, 0.0, 0.0], dtype=torch.float64)
    grad_out = torch.randn(16, 4, generator=g, dtype=torch.float64)

    mean, var = _stats(x)
    sigma = torch.sqrt(running_var + EPS)
    r = torch.clamp(torch.sqrt(var + EPS) / sigma, 0.5, 2.0)
    d = torch.clamp((mean - running_mean) / sigma, -2.5, 2.5)
    assert r[2] == 2.0 and r[3] == 0.5 and 0.5 < r[0] < 2.0, "both clips and a free r are exercised"
    assert d[1] == -2.5 and d[2] == 2.5 and -2.5 < d[0] < 2.5
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    xi = x.clone().requires_grad_()
    m_b, v_b = _stats(xi)  # with gradients; r and d stay constants
    expected = ((xi - m_b) / torch.sqrt(v_b + EPS) * r + d) * w + b
    (expected * grad_out).sum().backward()

    xo = x.clone().requires_grad_()
    out = layer(xo)
    (out * grad_out).sum().backward()
    assert_close(out, expected)
    for got, want in ((xo.grad, xi.grad), (layer.weight.grad, w.grad), (layer.bias.grad, b.grad)):
        assert_close(got, want)
    assert_close(layer.running_mean, running_mean + 0.1 * (mean - running_mean))
    assert_close(layer.running_var, running_var + 0.1 * (var * 16 / 15 - running_var))
    layer.eval()
    assert_close(layer(x), (x - layer.running_mean) / torch.sqrt(layer.running_var + EPS) * w + b)


@pytest.mark.parametrize(("r_max", "d_max", "warmup", "start"), [(3.0, 5.0, 1000, 0), (1.0, 0.0, 0, 500)])
def test_batch_renorm_is_bn_while_r_is_1_and_d_is_0(r_max: float, d_max: float, warmup: int, start: int) -> None:
    ours, ref = _layer("batch_renorm", r_max=r_max, d_max=d_max, warmup_steps=warmup)(3), nn.BatchNorm2d(3)
    randomize_affine(ours, ref)
    with torch.no_grad():
        for m in (ours, ref):  # far-off running statistics: r and d would not be 1 and 0 if unclipped
            m.running_mean.fill_(4.0)
            m.running_var.fill_(9.0)
    ours.num_batches_tracked.fill_(start)
    x, g = _input(4, 3, 5, 5, seed=8), _input(4, 3, 5, 5, seed=9)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours), ref(x_ref)
    assert_close(y_ours, y_ref)
    (y_ours * g).sum().backward()
    (y_ref * g).sum().backward()
    assert_close(x_ours.grad, x_ref.grad)
    assert_close(ours.weight.grad, ref.weight.grad)
    assert_close(ours.running_mean, ref.running_mean)
    assert_close(ours.running_var, ref.running_var)


# --- MC batch norm ---------------------------------------------------------------------------


@torch.no_grad()
def test_mc_with_one_draw_of_a_fixed_batch_is_bn_with_that_batch_statistics() -> None:
    net = _mlp(_bn)
    net.eval()
    before = copy.deepcopy(net.state_dict())
    train_x = _input(6, 2, seed=3)
    train = TensorDataset(train_x, torch.zeros(6, dtype=torch.long))
    test_x = _input(5, 2, seed=4)
    ctx = _ctx(net, train, None, ToyConfig(batch_size=6))  # the one training batch is the whole set
    evaluation = MCBatchNormEvaluation(samples=1)
    evaluation.prepare(net, ctx)
    out = evaluation.predict(net, test_x)
    evaluation.finish(net)
    _, stats = _hand_forward(net, train_x)
    expected, _ = _hand_forward(net, test_x, stats)
    assert_close(out, expected.log_softmax(dim=1))
    assert evaluation.metrics() == {"prob_std": 0.0}
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


@torch.no_grad()
def test_mc_draws_are_statistics_of_random_training_batches_averaged_in_probability() -> None:
    net = _mlp(_bn)
    with torch.no_grad():  # the first BN sees the inputs themselves
        net[0].weight.zero_()
        net[0].weight[:2, :2] = torch.eye(2)
        net[0].bias.zero_()
    net.eval()
    # feature 0 is 2^i: the sum over a batch names the training samples in it
    train_x = torch.stack([2.0 ** torch.arange(10), torch.randn(10, generator=torch.Generator().manual_seed(2))], 1)
    train = TensorDataset(train_x, torch.zeros(10, dtype=torch.long))
    test_x = _input(7, 2, seed=4)
    ctx = _ctx(net, train, None, ToyConfig(batch_size=4))
    evaluation = MCBatchNormEvaluation(samples=3)
    evaluation.prepare(net, ctx)
    probs, subsets = [], []
    for draw in evaluation.draws:
        code = round(float(draw[0][0][0]) * 4)
        subset = [i for i in range(10) if code >> i & 1]
        assert len(subset) == 4
        _, stats = _hand_forward(net, train_x[subset])
        for (mean, var), (want_mean, want_var) in zip(draw, stats, strict=True):
            assert_close(mean, want_mean)
            assert_close(var, want_var)
        probs.append(_hand_forward(net, test_x, stats)[0].softmax(dim=1))
        subsets.append(subset)
    assert len({tuple(s) for s in subsets}) == 3
    out = evaluation.predict(net, test_x)
    mean_prob = torch.stack(probs).mean(0)
    assert_close(out, mean_prob.log())
    picked = torch.stack(probs)[:, torch.arange(7), mean_prob.argmax(1)]
    assert evaluation.metrics()["prob_std"] == pytest.approx(float(picked.std(0, unbiased=False).mean()), rel=1e-5)


# --- switchable normalization ----------------------------------------------------------------


def test_switchable_norm_mixes_in_ln_and_bn_statistics_as_written() -> None:
    layer = SwitchableNorm(6, momentum=0.1, eps=EPS)
    randomize_affine(layer)
    assert torch.equal(layer.mean_weight.softmax(0), torch.full((3,), 1 / 3))
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
        layer.var_weight.copy_(torch.tensor([-0.4, 0.1, 0.6]))
    x, g = _input(4, 6, 5, 5, seed=11), _input(4, 6, 5, 5, seed=12)
    params = [p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias, layer.mean_weight,
                                                              layer.var_weight)]

    def by_hand(xi: torch.Tensor, bn: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        w, b, mw, vw = params

        def moments(dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            mean = xi.mean(dims, keepdim=True)
            return mean, ((xi - mean) ** 2).mean(dims, keepdim=True)

        (m_in, v_in), (m_ln, v_ln) = moments((2, 3)), moments((1, 2, 3))
        m_bn, v_bn = moments((0, 2, 3)) if bn is None else bn
        pm, pv = mw.exp() / mw.exp().sum(), vw.exp() / vw.exp().sum()
        mean = pm[0] * m_in + pm[1] * m_ln + pm[2] * m_bn
        var = pv[0] * v_in + pv[1] * v_ln + pv[2] * v_bn
        return (xi - mean) / torch.sqrt(var + EPS) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)

    xi, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, out = by_hand(xi, None), layer(xo)
    assert_close(out, expected)
    (expected * g).sum().backward()
    (out * g).sum().backward()
    assert_close(xo.grad, xi.grad)
    for p, want in zip((layer.weight, layer.bias, layer.mean_weight, layer.var_weight), params, strict=True):
        assert_close(p.grad, want.grad)
    mean_bn = x.mean((0, 2, 3))
    var_bn = ((x - mean_bn.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
    assert_close(layer.running_mean, 0.1 * mean_bn)
    assert_close(layer.running_var, 0.9 + 0.1 * var_bn * 100 / 99)
    layer.eval()
    running = (layer.running_mean.view(1, -1, 1, 1), layer.running_var.view(1, -1, 1, 1))
    with torch.no_grad():
        assert_close(layer(x[:1]), by_hand(x[:1], running))
    with pytest.raises(ValueError, match="N×C×H×W"):
        layer(_input(4, 6))


# --- end to end ------------------------------------------------------------------------------

E2E_SUITE = """
[suite]
name = "batchstats_e2e"
version = 1
seeds = [0]
metric = "accuracy"

[task]
use = "toy"
epochs = 1
batch_size = 16
points_per_class = 16
test_points_per_class = 16
unlabeled_per_class = 32
hidden = [8, 8]
channels = 4
noise = 0.2

[matrix]
dataset = ["spiral", "digits"]

[[norm]]
use = "unsupervised_bn"
ratio = 2

[[norm]]
use = "balanced_bn"

[[exclude]]
norm = "unsupervised_bn"
dataset = "digits"

[[exclude]]
norm = "balanced_bn"
dataset = "spiral"
"""


def test_cli_runs_ubn_on_spiral_and_balanced_bn_on_digits(tmp_path: Path) -> None:
    suite = tmp_path / "batchstats_e2e.toml"
    suite.write_text(E2E_SUITE)
    result = run_cli("run", str(suite), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    board = json.loads((tmp_path / "leaderboard" / "batchstats_e2e.json").read_text())
    assert board["complete"]
    (ubn,), (balanced,) = board["variants"]["spiral"], board["variants"]["digits"]
    assert ubn["norm"] == "unsupervised_bn" and ubn["n"] == 1
    assert balanced["norm"] == "balanced_bn" and balanced["n"] == 1
    assert 0 <= balanced["metrics"]["balanced/accuracy"][0] <= 1
    assert "balanced/accuracy" in balanced["oracle_metrics"]
    with open(tmp_path / "leaderboard" / "batchstats_e2e.csv") as f:
        rows = {r["norm"]: r for r in csv.DictReader(f)}
    assert rows["balanced_bn"]["state"] == "complete" and float(rows["balanced_bn"]["metric.balanced/accuracy"]) >= 0
    assert rows["unsupervised_bn"]["state"] == "complete" and rows["unsupervised_bn"]["metric.balanced/accuracy"] == ""
