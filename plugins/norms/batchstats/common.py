"""Helpers shared by the batch-statistics norms: the BN reference, input checks, and a way to run
a trained network on batch statistics without moving its running averages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from harness_plugins.norms.baselines import BatchNorm

#: The layers whose statistics the evaluation protocols of this family switch.
BN_LAYERS = _BatchNorm


def batchnorm_reference(num_features: int, *, momentum: float, eps: float, **layer_only: Any) -> BatchNorm:
    """Plain BN with the norm's momentum and eps: the module a fresh layer must match in training.
    The layer's other parameters (``stats_grad``, renorm's limits, which ramp from BN's) do not
    change what a fresh layer computes, so the reference takes and leaves them."""
    return BatchNorm(num_features, momentum=momentum, eps=eps)


def reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The dims batch statistics reduce over: every dim but the channel dim 1."""
    return (0, *range(2, x.dim()))


def check_batch(x: torch.Tensor, name: str) -> int:
    """The number of values per channel; batch statistics need more than one."""
    if x.dim() < 2:
        raise ValueError(f"{name} needs N×C or N×C×H×W input; got shape {tuple(x.shape)}")
    n = x.numel() // x.shape[1]
    if n < 2:
        raise ValueError(f"{name} needs more than 1 value per channel in training (batch statistics); "
                         f"got shape {tuple(x.shape)}")
    return n


@contextmanager
def batch_statistics(net: nn.Module) -> Iterator[list[_BatchNorm]]:
    """Every BN layer normalizes with its batch's own statistics while the rest of the network
    stays in eval mode; momentum 0 keeps the running statistics, and the step counters, modes and
    momenta are restored on exit."""
    layers = [m for m in net.modules() if isinstance(m, BN_LAYERS)]
    modes = [(m, m.training) for m in net.modules()]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in layers]
    net.eval()
    for m in layers:
        m.train()
        m.momentum = 0.0
    try:
        yield layers
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        for m, training in modes:
            m.training = training
