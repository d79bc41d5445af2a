"""Analytic moment propagation: per-channel mean and variance of every activation of a network,
computed from the dataset's input statistics instead of a batch (Shekhovtsov & Flach, CVWW 2018).

**[R]** The moment forms are the standard moment-matching ones, rebuilt because the paper's
equations were lost in its text (METHODS.md): every activation is taken as Gaussian and
independent across channels, taps and positions.

- conv/linear: μ′ = ΣWμ + b, v′ = ΣW²v over input channels and kernel taps (zero padding ignored);
- ReLU, with a = μ/σ: E = μΦ(a) + σφ(a), E[y²] = (μ² + σ²)Φ(a) + μσφ(a);
- leaky ReLU of slope α: E = αμ + (1−α)E_relu, Var = α²σ² + (1−α)²Var_relu + 2α(1−α)σ²Φ(a);
- average pooling over K inputs: mean unchanged, variance v/K;
- max pooling over a window of K inputs: Clark's (1961) moment matching of the maximum of two
  independent Gaussians, applied pairwise over the window (:func:`max_pool_moments`); padding
  is ignored (every window is taken as K inputs of the channel's moments);
- residual sum: means and variances add;
- spatial slicing x[:, :, ::s, ::s] keeps the moments; constant channels padded on (F.pad, as
  CIFAR ResNets' option-A shortcut) have mean ``value`` and variance 0.

A norm layer that knows its own moment map has a ``propagate(moments) -> moments`` method; the
analytic norm binds its statistics there. Any other operation is refused with an error that
names it, rather than guessed.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "Moments",
    "MomentPropagator",
    "UnsupportedOpError",
    "dataset_moments",
    "leaky_relu_moments",
    "clark_max_moments",
    "linear_moments",
    "max_pool_moments",
    "relu_moments",
]

_TINY = 1e-12  # floor of a variance before its square root: keeps a = μ/σ and its gradient finite


class Moments(NamedTuple):
    """Per-channel mean and variance (1-d tensors of length C, or of the feature count)."""

    mean: torch.Tensor
    var: torch.Tensor


class UnsupportedOpError(ValueError):
    """An operation of the traced network that has no moment rule."""


def _relu(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    std = var.clamp_min(_TINY).sqrt()
    a = mean / std
    cdf = 0.5 * (1 + torch.erf(a / math.sqrt(2)))
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    first = mean * cdf + std * pdf
    second = (mean * mean + std * std) * cdf + mean * std * pdf
    return first, (second - first * first).clamp_min(0), cdf


def relu_moments(mean: torch.Tensor, var: torch.Tensor) -> Moments:
    """Mean and variance of max(0, X) for X ~ N(mean, var). **[R]**"""
    first, variance, _ = _relu(mean, var)
    return Moments(first, variance)


def leaky_relu_moments(mean: torch.Tensor, var: torch.Tensor, slope: float) -> Moments:
    """Mean and variance of αX + (1−α)max(0, X) for X ~ N(mean, var); Cov(X, relu X) = σ²Φ(a). **[R]**"""
    first, variance, cdf = _relu(mean, var)
    return Moments(
        slope * mean + (1 - slope) * first,
        slope**2 * var + (1 - slope) ** 2 * variance + 2 * slope * (1 - slope) * var * cdf,
    )


def clark_max_moments(first: Moments, second: Moments) -> Moments:
    """Mean and variance of max(X1, X2) for independent X1 ~ N(μ1, σ1²), X2 ~ N(μ2, σ2²) (Clark,
    1961): θ = √(σ1² + σ2²), α = (μ1 − μ2)/θ, E = μ1Φ(α) + μ2Φ(−α) + θφ(α),
    E[y²] = (μ1² + σ1²)Φ(α) + (μ2² + σ2²)Φ(−α) + (μ1 + μ2)θφ(α). **[R]**"""
    (mu1, var1), (mu2, var2) = first, second
    theta = (var1 + var2).clamp_min(_TINY).sqrt()
    alpha = (mu1 - mu2) / theta
    cdf = 0.5 * (1 + torch.erf(alpha / math.sqrt(2)))
    pdf = torch.exp(-0.5 * alpha * alpha) / math.sqrt(2 * math.pi)
    mean = mu1 * cdf + mu2 * (1 - cdf) + theta * pdf
    second_moment = (mu1 * mu1 + var1) * cdf + (mu2 * mu2 + var2) * (1 - cdf) + (mu1 + mu2) * theta * pdf
    return Moments(mean, (second_moment - mean * mean).clamp_min(0))


def max_pool_moments(x: Moments, window: int) -> Moments:
    """Max over a window of ``window`` independent inputs with the moments x: Clark's rule
    applied pairwise, the running maximum (taken as Gaussian) paired with the next input. **[R]**"""
    result = x
    for _ in range(window - 1):
        result = clark_max_moments(result, x)
    return result


def linear_moments(weight: torch.Tensor, bias: torch.Tensor | None, x: Moments, groups: int = 1) -> Moments:
    """A conv or linear layer: μ′ = ΣWμ + b, v′ = ΣW²v over input channels and taps. **[R]**"""
    out_channels = weight.shape[0]
    taps = weight.flatten(2) if weight.dim() > 2 else weight.unsqueeze(2)
    w1 = taps.sum(2).view(groups, out_channels // groups, -1)
    w2 = taps.square().sum(2).view(groups, out_channels // groups, -1)
    mean = torch.bmm(w1, x.mean.view(groups, -1, 1)).reshape(out_channels)
    var = torch.bmm(w2, x.var.view(groups, -1, 1)).reshape(out_channels)
    return Moments(mean if bias is None else mean + bias, var)


def dataset_moments(dataset: Dataset, batch_size: int = 512) -> Moments:
    """Per-channel mean and (population) variance of a dataset's inputs, over samples and positions.

    float32 throughout, numerically stable: each batch's mean and variance by ``torch.var_mean``
    (centred on the batch's own mean), merged with Chan et al.'s parallel combination
    (M2 = M2_a + M2_b + δ²·n_a·n_b/n), so no sum of squares of raw values is ever formed.
    """
    mean = m2 = None
    count = 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        x = (batch[0] if isinstance(batch, (tuple, list)) else batch).float()
        dims = [0, *range(2, x.dim())]
        var_b, mean_b = torch.var_mean(x, dims, correction=0)
        n_b = x.numel() // x.shape[1]
        if mean is None or m2 is None:
            mean, m2 = mean_b, var_b * n_b
        else:
            total = count + n_b
            delta = mean_b - mean
            mean = mean + delta * (n_b / total)
            m2 = m2 + var_b * n_b + delta.square() * (count * n_b / total)
        count += n_b
    if mean is None or m2 is None:
        raise ValueError("the training set is empty: no input statistics to propagate")
    return Moments(mean, (m2 / count).clamp_min(0))


class _Tracer(fx.Tracer):
    """Keeps norm layers whole: those with a moment map of their own, and batch norms."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return hasattr(m, "propagate") or isinstance(m, _BatchNorm) or super().is_leaf_module(m, module_qualified_name)


_RELU = {F.relu, torch.relu, torch.relu_}
_ADD = {operator.add, operator.iadd, torch.add}
_MAX_POOL = {F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d}
_SUPPORTED = ("conv/linear, the norm layers, ReLU/LeakyReLU, avg/adaptive-avg/max pooling, spatial mean, "
              "spatial slicing, channel padding, flatten/view/reshape, dropout/identity, residual add and "
              "scalar add/multiply")


class MomentPropagator:
    """Interprets a network's ``torch.fx`` graph on per-channel (mean, variance) pairs.

    Built once (tracing plus one shape pass on ``example`` in eval mode); each call propagates
    the given input moments with the network's current parameters, so gradients reach every
    weight through the statistics the analytic norms bind.
    """

    def __init__(self, net: nn.Module, example: torch.Tensor) -> None:
        try:
            self.graph = _Tracer().trace(net)
        except Exception as err:
            raise UnsupportedOpError(f"analytic normalization needs a torch.fx-traceable model: {err}") from err
        inputs = [n for n in self.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise UnsupportedOpError(f"analytic normalization needs a model with one input; got {len(inputs)}")
        self.net = net
        was_training = net.training
        net.eval()
        device = next((p.device for p in net.parameters()), example.device)
        try:
            with torch.no_grad():
                ShapeProp(fx.GraphModule(net, self.graph)).propagate(example.to(device))
        finally:
            net.train(was_training)

    def __call__(self, x: Moments) -> Moments:
        env: dict[fx.Node, Any] = {}
        for node in self.graph.nodes:
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "output":
                return env[node.args[0]]
            else:
                args = fx.node.map_arg(node.args, env.__getitem__)
                kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
                env[node] = self._step(node, args, kwargs)
        raise UnsupportedOpError("the traced model has no output")

    # -- one node -------------------------------------------------------------------------------

    def _step(self, node: fx.Node, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        if node.op == "call_module":
            return self._module(node, self.net.get_submodule(node.target), args[0])
        if node.op == "call_method" and node.target in ("size", "dim"):
            shape = _shape(node.args[0])
            return len(shape) if node.target == "dim" else shape if not args[1:] else shape[args[1]]
        if node.op == "call_function" and node.target is getattr and args[1] == "shape":
            return _shape(node.args[0])
        if not _has_moments((args, kwargs)):  # arithmetic on sizes and other constants
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            if node.op == "call_function":
                return node.target(*args, **kwargs)
        if node.op == "call_function":
            return self._function(node, node.target, args, kwargs)
        if node.op == "call_method":
            return self._method(node, node.target, args, kwargs)
        raise _unsupported(node, f"{node.op} {node.target}")

    def _module(self, node: fx.Node, m: nn.Module, x: Moments) -> Moments:
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return linear_moments(m.weight, m.bias, x, m.groups)
        if isinstance(m, nn.Linear):
            return linear_moments(m.weight, m.bias, x)
        if hasattr(m, "propagate"):
            return m.propagate(x)
        if isinstance(m, _BatchNorm):  # standardizes exactly, then its affine
            return _standardized(m.weight, m.bias, x)
        if isinstance(m, nn.ReLU):
            return relu_moments(*x)
        if isinstance(m, nn.LeakyReLU):
            return leaky_relu_moments(*x, m.negative_slope)
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            return _pooled(x, _kernel_size(m.kernel_size, len(_shape(node)) - 2))
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            return _pooled(x, _spatial(node.args[0]) / _spatial(node))
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            if m.return_indices:
                raise _unsupported(node, f"module {type(m).__name__} ('{node.target}') with return_indices=True",
                                   "its indices are not activations")
            return max_pool_moments(x, _kernel_size(m.kernel_size, len(_shape(node)) - 2))
        if isinstance(m, nn.Flatten):
            return self._reshaped(node, x)
        if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
            return x
        raise _unsupported(node, f"module '{node.target}' of type {type(m).__name__}",
                           f"{type(m).__name__} has no moment rule")

    def _function(self, node: fx.Node, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        if fn in _RELU:
            return relu_moments(*args[0])
        if fn is F.leaky_relu:
            slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
            return leaky_relu_moments(*args[0], slope)
        if fn in _ADD:
            return _added(node, args[0], args[1])
        if fn is operator.mul:
            return _scaled(node, args[0], args[1])
        if fn is operator.truediv and not isinstance(args[1], Moments):
            return _scaled(node, args[0], 1 / args[1])
        if fn is torch.flatten:
            return self._reshaped(node, args[0])
        if fn is F.dropout:
            return args[0]
        if fn in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
            size = args[1] if len(args) > 1 else kwargs["kernel_size"]
            return _pooled(args[0], _kernel_size(size, len(_shape(node)) - 2))
        if fn in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
            return _pooled(args[0], _spatial(node.args[0]) / _spatial(node))
        if fn is operator.getitem and isinstance(args[0], Moments):
            return _sliced(node, args[0], args[1])
        if fn is F.pad:
            return _padded(node, args[0], args[1] if len(args) > 1 else kwargs["pad"],
                           args[2] if len(args) > 2 else kwargs.get("mode", "constant"),
                           args[3] if len(args) > 3 else kwargs.get("value", None))
        if fn in _MAX_POOL and not kwargs.get("return_indices", False):
            size = args[1] if len(args) > 1 else kwargs["kernel_size"]
            return max_pool_moments(args[0], _kernel_size(size, len(_shape(node)) - 2))
        raise _unsupported(node, f"function {getattr(fn, '__name__', fn)}")

    def _method(self, node: fx.Node, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        if name == "relu":
            return relu_moments(*args[0])
        if name in ("flatten", "view", "reshape"):
            return self._reshaped(node, args[0])
        if name == "contiguous":
            return args[0]
        if name == "add":
            return _added(node, args[0], args[1])
        if name == "mean":
            in_shape = _shape(node.args[0])
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            dims = [dims] if isinstance(dims, int) else list(dims or ())
            dims = [d % len(in_shape) for d in dims]
            if not dims or min(dims) < 2:
                raise _unsupported(node, "a mean over the batch or channel dimension")
            return _pooled(args[0], math.prod(in_shape[d] for d in dims))
        raise _unsupported(node, f"method .{name}()")

    def _reshaped(self, node: fx.Node, x: Moments) -> Moments:
        """Flatten, view or reshape: channels kept, or N×C×H×W flattened to N×(C·H·W) features."""
        before, after = _shape(node.args[0]), _shape(node)
        if len(after) >= 2 and after[:2] == before[:2]:
            return x
        if len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:]):
            repeat = math.prod(before[2:])
            return Moments(x.mean.repeat_interleave(repeat), x.var.repeat_interleave(repeat))
        raise _unsupported(node, f"a reshape from {tuple(before)} to {tuple(after)} that mixes channels")


def _shape(node: Any) -> torch.Size:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if meta is None or not hasattr(meta, "shape"):
        raise UnsupportedOpError(f"analytic normalization: no tensor shape recorded for {node}")
    return meta.shape


def _spatial(node: fx.Node) -> int:
    return math.prod(_shape(node)[2:])


def _kernel_size(size: int | Sequence[int], dims: int) -> int:
    return size**dims if isinstance(size, int) else math.prod(size)


def _has_moments(value: Any) -> bool:
    if isinstance(value, Moments):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_moments(v) for v in value)
    if isinstance(value, dict):
        return any(_has_moments(v) for v in value.values())
    return False


def _standardized(weight: torch.Tensor | None, bias: torch.Tensor | None, x: Moments) -> Moments:
    ones = torch.ones_like(x.mean)
    mean = torch.zeros_like(x.mean) if bias is None else bias
    return Moments(mean, ones if weight is None else weight.square())


def _sliced(node: fx.Node, x: Moments, index: Any) -> Moments:
    """x[:, :, a:b:s, ...]: spatial slicing and subsampling keep every channel's moments."""
    index = index if isinstance(index, tuple) else (index,)
    full = slice(None)
    if len(index) >= 2 and index[0] == full and index[1] == full and \
            all(isinstance(i, slice) or i is Ellipsis for i in index[2:]):
        return x
    raise _unsupported(node, f"indexing {index}", "only spatial slicing x[:, :, ...] keeps channels apart")


def _padded(node: fx.Node, x: Moments, pad: Sequence[int], mode: str, value: float | None) -> Moments:
    """F.pad: constant channels added on either side (mean ``value``, variance 0); spatial padding
    is ignored, as a convolution's zero padding is."""
    dims = len(_shape(node)) - 2  # spatial dims; pad pairs run from the last dim backwards
    if len(pad) > 2 * (dims + 1):
        raise _unsupported(node, "a pad of the batch dimension", "samples would be added")
    before, after = (tuple(pad[2 * dims:2 * dims + 2]) + (0, 0))[:2]
    if before == after == 0:
        return x
    if mode != "constant":
        raise _unsupported(node, f"a {mode!r} pad of the channels", "only constant channels have known moments")
    fill = float(value or 0.0)
    mean = F.pad(x.mean, (before, after), value=fill)
    return Moments(mean, F.pad(x.var, (before, after)))


def _pooled(x: Moments, count: float) -> Moments:
    return Moments(x.mean, x.var / count)


def _added(node: fx.Node, a: Any, b: Any) -> Moments:
    if isinstance(a, Moments) and isinstance(b, Moments):  # independent summands
        return Moments(a.mean + b.mean, a.var + b.var)
    x, c = (a, b) if isinstance(a, Moments) else (b, a)
    if not isinstance(c, (int, float)):
        raise _unsupported(node, f"an addition of {type(c).__name__}")
    return Moments(x.mean + c, x.var)


def _scaled(node: fx.Node, a: Any, b: Any) -> Moments:
    x, c = (a, b) if isinstance(a, Moments) else (b, a)
    if isinstance(c, Moments) or not isinstance(c, (int, float)):
        raise _unsupported(node, "a product of activations")
    return Moments(x.mean * c, x.var * (c * c))


def _unsupported(node: fx.Node, what: str, why: str = "it has no moment rule") -> UnsupportedOpError:
    return UnsupportedOpError(
        f"analytic normalization cannot propagate moments through {what} (graph node '{node.name}'): "
        f"{why}; supported: {_SUPPORTED}"
    )
