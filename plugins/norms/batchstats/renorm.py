"""Batch Renormalization (Ioffe, 2017): BN whose training output is corrected towards the
running statistics, so that training and inference normalize alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness_plugins.common.channels import Device
from harness_plugins.norms.baselines import BatchNorm
from harness_plugins.norms.ops import batch_channel_moments

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

    One ``F.batch_norm`` call: (x̂·r + d)·γ + β is BN with weight γ·r and bias β + γ·d. r and d
    come from a detached ``torch.var_mean`` of the batch and are computed on the device, limits
    included: the training step never synchronises with the host.
    """

    def __init__(self, num_features: int, *, r_max: float, d_max: float, warmup_steps: int, momentum: float,
                 eps: float, device: Device = None, dtype: torch.dtype | None = None) -> None:
        if r_max < 1 or d_max < 0 or warmup_steps < 0:
            raise ValueError(f"batch_renorm needs r_max >= 1, d_max >= 0, warmup_steps >= 0; "
                             f"got {r_max}, {d_max}, {warmup_steps}")
        super().__init__(num_features, momentum=momentum, eps=eps, device=device, dtype=dtype)
        self.r_max = r_max
        self.d_max = d_max
        self.warmup_steps = warmup_steps

    def limits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_max, d_max) at the current step, as 0-dim tensors on the layer's device."""
        step = self.num_batches_tracked.to(self.running_var.dtype)
        ramp = (step / self.warmup_steps).clamp(max=1.0) if self.warmup_steps else torch.ones_like(step)
        return 1.0 + (self.r_max - 1.0) * ramp, self.d_max * ramp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        check_batch(x, "batch_renorm")
        r_max, d_max = self.limits()
        with torch.no_grad():  # r and d: constants, from the running statistics before this step's update
            mean, var = batch_channel_moments(x.detach())
            sigma = (self.running_var + self.eps).sqrt()
            r = ((var + self.eps).sqrt() / sigma).clamp(r_max.reciprocal(), r_max).to(self.running_var.dtype)
            d = ((mean - self.running_mean) / sigma).clamp(-d_max, d_max).to(self.running_var.dtype)
        self.num_batches_tracked.add_(1)
        if self.weight is None:
            weight, bias = r, d
        else:
            weight, bias = self.weight * r, torch.addcmul(self.bias, self.weight, d)
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, True, self.momentum, self.eps)
