"""Norm protocols: how a norm that is more than a layer takes part in training and evaluation.

Some methods need the loop to cooperate: an extra loss term (Bayesian KL), a step after the
optimizer (weight projection), epoch boundaries (the condensation latch), the composition of a
batch (an unlabeled stream, class-balanced batches, a normalization batch) and evaluation
protocols (MC sampling, batch statistics on balanced test batches). A norm names a factory
``protocol(config) -> NormProtocol | None``, given the norm's typed
:class:`~harness.norm.NormConfig`; the engine calls the protocol through its training step and
mmengine's hooks and loops at these points. Every method has a do-nothing default, so a protocol overrides
only what its method needs, and a third-party norm uses the very same points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .capabilities import CLASS_SCORES, INPUT_BATCHES, LABELS, UNLABELED  # noqa: F401 - re-exported
from .task import Splits, TaskConfig


class InputDataset(Dataset):
    """Inputs without targets, the item type of an ``unlabeled`` split: item ``i`` is ``inputs[i]``."""

    def __init__(self, inputs: torch.Tensor) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.inputs[index]


@dataclass
class TrialContext:
    """What a protocol may read about the trial it runs in."""

    net: nn.Module
    splits: Splits
    config: TaskConfig
    seed: int
    provides: frozenset[str]
    generator: torch.Generator
    world: int = 1  # processes of a multi-device trial; a protocol's own loader shards by these
    rank: int = 0

    @property
    def train_size(self) -> int:
        return len(self.splits.train)

    def labels(self, dataset: Dataset | None = None) -> torch.Tensor:
        """Class labels of a dataset (the training set by default), without loading its inputs
        where the dataset keeps them apart (``targets`` attribute, TensorDataset)."""
        return _labels(self.splits.train if dataset is None else dataset)


class Evaluation:
    """An evaluation protocol besides the standard one (eval mode, running statistics).

    ``oracle`` marks protocols that use information a deployed model does not have (the test
    labels, for balanced batches): the leaderboard keeps their results apart.
    """

    name: str = ""
    summary: str = ""
    oracle: bool = False

    def loader(self, ctx: TrialContext, dataset: Dataset, batch_size: int) -> DataLoader | None:
        """A loader of the evaluation data in a special order, or None for the standard one."""
        return None

    def prepare(self, net: nn.Module, ctx: TrialContext) -> None:
        """Called once before the evaluation pass (e.g. to collect training-batch statistics)."""

    def predict(self, net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The outputs for one batch; the task turns them into metrics as usual."""
        net.eval()
        return net(inputs)

    def finish(self, net: nn.Module) -> None:
        """Called after the pass: undo whatever ``prepare`` or ``predict`` changed."""

    def metrics(self) -> dict[str, float]:
        """Metrics of the protocol's own, beside the task's (e.g. the spread of MC predictions)."""
        return {}


class NormProtocol:
    """The points at which a norm joins the training loop. Override what the method needs."""

    def setup(self, ctx: TrialContext) -> None:
        """Called once the model is built, before the optimizer (e.g. data-dependent init)."""

    def train_loader(self, ctx: TrialContext, batch_size: int) -> DataLoader | None:
        """A training loader that composes batches differently, or None for the standard one.
        Its batches are ``(inputs, targets)`` or ``(inputs, targets, extra)``. A custom
        ``batch_sampler`` needs a ``sampler`` attribute (mmengine reads it to set the epoch)."""
        return None

    def train_forward(self, net: nn.Module, inputs: torch.Tensor, extra: Any = None) -> torch.Tensor:
        """The training forward pass; ``extra`` is the third item of a batch, if any."""
        return net(inputs)

    def extra_loss(self, net: nn.Module, ctx: TrialContext) -> torch.Tensor | None:
        """A term added to the task's loss (e.g. KL divergence over the training set size)."""
        return None

    def no_weight_decay(self, net: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimizer must not decay (e.g. weights projected to unit norm)."""
        return []

    def before_train_epoch(self, net: nn.Module, epoch: int) -> None:
        """Called at the start of every training epoch (``epoch`` counts from 0)."""

    def after_optimizer_step(self, net: nn.Module) -> None:
        """Called after every optimizer step (e.g. weight projection)."""

    def evaluations(self, ctx: TrialContext) -> Sequence[Evaluation]:
        """Evaluation protocols run after the standard test, each reported as ``name/metric``."""
        return ()

    def metrics(self, net: nn.Module) -> dict[str, float]:
        """What the method did in training (e.g. how often a rule switched), reported after
        training as ``norm/name`` beside the task's metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the protocol carries from one epoch to the next outside the model's parameters
        and buffers (e.g. a counter): saved with every checkpoint, so that a resumed trial
        continues exactly. Randomness needs none: every epoch starts from seeded generators."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def chain(protocols: Sequence[NormProtocol]) -> NormProtocol:
    """One protocol from several (a norm with projection and Bayesian scale, say)."""
    protocols = [p for p in protocols if p is not None]
    if len(protocols) == 1:
        return protocols[0]
    return _Chain(protocols)


class _Chain(NormProtocol):
    def __init__(self, parts: Sequence[NormProtocol]) -> None:
        self.parts = list(parts)
        loaders = [p for p in parts if type(p).train_loader is not NormProtocol.train_loader]
        forwards = [p for p in parts if type(p).train_forward is not NormProtocol.train_forward]
        if len(loaders) > 1 or len(forwards) > 1:
            raise ValueError("at most one protocol may compose batches and one may replace the forward pass")

    def setup(self, ctx: TrialContext) -> None:
        for p in self.parts:
            p.setup(ctx)

    def train_loader(self, ctx: TrialContext, batch_size: int) -> DataLoader | None:
        return next((lo for p in self.parts if (lo := p.train_loader(ctx, batch_size)) is not None), None)

    def train_forward(self, net: nn.Module, inputs: torch.Tensor, extra: Any = None) -> torch.Tensor:
        for p in self.parts:
            if type(p).train_forward is not NormProtocol.train_forward:
                return p.train_forward(net, inputs, extra)
        return net(inputs)

    def extra_loss(self, net: nn.Module, ctx: TrialContext) -> torch.Tensor | None:
        terms = [t for p in self.parts if (t := p.extra_loss(net, ctx)) is not None]
        return sum(terms) if terms else None

    def no_weight_decay(self, net: nn.Module) -> list[nn.Parameter]:
        return [q for p in self.parts for q in p.no_weight_decay(net)]

    def before_train_epoch(self, net: nn.Module, epoch: int) -> None:
        for p in self.parts:
            p.before_train_epoch(net, epoch)

    def after_optimizer_step(self, net: nn.Module) -> None:
        for p in self.parts:
            p.after_optimizer_step(net)

    def evaluations(self, ctx: TrialContext) -> Sequence[Evaluation]:
        return [e for p in self.parts for e in p.evaluations(ctx)]

    def metrics(self, net: nn.Module) -> dict[str, float]:
        return {k: v for p in self.parts for k, v in p.metrics(net).items()}

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part, saved in zip(self.parts, state["parts"], strict=True):
            part.load_state_dict(saved)


def _labels(dataset: Dataset) -> torch.Tensor:
    for attr in ("targets", "labels"):
        if hasattr(dataset, attr):
            return torch.as_tensor(getattr(dataset, attr))
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) > 1:
        return tensors[1]
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])



Factory = Callable[..., NormProtocol | None]
