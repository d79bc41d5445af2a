"""Unified Batch Normalization (UBN) and the batch-norm variants it unifies, as layers.

UBN (Wang et al., arXiv:2311.15993) chains three rectifications of BN: the feature condensation rule
picks the statistics (batch or running) during training, RBN's centering and scaling calibration
rectify the normalization, and BNET's depthwise convolution replaces the affine. Each part is a
norm of its own here, so the paper's ablation rows can be run side by side:

* :class:`BatchNormFCT` (``bn_fct``): BN + the condensation rule only.
* :class:`RepresentativeBatchNorm` (``rbn``): centering + scaling calibration (Gao et al., 2021).
* :class:`BNET` (``bnet``): BN without affine + a depthwise k×k convolution (Xu et al., 2023).
* :class:`UnifiedBatchNorm` (``unified_bn``): all of the above, in that order.
* :class:`InstanceEnhancementBatchNorm` (``iebn``): BN's γ gated by GAP(x) (Liang et al., 2020).

Per-channel parameters are stored as C-vectors (viewed as 1×C×1×1 in the forward) so that
``rbn`` and ``iebn`` serve N×C input too, where GAP(x) is x itself. ``bn_fct`` and ``bnet``
normalize with ``F.batch_norm``; the others compute their output as one per-sample affine map of x through
:func:`~harness_plugins.norms.ops.moment_norm` (near BN's cost). Every layer keeps BN's
``running_mean``/``running_var`` buffers (unbiased variance, PyTorch momentum), of the input
*after* centering where there is centering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, get_args

import torch
from torch import nn
from torch.nn import functional as F

from harness.protocol import NormProtocol
from harness_plugins.common.channels import Device, affine_parameters, per_channel, register_running_stats
from harness_plugins.norms.baselines import BatchNorm
from harness_plugins.norms.ops import Coefficients, batch_moments, moment_norm, select
from harness_plugins.norms.unified import BNFCTConfig, Latch, UnifiedBNConfig

__all__ = [
    "BNET",
    "BatchNormFCT",
    "CondensationLatch",
    "FeatureCondensationNorm",
    "InstanceEnhancementBatchNorm",
    "RepresentativeBatchNorm",
    "ScaledBatchNorm",
    "UnifiedBatchNorm",
    "condensation",
    "condensation_protocol",
]

LATCHES = get_args(Latch)


def condensation(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the pairs i ≠ j of the N samples of x, each flattened (a 0-dim
    tensor of at least float32 precision, no gradient). Needs N ≥ 2.

    O(N·CHW) without the N×N matrix: with u_i = x_i/‖x_i‖, Σ_{i≠j} u_i·u_j = ‖Σ_i u_i‖² − Σ_i ‖u_i‖².
    The last sum is N unless a sample is all zeros, whose similarities then count as 0.
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"the mean pairwise cosine similarity needs at least 2 samples; got {n}")
    with torch.no_grad():
        flat = x.detach().reshape(n, -1).to(torch.promote_types(x.dtype, torch.float32))
        norms = torch.linalg.vector_norm(flat, dim=1)
        inverse = norms.clamp_min(torch.finfo(flat.dtype).tiny).reciprocal()
        total = inverse @ flat  # Σ_i u_i
        return (total.dot(total) - (norms * inverse).square().sum()) / (n * (n - 1))


class _RunningStats(nn.Module):
    """BN's running statistics, and the normalization the variants share: y = a·(x − m) + c per
    sample and channel through :func:`moment_norm`, with batch or running statistics."""

    def __init__(self, num_features: int, *, momentum: float, eps: float, device: Device,
                 dtype: torch.dtype | None) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]; got {momentum}")
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        register_running_stats(self, num_features, device=device, dtype=dtype)

    def _normalize(self, x: torch.Tensor, batch_stats: bool, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
        """Batch statistics (running ones updated) or running statistics (left untouched)."""
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, batch_stats, self.momentum,
                            self.eps)

    def _affine(self, x: torch.Tensor, coefficients: Coefficients, batch_stats: bool | torch.Tensor,
                *params: torch.Tensor, tracked: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """:func:`moment_norm` with this layer's running statistics, momentum and eps."""
        return moment_norm(x, coefficients, *params, batch_stats=batch_stats, running_mean=self.running_mean,
                           running_var=self.running_var, momentum=self.momentum, eps=self.eps, tracked=tracked)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def _statistics(mean: torch.Tensor, var: torch.Tensor | None, running_mean: torch.Tensor,
                running_var: torch.Tensor, eps: float,
                batch_stats: bool | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (μ, 1/√(σ² + eps)), each 1×C×1…: the batch's, from per-sample moments, or the
    running ones (chosen on the device when ``batch_stats`` is a tensor)."""
    running = per_channel(running_mean, mean).to(mean.dtype), per_channel(running_var, mean).to(mean.dtype)
    if batch_stats is False:
        mu, sigma2 = running
    else:
        batch = batch_moments(mean, var)
        mu, sigma2 = (select(batch_stats, b, r) for b, r in zip(batch, running, strict=True))
    return mu, (sigma2 + eps).rsqrt()


def _rbn_coefficients(mean: torch.Tensor, var: torch.Tensor | None, center_weight: torch.Tensor,
                      scale_weight: torch.Tensor, scale_bias: torch.Tensor, *affine: torch.Tensor,
                      running_mean: torch.Tensor, running_var: torch.Tensor, eps: float,
                      batch_stats: bool | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RBN's centering and scaling calibration around BN (``affine``: γ, β, or none for UBN).

    With m the per-sample mean of x: x′ = x + w_m·m has per-sample mean (1 + w_m)·m and the
    variance of x; x̂ = (x′ − μ)/σ; GAP(x̂) = ((1 + w_m)·m − μ)/σ; the gated output
    γ·g·x̂ + β is a·(x − m) + c with a = γ·g/σ and c = β + a·((1 + w_m)·m − μ).
    """
    center = per_channel(center_weight, mean)
    centered_mean = mean * (1 + center)
    mu, inv_std = _statistics(centered_mean, var, running_mean, running_var, eps, batch_stats)
    gate = torch.sigmoid(per_channel(scale_weight, mean) * (centered_mean - mu) * inv_std
                         + per_channel(scale_bias, mean))
    if not affine:
        a = gate * inv_std
        return a, a * (centered_mean - mu)
    a = gate * inv_std * per_channel(affine[0], mean)
    return a, a * (centered_mean - mu) + per_channel(affine[1], mean)


def _iebn_coefficients(mean: torch.Tensor, var: torch.Tensor | None, gate_weight: torch.Tensor,
                       gate_bias: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                       running_mean: torch.Tensor, running_var: torch.Tensor, eps: float,
                       batch_stats: bool | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IEBN: a = γ·sigmoid(w_r·GAP(x) + b_r)/σ, c = β + a·(m − μ)."""
    mu, inv_std = _statistics(mean, var, running_mean, running_var, eps, batch_stats)
    gate = torch.sigmoid(per_channel(gate_weight, mean) * mean + per_channel(gate_bias, mean))
    a = gate * per_channel(weight, mean) * inv_std
    return a, per_channel(bias, mean) + a * (mean - mu)


def _bn_coefficients(mean: torch.Tensor, var: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, *,
                     running_mean: torch.Tensor, running_var: torch.Tensor, eps: float,
                     batch_stats: bool | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BN with batch or running statistics: a = γ/σ, c = β + a·(m − μ)."""
    mu, inv_std = _statistics(mean, var, running_mean, running_var, eps, batch_stats)
    a = per_channel(weight, mean) * inv_std
    return a, per_channel(bias, mean) + a * (mean - mu)


def _depthwise_affine(num_features: int, kernel_size: int, *, device: Device,
                      dtype: torch.dtype | None) -> tuple[nn.Parameter, nn.Parameter]:
    """BNET's affine: a depthwise k×k kernel (C×1×k×k) that passes its input through (centre tap 1,
    others 0), and a zero bias."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number (same-size padding); got {kernel_size}")
    weight = torch.zeros(num_features, 1, kernel_size, kernel_size, device=device, dtype=dtype)
    weight[:, :, kernel_size // 2, kernel_size // 2] = 1.0
    return nn.Parameter(weight), nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))


def _calibration(num_features: int, *, device: Device,
                 dtype: torch.dtype | None) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """RBN's calibration parameters at their init: centering weight w_m = 0, scaling weight w_v = 0
    and scaling bias w_b = 1."""
    return tuple(nn.Parameter(torch.full((num_features,), value, device=device, dtype=dtype))
                 for value in (0.0, 0.0, 1.0))


def _need_2d(name: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} needs N×C×H×W input (its affine is a depthwise k×k convolution); "
                         f"got shape {tuple(x.shape)}")


def _depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])


class FeatureCondensationNorm(_RunningStats):
    """The feature condensation rule of UBN: which statistics a training batch is normalized with.

    Every training batch of N ≥ 2 updates the running threshold τ̄ ← (1−β)·τ̄ + β·s_t with the
    batch's condensation s_t (:func:`condensation` of the layer input); τ̄ starts at the first s_t.
    While τ̄ > ``fct`` the layer uses batch statistics and updates the running ones with
    ``momentum``; otherwise it normalizes with the running statistics and leaves them alone.
    The decision is latched by :meth:`latch_epoch` at each epoch start (``latch="epoch"``, the
    paper) or taken after every update of τ̄ (``latch="iteration"``); the first
    ``warmup_epochs`` epochs always use batch statistics, since the initial running statistics
    would not normalize at all. A batch of one has no pairs: it leaves τ̄ unchanged. Eval mode
    uses the running statistics.

    After the warm-up the decision is a 0-dim bool tensor on the layer's device (τ̄ > fct), never
    read by the host: the training step applies it with ``torch.where`` and syncs nothing. During
    the warm-up it is the Python ``True``, and the layer takes torch's BN path.

    β = 0.1, momentum = 0.1 and one warm-up epoch are rebuilt choices (METHODS.md [R]), exposed
    as ``beta``, ``momentum`` and ``warmup_epochs``. τ̄ is a buffer (saved with the model); the
    latched decision is not: the protocol latches it again at the start of every epoch, a resumed
    one included, and a layer never latched acts as in epoch 0.
    """

    def __init__(self, num_features: int, *, fct: float, beta: float, momentum: float, latch: str,
                 warmup_epochs: int, eps: float, device: Device, dtype: torch.dtype | None) -> None:
        super().__init__(num_features, momentum=momentum, eps=eps, device=device, dtype=dtype)
        if latch not in LATCHES:
            raise ValueError(f"latch must be one of {LATCHES}; got {latch!r}")
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1]; got {beta}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0; got {warmup_epochs}")
        self.fct = fct
        self.beta = beta
        self.latch = latch
        self.warmup_epochs = warmup_epochs
        self.register_buffer("tau", torch.zeros((), device=device, dtype=dtype))
        self.register_buffer("tau_steps", torch.zeros((), dtype=torch.long, device=device))
        # The latched decision after the warm-up, on the layer's device (moved by .to() as buffers
        # are) and not saved: the protocol latches again at every epoch start.
        self.register_buffer("condensed", torch.ones((), dtype=torch.bool, device=device),
                             persistent=False)
        self.latch_epoch(0)

    @property
    def batch_stats(self) -> bool | torch.Tensor:
        """The latched choice: ``True`` during the warm-up, else a 0-dim bool tensor (τ̄ > fct)."""
        return True if self.epoch < self.warmup_epochs else self.condensed

    def latch_epoch(self, epoch: int) -> None:
        """Fix the statistics for training epoch ``epoch`` (from 0) from the current τ̄."""
        self.epoch = epoch
        self._latch()

    def _latch(self) -> bool | torch.Tensor:
        """The decision from the current τ̄, kept in ``condensed``; a fresh tensor is returned, which
        later in-place updates (of τ̄, of ``condensed``) leave alone."""
        if self.epoch < self.warmup_epochs:
            return True
        with torch.no_grad():
            decision = self.tau > self.fct
            self.condensed.copy_(decision)
        return decision

    def _choose_stats(self, x: torch.Tensor) -> bool | torch.Tensor:
        """In training: fold this batch into τ̄ and say whether to use batch statistics."""
        if not self.training:
            return False
        if x.shape[0] > 1:
            s = condensation(x).to(self.tau.dtype)
            with torch.no_grad():
                self.tau.copy_(torch.where(self.tau_steps > 0, torch.lerp(self.tau, s, self.beta), s))
                self.tau_steps.add_(1)
        if self.latch == "iteration":
            return self._latch()
        return self.batch_stats

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, fct={self.fct}, beta={self.beta}, latch={self.latch!r}, "
                f"warmup_epochs={self.warmup_epochs}")


class BatchNormFCT(FeatureCondensationNorm):
    """``bn_fct``: BN whose statistics follow the feature condensation rule, with BN's γ, β."""

    def __init__(self, num_features: int, *, fct: float, beta: float, momentum: float, latch: str,
                 warmup_epochs: int, eps: float, device: Device = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, fct=fct, beta=beta, momentum=momentum, latch=latch,
                         warmup_epochs=warmup_epochs, eps=eps, device=device, dtype=dtype)
        self.weight, self.bias = affine_parameters(num_features, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_stats = self._choose_stats(x)
        if isinstance(batch_stats, bool):
            return self._normalize(x, batch_stats, self.weight, self.bias)
        return self._affine(x, _bn_coefficients, batch_stats, self.weight, self.bias)


class RepresentativeBatchNorm(_RunningStats):
    """``rbn`` (Gao et al., CVPR 2021): BN with centering and scaling calibration.

    x′ = x + w_m⊙GAP(x); x̂ = BN(x′) without affine (running statistics track x′);
    y = γ⊙sigmoid(w_v⊙GAP(x̂) + w_b)⊙x̂ + β. Init w_m = 0, w_v = 0, w_b = 1, γ = 1, β = 0, so a
    fresh layer is BN scaled by sigmoid(1).
    """

    def __init__(self, num_features: int, *, momentum: float, eps: float, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, momentum=momentum, eps=eps, device=device, dtype=dtype)
        self.center_weight, self.scale_weight, self.scale_bias = _calibration(num_features, device=device, dtype=dtype)
        self.weight, self.bias = affine_parameters(num_features, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._affine(x, _rbn_coefficients, self.training, self.center_weight, self.scale_weight,
                            self.scale_bias, self.weight, self.bias, tracked=self._centered)

    def _centered(self, mean: torch.Tensor) -> torch.Tensor:
        """The per-sample mean of the centered input x + w_m·GAP(x), which the running stats track."""
        return mean * (1 + per_channel(self.center_weight.detach(), mean))


class BNET(_RunningStats):
    """``bnet`` (Xu et al., TPAMI 2023): BN without affine, then a depthwise k×k convolution with
    bias in place of γ, β, so the affine sees each channel's k×k neighbourhood. N×C×H×W only.

    The kernel starts as the identity (centre tap 1, bias 0; METHODS.md [R]), so a fresh layer is
    BN without affine.
    """

    def __init__(self, num_features: int, *, kernel_size: int, momentum: float, eps: float, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, momentum=momentum, eps=eps, device=device, dtype=dtype)
        self.weight, self.bias = _depthwise_affine(num_features, kernel_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _need_2d("bnet", x)
        return _depthwise(self._normalize(x, self.training), self.weight, self.bias)


class UnifiedBatchNorm(FeatureCondensationNorm):
    """``unified_bn`` (Wang et al., arXiv:2311.15993): the condensation rule picks the statistics, RBN's
    calibrations rectify the normalization and BNET's convolution is the affine. N×C×H×W only.

    x′ = x + w_m⊙GAP(x); x̂ = x′ normalized with the statistics the rule picks (running
    statistics track x′; the rule reads the layer input x); x̂′ = x̂⊙sigmoid(w_v⊙GAP(x̂) + w_b);
    y = depthwise k×k conv(x̂′) + bias. Init w_m = 0, w_v = 0, w_b = 1 and an identity kernel
    (METHODS.md [R]), so a fresh layer in its first epoch is BN without affine scaled by sigmoid(1).
    """

    def __init__(self, num_features: int, *, fct: float, beta: float, momentum: float, latch: str,
                 warmup_epochs: int, kernel_size: int, eps: float, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, fct=fct, beta=beta, momentum=momentum, latch=latch,
                         warmup_epochs=warmup_epochs, eps=eps, device=device, dtype=dtype)
        self.center_weight, self.scale_weight, self.scale_bias = _calibration(num_features, device=device, dtype=dtype)
        self.weight, self.bias = _depthwise_affine(num_features, kernel_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _need_2d("unified_bn", x)
        normalized = self._affine(x, _rbn_coefficients, self._choose_stats(x), self.center_weight, self.scale_weight,
                                  self.scale_bias, tracked=self._centered)
        return _depthwise(normalized, self.weight, self.bias)

    _centered = RepresentativeBatchNorm._centered


class InstanceEnhancementBatchNorm(_RunningStats):
    """``iebn`` (Liang et al., 2020): BN whose γ is gated per sample by the un-normalized input,
    y = x̂⊙(γ⊙sigmoid(w_r⊙GAP(x) + b_r)) + β. Init γ = 1, β = 0, w_r = 0, b_r = −1, so a fresh
    layer is BN scaled by sigmoid(−1).
    """

    def __init__(self, num_features: int, *, momentum: float, eps: float, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, momentum=momentum, eps=eps, device=device, dtype=dtype)
        self.weight, self.bias = affine_parameters(num_features, device=device, dtype=dtype)
        self.gate_weight = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        self.gate_bias = nn.Parameter(torch.full((num_features,), -1.0, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._affine(x, _iebn_coefficients, self.training, self.gate_weight, self.gate_bias, self.weight,
                            self.bias)


class CondensationLatch(NormProtocol):
    """Latches every condensation layer's statistics at each epoch start (warm-up: batch stats),
    and reports whether the rule ever chose running statistics."""

    def __init__(self) -> None:
        self.running_layer_epochs: int | torch.Tensor = 0  # a device tensor once a decision is one

    def before_train_epoch(self, net: nn.Module, epoch: int) -> None:
        for layer in [m for m in net.modules() if isinstance(m, FeatureCondensationNorm)]:
            layer.latch_epoch(epoch)
            chosen = layer.batch_stats
            self.running_layer_epochs = self.running_layer_epochs + (
                (not chosen) if isinstance(chosen, bool) else (~chosen).long())  # counted on the device

    def metrics(self, net: nn.Module) -> dict[str, float]:
        """The final τ̄ averaged over layers, and the layer-epochs trained on running statistics
        (zero means the norm behaved as BN throughout)."""
        taus = [float(layer.tau) for layer in net.modules() if isinstance(layer, FeatureCondensationNorm)]
        return {"condensation_tau": sum(taus) / len(taus) if taus else 0.0,
                "running_stat_layer_epochs": float(self.running_layer_epochs)}

    def state_dict(self) -> dict[str, Any]:
        return {"running_layer_epochs": self.running_layer_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running_layer_epochs = state["running_layer_epochs"]


def condensation_protocol(config: BNFCTConfig | UnifiedBNConfig) -> NormProtocol:
    """Protocol factory of ``bn_fct`` and ``unified_bn``: the same latch for any config (the rule's
    parameters are the layers')."""
    return CondensationLatch()


# -- references: what a fresh layer computes in training mode ------------------------------------
# Each takes the layer's keywords; those that do not change a fresh layer's training output
# (the condensation rule's, which starts with batch statistics; the identity kernel's size) are
# taken and left.


class ScaledBatchNorm(nn.Module):
    """Plain torch BN (any rank) times a constant: the reference of the calibrated norms at init."""

    def __init__(self, num_features: int, *, scale: float, affine: bool, momentum: float, eps: float) -> None:
        super().__init__()
        self.bn = BatchNorm(num_features, momentum=momentum, eps=eps, affine=affine)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.scale


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def bn_fct_reference(num_features: int, *, fct: float, beta: float, latch: str, warmup_epochs: int, momentum: float,
                     eps: float) -> nn.Module:
    """``bn_fct`` in its first epoch: BN with affine."""
    return ScaledBatchNorm(num_features, scale=1.0, affine=True, momentum=momentum, eps=eps)


def rbn_reference(num_features: int, *, momentum: float, eps: float) -> nn.Module:
    """``rbn`` at init: BN without affine times sigmoid(1)."""
    return ScaledBatchNorm(num_features, scale=_sigmoid(1.0), affine=False, momentum=momentum, eps=eps)


def bnet_reference(num_features: int, *, kernel_size: int, momentum: float, eps: float) -> nn.Module:
    """``bnet`` with its identity kernel (of any size): BN without affine."""
    return ScaledBatchNorm(num_features, scale=1.0, affine=False, momentum=momentum, eps=eps)


def unified_reference(num_features: int, *, fct: float, beta: float, latch: str, warmup_epochs: int, kernel_size: int,
                      momentum: float, eps: float) -> nn.Module:
    """``unified_bn`` at init, first epoch: BN without affine times sigmoid(1)."""
    return ScaledBatchNorm(num_features, scale=_sigmoid(1.0), affine=False, momentum=momentum, eps=eps)


def iebn_reference(num_features: int, *, momentum: float, eps: float) -> nn.Module:
    """``iebn`` at init: BN without affine times sigmoid(−1) (γ = 1 folded into the scale)."""
    return ScaledBatchNorm(num_features, scale=_sigmoid(-1.0), affine=False, momentum=momentum, eps=eps)
