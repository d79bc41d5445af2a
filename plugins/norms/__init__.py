"""The baseline norms, registered as any third-party plugin registers its own.

Layers are named by ``"module:Attr"`` strings so that ``harness list`` never imports torch;
they live in :mod:`harness_plugins.norms.baselines`.
"""

from __future__ import annotations

from collections.abc import Callable

from harness import Norm, Param, hookimpl

_LAYERS = "harness_plugins.norms.baselines"


@hookimpl
def harness_register_norms(register: Callable[[Norm], None]) -> None:
    register(
        Norm(
            name="batchnorm",
            make=f"{_LAYERS}:BatchNorm",
            summary="Batch normalization: per-channel batch statistics, running averages at eval.",
            citation="Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training "
            "by Reducing Internal Covariate Shift, ICML 2015",
            params={
                "momentum": Param(0.1, help="running-statistics update rate", low=0.01, high=0.5, log=True),
                "eps": Param(1e-5, help="added to the variance"),
                "projection": Param(False, help="project every weight feeding a norm onto ‖w‖ = 1 after each "
                                    "optimizer step, without weight decay (Shekhovtsov & Flach, 2018)",
                                    choices=(False, True)),
            },
            dims={"1d", "2d"},
            protocol="harness_plugins.norms.bayesian.protocols:batchnorm_protocol",
        )
    )
    register(
        Norm(
            name="groupnorm",
            make=f"{_LAYERS}:GroupNorm",
            summary="Group normalization: per-sample statistics over channel groups (count clipped to C).",
            citation="Wu & He, Group Normalization, ECCV 2018",
            params={
                "groups": Param(
                    32,
                    help="upper bound on the group count; the largest divisor of C not above it is used",
                    choices=(1, 2, 4, 8, 16, 32),
                ),
            },
            dims={"1d", "2d"},
        )
    )
    register(
        Norm(
            name="layernorm",
            make=f"{_LAYERS}:LayerNorm",
            summary="Layer normalization: per-sample statistics over C, H, W; per-channel affine.",
            citation="Ba, Kiros & Hinton, Layer Normalization, arXiv:1607.06450, 2016",
            params={},
            dims={"1d", "2d"},
        )
    )
    register(
        Norm(
            name="instancenorm",
            make=f"{_LAYERS}:InstanceNorm",
            summary="Instance normalization: per-sample, per-channel spatial statistics (2-d only).",
            citation="Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient "
            "for Fast Stylization, arXiv:1607.08022, 2016",
            params={},
            dims={"2d"},
        )
    )
    register(
        Norm(
            name="none",
            make=f"{_LAYERS}:Identity",
            summary="No normalization: the identity, as the lower reference.",
            citation="n/a (the unnormalized network)",
            params={},
            dims={"1d", "2d"},
        )
    )
