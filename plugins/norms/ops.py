"""Fused tensor operations the built-in norms share."""

from __future__ import annotations

from typing import Any

import torch


class _ScaleShift(torch.autograd.Function):
    """x·a + b for N×C×... x and a, b of shape N×C×1… or 1×C×1… (one fused pass), with the
    reductions of the backward done without full-size temporaries."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, a)
        ctx.b_shape = b.shape
        return torch.addcmul(b, x, a)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, a = ctx.saved_tensors
        n, c = x.shape[:2]
        grad_x = grad * a if ctx.needs_input_grad[0] else None
        grad_a = grad_b = None
        if ctx.needs_input_grad[1]:
            dot = torch.bmm(grad.reshape(n * c, 1, -1), x.reshape(n * c, -1, 1))
            grad_a = dot.view(n, c, *([1] * (x.dim() - 2))).sum_to_size(a.shape)
        if ctx.needs_input_grad[2]:
            spatial = grad.sum(dim=tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else grad
            grad_b = spatial.sum_to_size(ctx.b_shape)
        return grad_x, grad_a, grad_b


def scale_shift(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x·a + b, fused (see :class:`_ScaleShift`)."""
    return _ScaleShift.apply(x, a, b)
