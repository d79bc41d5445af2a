"""The baseline norms, registered as any third-party plugin registers its own.

Layers are named by ``"module:Attr"`` strings so that ``harness list`` never imports torch;
they live in :mod:`harness_plugins.norms.baselines` (``layernorm`` is timm's ``GroupNorm1``).
Each norm's parameters are its config class below, composed of the shared fields of
:mod:`harness_plugins.common.params`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field

from harness import Norm, NormConfig, hookimpl
from harness_plugins.common.params import EpsConfig, ProjectionConfig, RunningStatsConfig

_LAYERS = "harness_plugins.norms.baselines"


class BatchNormConfig(RunningStatsConfig, ProjectionConfig):
    """``batchnorm``: momentum, eps, and the optional projection of the weights feeding it."""


class GroupNormConfig(EpsConfig):
    """``groupnorm``: the group count's upper bound, and eps."""

    groups: Literal[1, 2, 4, 8, 16, 32] = Field(
        32, description="upper bound on the group count; the largest divisor of C not above it is used"
    )


class LayerNormConfig(EpsConfig):
    """``layernorm``: eps."""


class InstanceNormConfig(EpsConfig):
    """``instancenorm``: eps."""


class IdentityConfig(NormConfig):
    """``none``: no parameters."""


@hookimpl
def harness_register_norms(register: Callable[[Norm], None]) -> None:
    register(
        Norm(
            name="batchnorm",
            make=f"{_LAYERS}:BatchNorm",
            config=BatchNormConfig,
            summary="Batch normalization: per-channel batch statistics, running averages at eval.",
            citation="Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training "
            "by Reducing Internal Covariate Shift, ICML 2015",
            dims={"1d", "2d"},
            protocol="harness_plugins.norms.bayesian.protocols:batchnorm_protocol",
        )
    )
    register(
        Norm(
            name="groupnorm",
            make=f"{_LAYERS}:GroupNorm",
            config=GroupNormConfig,
            summary="Group normalization: per-sample statistics over channel groups (count clipped to C).",
            citation="Wu & He, Group Normalization, ECCV 2018",
            dims={"1d", "2d"},
        )
    )
    register(
        Norm(
            name="layernorm",
            make="timm.layers:GroupNorm1",
            config=LayerNormConfig,
            summary="Layer normalization: per-sample statistics over C, H, W; per-channel affine.",
            citation="Ba, Kiros & Hinton, Layer Normalization, arXiv:1607.06450, 2016",
            dims={"1d", "2d"},
        )
    )
    register(
        Norm(
            name="instancenorm",
            make=f"{_LAYERS}:InstanceNorm",
            config=InstanceNormConfig,
            summary="Instance normalization: per-sample, per-channel spatial statistics (2-d only).",
            citation="Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient "
            "for Fast Stylization, arXiv:1607.08022, 2016",
            dims={"2d"},
        )
    )
    register(
        Norm(
            name="none",
            make=f"{_LAYERS}:Identity",
            config=IdentityConfig,
            summary="No normalization: the identity, as the lower reference.",
            citation="n/a (the unnormalized network)",
            dims={"1d", "2d"},
        )
    )
