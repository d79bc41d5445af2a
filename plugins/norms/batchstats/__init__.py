"""Batch-statistics methods: where BN's statistics come from (unlabeled data, balanced batches,
random training batches at test time, running averages, a learned mixture).

Registration only, without torch: layers and protocols are named by ``"module:Attr"`` strings
and live in this package's modules (``ubn``, ``balanced``, ``renorm``, ``mc``, ``switchable``).
"""

from __future__ import annotations

from collections.abc import Callable

from harness import Norm, Param, hookimpl

_PKG = "harness_plugins.norms.batchstats"
_BN = "harness_plugins.norms.baselines:BatchNorm"
_BN_REFERENCE = f"{_PKG}.common:batchnorm_reference"


def _bn_params() -> dict[str, Param]:
    return {
        "momentum": Param(0.1, help="running-statistics update rate (PyTorch convention)", low=0.01, high=0.5,
                          log=True),
        "eps": Param(1e-5, help="added to the variance"),
    }


@hookimpl
def harness_register_norms(register: Callable[[Norm], None]) -> None:
    register(
        Norm(
            name="unsupervised_bn",
            make=f"{_PKG}.ubn:UnsupervisedBatchNorm",
            summary="BN with training statistics over labeled + unlabeled inputs, loss on the labeled ones.",
            citation="Kocyigit, Sevilla-Lara, Hospedales & Bilen, Unsupervised Batch Normalization, "
            "CVPR Workshops 2020",
            params={
                "stats_grad": Param("detach", help="'detach': batch mean and variance are constants in "
                                    "backward (the paper's two steps); 'full': gradients through them",
                                    choices=("detach", "full")),
                "ratio": Param(8, help="unlabeled inputs per labeled input in each training batch", low=1, high=16),
                **_bn_params(),
            },
            dims={"1d", "2d"},
            needs={"unlabeled"},
            protocol=f"{_PKG}.ubn:protocol",
            reference=_BN_REFERENCE,  # UBN with an empty unlabeled batch is BN
        )
    )
    register(
        Norm(
            name="balanced_bn",
            make=_BN,
            summary="BN trained on class-balanced batches (one sample per class); adds the oracle "
            "'balanced' evaluation on label-balanced test batches.",
            citation="Hajaj & Gillies, Batch Normalization and the impact of batch structure on the "
            "behavior of deep convolution networks, arXiv preprint, 2021",
            params=_bn_params(),
            dims={"1d", "2d"},
            needs={"labels"},
            protocol=f"{_PKG}.balanced:protocol",
            reference=_BN_REFERENCE,
        )
    )
    register(
        Norm(
            name="batch_renorm",
            make=f"{_PKG}.renorm:BatchRenorm",
            summary="Batch renormalization: BN corrected by clipped r, d towards the running statistics.",
            citation="Ioffe, Batch Renormalization: Towards Reducing Minibatch Dependence in "
            "Batch-Normalized Models, NeurIPS 2017",
            params={
                "r_max": Param(3.0, help="final clip of r = σ_B/σ to [1/r_max, r_max]", low=1.0, high=5.0),
                "d_max": Param(5.0, help="final clip of d = (μ_B − μ)/σ to [−d_max, d_max]", low=0.0, high=10.0),
                "warmup_steps": Param(1000, help="training steps over which r_max ramps from 1 and d_max from 0",
                                      low=100, high=20000, log=True),
                **_bn_params(),
            },
            dims={"1d", "2d"},
            reference=_BN_REFERENCE,
        )
    )
    register(
        Norm(
            name="mc_batchnorm",
            make=_BN,
            summary="BN with an 'mc' evaluation: mean softmax over T draws of training-batch statistics, "
            "and its spread.",
            citation="Teye, Azizpour & Smith, Bayesian Uncertainty Estimation for Batch Normalized Deep "
            "Networks, ICML 2018",
            params={
                "mc_samples": Param(16, help="T: training batches whose statistics each test batch is run with",
                                    low=2, high=64, log=True),
                **_bn_params(),
            },
            dims={"1d", "2d"},
            protocol=f"{_PKG}.mc:protocol",
            reference=_BN_REFERENCE,
        )
    )
    register(
        Norm(
            name="switchable_norm",
            make=f"{_PKG}.switchable:SwitchableNorm",
            summary="Switchable normalization: learned softmax mixture of IN, LN and BN statistics.",
            citation="Luo, Ren, Peng, Zhang & Li, Differentiable Learning-to-Normalize via Switchable "
            "Normalization, ICLR 2019",
            params=_bn_params(),
            dims={"2d"},
        )
    )
