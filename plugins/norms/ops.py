"""A fused operation the batch-norm variants share: a per-sample, per-channel affine map of x whose
coefficients are a function of x's own per-sample moments.

RBN, IEBN, Unified BN's normalization, Unsupervised BN with constant statistics,
batch renorm and switchable norm all compute y = a·(x − m) + c, where m is each sample's channel
mean and a, c (one value per sample and channel) depend on the per-sample means and variances
of x, the norm's parameters and its running statistics. Written as separate torch ops, each
intermediate costs a full pass over N×C×H×W memory in the forward and again in the backward,
and a norm ends up at 2-3x torch's fused BN on a CPU. :func:`moment_affine` needs about the
passes BN needs: forward, the moments and the output; backward, one reduction pass and one pass
for the input gradient; the N×C-sized algebra between is differentiated by autograd.
``benchmarks/norm_cost.py`` measures the result.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

#: ``coefficients(mean, var, *params) -> (a, c)`` for y = a·(x − mean) + c: mean and var are
#: N×C×1… (var is None when not asked for); a and c broadcast to N×C×1…. Centred on each sample's
#: own mean, the backward's sums stay free of cancellation (torch's BN sums g·(x − μ) likewise);
#: a function that wants the statistics as constants detaches the batch statistics it derives, not
#: ``mean``. It must be pure: it runs again in the backward.
Coefficients = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as an (N·C)×(H·W…) matrix: one row per sample and channel."""
    return x.reshape(x.shape[0] * x.shape[1], -1)


def _column(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A tensor broadcasting to N×C×1… as an (N·C)×1 column. Elementwise work runs on the row
    matrix: torch's CPU kernels broadcast a column over contiguous rows several times faster than
    an N×C×1×1 tensor over N×C×H×W, and ``addcmul`` is slower still than a multiply and an add."""
    return v.expand(x.shape[0], x.shape[1], *([1] * (x.dim() - 2))).reshape(-1, 1)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An N·C vector shaped N×C×1… to broadcast against x."""
    return v.view(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))


class _MomentAffine(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coefficients: Coefficients, need_var: bool,
                *params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows = _rows(x)
        if rows.dtype in (torch.float16, torch.bfloat16):  # statistics in float32, as torch's BN
            rows = rows.float()
        mean = rows.mean(1, keepdim=True)
        differentiable = any(ctx.needs_input_grad)
        centered = rows - mean if need_var or differentiable else None
        var = None
        if need_var:  # about the mean, in two passes, as torch's BN does
            var = _per_sample(torch.linalg.vector_norm(centered, dim=1).square_().div_(rows.shape[1]), x)
        mean = _per_sample(mean, x)
        a, c = coefficients(mean, var, *params)
        a, c = _column(a, x), _column(c, x)
        if centered is None:
            y = (rows * a).add_(c - a * mean.reshape(-1, 1))
        else:  # centered is saved for the backward, or else a temporary that can take the output
            y = (centered * a if differentiable else centered.mul_(a)).add_(c)
        if differentiable:
            ctx.coefficients = coefficients
            ctx.save_for_backward(centered, mean, var, *params)
        ctx.mark_non_differentiable(mean, *([] if var is None else [var]))
        return y.view(x.shape).to(x.dtype), mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        centered, mean, var, *params = ctx.saved_tensors
        # Rerun the N×C-sized coefficient algebra with autograd, fed the gradients of a and c.
        moments = [mean.detach().requires_grad_()] + ([] if var is None else [var.detach().requires_grad_()])
        leaves = [p.detach().requires_grad_(ctx.needs_input_grad[3 + i]) for i, p in enumerate(params)]
        with torch.enable_grad():
            a, c = ctx.coefficients(moments[0], None if var is None else moments[1], *leaves)
        grad_rows = grad.reshape(centered.shape).to(centered.dtype)
        grad_sum = _per_sample(grad_rows.sum(1), grad)
        grad_a = _per_sample(torch.linalg.vecdot(grad_rows, centered), grad).sum_to_size(a.shape)
        targets = moments + [p for p in leaves if p.requires_grad]
        outputs = [(t, g) for t, g in ((a, grad_a), (c, grad_sum.sum_to_size(c.shape))) if t.requires_grad]
        found = iter(torch.autograd.grad([t for t, _ in outputs], targets, [g for _, g in outputs], allow_unused=True)
                     if outputs else [None] * len(targets))
        grad_mean, grad_var = next(found), (next(found) if var is not None else None)
        grad_params = [next(found) if p.requires_grad else None for p in leaves]
        grad_x = None
        if ctx.needs_input_grad[0]:
            # y = a·(x − mean) + c: dL/dx = g·a + (dL/dmean)/count + dL/dvar·2(x − mean)/count,
            # where dL/dmean has the direct term −a·Σg besides what flows through a and c.
            count = centered.shape[1]
            a = _column(a.detach(), grad)
            grad_x = grad_rows * a
            offset = -a * grad_sum.reshape(-1, 1)
            if grad_mean is not None:
                offset += grad_mean.reshape(-1, 1)
            if grad_var is not None:
                grad_x.addcmul_(centered, grad_var.reshape(-1, 1), value=2.0 / count)
            grad_x.add_(offset / count)
            grad_x = grad_x.view(grad.shape).to(grad.dtype)
        return grad_x, None, None, *grad_params


def moment_affine(x: torch.Tensor, coefficients: Coefficients, *params: torch.Tensor,
                  need_var: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(a·(x − mean) + c, mean, var)`` with ``a, c = coefficients(mean, var, *params)`` from the
    per-sample, per-channel mean and biased variance of x over its remaining dims (N×C input: the
    values themselves, variance 0). Gradients reach x (through the moments too) and every param
    that requires them; the returned moments carry none (use them for running statistics).
    ``need_var=False`` skips the variance pass and passes ``None`` for it.
    """
    return _MomentAffine.apply(x, coefficients, need_var, *params)


def batch_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and biased batch variance per channel (1×C×1…) from per-sample moments of equal
    counts: the mean of the variances plus the variance of the means."""
    batch_mean = mean.mean(0, keepdim=True)
    return batch_mean, var.mean(0, keepdim=True) + (mean - batch_mean).square().mean(0, keepdim=True)


def moment_norm(x: torch.Tensor, coefficients: Coefficients, *params: torch.Tensor, batch_stats: bool,
                running_mean: torch.Tensor, running_var: torch.Tensor, momentum: float, eps: float,
                tracked: Callable[[torch.Tensor], torch.Tensor] | None = None,
                need_var: bool | None = None) -> torch.Tensor:
    """A norm's output a·(x − mean) + c through :func:`moment_affine`, with
    ``a, c = coefficients(mean, var, *params, running_mean=, running_var=, eps=, batch_stats=)``.

    With ``batch_stats`` the running statistics then move towards the batch statistics (PyTorch
    momentum, unbiased variance) of ``tracked(per-sample mean)``, by default of x itself; the
    variance pass runs when batch statistics or ``need_var`` ask for it. The running statistics
    move before the backward recomputes the coefficients: with batch statistics, coefficients
    that read them must be given copies as params instead.
    """
    count = x.numel() // x.shape[1]
    if batch_stats and count < 2:
        raise ValueError(f"expected more than 1 value per channel when training; got input of shape "
                         f"{tuple(x.shape)}")
    # The running statistics are constants here (and change in place below): bound, not saved.
    bound = partial(coefficients, running_mean=running_mean, running_var=running_var, eps=eps, batch_stats=batch_stats)
    y, mean, var = moment_affine(x, bound, *params, need_var=batch_stats or bool(need_var))
    if batch_stats:
        batch_mean, batch_var = batch_moments(mean if tracked is None else tracked(mean), var)
        with torch.no_grad():
            running_mean.lerp_(batch_mean.flatten(), momentum)
            running_var.lerp_(batch_var.flatten() * (count / (count - 1)), momentum)
    return y
