"""The operation the batch-norm variants share: a per-sample, per-channel affine map of x whose
coefficients are a function of x's own per-sample moments.

RBN, IEBN, Unified BN's normalization, BN with the condensation rule on device, and switchable
norm all compute y = a·(x − m) + c, where m is each sample's channel mean and a, c (one value per
sample and channel, or per channel) depend on the per-sample means and variances of x, the norm's
parameters and its running statistics.

Written for GPUs as well as CPUs, and for ``torch.compile``:

* the full-size work is a few fused passes: the per-sample moments (:class:`_Moments`, an
  autograd Function: forward one ``torch.var_mean`` pass on a GPU, backward one pass) and the
  affine (:func:`moment_affine`: contiguous NCHW input through torch's batch-norm kernels on a
  free 1×(N·C)×H×W view, forward one pass, backward one fused reduction + one pass; other
  layouts through :class:`_Affine`, broadcast ``addcmul``). No reshape copies a channels_last
  tensor, and no output is a view an in-place activation could not modify;
* the N×C-sized coefficient algebra between them is ordinary autograd: nothing runs twice and no
  autograd call happens inside a backward;
* no host-device synchronisation: the choice between batch and running statistics may be a
  0-dim bool tensor (``batch_stats``), applied with ``torch.where``.

Half-precision input (autocast): statistics and coefficients in float32, as torch's BN; the
output and the input gradient in the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

__all__ = ["Coefficients", "batch_channel_moments", "batch_moments", "channel_moments", "moment_affine", "moment_norm",
           "sample_moments", "select", "stat_dtype"]

#: ``coefficients(mean, var, *params, running_mean=, running_var=, eps=, batch_stats=) -> (a, c)`` for
#: y = a·(x − mean) + c: mean and var are the per-sample moments, N×C×1… (var is None when not
#: asked for); a and c broadcast to N×C×1…. A function that wants the statistics as constants
#: detaches the batch statistics it derives. ``batch_stats`` is a bool or a 0-dim bool tensor
#: (a decision taken on the device): use :func:`select` to apply it.
Coefficients = Callable[..., tuple[torch.Tensor, torch.Tensor]]

_HALF = (torch.float16, torch.bfloat16)


def stat_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype statistics of x are computed in: float32 for half precision, else x's own."""
    return torch.float32 if x.dtype in _HALF else x.dtype


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


def channel_moments(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of x over ``dims`` (kept as size-1 dims), in :func:`stat_dtype`.

    On a GPU, float32/64: one Welford pass (``torch.var_mean``); half precision: two reductions
    that read x once each and accumulate in float32 (no float32 copy of x), the variance as
    E[x²] − mean² (float32 keeps it accurate for |mean|/std up to ~10³). On the CPU, where
    ``torch.var_mean``'s kernel is several times slower than a sum: the mean, then the mean square
    of x − mean (two passes, centred, as torch's CPU batch norm computes it).
    """
    count = math.prod([x.shape[d] for d in dims])
    if x.device.type != "cpu":
        if x.dtype not in _HALF:
            var, mean = torch.var_mean(x, dims, keepdim=True, correction=0)
            return mean, var
        mean = torch.mean(x, dims, keepdim=True, dtype=torch.float32)
        square = torch.linalg.vector_norm(x, 2, dims, keepdim=True, dtype=torch.float32).square()
        return mean, (square / count - mean.square()).clamp_min(0)
    mean = torch.mean(x, dims, keepdim=True, dtype=stat_dtype(x))
    centered = x - mean
    if centered.is_contiguous():
        return mean, torch.linalg.vector_norm(centered, 2, dims, keepdim=True).square() / count
    return mean, torch.sum(centered * centered, dims, keepdim=True) / count


def batch_channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance of N×C×… x, as C-vectors in :func:`stat_dtype`. On
    the CPU from the per-sample moments (reductions over contiguous memory are the fast ones
    there), combined exactly (:func:`batch_moments`); elsewhere one reduction over (N, H, W…)."""
    if x.device.type == "cpu" and x.dim() > 2:
        mean, var = batch_moments(*channel_moments(x, _spatial(x)))
    else:
        mean, var = channel_moments(x, (0, *_spatial(x)))
    return mean.flatten(), var.flatten()


def _per_channel_bn(x: torch.Tensor, mean: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a·(x − mean) + c for contiguous N×C×… x and a, c, mean broadcasting to N×C×1…: torch's batch
    norm in inference mode on x viewed (no copy) as 1×(N·C)×…, every sample and channel a channel
    of its own (variance 1, eps 0). One fused pass; autograd reaches x, a and c, not mean."""
    n, channels = x.shape[:2]
    per_sample = (n, channels) + (1,) * (x.dim() - 2)
    flat = [t.expand(per_sample).reshape(-1) for t in (mean, a, c)]
    y = torch.nn.functional.batch_norm(x.view(1, n * channels, *x.shape[2:]), flat[0],
                                       torch.ones_like(flat[0]), flat[1], flat[2], False, 0.0, 0.0)
    # Back to x's shape without a view autograd tracks: an in-place activation on a tracked view
    # would make the backward copy the whole gradient (CopySlices); nothing else reads y.
    return torch.ops.aten._unsafe_view(y, x.shape)


class _Moments(torch.autograd.Function):
    """(mean, biased variance) of x per sample and channel, N×C×1…, in :func:`stat_dtype`.

    Backward: dL/dx = dL/dmean/n + dL/dvar·2(x − mean)/n, one ``addcmul`` over x.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.device.type in ("cpu", "cuda"):  # autocast must not cast x to float32 for the norm ops
            with torch.autocast(x.device.type, enabled=False):
                mean, var = channel_moments(x, _spatial(x))
        else:  # the meta device (build checks) has no autocast
            mean, var = channel_moments(x, _spatial(x))
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx: Any, grad_mean: torch.Tensor, grad_var: torch.Tensor) -> torch.Tensor:
        x, mean = ctx.saved_tensors
        count = math.prod(x.shape[2:])
        slope = grad_var * (2.0 / count)
        if x.is_contiguous():  # (x − mean)·slope + dL/dmean/n in one batch-norm pass
            return _per_channel_bn(x, mean, slope, grad_mean / count)
        return torch.addcmul(grad_mean / count - slope * mean, x, slope).to(x.dtype)


class _Affine(torch.autograd.Function):
    """y = a·(x − mean) + c with a, c, mean broadcasting to N×C×1…: one ``addcmul`` pass, a fresh
    tensor in x's dtype and memory layout.

    Backward: dL/dx = g·a; dL/da = Σ g·(x − mean), dL/dc = Σ g over the positions (then summed to
    the shapes of a and c), dL/dmean = −a·Σ g. For float32/64 input Σ g·(x − mean) is taken as
    Σ g·x − mean·Σ g (mean is the sample's own mean, so the two stay of the order of the result
    times |mean|/std; torch's mean/var autograd does the same); half precision centres first.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mean: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, mean, a)
        ctx.c_shape = c.shape
        return torch.addcmul(c - a * mean, x, a).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, mean, a = ctx.saved_tensors
        dims = _spatial(x)
        grad_x = grad_mean = grad_a = grad_c = None
        sum_g = torch.sum(grad, dims, keepdim=True, dtype=a.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = (grad * a).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_mean = -(a * sum_g).sum_to_size(mean.shape)
        if ctx.needs_input_grad[2]:
            if x.dtype in _HALF:
                moment = torch.sum(grad * (x - mean), dims, keepdim=True, dtype=a.dtype)
            else:
                moment = torch.sum(grad * x, dims, keepdim=True, dtype=a.dtype) - mean * sum_g
            grad_a = moment.sum_to_size(a.shape)
        if ctx.needs_input_grad[3]:
            grad_c = sum_g.sum_to_size(ctx.c_shape)
        return grad_x, grad_mean, grad_a, grad_c


def sample_moments(x: torch.Tensor, need_var: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample, per-channel mean and biased variance of x over its remaining dims (N×C×1…,
    :func:`stat_dtype`), differentiable. N×C input: the values themselves, variance 0."""
    if x.dim() == 2:
        mean = x.to(stat_dtype(x))
        return mean, (torch.zeros_like(mean) if need_var else None)
    if need_var:
        return _Moments.apply(x)
    return torch.mean(x, _spatial(x), keepdim=True, dtype=stat_dtype(x)), None


def moment_affine(x: torch.Tensor, mean: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a·(x − mean) + c in x's dtype, with gradients to x, mean, a and c; never a view a custom
    Function made, so an in-place activation may follow.

    Contiguous (NCHW) input: x viewed, without a copy, as 1×(N·C)×H×W, where every sample and
    channel is a channel of its own, goes through torch's batch norm in inference mode with mean
    ``mean``, variance 1, eps 0, weight a and bias c: one fused kernel forward, and torch's fused
    backward (the input gradient g·a and the sums Σg·(x − mean), Σg in one go), on CPU and GPU
    alike. Batch norm gives its running mean no gradient, so the mean enters as a constant and its
    gradient, −a·Σg, reaches it through the bias c − a·(mean − mean.detach()) (zero in value).
    The result is reshaped back by ``_unsafe_view``, which autograd does not track as a view.
    Other layouts (channels_last) go through :class:`_Affine` (broadcast ``addcmul``).
    """
    if x.dim() == 2:  # mean is x itself: small, plain autograd
        return torch.addcmul(c, a, x.to(mean.dtype) - mean).to(x.dtype)
    if not x.is_contiguous():
        return _Affine.apply(x, mean, a, c)
    constant = mean.detach()
    return _per_channel_bn(x, constant, a, c - a * (mean - constant))


def batch_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and biased batch variance per channel (1×C×1…) from per-sample moments of equal
    counts: the mean of the variances plus the variance of the means."""
    batch_mean = mean.mean(0, keepdim=True)
    return batch_mean, var.mean(0, keepdim=True) + (mean - batch_mean).square().mean(0, keepdim=True)


def select(batch_stats: bool | torch.Tensor, batch: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
    """``batch`` when batch statistics are chosen, else ``running``: a Python branch for a bool,
    ``torch.where`` on the device for a 0-dim bool tensor."""
    if isinstance(batch_stats, bool):
        return batch if batch_stats else running
    return torch.where(batch_stats, batch, running)


def moment_norm(x: torch.Tensor, coefficients: Coefficients, *params: torch.Tensor,
                batch_stats: bool | torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                momentum: float, eps: float, tracked: Callable[[torch.Tensor], torch.Tensor] | None = None,
                need_var: bool | None = None) -> torch.Tensor:
    """A norm's output a·(x − mean) + c with
    ``a, c = coefficients(mean, var, *params, running_mean=, running_var=, eps=, batch_stats=)``
    from the per-sample moments of x (:func:`sample_moments`).

    ``batch_stats`` (a bool, or a 0-dim bool tensor decided on the device): where true, the
    running statistics then move towards the batch statistics (PyTorch momentum, unbiased
    variance) of ``tracked(per-sample mean)``, by default of x itself; where false they stay. The
    variance pass runs when batch statistics may be used or ``need_var`` asks for it.
    """
    if x.dim() < 2:
        raise ValueError(f"expected N×C or N×C×… input; got shape {tuple(x.shape)}")
    count = x.numel() // x.shape[1]
    maybe_batch = batch_stats is not False
    if maybe_batch and count < 2:
        raise ValueError(f"expected more than 1 value per channel when training; got input of shape "
                         f"{tuple(x.shape)}")
    device_choice = isinstance(batch_stats, torch.Tensor)
    # A decision on the device reads the running statistics in the forward and moves them after it:
    # the coefficients get copies, so autograd never sees the in-place update.
    bound = partial(coefficients, running_mean=running_mean.clone() if device_choice else running_mean,
                    running_var=running_var.clone() if device_choice else running_var, eps=eps,
                    batch_stats=batch_stats)
    mean, var = sample_moments(x, need_var=maybe_batch or bool(need_var))
    y = moment_affine(x, mean, *bound(mean, var, *params))
    if maybe_batch:
        with torch.no_grad():
            batch_mean, batch_var = batch_moments(mean if tracked is None else tracked(mean), var)
            batch_mean = batch_mean.flatten().to(running_mean.dtype)
            batch_var = (batch_var.flatten() * (count / (count - 1))).to(running_var.dtype)
            if device_choice:
                rate = batch_stats.to(running_mean.dtype) * momentum
                running_mean.lerp_(batch_mean, rate)
                running_var.lerp_(batch_var, rate)
            else:
                running_mean.lerp_(batch_mean, momentum)
                running_var.lerp_(batch_var, momentum)
    return y
