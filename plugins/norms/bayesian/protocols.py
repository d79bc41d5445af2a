"""How the norms of "Stochastic Normalizations as Bayesian Learning" join the training loop.

- :class:`WeightNormInit`: unit-norm parametrization of the layers feeding weight norms, and
  their data-dependent initialization.
- :class:`AnalyticPropagation`: the analytic norms' statistics, propagated from the dataset's
  input moments before every training forward and once per evaluation.
- :class:`Projection`: w ← w/‖w‖ per output unit after every optimizer step, without weight decay.
- :class:`BayesianLoss`: the KL term of the Bayesian scales and the Monte-Carlo evaluations.
- :class:`NormalizationBatch`: BN statistics over the training batch plus extra random samples.

The factories at the end (``*_protocol``) are what the registrations name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Dataset

from harness.protocol import Evaluation, NormProtocol, TrialContext, chain
from harness_plugins.common.extra_inputs import ExtraInputsBatchSampler, WithExtraInputs, collate_with_extra
from harness_plugins.common.metrics import mean_probability
from harness_plugins.norms import BatchNormConfig

from . import AnalyticNormConfig, BayesianScaleConfig, BNNoiseConfig, NormBatchConfig, WeightNormConfig
from .layers import AnalyticNorm, BayesianScale, BNNoise, WeightNorm
from .moments import MomentPropagator, Moments, dataset_moments

__all__ = [
    "AnalyticPropagation",
    "BayesianLoss",
    "MonteCarlo",
    "NormalizationBatch",
    "Projection",
    "UnitNorm",
    "WeightNormInit",
    "analytic_norm_protocol",
    "batchnorm_protocol",
    "bayesian_scale_protocol",
    "bn_noise_protocol",
    "feeding_layers",
    "normbatch_protocol",
    "weightnorm_protocol",
]

#: The layers that normalize the output of the conv/linear before them.
NORM_LAYERS = (WeightNorm, AnalyticNorm, BNNoise, BayesianScale, _BatchNorm)
_FEEDING = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def feeding_layers(net: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(conv/linear, norm) pairs: the closest conv or linear before each norm in registration
    order (how models put a norm after its layer); the modules, not their weights, because a
    weight-normed layer's ``weight`` is computed from its parametrization's ``original``."""
    found, last = [], None
    for module in net.modules():
        if isinstance(module, _FEEDING):
            last = module
        elif isinstance(module, NORM_LAYERS) and last is not None:
            found.append((last, module))
            last = None
    return found


def kind_of(norm: nn.Module) -> str:
    """The base normalization of a norm layer: weightnorm, analytic_norm or batchnorm."""
    return getattr(norm, "kind", "batchnorm")


def raw_weight(layer: nn.Module) -> nn.Parameter:
    """The trained weight tensor of a conv/linear, under any parametrization of it."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    """w/‖w‖ per output unit (row of a linear weight, filter of a conv)."""
    return F.normalize(w.flatten(1), dim=1).view_as(w)


def sample_inputs(dataset: Dataset, count: int, seed: int) -> torch.Tensor:
    """``count`` random training inputs, drawn with a generator of their own so that the
    training loader's shuffling is the same as for every other norm."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    items = [dataset[i] for i in order.tolist()]
    return torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])


def batch_moments(x: torch.Tensor) -> Moments:
    """Per-channel batch mean and biased variance, through ``F.batch_norm``'s running buffers."""
    mean = x.new_zeros(x.shape[1])
    var = x.new_ones(x.shape[1])
    F.batch_norm(x, mean, var, training=True, momentum=1.0)
    n = x.numel() // x.shape[1]
    return Moments(mean, var * ((n - 1) / n))


def _device_of(net: nn.Module) -> torch.device:
    return next((p.device for p in net.parameters()), torch.device("cpu"))


class UnitNorm(nn.Module):
    """The weight-norm parametrization without a gain: w ↦ w/‖w‖ per output unit (the gain is
    the norm layer's s)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return unit_rows(w)


class WeightNormInit(NormProtocol):
    """Weight normalization's setup: the layers feeding weight norms compute with w/‖w‖, lose
    their own bias (frozen at zero: it is b's job, and the formula has none), and one BN-style
    pass on ``init_batch`` random training inputs sets each norm's s, b so that its outputs start
    at zero mean and unit variance. Layers are initialised in order within that one pass, so
    later layers see already normalized inputs."""

    def __init__(self, init_batch: int) -> None:
        if init_batch < 2:
            raise ValueError(f"the data-dependent init needs a batch of at least 2; got {init_batch}")
        self.init_batch = init_batch

    def setup(self, ctx: TrialContext) -> None:
        # the layers holding s, b (a wrapper's inner WeightNorm has no affine of its own)
        norms = [m for m in ctx.net.modules() if isinstance(m, (WeightNorm, BNNoise, BayesianScale))
                 if kind_of(m) == "weightnorm" and m.weight is not None]
        if not norms:
            raise ValueError("weight normalization found no weightnorm layer in the model")
        for layer, norm in feeding_layers(ctx.net):
            if kind_of(norm) != "weightnorm":
                continue
            parametrize.register_parametrization(layer, "weight", UnitNorm())
            if layer.bias is not None:
                with torch.no_grad():
                    layer.bias.zero_()
                layer.bias.requires_grad_(False)
        inputs = sample_inputs(ctx.splits.train, self.init_batch, ctx.seed)
        data_dependent_init(ctx.net, norms, inputs.to(_device_of(ctx.net)))


def data_dependent_init(net: nn.Module, norms: Sequence[nn.Module], inputs: torch.Tensor) -> None:
    """One eval-mode pass in which each norm, just before it runs, sets its s, b from the batch
    moments of its input (:meth:`init_from`), so that what it passes on is already normalized."""

    def init(norm: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        norm.init_from(*batch_moments(args[0]))

    handles = [norm.register_forward_pre_hook(init) for norm in norms]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(inputs)
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()


class AnalyticPropagation(NormProtocol):
    """Analytic normalization's statistics: the training inputs' per-channel moments (computed in
    setup) propagated through the traced network (:class:`.moments.MomentPropagator`).

    A forward pre-hook on the network does the propagation: at every training-mode forward with
    gradients (``train_forward`` included), and in eval mode once without gradients, reused until
    the next training forward.
    """

    def setup(self, ctx: TrialContext) -> None:
        if not any(kind_of(m) == "analytic_norm" for m in ctx.net.modules() if isinstance(m, NORM_LAYERS)):
            raise ValueError("analytic normalization found no analytic_norm layer in the model")
        self.inputs = dataset_moments(ctx.splits.train)
        self.propagator = MomentPropagator(ctx.net, sample_inputs(ctx.splits.train, 2, ctx.seed))
        self.eval_ready = False
        with torch.no_grad():
            self.propagate(ctx.net)  # fails here, not mid-training, on an unsupported operation
        ctx.net.register_forward_pre_hook(self._before_forward)

    def propagate(self, net: nn.Module) -> Moments:
        device = _device_of(net)
        return self.propagator(Moments(self.inputs.mean.to(device), self.inputs.var.to(device)))

    def _before_forward(self, net: nn.Module, args: Any) -> None:
        if net.training:
            self.propagate(net)
            self.eval_ready = False
        elif not self.eval_ready:
            with torch.no_grad():
                self.propagate(net)
            self.eval_ready = True


class Projection(NormProtocol):
    """Projection onto ‖w‖ = 1 (the paper's §2): every weight feeding a normalization is set to
    w/‖w‖ per output unit at setup and after every optimizer step, and gets no weight decay
    (decay on a scale-invariant weight has no minimizer)."""

    def setup(self, ctx: TrialContext) -> None:
        self.weights = [raw_weight(layer) for layer, _ in feeding_layers(ctx.net)]
        if not self.weights:
            raise ValueError("projection found no conv/linear layer feeding a normalization")
        self.after_optimizer_step(ctx.net)

    def no_weight_decay(self, net: nn.Module) -> list[nn.Parameter]:
        return list(self.weights)

    def after_optimizer_step(self, net: nn.Module) -> None:
        with torch.no_grad():
            for w in self.weights:
                w.copy_(unit_rows(w))


class MonteCarlo(Evaluation):
    """The approximate Bayesian posterior predictive: the mean softmax over T passes, each with
    new draws of every Bayesian scale (everything else in eval mode)."""

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self.name = f"mc{samples}"
        self.summary = f"mean softmax over {samples} draws of the Bayesian scales"

    def prepare(self, net: nn.Module, ctx: TrialContext) -> None:
        self._sampling(net, True)

    def predict(self, net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        net.eval()
        return mean_probability([net(inputs) for _ in range(self.samples)])

    def finish(self, net: nn.Module) -> None:
        self._sampling(net, False)

    @staticmethod
    def _sampling(net: nn.Module, on: bool) -> None:
        for layer in [m for m in net.modules() if isinstance(m, BayesianScale)]:
            layer.sample_in_eval = on


class BayesianLoss(NormProtocol):
    """Variational Bayes over the scales: the loss gets kl_factor · Σ KL(q(S) ‖ p(S)) / |D|
    (|D| the training set size), and the test is also run as MC-T for each T in ``mc_samples``."""

    def __init__(self, kl_factor: float, mc_samples: Sequence[int]) -> None:
        if kl_factor < 0:
            raise ValueError(f"kl_factor must be >= 0; got {kl_factor}")
        if any(not isinstance(t, int) or t < 1 for t in mc_samples) or len(set(mc_samples)) != len(mc_samples):
            raise ValueError(f"mc_samples must be distinct positive integers; got {list(mc_samples)}")
        self.kl_factor = kl_factor
        self.mc_samples = list(mc_samples)

    def setup(self, ctx: TrialContext) -> None:
        self.layers = [m for m in ctx.net.modules() if isinstance(m, BayesianScale)]
        if not self.layers:
            raise ValueError("bayesian_scale found no BayesianScale layer in the model")

    def extra_loss(self, net: nn.Module, ctx: TrialContext) -> torch.Tensor:
        return self.kl_factor * torch.stack([layer.kl() for layer in self.layers]).sum() / ctx.train_size

    def evaluations(self, ctx: TrialContext) -> Sequence[Evaluation]:
        return [MonteCarlo(t) for t in self.mc_samples]


class _NormBatchSampler(ExtraInputsBatchSampler):
    """Shuffled training batches, each followed by ``count`` other training samples drawn anew at
    every step."""

    def __init__(self, size: int, batch_size: int, count: int, generator: torch.Generator) -> None:
        super().__init__(size, batch_size, generator)
        self.count = count

    def extra(self, batch: list[int]) -> list[int]:
        others = torch.ones(self.size, dtype=torch.bool)
        others[batch] = False
        candidates = others.nonzero().squeeze(1)
        return candidates[torch.randperm(len(candidates), generator=self.generator)[: self.count]].tolist()


class NormalizationBatch(NormProtocol):
    """The paper's normalization batch (Fig. 2): BN statistics over the training batch plus
    ``extra`` other random training samples, the loss on the batch alone, gradients through all
    of them. One train-mode pass of ``cat([inputs, extra])`` updates the running statistics once,
    with those of the whole normalization batch."""

    def __init__(self, extra: int) -> None:
        if extra < 0:
            raise ValueError(f"extra must be >= 0; got {extra}")
        self.extra = extra

    def train_loader(self, ctx: TrialContext, batch_size: int) -> DataLoader:
        sampler = _NormBatchSampler(ctx.train_size, batch_size, self.extra, ctx.generator)
        return DataLoader(WithExtraInputs(ctx.splits.train, ctx.splits.train), batch_sampler=sampler,
                          collate_fn=collate_with_extra)

    def train_forward(self, net: nn.Module, inputs: torch.Tensor, extra: Any = None) -> torch.Tensor:
        if extra is None or len(extra) == 0:
            return net(inputs)
        return net(torch.cat([inputs, extra]))[: len(inputs)]


# -- factories named by the registrations (each called with its norm's config) -------------------


def _with_projection(parts: list[NormProtocol], projection: bool) -> NormProtocol | None:
    parts = (parts + [Projection()]) if projection else parts  # last: it sees the parametrized weights
    return chain(parts) if parts else None


def _base_parts(base: str, init_batch: int) -> list[NormProtocol]:
    if base == "weightnorm":
        return [WeightNormInit(init_batch)]
    if base == "analytic_norm":
        return [AnalyticPropagation()]
    return []


def batchnorm_protocol(config: BatchNormConfig) -> NormProtocol | None:
    return _with_projection([], config.projection)


def weightnorm_protocol(config: WeightNormConfig) -> NormProtocol | None:
    return _with_projection(_base_parts("weightnorm", config.init_batch), config.projection)


def analytic_norm_protocol(config: AnalyticNormConfig) -> NormProtocol | None:
    return _with_projection(_base_parts("analytic_norm", 0), config.projection)


def bn_noise_protocol(config: BNNoiseConfig) -> NormProtocol | None:
    return _with_projection(_base_parts(config.base, config.init_batch), config.projection)


def bayesian_scale_protocol(config: BayesianScaleConfig) -> NormProtocol | None:
    loss = BayesianLoss(config.kl_factor, config.mc_samples)
    return _with_projection([*_base_parts(config.base, config.init_batch), loss], config.projection)


def normbatch_protocol(config: NormBatchConfig) -> NormProtocol:
    return NormalizationBatch(config.extra)
