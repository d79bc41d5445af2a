"""Unified Batch Normalization and the BN variants it unifies: the rows of the paper's ablation.

``unified_bn`` is the whole method; ``bn_fct``, ``rbn`` and ``bnet`` are its parts on their own,
and ``iebn`` is the other instance-gated BN the paper compares with. Registration only: the
layers live in :mod:`harness_plugins.norms.unified.layers` and are imported on first use, so
listing norms imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import Field

from harness import Norm, NormConfig, Search, hookimpl
from harness_plugins.common.params import RunningStatsConfig

_LAYERS = "harness_plugins.norms.unified.layers"

UBN_CITATION = ("Wang, Zhang, Liu & Yan, Unified Batch Normalization: Identifying and Alleviating the Feature "
                "Condensation in Batch Normalization and a Unified Framework, arXiv:2311.15993, 2023")
RBN_CITATION = ("Gao, Han, Li, Cheng & Peng, Representative Batch Normalization with Feature Calibration, "
                "CVPR 2021")
BNET_CITATION = ("Xu, Xie, Xie, Dai, Mei, Qiao, Shen, Xiong & Yuille, BNET: Batch Normalization with Enhanced "
                 "Linear Transformation, TPAMI 45(7), 2023")
IEBN_CITATION = ("Liang, Huang, Liang & Yang, Instance Enhancement Batch Normalization: an Adaptive Regulator "
                 "of Batch Noise, AAAI 2020")


#: When the condensation rule decides between batch and running statistics.
Latch = Literal["epoch", "iteration"]


class CondensationConfig(RunningStatsConfig):
    """The feature condensation rule of UBN (``bn_fct``, ``unified_bn``). β = 0.1, momentum = 0.1
    and one warm-up epoch are rebuilt choices ([R] in METHODS.md)."""

    fct: Annotated[float, Search(0.05, 0.5)] = Field(
        0.15, description="feature condensation threshold: batch statistics while the running mean cosine "
        "similarity of the layer inputs is above it (≥ 1: never, < −1: always)"
    )
    beta: float = Field(0.1, gt=0, le=1, description="update rate of the running threshold τ̄ [R] 0.1")
    latch: Latch = Field(
        "epoch", description="decide batch vs running statistics once per epoch (the paper) or after every iteration"
    )
    warmup_epochs: int = Field(1, ge=0, description="first epochs that always use batch statistics [R] 1")


class KernelConfig(NormConfig):
    """BNET's depthwise convolution in place of γ, β (``bnet``, ``unified_bn``)."""

    kernel_size: Literal[1, 3, 5, 7] = Field(
        3, description="size of the depthwise convolution that replaces γ, β (odd; identity init [R])"
    )


class BNFCTConfig(CondensationConfig):
    """``bn_fct``: the condensation rule, momentum and eps."""


class RBNConfig(RunningStatsConfig):
    """``rbn``: momentum and eps."""


class BNETConfig(RunningStatsConfig, KernelConfig):
    """``bnet``: the kernel size, momentum and eps."""


class UnifiedBNConfig(CondensationConfig, KernelConfig):
    """``unified_bn``: the condensation rule, the kernel size, momentum and eps."""


class IEBNConfig(RunningStatsConfig):
    """``iebn``: momentum and eps."""


@hookimpl
def harness_register_norms(register: Callable[[Norm], None]) -> None:
    register(
        Norm(
            name="bn_fct",
            make=f"{_LAYERS}:BatchNormFCT",
            summary="BN whose training statistics follow UBN's feature condensation threshold, latched per epoch.",
            citation=UBN_CITATION,
            config=BNFCTConfig,
            dims={"1d", "2d"},
            protocol=f"{_LAYERS}:condensation_protocol",
            reference=f"{_LAYERS}:bn_fct_reference",
        )
    )
    register(
        Norm(
            name="rbn",
            make=f"{_LAYERS}:RepresentativeBatchNorm",
            summary="Representative BN: BN with instance-statistics centering and scaling calibration.",
            citation=RBN_CITATION,
            config=RBNConfig,
            dims={"1d", "2d"},
            reference=f"{_LAYERS}:rbn_reference",
        )
    )
    register(
        Norm(
            name="bnet",
            make=f"{_LAYERS}:BNET",
            summary="BNET: BN without affine followed by a depthwise k×k convolution with bias (2-d only).",
            citation=BNET_CITATION,
            config=BNETConfig,
            dims={"2d"},
            reference=f"{_LAYERS}:bnet_reference",
        )
    )
    register(
        Norm(
            name="unified_bn",
            make=f"{_LAYERS}:UnifiedBatchNorm",
            summary="Unified BN: condensation-threshold statistics, RBN calibration, BNET affine (2-d only).",
            citation=UBN_CITATION,
            config=UnifiedBNConfig,
            dims={"2d"},
            protocol=f"{_LAYERS}:condensation_protocol",
            reference=f"{_LAYERS}:unified_reference",
        )
    )
    register(
        Norm(
            name="iebn",
            make=f"{_LAYERS}:InstanceEnhancementBatchNorm",
            summary="Instance-Enhancement BN: BN's γ gated per sample by sigmoid of the input's channel means.",
            citation=IEBN_CITATION,
            config=IEBNConfig,
            dims={"1d", "2d"},
            reference=f"{_LAYERS}:iebn_reference",
        )
    )
