"""Unsupervised Batch Normalization (Kocyigit et al., 2020): batch statistics from labeled and
unlabeled inputs together, the loss from the labeled ones alone.

The protocol makes every training batch ``(x, y, u)`` and runs ONE train-mode forward of
``cat([x, u])``, keeping the outputs of ``x``: that is the paper's two steps (update the
statistics on the combined batch, then forward the labeled part with them) in a single pass,
and it updates the running statistics once. Two naive passes would update them twice and
normalize ``x`` with labeled-only statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from harness.protocol import NormProtocol, TrialContext
from harness_plugins.common.channels import Device
from harness_plugins.common.extra_inputs import ExtraInputsBatchSampler, WithExtraInputs, collate_with_extra
from harness_plugins.norms.baselines import BatchNorm
from harness_plugins.norms.batchstats import StatsGrad, UBNConfig
from harness_plugins.norms.ops import batch_channel_moments

from .common import check_batch

__all__ = ["UnlabeledBatchSampler", "UnsupervisedBatchNorm", "UnsupervisedProtocol", "protocol"]


class UnsupervisedBatchNorm(BatchNorm):
    """BN whose training statistics the protocol computes over ``[x_labeled; x_unlabeled]``.

    ``stats_grad="detach"`` (the default, the paper's "disentangled" reading: the statistics are
    set in a step of their own, the weights updated in the next) treats the batch mean and
    variance as constants in backward; ``"full"`` back-propagates through them as BN does.
    Either way the forward values and the running-statistics update are BN's. Eval: running
    statistics.
    """

    def __init__(self, num_features: int, *, stats_grad: StatsGrad, momentum: float, eps: float,
                 device: Device = None, dtype: torch.dtype | None = None) -> None:
        if stats_grad not in ("detach", "full"):
            raise ValueError(f"stats_grad must be 'detach' or 'full'; got {stats_grad!r}")
        super().__init__(num_features, momentum=momentum, eps=eps, device=device, dtype=dtype)
        self.stats_grad = stats_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.stats_grad == "full":
            return super().forward(x)
        count = check_batch(x, "unsupervised_bn")
        self.num_batches_tracked.add_(1)
        # BN in eval mode with this batch's statistics as its (constant) statistics: torch's kernel,
        # no gradient through them; the running statistics then move as BN's do.
        with torch.no_grad():
            mean, var = batch_channel_moments(x.detach())
        y = F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)
        with torch.no_grad():
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_((var * (count / (count - 1))).to(self.running_var.dtype), self.momentum)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stats_grad={self.stats_grad}"


class UnlabeledBatchSampler(ExtraInputsBatchSampler):
    """Shuffled labeled batches, each followed by ``ratio`` unlabeled inputs per labeled one from
    a stream that passes over the unlabeled set in a fresh random order each time it is used up
    (and starts anew with each epoch, so that an epoch's batches follow from its seed alone)."""

    def __init__(self, size: int, unlabeled: int, batch_size: int, ratio: int, generator: torch.Generator) -> None:
        if unlabeled == 0:
            raise ValueError("the unlabeled set is empty")
        super().__init__(size, batch_size, generator)
        self.unlabeled = unlabeled
        self.ratio = ratio
        self._stream: Iterator[int] = iter(())

    def start_epoch(self) -> None:
        self._stream = self._passes()

    def _passes(self) -> Iterator[int]:
        while True:
            yield from torch.randperm(self.unlabeled, generator=self.generator).tolist()

    def extra(self, batch: list[int]) -> list[int]:
        return [next(self._stream) for _ in range(self.ratio * len(batch))]


class UnsupervisedProtocol(NormProtocol):
    """Batches ``(x, y, u)`` with ``len(u) == ratio * len(x)``; one forward of ``cat([x, u])``.

    ``ratio = 0`` keeps the standard loader: UBN with an empty unlabeled batch is BN.
    """

    def __init__(self, ratio: int) -> None:
        if ratio < 0:
            raise ValueError(f"ratio must be >= 0; got {ratio}")
        self.ratio = ratio

    def train_loader(self, ctx: TrialContext, batch_size: int) -> DataLoader | None:
        if self.ratio == 0:
            return None
        if ctx.splits.unlabeled is None:
            raise ValueError("unsupervised_bn needs an unlabeled split; the task provided none")
        sampler = UnlabeledBatchSampler(ctx.train_size, len(ctx.splits.unlabeled), batch_size, self.ratio,
                                        ctx.generator)
        # Workers decode the samples as the standard loader's do (the sampler draws in this process).
        return DataLoader(WithExtraInputs(ctx.splits.train, ctx.splits.unlabeled), batch_sampler=sampler,
                          collate_fn=collate_with_extra, num_workers=ctx.config.num_workers)

    def train_forward(self, net: nn.Module, inputs: torch.Tensor, extra: Any = None) -> torch.Tensor:
        if extra is None:
            return net(inputs)
        out = net(torch.cat([inputs, extra.to(device=inputs.device, dtype=inputs.dtype)]))
        return out[: len(inputs)]


def protocol(config: UBNConfig) -> UnsupervisedProtocol:
    return UnsupervisedProtocol(ratio=config.ratio)
