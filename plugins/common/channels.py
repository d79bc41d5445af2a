"""Per-channel helpers of the norm layers: one reshape of C-vectors for broadcasting, and the
parameters and buffers most norms hold per channel."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Device", "affine_parameters", "per_channel", "register_running_stats"]

#: Where a layer's parameters go: the ``device`` keyword of every layer factory.
Device = torch.device | str | None


def per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A C-vector (or length-1 vector) shaped, without a copy, to broadcast over the channel dim
    of N×C×… ``x``: 1×C for N×C, 1×C×1×1 for N×C×H×W."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def affine_parameters(num_features: int, *, device: Device = None,
                      dtype: torch.dtype | None = None) -> tuple[nn.Parameter, nn.Parameter]:
    """A per-channel affine at the identity: (weight of ones, bias of zeros)."""
    return (nn.Parameter(torch.ones(num_features, device=device, dtype=dtype)),
            nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype)))


def register_running_stats(module: nn.Module, num_features: int, *, device: Device = None,
                           dtype: torch.dtype | None = None) -> None:
    """BN's ``running_mean`` (zeros) and ``running_var`` (ones) buffers on ``module``."""
    module.register_buffer("running_mean", torch.zeros(num_features, device=device, dtype=dtype))
    module.register_buffer("running_var", torch.ones(num_features, device=device, dtype=dtype))
