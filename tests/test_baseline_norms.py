"""The baseline norms compute what torch's own layers compute; every registered norm's config is
its one source of parameters: its defaults validate, its layer fields reach the layer factory as
keywords and hold in the built layer, its protocol-only fields do not reach it."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from timm.layers import GroupNorm1
from torch import nn
from torch.nn import functional as F
from torch.testing import assert_close

from harness import Norm
from harness.plugins import load_registry
from harness_plugins.norms import harness_register_norms
from harness_plugins.norms.baselines import BatchNorm, GroupNorm, Identity, InstanceNorm

from conftest import randomize_affine

C = 6
EPS = 1e-5
REGISTRY = load_registry()
BASELINES = ("batchnorm", "groupnorm", "layernorm", "instancenorm", "none")


def _layer(name: str, **values: Any) -> Callable[..., nn.Module]:
    """The registered norm's ``norm_layer`` with these config values (its defaults otherwise)."""
    norm = REGISTRY.norms[name]
    return norm.layer(norm.config(**values))


def _input(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random input with a non-zero mean and non-unit scale per channel."""
    g = torch.Generator().manual_seed(seed)
    channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    mean = torch.randn(channel, generator=g) * 3
    scale = torch.rand(channel, generator=g) * 4 + 0.5
    return torch.randn(shape, generator=g) * scale + mean


def _assert_same(ours: nn.Module, ref: nn.Module, shape: tuple[int, ...], steps: int = 3) -> None:
    """Train-mode outputs and gradients for a few steps, running stats, then eval-mode outputs."""
    ours.train()
    ref.train()
    for step in range(steps):
        x = _input(*shape, seed=10 + step)
        x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y_ref = ours(x_ours), ref(x_ref)
        assert_close(y_ours, y_ref)
        g = _input(*shape, seed=100 + step)
        (y_ours * g).sum().backward()
        (y_ref * g).sum().backward()
        assert_close(x_ours.grad, x_ref.grad)
        for (name, p_ours), (_, p_ref) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
            assert_close(p_ours.grad, p_ref.grad, msg=f"grad of {name}")
    assert_close(ours.state_dict(), ref.state_dict())
    ours.eval()
    ref.eval()
    x = _input(*shape, seed=1000)
    assert_close(ours(x), ref(x))


@pytest.mark.parametrize(
    ("ref_cls", "shape"),
    [(nn.BatchNorm1d, (8, C)), (nn.BatchNorm1d, (8, C, 5)), (nn.BatchNorm2d, (4, C, 5, 3))],
)
def test_batchnorm_equals_torch(ref_cls: type[nn.Module], shape: tuple[int, ...]) -> None:
    ours, ref = BatchNorm(C, momentum=0.2, eps=EPS), ref_cls(C, momentum=0.2)
    randomize_affine(ours, ref)
    _assert_same(ours, ref, shape)
    assert ours.num_batches_tracked.item() == 3


def test_batchnorm_rejects_other_ranks() -> None:
    with pytest.raises(ValueError, match="batchnorm needs"):
        _layer("batchnorm")(C)(torch.randn(C))


@pytest.mark.parametrize(
    ("num_features", "groups", "expected"), [(24, 32, 24), (48, 32, 24), (10, 4, 2), (7, 32, 7)]
)
def test_groupnorm_clips_groups(num_features: int, groups: int, expected: int) -> None:
    assert GroupNorm(num_features, groups=groups, eps=EPS).num_groups == expected


def test_groupnorm_default_is_32() -> None:
    assert _layer("groupnorm")(64).num_groups == 32


@pytest.mark.parametrize("shape", [(4, 12), (4, 12, 5, 3)])
def test_groupnorm_equals_torch(shape: tuple[int, ...]) -> None:
    ours, ref = GroupNorm(12, groups=8, eps=EPS), nn.GroupNorm(6, 12)
    randomize_affine(ours, ref)
    _assert_same(ours, ref, shape)


def test_layernorm_is_timms_groupnorm1_with_the_per_channel_affine() -> None:
    layer = _layer("layernorm")(C)
    assert type(layer) is GroupNorm1 and layer.num_groups == 1 and layer.eps == EPS
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {"weight": (C,), "bias": (C,)}
    assert torch.equal(layer.weight, torch.ones(C)) and torch.equal(layer.bias, torch.zeros(C))


@pytest.mark.parametrize("shape", [(4, C), (4, C, 5, 3)])
def test_layernorm_at_init_is_plain_layer_norm(shape: tuple[int, ...]) -> None:
    x = _input(*shape)
    assert_close(_layer("layernorm")(C)(x), F.layer_norm(x, x.shape[1:]))


@pytest.mark.parametrize("shape", [(4, C), (4, C, 5, 3)])
def test_layernorm_equals_groupnorm_with_one_group(shape: tuple[int, ...]) -> None:
    ours, ref = _layer("layernorm")(C), nn.GroupNorm(1, C)
    randomize_affine(ours, ref)
    _assert_same(ours, ref, shape)
    x = _input(*shape)
    channel = (1, C) + (1,) * (len(shape) - 2)
    expected = F.layer_norm(x, x.shape[1:]) * ours.weight.view(channel) + ours.bias.view(channel)
    assert_close(ours(x), expected)


def test_instancenorm_equals_torch() -> None:
    ours, ref = InstanceNorm(C, eps=EPS), nn.InstanceNorm2d(C, affine=True)
    randomize_affine(ours, ref)
    _assert_same(ours, ref, (4, C, 5, 3))
    assert not ours.track_running_stats
    assert set(ours.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("shape", [(4, C), (C, 5, 3)])
def test_instancenorm_needs_nchw(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"instancenorm needs N×C×H×W input .*got shape"):
        InstanceNorm(C, eps=EPS)(torch.randn(shape))


def test_identity() -> None:
    x = _input(4, C, 5, 3)
    assert Identity(C)(x) is x
    assert Identity(C).state_dict() == {}


@pytest.mark.parametrize("name", BASELINES)
def test_device_and_dtype_reach_the_layer_and_other_builder_keywords_do_not(name: str) -> None:
    layer = _layer(name)(C, device="cpu", dtype=torch.float64, eps=1e-3, momentum=0.5)
    x = _input(4, C, 5, 3).double()
    assert layer(x).dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in layer.parameters())
    assert getattr(layer, "eps", EPS) == EPS and getattr(layer, "momentum", 0.1) == 0.1, "the suite's values win"


@pytest.mark.parametrize("name", ["batchnorm", "groupnorm", "layernorm", "instancenorm"])
def test_eps_is_honoured(name: str) -> None:
    layer = _layer(name, eps=1e-3)(C)
    assert layer.eps == 1e-3
    # Against a spread of about 1e-2 (variance 1e-4), eps=1e-3 visibly damps the output.
    x = _input(4, C, 5, 3) * 1e-2
    assert not torch.allclose(layer(x), _layer(name)(C)(x))


@pytest.mark.parametrize("name", BASELINES)
def test_state_dict_round_trip(name: str) -> None:
    layer = _layer(name)(C)
    for p in layer.parameters():
        nn.init.normal_(p)
    layer(_input(4, C, 5, 3))  # moves batchnorm's running stats away from their init
    clone = _layer(name)(C)
    clone.load_state_dict(copy.deepcopy(layer.state_dict()))
    assert_close(clone.state_dict(), layer.state_dict())
    layer.eval()
    clone.eval()
    x = _input(4, C, 5, 3, seed=7)
    assert_close(clone(x), layer(x))


def test_registered_norms() -> None:
    norms: list[Norm] = []
    harness_register_norms(norms.append)
    by_name = {n.name: n for n in norms}
    assert [n.name for n in norms] == list(BASELINES)
    assert by_name["instancenorm"].dims == {"2d"}
    for norm in norms:
        assert norm.summary and norm.citation
        layer = norm.layer()(C)  # the string targets resolve and the declared defaults fit
        x = _input(4, C, 5, 3)
        assert layer(x).shape == x.shape


# -- every registered norm: the config is the one source of its parameters ----------------------
ALL_NORMS = sorted(REGISTRY.norms)

#: A value other than the default for each layer field, and how to read it back from the built
#: layer (default: the attribute of that name). A new layer field must be added here.
OTHER_VALUES: dict[str, Any] = {
    "eps": 1e-3, "momentum": 0.3, "groups": 2, "stats_grad": "full", "r_max": 2.0, "d_max": 1.5,
    "warmup_steps": 10, "fct": 0.4, "beta": 0.5, "latch": "iteration", "warmup_epochs": 2, "kernel_size": 5,
    "base": "analytic_norm", "sigma_u": 0.2, "sigma_v": 0.3, "per": "layer", "init_sigma": 0.5, "prior_sigma": 3.0,
}
#: Per norm, where another value shows more (bayesian_scale's batchnorm base holds its momentum).
OTHER_FOR = {"bayesian_scale": {"base": "batchnorm"}}
READ: dict[str, Callable[[nn.Module], Any]] = {
    "groups": lambda layer: layer.num_groups,
    "kernel_size": lambda layer: layer.weight.shape[-1],
    "base": lambda layer: layer.kind,
    "per": lambda layer: "layer" if layer.u.numel() == 1 else "channel",
    "init_sigma": lambda layer: pytest.approx(float(layer.sigma[0].detach())),
}


def _layer_fields(norm: Norm) -> list[str]:
    return [name for name in norm.config.model_fields if name not in norm.config.protocol_only]


@pytest.mark.parametrize("name", ALL_NORMS)
def test_every_config_default_is_a_valid_value(name: str) -> None:
    """pydantic does not check defaults: each is validated here, against its field's type and bounds."""
    config = REGISTRY.norms[name].config
    for field, info in config.model_fields.items():
        assert not info.is_required(), f"{name}.{field} has no default"
        assert info.description, f"{name}.{field} has no description"
        config.model_validate({field: info.get_default(call_default_factory=True)})
    assert set(config.protocol_only) <= set(config.model_fields), "protocol_only names a field it does not have"


@pytest.mark.parametrize("name", ALL_NORMS)
def test_layer_fields_are_keywords_of_the_layer_and_protocol_fields_are_not(name: str) -> None:
    norm = REGISTRY.norms[name]
    signature = inspect.signature(norm.factory())
    signature.bind(C, **norm.config().layer_kwargs())  # the layer fields fill every required keyword
    for field in _layer_fields(norm):
        signature.bind_partial(C, **{field: getattr(norm.config(), field)})  # accepted (TypeError otherwise)
        if field in signature.parameters:  # timm's GroupNorm1 hands its keywords on to nn.GroupNorm
            assert signature.parameters[field].default is inspect.Parameter.empty, (
                f"{name}: the default of {field!r} lives in the config alone")
    for field in norm.config.protocol_only:
        with pytest.raises(TypeError):
            signature.bind_partial(C, **{field: getattr(norm.config(), field)})
    norm.layer()(C)  # and the layer is built from exactly the layer fields


@pytest.mark.parametrize("name", ALL_NORMS)
def test_a_value_given_in_the_config_is_the_value_the_built_layer_holds(name: str) -> None:
    norm = REGISTRY.norms[name]
    fields = _layer_fields(norm)
    assert set(fields) <= set(OTHER_VALUES), f"add {set(fields) - set(OTHER_VALUES)} to OTHER_VALUES"
    values = {field: OTHER_FOR.get(name, {}).get(field, OTHER_VALUES[field]) for field in fields}
    config = norm.config(**values)
    assert all(getattr(config, f) != getattr(norm.config(), f) for f in fields), "every value differs from the default"
    layer = norm.layer(config)(8)
    for field, value in values.items():
        if field in ("eps", "momentum"):  # every module of the layer that has one (a base norm's too)
            held = [getattr(m, field) for m in layer.modules() if hasattr(m, field)]
            assert held and all(v == value for v in held), f"{name}.{field}: {held}"
        else:
            assert READ.get(field, lambda layer, f=field: getattr(layer, f))(layer) == value, f"{name}.{field}"
