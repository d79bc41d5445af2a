"""Every norm GPU-shaped: correct in front of in-place activations and in channels_last, no
host-device synchronisation and no float64 in a training step, statistics in float32 under
autocast, and every 2-d norm compiles without graph breaks."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from harness.plugins import load_registry
from harness.testing import census
from harness_plugins.norms.bayesian.moments import Moments
from harness_plugins.norms.ops import _Affine, _Moments, moment_affine, sample_moments
from harness_plugins.norms.unified.layers import BatchNormFCT

from conftest import channel_varied_input

REGISTRY = load_registry()
NORMS_2D = sorted(n for n, norm in REGISTRY.norms.items() if "2d" in norm.dims)
#: The norms whose training output is not torch's BN kernel alone.
MOMENT_NORMS = ["rbn", "iebn", "unified_bn", "bn_fct", "switchable_norm", "batch_renorm", "unsupervised_bn"]
ROOT = Path(__file__).resolve().parents[1]


def _randomize(module: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + 0.5)


def _after_warmup(module: nn.Module, epoch: int = 1) -> None:
    """Condensation layers past their warm-up: the decision is then a device tensor."""
    for m in module.modules():
        if hasattr(m, "latch_epoch"):
            m.latch_epoch(epoch)


def _layer(name: str, channels: int = 6, **values: object) -> nn.Module:
    norm = REGISTRY.norms[name]
    layer = norm.layer(norm.config(**values))(channels).train()
    _randomize(layer)
    return layer


# -- in-place activations and memory layouts --------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("epoch", [0, 1])
@pytest.mark.parametrize("name", MOMENT_NORMS)
def test_a_norm_before_an_in_place_relu_trains_as_before_an_out_of_place_one(name: str, epoch: int,
                                                                           layout: str) -> None:
    """Forward and backward in train mode: the norm followed by nn.ReLU(inplace=True) gives the
    output and the gradients (input, every parameter) of the norm followed by nn.ReLU()."""
    if epoch and name not in ("bn_fct", "unified_bn"):
        pytest.skip("only the condensation norms change path after the warm-up")
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    layer = _layer(name)
    _after_warmup(layer, epoch)
    twin = copy.deepcopy(layer)
    x = channel_varied_input(5, 6, 4, 5, seed=3).contiguous(memory_format=fmt)
    g = channel_varied_input(5, 6, 4, 5, seed=4)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = nn.Sequential(layer, nn.ReLU(inplace=True))(xa)
    yb = nn.Sequential(twin, nn.ReLU())(xb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    assert_close(ya, yb)
    assert ya.is_contiguous(memory_format=fmt), "the output keeps the input's memory layout"
    assert_close(xa.grad, xb.grad)
    for (n, p), q in zip(layer.named_parameters(), twin.parameters(), strict=True):
        assert p.grad is not None, n
        assert_close(p.grad, q.grad, msg=n)
    for (n, b), c in zip(layer.named_buffers(), twin.buffers(), strict=True):
        assert_close(b, c, msg=n)


@pytest.mark.parametrize("name", MOMENT_NORMS)
def test_channels_last_and_nchw_give_the_same_training_step(name: str) -> None:
    layer = _layer(name)
    _after_warmup(layer, 1)
    twin = copy.deepcopy(layer)
    x = channel_varied_input(4, 6, 5, 3, seed=5)
    xa = x.clone().requires_grad_()
    xb = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    ya, yb = layer(xa), twin(xb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert_close(ya, yb)
    assert_close(xa.grad, xb.grad)
    # The parameter gradients are sums over N·H·W products; the two layouts order and centre them
    # differently (float32 rounding, relative to the largest gradient).
    for p, q in zip(layer.parameters(), twin.parameters(), strict=True):
        assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4 * q.grad.abs().max().item())


# -- the shared operations: gradients against finite differences -------------------------------
def test_the_moments_function_gradient_is_exact() -> None:
    x = channel_varied_input(3, 2, 3, 4, seed=6).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: _Moments.apply(t), (x,))
    assert torch.autograd.gradcheck(lambda t: _Moments.apply(t.contiguous(memory_format=torch.channels_last)), (x,))
    mean, var = _Moments.apply(x)
    assert_close(mean, x.mean((2, 3), keepdim=True))
    assert_close(var, x.var((2, 3), keepdim=True, correction=0))


@pytest.mark.parametrize("a_shape", [(3, 2, 1, 1), (1, 2, 1, 1)])
@pytest.mark.parametrize("c_shape", [(3, 2, 1, 1), (1, 2, 1, 1)])
def test_the_affine_function_and_both_paths_of_moment_affine_have_exact_gradients(
        a_shape: tuple[int, ...], c_shape: tuple[int, ...]) -> None:
    """_Affine (any layout) and the batch-norm path (contiguous NCHW) of a·(x − mean) + c."""
    x = channel_varied_input(3, 2, 3, 4, seed=7).double().requires_grad_()
    mean = torch.randn(3, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    a = torch.randn(a_shape, dtype=torch.float64, requires_grad=True)
    c = torch.randn(c_shape, dtype=torch.float64, requires_grad=True)
    expected = a * (x - mean) + c
    for fn in (lambda *t: _Affine.apply(*t), moment_affine,
               lambda t, *rest: moment_affine(t.contiguous(memory_format=torch.channels_last), *rest)):
        assert_close(fn(x, mean, a, c), expected)
        assert torch.autograd.gradcheck(fn, (x, mean, a, c))


def test_per_sample_moments_feed_gradients_back_through_the_affine() -> None:
    """The composition the norms use: moments, an arbitrary coefficient algebra, the affine."""
    x = channel_varied_input(3, 2, 3, 3, seed=8).double().requires_grad_()
    w = torch.randn(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)

    def run(t: torch.Tensor, w: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
        t = t.contiguous(memory_format=layout)
        mean, var = sample_moments(t)
        a = torch.sigmoid(w * mean) * (var + 1e-3).rsqrt()
        return moment_affine(t, mean, a, w * mean.mean(0, keepdim=True))

    for layout in (torch.contiguous_format, torch.channels_last):
        assert torch.autograd.gradcheck(run, (x, w, layout))


# -- no host-device syncs, no float64 ---------------------------------------------------------
def _norm_ops():
    spec = importlib.util.spec_from_file_location("norm_ops", ROOT / "benchmarks" / "norm_ops.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("norm_ops", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("model", "size"), [
    ("tiny_resnet", 16),  # max-pool, a residual block, in-place ReLU
    pytest.param("timm_resnet18", 64, marks=pytest.mark.slow),  # timm's, in-place ReLU and max-pool
    pytest.param("timm_cifar_resnet20", 16, marks=pytest.mark.slow),
    pytest.param("timm_allcnn_c", 16, marks=pytest.mark.slow),
])
def test_no_norm_syncs_with_the_host_or_makes_float64_in_a_training_step(model: str, size: int) -> None:
    """One training step (protocol forward, loss, backward) of the model with each 2-d norm, its
    protocol set up, counted by benchmarks/norm_ops.py's census."""
    norm_ops = _norm_ops()
    for name in NORMS_2D:
        norm = REGISTRY.norms[name]
        found = norm_ops.step_census(norm.layer(), norm.make_protocol(), model=model, size=size, batch=4)
        assert found.ops > 0
        assert found.syncs == 0, f"{name} syncs with the host: {found.sync_names}"
        assert found.float64 == 0, f"{name} makes float64 tensors: {found.float64_names}"


@pytest.mark.parametrize("name", ["bn_fct", "unified_bn"])
def test_the_condensation_decision_stays_on_the_device(name: str) -> None:
    layer = _layer(name, 4, latch="iteration")
    _after_warmup(layer, 2)
    x = channel_varied_input(6, 4, 3, 3, seed=9).requires_grad_()
    _, found = census(lambda: layer(x).sum().backward())
    assert found.syncs == 0 and isinstance(layer.batch_stats, torch.Tensor)


def test_the_census_sees_a_sync_and_float64() -> None:
    x = torch.randn(3)
    _, found = census(lambda: (float(x.sum()), x.double()))
    assert found.syncs == 1 and found.float64 == 1


@pytest.mark.parametrize("shape", [(5, 4, 3, 3), (8, 4)])
@pytest.mark.parametrize("decision", [True, False])
def test_bn_fct_with_a_device_decision_is_bn_with_batch_or_running_statistics(decision: bool,
                                                                              shape: tuple[int, ...]) -> None:
    defaults = REGISTRY.norms["bn_fct"].config().layer_kwargs()
    layer = BatchNormFCT(4, **{**defaults, "fct": -2.0 if decision else 2.0, "warmup_epochs": 0})
    _randomize(layer)
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    reference = nn.BatchNorm2d(4) if len(shape) == 4 else nn.BatchNorm1d(4)
    reference.load_state_dict(layer.state_dict(), strict=False)
    reference.train(decision)
    layer.train().latch_epoch(0)
    assert isinstance(layer.batch_stats, torch.Tensor)
    x = channel_varied_input(*shape, seed=10)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = layer(xa), reference(xb)
    (ya * x).sum().backward()
    (yb * x).sum().backward()
    assert_close(ya, yb)
    assert_close(xa.grad, xb.grad)
    assert_close(layer.weight.grad, reference.weight.grad)
    assert_close(layer.running_mean, reference.running_mean)
    assert_close(layer.running_var, reference.running_var)


# -- half precision ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("name", MOMENT_NORMS + ["analytic_norm"])
def test_autocast_keeps_float32_statistics_and_the_input_dtype(name: str, layout: torch.memory_format) -> None:
    layer = _layer(name, 4)
    _after_warmup(layer, 1)
    if name == "analytic_norm":
        layer.stats = Moments(torch.full((4,), 0.5), torch.full((4,), 2.0))
    twin = copy.deepcopy(layer)
    x = channel_varied_input(6, 4, 4, 4, seed=11).bfloat16().float().contiguous(memory_format=layout)
    reference = twin(x)
    low = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(low)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), reference, atol=0.05, rtol=0.02)
    out.float().square().sum().backward()
    assert low.grad is not None and low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad).all()
    for (n, b), c in zip(layer.named_buffers(), twin.buffers(), strict=True):
        assert b.dtype == c.dtype, n
        if b.is_floating_point():
            assert_close(b, c, atol=1e-3, rtol=1e-3, msg=n)


# -- compilation without graph breaks ---------------------------------------------------------
def _compiled_step(name: str, backend: str) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = REGISTRY.norms[name].layer()(8)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer, nn.ReLU(inplace=True)).train()
    _after_warmup(net, 1)
    for m in net.modules():
        if type(m).__name__ == "AnalyticNorm":
            m.stats = Moments(torch.zeros(8, requires_grad=True), torch.ones(8, requires_grad=True))
    reference = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True, backend=backend)  # fullgraph: a graph break raises
    x = torch.randn(4, 3, 6, 6)
    out = compiled(x)
    out.square().sum().backward()
    expected = reference(x)
    expected.square().sum().backward()
    if name not in ("bn_noise", "bayesian_scale"):  # random draws: compiled RNG differs
        assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_every_2d_norm_compiles_without_graph_breaks_eager_backend() -> None:
    for name in NORMS_2D:
        _compiled_step(name, "eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", NORMS_2D)
def test_every_2d_norm_compiles_with_inductor(name: str) -> None:
    """Inductor, as `compile = true` runs it: AOTAutograd traces the backward too (custom
    Functions, in-place activations), and the generated kernels must match eager."""
    _compiled_step(name, "inductor")


@pytest.mark.parametrize("name", NORMS_2D)
def test_every_2d_norm_trains_on_the_meta_device(name: str) -> None:
    """Build checks may pass a batch through a model on the meta device: no norm may need data
    (a sync) or a device-specific feature (autocast) there."""
    layer = REGISTRY.norms[name].layer()(4, device="meta").train()
    _after_warmup(layer, 1)
    x = torch.empty(3, 4, 5, 5, device="meta", requires_grad=True)
    y = nn.ReLU(inplace=True)(layer(x * 2))  # not a leaf: the identity norm passes it on
    y.sum().backward()
    assert y.shape == x.shape and y.device.type == "meta"
