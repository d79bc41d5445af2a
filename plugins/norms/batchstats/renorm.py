"""Batch Renormalization (Ioffe, 2017): BN whose training output is corrected towards the
running statistics, so that training and inference normalize alike."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from harness_plugins.norms.baselines import BatchNorm
from harness_plugins.norms.ops import batch_moments, moment_norm

from .common import check_batch

__all__ = ["BatchRenorm"]


class BatchRenorm(BatchNorm):
    """Train: x̂ = ((x − μ_B)/σ_B)·r + d with r = clip(σ_B/σ, 1/r_max, r_max) and
    d = clip((μ_B − μ)/σ, −d_max, d_max), σ = sqrt(running_var + eps), r and d constants in
    backward. Eval: running statistics, as BN.

    The clipping limits ramp linearly from r_max = 1, d_max = 0 (plain BN) to ``r_max``,
    ``d_max`` over the first ``warmup_steps`` training steps; the step count is
    ``num_batches_tracked``, a buffer, so it survives checkpoints. r and d use the running
    statistics from before this step's update, which then follows BN's (unbiased running_var).
    """

    def __init__(self, num_features: int, r_max: float = 3.0, d_max: float = 5.0, warmup_steps: int = 1000,
                 momentum: float = 0.1, eps: float = 1e-5, **kwargs: Any) -> None:
        if r_max < 1 or d_max < 0 or warmup_steps < 0:
            raise ValueError(f"batch_renorm needs r_max >= 1, d_max >= 0, warmup_steps >= 0; "
                             f"got {r_max}, {d_max}, {warmup_steps}")
        super().__init__(num_features, momentum=momentum, eps=eps, **kwargs)
        self.r_max = r_max
        self.d_max = d_max
        self.warmup_steps = warmup_steps

    def limits(self) -> tuple[float, float]:
        """(r_max, d_max) at the current step."""
        step = int(self.num_batches_tracked)
        ramp = min(step / self.warmup_steps, 1.0) if self.warmup_steps else 1.0
        return 1.0 + (self.r_max - 1.0) * ramp, self.d_max * ramp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        check_batch(x, "batch_renorm")
        r_max, d_max = self.limits()
        self.num_batches_tracked.add_(1)
        # The correction reads the running statistics from before this step's update: passed as
        # copies, since the backward recomputes the coefficients after the update.
        return moment_norm(x, partial(_coefficients, r_max=r_max, d_max=d_max), self.weight, self.bias,
                           self.running_mean.clone(), self.running_var.clone(), batch_stats=True,
                           running_mean=self.running_mean, running_var=self.running_var, momentum=self.momentum,
                           eps=self.eps)


def _coefficients(mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  prior_mean: torch.Tensor, prior_var: torch.Tensor, *, r_max: float, d_max: float, eps: float,
                  **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """((x − μ_B)/σ_B·r + d)·γ + β as a·(x − m) + c; gradients through μ_B, σ_B, none through r
    and d."""
    batch_mean, batch_var = batch_moments(mean, var)
    shape = batch_mean.shape
    inv_std = (batch_var + eps).rsqrt()
    with torch.no_grad():
        sigma = (prior_var.view(shape) + eps).sqrt()
        r = (sigma * inv_std).reciprocal().clamp(1.0 / r_max, r_max)
        d = ((batch_mean - prior_mean.view(shape)) / sigma).clamp(-d_max, d_max)
    a = inv_std * r * weight.view(shape)
    return a, bias.view(shape) + weight.view(shape) * d + (mean - batch_mean) * a
