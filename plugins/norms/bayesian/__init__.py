"""Stochastic normalizations as Bayesian learning (Shekhovtsov & Flach, ACCV 2018).

Registers weight and analytic normalization, BN-like noise and the Bayesian scale on top of them,
and BN with a normalization batch; projection onto ‖w‖ = 1 is a ``projection`` parameter of
these and of ``batchnorm``. Layers are named by ``"module:Attr"`` strings, so that listing the
norms never imports torch: they live in :mod:`.layers`, their protocols in :mod:`.protocols`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from harness import Norm, NormConfig, Search, hookimpl
from harness.capabilities import CLASS_SCORES, INPUT_BATCHES
from harness_plugins.common.params import EpsConfig, ProjectionConfig, RunningStatsConfig

_LAYERS = "harness_plugins.norms.bayesian.layers"
_PROTOCOLS = "harness_plugins.norms.bayesian.protocols"
CITATION = "Shekhovtsov & Flach, Stochastic Normalizations as Bayesian Learning, ACCV 2018"
_DIMS = frozenset({"1d", "2d"})

#: The deterministic norms a stochastic head (BN-like noise) can follow.
DeterministicBase = Literal["weightnorm", "analytic_norm"]
_NOISE_SIGMA = Search(0.005, 0.5, log=True)


class InitBatchConfig(NormConfig):
    """``init_batch``: the batch of weight normalization's data-dependent init, run by the protocol."""

    protocol_only: ClassVar[frozenset[str]] = frozenset({"init_batch"})

    init_batch: int = Field(
        128, ge=2, description="training inputs in the data-dependent init pass of weight normalization (paper: 128)"
    )


class WeightNormConfig(EpsConfig, ProjectionConfig, InitBatchConfig):
    """``weightnorm``: eps, projection and the init batch."""


class AnalyticNormConfig(EpsConfig, ProjectionConfig):
    """``analytic_norm``: eps and projection."""


class BNNoiseConfig(EpsConfig, ProjectionConfig, InitBatchConfig):
    """``bn_noise``: the deterministic norm it follows and the two noise levels."""

    base: DeterministicBase = Field("weightnorm", description="the deterministic norm")
    sigma_u: Annotated[float, _NOISE_SIGMA] = Field(
        0.035, gt=0, description="std of the multiplicative noise U ~ N(1, σ_U²)"
    )
    sigma_v: Annotated[float, _NOISE_SIGMA] = Field(0.05, gt=0, description="std of the additive noise V ~ N(0, σ_V²)")


class BayesianScaleConfig(RunningStatsConfig, ProjectionConfig, InitBatchConfig):
    """``bayesian_scale``: the base norm, the variational scale and its prior, the KL weight and the
    Monte-Carlo evaluations (``momentum`` is the batchnorm base's)."""

    protocol_only: ClassVar[frozenset[str]] = frozenset({"kl_factor", "mc_samples"})

    base: Literal["weightnorm", "analytic_norm", "batchnorm"] = Field("weightnorm", description="the norm giving x̂")
    per: Literal["channel", "layer"] = Field("channel", description="one σ_S per channel or per layer")
    kl_factor: Annotated[float, Search(0.01, 10.0, log=True)] = Field(
        1.0, ge=0, description="weight of Σ KL / |D| in the loss"
    )
    init_sigma: Annotated[float, Search(0.01, 1.0, log=True)] = Field(
        0.1, gt=0, description="σ_S at the start (not given by the paper)"
    )
    prior_sigma: float = Field(10.0, gt=0, description="σ₀ of the prior N(1, σ₀²) on S")
    mc_samples: list[Annotated[int, Field(ge=1)]] = Field(
        [10, 30], min_length=1, description="T of each Monte-Carlo evaluation (reported as mcT/<metric>)"
    )

    def needs(self) -> frozenset[str]:
        """A deterministic base draws training input batches (init, input moments); BN's does not."""
        return frozenset() if self.base == "batchnorm" else frozenset({INPUT_BATCHES})


class NormBatchConfig(RunningStatsConfig):
    """``normbatch_bn``: BN's momentum and eps, and the extra samples of each normalization batch."""

    protocol_only: ClassVar[frozenset[str]] = frozenset({"extra"})

    extra: Annotated[int, Search(32, 4096, log=True)] = Field(
        992, ge=0, description="extra training samples in each normalization batch (paper: 32 + 992)"
    )


@hookimpl
def harness_register_norms(register: Callable[[Norm], None]) -> None:
    register(
        Norm(
            name="weightnorm",
            make=f"{_LAYERS}:WeightNorm",
            summary="Weight normalization: y = (w/‖w‖)ᵀx·s + b per output unit, data-dependent init of s, b.",
            citation="Salimans & Kingma, Weight Normalization, NIPS 2016; as used in " + CITATION,
            config=WeightNormConfig,
            dims=_DIMS,
            needs={INPUT_BATCHES},  # the data-dependent init runs on a batch of training inputs
            protocol=f"{_PROTOCOLS}:weightnorm_protocol",
        )
    )
    register(
        Norm(
            name="analytic_norm",
            make=f"{_LAYERS}:AnalyticNorm",
            summary="Analytic normalization: per-channel mean/std propagated from dataset input moments [R].",
            citation="Shekhovtsov & Flach, Normalization of Neural Networks using Analytic Variance "
            "Propagation, CVWW 2018; as used in " + CITATION,
            config=AnalyticNormConfig,
            dims=_DIMS,
            needs={INPUT_BATCHES},  # the dataset's input moments, propagated through the network
            protocol=f"{_PROTOCOLS}:analytic_norm_protocol",
        )
    )
    register(
        Norm(
            name="bn_noise",
            make=f"{_LAYERS}:BNNoise",
            summary="A deterministic norm with BN-like noise ((x̂ + V)·U)·s + b, per sample and channel, in training.",
            citation=CITATION,
            config=BNNoiseConfig,
            dims=_DIMS,
            needs={INPUT_BATCHES},  # both deterministic bases do
            protocol=f"{_PROTOCOLS}:bn_noise_protocol",
        )
    )
    register(
        Norm(
            name="bayesian_scale",
            make=f"{_LAYERS}:BayesianScale",
            summary="A base norm with a variational Bayesian scale: y = (x̂ + b)·S, q(S) = N(s, σ_S²), "
            "prior N(1, 10²); MC-T evaluations.",
            citation=CITATION,
            config=BayesianScaleConfig,
            dims=_DIMS,
            needs={CLASS_SCORES},  # the MC evaluations average softmax outputs; the base may need more
            protocol=f"{_PROTOCOLS}:bayesian_scale_protocol",
        )
    )
    register(
        Norm(
            name="normbatch_bn",
            make="harness_plugins.norms.baselines:BatchNorm",
            summary="Batch norm whose statistics cover the training batch plus extra random training samples.",
            citation=CITATION,
            config=NormBatchConfig,
            dims=_DIMS,
            needs={INPUT_BATCHES},  # extra training inputs join each batch
            protocol=f"{_PROTOCOLS}:normbatch_protocol",
            reference="harness_plugins.norms.baselines:BatchNorm",
        )
    )
