"""Balanced batches (Hajaj & Gillies, "Batch Normalization and the impact of batch structure"): BN trained on
batches holding exactly one sample of every class, evaluated the standard way (running
statistics) and, as an oracle, on label-balanced test batches with their own statistics.

Unequal class counts: an epoch has as many batches as the largest class has samples, and a
smaller class is topped up with samples drawn again from a fresh random order of itself. Every
batch therefore stays exactly balanced (the structure the method trains the network to expect)
and every sample is used at least once per epoch. The balanced evaluation tops up the same way,
but a top-up sample only contributes to its batch's statistics: its prediction is dropped, so
each test sample is scored exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from harness.protocol import Evaluation, NormProtocol, TrialContext
from harness_plugins.norms.batchstats import BalancedBNConfig

from .common import batch_statistics

__all__ = ["BalancedBatchSampler", "BalancedEvaluation", "BalancedProtocol", "balanced_batches", "protocol"]


def balanced_batches(labels: torch.Tensor, generator: torch.Generator) -> list[tuple[list[int], int]]:
    """One pass of balanced batches: per batch, the indices (one per class, class order) and how
    many of them are the pass's own samples rather than top-ups (those come last)."""
    classes = torch.unique(labels).tolist()
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    length = max(len(m) for m in members)
    orders = []
    for m in members:
        order = m[torch.randperm(len(m), generator=generator)].tolist()
        while len(order) < length:  # top up a smaller class with a fresh order of itself
            order += m[torch.randperm(len(m), generator=generator)].tolist()
        orders.append((order, len(m)))
    batches = []
    for k in range(length):
        own = [order[k] for order, n in orders if k < n]
        extra = [order[k] for order, n in orders if k >= n]
        batches.append((own + extra, len(own)))
    return batches


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of exactly one sample per class (batch size = number of classes), in a new random
    order every epoch: epoch ``e`` draws from a generator seeded with ``(seed, e)``, so a resumed
    run sees the same batches. ``set_epoch`` sets the epoch (mmengine calls it before each
    epoch); without it the epoch advances with every pass."""

    def __init__(self, labels: torch.Tensor, seed: int) -> None:
        self.labels = torch.as_tensor(labels)
        self.seed = seed
        self.epoch = 0
        self._length = int(torch.unique(self.labels, return_counts=True)[1].max())

    @property
    def sampler(self) -> BalancedBatchSampler:
        """mmengine reaches a batch sampler's ``set_epoch`` through ``batch_sampler.sampler``, as
        for torch's BatchSampler, which wraps a sampler; this one is its own."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & (2**63 - 1))
        self.epoch += 1
        return iter([indices for indices, _ in balanced_batches(self.labels, generator)])


class _Batches(Dataset):
    """Precomposed batches of a dataset: item ``k`` is batch ``k``'s inputs (all of them) and
    the targets of its own samples."""

    def __init__(self, dataset: Dataset, batches: Sequence[tuple[list[int], int]]) -> None:
        self.dataset = dataset
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices, own = self.batches[k]
        inputs, targets = default_collate([self.dataset[i] for i in indices])[:2]
        return inputs, targets[:own]


class BalancedEvaluation(Evaluation):
    """The test set in label-balanced batches, each normalized with its own statistics (every BN
    layer in train mode with momentum 0, so the running statistics do not move). Each prediction
    restores the layers' modes, momenta and step counters as it ends, so ``finish`` has nothing
    left to undo."""

    name = "balanced"
    summary = ("oracle: test set in label-balanced batches (uses the test labels), each normalized "
               "with its own batch statistics")
    oracle = True

    def __init__(self) -> None:
        self._own: list[int] = []
        self._next = 0

    def loader(self, ctx: TrialContext, dataset: Dataset, batch_size: int) -> DataLoader:
        generator = torch.Generator().manual_seed(ctx.seed)
        batches = balanced_batches(ctx.labels(dataset), generator)
        self._own, self._next = [own for _, own in batches], 0
        return DataLoader(_Batches(dataset, batches), batch_size=None, shuffle=False)

    def predict(self, net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        own = self._own[self._next]
        self._next += 1
        with batch_statistics(net):
            return net(inputs)[:own]


class BalancedProtocol(NormProtocol):
    """Trains on balanced batches (the suite's batch size is not used) and adds the balanced evaluation."""

    def train_loader(self, ctx: TrialContext, batch_size: int) -> DataLoader:
        sampler = BalancedBatchSampler(ctx.labels(), ctx.seed)
        return DataLoader(ctx.splits.train, batch_sampler=sampler)

    def evaluations(self, ctx: TrialContext) -> Sequence[Evaluation]:
        return [BalancedEvaluation()]


def protocol(config: BalancedBNConfig) -> BalancedProtocol:
    """The protocol of ``balanced_bn``, whose parameters (momentum, eps) are all the layer's."""
    return BalancedProtocol()
