"""Stochastic normalizations as Bayesian learning (Shekhovtsov & Flach, ACCV 2018).

Registers weight and analytic normalization, BN-like noise and the Bayesian scale on top of them,
and BN with a normalization batch; projection onto ‖w‖ = 1 is a ``projection`` parameter of
these and of ``batchnorm``. Layers are named by ``"module:Attr"`` strings, so that listing the
norms never imports torch: they live in :mod:`.layers`, their protocols in :mod:`.protocols`.
"""

from __future__ import annotations

from collections.abc import Callable

from harness import Norm, Param, hookimpl

_LAYERS = "harness_plugins.norms.bayesian.layers"
_PROTOCOLS = "harness_plugins.norms.bayesian.protocols"
CITATION = "Shekhovtsov & Flach, Stochastic Normalizations as Bayesian Learning, ACCV 2018"
_DIMS = frozenset({"1d", "2d"})


def _projection() -> Param:
    return Param(False, help="project every weight feeding a norm onto ‖w‖ = 1 after each optimizer step "
                 "(no weight decay on them)", choices=(False, True))


def _init_batch() -> Param:
    return Param(128, help="training inputs in the data-dependent init pass of weight normalization (paper: 128)")


def _eps() -> Param:
    return Param(1e-5, help="added to the variance")


@hookimpl
def harness_register_norms(register: Callable[[Norm], None]) -> None:
    register(
        Norm(
            name="weightnorm",
            make=f"{_LAYERS}:WeightNorm",
            summary="Weight normalization: y = (w/‖w‖)ᵀx·s + b per output unit, data-dependent init of s, b.",
            citation="Salimans & Kingma, Weight Normalization, NIPS 2016; as used in " + CITATION,
            params={"projection": _projection(), "init_batch": _init_batch(), "eps": _eps()},
            dims=_DIMS,
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
            params={"projection": _projection(), "eps": _eps()},
            dims=_DIMS,
            protocol=f"{_PROTOCOLS}:analytic_norm_protocol",
        )
    )
    register(
        Norm(
            name="bn_noise",
            make=f"{_LAYERS}:BNNoise",
            summary="A deterministic norm with BN-like noise ((x̂ + V)·U)·s + b, per sample and channel, in training.",
            citation=CITATION,
            params={
                "base": Param("weightnorm", help="the deterministic norm", choices=("weightnorm", "analytic_norm")),
                "sigma_u": Param(0.035, help="std of the multiplicative noise U ~ N(1, σ_U²)", low=0.005, high=0.5,
                                 log=True),
                "sigma_v": Param(0.05, help="std of the additive noise V ~ N(0, σ_V²)", low=0.005, high=0.5, log=True),
                "projection": _projection(),
                "init_batch": _init_batch(),
                "eps": _eps(),
            },
            dims=_DIMS,
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
            params={
                "base": Param("weightnorm", help="the norm giving x̂",
                              choices=("weightnorm", "analytic_norm", "batchnorm")),
                "per": Param("channel", help="one σ_S per channel or per layer", choices=("channel", "layer")),
                "kl_factor": Param(1.0, help="weight of Σ KL / |D| in the loss", low=0.01, high=10.0, log=True),
                "init_sigma": Param(0.1, help="σ_S at the start (not given by the paper)", low=0.01, high=1.0,
                                    log=True),
                "prior_sigma": Param(10.0, help="σ₀ of the prior N(1, σ₀²) on S"),
                "mc_samples": Param([10, 30], help="T of each Monte-Carlo evaluation (reported as mcT/<metric>)"),
                "projection": _projection(),
                "init_batch": _init_batch(),
                "momentum": Param(0.1, help="running-statistics rate of the batchnorm base"),
                "eps": _eps(),
            },
            dims=_DIMS,
            protocol=f"{_PROTOCOLS}:bayesian_scale_protocol",
        )
    )
    register(
        Norm(
            name="normbatch_bn",
            make="harness_plugins.norms.baselines:BatchNorm",
            summary="Batch norm whose statistics cover the training batch plus extra random training samples.",
            citation=CITATION,
            params={
                "extra": Param(992, help="extra training samples in each normalization batch (paper: 32 + 992)",
                               low=32, high=4096, log=True),
                "momentum": Param(0.1, help="running-statistics update rate", low=0.01, high=0.5, log=True),
                "eps": _eps(),
            },
            dims=_DIMS,
            protocol=f"{_PROTOCOLS}:normbatch_protocol",
            reference="harness_plugins.norms.baselines:BatchNorm",
        )
    )
