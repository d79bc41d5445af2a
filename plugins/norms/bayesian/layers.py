"""Norm layers of "Stochastic Normalizations as Bayesian Learning" (Shekhovtsov & Flach, 2018).

Every norm of the paper has the form of its eq. (2): x̃ = (wᵀx − μ̂(w))/σ̂(w)·s + b. Here each layer
is a *standardization* x̂ = (wᵀx − μ̂)/σ̂ followed by a head: the plain affine x̂·s + b
(:class:`WeightNorm`, :class:`AnalyticNorm`), BN-like noise ((x̂ + V)·U)·s + b (:class:`BNNoise`),
or a Bayesian scale (x̂ + b)·S with S ~ q(S) = N(s, σ_S²) (:class:`BayesianScale`).

The standardizations of weight and analytic normalization depend on the weights feeding the
layer, so their protocols (:mod:`.protocols`) install them: the unit-norm parametrization of the
preceding conv/linear, or the moments propagated through the whole network. A layer that no
protocol has set up standardizes nothing (x̂ = x), so it still runs on its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harness_plugins.common.channels import Device, affine_parameters, per_channel
from harness_plugins.norms.baselines import BatchNorm

from .moments import Moments

__all__ = ["AnalyticNorm", "BNNoise", "BayesianScale", "WeightNorm", "kl_to_prior", "sigma_from_u", "u_from_sigma"]


def _noise_shape(x: torch.Tensor) -> tuple[int, ...]:
    """One draw per sample and channel, shared over the spatial positions."""
    return (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)


def _check_input(x: torch.Tensor, name: str) -> None:
    if x.dim() < 2:
        raise ValueError(f"{name} needs N×C or N×C×H×W input; got shape {tuple(x.shape)}")


class _Affine(nn.Module):
    """Holds the per-channel scale s (``weight``) and bias b (``bias``) of a head, both optional."""

    def __init__(self, num_features: int, *, eps: float, affine: bool, device: Device,
                 dtype: torch.dtype | None) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        if affine:
            self.weight, self.bias = affine_parameters(num_features, device=device, dtype=dtype)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return x
        return x * per_channel(self.weight, x) + per_channel(self.bias, x)

    def affine_moments(self, x: Moments) -> Moments:
        if self.weight is None:
            return x
        return Moments(x.mean * self.weight + self.bias, x.var * self.weight.square())

    @torch.no_grad()
    def init_from(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Data-dependent init: s, b such that input of these moments leaves at zero mean, unit variance."""
        scale = (var + self.eps).rsqrt()
        self.weight.copy_(scale)
        self.bias.copy_(-mean * scale)


class WeightNorm(_Affine):
    """Weight normalization (Salimans & Kingma, 2016): y = (w/‖w‖)ᵀx·s + b per output unit.

    The layer holds s and b; its protocol reparametrizes the preceding conv/linear weight to
    w/‖w‖ (μ̂ = 0, σ̂ = ‖w‖ in eq. (2)) and sets s, b by one BN-style pass on a training batch.
    """

    kind = "weightnorm"

    def __init__(self, num_features: int, *, eps: float, affine: bool = True, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps=eps, affine=affine, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "weightnorm")
        return self.affine(x)

    def propagate(self, x: Moments) -> Moments:
        return self.affine_moments(x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


class AnalyticNorm(_Affine):
    """Analytic normalization (Shekhovtsov & Flach, 2018): y = (x − μ̂)/σ̂·s + b.

    μ̂ and σ̂² are the per-channel mean and variance of this layer's input propagated analytically
    from the dataset's input statistics (:mod:`.moments`, **[R]** moment forms). The protocol
    binds them through :meth:`propagate` before every training forward (with gradients, so they
    flow through μ̂, σ̂ into every earlier weight) and once without gradients for evaluation.
    Before any binding μ̂ = 0 and σ̂ = 1. Train and eval compute the same function.
    """

    kind = "analytic_norm"

    def __init__(self, num_features: int, *, eps: float, affine: bool = True, device: Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_features, eps=eps, affine=affine, device=device, dtype=dtype)
        self.stats: Moments | None = None  # recomputed from the parameters, never saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "analytic_norm")
        if self.stats is None:
            return self.affine(x)
        mean, var = self.stats  # (x − μ̂)/σ̂·s + b as one x·a + c pass
        a = (var + self.eps).rsqrt()
        c = -mean * a
        if self.weight is not None:
            a, c = a * self.weight, torch.addcmul(self.bias, c, self.weight)
        return torch.addcmul(per_channel(c, x), x, per_channel(a, x)).to(x.dtype)

    def propagate(self, x: Moments) -> Moments:
        """Bind μ̂, σ̂² = the input moments; the standardized output has mean 0 and variance 1."""
        self.stats = x
        return self.affine_moments(Moments(torch.zeros_like(x.mean), torch.ones_like(x.var)))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


_DETERMINISTIC = {"weightnorm": WeightNorm, "analytic_norm": AnalyticNorm}


def _standardizer(base: str, num_features: int, *, eps: float, momentum: float | None, device: Device,
                  dtype: torch.dtype | None) -> nn.Module:
    """The base norm without its affine: the x̂ of eq. (2) that a stochastic head acts on
    (``momentum``: the batchnorm base's; None where the head takes no batchnorm)."""
    if base in _DETERMINISTIC:
        return _DETERMINISTIC[base](num_features, eps=eps, affine=False, device=device, dtype=dtype)
    if base == "batchnorm" and momentum is not None:
        return BatchNorm(num_features, momentum=momentum, eps=eps, affine=False, device=device, dtype=dtype)
    raise ValueError(f"unknown base norm {base!r}; use 'weightnorm', 'analytic_norm' or 'batchnorm'")


def _standardized_moments(norm: nn.Module, x: Moments) -> Moments:
    if hasattr(norm, "propagate"):
        return norm.propagate(x)
    return Moments(torch.zeros_like(x.mean), torch.ones_like(x.var))  # batch norm standardizes exactly


class BNNoise(_Affine):
    """BN-like noise after a deterministic norm (the paper's eq. (7)): y = ((x̂ + V)·U)·s + b.

    In training V ~ N(0, σ_V²) and U ~ N(1, σ_U²) are drawn per sample and channel and shared
    over spatial positions, as BN's batch-statistics errors are; in eval y = x̂·s + b. The
    defaults σ_V = 0.05, σ_U = 0.035 are the BN noise model V ~ N(0, 1/n), U ~ √n·χ⁻¹ₙ₋₁
    (std ≈ 1/√(2n)) at n = batch × spatial = 400, within the σ_U ≈ 0.02–0.07 the paper measured
    in a BN network.
    """

    def __init__(self, num_features: int, *, base: str, sigma_u: float, sigma_v: float, eps: float,
                 device: Device = None, dtype: torch.dtype | None = None) -> None:
        if base not in _DETERMINISTIC:
            raise ValueError(f"bn_noise goes after a deterministic norm: base 'weightnorm' or 'analytic_norm', "
                             f"not {base!r}")
        super().__init__(num_features, eps=eps, affine=True, device=device, dtype=dtype)
        self.norm = _standardizer(base, num_features, eps=eps, momentum=None, device=device, dtype=dtype)
        self.sigma_u = sigma_u
        self.sigma_v = sigma_v

    @property
    def kind(self) -> str:
        return self.norm.kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = self.norm(x)
        if self.training:
            shape = _noise_shape(x_hat)
            v = torch.randn(shape, device=x.device, dtype=x.dtype) * self.sigma_v
            u = 1 + torch.randn(shape, device=x.device, dtype=x.dtype) * self.sigma_u
            x_hat = (x_hat + v) * u
        return self.affine(x_hat)

    def propagate(self, x: Moments) -> Moments:
        """The noise-free map (the noise has mean zero and unit mean)."""
        return self.affine_moments(_standardized_moments(self.norm, x))

    def extra_repr(self) -> str:
        return f"{self.num_features}, sigma_u={self.sigma_u}, sigma_v={self.sigma_v}"


def sigma_from_u(u: torch.Tensor) -> torch.Tensor:
    """σ_S = e^u for u < 0, u + 1 otherwise: derivatives of both log σ and σ stay bounded."""
    return torch.where(u < 0, u.clamp(max=0).exp(), u + 1)


def u_from_sigma(sigma: float) -> float:
    if sigma <= 0:
        raise ValueError(f"the initial sigma must be positive; got {sigma}")
    return math.log(sigma) if sigma < 1 else sigma - 1


def kl_to_prior(mean: torch.Tensor, sigma: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    """KL(N(s, σ_S²) ‖ N(1, σ₀²)) = log(σ₀/σ_S) + (σ_S² + (s−1)²)/(2σ₀²) − ½, elementwise."""
    return (math.log(prior_sigma) - sigma.log()
            + (sigma.square() + (mean - 1).square()) / (2 * prior_sigma**2) - 0.5)


class BayesianScale(nn.Module):
    """A Bayesian scale after a base norm (the paper's eq. (21)): y = (x̂ + b)·S, q(S) = N(s, σ_S²).

    In training S = s + σ_S·ξ with ξ ~ N(0, 1) of shape N×C×1×1, a new draw per sample (the
    reparametrization of variational Bayes); in eval S = s unless ``sample_in_eval`` is set, as
    the Monte-Carlo evaluation does. σ_S is per channel or one per layer (``per``), parametrized
    by ``u`` (:func:`sigma_from_u`). :meth:`kl` is KL(q(S) ‖ N(1, σ₀²)) summed over channels;
    the protocol adds it to the loss divided by the training set size. ``init_sigma`` (σ_S at
    the start) is not given by the paper.
    """

    def __init__(self, num_features: int, *, base: str, per: str, init_sigma: float, prior_sigma: float,
                 eps: float, momentum: float, device: Device = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if per not in ("channel", "layer"):
            raise ValueError(f"per must be 'channel' or 'layer'; got {per!r}")
        self.num_features = num_features
        self.norm = _standardizer(base, num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.weight, self.bias = affine_parameters(num_features, device=device, dtype=dtype)
        self.u = nn.Parameter(torch.full((num_features if per == "channel" else 1,), u_from_sigma(init_sigma),
                                         device=device, dtype=dtype))
        self.eps = eps
        self.per = per
        self.prior_sigma = prior_sigma
        self.sample_in_eval = False

    @property
    def kind(self) -> str:
        return getattr(self.norm, "kind", "batchnorm")

    @property
    def sigma(self) -> torch.Tensor:
        return sigma_from_u(self.u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = self.norm(x)
        scale = per_channel(self.weight, x_hat)
        if self.training or self.sample_in_eval:
            xi = torch.randn(_noise_shape(x_hat), device=x_hat.device, dtype=x_hat.dtype)
            scale = scale + per_channel(self.sigma, x_hat) * xi
        return torch.addcmul(per_channel(self.bias, x_hat) * scale, x_hat, scale)

    def kl(self) -> torch.Tensor:
        """Σ over channels of KL(N(s_c, σ_S,c²) ‖ N(1, σ₀²))."""
        return kl_to_prior(self.weight, self.sigma.expand_as(self.weight), self.prior_sigma).sum()

    def propagate(self, x: Moments) -> Moments:
        """The map at S = s: mean (μ̂ + b)·s, variance v̂·s²."""
        z = _standardized_moments(self.norm, x)
        return Moments((z.mean + self.bias) * self.weight, z.var * self.weight.square())

    @torch.no_grad()
    def init_from(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Data-dependent init: s = 1/σ, b = −μ, so (x̂ + b)·s starts at zero mean, unit variance."""
        self.weight.copy_((var + self.eps).rsqrt())
        self.bias.copy_(-mean)

    def extra_repr(self) -> str:
        return f"{self.num_features}, per={self.per}, prior_sigma={self.prior_sigma}"
