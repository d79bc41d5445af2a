"""Baseline norm layers: thin wrappers over torch's own layers, in timm's ``norm_layer`` convention.

Each class takes ``num_features`` first and accepts extra keyword arguments, because model
builders pass more than the norm needs: timm passes ``device``/``dtype``, mmcv passes ``eps``.
``eps``, ``device`` and ``dtype`` are honoured; anything else is ignored. The forward passes are
torch's, so these layers compute exactly what the torch layers they wrap compute.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BatchNorm", "GroupNorm", "Identity", "InstanceNorm", "LayerNorm"]


def _factory_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``device``/``dtype`` a builder passed, if any; the other extra keywords are dropped."""
    return {k: kwargs[k] for k in ("device", "dtype") if k in kwargs}


class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalization (Ioffe & Szegedy, 2015) for N×C, N×C×L and N×C×H×W inputs alike.

    One class for every rank, so that a model needs a single ``norm_layer`` whether it ends in
    an MLP or not; the forward is ``_BatchNorm.forward``, the same as ``nn.BatchNorm1d``/``2d``.
    """

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.1,
        eps: float = 1e-5,
        affine: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine, **_factory_kwargs(kwargs))

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

    ``groups`` (default 32) is an upper bound: the layer uses the largest divisor of
    ``num_features`` not above it, so one setting works for every width in a model.
    """

    def __init__(
        self,
        num_features: int,
        groups: int = 32,
        eps: float = 1e-5,
        affine: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            _clip_groups(num_features, groups),
            num_features,
            eps=eps,
            affine=affine,
            **_factory_kwargs(kwargs),
        )


class LayerNorm(nn.Module):
    """Layer normalization (Ba et al., 2016) over all non-batch dims, with a per-channel affine.

    Equals ``F.layer_norm(x, x.shape[1:])`` followed by ``x * weight[c] + bias[c]``: statistics
    per sample over (C, H, W), or over C for N×C input. The affine is per channel (not per
    element as in ``nn.LayerNorm``) so the layer does not depend on the spatial size. That is
    exactly ``F.group_norm`` with one group.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, **kwargs: Any) -> None:
        super().__init__()
        factory_kwargs = _factory_kwargs(kwargs)
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features, **factory_kwargs))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory_kwargs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class InstanceNorm(nn.InstanceNorm2d):
    """Instance normalization (Ulyanov et al., 2016): per-sample, per-channel spatial statistics.

    Always ``affine=True`` and ``track_running_stats=False`` (train and eval compute the same).
    Only N×C×H×W: an N×C input has no spatial extent to take statistics over, and torch would
    read an unbatched C×H×W input silently, so both are refused.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(
            num_features, eps=eps, affine=True, track_running_stats=False, **_factory_kwargs(kwargs)
        )

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(
                "instancenorm needs N×C×H×W input (per-sample spatial statistics); "
                f"got shape {tuple(input.shape)}"
            )


class Identity(nn.Identity):
    """No normalization (``none``): the layer factory signature, with nothing to compute."""

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__()
