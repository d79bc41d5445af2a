"""Switchable Normalization (Luo et al., 2019): each layer learns its own mixture of instance,
layer and batch statistics."""

from __future__ import annotations

import torch
from torch import nn

from harness_plugins.common.channels import Device, affine_parameters, per_channel, register_running_stats
from harness_plugins.norms.ops import batch_moments, moment_norm

__all__ = ["SwitchableNorm"]


class SwitchableNorm(nn.Module):
    """μ = Σ_k softmax(w_μ)_k μ_k and σ² = Σ_k softmax(w_σ)_k σ²_k over k ∈ {IN, LN, BN}, then
    y = γ (x − μ)/sqrt(σ² + eps) + β with a per-channel affine.

    IN statistics are per sample and channel over H, W; LN and BN statistics are derived from
    them (LN: over channels, BN: over the batch, each as mean of means and of second moments).
    All variances are biased. The six mixture scalars start equal (ones); gradients flow
    through every statistic. At eval the BN part uses running statistics (PyTorch momentum,
    unbiased ``running_var``), the IN and LN parts the sample's own. N×C×H×W input only: IN
    needs spatial positions.
    """

    def __init__(self, num_features: int, *, momentum: float, eps: float, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.weight, self.bias = affine_parameters(num_features, device=device, dtype=dtype)
        self.mean_weight = nn.Parameter(torch.ones(3, device=device, dtype=dtype))
        self.var_weight = nn.Parameter(torch.ones(3, device=device, dtype=dtype))
        register_running_stats(self, num_features, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"switchable_norm needs N×C×H×W input (IN statistics are spatial); "
                             f"got shape {tuple(x.shape)}")
        return moment_norm(x, _coefficients, self.mean_weight, self.var_weight, self.weight, self.bias,
                           batch_stats=self.training, running_mean=self.running_mean, running_var=self.running_var,
                           momentum=self.momentum, eps=self.eps, need_var=True)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def _coefficients(mean_in: torch.Tensor, var_in: torch.Tensor, mean_weight: torch.Tensor, var_weight: torch.Tensor,
                  weight: torch.Tensor, bias: torch.Tensor, *, running_mean: torch.Tensor, running_var: torch.Tensor,
                  eps: float, batch_stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """γ(x − μ)/sqrt(σ² + eps) + β as a·(x − μ_IN) + c, μ and σ² mixed from the IN (per-sample) moments and
    the LN and BN moments derived from them."""
    moment_in = var_in + mean_in.square()
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = (moment_in.mean(1, keepdim=True) - mean_ln.square()).clamp_min(0)
    if batch_stats:
        mean_bn, var_bn = batch_moments(mean_in, var_in)
    else:
        mean_bn, var_bn = (per_channel(t, mean_in).to(mean_in.dtype) for t in (running_mean, running_var))
    wm, wv = mean_weight.softmax(0), var_weight.softmax(0)
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    a = (var + eps).rsqrt() * per_channel(weight, mean_in)
    return a, per_channel(bias, mean_in) + (mean_in - mean) * a
