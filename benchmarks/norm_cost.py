"""Cost of every registered 2-d norm in a training step, relative to torch's BatchNorm2d measured
in the same run (target: at most 1.5x).

``--mode layer`` (default): the norm's own forward and backward, summed over the norm positions
of the model with their exact input shapes, against BatchNorm2d on the same shapes (fp32 unless
``--amp``): the cost the target is about. ``--mode step``: the whole training step (protocol
forward, loss, backward) of the model with the norm in it, which includes work a protocol does
around its layers (analytic moment propagation), with ``--amp bf16`` autocast and
``--channels-last`` to measure as a GPU user trains.

Models (``--model``): ``cifar_resnet18`` (torchvision's ResNet-18 with a 3x3 stride-1 stem and no
max-pool, 32x32 input; the CPU default), torchvision's ``resnet18``/``resnet50`` (ImageNet
stem with max-pool, 224x224 input; ``resnet50`` at batch 64 is the CUDA default, the issue's
setting), the classification task's ``timm_resnet18``, ``timm_cifar_resnet20``,
``timm_allcnn_c``, and ``tiny_resnet`` (a few layers, for quick checks). ``--device cuda`` times
with ``torch.cuda.synchronize()`` around each timed region (outside the norm).

Norms and the reference are timed in alternation, several rounds, and medians are reported.
Batch composition (extra unlabeled or normalization-batch samples) is left out: it is the
method's data cost, not the norm's.

    .venv/bin/python benchmarks/norm_cost.py                                   # CPU, layer mode
    .venv/bin/python benchmarks/norm_cost.py --device cuda --mode layer        # ResNet-50, fp32
    .venv/bin/python benchmarks/norm_cost.py --device cuda --mode step --amp bf16 --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.models import resnet18, resnet50

from harness.plugins import load_registry
from harness.protocol import LABELS, UNLABELED, NormProtocol, TrialContext
from harness.task import Splits, TaskConfig

REFERENCE = "torch.nn.BatchNorm2d"


class _Block(nn.Module):
    """A residual basic block with in-place ReLUs, as torchvision's."""

    def __init__(self, channels: int, norm_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = norm_layer(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = norm_layer(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


def tiny_resnet(num_classes: int = 10, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """A few-layer ResNet (stem, max-pool, a residual block, a strided stage) for quick checks."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), norm_layer(16), nn.ReLU(inplace=True),
                         nn.MaxPool2d(3, 2, 1), _Block(16, norm_layer),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), norm_layer(32), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def _timm(name: str) -> Callable[..., nn.Module]:
    """A model as the classification task builds it (timm, or this project's timm-registered ones)."""

    def make(num_classes: int = 10, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d) -> nn.Module:
        from harness_plugins.tasks.classification.models import create

        return create(name, norm_layer, num_classes=num_classes)

    return make


MODELS = {"cifar_resnet18": (resnet18, 32), "resnet18": (resnet18, 224), "resnet50": (resnet50, 224),
          "tiny_resnet": (tiny_resnet, 32), "timm_resnet18": (_timm("resnet18"), 224),
          "timm_cifar_resnet20": (_timm("cifar_resnet20"), 32), "timm_allcnn_c": (_timm("allcnn_c"), 32)}


def make_model(model: str, norm_layer: object, classes: int = 10) -> nn.Module:
    """The model with ``norm_layer`` at every norm position."""
    factory, _ = MODELS[model]
    net = factory(num_classes=classes, norm_layer=norm_layer)
    if model == "cifar_resnet18":
        # The CIFAR stem (3x3 stride-1 convolution, no max-pool) keeps 4x4 maps in the last stage, as
        # CIFAR ResNets do; per-sample spatial statistics (instance norm) need more than one position.
        net.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net


def build(norm_layer: object, protocol: NormProtocol | None, data: TensorDataset, model: str = "cifar_resnet18",
          device: str = "cpu", channels_last: bool = False) -> tuple[nn.Module, NormProtocol]:
    """The model on ``device`` with its protocol set up on ``data`` (kept on the CPU, as a loader's)."""
    torch.manual_seed(0)
    net = make_model(model, norm_layer).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    protocol = protocol or NormProtocol()
    ctx = TrialContext(net=net, splits=Splits(train=data, test=data, unlabeled=TensorDataset(data.tensors[0])),
                       config=TaskConfig(batch_size=32), seed=0, provides=frozenset({LABELS, UNLABELED}),
                       generator=torch.Generator().manual_seed(0))
    protocol.setup(ctx)
    net.train()
    return net, protocol


class Clock:
    """Wall time of a region on ``device``: CUDA work is synchronised at both ends of the region
    only, so nothing inside it (the norm) is disturbed."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def autocast(device: str, amp: str | None) -> contextlib.AbstractContextManager:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


def step_seconds(net: nn.Module, protocol: NormProtocol, x: torch.Tensor, y: torch.Tensor, steps: int,
                 clock: Clock, amp: str | None = None) -> float:
    """Median seconds of one forward+backward over ``steps`` timed steps (after one warm-up)."""
    times = []
    for i in range(steps + 1):
        net.zero_grad(set_to_none=True)
        start = clock.now()
        with autocast(str(x.device), amp):
            loss = F.cross_entropy(protocol.train_forward(net, x), y)
        loss.backward()
        end = clock.now()
        if i:
            times.append(end - start)
    return statistics.median(times)


def norm_shapes(model: str = "cifar_resnet18", batch: int = 32, size: int | None = None) -> list[tuple[int, ...]]:
    """Input shapes of the norms of ``model`` at ``batch`` x ``size``², in order."""
    shapes: list[tuple[int, ...]] = []

    def record(num_features: int, **kwargs: object) -> nn.Module:
        layer = nn.BatchNorm2d(num_features)
        layer.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
        return layer

    size = size or MODELS[model][1]
    net = make_model(model, record).eval()
    with torch.no_grad():
        net(torch.zeros(batch, 3, size, size))
    return shapes


def layers_seconds(make: object, shapes: list[tuple[int, ...]], inputs: list[torch.Tensor], steps: int,
                   clock: Clock, amp: str | None = None) -> float:
    """Median over ``steps`` of the summed forward+backward time of one layer per shape."""
    device = inputs[0].device
    layers = [make(shape[1]).to(device).train() for shape in shapes]
    grads = [torch.randn_like(x) for x in inputs]
    times = []
    for i in range(steps + 1):
        total = 0.0
        for layer, x, g in zip(layers, inputs, grads, strict=True):
            x.grad = None
            start = clock.now()
            with autocast(str(device), amp):
                out = layer(x)
            out.backward(g.to(out.dtype))
            total += clock.now() - start
        if i:
            times.append(total)
    return statistics.median(times)


def depthwise_conv(num_features: int, **kwargs: object) -> nn.Module:
    """A depthwise 3×3 convolution with bias, as bnet's affine."""
    return nn.Conv2d(num_features, num_features, 3, padding=1, groups=num_features)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--only", nargs="*", help="norm names to measure (default: every 2-d norm)")
    parser.add_argument("--mode", choices=["layer", "layers", "step"], default="layer")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--model", choices=sorted(MODELS), help="default: resnet50 on cuda, cifar_resnet18 on cpu")
    parser.add_argument("--batch", type=int, help="default: 64 on cuda, 32 on cpu")
    parser.add_argument("--size", type=int, help="input size (default: the model's, 32 or 224)")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="autocast dtype (default: none, fp32)")
    parser.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = args.model or ("resnet50" if cuda else "cifar_resnet18")
    batch = args.batch or (64 if cuda else 32)
    size = args.size or MODELS[model][1]
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    mode = "layer" if args.mode == "layers" else args.mode
    clock = Clock(args.device)

    registry = load_registry()
    names = args.only or sorted(n for n, norm in registry.norms.items() if "2d" in norm.dims)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(args.device, memory_format=layout)
    y = torch.randint(0, 10, (batch,), generator=g).to(args.device)
    data = TensorDataset(torch.randn(128, 3, size, size, generator=g), torch.arange(128) % 10)
    shapes = norm_shapes(model, batch, size)
    inputs = [torch.randn(shape, generator=g).to(args.device, memory_format=layout).requires_grad_()
              for shape in shapes]
    if mode == "step":
        reference = build(nn.BatchNorm2d, None, data, model, args.device, args.channels_last)

        def timed(norm_layer: object, protocol: NormProtocol | None) -> float:
            net, built = (reference if norm_layer is None
                          else build(norm_layer, protocol, data, model, args.device, args.channels_last))
            return step_seconds(net, built, x, y, args.steps, clock, args.amp)
    else:
        def timed(norm_layer: object, protocol: NormProtocol | None) -> float:
            return layers_seconds(norm_layer or nn.BatchNorm2d, shapes, inputs, args.steps, clock, args.amp)

    def ratio_to_bn(norm_layer: object, protocol: NormProtocol | None) -> tuple[float, float, float]:
        """(ours ms, BN ms, median ratio) over alternating rounds."""
        ours, theirs = [], []
        for _ in range(args.rounds):
            theirs.append(timed(None, None))
            ours.append(timed(norm_layer, protocol))
        ratio = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
        return statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3, ratio

    results: dict[str, float] = {}
    what = ("whole training step" if mode == "step"
            else f"the norm's forward+backward at its {len(shapes)} positions")
    where = f"{args.device}" + ("" if cuda else f", {args.threads} threads")
    print(f"{model}, batch {batch}, {size}x{size}, {what}, {args.amp or 'fp32'}"
          f"{', channels_last' if args.channels_last else ''}, {where}; median of {args.rounds} rounds")
    print(f"{'norm':24} {'ms':>9} {'BN ms':>8} {'ratio':>7}")
    for name in names:
        norm = registry.norms[name]
        try:
            ours_ms, bn_ms, ratio = ratio_to_bn(norm.layer(), norm.make_protocol())
        except Exception as exc:  # noqa: BLE001 - report and go on to the next norm
            print(f"{name:24} failed: {type(exc).__name__}: {exc}")
            continue
        results[name] = round(ratio, 3)
        flag = "" if ratio <= 1.5 else "  > 1.5x"
        print(f"{name:24} {ours_ms:9.1f} {bn_ms:8.1f} {ratio:7.2f}{flag}")
    over = sorted(n for n, r in results.items() if r > 1.5)
    print(f"{len(results) - len(over)} of {len(results)} norms within 1.5x of BatchNorm2d" +
          (f"; over: {', '.join(over)}" if over else ""))
    # Context for norms whose affine is a depthwise convolution (bnet, unified_bn): the
    # convolution alone, torch's own kernel, measured against BN the same way.
    floor = None
    if mode == "layer":
        floor = round(ratio_to_bn(depthwise_conv, None)[2], 3)
        print(f"for comparison, torch's depthwise 3x3 convolution alone (the affine of bnet and unified_bn): "
              f"{floor:.2f}x BatchNorm2d")
    print(json.dumps({"bench": "norm_cost", "mode": mode, "model": model, "device": args.device, "batch": batch,
                      "size": size, "amp": args.amp, "channels_last": args.channels_last, "reference": REFERENCE,
                      "ratios": results, "over_target": over, "depthwise_conv_alone": floor}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
