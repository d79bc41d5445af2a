"""Batch-statistics methods: where BN's statistics come from (unlabeled data, balanced batches,
random training batches at test time, running averages, a learned mixture).

Registration only, without torch: layers and protocols are named by ``"module:Attr"`` strings
and live in this package's modules (``ubn``, ``balanced``, ``renorm``, ``mc``, ``switchable``).
Every norm here keeps BN's running statistics: its config builds on
:class:`~harness_plugins.common.params.RunningStatsConfig` (``momentum``, ``eps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from harness import Norm, Search, hookimpl
from harness.capabilities import CLASS_SCORES, INPUT_BATCHES, LABELS, UNLABELED
from harness_plugins.common.params import RunningStatsConfig

_PKG = "harness_plugins.norms.batchstats"
_BN = "harness_plugins.norms.baselines:BatchNorm"
_BN_REFERENCE = f"{_PKG}.common:batchnorm_reference"

#: How the unsupervised BN's backward treats the batch statistics.
StatsGrad = Literal["detach", "full"]


class UBNConfig(RunningStatsConfig):
    """``unsupervised_bn``: how gradients treat the statistics, and the unlabeled share of a batch."""

    protocol_only: ClassVar[frozenset[str]] = frozenset({"ratio"})

    stats_grad: StatsGrad = Field(
        "detach", description="'detach': batch mean and variance are constants in backward (the paper's two "
        "steps); 'full': gradients through them"
    )
    ratio: Annotated[int, Search(1, 16)] = Field(
        8, ge=0, description="unlabeled inputs per labeled input in each training batch (0: plain BN)"
    )


class BalancedBNConfig(RunningStatsConfig):
    """``balanced_bn``: BN's momentum and eps (the batches are the protocol's)."""


class BatchRenormConfig(RunningStatsConfig):
    """``batch_renorm``: the final clipping limits of r and d, and their warm-up."""

    r_max: Annotated[float, Search(1.0, 5.0)] = Field(
        3.0, ge=1, description="final clip of r = σ_B/σ to [1/r_max, r_max]"
    )
    d_max: Annotated[float, Search(0.0, 10.0)] = Field(
        5.0, ge=0, description="final clip of d = (μ_B − μ)/σ to [−d_max, d_max]"
    )
    warmup_steps: Annotated[int, Search(100, 20000, log=True)] = Field(
        1000, ge=0, description="training steps over which r_max ramps from 1 and d_max from 0"
    )


class MCBatchNormConfig(RunningStatsConfig):
    """``mc_batchnorm``: the number of draws of the ``mc`` evaluation."""

    protocol_only: ClassVar[frozenset[str]] = frozenset({"mc_samples"})

    mc_samples: Annotated[int, Search(2, 64, log=True)] = Field(
        16, ge=1, description="T: training batches whose statistics each test batch is run with"
    )


class SwitchableNormConfig(RunningStatsConfig):
    """``switchable_norm``: the BN part's momentum, and eps."""


@hookimpl
def harness_register_norms(register: Callable[[Norm], None]) -> None:
    register(
        Norm(
            name="unsupervised_bn",
            make=f"{_PKG}.ubn:UnsupervisedBatchNorm",
            config=UBNConfig,
            summary="BN with training statistics over labeled + unlabeled inputs, loss on the labeled ones.",
            citation="Kocyigit, Sevilla-Lara, Hospedales & Bilen, Unsupervised Batch Normalization, "
            "CVPR Workshops 2020",
            dims={"1d", "2d"},
            needs={UNLABELED, INPUT_BATCHES},  # unlabeled inputs join the labeled batch
            protocol=f"{_PKG}.ubn:protocol",
            reference=_BN_REFERENCE,  # UBN with an empty unlabeled batch is BN
        )
    )
    register(
        Norm(
            name="balanced_bn",
            make=_BN,
            config=BalancedBNConfig,
            summary="BN trained on class-balanced batches (one sample per class); adds the oracle "
            "'balanced' evaluation on label-balanced test batches.",
            citation="Hajaj & Gillies, Batch Normalization and the impact of batch structure on the "
            "behavior of deep convolution networks, arXiv preprint, 2021",
            dims={"1d", "2d"},
            needs={LABELS, INPUT_BATCHES},  # batches composed by label; test batches extended
            protocol=f"{_PKG}.balanced:protocol",
            reference=_BN_REFERENCE,
        )
    )
    register(
        Norm(
            name="batch_renorm",
            make=f"{_PKG}.renorm:BatchRenorm",
            config=BatchRenormConfig,
            summary="Batch renormalization: BN corrected by clipped r, d towards the running statistics.",
            citation="Ioffe, Batch Renormalization: Towards Reducing Minibatch Dependence in "
            "Batch-Normalized Models, NeurIPS 2017",
            dims={"1d", "2d"},
            reference=_BN_REFERENCE,
        )
    )
    register(
        Norm(
            name="mc_batchnorm",
            make=_BN,
            config=MCBatchNormConfig,
            summary="BN with an 'mc' evaluation: mean softmax over T draws of training-batch statistics, "
            "and its spread.",
            citation="Teye, Azizpour & Smith, Bayesian Uncertainty Estimation for Batch Normalized Deep "
            "Networks, ICML 2018",
            dims={"1d", "2d"},
            needs={INPUT_BATCHES, CLASS_SCORES},  # training-batch statistics drawn, softmax averaged
            protocol=f"{_PKG}.mc:protocol",
            reference=_BN_REFERENCE,
        )
    )
    register(
        Norm(
            name="switchable_norm",
            make=f"{_PKG}.switchable:SwitchableNorm",
            config=SwitchableNormConfig,
            summary="Switchable normalization: learned softmax mixture of IN, LN and BN statistics.",
            citation="Luo, Ren, Peng, Zhang & Li, Differentiable Learning-to-Normalize via Switchable "
            "Normalization, ICLR 2019",
            dims={"2d"},
        )
    )
