"""Baseline norm layers: thin wrappers over torch's own layers, in timm's ``norm_layer`` convention.

Each class takes ``num_features`` first, then its parameters as keywords without defaults (the
defaults are the norm's config, :mod:`harness_plugins.norms`), then ``device`` and ``dtype``.
The forward passes are torch's, so these layers compute exactly what the torch layers they wrap
compute. ``layernorm`` is timm's :class:`timm.layers.GroupNorm1` itself.
"""

from __future__ import annotations

import torch
from torch import nn

from harness_plugins.common.channels import Device

__all__ = ["BatchNorm", "GroupNorm", "Identity", "InstanceNorm"]


class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalization (Ioffe & Szegedy, 2015) for N×C, N×C×L and N×C×H×W inputs alike.

    One class for every rank, so that a model needs a single ``norm_layer`` whether it ends in
    an MLP or not; the forward is ``_BatchNorm.forward``, the same as ``nn.BatchNorm1d``/``2d``.
    ``affine=False`` is for norms that build on it (a standardization without γ, β).
    """

    def __init__(self, num_features: int, *, momentum: float, eps: float, affine: bool = True,
                 device: Device = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine, device=device, dtype=dtype)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if not 2 <= input.dim() <= 5:
            raise ValueError(
                f"batchnorm needs N×C, N×C×L, N×C×H×W or N×C×D×H×W input; got shape {tuple(input.shape)}"
            )


def _clip_groups(num_features: int, groups: int) -> int:
    """The largest divisor of ``num_features`` that is at most ``groups``."""
    if groups < 1:
        raise ValueError(f"groupnorm needs groups >= 1; got {groups}")
    return max(g for g in range(1, min(groups, num_features) + 1) if num_features % g == 0)


class GroupNorm(nn.GroupNorm):
    """Group normalization (Wu & He, 2018) with the group count clipped to fit ``num_features``.

    ``groups`` is an upper bound: the layer uses the largest divisor of ``num_features`` not
    above it, so one setting works for every width in a model.
    """

    def __init__(self, num_features: int, *, groups: int, eps: float, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(_clip_groups(num_features, groups), num_features, eps=eps, device=device, dtype=dtype)


class InstanceNorm(nn.InstanceNorm2d):
    """Instance normalization (Ulyanov et al., 2016): per-sample, per-channel spatial statistics.

    Always ``affine=True`` and ``track_running_stats=False`` (train and eval compute the same).
    Only N×C×H×W: an N×C input has no spatial extent to take statistics over, and torch would
    read an unbatched C×H×W input silently, so both are refused.
    """

    def __init__(self, num_features: int, *, eps: float, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False, device=device, dtype=dtype)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(
                "instancenorm needs N×C×H×W input (per-sample spatial statistics); "
                f"got shape {tuple(input.shape)}"
            )


class Identity(nn.Identity):
    """No normalization (``none``): the layer factory signature, with nothing to compute."""

    def __init__(self, num_features: int, *, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
