"""Monte Carlo Batch Normalization (Teye, Azizpour & Smith, 2018): a BN network's prediction
averaged over T draws, each normalizing the test input with the statistics of a random training
batch. Training is plain BN; this is an evaluation protocol."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import default_collate

from harness.protocol import Evaluation, NormProtocol, TrialContext
from harness_plugins.common.metrics import mean_probability
from harness_plugins.norms.batchstats import MCBatchNormConfig

from .common import BN_LAYERS, batch_statistics, reduce_dims

__all__ = ["MCBatchNormEvaluation", "MCBatchNormProtocol", "protocol"]

Stats = list[tuple[torch.Tensor, torch.Tensor]]  # per BN layer: (mean, biased variance)


class MCBatchNormEvaluation(Evaluation):
    """``mc``: in ``prepare``, T random training batches (of the suite's batch size, seeded from
    the trial seed) pass through the network in batch-statistics mode and each BN layer's batch
    mean and biased variance are kept. Every test batch is then run T times in eval mode with
    the running statistics replaced by draw t's, and the softmax averaged over the draws.

    Extra metric ``prob_std``: the mean over test samples of the standard deviation across
    draws of the probability of the mean prediction's class (0 when T = 1).
    """

    name = "mc"
    summary = "MC batch norm: mean softmax over T draws of training-batch statistics"

    def __init__(self, samples: int) -> None:
        if samples < 1:
            raise ValueError(f"mc_samples must be >= 1; got {samples}")
        self.samples = samples
        self.draws: list[Stats] = []
        self._layers: list[nn.Module] = []
        self._running: Stats = []
        self._spread_sum = 0.0
        self._count = 0

    def prepare(self, net: nn.Module, ctx: TrialContext) -> None:
        train = ctx.splits.train
        size = min(ctx.config.batch_size, len(train))
        generator = torch.Generator().manual_seed(ctx.seed)
        device = next(net.parameters()).device
        self._layers = [m for m in net.modules() if isinstance(m, BN_LAYERS)]
        self._running = [(m.running_mean.clone(), m.running_var.clone()) for m in self._layers]
        self.draws, self._spread_sum, self._count = [], 0.0, 0
        captured: Stats = []

        def capture(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            var, mean = torch.var_mean(args[0], dim=reduce_dims(args[0]), unbiased=False)
            captured.append((mean, var))

        handles = [m.register_forward_pre_hook(capture) for m in self._layers]
        try:
            with torch.no_grad(), batch_statistics(net):
                for _ in range(self.samples):
                    indices = torch.randperm(len(train), generator=generator)[:size].tolist()
                    inputs = default_collate([train[i] for i in indices])[0]
                    captured.clear()
                    net(inputs.to(device))
                    self.draws.append(list(captured))
        finally:
            for h in handles:
                h.remove()

    def predict(self, net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        net.eval()
        outputs = []
        for stats in self.draws:
            self._load(stats)
            outputs.append(net(inputs))
        mean = mean_probability(outputs)
        probs = torch.stack([o.detach().float().softmax(dim=1) for o in outputs])  # T×N×K
        picked = probs.gather(2, mean.argmax(dim=1)[None, :, None].expand(len(outputs), -1, 1))
        self._spread_sum += float(picked.std(dim=0, unbiased=False).sum())
        self._count += len(inputs)
        return mean

    def finish(self, net: nn.Module) -> None:
        self._load(self._running)

    def metrics(self) -> dict[str, float]:
        return {"prob_std": self._spread_sum / self._count} if self._count else {}

    def _load(self, stats: Stats) -> None:
        for m, (mean, var) in zip(self._layers, stats, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)


class MCBatchNormProtocol(NormProtocol):
    """Plain BN training; adds the ``mc`` evaluation."""

    def __init__(self, mc_samples: int) -> None:
        self.mc_samples = mc_samples

    def evaluations(self, ctx: TrialContext) -> Sequence[Evaluation]:
        return [MCBatchNormEvaluation(self.mc_samples)]


def protocol(config: MCBatchNormConfig) -> MCBatchNormProtocol:
    return MCBatchNormProtocol(mc_samples=config.mc_samples)
