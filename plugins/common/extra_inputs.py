"""Training batches with extra inputs beside the labeled ones, for norms whose statistics see more
than the loss does (an unlabeled stream, a larger normalization batch).

A batch sampler picks both kinds of index: below the labeled set's size a labeled item, above it
an extra input. The sampler runs in the loader's main process, so the extra inputs are drawn from
the trial's seeded generator, the same with any number of loader workers (a collate function
would run in each worker with a copy of its state).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, RandomSampler, Sampler, default_collate


class WithExtraInputs(Dataset):
    """A labeled dataset followed by a source of extra inputs: item ``i < len(labeled)`` is
    ``(input, target, False)``; item ``len(labeled) + j`` is ``(input of extra[j], None, True)``
    (an extra item may be an input alone, or a tuple whose first element is the input)."""

    def __init__(self, labeled: Dataset, extra: Dataset) -> None:
        self.labeled = labeled
        self.extra = extra
        self.size = len(labeled)

    def __len__(self) -> int:
        return self.size + len(self.extra)

    def __getitem__(self, index: int) -> tuple[Any, Any, bool]:
        if index < self.size:
            inputs, target = self.labeled[index][:2]
            return inputs, target, False
        item = self.extra[index - self.size]
        return (item[0] if isinstance(item, (tuple, list)) else item), None, True


def collate_with_extra(items: list[tuple[Any, Any, bool]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inputs, targets, extra inputs)`` of a batch of :class:`WithExtraInputs` items."""
    inputs, targets = default_collate([(x, y) for x, y, is_extra in items if not is_extra])
    extra = [x for x, _, is_extra in items if is_extra]
    return inputs, targets, default_collate(extra) if extra else inputs[:0]


class ExtraInputsBatchSampler(Sampler[list[int]], abc.ABC):
    """Shuffled labeled batches (the last, short one dropped where the set holds more than one
    batch), each followed by the extra indices that :meth:`extra` picks for it, offset by the
    labeled set's size. ``sampler`` orders the labeled items, as in torch's ``BatchSampler``
    (mmengine looks for it). Subclasses say which extra inputs a batch gets."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator) -> None:
        self.sampler = RandomSampler(range(size), generator=generator)
        self.size = size
        self.batch_size = batch_size
        self.generator = generator
        self.drop_last = size > batch_size

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else math.ceil(self.size / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        self.start_epoch()
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch + [self.size + i for i in self.extra(batch)]
                batch = []
        if batch and not self.drop_last:
            yield batch + [self.size + i for i in self.extra(batch)]

    def start_epoch(self) -> None:
        """Called as each pass over the labeled set begins."""

    @abc.abstractmethod
    def extra(self, batch: list[int]) -> list[int]:
        """Indices into the extra inputs for this batch of labeled indices."""
