"""Models: any timm model with the norm under test in it, and the papers' own networks registered
in timm's model registry so that suites name them like any timm model.

- ``cifar_resnet20`` / ``cifar_resnet44``: He et al. 2016's CIFAR ResNets (§4.2): a 3×3 stem,
  3 stages of n = 3 / 7 basic blocks of 16/32/64 channels, identity shortcuts with zero-padded
  channels (option A), global average pooling and a linear classifier; the networks of the
  balanced-batch paper, whose Table 1 variant (64/128/256 channels, 3×3 max-pool stride 2
  between stages) is ``widths=(64, 128, 256), downsample="maxpool"``.
- ``cifar_resnet18/34/50/101``: timm's ImageNet ResNets with the CIFAR stem used by CIFAR code
  bases (3×3 conv, stride 1, no max-pool), as in the Unified BN paper's CIFAR tables.
- ``allcnn_c``: All-CNN-C (Springenberg et al. 2015) as in Shekhovtsov & Flach 2018: channels
  96,96,96,192,192,192,192,192,C, kernels 3,3,3,3,3,3,3,1,1, strides 1,1,2,1,1,2,1,1,1, a norm
  after every conv, leaky ReLU 0.01 after all but the last, head Norm → AdaptiveAvgPool.

All take ``norm_layer(num_features)``. :func:`create` puts the norm into any timm model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from timm.models import register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .inject import build_with_norm

NormLayer = Callable[..., nn.Module]
#: Keyword arguments a model may pass to a plain norm layer; anything else (``act_layer``,
#: ``apply_act``, ``inplace``) means the model wants a norm+activation layer. They only tell the
#: two calls apart: of these, the core's ``norm_layer`` (:meth:`harness.Norm.layer`) passes on
#: ``device`` and ``dtype`` and drops the model's ``eps`` and ``momentum``: the suite's values apply.
PLAIN_NORM_KWARGS = frozenset({"device", "dtype", "eps", "momentum"})

__all__ = ["AllCNNC", "CifarResNet", "allcnn_c", "cifar_resnet18", "cifar_resnet20", "cifar_resnet34",
           "cifar_resnet44", "cifar_resnet50", "cifar_resnet101", "create"]


class NotAPlainNorm(TypeError):
    """The model called ``norm_layer`` as a timm norm+activation layer."""


def create(name: str, norm_layer: NormLayer, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with ``norm_layer`` as its normalization.

    The model gets ``norm_layer`` as its own ``norm_layer`` argument when it uses it as a plain
    norm everywhere (timm's ResNets, the networks here); otherwise, when it rejects the argument,
    asks for a norm+activation layer (EfficientNet, RegNet: BatchNormAct2d) or keeps batch norms
    it did not build with it, it is built as is and every batch norm is swapped
    (:func:`.inject.swap_batchnorm`, which keeps the activation of a norm+act layer).
    Either way, a model without any place for the norm is an error, not a silent baseline.
    An ``eps`` or ``momentum`` the model passes is handed on to ``norm_layer``; the core's
    (:meth:`harness.Norm.layer`) drops it, so the norm keeps the suite's values.
    """
    builder = functools.partial(timm.create_model, name, pretrained=False)
    made: list[nn.Module] = []

    def plain_norm(num_features: int, **kw: Any) -> nn.Module:  # a function: timm accepts it as a layer type
        # PLAIN_NORM_KWARGS only recognises a plain-norm call; the model's eps/momentum in it are
        # dropped by the core's norm_layer
        unexpected = set(kw) - PLAIN_NORM_KWARGS
        if unexpected:
            raise NotAPlainNorm(f"called with {sorted(unexpected)}")
        made.append(norm_layer(num_features, **kw))
        return made[-1]

    try:
        model = build_with_norm(builder, plain_norm, passes_norm_layer=True, **kwargs)
    except (TypeError, AssertionError):  # rejected: unknown argument, or timm's norm-act lookup
        model = None
    if model is not None and made:
        ours = {id(m) for m in made}
        if not any(isinstance(m, _BatchNorm) and id(m) not in ours for m in model.modules()):
            return model
    made.clear()
    model = build_with_norm(builder, plain_norm, passes_norm_layer=False, **kwargs)
    if not made:
        raise ValueError(f"timm model {name!r} neither takes a norm_layer nor has batch norms to replace: "
                         "the norm under test would not be in it")
    return model


# -- He et al. 2016's CIFAR ResNets ------------------------------------------------------------------


class PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and append zero channels (no parameters)."""

    def __init__(self, stride: int, extra: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class CifarBlock(nn.Module):
    """conv3×3 → norm → ReLU → conv3×3 → norm, plus the shortcut, → ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, norm_layer: NormLayer,
                 shortcut: Literal["A", "B"]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(out_chs)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = norm_layer(out_chs)
        self.act2 = nn.ReLU()
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(stride, out_chs - in_chs)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                                          norm_layer(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR ResNet of depth 6n + 2 (§4.2).

    ``downsample="stride"`` (He et al.) halves the resolution with the first conv of stages 2
    and 3; ``"maxpool"`` puts a 3×3 stride-2 max-pool before them instead (the balanced-batch
    paper's Table 1). ``shortcut`` "A" zero-pads new channels (He et al. on CIFAR), "B" projects
    with a 1×1 conv and a norm. Convs get He (fan-out) initialization.
    """

    def __init__(self, blocks: int, num_classes: int = 10, in_chans: int = 3,
                 widths: Sequence[int] = (16, 32, 64), downsample: Literal["stride", "maxpool"] = "stride",
                 shortcut: Literal["A", "B"] = "A", norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths needs 3 stage widths, got {list(widths)}")
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.act1 = nn.ReLU()
        stages: list[nn.Module] = []
        in_chs = widths[0]
        for i, width in enumerate(widths):
            stride = 2 if i > 0 and downsample == "stride" else 1
            pool = i > 0 and downsample == "maxpool"
            layers: list[nn.Module] = [nn.MaxPool2d(3, stride=2, padding=1)] if pool else []
            for k in range(blocks):
                layers.append(CifarBlock(in_chs, width, stride if k == 0 else 1, norm_layer, shortcut))
                in_chs = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.act1(self.bn1(self.conv1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.global_pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# -- All-CNN-C ----------------------------------------------------------------------------------------

ALLCNN_CHANNELS = (96, 96, 96, 192, 192, 192, 192, 192)  # then the classes
ALLCNN_KERNELS = (3, 3, 3, 3, 3, 3, 3, 1, 1)
ALLCNN_STRIDES = (1, 1, 2, 1, 1, 2, 1, 1, 1)
ALLCNN_PADDING = (1, 1, 1, 1, 1, 1, 0, 0, 0)  # Springenberg et al.: the 7th conv is "valid" (8×8 → 6×6)


class AllCNNC(nn.Sequential):
    """All-CNN-C with a norm after every conv (Shekhovtsov & Flach 2018, appendix A.1).

    Convs keep their bias and PyTorch's default initialization (the paper's "none" row is the
    plain network). The paper's head ends in LogSoftmax; here the model returns the pooled
    class scores and the loss and metrics apply log-softmax, which gives identical values (it
    is idempotent) and keeps the network within what analytic normalization's moment
    propagation interprets.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, negative_slope: float = 0.01,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        layers: list[nn.Module] = []
        channels = (*ALLCNN_CHANNELS, num_classes)
        in_chs = in_chans
        for i, (out_chs, k, s, p) in enumerate(zip(channels, ALLCNN_KERNELS, ALLCNN_STRIDES, ALLCNN_PADDING,
                                                   strict=True)):
            layers += [nn.Conv2d(in_chs, out_chs, k, stride=s, padding=p), norm_layer(out_chs)]
            if i < len(channels) - 1:
                layers.append(nn.LeakyReLU(negative_slope))
            in_chs = out_chs
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.num_classes = num_classes


# -- timm registrations -------------------------------------------------------------------------------


def _no_weights(pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The model's own arguments: timm's factory options dropped, pretrained weights refused."""
    if pretrained:
        raise ValueError("no pretrained weights exist for this model (nothing is downloaded)")
    return {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}


def _cifar_stem(block: type[nn.Module], layers: tuple[int, ...], pretrained: bool, **kwargs: Any) -> ResNet:
    args = _no_weights(pretrained, kwargs)
    norm_layer = args.get("norm_layer", nn.BatchNorm2d)
    model = ResNet(block, layers, **args)
    in_chans = args.get("in_chans", 3)
    model.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.bn1 = norm_layer(64)
    model.maxpool = nn.Identity()
    return model


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """He et al. 2016's 20-layer CIFAR ResNet (n = 3)."""
    return CifarResNet(3, **_no_weights(pretrained, kwargs))


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """He et al. 2016's 44-layer CIFAR ResNet (n = 7)."""
    return CifarResNet(7, **_no_weights(pretrained, kwargs))


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 with the CIFAR stem (3×3 conv, stride 1, no max-pool)."""
    return _cifar_stem(BasicBlock, (2, 2, 2, 2), pretrained, **kwargs)


@register_model
def cifar_resnet34(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34 with the CIFAR stem."""
    return _cifar_stem(BasicBlock, (3, 4, 6, 3), pretrained, **kwargs)


@register_model
def cifar_resnet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50 with the CIFAR stem."""
    return _cifar_stem(Bottleneck, (3, 4, 6, 3), pretrained, **kwargs)


@register_model
def cifar_resnet101(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101 with the CIFAR stem."""
    return _cifar_stem(Bottleneck, (3, 4, 23, 3), pretrained, **kwargs)


@register_model
def allcnn_c(pretrained: bool = False, **kwargs: Any) -> AllCNNC:
    """All-CNN-C as in Shekhovtsov & Flach 2018 (norm after every conv, leaky ReLU 0.01)."""
    return AllCNNC(**_no_weights(pretrained, kwargs))
