"""Unified Batch Normalization and the BN variants it unifies: the rows of the paper's ablation.

``unified_bn`` is the whole method; ``bn_fct``, ``rbn`` and ``bnet`` are its parts on their own,
and ``iebn`` is the other instance-gated BN the paper compares with. Registration only: the
layers live in :mod:`harness_plugins.norms.unified.layers` and are imported on first use, so
listing norms imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable

from harness import Norm, Param, hookimpl

_LAYERS = "harness_plugins.norms.unified.layers"

UBN_CITATION = ("Wang, Zhang, Liu & Yan, Unified Batch Normalization: Identifying and Alleviating the Feature "
                "Condensation in Batch Normalization and a Unified Framework, arXiv:2311.15993, 2023")
RBN_CITATION = ("Gao, Han, Li, Cheng & Peng, Representative Batch Normalization with Feature Calibration, "
                "CVPR 2021")
BNET_CITATION = ("Xu, Xie, Xie, Dai, Mei, Qiao, Shen, Xiong & Yuille, BNET: Batch Normalization with Enhanced "
                 "Linear Transformation, TPAMI 45(7), 2023")
IEBN_CITATION = ("Liang, Huang, Liang & Yang, Instance Enhancement Batch Normalization: an Adaptive Regulator "
                 "of Batch Noise, AAAI 2020")


def _momentum(note: str = "") -> Param:
    return Param(0.1, help=f"running-statistics update rate (PyTorch convention){note}", low=0.01, high=0.5,
                 log=True)


def _eps() -> Param:
    return Param(1e-5, help="added to the variance")


def _condensation_params() -> dict[str, Param]:
    return {
        "fct": Param(0.15, help="feature condensation threshold: batch statistics while the running mean "
                     "cosine similarity of the layer inputs is above it", low=0.05, high=0.5),
        "beta": Param(0.1, help="update rate of the running threshold τ̄ [R] 0.1"),
        "momentum": _momentum(" [R] 0.1"),
        "latch": Param("epoch", help="decide batch vs running statistics once per epoch (the paper) or "
                       "after every iteration", choices=("epoch", "iteration")),
        "warmup_epochs": Param(1, help="first epochs that always use batch statistics [R] 1"),
    }


def _kernel_size() -> Param:
    return Param(3, help="size of the depthwise convolution that replaces γ, β (odd; identity init [R])",
                 choices=(1, 3, 5, 7))


@hookimpl
def harness_register_norms(register: Callable[[Norm], None]) -> None:
    register(
        Norm(
            name="bn_fct",
            make=f"{_LAYERS}:BatchNormFCT",
            summary="BN whose training statistics follow UBN's feature condensation threshold, latched per epoch.",
            citation=UBN_CITATION,
            params={**_condensation_params(), "eps": _eps()},
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
            params={"momentum": _momentum(), "eps": _eps()},
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
            params={"kernel_size": _kernel_size(), "momentum": _momentum(), "eps": _eps()},
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
            params={**_condensation_params(), "kernel_size": _kernel_size(), "eps": _eps()},
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
            params={"momentum": _momentum(), "eps": _eps()},
            dims={"1d", "2d"},
            reference=f"{_LAYERS}:iebn_reference",
        )
    )
